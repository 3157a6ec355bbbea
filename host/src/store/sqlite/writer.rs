//! The hot-path writer: run creation, event appends, run status changes, interrupt parking and
//! closing (row + events) and audit appends are group-committed on one dedicated thread.
//!
//! Why not plain sqlx: sqlx's SQLite driver runs each connection on its own thread and hands it
//! every statement (BEGIN, each SELECT/INSERT/UPDATE, each row, COMMIT) over a channel, two
//! thread wake-ups each; a one-node run costs ~25 of them, which made futex wake-ups the largest
//! item in the host's CPU profile. Here the writer thread takes the pool's single writer
//! connection, locks its raw handle out of sqlx's worker ([`sqlx::sqlite::SqliteConnection::lock_handle`],
//! the documented way to call SQLite directly) and runs the whole batch through rusqlite on that
//! handle: one hand-off per batch instead of per statement. Everything else keeps using the same
//! connection through sqlx, so SQLite still sees exactly one writer.
//!
//! Guarantees kept from the sqlx version: a caller is answered only after its transaction has
//! committed ("committed before acknowledged"); sequences are assigned from the run row inside
//! the transaction, so they stay gap-free; one op's refusal or database error is rolled back to
//! its own savepoint and cannot fail its neighbours in the batch.

use std::sync::Arc;

use chrono::Utc;
use rusqlite::{params, OptionalExtension};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::store::audit::{AuditEntry, NewAuditEntry};
use crate::store::interrupts::{
    CloseOutcome, InterruptClose, InterruptRecord, PlanVote, VoteOutcome, VoteRecord,
};
use crate::store::live::LiveRuns;
use crate::store::retention::{Cutoffs, Purged};
use crate::store::{
    is_terminal_event, terminal_is_last, ts, CreateRunOutcome, EventRecord, IdempotencyClaim,
    NewEvent, RunRecord, RunUpdate, StoreError, StoreResult,
};

/// Most ops committed in one transaction.
const MAX_BATCH: usize = 512;
/// Queued ops before callers wait (backpressure).
const QUEUE: usize = 4096;
/// Longest the writer keeps the connection locked while ops keep arriving (see [`session`]).
const MAX_HOLD: std::time::Duration = std::time::Duration::from_millis(20);
/// Prepared statements kept per writer session: every statement of every op kind, plus the
/// transaction and savepoint statements (rusqlite's default of 16 is fewer than that).
const STATEMENT_CACHE: usize = 64;

pub(crate) type AuditHash = for<'h> fn(&'h AuditEntry) -> String;

