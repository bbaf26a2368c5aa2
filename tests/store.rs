//! The embedded store (README: Persistence) across a real restart: two fusebox
//! instances, one after the other, on the same SQLite file. What the first
//! saw and was told (transitions, operation history, audit log, runtime
//! override, operator mode) is what the second reports.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{body_client, call, client, fusebox, get, get_json, temp_dir, upstream};

fn config(store: &std::path::Path, api: &str, ok: &str, ok_breaker: &str) -> String {
    format!(
        "store: {{ path: {} }}
shutdown: {{ drainDelay: 0s, gracePeriod: 1s }}
upstreams:
  api:
    endpoints: [{api}]
    breaker: {{ jitter: 0, failureThreshold: 2, resetTimeout: 60s }}
  ok:
    endpoints: [{ok}]
    breaker: {{ jitter: 0, {ok_breaker} }}
routes:
  - {{ match: {{ pathPrefix: /api/ }}, upstream: api }}
  - {{ match: {{ pathPrefix: / }}, upstream: ok }}
",
        store.display()
    )
}

async fn admin(app: &fusebox::App, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let url = format!("http://{}{path}", app.admin_addr());
    let (status, _, text) = call(&body_client(), method, &url, &[], body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A runtime override of `ok`'s failure threshold through the admin API.
async fn override_ok(app: &fusebox::App, failure_threshold: u32) {
    let (s, v) = admin(
        app,
        Method::PUT,
        "/api/admin/circuit-breaker/ok/config",
        json!({ "failureThreshold": failure_threshold, "resetTimeoutMs": 30000, "minHealthyPeriodMs": 1000 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn service(app: &fusebox::App, name: &str) -> Value {
    let v = get_json(&client(), &format!("http://{}/api/admin/circuit-breaker/status", app.admin_addr())).await;
    v["services"].as_array().and_then(|s| s.iter().find(|x| x["service"] == name).cloned()).unwrap_or_else(|| panic!("no {name} in {v}"))
}

#[tokio::test]
async fn history_audit_override_and_mode_survive_a_restart() {
    let dir = temp_dir("store");
    let db = dir.join("fusebox.db");
    let broken = upstream("api").await;
    broken.set_status(500);
    let healthy = upstream("ok").await;
    let yaml = config(&db, &broken.url(), &healthy.url(), "failureThreshold: 5");

    let first = fusebox(&yaml).await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &format!("http://{}/api/x", first.data_addr())).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(get(&c, &format!("http://{}/api/x", first.data_addr())).await.0, StatusCode::SERVICE_UNAVAILABLE, "api tripped");
    for i in 0..5 {
        assert_eq!(get(&c, &format!("http://{}/n{i}", first.data_addr())).await.0, StatusCode::OK);
    }
    override_ok(&first, 7).await;
    let (s, v) = admin(
        &first,
        Method::POST,
        "/api/admin/circuit-breaker/api/force",
        json!({ "state": "forced-open", "reason": "vendor outage", "ttlMs": 3_600_000 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    first.shutdown().await;

    let second = fusebox(&yaml).await;
    let ok = service(&second, "ok").await;
    assert_eq!(ok["override"]["failureThreshold"], 7, "override restored: {ok}");
    assert_eq!(ok["config"]["failureThreshold"], 7, "and in force: {ok}");
    let api = service(&second, "api").await;
    assert_eq!(api["mode"], "forced-open", "operator mode restored: {api}");
    assert!(api["modeUntil"].is_string(), "with its ttl: {api}");
    assert_eq!(get(&c, &format!("http://{}/api/x", second.data_addr())).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(broken.hits(), 2, "the forced-open circuit kept traffic off the upstream after the restart");

    let h = get_json(&c, &format!("http://{}/api/admin/circuit-breaker/ok/history?timeframe=1h", second.admin_addr())).await;
    assert_eq!(h["metrics"]["data"]["requestCount"], 5, "operations from before the restart: {h}");
    let h = get_json(&c, &format!("http://{}/api/admin/circuit-breaker/api/history?timeframe=24h", second.admin_addr())).await;
    let transitions = h["transitions"].as_array().unwrap_or_else(|| panic!("no transitions: {h}"));
    assert!(
        transitions.iter().any(|t| t["from"] == "closed" && t["to"] == "open" && t["rule"] == "consecutive"),
        "the trip before the restart is stored: {h}"
    );
    assert!(transitions.iter().any(|t| t["to"] == "forced-open"), "{h}");
    let periods = h["history"].as_array().unwrap_or_else(|| panic!("no history: {h}"));
    assert!(periods.iter().any(|p| p["status"] == "failed"), "health history from before the restart: {h}");
    assert!(periods.iter().any(|p| p["status"] == "unknown"), "the restart itself shows as unknown: {h}");

    let audit = get_json(&c, &format!("http://{}/api/admin/audit", second.admin_addr())).await;
    let actions: Vec<&str> = audit["entries"].as_array().into_iter().flatten().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["config", "force"], "{audit}");

    let detailed = get_json(&c, &format!("http://{}/health/detailed", second.admin_addr())).await;
    assert_eq!(detailed["store"]["path"], db.display().to_string(), "{detailed}");
    assert_eq!(detailed["store"]["droppedWrites"], 0, "{detailed}");
    second.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_override_is_dropped_when_its_upstream_changed_while_down() {
    let dir = temp_dir("store-changed");
    let db = dir.join("fusebox.db");
    let api = upstream("api").await;
    let ok = upstream("ok").await;

    let first = fusebox(&config(&db, &api.url(), &ok.url(), "failureThreshold: 5")).await;
    override_ok(&first, 7).await;
    first.shutdown().await;

    let same = fusebox(&config(&db, &api.url(), &ok.url(), "failureThreshold: 5")).await;
    assert_eq!(service(&same, "ok").await["override"]["failureThreshold"], 7);
    same.shutdown().await;

    let changed = fusebox(&config(&db, &api.url(), &ok.url(), "failureThreshold: 4")).await;
    let svc = service(&changed, "ok").await;
    assert!(svc["override"].is_null(), "the YAML of `ok` changed: {svc}");
    assert_eq!(svc["config"]["failureThreshold"], 4, "{svc}");
    changed.shutdown().await;

    let again = fusebox(&config(&db, &api.url(), &ok.url(), "failureThreshold: 5")).await;
    assert!(service(&again, "ok").await["override"].is_null(), "a dropped override stays dropped");
    again.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_stops_startup_with_its_path() {
    let dir = temp_dir("store-missing");
    let db = dir.join("no-such-dir").join("fusebox.db");
    let api = upstream("api").await;
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\n{}",
        config(&db, &api.url(), &api.url(), "failureThreshold: 5")
    );
    let cfg = fusebox::config::parse(&text).expect("valid config");
    let err = match fusebox::App::start(cfg, None).await {
        Ok(_) => panic!("started without its store"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&db.display().to_string()), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The stored override of upstream `ok` in `db`, as JSON.
fn stored_override(db: &std::path::Path) -> Value {
    let conn = rusqlite::Connection::open(db).expect("open the store");
    let entry: String =
        conn.query_row("SELECT entry FROM overrides WHERE upstream = 'ok'", [], |r| r.get(0)).expect("an override of ok is stored");
    serde_json::from_str(&entry).expect("stored JSON")
}

/// The stored override's key (`entry.base`) of upstream `ok` in `db`.
fn stored_base(db: &std::path::Path) -> String {
    stored_override(db)["base"].as_str().expect("base is a string").to_string()
}

#[tokio::test]
async fn an_override_stored_with_the_old_debug_key_is_restored_and_rewritten_with_the_stable_key() {
    let dir = temp_dir("store-migrate");
    let db = dir.join("fusebox.db");
    let api = upstream("api").await;
    let ok = upstream("ok").await;
    let yaml = config(&db, &api.url(), &ok.url(), "failureThreshold: 5");
    let parsed = fusebox::config::parse(&yaml).expect("valid config");
    let ok_yaml = parsed.upstream("ok").expect("ok upstream");
    let stable = fusebox::config::render::upstream_key(ok_yaml);

    let first = fusebox(&yaml).await;
    override_ok(&first, 7).await;
    first.shutdown().await;
    assert_eq!(stored_base(&db), stable, "written with the stable key, not a Debug rendering");

    // A store written by an older fusebox: the key is the Debug rendering.
    let mut v = stored_override(&db);
    v["base"] = Value::from(format!("{ok_yaml:?}"));
    let conn = rusqlite::Connection::open(&db).expect("open the store");
    conn.execute("UPDATE overrides SET entry = ?1 WHERE upstream = 'ok'", [v.to_string()]).expect("rewrite");
    drop(conn);
    let second = fusebox(&yaml).await;
    assert_eq!(service(&second, "ok").await["override"]["failureThreshold"], 7, "the old key is still accepted");
    second.shutdown().await;
    assert_eq!(stored_base(&db), stable, "and the store now holds the stable key");
    let _ = std::fs::remove_dir_all(dir);
}

/// SPEC 8: the store has a schema version and migrates older files forward.
/// A file of the first layout (no saved counters, `user_version` 0) with an
/// open circuit in it: the new fusebox opens it, adds the column, stamps
/// the version, and keeps the circuit open.
#[tokio::test]
async fn a_store_file_of_the_first_layout_is_migrated_forward() {
    let dir = temp_dir("store-migrate");
    let db = dir.join("fusebox.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE circuit_phases (upstream TEXT PRIMARY KEY, saved_ms INTEGER NOT NULL, phase TEXT NOT NULL,
                 open_until_ms INTEGER, recovery_attempts INTEGER NOT NULL, total_incidents INTEGER NOT NULL);",
        )
        .unwrap();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        conn.execute("INSERT INTO circuit_phases VALUES ('api', ?1, 'open', ?2, 1, 3)", rusqlite::params![now_ms - 1_000, now_ms + 60_000])
            .unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 0);
    }
    let api = upstream("api").await;
    let ok = upstream("ok").await;
    let app = fusebox(&config(&db, &api.url(), &ok.url(), "failureThreshold: 5")).await;
    let c = support::circuit(&client(), &app, "api").await;
    assert_eq!(c["state"], "open", "the old file's open circuit is kept: {c}");
    assert_eq!(c["totalIncidents"], 3, "{c}");
    assert_eq!(get(&client(), &format!("http://{}/api/x", app.data_addr())).await.0, StatusCode::SERVICE_UNAVAILABLE);
    app.shutdown().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, fusebox::store::SCHEMA_VERSION, "stamped with the current layout");
    let counters: Option<String> = conn.query_row("SELECT counters FROM circuit_phases WHERE upstream = 'api'", [], |r| r.get(0)).unwrap();
    let counters: Value = serde_json::from_str(&counters.expect("written at shutdown")).unwrap();
    assert!(counters["trip"].is_object() || counters["trip"].is_null(), "{counters}");
    let _ = std::fs::remove_dir_all(dir);
}
