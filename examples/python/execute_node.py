#!/usr/bin/env python3
"""Execute one node pack node on a wopbox isolation tier, the way a non-Rust
OpenWOP host would: one authenticated POST per node, standard library only.

    WOPBOX_URL=http://127.0.0.1:8080 WOPBOX_API_KEY=... \
      python3 examples/python/execute_node.py vendor.wopbox.greet@1.0.0 \
        vendor.wopbox.greet.hello '{"name": "python"}' --fuel 5000000

Prints the JSON answer (outcome, output | error, capBreach, metrics) on
stdout. Exit status: 0 completed, 1 failed or suspended, 2 the tier refused
the request or could not be reached (an orchestrator should treat that as a
retryable node error, like wopbox's own `runner_unavailable`).
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

EXECUTE_PATH = "/v1/x-wopbox/execute"


class TierUnavailable(Exception):
    """The isolation tier was down, slow, overloaded or answered 5xx."""


class TierRefused(Exception):
    """The tier answered 4xx: a bad request, credential, pack or typeId."""


def execute(base_url, api_key, pack, type_id, inputs, context=None, limits=None,
            timeout_s=10.0, retries=3):
    """POST one node execution; returns the decoded 200 answer.

    `pack` is "name@version" or {"sha256": "<hex of the entry module>"}.
    `limits` may hold wallClockMs / memoryBytes / fuel (they can only tighten
    the pack's own limits). A 503 is retried after its Retry-After header.
    """
    body = {"pack": pack, "typeId": type_id, "inputs": inputs}
    if context:
        body["context"] = context
    if limits:
        body["limits"] = limits
    data = json.dumps(body).encode()
    for attempt in range(retries + 1):
        req = urllib.request.Request(
            base_url.rstrip("/") + EXECUTE_PATH,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": "Bearer " + api_key,
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            try:
                envelope = json.load(e)
            except (ValueError, OSError):
                envelope = {"error": "http_%d" % e.code, "message": e.reason}
            if e.code == 503 and attempt < retries:
                time.sleep(float(e.headers.get("Retry-After", "1")))
                continue
            if e.code >= 500 or e.code == 429:
                raise TierUnavailable(envelope) from None
            raise TierRefused(envelope) from None
        except (urllib.error.URLError, OSError) as e:
            raise TierUnavailable(str(e)) from None
    raise TierUnavailable("still overloaded after %d retries" % retries)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack", help='"name@version" or "sha256:<hex>"')
    p.add_argument("type_id")
    p.add_argument("inputs", nargs="?", default="{}", help="JSON inputs")
    p.add_argument("--url", default=os.environ.get("WOPBOX_URL", "http://127.0.0.1:8080"))
    p.add_argument("--key", default=os.environ.get("WOPBOX_API_KEY", ""))
    p.add_argument("--run-id", default="py-run")
    p.add_argument("--node-id", default="py-node")
    p.add_argument("--fuel", type=int)
    p.add_argument("--memory-bytes", type=int)
    p.add_argument("--wall-clock-ms", type=int)
    a = p.parse_args()
    pack = {"sha256": a.pack[7:]} if a.pack.startswith("sha256:") else a.pack
    limits = {k: v for k, v in (("fuel", a.fuel), ("memoryBytes", a.memory_bytes),
                                ("wallClockMs", a.wall_clock_ms)) if v is not None}
    try:
        out = execute(a.url, a.key, pack, a.type_id, json.loads(a.inputs),
                      context={"runId": a.run_id, "nodeId": a.node_id, "attempt": 0},
                      limits=limits)
    except (TierUnavailable, TierRefused) as e:
        print(json.dumps({"clientError": type(e).__name__, "detail": e.args[0]}))
        return 2
    print(json.dumps(out))
    return 0 if out.get("outcome") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
