//! Recovery on evidence, over real sockets: a circuit opened because its
//! upstream could not be reached goes half-open as soon as a TCP connect to
//! an endpoint succeeds (no health check needed), and one real request
//! closes it; a circuit opened by failure statuses waits its resetTimeout
//! (a connect proves nothing there); with a health check, a passing probe
//! of an open circuit is the trial that closes it at once.
//!
//! Must not: wait for breaker time with sleeps: every wait here is for
//! I/O evidence (a knock every second), bounded by a deadline.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{circuit, client, closed_port, eventually, fusebox, get, upstream, upstream_on, TestClient};
use tokio::time::Instant;

fn config(port: u16, extra: &str) -> String {
    format!(
        "defaults: {{ startupGrace: 0s }}\nupstreams:\n  api:\n    endpoints: [http://127.0.0.1:{port}]\n    breaker: {{ failureThreshold: 3, resetTimeout: 60s, jitter: 0 }}\n{extra}routes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

async fn state(c: &TestClient, app: &fusebox::App) -> String {
    circuit(c, app, "api").await["state"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_by_connect_failures_recovers_when_a_connect_succeeds() {
    let port = closed_port();
    let app = fusebox(&config(port, "")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    for _ in 0..3 {
        assert_eq!(get(&c, &url).await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(state(&c, &app).await, "open");
    // Still down: the knocks fail and it stays open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state(&c, &app).await, "open", "no evidence, no recovery");

    // Back (a partition healed, the app restarted): half-open within about a
    // knock, not after the 60 s reset timeout.
    let up = upstream_on("api", port).await;
    let healed = Instant::now();
    while state(&c, &app).await != "half-open" {
        assert!(healed.elapsed() < Duration::from_secs(3), "half-open within 3 s of the heal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["lastTransition"]["rule"], "evidence", "{cb}");
    assert_eq!(up.hits(), 0, "the knock is a TCP connect, not a request");
    // One real request decides.
    let (status, _, body) = get(&c, &url).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "api /x"));
    assert_eq!(state(&c, &app).await, "closed");
    println!("first success {:?} after the heal", healed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_by_failure_statuses_waits_its_reset_timeout() {
    let up = upstream("api").await;
    up.set_status(500);
    let app = fusebox(&config(up.addr.port(), "")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    for _ in 0..3 {
        assert_eq!(get(&c, &url).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(state(&c, &app).await, "open");
    up.set_status(200);
    // Connects succeed all along: they prove nothing about a 500.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(state(&c, &app).await, "open", "a failure-status trip is not ended by a connect");
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_health_check_a_passing_probe_of_an_open_circuit_closes_it_at_once() {
    let up = upstream("api").await;
    up.set_status(500);
    let app = fusebox(&config(up.addr.port(), "    healthCheck: { path: /health, interval: 1s, timeout: 500ms }\n")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    for _ in 0..3 {
        get(&c, &url).await;
    }
    eventually(Duration::from_secs(3), "opened by the failures", || async { (state(&c, &app).await == "open").then_some(()) }).await;
    up.set_status(200);
    let healed = Instant::now();
    while state(&c, &app).await != "closed" {
        assert!(healed.elapsed() < Duration::from_secs(3), "closed by the next passing probe, not after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    let (_, _, text) = get(&c, &format!("http://{}/metrics", app.admin_addr())).await;
    assert!(
        text.lines().any(|l| l.starts_with("fusebox_circuit_transitions_total") && l.contains("reason=\"evidence\"") && l.ends_with(" 1")),
        "{text}"
    );
}
