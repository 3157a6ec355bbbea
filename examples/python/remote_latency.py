#!/usr/bin/env python3
"""Ad-hoc measurement (not a test): per-node latency of remote execution next
to local execution. Standard library only.

    python3 examples/python/remote_latency.py target/release/wopbox [--runs 300]

Starts three wopbox processes on loopback with the repository's packs:
an isolation tier, an orchestrator with the local executor and an
orchestrator with `--executor remote:<tier>`. Then:

1. for a one-node greet workflow on each orchestrator: the executor call as
   the orchestrator saw it (`node.completed.metrics`: locally the sandbox's
   `durationMs + queuedMs`, remotely `roundTripMs`), and the whole run
   (POST /v1/runs until the SSE stream closes after `run.completed`);
2. the execution API's round trip from a keep-alive HTTP client, next to the
   sandbox's own time for the same call (`metrics.durationMs + queuedMs`) —
   the difference is what the HTTP hop adds, at sub-millisecond resolution.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

KEY = "latency-key"
GREET = "vendor.wopbox.greet.hello"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(binary, data, extra):
    cmd = [binary, "serve", "--listen", "127.0.0.1:0", "--data", data, "--api-key", KEY,
           "--packs", os.path.join(ROOT, "packs")] + extra
    env = dict(os.environ, RUST_LOG="wopbox=error")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    for line in p.stdout:
        if line.startswith("wopbox listening on "):
            return p, line.split("wopbox listening on ", 1)[1].strip()
    raise SystemExit("wopbox did not start: " + " ".join(cmd))


class Api:
    def __init__(self, base):
        u = urllib.parse.urlparse(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def call(self, method, path, body=None):
        headers = {"Authorization": "Bearer " + KEY, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def run_latencies(api, base, runs):
    """Time from POST /v1/runs until the run's SSE stream closes after its
    terminal event, for a one-node greet workflow (sub-millisecond clock)."""
    wf = {"id": "latency", "name": "latency", "version": "1.0",
          "nodes": [{"id": "n", "typeId": GREET, "name": "n", "position": {"x": 0, "y": 0},
                     "config": {}, "inputs": {"name": {"type": "static", "value": "latency"}}}],
          "edges": [], "variables": [], "metadata": {}, "settings": {"timeout": 60000},
          "triggers": [{"id": "manual", "type": "manual", "enabled": True}]}
    s, b = api.call("PUT", "/v1/workflows/latency", wf)
    assert s in (200, 201), (s, b)
    u = urllib.parse.urlparse(base)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s, b = api.call("POST", "/v1/runs", {"workflowId": "latency", "inputs": {}})
        assert s in (200, 201), (s, b)
        sse = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        sse.request("GET", "/v1/runs/%s/events" % b["runId"],
                    headers={"Authorization": "Bearer " + KEY, "Accept": "text/event-stream"})
        body = sse.getresponse().read().decode()
        wall = (time.perf_counter() - t0) * 1000
        sse.close()
        events = [json.loads(l[5:]) for l in body.splitlines() if l.startswith("data:")]
        done = [e for e in events if e.get("type") == "node.completed"]
        assert done and any(e.get("type") == "run.completed" for e in events), body
        m = done[0]["payload"]["metrics"]
        sandbox = m["durationMs"] + m["queuedMs"]
        # The executor call as the orchestrator saw it: the sandbox's own time
        # locally, the HTTP round trip (which contains the tier's sandbox time)
        # remotely.
        out.append((wall, m.get("roundTripMs", sandbox), sandbox))
    return out


def api_round_trips(api, n):
    body = {"pack": "vendor.wopbox.greet@1.0.0", "typeId": GREET, "inputs": {"name": "latency"}}
    rtt, inside = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        s, b = api.call("POST", "/v1/x-wopbox/execute", body)
        rtt.append((time.perf_counter() - t0) * 1000)
        assert s == 200 and b["outcome"] == "completed", b
        inside.append(b["metrics"]["durationMs"] + b["metrics"]["queuedMs"])
    return rtt, inside


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=300)
    a = ap.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tier, tier_url = start(a.binary, os.path.join(tmp, "tier"), [])
            procs.append(tier)
            local, local_url = start(a.binary, os.path.join(tmp, "local"), [])
            procs.append(local)
            remote, remote_url = start(a.binary, os.path.join(tmp, "remote"),
                                       ["--executor", "remote:" + tier_url, "--executor-key", KEY])
            procs.append(remote)
            loc = run_latencies(Api(local_url), local_url, a.runs)
            rem = run_latencies(Api(remote_url), remote_url, a.runs)
            rtt, inside = api_round_trips(Api(tier_url), a.runs * 3)
            hop = [r - i for r, i in zip(rtt, inside)]
            print("per series: %d one-node runs; %d direct API calls" % (a.runs, len(rtt)))
            col = lambda xs, i: [x[i] for x in xs]
            for label, xs in (("local ", loc), ("remote", rem)):
                print("%s executor call (ms)  p50 %.3f p99 %.3f | sandbox alone p50 %.3f p99 %.3f"
                      " | whole run, POST -> SSE closed p50 %.3f p99 %.3f"
                      % (label, pct(col(xs, 1), 50), pct(col(xs, 1), 99), pct(col(xs, 2), 50),
                         pct(col(xs, 2), 99), pct(col(xs, 0), 50), pct(col(xs, 0), 99)))
            print("added by remote execution per node (ms): p50 %.3f p99 %.3f"
                  % (pct(col(rem, 1), 50) - pct(col(loc, 1), 50),
                     pct(col(rem, 1), 99) - pct(col(loc, 1), 99)))
            print("direct execute API from Python keep-alive (ms): round trip p50 %.3f p99 %.3f,"
                  " HTTP hop alone p50 %.3f p99 %.3f"
                  % (pct(rtt, 50), pct(rtt, 99), pct(hop, 50), pct(hop, 99)))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
