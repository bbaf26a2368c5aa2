//! `GET /metrics` (README: Metrics) scraped on the admin listener during real
//! traffic and read with a real Prometheus text parser (`prometheus-parse`).
//! The richest scrape is written to `target/metrics-scrape.txt` so CI can
//! run `promtool check metrics` on it.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use prometheus_parse::{Sample, Scrape, Value as PValue};
use support::{body_client, call, client, fusebox, fusebox_file, get, one_upstream, send, temp_dir, upstream, TestClient};

const STATES: [&str; 6] = ["closed", "open", "half-open", "forced-open", "forced-closed", "metrics-only"];

/// One scrape: the raw text and its parse.
struct Metrics {
    text: String,
    scrape: Scrape,
}

async fn scrape(c: &TestClient, app: &fusebox::App) -> Metrics {
    let (status, headers, text) = get(c, &format!("http://{}/metrics", app.admin_addr())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let ct = headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    Metrics { text, scrape }
}

fn number(s: &Sample) -> f64 {
    match &s.value {
        PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
        other => panic!("{} is not a plain number: {other:?}", s.metric),
    }
}

impl Metrics {
    /// Samples of `metric` carrying every label of `labels`.
    fn find(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.scrape.samples.iter().filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).collect()
    }

    /// The value of the one series of `metric` with `labels`.
    fn one(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(metric, labels);
        assert_eq!(found.len(), 1, "exactly one {metric}{labels:?} expected, got {found:?}");
        number(found[0])
    }

    /// The sum over every series of `metric` with `labels`.
    fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(metric, labels).into_iter().map(number).sum()
    }

    /// `fusebox_circuit_state` of `upstream`: the one state at 1 (and
    /// every other state present at 0).
    fn state(&self, upstream: &str) -> String {
        let series = self.find("fusebox_circuit_state", &[("upstream", upstream)]);
        let got: BTreeSet<&str> = series.iter().map(|s| s.labels.get("state").unwrap()).collect();
        assert_eq!(got, STATES.into_iter().collect(), "one series per state: {series:?}");
        let on: Vec<&str> = series
            .iter()
            .filter(|s| {
                let v = number(s);
                assert!(v == 0.0 || v == 1.0, "{s:?}");
                v == 1.0
            })
            .map(|s| s.labels.get("state").unwrap())
            .collect();
        assert_eq!(on.len(), 1, "exactly one state is 1: {series:?}");
        on[0].to_owned()
    }

    /// `fusebox_request_duration_seconds` of `upstream`: (count, sum,
    /// the +Inf bucket).
    fn duration(&self, upstream: &str) -> (f64, f64, f64) {
        let count = self.one("fusebox_request_duration_seconds_count", &[("upstream", upstream)]);
        let sum = self.one("fusebox_request_duration_seconds_sum", &[("upstream", upstream)]);
        let hist = self.find("fusebox_request_duration_seconds", &[("upstream", upstream)]);
        assert_eq!(hist.len(), 1, "{hist:?}");
        let PValue::Histogram(buckets) = &hist[0].value else { panic!("not a histogram: {hist:?}") };
        let mut last = 0.0;
        for b in buckets {
            assert!(b.count >= last, "buckets are cumulative: {buckets:?}");
            last = b.count;
        }
        let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY).expect("+Inf bucket").count;
        (count, sum, inf)
    }

    /// Every series family has its HELP and TYPE lines.
    fn assert_documented(&self) {
        let families: BTreeSet<&str> = self
            .text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|sfx| n.strip_suffix(sfx).filter(|base| base.ends_with("_seconds")))
                    .unwrap_or(n)
            })
            .collect();
        assert!(!families.is_empty());
        for f in families {
            // fusebox's own, and the standard process_* series.
            assert!(f.starts_with("fusebox_") || f.starts_with("process_"), "only fusebox_ and process_ series: {f}");
            assert!(self.text.contains(&format!("# HELP {f} ")), "HELP for {f}");
            assert!(self.text.contains(&format!("# TYPE {f} ")), "TYPE for {f}");
        }
    }
}

fn requests(m: &Metrics, outcome: &str, class: &str) -> f64 {
    m.one("fusebox_requests_total", &[("upstream", "api"), ("outcome", outcome), ("code_class", class)])
}

