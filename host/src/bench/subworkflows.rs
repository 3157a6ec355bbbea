//! `wopbox bench --scenario subworkflows`: one parent run with `--children` parallel
//! `core.subWorkflow` nodes (the high-throughput tier's "fan-out of ≥ 100 parallel
//! sub-workflows", scale-profiles.md). Each child gets its own value through `inputMapping` and
//! hands it back through `outputMapping`, so a run only counts when every child completed and
//! every value came back to the right parent variable. Reported: wall time from
//! `POST /v1/runs` to the parent's terminal event, per run and median.

use std::time::Instant;

use serde_json::{json, Value};

use super::{machine, node, round1, spawn_set, workflow, BenchArgs, BenchError, WaitMode};

const WF_CHILD: &str = "bench-sub-child";
pub(super) const WF_PARENT: &str = "bench-sub-parent";

pub(super) fn child_workflow() -> Value {
    workflow(
        WF_CHILD,
        vec![node("n", "core.noop", json!({}))],
        json!([{"name": "n", "type": "number", "defaultValue": -1}]),
        60_000,
    )
}

pub(super) fn parent_workflow(children: usize) -> Value {
    let nodes = (0..children)
        .map(|i| {
            let mut n = node(&format!("call{i}"), "core.subWorkflow", json!({}));
            n["config"] = json!({
                "workflowId": WF_CHILD,
                "inputMapping": {"n": format!("in{i}")},
                "outputMapping": {format!("out{i}"): "n"},
            });
            n
        })
        .collect();
    let vars: Vec<Value> = (0..children)
        .map(|i| json!({"name": format!("in{i}"), "type": "number", "defaultValue": i}))
        .collect();
    workflow(WF_PARENT, nodes, json!(vars), 600_000)
}

/// What a finished fan-out run must show; the first discrepancy otherwise.
pub(super) fn check(snap: &Value, children: usize) -> Result<(), String> {
    let done = snap["childRuns"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["status"] == "completed").count())
        .unwrap_or(0);
    if done != children {
        return Err(format!("{done} of {children} children completed"));
    }
    for i in 0..children {
        let got = &snap["variables"][format!("out{i}")];
        if *got != json!(i) {
            return Err(format!("out{i} is {got}, not {i}"));
        }
    }
    Ok(())
}

pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<Vec<Value>> {
    if args.url.is_some() {
        return Err(BenchError::NeedsSpawn("subworkflows").into());
    }
    let targets = spawn_set(args).await?;
    let t = &targets[0];
    let children = args.children.max(1);
    t.put_workflow(&child_workflow()).await?;
    t.put_workflow(&parent_workflow(children)).await?;
    let mut times = Vec::new();
    for _ in 0..args.fanout_runs.max(1) {
        let began = Instant::now();
        let run = t.create_run(WF_PARENT, &json!({})).await?;
        let terminal = t.wait_terminal(&run, WaitMode::Poll).await?;
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        if terminal != "run.completed" {
            anyhow::bail!("fan-out run {run} ended {terminal}");
        }
        check(&t.snapshot(&run).await?, children)
            .map_err(|e| anyhow::anyhow!("fan-out run {run}: {e}"))?;
        times.push(ms);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let v = json!({
        "scenario": "subworkflows",
        "backend": if args.database.is_some() { "postgres" } else { "sqlite" },
        "children": children,
        "runs": times.len(),
        "ms_each": times.iter().map(|x| round1(*x)).collect::<Vec<_>>(),
        "ms_median": round1(median),
        "children_per_sec": round1(children as f64 / (median / 1000.0)),
        "floor_children": 100,
        "machine": machine(),
    });
    for t in targets {
        t.shutdown().await;
    }
    Ok(vec![v])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_counts_only_with_every_child_and_value_back() {
        let wf = parent_workflow(3);
        assert_eq!(wf["nodes"].as_array().unwrap().len(), 3);
        assert_eq!(
            wf["nodes"][2]["config"]["outputMapping"],
            json!({"out2": "n"})
        );
        let kids =
            json!([{"status": "completed"}, {"status": "completed"}, {"status": "completed"}]);
        let ok = json!({"childRuns": kids, "variables": {"out0": 0, "out1": 1, "out2": 2}});
        assert!(check(&ok, 3).is_ok());
        let wrong = json!({"childRuns": kids, "variables": {"out0": 0, "out1": 2, "out2": 2}});
        assert!(check(&wrong, 3).unwrap_err().contains("out1"));
        let short = json!({"childRuns": [{"status": "completed"}, {"status": "failed"}],
                           "variables": {"out0": 0, "out1": 1}});
        assert!(check(&short, 2).unwrap_err().contains("1 of 2"));
    }
}
