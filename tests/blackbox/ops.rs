//! Operations surface: probes, admission (503 + Retry-After), per-tenant isolation, graceful
//! shutdown, metrics, structured logs, trace propagation, retention.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::Host;

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn healthz_and_readyz_answer_without_credentials() {
    let host = Host::start().await;
    let (status, body) = json_of(host.anon(Method::GET, "/healthz").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    let (status, body) = json_of(host.anon(Method::GET, "/readyz").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["draining"], false);
}
