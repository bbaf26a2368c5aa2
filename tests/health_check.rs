//! Active health checks: probes reach the configured path, are counted in
//! metrics, and in half-open the probe is the trial, so no user request is
//! spent on a broken upstream.

mod support;

use std::time::Duration;

use support::{advance, circuit, client, fusebox, get, upstream};

fn config(url: &str) -> String {
    format!(
        "upstreams:\n  api:\n    endpoints: [{url}]\n    breaker: {{ failureThreshold: 2, resetTimeout: 2s, jitter: 0 }}\n    healthCheck: {{ path: /healthz, interval: 500ms, timeout: 1s }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

/// Lets the runtime run its ready tasks (the probe loop) without sleeping.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_probe_is_the_half_open_trial() {
    let up = upstream("api").await;
    let app = fusebox(&config(&up.url())).await;
    let c = client();
    let url = format!("http://{}/work", app.data_addr());
    let state = |v: serde_json::Value| v["state"].as_str().unwrap_or_default().to_string();

    // The first probe runs at start, on the configured path.
    let start = tokio::time::Instant::now();
    while up.header("user-agent").as_deref() != Some("fusebox-health-check") {
        assert!(start.elapsed() < Duration::from_secs(5), "no probe seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Trip it with real failing traffic.
    up.set_status(500);
    assert_eq!(get(&c, &url).await.0, 500);
    assert_eq!(get(&c, &url).await.0, 500);
    let (status, headers, _) = get(&c, &url).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-fusebox-circuit"], "open");

    // The upstream recovers; after resetTimeout the circuit is half-open
    // and the next probe (every 500 ms) is the trial.
    up.set_status(200);
    let hits_before = up.hits();
    advance(Duration::from_millis(2_010)).await;
    settle().await;
    // A user request in half-open is refused: probes are the trials.
    let cb = circuit(&c, &app, "api").await;
    if state(cb.clone()) == "half-open" {
        let (status, headers, _) = get(&c, &url).await;
        assert_eq!(status, 503);
        assert_eq!(headers["x-fusebox-circuit"], "half-open");
    }
    // The next probe closes it.
    advance(Duration::from_millis(600)).await;
    let start = tokio::time::Instant::now();
    loop {
        settle().await;
        if state(circuit(&c, &app, "api").await) == "closed" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "probe never closed the circuit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["lastTransition"]["rule"], "probe", "{cb}");
    assert!(up.hits() > hits_before, "the probe reached the upstream");
    assert_eq!(up.header("user-agent").as_deref(), Some("fusebox-health-check"), "only probes reached it while recovering");
    assert_eq!(get(&c, &url).await.0, 200);

    let (_, _, metrics) = get(&c, &format!("http://{}/metrics", app.admin_addr())).await;
    let line =
        metrics.lines().find(|l| l.starts_with("fusebox_health_checks_total") && l.contains("result=\"success\"")).unwrap_or_default();
    let count: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(count >= 2.0, "{line}");
}
