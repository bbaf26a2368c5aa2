//! SPEC 9a, a sidecar that starts before its app, over real sockets: while
//! an endpoint has never answered (within `startupGrace`), a refused
//! connect answers 503 `upstream_starting` with `Retry-After: 1` and counts
//! for no circuit and no endpoint; `readiness.upstreams` keeps `/readyz` at
//! 503 until the app answered once (fusebox knocks on it itself, since a
//! pod that is not ready gets no traffic); the first request after the app
//! is up is served, and no fallback is ever served. An endpoint that
//! answered once, or whose grace is over, counts its refusals again.
//!
//! Must not: sleep for breaker time (the grace is crossed with
//! `tokio::time::advance`); waits for real I/O are bounded polls.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{advance, circuit, client, closed_port, eventually, fusebox, get, upstream_on, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn app_config(port: u16, extra: &str) -> String {
    format!(
        "readiness: {{ upstreams: [app] }}\nupstreams:\n  app:\n    endpoints: [http://127.0.0.1:{port}]\n    breaker: {{ failureThreshold: 2, resetTimeout: 30s }}\n    fallback: {{ status: 503, body: 'fallback' }}\n{extra}routes:\n  - {{ match: {{ pathPrefix: / }}, upstream: app }}\n"
    )
}

async fn metric(c: &TestClient, admin: std::net::SocketAddr, line_start: &str) -> f64 {
    let (_, _, text) = get(c, &format!("http://{admin}/metrics")).await;
    text.lines().find_map(|l| l.strip_prefix(line_start)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn an_app_that_starts_after_fusebox_opens_no_circuit_and_readyz_waits_for_its_first_answer() {
    let port = closed_port();
    let app = fusebox(&app_config(port, "")).await;
    let c = client();
    let readyz = format!("http://{}/readyz", app.admin_addr());
    let (status, _, body) = get(&c, &readyz).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready before the app answered: {body}");
    assert!(body.contains("\"waitingFor\":[\"app\"]"), "{body}");

    // The app is not listening yet: every request is `upstream_starting`.
    let url = format!("http://{}/orders", app.data_addr());
    for _ in 0..10 {
        let (status, headers, body) = get(&c, &url).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"code\":\"upstream_starting\""), "{body}");
        assert!(!body.contains("fallback"), "no fallback while starting: {body}");
        assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    }
    let cb = circuit(&c, &app, "app").await;
    assert_eq!(cb["state"], "closed", "no circuit opened by a starting app: {cb}");
    assert_eq!(cb["failureCount"], 0, "{cb}");
    let rejected = metric(&c, app.admin_addr(), "fusebox_rejected_total{reason=\"upstream_starting\",upstream=\"app\"}").await;
    assert_eq!(rejected, 10.0);

    // The app comes up: /readyz follows within a couple of knocks (nothing
    // else sends it traffic), and the first request is served.
    let _up = upstream_on("app", port).await;
    eventually(Duration::from_secs(5), "/readyz turns 200 once the app answered", || async {
        (get(&c, &readyz).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let (status, _, body) = get(&c, &url).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app /orders"));
    assert_eq!(circuit(&c, &app, "app").await["state"], "closed");
}

/// An upstream that answers one request and then goes away.
async fn answer_once() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        }
        drop(listener);
    });
    port
}

#[tokio::test]
async fn an_app_that_answered_once_counts_its_refusals_again() {
    let port = answer_once().await;
    let app = fusebox(&app_config(port, "")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    // fusebox's own knock (readiness) gets the one answer.
    let readyz = format!("http://{}/readyz", app.admin_addr());
    eventually(Duration::from_secs(5), "/readyz turns 200 once the app answered", || async {
        (get(&c, &readyz).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    // Gone now: refusals are failures, and the circuit opens at 2.
    for _ in 0..2 {
        let (status, _, body) = get(&c, &url).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    }
    let (status, _, body) = get(&c, &url).await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "fallback"));
    assert_eq!(circuit(&c, &app, "app").await["state"], "open");
}

#[tokio::test]
async fn after_startup_grace_a_refused_connect_counts() {
    let port = closed_port();
    let app = fusebox(&app_config(port, "    startupGrace: 10s\n")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    assert!(get(&c, &url).await.2.contains("upstream_starting"));
    advance(Duration::from_secs(11)).await;
    for _ in 0..2 {
        let (status, _, body) = get(&c, &url).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "past the grace a refusal is a failure: {body}");
    }
    assert_eq!(circuit(&c, &app, "app").await["state"], "open");
}

#[tokio::test]
async fn readiness_names_only_upstreams_of_the_file() {
    let err = fusebox::config::parse(
        "readiness: { upstreams: [nope] }\nupstreams:\n  app:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - { match: { pathPrefix: / }, upstream: app }\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("readiness.upstreams[0]: `nope` is not an upstream of this file"), "{err}");
}