async fn send_n(c: &TestClient, url: &str, n: usize, want: StatusCode) {
    for i in 0..n {
        let (s, _, body) = get(c, url).await;
        assert_eq!(s, want, "request {i} of {n}: {body}");
    }
}

#[tokio::test]
async fn requests_states_transitions_and_rejections_follow_real_traffic() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3, resetTimeout: 60s")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());

    let m = scrape(&c, &app).await;
    m.assert_documented();
    assert_eq!(m.state("api"), "closed");
    assert_eq!(m.sum("fusebox_requests_total", &[("upstream", "api")]), 0.0);
    assert_eq!(m.one("fusebox_config_generation", &[]), 1.0);
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "success")]), 0.0);
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "failure")]), 0.0);
    assert!(m.one("fusebox_config_last_reload_success_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(m.one("fusebox_in_flight_requests", &[("upstream", "api")]), 0.0);
    assert_eq!(m.one("fusebox_websocket_clients", &[]), 0.0);

    // 7 successes, and a 404 (a success by default).
    send_n(&c, &url, 7, StatusCode::OK).await;
    up.set_status(404);
    send_n(&c, &url, 1, StatusCode::NOT_FOUND).await;
    let m = scrape(&c, &app).await;
    assert_eq!(requests(&m, "success", "2xx"), 7.0);
    assert_eq!(requests(&m, "success", "4xx"), 1.0);
    assert_eq!(m.sum("fusebox_requests_total", &[("upstream", "api")]), 8.0);
    assert_eq!(m.state("api"), "closed");
    let (count, sum, inf) = m.duration("api");
    assert_eq!((count, inf), (8.0, 8.0));
    assert!(sum > 0.0 && sum < 8.0, "{sum}");

    // 3 failures trip the circuit.
    up.set_status(500);
    send_n(&c, &url, 3, StatusCode::INTERNAL_SERVER_ERROR).await;
    let m = scrape(&c, &app).await;
    assert_eq!(requests(&m, "failure", "5xx"), 3.0);
    assert_eq!(m.state("api"), "open");
    let closed_open = [("upstream", "api"), ("from", "closed"), ("to", "open"), ("reason", "consecutive")];
    assert_eq!(m.one("fusebox_circuit_transitions_total", &closed_open), 1.0);
    assert_eq!(m.sum("fusebox_circuit_transitions_total", &[("upstream", "api")]), 1.0);
    assert_eq!(m.sum("fusebox_rejected_total", &[("upstream", "api")]), 0.0);

    // 4 rejected at once: counted as rejections, not as upstream calls.
    for _ in 0..4 {
        let (s, h, _) = get(&c, &url).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.get("x-fusebox-circuit").unwrap(), "open");
    }
    assert_eq!(up.hits(), 11);
    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_rejected_total", &[("upstream", "api"), ("reason", "circuit_open")]), 4.0);
    assert_eq!(m.one("fusebox_rejected_total", &[("upstream", "api"), ("reason", "half_open_full")]), 0.0);
    assert_eq!(m.one("fusebox_rejected_total", &[("upstream", "api"), ("reason", "overloaded")]), 0.0);
    assert_eq!(requests(&m, "rejected", "5xx"), 4.0);
    assert_eq!(requests(&m, "success", "2xx"), 7.0);
    assert_eq!(requests(&m, "failure", "5xx"), 3.0);
    assert_eq!(m.sum("fusebox_requests_total", &[("upstream", "api"), ("outcome", "timeout")]), 0.0);
    assert_eq!(m.sum("fusebox_requests_total", &[("upstream", "api")]), 15.0);
    let (count, _, inf) = m.duration("api");
    assert_eq!((count, inf), (11.0, 11.0), "rejections are not upstream calls");
    assert_eq!(m.one("fusebox_in_flight_requests", &[("upstream", "api")]), 0.0);
    assert_eq!(m.one("fusebox_circuit_transitions_total", &closed_open), 1.0);
    assert_eq!(m.state("api"), "open");
    m.assert_documented();

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/metrics-scrape.txt");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &m.text).unwrap();
}

