//! The Grafana fleet dashboard (`deploy/grafana/fusebox-fleet.json`) and the
//! alert rules (`deploy/prometheus/alerts.yml`) against a real Prometheus
//! scraping a real fusebox.
//!
//! fusebox runs in-process (the test harness) with two upstreams: `web`
//! (healthy) and `api` over a closed port and an endpoint answering 500,
//! with an operation circuit `api/checkout` on one route, so the traffic
//! below produces a retry (connect failure), an ejection (the closed port),
//! a trip of the operation and then of the upstream (consecutive 500s) and
//! rejections of both. Debian's
//! `prometheus` server scrapes fusebox's admin listener every second and
//! evaluates the alert rules every second. Then:
//!
//! - every target of every panel, with the Grafana variables substituted
//!   (`$__rate_interval`, `$__interval`, `$__range` -> `1m`; `$namespace`,
//!   `$pod`, `$upstream` -> `.*`, all used with `=~`), goes through
//!   `/api/v1/query` and must answer `success` with a non-empty result;
//! - every `label_values(...)` variable query must find its label on a
//!   series (`/api/v1/series`);
//! - every alert rule expression must answer `success`, Prometheus must
//!   report every rule healthy after evaluating it, and FuseboxCircuitOpen,
//!   FuseboxOperationCircuitOpen and FuseboxEndpointEjected must be pending
//!   (or firing) for the circuits and the endpoint this traffic broke;
//! - separately, `promtool test rules deploy/prometheus/alerts.test.yml`
//!   (the rules' unit tests, operation circuits and FuseboxDown included)
//!   must pass, when promtool is installed.
//!
//! Skipped with a clear message when no `prometheus` binary is found
//! (`apt-get install -y prometheus`; CI installs it). `PROMETHEUS_BIN`
//! picks another binary. Every wait is bounded; Prometheus is killed and its
//! data removed when the test ends, pass or fail.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;
use support::{client, closed_port, fusebox, get, temp_dir, upstream, TestClient};
use tokio::time::Instant;

/// Longest wait for Prometheus to start, scrape, or see a series.
const WAIT: Duration = Duration::from_secs(30);

