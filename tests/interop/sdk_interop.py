"""Drive a running wopbox with the official OpenWOP Python SDK (PyPI `openwop-client`).

Run by tests/blackbox/interop.rs inside a throwaway virtualenv. Environment:
  WOPBOX_BASE_URL   host root, e.g. http://127.0.0.1:12345
  WOPBOX_API_KEY    bearer key

The SDK (2.7.0) targets protocol v2; wopbox speaks v1. Where the SDK's typed parsers require
v2-only fields, this script uses the SDK's own transport (`_request_json`, `sse._stream_sse`)
and checks the v1 shape instead. Every such place is listed in docs/interop.md.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
from typing import Any, Callable

from openwop_client import (
    CancelRunRequest,
    CreateRunRequest,
    OpenwopClient,
    RegisterWebhookRequest,
    ResolveInterruptRequest,
    WopError,
    read_webhook_headers,
    sse,
    verify_webhook_signature,
)
from openwop_client.webhook_helpers import VerifyInvalid, VerifyValid

BASE = os.environ["WOPBOX_BASE_URL"].rstrip("/")
KEY = os.environ["WOPBOX_API_KEY"]

passed = 0
failed = 0


def check(name: str, fn: Callable[[], Any]) -> Any:
    global passed, failed
    try:
        out = fn()
        passed += 1
        print(f"ok   {name}")
        return out
    except Exception as e:  # noqa: BLE001 - report every failing check, keep going
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        return None


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


# ── a loopback webhook receiver ───────────────────────────────────────────────────────────────
deliveries: list[tuple[dict[str, str], bytes]] = []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        deliveries.append(({k: v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
HOOK_URL = f"http://127.0.0.1:{server.server_address[1]}/hook"

# The SDK joins paths like `/runs` onto its base URL: v1 lives under `/v1`, discovery at the root.
root = OpenwopClient(base_url=BASE, api_key=KEY, major=1)
v1 = OpenwopClient(base_url=f"{BASE}/v1", api_key=KEY, major=1)


def wait_status(run_id: str, statuses: set[str], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        snap = v1._request_json("GET", f"/runs/{run_id}")
        if snap["status"] in statuses:
            return snap
        expect(time.time() < deadline, f"run {run_id} stuck in {snap['status']}")
        time.sleep(0.05)


# ── discovery ─────────────────────────────────────────────────────────────────────────────────
def discovery() -> dict[str, Any]:
    doc = root._request_json("GET", "/.well-known/openwop", authenticated=False)
    expect(str(doc["protocolVersion"]).startswith("1."), f"protocolVersion {doc['protocolVersion']}")
    expect(doc["webhooks"]["supported"] is True, "webhooks.supported")
    expect("v1" in doc["webhooks"]["signatureAlgorithms"], "signatureAlgorithms")
    expect("openwop-audit-log-integrity" in doc["auth"]["profiles"], "audit profile advertised")
    expect("conformance-noop" in doc["fixtures"], "fixtures")
    return doc


check("discovery document (SDK transport, v1 shape)", discovery)
check("openapi via discovery_openapi()", lambda: expect(v1.discovery_openapi()["openapi"].startswith("3."), "openapi"))

# ── runs ──────────────────────────────────────────────────────────────────────────────────────
created = check(
    "runs_create (typed)",
    lambda: v1.runs_create(CreateRunRequest(workflowId="conformance-noop", inputs={})),
)
run_id = created.runId if created else ""


def read_run() -> None:
    expect(created is not None and created.status == "pending", "created status")
    expect(created.eventsUrl == f"/v1/runs/{run_id}/events", created.eventsUrl)
    snap = wait_status(run_id, {"completed", "failed", "cancelled"})
    expect(snap["status"] == "completed", snap["status"])
    expect(snap["runId"] == run_id and snap["workflowId"] == "conformance-noop", "snapshot ids")


check("read run until completed", read_run)


def stream_events() -> None:
    events = list(
        sse._stream_sse(
            f"{BASE}/v1", KEY, f"/runs/{run_id}/events?streamMode=debug", lambda d: d,
            protocol_version=v1.protocol_version, last_event_id=None, timeout_seconds=10,
            run_stream=True, policy=None,
        )
    )
    types = [e["type"] for e in events]
    expect(types == ["run.started", "node.started", "node.completed", "run.completed"], str(types))
    expect([e["sequence"] for e in events] == [0, 1, 2, 3], "sequences")
    # Resume after sequence 1 with Last-Event-ID: nothing at or before it again.
    resumed = list(
        sse._stream_sse(
            f"{BASE}/v1", KEY, f"/runs/{run_id}/events?streamMode=debug", lambda d: d,
            protocol_version=v1.protocol_version, last_event_id="1", timeout_seconds=10,
            run_stream=True, policy=None,
        )
    )
    expect([e["sequence"] for e in resumed] == [2, 3], str([e["sequence"] for e in resumed]))


check("stream events over SSE (SDK SSE reader) + Last-Event-ID resume", stream_events)


def unknown_workflow() -> None:
    try:
        v1.runs_create(CreateRunRequest(workflowId="no-such-workflow"))
    except WopError as e:
        expect(e.status == 400, f"status {e.status}")
        expect(e.envelope is not None and e.envelope.error == "validation_error", str(e.envelope))
        return
    raise AssertionError("expected an error")


check("error envelope parsed by WopError", unknown_workflow)


def cancel() -> None:
    r = v1.runs_create(CreateRunRequest(workflowId="conformance-delay", inputs={"delayMs": 10000}))
    wait_status(r.runId, {"running"})
    c = v1.runs_cancel(r.runId, CancelRunRequest(reason="interop"))
    expect(c.runId == r.runId and c.status in ("cancelled", "cancelling"), str(c))
    expect(wait_status(r.runId, {"cancelled"})["status"] == "cancelled", "cancelled")


check("runs_cancel (typed)", cancel)

# ── interrupts ────────────────────────────────────────────────────────────────────────────────
def expect_error(fn: Callable[[], Any], status: int, code: str) -> None:
    try:
        fn()
    except WopError as e:
        expect(e.status == status, f"status {e.status}")
        expect(e.envelope is not None and e.envelope.error == code, str(e.envelope))
        return
    raise AssertionError(f"expected {status} {code}")


def approval() -> None:
    r = v1.runs_create(CreateRunRequest(workflowId="conformance-approval", inputs={}))
    snap = wait_status(r.runId, {"waiting-approval"})
    expect(snap["currentNodeId"] == "gate", str(snap))
    token = snap["interrupt"]["interruptToken"]
    seen = v1.interrupts_inspect_by_token(token)
    expect(seen.kind == "approval" and seen.key == f"{r.runId}:gate:1", str(seen))
    expect(seen.data["actions"] == ["accept", "reject"], str(seen.data))
    expect_error(
        lambda: v1.interrupts_resolve_by_run(r.runId, "gate", ResolveInterruptRequest(resumeValue={"action": "maybe"})),
        400, "validation_error",
    )
    expect(wait_status(r.runId, {"waiting-approval"})["status"] == "waiting-approval", "still waiting")
    res = v1.interrupts_resolve_by_run(r.runId, "gate", ResolveInterruptRequest(resumeValue={"action": "accept"}))
    expect(res.runId == r.runId and res.nodeId == "gate" and res.status == "running", str(res))
    done = wait_status(r.runId, {"completed", "failed", "cancelled"})
    expect(done["status"] == "completed" and done["outputs"]["action"] == "accept", str(done))
    expect_error(
        lambda: v1.interrupts_resolve_by_run(r.runId, "gate", ResolveInterruptRequest(resumeValue={"action": "accept"})),
        409, "interrupt_already_resolved",
    )


check("resolve an approval interrupt (interrupts_inspect_by_token, interrupts_resolve_by_run)", approval)


def external_event_by_token() -> None:
    r = v1.runs_create(CreateRunRequest(workflowId="conformance-interrupt-external-event", inputs={}))
    token = wait_status(r.runId, {"waiting-external"})["interrupt"]["interruptToken"]
    expect_error(
        lambda: v1.interrupts_resolve_by_token(token, ResolveInterruptRequest(resumeValue={"orderId": "other", "status": "completed"})),
        422, "correlation_mismatch",
    )
    out = v1.interrupts_resolve_by_token(
        token, ResolveInterruptRequest(resumeValue={"orderId": "fixture-order-1", "status": "completed"})
    )
    expect(out["runId"] == r.runId and out["status"] == "running", str(out))
    expect(wait_status(r.runId, {"completed", "failed", "cancelled"})["status"] == "completed", "completed")
    expect_error(
        lambda: v1.interrupts_resolve_by_token(token, ResolveInterruptRequest(resumeValue={"orderId": "fixture-order-1", "status": "completed"})),
        409, "interrupt_already_resolved",
    )
    expect_error(lambda: v1.interrupts_inspect_by_token("tok_unknown"), 404, "interrupt_not_found")


check("resolve an external event by signed token (interrupts_resolve_by_token)", external_event_by_token)

# ── webhooks ──────────────────────────────────────────────────────────────────────────────────
sub = check(
    "webhooks_register (typed)",
    lambda: v1.webhooks_register(RegisterWebhookRequest(url=HOOK_URL, events=["run.completed"])),
)


def delivered_signature() -> None:
    expect(sub is not None and sub.subscriptionId.startswith("wh_"), "subscription id")
    expect(sub.eventTypes == ["run.completed"], str(sub.eventTypes))
    r = v1.runs_create(CreateRunRequest(workflowId="conformance-noop", inputs={}))
    deadline = time.time() + 10
    while not deliveries:
        expect(time.time() < deadline, "no webhook delivery within 10 s")
        time.sleep(0.05)
    headers, body = deliveries[0]
    expect(json.loads(body)["runId"] == r.runId, "delivery is for the new run")

    # Both header families verify with the SDK's helpers.
    read = read_webhook_headers(headers)
    expect(read is not None and read.family == "openwop" and read.algorithm == "v1", str(read))
    ok = verify_webhook_signature(sub.secret, read.signature, read.timestamp, body, algorithm_header=read.algorithm)
    expect(isinstance(ok, VerifyValid), f"OpenWOP-* family: {ok}")
    legacy = {k: v for k, v in headers.items() if k.lower().startswith("x-openwop-")}
    read_x = read_webhook_headers(legacy)
    expect(read_x is not None and read_x.family == "x-openwop", str(read_x))
    ok = verify_webhook_signature(sub.secret, read_x.signature, read_x.timestamp, body, algorithm_header=read_x.algorithm)
    expect(isinstance(ok, VerifyValid), f"X-openwop-* family: {ok}")

    # And the helpers reject what they must.
    bad = verify_webhook_signature("not-the-secret", read.signature, read.timestamp, body)
    expect(isinstance(bad, VerifyInvalid) and bad.reason == "signature_mismatch", str(bad))
    bad = verify_webhook_signature(sub.secret, read.signature, read.timestamp, body + b" ")
    expect(isinstance(bad, VerifyInvalid) and bad.reason == "signature_mismatch", str(bad))
    stale = verify_webhook_signature(sub.secret, read.signature, read.timestamp, body, now_seconds=int(read.timestamp) + 301)
    expect(isinstance(stale, VerifyInvalid) and stale.reason == "timestamp_expired", str(stale))


check("delivered webhook verifies with the SDK's webhook helpers", delivered_signature)
check(
    "webhooks_dead_letters (typed, empty)",
    lambda: expect(sub is not None and v1.webhooks_dead_letters(sub.subscriptionId).deliveries == [], "dead letters"),
)


def unregister() -> None:
    v1.webhooks_unregister(sub.subscriptionId)
    try:
        v1.webhooks_unregister(sub.subscriptionId)
    except WopError as e:
        expect(e.status == 404 and e.envelope is not None and e.envelope.error == "subscription_not_found", str(e))
        return
    raise AssertionError("second unregister should be 404")


check("webhooks_unregister (typed) + 404 subscription_not_found", unregister)

# ── audit ─────────────────────────────────────────────────────────────────────────────────────
def audit() -> None:
    res = v1.audit_verify(0, 1000)
    expect(res.fromSeq == 0 and res.toSeq == 1000, "range echoed")
    expect(res.chainValid is True and res.checkpointsValid is True, str(res))
    expect(res.anomalies == [], str(res.anomalies))
    # run.create x5, run.cancel, interrupt.resolve x2, webhook.register, webhook.delete = 10
    # entries; interval 2 => 5 checkpoints.
    expect([c.atSequence for c in res.checkpoints] == [2, 4, 6, 8, 10], str(res.checkpoints))
    expect(all(c.signature and len(c.merkleRoot) == 64 for c in res.checkpoints), "signed checkpoints")


def audit_eventually() -> None:
    deadline = time.time() + 5
    while True:
        try:
            return audit()
        except AssertionError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


check("audit_verify (typed)", audit_eventually)

print(f"{passed} passed, {failed} failed")
server.shutdown()
sys.exit(1 if failed else 0)