#[tokio::test]
async fn overloaded_rejections_and_in_flight_are_counted() {
    let up = upstream("api").await;
    up.set_delay(Duration::from_millis(300));
    let app = fusebox(&format!(
        "upstreams:\n  api:\n    endpoints: [{}]\n    maxConcurrentRequests: 1\n    breaker: {{ jitter: 0, failureThreshold: 1 }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    ))
    .await;
    let c = client();
    let url = format!("http://{}/slow", app.data_addr());

    let slow = tokio::spawn({
        let c = c.clone();
        let url = url.clone();
        async move { get(&c, &url).await.0 }
    });
    // Wait for the slow request to reach the upstream (not a breaker timer).
    for _ in 0..1000 {
        if up.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(up.in_flight.load(std::sync::atomic::Ordering::SeqCst), 1);
    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_in_flight_requests", &[("upstream", "api")]), 1.0);

    for _ in 0..2 {
        let (s, h, _) = get(&c, &url).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.get("x-fusebox-overloaded").unwrap(), "true");
    }
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(up.hits(), 1);

    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_rejected_total", &[("upstream", "api"), ("reason", "overloaded")]), 2.0);
    assert_eq!(m.one("fusebox_rejected_total", &[("upstream", "api"), ("reason", "circuit_open")]), 0.0);
    assert_eq!(requests(&m, "rejected", "5xx"), 2.0);
    assert_eq!(requests(&m, "success", "2xx"), 1.0);
    assert_eq!(m.state("api"), "closed", "overload is not an upstream failure");
    assert_eq!(m.duration("api").0, 1.0);
    assert_eq!(m.one("fusebox_in_flight_requests", &[("upstream", "api")]), 0.0);
}

#[tokio::test]
async fn label_values_come_only_from_config_names() {
    let up = upstream("api").await;
    let app = fusebox(&format!(
        "upstreams:\n  api:\n    endpoints: [{}]\n    breaker: {{ jitter: 0 }}\nroutes:\n  - {{ match: {{ pathPrefix: /api/ }}, upstream: api }}\n",
        up.url()
    ))
    .await;
    let c = client();
    let base = format!("http://{}", app.data_addr());
    let weird = |path: &str, host: Option<&str>, method: &str| {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("{base}{path}"))
            .header("x-request-id", "zzqid-evil")
            .header("user-agent", "zzqagent");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(http_body_util::Empty::new()).unwrap()
    };
    let routed = [
        weird("/api/zzq-weird/%3Cscript%3E?zzq=evil", None, "GET"),
        weird("/api/zzq", Some("evil-zzq.example"), "GET"),
        weird("/api/zzq", None, "ZZQMETHOD"),
        weird("/api/x%20zzq%22%7D", None, "DELETE"),
    ];
    let n_routed = routed.len();
    for req in routed {
        let (s, _, body) = send(&c, req).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    for req in [weird("/zzq-unrouted", None, "GET"), weird("/zzq", Some("evil-zzq.example:1234"), "POST")] {
        let (s, _, body) = send(&c, req).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "no route: {body}");
    }
    assert_eq!(up.hits(), n_routed);

    let m = scrape(&c, &app).await;
    // Samples only: HELP texts are fusebox's own words ("descriptors").
    let lower: String = m.text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").to_lowercase();
    for needle in ["zzq", "evil", "script", "%3c", "<"] {
        assert!(!lower.contains(needle), "request data `{needle}` leaked into /metrics");
    }
    assert_eq!(requests(&m, "success", "2xx"), n_routed as f64);

    let endpoint = up.addr.to_string();
    // The build's target triple, as fusebox reports it.
    let build = m.text.lines().find(|l| l.starts_with("fusebox_build_info{")).unwrap_or("").to_string();
    let target = build.split("target=\"").nth(1).and_then(|t| t.split('"').next()).unwrap_or("").to_string();
    assert!(!target.is_empty(), "fusebox_build_info carries its target: {build}");
    let allowed: HashMap<&str, Vec<&str>> = HashMap::from([
        ("upstream", vec!["api"]),
        // The endpoint's address, from the config.
        ("endpoint", vec![endpoint.as_str()]),
        ("outcome", vec!["success", "failure", "rejected", "timeout"]),
        ("code_class", vec!["1xx", "2xx", "3xx", "4xx", "5xx", "none"]),
        ("state", STATES.to_vec()),
        ("from", STATES.to_vec()),
        ("to", STATES.to_vec()),
        (
            "reason",
            vec![
                "circuit_open",
                "half_open_full",
                "overloaded",
                "recovery_ramp",
                "upstream_starting",
                "no_endpoint",
                "consecutive",
                "failure-rate",
                "slow-rate",
                "reset-timeout",
                "evidence",
                "probe",
                "operator",
                "ttl",
            ],
        ),
        ("result", vec!["success", "failure"]),
        // fusebox_open_connections: the two listeners.
        ("listener", vec!["data", "admin"]),
        // fusebox_build_info: what was built, never request data.
        ("version", vec![env!("CARGO_PKG_VERSION")]),
        ("commit", vec![option_env!("FUSEBOX_GIT_COMMIT").unwrap_or("unknown")]),
        ("target", vec![target.as_str()]),
    ]);
    assert!(!m.scrape.samples.is_empty());
    for s in &m.scrape.samples {
        for (k, v) in s.labels.iter() {
            let ok = allowed.get(k.as_str()).unwrap_or_else(|| panic!("unexpected label {k} on {s:?}"));
            assert!(ok.contains(&v.as_str()), "label {k}={v:?} on {} is not a config or fixed name", s.metric);
        }
    }
}

#[tokio::test]
async fn config_reloads_and_generation_are_exported() {
    let up = upstream("api").await;
    let dir = temp_dir("metrics-reload");
    let path = dir.join("fusebox.yaml");
    let text =
        format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\n{}", one_upstream(&up.url(), "failureThreshold: 3"));
    std::fs::write(&path, &text).unwrap();
    let app = fusebox_file(&path).await;
    let c = client();
    let bc = body_client();
    let reload = format!("http://{}/api/admin/config/reload", app.admin_addr());

    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_config_generation", &[]), 1.0);
    assert_eq!(m.one("fusebox_config_last_reload_successful", &[]), 1.0);
    let started = m.one("fusebox_config_last_reload_success_timestamp_seconds", &[]);
    assert!(started > 1.6e9, "{started}");

    // A reload of the unchanged file succeeds.
    let (s, _, body) = call(&bc, Method::POST, &reload, &[], "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "success")]), 1.0);
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "failure")]), 0.0);
    assert_eq!(m.one("fusebox_config_generation", &[]), 2.0);
    assert!(m.one("fusebox_config_last_reload_success_timestamp_seconds", &[]) >= started);

    // The file is gone (moved away, so the watcher has nothing to re-read):
    // the reload fails and the running config stays.
    let away = dir.join("moved.yaml");
    std::fs::rename(&path, &away).unwrap();
    let (s, _, body) = call(&bc, Method::POST, &reload, &[], "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "failure")]), 1.0);
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "success")]), 1.0);
    assert_eq!(m.one("fusebox_config_last_reload_successful", &[]), 0.0);
    assert_eq!(m.one("fusebox_config_generation", &[]), 2.0);
    let (s, _, _) = get(&c, &format!("http://{}/x", app.data_addr())).await;
    assert_eq!(s, StatusCode::OK, "still serving");

    // Back (same content, so the watcher does not reload on its own).
    std::fs::rename(&away, &path).unwrap();
    let (s, _, body) = call(&bc, Method::POST, &reload, &[], "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let m = scrape(&c, &app).await;
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "success")]), 2.0);
    assert_eq!(m.one("fusebox_config_reloads_total", &[("result", "failure")]), 1.0);
    assert_eq!(m.one("fusebox_config_last_reload_successful", &[]), 1.0);
    assert_eq!(m.one("fusebox_config_generation", &[]), 3.0);
    assert_eq!(m.state("api"), "closed");
}