/// Labels the scrape adds to fusebox's series, as a Kubernetes scrape would.
const NAMESPACE: &str = "shop";
const POD: &str = "app-5d8f7c9b4-x2x7q";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$PROMETHEUS_BIN`, else `prometheus` on `PATH`.
fn prometheus_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("prometheus")).find(|p| p.is_file())
}

/// A Prometheus server in a temporary directory; killed (and the directory
/// removed) on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Prometheus {
    fn start(bin: &Path, fusebox_admin: &str, rules: &Path) -> Prometheus {
        let dir = temp_dir("prometheus");
        let port = closed_port();
        let config = format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{rules}\"]\n\
             scrape_configs:\n  \
               - job_name: fusebox\n    \
                 static_configs:\n      \
                   - targets: [\"{fusebox_admin}\"]\n        \
                     labels: {{ namespace: {NAMESPACE}, pod: {POD} }}\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Prometheus { child, dir, base: format!("http://127.0.0.1:{port}") }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Panics with Prometheus's log if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}); its log:\n{}", self.log());
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET without panicking on a refused connection: (status, body).
async fn try_get(c: &TestClient, url: &str) -> Option<(StatusCode, String)> {
    let resp = tokio::time::timeout(Duration::from_secs(5), c.get(url.parse().ok()?)).await.ok()?.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus HTTP API answer as JSON (any status: the body says why).
async fn api(c: &TestClient, prom: &Prometheus, path_and_query: &str) -> Value {
    let url = format!("{}{path_and_query}", prom.base);
    let (status, body) = try_get(c, &url).await.unwrap_or_else(|| panic!("no answer from {url}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {status}, not JSON ({e}): {body}"))
}

async fn query(c: &TestClient, prom: &Prometheus, promql: &str) -> Value {
    api(c, prom, &format!("/api/v1/query?query={}", encode(promql))).await
}

/// Polls `promql` until its result is non-empty; the last answer either way.
async fn query_until_non_empty(c: &TestClient, prom: &Prometheus, promql: &str, deadline: Instant) -> Value {
    loop {
        let v = query(c, prom, promql).await;
        let non_empty = v["data"]["result"].as_array().is_some_and(|r| !r.is_empty());
        if v["status"] != "success" || non_empty || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Grafana's variables as this test sets them: every interval one minute
/// (the scrape is every second, so a minute holds plenty of samples), and
/// every dashboard variable "All" (`allValue: .*`).
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut e = expr.to_string();
    for interval in ["__rate_interval", "__interval", "__range"] {
        e = e.replace(&format!("${{{interval}}}"), "1m").replace(&format!("${interval}"), "1m");
    }
    // Longest names first, so `$pod` never eats part of a `$podname`.
    let mut names: Vec<&String> = variables.iter().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        e = e.replace(&format!("${{{name}}}"), ".*").replace(&format!("${name}"), ".*");
    }
    e
}

/// Every panel (rows' nested panels too) with its targets' expressions.
fn panel_targets(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr: {t}"));
                out.push((title.clone(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every alerting/recording rule of a rules file: (name, expr).
fn rule_exprs(rules_file: &Path) -> Vec<(String, String)> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(rules_file).unwrap()).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or_else(|| rule["record"].as_str()).expect("alert or record");
            out.push((name.to_string(), rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

/// fusebox's own scrape, for the diagnostics of a failed wait.
async fn fusebox_metrics(c: &TestClient, admin: &str) -> String {
    get(c, &format!("http://{admin}/metrics")).await.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_and_alert_rule_queries_a_real_prometheus() {
    let Some(bin) = prometheus_bin() else {
        println!("skipped: no prometheus binary ($PROMETHEUS_BIN, else `prometheus` on PATH): apt-get install -y prometheus");
        return;
    };
    let dashboard_path = repo().join("deploy/grafana/fusebox-fleet.json");
    let rules_path = repo().join("deploy/prometheus/alerts.yml");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&dashboard_path).unwrap()).unwrap();

    // --- fusebox: a healthy upstream, and one over a closed port and a 500 ---
    let good = upstream("good").await;
    let flaky = upstream("flaky").await;
    flaky.set_status(500);
    let dead = closed_port();
    let app = fusebox(&format!(
        "upstreams:\n\
         \x20 web:\n\
         \x20   endpoints: [{good}]\n\
         \x20 api:\n\
         \x20   endpoints: [http://127.0.0.1:{dead}, {flaky}]\n\
         \x20   timeouts: {{ connect: 500ms, request: 2s }}\n\
         \x20   breaker: {{ jitter: 0, failureThreshold: 6, resetTimeout: 10m, maxResetTimeout: 10m }}\n\
         \x20   outlierDetection: {{ consecutiveFailures: 2, baseEjectionTime: 10m, maxEjectionTime: 10m }}\n\
         routes:\n\
         \x20 - {{ match: {{ pathPrefix: /api/checkout }}, upstream: api, operation: checkout, breaker: {{ failureThreshold: 3 }} }}\n\
         \x20 - {{ match: {{ pathPrefix: /api }}, upstream: api }}\n\
         \x20 - {{ match: {{ pathPrefix: / }}, upstream: web }}\n",
        good = good.url(),
        flaky = flaky.url(),
    ))
    .await;
    let admin = app.admin_addr().to_string();
    let data = app.data_addr();
    let c = client();

    // --- Prometheus, scraping it; wait for a few scrapes ---
    let mut prom = Prometheus::start(&bin, &admin, &rules_path);
    let deadline = Instant::now() + WAIT;
    loop {
        prom.assert_running();
        if let Some((StatusCode::OK, _)) = try_get(&c, &format!("{}/-/ready", prom.base)).await {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus not ready within {WAIT:?}; its log:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scraped = query_until_non_empty(
        &c,
        &prom,
        r#"count_over_time(up{job="fusebox"}[1m]) >= 3 and up{job="fusebox"} == 1"#,
        Instant::now() + WAIT,
    )
    .await;
    assert!(
        scraped["data"]["result"].as_array().is_some_and(|r| !r.is_empty()),
        "prometheus did not scrape fusebox ({admin}) 3 times: {scraped}\ntargets: {}\nlog:\n{}",
        api(&c, &prom, "/api/v1/targets").await,
        prom.log()
    );

    // --- traffic: successes, a retry, an ejection, a trip, rejections ---
    for i in 0..20 {
        get(&c, &format!("http://{data}/ok/{i}")).await;
    }
    // The operation circuit `api/checkout` trips first (its own threshold),
    // then refuses its route's calls.
    let deadline = Instant::now() + WAIT;
    let mut op_statuses = Vec::new();
    loop {
        let (status, headers, _) = get(&c, &format!("http://{data}/api/checkout/{}", op_statuses.len())).await;
        op_statuses.push(status.as_u16());
        if headers.contains_key("x-fusebox-circuit") {
            break;
        }
        assert!(Instant::now() < deadline && op_statuses.len() < 100, "the checkout operation circuit never opened: {op_statuses:?}");
    }
    for i in 0..5 {
        get(&c, &format!("http://{data}/api/checkout/rejected/{i}")).await;
    }
    let deadline = Instant::now() + WAIT;
    let mut statuses = Vec::new();
    loop {
        let (status, headers, _) = get(&c, &format!("http://{data}/api/{}", statuses.len())).await;
        statuses.push(status.as_u16());
        if headers.contains_key("x-fusebox-circuit") || status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(Instant::now() < deadline && statuses.len() < 100, "the api circuit never opened: {statuses:?}");
    }
    for i in 0..5 {
        get(&c, &format!("http://{data}/api/rejected/{i}")).await;
    }
    let m = fusebox_metrics(&c, &admin).await;
    for needle in [
        "fusebox_retries_total{",
        "fusebox_endpoint_ejections_total{",
        r#"fusebox_endpoint_ejected{endpoint="127.0.0.1:"#,
        r#"fusebox_circuit_state{state="open",upstream="api"} 1"#,
        r#"fusebox_operation_circuit_state{operation="checkout",state="open",upstream="api"} 1"#,
        r#"fusebox_operation_rejected_total{operation="checkout",reason="circuit_open",upstream="api"}"#,
    ] {
        assert!(m.contains(needle), "the traffic ({statuses:?}) did not produce {needle}:\n{m}");
    }
    // The 500s were the flaky endpoint's "for a while": it answers 200 now.
    flaky.set_status(200);

    // --- every panel target ---
    let variables: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] != "datasource")
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let targets = panel_targets(&dashboard);
    assert!(targets.len() >= 15, "the dashboard has only {} panel targets", targets.len());
    let deadline = Instant::now() + WAIT;
    let mut failures = Vec::new();
    for (title, expr) in &targets {
        let promql = substitute(expr, &variables);
        assert!(!promql.contains('$'), "panel {title:?}: a variable left after substitution: {promql}");
        let v = query_until_non_empty(&c, &prom, &promql, deadline).await;
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        if v["status"] != "success" || n == 0 {
            failures.push(format!("panel {title:?}\n  query: {promql}\n  answer: {v}"));
        } else {
            println!("ok  {n:>3} series  {title}: {promql}");
        }
    }
    assert!(failures.is_empty(), "{} panel queries failed or were empty:\n{}\nfusebox metrics:\n{m}", failures.len(), failures.join("\n"));

    // --- the variables' label_values(...) queries find their labels ---
    for var in dashboard["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
        let q = var["query"]["query"].as_str().or_else(|| var["query"].as_str()).expect("variable query");
        let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("not label_values: {q}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        let (selector, label) = (substitute(selector.trim(), &variables), label.trim());
        let v = api(&c, &prom, &format!("/api/v1/series?match[]={}", encode(&selector))).await;
        let found = v["data"].as_array().is_some_and(|s| s.iter().any(|s| s[label].is_string()));
        assert!(v["status"] == "success" && found, "variable {}: no series of {selector} has label {label}: {v}", var["name"]);
    }

    // --- the alert rules: each expression queries, each rule evaluates ---
    let rules = rule_exprs(&rules_path);
    for (name, expr) in &rules {
        let v = query(&c, &prom, expr).await;
        assert_eq!(v["status"], "success", "alert {name}: {expr}\n{v}");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let v = api(&c, &prom, "/api/v1/rules").await;
        let loaded: Vec<&Value> =
            v["data"]["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
        assert_eq!(loaded.len(), rules.len(), "prometheus loaded other rules than {}: {v}", rules_path.display());
        let bad: Vec<&&Value> = loaded.iter().filter(|r| r["health"] != "ok").collect();
        let active = |alert: &str| loaded.iter().any(|r| r["name"] == alert && (r["state"] == "pending" || r["state"] == "firing"));
        if bad.is_empty() && active("FuseboxCircuitOpen") && active("FuseboxEndpointEjected") && active("FuseboxOperationCircuitOpen") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}: rules not all healthy, or FuseboxCircuitOpen / FuseboxEndpointEjected / FuseboxOperationCircuitOpen not pending: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("ok  {} panel targets, {} alert rules against {}", targets.len(), rules.len(), bin.display());
    drop(prom);
}

/// The alert rules' unit tests (deploy/prometheus/alerts.test.yml) under
/// promtool: among them, an open operation circuit fires
/// FuseboxOperationCircuitOpen while its upstream's circuit stays closed.
#[test]
fn alert_rule_unit_tests_pass_in_promtool() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        println!("skipped: no promtool on PATH (apt-get install -y prometheus)");
        return;
    };
    assert!(out.status.success(), "promtool --version failed");
    let out = Command::new("promtool")
        .args(["test", "rules", "deploy/prometheus/alerts.test.yml"])
        .current_dir(repo())
        .output()
        .expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "promtool test rules failed:\n{text}");
    let tests = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.test.yml")).expect("alerts.test.yml");
    assert!(tests.contains("alertname: FuseboxOperationCircuitOpen"), "the unit tests cover the operation circuit alert");
}
