//! The circuit breaker over real sockets: a real hyper upstream, fusebox on
//! port 0, a real client. Breaker timers are moved with tokio's paused clock
//! (`support::advance`), never slept on; sleeping only holds an upstream busy.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use http::StatusCode;
use serde_json::Value;
use support::{advance, circuit, client, fusebox, get, one_upstream, upstream, TestClient, TestUpstream};

const RESET: Duration = Duration::from_secs(2);
const MS10: Duration = Duration::from_millis(10);

/// One upstream `api` with extra upstream-level YAML (e.g. timeouts).
fn yaml_with(url: &str, breaker: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  api:\n    endpoints: [{url}]\n    breaker: {{ jitter: 0, {breaker} }}\n{extra}routes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Asserts the fail-fast answer of an open circuit and returns its body.
fn assert_open_503(status: StatusCode, headers: &http::HeaderMap, body: &str, rule: &str) -> Value {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "body: {body}");
    assert_eq!(headers.get("x-fusebox-circuit").map(|v| v.to_str().unwrap()), Some("open"));
    let retry: u64 =
        headers.get("retry-after").expect("retry-after header").to_str().unwrap().parse().expect("retry-after is integer seconds");
    assert!(retry > 0, "retry-after must be > 0, got {retry}");
    let v = json(body);
    assert_eq!(v["upstream"], "api", "{v}");
    assert_eq!(v["state"], "open", "{v}");
    assert_eq!(v["rule"], rule, "{v}");
    v
}

/// `n` concurrent GETs; returns each (status, circuit header).
async fn burst(c: &TestClient, url: &str, n: usize) -> Vec<(StatusCode, Option<String>)> {
    let reqs = (0..n).map(|_| async {
        let (s, h, _) = get(c, url).await;
        (s, h.get("x-fusebox-circuit").map(|v| v.to_str().unwrap().to_string()))
    });
    join_all(reqs).await
}

/// Trips the circuit of `api` with `threshold` 500s.
async fn trip(c: &TestClient, base: &str, up: &TestUpstream, threshold: usize) {
    up.set_status(500);
    for _ in 0..threshold {
        let (s, _, _) = get(c, &format!("{base}/x")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (s, h, b) = get(c, &format!("{base}/x")).await;
    assert_open_503(s, &h, &b, "consecutive");
}

#[tokio::test]
async fn trips_after_exactly_failure_threshold_and_fails_fast() {
    let up = upstream("api").await;
    up.set_status(500);
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3, resetTimeout: 2s")).await;
    let c = client();
    let base = format!("http://{}", app.data_addr());

    for i in 1..=3 {
        let (s, h, body) = get(&c, &format!("{base}/x")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "request {i} is the upstream's 500");
        assert!(h.get("x-fusebox-circuit").is_none());
        assert_eq!(body, "api /x");
        assert_eq!(up.hits(), i, "request {i} reached the upstream");
    }
    let (s, h, body) = get(&c, &format!("{base}/x")).await;
    let v = assert_open_503(s, &h, &body, "consecutive");
    assert!(v["retryAfterSeconds"].as_u64().unwrap() <= 2, "{v}");
    assert_eq!(up.hits(), 3, "the 4th request never reached the upstream");

    for _ in 0..20 {
        let (s, h, body) = get(&c, &format!("{base}/x")).await;
        assert_open_503(s, &h, &body, "consecutive");
    }
    assert_eq!(up.hits(), 3, "an open circuit sends nothing upstream");

    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "open", "{cb}");
    assert_eq!(cb["trip"]["rule"], "consecutive", "{cb}");
    assert_eq!(cb["rejected"], 21, "{cb}");
}

/// After resetTimeout, 20 concurrent requests: exactly `trials` reach the
/// upstream, the rest are refused at once; trial success closes.
async fn half_open_admits_exactly(trials: usize) {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), &format!("failureThreshold: 3, resetTimeout: 2s, halfOpenRequests: {trials}"))).await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    trip(&c, &base, &up, 3).await;
    assert_eq!(up.hits(), 3);

    // Just before the reset timeout: still open.
    advance(RESET - Duration::from_millis(300)).await;
    let (s, h, b) = get(&c, &format!("{base}/x")).await;
    assert_open_503(s, &h, &b, "consecutive");
    assert_eq!(up.hits(), 3);

    advance(Duration::from_millis(310)).await;
    up.set_status(200);
    up.set_delay(Duration::from_millis(200));
    up.reset_max_in_flight();
    let started = tokio::time::Instant::now();
    let results = burst(&c, &format!("{base}/x"), 20).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!(ok, trials, "trials admitted: {results:?}");
    assert_eq!(refused.len(), 20 - trials, "{results:?}");
    assert!(refused.iter().all(|(_, h)| h.as_deref() == Some("half-open")), "refusals name the half-open state: {results:?}");
    assert_eq!(up.hits(), 3 + trials, "only the trials reached the upstream");
    assert_eq!(up.max_in_flight(), trials, "at most halfOpenRequests trials in flight at once");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The trials succeeded: closed, traffic flows.
    up.set_delay(Duration::ZERO);
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "closed", "{cb}");
    for i in 0..5 {
        let (s, _, body) = get(&c, &format!("{base}/y")).await;
        assert_eq!(s, StatusCode::OK, "request {i} after recovery: {body}");
    }
    assert_eq!(up.hits(), 3 + trials + 5);
}