#[tokio::test]
async fn metrics_only_would_be_trips_are_not_counted_as_real_trips() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 2, resetTimeout: 60s")).await;
    let c = client();
    let bc = body_client();
    let force = format!("http://{}/api/admin/circuit-breaker/api/force", app.admin_addr());
    let (s, _, body) = call(&bc, Method::POST, &force, &[], r#"{"state":"metrics-only","reason":"tune"}"#).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    up.set_status(500);
    send_n(&c, &format!("http://{}/x", app.data_addr()), 4, StatusCode::INTERNAL_SERVER_ERROR).await;
    let m = scrape(&c, &app).await;
    assert_eq!(m.state("api"), "metrics-only");
    assert_eq!(requests(&m, "failure", "5xx"), 4.0);
    assert_eq!(m.sum("fusebox_rejected_total", &[("upstream", "api")]), 0.0);
    assert_eq!(
        m.one(
            "fusebox_circuit_transitions_total",
            &[("upstream", "api"), ("from", "closed"), ("to", "metrics-only"), ("reason", "operator")]
        ),
        1.0
    );
    // The circuit never opened: a would-be trip must not look like a real
    // one to alerts on `fusebox_circuit_transitions_total{from="closed",to="open"}`.
    assert_eq!(m.sum("fusebox_circuit_transitions_total", &[("upstream", "api"), ("from", "closed"), ("to", "open")]), 0.0, "{}", m.text);
    // It is counted as what it is: a would-be trip, with its rule.
    let shadow = [("upstream", "api"), ("from", "closed"), ("to", "open"), ("reason", "consecutive")];
    assert_eq!(m.one("fusebox_circuit_shadow_transitions_total", &shadow), 1.0, "{}", m.text);
    m.assert_documented();
}

