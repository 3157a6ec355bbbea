#!/usr/bin/env python3
"""Ad-hoc measurement (not a test): per-node latency of remote execution next
to local execution. Standard library only.

    python3 examples/python/remote_latency.py target/release/wopbox [--runs 300]

Starts three wopbox processes on loopback with the repository's packs:
an isolation tier, an orchestrator with the local executor and an
orchestrator with `--executor remote:<tier>`. Then:

1. node duration as the engine sees it (`node.completed.durationMs`, whole
   milliseconds) for a one-node greet workflow, local vs remote;
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


def node_durations(api, runs):
    wf = {"id": "latency", "name": "latency", "version": "1.0",
          "nodes": [{"id": "n", "typeId": GREET, "name": "n", "position": {"x": 0, "y": 0},
                     "config": {}, "inputs": {"name": {"type": "static", "value": "latency"}}}],
          "edges": [], "variables": [], "metadata": {}, "settings": {"timeout": 60000},
          "triggers": [{"id": "manual", "type": "manual", "enabled": True}]}
    s, b = api.call("PUT", "/v1/workflows/latency", wf)
    assert s in (200, 201), (s, b)
    out = []
    for _ in range(runs):
        s, b = api.call("POST", "/v1/runs", {"workflowId": "latency", "inputs": {}})
        assert s in (200, 201), (s, b)
        run = b["runId"]
        deadline = time.time() + 30
        while True:
            s, snap = api.call("GET", "/v1/runs/" + run)
            if snap["status"] in ("completed", "failed", "cancelled"):
                break
            if time.time() > deadline:
                raise SystemExit("run did not finish")
            time.sleep(0.002)
        assert snap["status"] == "completed", snap
        s, page = api.call("GET", "/v1/runs/%s/events/poll?lastSequence=-1" % run)
        done = [e for e in page["events"] if e["type"] == "node.completed"]
        out.append(done[0]["payload"]["durationMs"])
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
            loc = node_durations(Api(local_url), a.runs)
            rem = node_durations(Api(remote_url), a.runs)
            rtt, inside = api_round_trips(Api(tier_url), a.runs * 3)
            hop = [r - i for r, i in zip(rtt, inside)]
            print("runs per series: %d (API calls: %d)" % (a.runs, len(rtt)))
            print("node.completed.durationMs (integer ms)  local p50 %s p99 %s | remote p50 %s p99 %s"
                  % (pct(loc, 50), pct(loc, 99), pct(rem, 50), pct(rem, 99)))
            print("execute API round trip (ms)            p50 %.3f p99 %.3f" % (pct(rtt, 50), pct(rtt, 99)))
            print("  of which inside the sandbox (ms)     p50 %.3f p99 %.3f" % (pct(inside, 50), pct(inside, 99)))
            print("  added by the HTTP hop (ms)           p50 %.3f p99 %.3f" % (pct(hop, 50), pct(hop, 99)))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