#[tokio::test]
async fn half_open_admits_exactly_one_trial() {
    half_open_admits_exactly(1).await;
}

#[tokio::test]
async fn half_open_admits_exactly_three_trials() {
    half_open_admits_exactly(3).await;
}

#[tokio::test]
async fn failed_trial_reopens_with_doubled_period() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3, resetTimeout: 2s, maxResetTimeout: 1m")).await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    trip(&c, &base, &up, 3).await;

    // Half-open: the trial fails (the upstream's 500 passes through).
    advance(RESET + MS10).await;
    let (s, _, body) = get(&c, &format!("{base}/x")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "the trial reached the upstream: {body}");
    assert_eq!(up.hits(), 4);

    // Reopened for 2 * resetTimeout.
    let (s, h, b) = get(&c, &format!("{base}/x")).await;
    let v = assert_open_503(s, &h, &b, "probe");
    assert_eq!(v["retryAfterSeconds"], 4, "open period doubled: {v}");
    assert_eq!(h.get("retry-after").unwrap(), "4");
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "open", "{cb}");
    assert_eq!(cb["recoveryAttempts"], 1, "{cb}");

    // One resetTimeout later: still open, upstream untouched.
    advance(RESET + MS10).await;
    let (s, h, b) = get(&c, &format!("{base}/x")).await;
    assert_open_503(s, &h, &b, "probe");
    assert_eq!(up.hits(), 4, "still open after one resetTimeout");

    // 2 * resetTimeout + 10ms in total: half-open, a trial is admitted.
    advance(RESET).await;
    up.set_status(200);
    let (s, _, body) = get(&c, &format!("{base}/x")).await;
    assert_eq!(s, StatusCode::OK, "trial admitted after the doubled period: {body}");
    assert_eq!(up.hits(), 5);
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "closed", "{cb}");
    assert_eq!(cb["recoveryAttempts"], 0, "a successful recovery resets the backoff: {cb}");
}

#[tokio::test]
async fn failure_rate_trips_before_consecutive() {
    let up = upstream("api").await;
    let app =
        fusebox(&one_upstream(&up.url(), "failureThreshold: 100, failureRateThreshold: 50, minimumRequestCount: 10, resetTimeout: 2s"))
            .await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    for i in 1..=10 {
        let want = if i % 2 == 0 { 500 } else { 200 };
        up.set_status(want);
        let (s, h, body) = get(&c, &format!("{base}/x")).await;
        assert_eq!(s.as_u16(), want, "call {i} reached the upstream: {body}");
        assert!(h.get("x-fusebox-circuit").is_none());
    }
    assert_eq!(up.hits(), 10);
    up.set_status(200);
    let (s, h, body) = get(&c, &format!("{base}/x")).await;
    let v = assert_open_503(s, &h, &body, "failure-rate");
    assert!(v["reason"].as_str().unwrap().contains("50.0%"), "{v}");
    assert_eq!(up.hits(), 10, "open after the 10th call");
}