/// SPEC 7: open downstream connections per listener, bytes in and out per
/// upstream, and each endpoint's attempts and their durations.
#[tokio::test]
async fn connections_bytes_and_endpoint_series_follow_real_traffic() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let app = fusebox(&format!(
        "upstreams:\n  api:\n    endpoints: [{}, {}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        a.url(),
        b.url()
    ))
    .await;
    let c = body_client();
    let url = format!("http://{}/orders", app.data_addr());
    let mut received = 0usize;
    for i in 0..10 {
        let (s, _, body) = call(&c, Method::POST, &url, &[], "x".repeat(100)).await;
        assert_eq!(s, StatusCode::OK, "request {i}: {body}");
        received += body.len();
    }
    assert!(received > 0);
    let m = scrape(&client(), &app).await;
    assert_eq!(m.one("fusebox_request_bytes_total", &[("upstream", "api")]), 1000.0, "10 bodies of 100 bytes went up");
    assert_eq!(m.one("fusebox_response_bytes_total", &[("upstream", "api")]), received as f64, "every response byte came down");

    let label = |u: &support::TestUpstream| u.url().trim_start_matches("http://").trim_end_matches('/').to_string();
    let (la, lb) = (label(&a), label(&b));
    let ok = |e: &str| m.one("fusebox_endpoint_requests_total", &[("upstream", "api"), ("endpoint", e), ("outcome", "success")]);
    assert_eq!(ok(&la) + ok(&lb), 10.0, "each attempt counted once, on its endpoint");
    assert_eq!(ok(&la), a.hits() as f64, "endpoint a's count is what a served");
    assert_eq!(ok(&lb), b.hits() as f64, "endpoint b's count is what b served");
    for e in [&la, &lb] {
        assert_eq!(m.one("fusebox_endpoint_requests_total", &[("endpoint", e), ("outcome", "failure")]), 0.0, "exported at zero");
        let count = m.one("fusebox_endpoint_request_duration_seconds_count", &[("upstream", "api"), ("endpoint", e)]);
        assert_eq!(count, ok(e), "one duration per attempt of {e}");
    }

    // The client's keep-alive connection to the data listener, and the
    // scrape's own to the admin listener, are open.
    assert!(m.one("fusebox_open_connections", &[("listener", "data")]) >= 1.0, "{}", m.text);
    assert!(m.one("fusebox_open_connections", &[("listener", "admin")]) >= 1.0, "{}", m.text);
    drop(c);
    // Once the client has gone, its connection is counted out.
    let admin = client();
    support::eventually(Duration::from_secs(10), "the data connection is counted out", || async {
        (scrape(&admin, &app).await.one("fusebox_open_connections", &[("listener", "data")]) == 0.0).then_some(())
    })
    .await;
    m.assert_documented();
    app.shutdown().await;
}
