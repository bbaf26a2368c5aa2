//! The store's integrity under a running fusebox, over real files: store
//! files deleted or the write-ahead log truncated are noticed (degraded,
//! mutations 503, nothing changed) until a reload re-opens the store;
//! concurrent mutations are audited in the order they are applied; a
//! commit blocked by another process's lock past its deadline answers 503
//! and is never committed later.
//!
//! Must not: leave files behind, or hold a lock longer than one test needs.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{body_client, call, client, eventually, fusebox_file, get_json, temp_dir, upstream};
use tokio::time::Instant;

fn config(dir: &Path, api: &str, marker: &str) -> (PathBuf, String) {
    let db = dir.join("fusebox.db");
    let text = format!(
        "# {marker}\nlisten: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nstore: {{ path: {} }}\nupstreams:\n  api:\n    endpoints: [{api}]\n    breaker: {{ jitter: 0, failureThreshold: 5 }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        db.display()
    );
    (db, text)
}

/// A fusebox on a config file in a fresh directory with its store there:
/// the app, the store's path, the config's path and the directory.
async fn start(tag: &str, api: &str) -> (fusebox::App, PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let (db, text) = config(&dir, api, "v1");
    let path = dir.join("fusebox.yaml");
    std::fs::write(&path, &text).unwrap();
    (fusebox_file(&path).await, db, path, dir)
}

async fn admin(app: &fusebox::App, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let url = format!("http://{}{path}", app.admin_addr());
    let (status, _, text) = call(&body_client(), method, &url, &[], body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn force(app: &fusebox::App, state: &str, reason: &str) -> (StatusCode, Value) {
    admin(app, Method::POST, "/api/admin/circuit-breaker/api/force", json!({ "state": state, "reason": reason })).await
}

async fn mode(app: &fusebox::App) -> String {
    let v = get_json(&client(), &format!("http://{}/health/circuit-breakers", app.admin_addr())).await;
    v["circuitBreakers"][0]["mode"].as_str().unwrap_or("").to_string()
}

async fn store_health(app: &fusebox::App) -> Value {
    let v = get_json(&client(), &format!("http://{}/health/detailed", app.admin_addr())).await;
    v["store"].clone()
}

/// Every audit row's entry in the file, in row order.
fn stored_audit(db: &Path) -> Vec<Value> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn.prepare("SELECT entry FROM audit ORDER BY id").unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| serde_json::from_str(&r.unwrap()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_store_files_make_mutations_503_until_a_reload_reopens_the_store() {
    let up = upstream("api").await;
    let (app, db, path, dir) = start("store-deleted", &up.url()).await;
    assert_eq!(force(&app, "forced-open", "drill").await.0, StatusCode::OK);
    assert_eq!(force(&app, "auto", "drill over").await.0, StatusCode::OK);

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let (status, v) = force(&app, "forced-open", "after the files went").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("deleted"), "{v}");
    assert_eq!(mode(&app).await, "auto", "nothing changed");
    let health = store_health(&app).await;
    assert_eq!(health["status"], "degraded", "{health}");

    // A reload (here: the config file changes) re-opens it: a new file.
    std::fs::write(&path, config(&dir, &up.url(), "v2").1).unwrap();
    eventually(Duration::from_secs(8), "the store is re-opened by the reload", || async {
        (force(&app, "forced-open", "after the re-open").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(mode(&app).await, "forced-open");
    assert!(db.exists(), "a new store file");
    let rows = stored_audit(&db);
    assert_eq!(rows.last().map(|r| r["reason"].clone()), Some(json!("after the re-open")), "{rows:?}");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_write_ahead_log_is_noticed() {
    let up = upstream("api").await;
    let (app, db, _, dir) = start("store-wal", &up.url()).await;
    assert_eq!(force(&app, "forced-open", "one").await.0, StatusCode::OK);
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0, "a write-ahead log with the entry");
    // The force's own follow-up writes (its transition, the circuit's
    // snapshot) land first: a write racing the truncation would hide it
    // (SQLite writes its frames at the offsets it knows).
    let len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let mut last = (len(), tokio::time::Instant::now());
    eventually(Duration::from_secs(10), "the write-ahead log settles", || {
        let now = (len(), tokio::time::Instant::now());
        let settled = now.0 == last.0 && now.1.duration_since(last.1) >= Duration::from_millis(300);
        if now.0 != last.0 {
            last = now;
        }
        async move { settled.then_some(()) }
    })
    .await;
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(0).unwrap();
    let (status, v) = force(&app, "auto", "two").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("truncated"), "{v}");
    assert_eq!(mode(&app).await, "forced-open", "nothing changed");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mutations_are_audited_in_the_order_they_are_applied() {
    let up = upstream("api").await;
    // A fresh fusebox per round: 8 mutations is most of a caller's 10 a minute.
    for round in 0..6u32 {
        let (app, db, _, dir) = start("store-order", &up.url()).await;
        let app = std::sync::Arc::new(app);
        let mut tasks = Vec::new();
        for i in 0..8u32 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let threshold = round * 10 + i + 1;
                let body = json!({ "failureThreshold": threshold, "resetTimeoutMs": 30000, "minHealthyPeriodMs": 1000 });
                admin(&app, Method::PUT, "/api/admin/circuit-breaker/api/config", body).await.0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
        let rows = stored_audit(&db);
        assert_eq!(rows.iter().filter(|r| r["action"] == "config").count(), 8);
        let last = rows.iter().rev().find(|r| r["action"] == "config").expect("a config audit row");
        let v = get_json(&client(), &format!("http://{}/api/admin/circuit-breaker/status", app.admin_addr())).await;
        let applied = v["services"][0]["config"]["failureThreshold"].clone();
        assert_eq!(last["after"]["failureThreshold"], applied, "round {round}: the last audited change is the one in force: {v}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_blocked_past_its_deadline_answers_503_and_is_never_committed() {
    let up = upstream("api").await;
    let (app, db, _, dir) = start("store-locked", &up.url()).await;
    assert_eq!(force(&app, "forced-open", "before the lock").await.0, StatusCode::OK);
    // Another process's write transaction holds the lock for 7 s, longer
    // than the 5 s a mutation waits for its audit entry.
    let locked = db.clone();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&locked).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO audit (at_ms, entry) VALUES (0, '{\"reason\":\"holder\"}');").unwrap();
        std::thread::sleep(Duration::from_secs(7));
        conn.execute_batch("ROLLBACK;").unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, v) = force(&app, "auto", "phantom?").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(started.elapsed() < Duration::from_secs(7), "answered by its deadline, not by the lock's end");
    holder.join().unwrap();
    // The lock is gone: give a late commit every chance to happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = stored_audit(&db);
    assert!(!rows.iter().any(|r| r["reason"] == "phantom?"), "a 503 means nothing was committed: {rows:?}");
    assert_eq!(mode(&app).await, "forced-open", "and nothing was applied");
    // And the store still works.
    assert_eq!(force(&app, "auto", "after the lock").await.0, StatusCode::OK);
    let _ = std::fs::remove_dir_all(dir);
}
