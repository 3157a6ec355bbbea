//! `LISTEN` side of the cross-process notifications: one dedicated connection per process,
//! turned into [`Notice`]s. Notices this process sent itself are dropped (it already acted).

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::{CH_CANCEL, CH_CHANGES, CH_EVENTS};
use crate::store::shared::Notice;
use crate::store::StoreResult;

/// Parse one notification; `None` for our own or malformed payloads.
pub(crate) fn parse(channel: &str, payload: &str, me: &str) -> Option<Notice> {
    match channel {
        CH_EVENTS => {
            let mut it = payload.split(' ');
            let (owner, run_id) = (it.next()?, it.next()?);
            let first = it.next()?.parse().ok()?;
            let last = it.next()?.parse().ok()?;
            (owner != me).then(|| Notice::Events {
                run_id: run_id.to_string(),
                first,
                last,
            })
        }
        CH_CANCEL => {
            let (run_id, reason) = payload.split_once(' ').unwrap_or((payload, ""));
            Some(Notice::Cancel {
                run_id: run_id.to_string(),
                reason: reason.to_string(),
            })
        }
        CH_CHANGES => match payload {
            "webhooks" => Some(Notice::Webhooks),
            "packs" => Some(Notice::Packs),
            _ => None,
        },
        _ => None,
    }
}

pub(super) async fn spawn(pool: &PgPool, me: String) -> StoreResult<mpsc::Receiver<Notice>> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([CH_EVENTS, CH_CANCEL, CH_CHANGES])
        .await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            // `try_recv` yields `None` when the connection dropped; the next call reconnects
            // and re-subscribes. What was sent meanwhile is lost, hence `Resync`.
            let notice = match listener.try_recv().await {
                Ok(Some(n)) => parse(n.channel(), n.payload(), &me),
                Ok(None) => Some(Notice::Resync),
                Err(e) => {
                    tracing::warn!(error = %e, "postgres notification listener failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    Some(Notice::Resync)
                }
            };
            if let Some(notice) = notice {
                if tx.send(notice).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}