#[tokio::test]
async fn slow_call_rate_trips() {
    let up = upstream("api").await;
    up.set_delay(Duration::from_millis(100));
    let app =
        fusebox(&one_upstream(&up.url(), "slowCallDuration: 50ms, slowCallRateThreshold: 50, minimumRequestCount: 4, resetTimeout: 2s"))
            .await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    for i in 1..=4 {
        let (s, _, body) = get(&c, &format!("{base}/x")).await;
        assert_eq!(s, StatusCode::OK, "slow call {i} still succeeds: {body}");
    }
    let (s, h, body) = get(&c, &format!("{base}/x")).await;
    assert_open_503(s, &h, &body, "slow-rate");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn request_timeouts_count_as_failures() {
    let up = upstream("api").await;
    up.set_delay(Duration::from_millis(500));
    let app = fusebox(&yaml_with(&up.url(), "failureThreshold: 3, resetTimeout: 2s", "    timeouts: { request: 100ms }\n")).await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    for i in 1..=3 {
        let started = tokio::time::Instant::now();
        let (s, _, body) = get(&c, &format!("{base}/x")).await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "call {i}: {body}");
        assert_eq!(json(&body)["error"]["code"], "upstream_timeout");
        assert!(started.elapsed() < Duration::from_millis(450), "answered at the timeout, not after the upstream");
    }
    let (s, h, body) = get(&c, &format!("{base}/x")).await;
    assert_open_503(s, &h, &body, "consecutive");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn connection_refused_counts_as_failure() {
    let port = support::closed_port();
    // (Past the startup grace: an upstream that never answered is excused
    // within it, tests/startup.rs.)
    let app = fusebox(&format!(
        "defaults: {{ startupGrace: 0s }}\n{}",
        one_upstream(&format!("http://127.0.0.1:{port}"), "failureThreshold: 3, resetTimeout: 2s")
    ))
    .await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    for i in 1..=3 {
        let (s, _, body) = get(&c, &format!("{base}/x")).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "call {i}: {body}");
        assert_eq!(json(&body)["error"]["code"], "upstream_unavailable");
    }
    let (s, h, body) = get(&c, &format!("{base}/x")).await;
    assert_open_503(s, &h, &body, "consecutive");
}

#[tokio::test]
async fn client_errors_never_open_the_circuit() {
    let up = upstream("api").await;
    up.set_status(404);
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3, resetTimeout: 2s")).await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    for i in 1..=30 {
        let (s, _, _) = get(&c, &format!("{base}/missing")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "call {i}");
    }
    assert_eq!(up.hits(), 30);
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "closed", "{cb}");
    assert_eq!(cb["failureCount"], 0, "{cb}");
    assert_eq!(cb["window"]["failures"], 0, "{cb}");
    assert_eq!(cb["window"]["calls"], 30, "{cb}");
}

#[tokio::test]
async fn bulkhead_refuses_above_max_concurrent_without_tripping() {
    let up = upstream("api").await;
    up.set_delay(Duration::from_millis(300));
    let app = fusebox(&yaml_with(&up.url(), "failureThreshold: 1, resetTimeout: 2s", "    maxConcurrentRequests: 2\n")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());

    let reqs = (0..6).map(|_| get(&c, &url));
    let results = join_all(reqs).await;
    let ok = results.iter().filter(|(s, _, _)| *s == StatusCode::OK).count();
    let overloaded: Vec<_> = results.iter().filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(overloaded.len(), 4, "{results:?}");
    for (_, h, body) in &overloaded {
        assert_eq!(h.get("x-fusebox-overloaded").map(|v| v.to_str().unwrap()), Some("true"), "{body}");
        assert!(h.get("x-fusebox-circuit").is_none(), "an overload is not a circuit refusal");
        assert_eq!(json(body)["error"]["code"], "overloaded");
    }
    assert_eq!(up.hits(), 2);
    assert_eq!(up.max_in_flight(), 2);

    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "closed", "overload is not an upstream failure: {cb}");
    assert_eq!(cb["failureCount"], 0, "{cb}");
    up.set_delay(Duration::ZERO);
    for _ in 0..3 {
        let (s, _, _) = get(&c, &url).await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(up.hits(), 5);
}
