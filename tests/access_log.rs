//! The access log as a log pipeline reads it (SPEC 11): the real binary
//! with `--log-format json` and `accessLog: { enabled: true }`; every access
//! line parses as JSON, names its `target`, carries the raw strings (never
//! debug-quoted) and every listed field with the right type, and a duration
//! in milliseconds with at most microsecond digits.
//!
//! Must not: leave processes behind.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use serde_json::Value;
use support::process::Process;
use support::{client, eventually, send, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_carry_raw_strings_a_target_and_every_field() {
    let up = upstream("api").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\naccessLog: {{ enabled: true }}\nupstreams:\n  api:\n    endpoints: [{}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    );
    let fb = Process::start("access-log", &yaml, &[]);
    let req = Request::get(format!("http://{}/orders/1?x=1", fb.data))
        .header("x-request-id", "req-42")
        .header("user-agent", "probe/1.0")
        .body(Empty::new())
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "api /orders/1"));

    let line: Value = eventually(Duration::from_secs(5), "an access line", || async {
        fb.log_text().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["target"] == "fusebox::access")
    })
    .await;
    assert_eq!(line["request_id"], "req-42", "raw, not debug-quoted: {line}");
    assert_eq!(line["path"], "/orders/1", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["host"], fb.data.to_string(), "{line}");
    assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    assert_eq!(line["user_agent"], "probe/1.0", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["upstream"], "api", "{line}");
    assert_eq!(line["endpoint"], up.addr.to_string(), "{line}");
    assert_eq!(line["outcome"], "success", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["bytes_out"], "api /orders/1".len(), "{line}");
    let ms = line["duration_ms"].as_f64().expect("a number");
    assert!(ms > 0.0, "{line}");
    let text = line["duration_ms"].to_string();
    assert!(text.split('.').nth(1).is_none_or(|d| d.len() <= 3), "microsecond precision, no float noise: {text}");
    assert!(line["timestamp"].is_string(), "{line}");
    // Every JSON line names its target.
    for l in fb.log_text().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        assert!(l["target"].is_string(), "{l}");
    }
}