pub(crate) enum WriteOp {
    /// Insert a run; if it was created, append `events` (its `run.started`, may be empty) with
    /// `update` in the same savepoint.
    CreateRun {
        run: RunRecord,
        idem: Option<IdempotencyClaim>,
        events: Vec<NewEvent>,
        payloads: Vec<String>,
        update: RunUpdate,
        reply: oneshot::Sender<StoreResult<(CreateRunOutcome, Vec<EventRecord>)>>,
    },
    Append {
        run_id: String,
        events: Vec<NewEvent>,
        /// `events[i].payload` serialized by the caller, off the writer thread.
        payloads: Vec<String>,
        update: RunUpdate,
        reply: oneshot::Sender<StoreResult<Vec<EventRecord>>>,
    },
    SetStatus {
        run_id: String,
        status: String,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
    Audit {
        entry: NewAuditEntry,
        hash: AuditHash,
        reply: oneshot::Sender<StoreResult<AuditEntry>>,
    },
    /// Insert a pending interrupt and append the run's events, atomically.
    ParkInterrupt {
        rec: Box<InterruptRecord>,
        events: Vec<NewEvent>,
        payloads: Vec<String>,
        update: RunUpdate,
        reply: oneshot::Sender<StoreResult<Vec<EventRecord>>>,
    },
    /// Move a pending interrupt to `close.status` and append the run's events, atomically.
    CloseInterrupt {
        interrupt_id: String,
        close: InterruptClose,
        events: Vec<NewEvent>,
        payloads: Vec<String>,
        update: RunUpdate,
        reply: oneshot::Sender<StoreResult<CloseOutcome>>,
    },
    /// One small batch of retention cleanup (`sqlite/retention.rs`).
    Purge {
        cut: Cutoffs,
        limit: u32,
        reply: oneshot::Sender<StoreResult<Purged>>,
    },
    /// Count one quorum vote: the single writer serialises it with every other vote and close.
    CastVote {
        interrupt_id: String,
        vote: Box<VoteRecord>,
        plan: Option<PlanVote>,
        reply: oneshot::Sender<StoreResult<VoteOutcome>>,
    },
}

/// What one op did inside the transaction (applied to the cache and answered after commit).
enum Done {
    Created {
        outcome: CreateRunOutcome,
        /// The first events, when the op carried any and the run was created.
        appended: Option<(Vec<EventRecord>, String)>,
    },
    Appended {
        records: Vec<EventRecord>,
        now: String,
    },
    StatusSet {
        changed: bool,
        now: String,
    },
    Audited(AuditEntry),
    /// Anything but `Closed` wrote nothing that may stay: its savepoint is rolled back.
    InterruptClosed {
        outcome: CloseOutcome,
        now: String,
    },
    /// What retention deleted, and the runs that expired (dropped from the cache).
    Purged {
        purged: Purged,
        runs: Vec<String>,
    },
    /// Anything but `Counted` wrote nothing that may stay.
    VoteCast {
        outcome: VoteOutcome,
        update: RunUpdate,
        now: String,
    },
}

impl Done {
    fn keeps_writes(&self) -> bool {
        match self {
            Done::InterruptClosed { outcome, .. } => matches!(outcome, CloseOutcome::Closed(_)),
            Done::VoteCast { outcome, .. } => matches!(outcome, VoteOutcome::Counted { .. }),
            _ => true,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<WriteOp>,
}

impl Writer {
    /// Start the writer thread on `pool` (which must have exactly one connection).
    pub(crate) fn start(pool: SqlitePool, live: Arc<LiveRuns>) -> std::io::Result<Writer> {
        let (tx, mut rx) = mpsc::channel::<WriteOp>(QUEUE);
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("wopbox-sqlite-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    rt.block_on(session(&pool, &live, &mut rx, first));
                }
            })?;
        Ok(Writer { tx })
    }

    /// Queue `make(reply)` and wait for its committed result.
    pub(crate) async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> WriteOp,
    ) -> StoreResult<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Backend("the database writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the database writer stopped".into()))?
    }
}

/// Up to [`MAX_BATCH`] queued ops after `first`, without waiting.
fn take_batch(rx: &mut mpsc::Receiver<WriteOp>, first: WriteOp) -> Vec<WriteOp> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    batch
}

/// One lock of the writer connection: commit batches back to back for as long as ops keep
/// arriving (at most [`MAX_HOLD`]), then hand the connection back to sqlx. Holding the lock
/// across batches keeps the prepared statements of the previous batch (re-preparing them was
/// ~13 % of this thread's time) and saves the pool acquire and the lock hand-off with sqlx's
/// worker thread per batch; the bound keeps the cold-path sqlx writes from waiting long.
async fn session(
    pool: &SqlitePool,
    live: &LiveRuns,
    rx: &mut mpsc::Receiver<WriteOp>,
    first: WriteOp,
) {
    let mut batch = take_batch(rx, first);
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return fail_all(batch, &StoreError::from(e)),
    };
    let mut handle = match conn.lock_handle().await {
        Ok(h) => h,
        Err(e) => return fail_all(batch, &StoreError::from(e)),
    };
    let raw = handle.as_raw_handle();
    // SAFETY: `handle` keeps sqlx's worker thread off this connection until it is dropped
    // below, and `from_handle` makes a wrapper that does not close the connection; the
    // wrapper (and every statement it prepared) is dropped at the end of this block, before
    // the handle is unlocked.
    {
        let db = match unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) } {
            Ok(db) => db,
            Err(e) => return fail_all(batch, &to_store(e)),
        };
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let held = std::time::Instant::now();
        loop {
            match run_batch(&db, &mut batch) {
                Ok(results) => {
                    for (op, result) in batch.drain(..).zip(results) {
                        answer(live, op, result);
                    }
                }
                Err(e) => {
                    // The transaction was rolled back; start the next batch on a fresh lock.
                    fail_all(std::mem::take(&mut batch), &to_store(e));
                    break;
                }
            }
            if held.elapsed() >= MAX_HOLD {
                break;
            }
            match rx.try_recv() {
                Ok(op) => batch = take_batch(rx, op),
                Err(_) => break,
            }
        }
    }
    drop(handle);
}

fn to_store(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn fail_all(batch: Vec<WriteOp>, e: &StoreError) {
    fn err<T>(msg: &str) -> StoreResult<T> {
        Err(StoreError::Backend(msg.to_string()))
    }
    let msg = e.to_string();
    for op in batch {
        match op {
            WriteOp::CreateRun { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::Append { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::SetStatus { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::Audit { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::ParkInterrupt { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::CloseInterrupt { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::Purge { reply, .. } => drop(reply.send(err(&msg))),
            WriteOp::CastVote { reply, .. } => drop(reply.send(err(&msg))),
        }
    }
}

/// Update the cache with what committed, then answer the caller (in that order, so a caller
/// that reads right after its write sees it).
fn answer(live: &LiveRuns, op: WriteOp, result: StoreResult<Done>) {
    match (op, result) {
        (
            WriteOp::CreateRun {
                run, update, reply, ..
            },
            r,
        ) => {
            let r = r.map(|d| match d {
                Done::Created { outcome, appended } => {
                    if matches!(outcome, CreateRunOutcome::Created) {
                        live.created(&run);
                    }
                    match appended {
                        Some((records, now)) => {
                            live.appended(&run.run_id, &records, &update, &now);
                            (outcome, records)
                        }
                        None => (outcome, Vec::new()),
                    }
                }
                _ => unreachable!("create answered with another op's result"),
            });
            let _ = reply.send(r);
        }
        (
            WriteOp::Append {
                run_id,
                update,
                reply,
                ..
            },
            r,
        ) => {
            let r = r.map(|d| match d {
                Done::Appended { records, now } => {
                    live.appended(&run_id, &records, &update, &now);
                    records
                }
                _ => unreachable!("append answered with another op's result"),
            });
            let _ = reply.send(r);
        }
        (
            WriteOp::SetStatus {
                run_id,
                status,
                reply,
            },
            r,
        ) => {
            let r = r.map(|d| match d {
                Done::StatusSet { changed, now } => {
                    if changed {
                        live.status_set(&run_id, &status, &now);
                    }
                    changed
                }
                _ => unreachable!("status answered with another op's result"),
            });
            let _ = reply.send(r);
        }
        (
            WriteOp::ParkInterrupt {
                rec, update, reply, ..
            },
            r,
        ) => {
            let r = r.map(|d| match d {
                Done::Appended { records, now } => {
                    live.appended(&rec.run_id, &records, &update, &now);
                    records
                }
                _ => unreachable!("park answered with another op's result"),
            });
            let _ = reply.send(r);
        }
        (WriteOp::CloseInterrupt { update, reply, .. }, r) => {
            let r = r.map(|d| match d {
                Done::InterruptClosed { outcome, now } => {
                    if let CloseOutcome::Closed(records) = &outcome {
                        if let Some(first) = records.first() {
                            live.appended(&first.run_id, records, &update, &now);
                        }
                    }
                    outcome
                }
                _ => unreachable!("close answered with another op's result"),
            });
            let _ = reply.send(r);
        }
        (WriteOp::Purge { reply, .. }, r) => {
            let _ = reply.send(r.map(|d| match d {
                Done::Purged { purged, runs } => {
                    live.forget(&runs);
                    purged
                }
                _ => unreachable!("purge answered with another op's result"),
            }));
        }
        (WriteOp::CastVote { reply, .. }, r) => {
            let r = r.map(|d| match d {
                Done::VoteCast {
                    outcome,
                    update,
                    now,
                } => {
                    if let VoteOutcome::Counted { records, .. } = &outcome {
                        if let Some(first) = records.first() {
                            live.appended(&first.run_id, records, &update, &now);
                        }
                    }
                    outcome
                }
                _ => unreachable!("vote answered with another op's result"),
            });
            let _ = reply.send(r);
        }
        (WriteOp::Audit { reply, .. }, r) => {
            let _ = reply.send(r.map(|d| match d {
                Done::Audited(e) => e,
                _ => unreachable!("audit answered with another op's result"),
            }));
        }
    }
}

/// One transaction for the batch; each op in its own savepoint. The outer error means the
/// transaction as a whole failed: it is rolled back, nothing committed, and the connection goes
/// back to sqlx outside any transaction.
fn run_batch(
    db: &rusqlite::Connection,
    batch: &mut [WriteOp],
) -> rusqlite::Result<Vec<StoreResult<Done>>> {
    let r = transaction(db, batch);
    if r.is_err() && !db.is_autocommit() {
        let _ = db.execute_batch("ROLLBACK");
    }
    r
}

/// Runs one cached statement that returns no rows (transaction control).
fn exec(db: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    db.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn transaction(
    db: &rusqlite::Connection,
    batch: &mut [WriteOp],
) -> rusqlite::Result<Vec<StoreResult<Done>>> {
    exec(db, "BEGIN IMMEDIATE")?;
    let mut results = Vec::with_capacity(batch.len());
    for op in batch.iter_mut() {
        exec(db, "SAVEPOINT op")?;
        let r = apply(db, op);
        match &r {
            Ok(Ok(done)) if done.keeps_writes() => exec(db, "RELEASE op")?,
            // A refusal (decided before writing) or a statement error: undo only this op.
            _ => {
                exec(db, "ROLLBACK TO op")?;
                exec(db, "RELEASE op")?;
            }
        }
        results.push(match r {
            Ok(r) => r,
            Err(e) => Err(to_store(e)),
        });
    }
    exec(db, "COMMIT")?;
    Ok(results)
}

fn apply(db: &rusqlite::Connection, op: &mut WriteOp) -> rusqlite::Result<StoreResult<Done>> {
    match op {
        WriteOp::CreateRun {
            run,
            idem,
            events,
            payloads,
            update,
            ..
        } => {
            let created = match create_run(db, run, idem.as_ref())? {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            if !matches!(created, CreateRunOutcome::Created) || events.is_empty() {
                return Ok(Ok(Done::Created {
                    outcome: created,
                    appended: None,
                }));
            }
            let appended = append(
                db,
                &run.run_id,
                std::mem::take(events),
                std::mem::take(payloads),
                update,
            )?;
            Ok(appended.map(|d| match d {
                Done::Appended { records, now } => Done::Created {
                    outcome: created,
                    appended: Some((records, now)),
                },
                other => other,
            }))
        }
        WriteOp::Append {
            run_id,
            events,
            payloads,
            update,
            ..
        } => append(
            db,
            run_id,
            std::mem::take(events),
            std::mem::take(payloads),
            update,
        ),
        WriteOp::SetStatus { run_id, status, .. } => {
            let now = ts(Utc::now());
            let n = db
                .prepare_cached(
                    "UPDATE runs SET status = ?1, updated_at = ?2 WHERE run_id = ?3 AND terminal = 0",
                )?
                .execute(params![&*status, now, &*run_id])?;
            Ok(Ok(Done::StatusSet {
                changed: n == 1,
                now,
            }))
        }
        WriteOp::Audit { entry, hash, .. } => audit(db, entry, *hash),
        WriteOp::ParkInterrupt {
            rec,
            events,
            payloads,
            update,
            ..
        } => {
            insert_interrupt(db, rec)?;
            append(
                db,
                &rec.run_id,
                std::mem::take(events),
                std::mem::take(payloads),
                update,
            )
        }
        WriteOp::CloseInterrupt {
            interrupt_id,
            close,
            events,
            payloads,
            update,
            ..
        } => close_interrupt(
            db,
            interrupt_id,
            close,
            std::mem::take(events),
            std::mem::take(payloads),
            update,
        ),
        WriteOp::Purge { cut, limit, .. } => super::retention::purge(db, cut, *limit)
            .map(|(purged, runs)| Ok(Done::Purged { purged, runs })),
        WriteOp::CastVote {
            interrupt_id,
            vote,
            plan,
            ..
        } => match plan.take() {
            Some(plan) => cast_vote(db, interrupt_id, vote, plan),
            None => Ok(Err(StoreError::Backend("vote applied twice".into()))),
        },
    }
}

fn create_run(
    db: &rusqlite::Connection,
    run: &RunRecord,
    idem: Option<&IdempotencyClaim>,
) -> rusqlite::Result<StoreResult<CreateRunOutcome>> {
    if let Some(claim) = idem {
        let prior: Option<(String, i64, String)> = db
            .prepare_cached(
                "SELECT request_digest, response_status, response_body FROM idempotency_keys WHERE scope_key = ?1",
            )?
            .query_row(params![claim.scope_key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        if let Some((digest, status, body)) = prior {
            let outcome = if digest == claim.request_digest {
                match serde_json::from_str(&body) {
                    Ok(body) => CreateRunOutcome::Replay {
                        status: status as u16,
                        body,
                    },
                    Err(e) => return Ok(Err(e.into())),
                }
            } else {
                CreateRunOutcome::Mismatch
            };
            return Ok(Ok(outcome));
        }
    }
    db.prepare_cached(
        "INSERT INTO runs (run_id, workflow_id, definition_digest, tenant_id, principal_id, status, terminal,
           inputs, variables, options, current_node_id, error, outputs, next_sequence, created_at, started_at,
           completed_at, updated_at, parent_run_id, parent_node_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, NULL, NULL, NULL, 0, ?10, NULL, NULL, ?11, ?12, ?13)",
    )?
    .execute(params![
        run.run_id,
        run.workflow_id,
        run.definition_digest,
        run.tenant_id,
        run.principal_id,
        run.status,
        run.inputs.to_string(),
        run.variables.to_string(),
        run.options.to_string(),
        run.created_at,
        run.updated_at,
        run.parent_run_id,
        run.parent_node_id,
    ])?;
    if let Some(claim) = idem {
        db.prepare_cached(
            "INSERT INTO idempotency_keys (scope_key, request_digest, response_status, response_body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            claim.scope_key,
            claim.request_digest,
            i64::from(claim.response_status),
            claim.response_body.to_string(),
            run.created_at,
        ])?;
    }
    Ok(Ok(CreateRunOutcome::Created))
}

fn append(
    db: &rusqlite::Connection,
    run_id: &str,
    events: Vec<NewEvent>,
    payloads: Vec<String>,
    u: &RunUpdate,
) -> rusqlite::Result<StoreResult<Done>> {
    if payloads.len() != events.len() {
        return Ok(Err(StoreError::Backend(
            "payloads do not match events".into(),
        )));
    }
    // Refusals are decided before anything is written.
    if let Err(e) = terminal_is_last(&events) {
        return Ok(Err(e));
    }
    let row: Option<(i64, i64)> = db
        .prepare_cached("SELECT next_sequence, terminal FROM runs WHERE run_id = ?1")?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((mut seq, terminal)) = row else {
        return Ok(Err(StoreError::RunNotFound));
    };
    if terminal != 0 {
        return Ok(Err(StoreError::RunTerminal));
    }
    let becomes_terminal = events
        .last()
        .map(|e| is_terminal_event(&e.event_type))
        .unwrap_or(false);
    let mut records = Vec::with_capacity(events.len());
    {
        let mut insert = db.prepare_cached(
            "INSERT INTO run_events (run_id, sequence, event_id, type, node_id, causation_id, payload, timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (ev, payload) in events.into_iter().zip(payloads) {
            insert.execute(params![
                run_id,
                seq,
                ev.event_id,
                ev.event_type,
                ev.node_id,
                ev.causation_id,
                payload,
                ev.timestamp,
            ])?;
            records.push(ev.committed(run_id, seq));
            seq += 1;
        }
    }
    let (set_node, node) = match &u.current_node_id {
        Some(n) => (1i64, n.clone()),
        None => (0i64, None),
    };
    let now = ts(Utc::now());
    db.prepare_cached(
        "UPDATE runs SET next_sequence = ?1, terminal = ?2, status = COALESCE(?3, status),
           current_node_id = CASE WHEN ?4 = 1 THEN ?5 ELSE current_node_id END,
           error = COALESCE(?6, error), outputs = COALESCE(?7, outputs),
           started_at = COALESCE(?8, started_at), completed_at = COALESCE(?9, completed_at), updated_at = ?10,
           variables = COALESCE(?12, variables)
         WHERE run_id = ?11",
    )?
    .execute(params![
        seq,
        becomes_terminal as i64,
        u.status,
        set_node,
        node,
        u.error.as_ref().map(|v| v.to_string()),
        u.outputs.as_ref().map(|v| v.to_string()),
        u.started_at,
        u.completed_at,
        now,
        run_id,
        u.variables.as_ref().map(|v| v.to_string()),
    ])?;
    Ok(Ok(Done::Appended { records, now }))
}

fn insert_interrupt(db: &rusqlite::Connection, rec: &InterruptRecord) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT INTO interrupts (interrupt_id, run_id, node_id, interrupt_key, kind, status, data,
           timeout_ms, token_kid, token_hash, inspect_token_hash, requested_event_id,
           requested_at, token_expires_at, deadline_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        rec.interrupt_id,
        rec.run_id,
        rec.node_id,
        rec.key,
        rec.kind,
        rec.data.to_string(),
        rec.timeout_ms,
        rec.token_kid,
        rec.token_hash,
        rec.inspect_token_hash,
        rec.requested_event_id,
        rec.requested_at,
        rec.token_expires_at,
        rec.deadline_at,
    ])?;
    Ok(())
}

/// `(run_id, status)` of an interrupt.
fn interrupt_state(
    db: &rusqlite::Connection,
    interrupt_id: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    db.prepare_cached("SELECT run_id, status FROM interrupts WHERE interrupt_id = ?1")?
        .query_row(params![interrupt_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// Move a pending interrupt to `close.status`.
fn mark_closed(
    db: &rusqlite::Connection,
    interrupt_id: &str,
    close: &InterruptClose,
) -> rusqlite::Result<()> {
    db.prepare_cached(
        "UPDATE interrupts SET status = ?1, resolution = ?2, resolved_by = ?3, resolved_at = ?4,
           resumed_event_id = ?5 WHERE interrupt_id = ?6 AND status = 'pending'",
    )?
    .execute(params![
        close.status,
        close.resolution.to_string(),
        close.resolved_by,
        close.resolved_at,
        close.resumed_event_id,
        interrupt_id,
    ])?;
    Ok(())
}

/// The row change and the append; any outcome but `Closed` is rolled back with the op's
/// savepoint (see [`Done::keeps_writes`]).
fn close_interrupt(
    db: &rusqlite::Connection,
    interrupt_id: &str,
    close: &InterruptClose,
    events: Vec<NewEvent>,
    payloads: Vec<String>,
    update: &RunUpdate,
) -> rusqlite::Result<StoreResult<Done>> {
    let unchanged = |outcome| Done::InterruptClosed {
        outcome,
        now: String::new(),
    };
    let row = interrupt_state(db, interrupt_id)?;
    let Some((run_id, status)) = row else {
        return Ok(Ok(unchanged(CloseOutcome::NotFound)));
    };
    if status != "pending" {
        return Ok(Ok(unchanged(CloseOutcome::NotPending(status))));
    }
    mark_closed(db, interrupt_id, close)?;
    Ok(match append(db, &run_id, events, payloads, update)? {
        Ok(Done::Appended { records, now }) => Ok(Done::InterruptClosed {
            outcome: CloseOutcome::Closed(records),
            now,
        }),
        Ok(_) => unreachable!("append answers Appended"),
        Err(StoreError::RunTerminal) => Ok(unchanged(CloseOutcome::RunTerminal)),
        Err(e) => Err(e),
    })
}

fn vote_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(VoteRecord, String)> {
    Ok((
        VoteRecord {
            voter: r.get(0)?,
            action: r.get(1)?,
            decided_at: r.get(2)?,
            submitted_by: r.get(3)?,
            detail: serde_json::Value::Null,
            event_id: r.get(5)?,
        },
        r.get(4)?,
    ))
}

/// Count a vote (see `InterruptStore::cast_vote`); anything but `Counted` is rolled back with
/// the op's savepoint.
fn cast_vote(
    db: &rusqlite::Connection,
    interrupt_id: &str,
    vote: &VoteRecord,
    plan: PlanVote,
) -> rusqlite::Result<StoreResult<Done>> {
    let unchanged = |outcome| {
        Ok(Ok(Done::VoteCast {
            outcome,
            update: RunUpdate::default(),
            now: String::new(),
        }))
    };
    let row = interrupt_state(db, interrupt_id)?;
    let Some((run_id, status)) = row else {
        return unchanged(VoteOutcome::NotFound);
    };
    let mut before = Vec::new();
    {
        let mut q = db.prepare_cached(
            "SELECT voter, action, decided_at, submitted_by, detail, event_id
               FROM interrupt_votes WHERE interrupt_id = ?1 ORDER BY seq",
        )?;
        for r in q.query_map(params![interrupt_id], vote_row)? {
            let (mut v, detail) = r?;
            v.detail = match serde_json::from_str(&detail) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e.into())),
            };
            before.push(v);
        }
    }
    if let Some(prior) = before.iter().find(|v| v.voter == vote.voter).cloned() {
        return unchanged(VoteOutcome::Duplicate {
            prior,
            votes: before,
            status,
        });
    }
    if status != "pending" {
        return unchanged(VoteOutcome::NotPending(status));
    }
    db.prepare_cached(
        "INSERT INTO interrupt_votes (interrupt_id, voter, seq, action, decided_at, submitted_by,
           detail, event_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        interrupt_id,
        vote.voter,
        before.len() as i64 + 1,
        vote.action,
        vote.decided_at,
        vote.submitted_by,
        vote.detail.to_string(),
        vote.event_id,
    ])?;
    let mut all = before;
    all.push(vote.clone());
    let plan = plan(&all);
    let closed = plan.close.is_some();
    if let Some(close) = &plan.close {
        mark_closed(db, interrupt_id, close)?;
    }
    let payloads = plan.events.iter().map(|e| e.payload.to_string()).collect();
    Ok(
        match append(db, &run_id, plan.events, payloads, &plan.update)? {
            Ok(Done::Appended { records, now }) => Ok(Done::VoteCast {
                outcome: VoteOutcome::Counted {
                    votes: all,
                    closed,
                    records,
                },
                update: plan.update,
                now,
            }),
            Ok(_) => unreachable!("append answers Appended"),
            Err(StoreError::RunTerminal) => return unchanged(VoteOutcome::RunTerminal),
            Err(e) => Err(e),
        },
    )
}

fn audit(
    db: &rusqlite::Connection,
    e: &NewAuditEntry,
    hash: AuditHash,
) -> rusqlite::Result<StoreResult<Done>> {
    let head: Option<(i64, String)> = db
        .prepare_cached("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let entry = e.clone().chained(head, hash);
    db.prepare_cached(
        "INSERT INTO audit_log (seq, occurred_at, actor, action, target, details, prev_hash, entry_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        entry.seq,
        entry.occurred_at,
        entry.actor,
        entry.action,
        entry.target,
        entry.details.to_string(),
        entry.prev_hash,
        entry.entry_hash,
    ])?;
    Ok(Ok(Done::Audited(entry)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        CreateRunOutcome, IdempotencyClaim, NewEvent, RunRecord, RunUpdate, Store, StoreError,
        StoredWorkflow,
    };

    async fn store(dir: &std::path::Path) -> SqliteStore {
        let s = SqliteStore::open(dir).await.expect("open");
        s.put_workflow(&StoredWorkflow {
            tenant_id: "t".into(),
            id: "wf".into(),
            version: "1".into(),
            digest: "d1".into(),
            definition: json!({"id": "wf"}),
            source: "api".into(),
            created_at: "t".into(),
            updated_at: "t".into(),
        })
        .await
        .expect("workflow");
        s
    }

    fn run(id: &str) -> RunRecord {
        crate::store::live::sample_run(id, "d1")
    }

    /// Many concurrent appenders share group commits; every run's log must still be gap-free
    /// from 0, acknowledged sequences must be what was stored, and a reopened store (no cache)
    /// must hold exactly what was acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_stay_gap_free_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(store(dir.path()).await);
        for r in 0..8 {
            let out = s.create_run(&run(&format!("r{r}")), None).await.unwrap();
            assert!(matches!(out, CreateRunOutcome::Created));
        }
        let mut tasks = Vec::new();
        for w in 0..32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let run_id = format!("r{}", w % 8);
                let mut acked = Vec::new();
                for i in 0..10 {
                    let evs = vec![
                        NewEvent::new("log.appended", json!({"w": w, "i": i})),
                        NewEvent::new("log.appended", json!({"w": w, "i": i, "second": true})),
                    ];
                    let recs = s.append_events(&run_id, evs, None).await.unwrap();
                    assert_eq!(
                        recs[1].sequence,
                        recs[0].sequence + 1,
                        "one append is contiguous"
                    );
                    acked.extend(recs.into_iter().map(|r| (r.sequence, r.event_id)));
                }
                (run_id, acked)
            }));
        }
        let mut acked: std::collections::HashMap<String, Vec<(i64, String)>> = Default::default();
        for t in tasks {
            let (run_id, a) = t.await.unwrap();
            acked.entry(run_id).or_default().extend(a);
        }
        for (_, a) in acked.iter_mut() {
            a.sort();
        }
        check(&s, &acked).await;
        drop(s);
        let reopened = SqliteStore::open(dir.path()).await.unwrap();
        check(&reopened, &acked).await;
        assert_eq!(
            reopened.get_run("r3").await.unwrap().unwrap().inputs,
            json!({"n": 1})
        );
    }

    async fn check(s: &SqliteStore, acked: &std::collections::HashMap<String, Vec<(i64, String)>>) {
        for (run_id, a) in acked {
            let log = s.list_events(run_id, -1, 1000).await.unwrap();
            let got: Vec<(i64, String)> =
                log.into_iter().map(|e| (e.sequence, e.event_id)).collect();
            assert_eq!(&got, a, "log of {run_id} is what was acknowledged");
            let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (0..80).collect::<Vec<_>>(), "gap-free from 0");
        }
    }

    /// In one batch, a refused append (unknown run, terminal run, event after the terminal one)
    /// writes nothing and does not fail the valid appends queued with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_op_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(store(dir.path()).await);
        s.create_run(&run("done"), None).await.unwrap();
        s.create_run(&run("live"), None).await.unwrap();
        s.append_events(
            "done",
            vec![NewEvent::new("run.completed", json!({}))],
            Some(RunUpdate::status("completed")),
        )
        .await
        .unwrap();
        // Queue everything at once so the writer batches it.
        let (a, b, c, d) = tokio::join!(
            s.append_events("nope", vec![NewEvent::new("x", json!({}))], None),
            s.append_events("done", vec![NewEvent::new("x", json!({}))], None),
            s.append_events(
                "live",
                vec![
                    NewEvent::new("run.completed", json!({})),
                    NewEvent::new("x", json!({}))
                ],
                None
            ),
            s.append_events("live", vec![NewEvent::new("y", json!({}))], None),
        );
        assert!(matches!(a, Err(StoreError::RunNotFound)));
        assert!(matches!(b, Err(StoreError::RunTerminal)));
        assert!(matches!(c, Err(StoreError::Backend(_))));
        assert_eq!(d.unwrap()[0].sequence, 0);
        assert_eq!(s.list_events("done", -1, 10).await.unwrap().len(), 1);
        assert!(!s.set_run_status("done", "cancelling").await.unwrap());
        assert!(s.set_run_status("live", "cancelling").await.unwrap());
        assert_eq!(
            s.get_run("live").await.unwrap().unwrap().status,
            "cancelling"
        );
        assert_eq!(
            s.get_run("done").await.unwrap().unwrap().status,
            "completed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_creation_replays_or_refuses_in_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let claim = |digest: &str| IdempotencyClaim {
            scope_key: "k".into(),
            request_digest: digest.into(),
            response_status: 201,
            response_body: json!({"runId": "a"}),
        };
        let first = s.create_run(&run("a"), Some(&claim("x"))).await.unwrap();
        assert!(matches!(first, CreateRunOutcome::Created));
        match s.create_run(&run("b"), Some(&claim("x"))).await.unwrap() {
            CreateRunOutcome::Replay { status, body } => {
                assert_eq!((status, body), (201, json!({"runId": "a"})))
            }
            other => panic!("expected a replay, got {other:?}"),
        }
        let third = s.create_run(&run("c"), Some(&claim("y"))).await.unwrap();
        assert!(matches!(third, CreateRunOutcome::Mismatch));
        assert!(
            s.get_run("b").await.unwrap().is_none(),
            "a replay creates nothing"
        );
        assert!(s.get_run("c").await.unwrap().is_none());
        // A duplicate run id is a database error for that op only.
        assert!(s.create_run(&run("a"), None).await.is_err());
        assert!(matches!(
            s.create_run(&run("d"), None).await.unwrap(),
            CreateRunOutcome::Created
        ));
    }

    /// `get_workflow` results are cached per (tenant, id); a later `put_workflow` of that id,
    /// shared or tenant-owned, must show on the next lookup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_workflow_lookups_see_later_puts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let wf = |tenant: &str, digest: &str| StoredWorkflow {
            tenant_id: tenant.into(),
            id: "x".into(),
            version: "1".into(),
            digest: digest.into(),
            definition: json!({"id": "x", "d": digest}),
            source: "api".into(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        let digest = |w: Option<StoredWorkflow>| w.map(|w| w.digest);
        s.put_workflow(&wf(crate::store::SHARED_TENANT, "s1"))
            .await
            .unwrap();
        assert_eq!(
            digest(s.get_workflow("a", "x").await.unwrap()).as_deref(),
            Some("s1")
        );
        assert_eq!(
            digest(s.get_workflow("b", "x").await.unwrap()).as_deref(),
            Some("s1")
        );
        s.put_workflow(&wf("a", "a1")).await.unwrap();
        assert_eq!(
            digest(s.get_workflow("a", "x").await.unwrap()).as_deref(),
            Some("a1")
        );
        s.put_workflow(&wf(crate::store::SHARED_TENANT, "s2"))
            .await
            .unwrap();
        assert_eq!(
            digest(s.get_workflow("b", "x").await.unwrap()).as_deref(),
            Some("s2")
        );
        assert_eq!(
            digest(s.get_workflow("a", "x").await.unwrap()).as_deref(),
            Some("a1")
        );
    }
}
