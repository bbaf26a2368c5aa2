//! The admin API (README: Admin listener) over real sockets: fusebox on port 0 in
//! front of real upstreams, JWT (HS256, secret from a file) made with
//! `jsonwebtoken`, and a real hyper client. Breaker timers are moved with
//! tokio's paused clock (`support::advance`), never slept on.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, StatusCode};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    advance, body_client, call, circuit, client, fusebox, fusebox_file, get, temp_dir, upstream, BodyClient, TestClient, TestUpstream,
};

const SECRET: &str = "fusebox-test-secret-7f3a9c21e4b8d605";

// --- harness ---

/// A running fusebox with its clients and the directory of its files.
struct Env {
    app: fusebox::App,
    c: TestClient,
    bc: BodyClient,
    dir: PathBuf,
}

/// `auth:` with the HS256 secret written to `dir/jwt.secret`.
fn auth_yaml(dir: &Path, extra: &str) -> String {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    format!("auth: {{ jwt: {{ hs256SecretFile: {}, adminRole: admin{extra} }} }}\n", secret.display())
}

/// Upstream `api` (routed at `/`) with breaker keys, and optionally
/// `other` (routed at `/other/`).
fn upstreams_yaml(api: &str, breaker: &str, other: Option<&str>) -> String {
    let mut y = format!("upstreams:\n  api:\n    endpoints: [{api}]\n    breaker: {{ jitter: 0, {breaker} }}\n");
    if let Some(o) = other {
        y.push_str(&format!("  other:\n    endpoints: [{o}]\n    breaker: {{ jitter: 0, {breaker} }}\n"));
    }
    y.push_str("routes:\n");
    if other.is_some() {
        y.push_str("  - { match: { pathPrefix: /other/ }, upstream: other }\n");
    }
    y.push_str("  - { match: { pathPrefix: / }, upstream: api }\n");
    y
}

impl Env {
    /// fusebox from YAML with the JWT `auth:` (plus `auth_extra` keys).
    async fn start(body: &str, auth_extra: &str) -> Env {
        let dir = temp_dir("admin");
        let yaml = format!("{}{body}", auth_yaml(&dir, auth_extra));
        let app = fusebox(&yaml).await;
        Env { app, c: client(), bc: body_client(), dir }
    }

    /// fusebox from a config file (reloadable); `body` is the part after
    /// the listeners and `auth:`.
    async fn start_file(body: &str) -> Env {
        let dir = temp_dir("admin-file");
        let path = dir.join("fusebox.yaml");
        std::fs::write(&path, file_text(&dir, body)).unwrap();
        let app = fusebox_file(&path).await;
        Env { app, c: client(), bc: body_client(), dir }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("fusebox.yaml")
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.admin_addr())
    }

    fn data_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.data_addr())
    }

    /// An admin API call: (status, headers, JSON body).
    async fn api(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, HeaderMap, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.api_raw(method, path, token, &body).await
    }

    /// An admin API call with a raw body.
    async fn api_raw(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> (StatusCode, HeaderMap, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, h, text) = call(&self.bc, method, &self.admin_url(path), &headers, body.to_owned()).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("admin answer is not JSON ({e}): {status} {text}"));
        (status, h, v)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.api(Method::POST, path, Some(token), Some(body)).await
    }

    /// GET on the data listener: (status, headers, body).
    async fn data(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        get(&self.c, &self.data_url(path)).await
    }

    /// One service from `GET /api/admin/circuit-breaker/status`.
    async fn service(&self, name: &str) -> Value {
        let (s, _, v) = self.api(Method::GET, "/api/admin/circuit-breaker/status", None, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["services"]
            .as_array()
            .unwrap_or_else(|| panic!("no services array: {v}"))
            .iter()
            .find(|e| e["service"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name}: {v}"))
    }

    /// One circuit from `/health/circuit-breakers`.
    async fn circuit(&self, name: &str) -> Value {
        circuit(&self.c, &self.app, name).await
    }

    /// Waits (yielding, never sleeping) until the circuit ticker has moved
    /// `name` to `state` after a clock advance.
    async fn wait_state(&self, name: &str, state: &str) -> Value {
        for _ in 0..200 {
            let cb = self.circuit(name).await;
            if cb["state"] == state {
                return cb;
            }
            tokio::task::yield_now().await;
        }
        panic!("circuit {name} never reached {state}: {}", self.circuit(name).await);
    }
}

/// The whole config file of a file-backed fusebox.
fn file_text(dir: &Path, body: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}{body}", auth_yaml(dir, ""))
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A token signed with `alg` and `secret`.
fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// An HS256 token with `claims` plus `exp` in 10 minutes.
fn token(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(unix_now() + 600);
    }
    sign(Algorithm::HS256, SECRET, &claims)
}

fn admin_token(sub: &str) -> String {
    token(json!({ "sub": sub, "role": "admin" }))
}

fn viewer_token(sub: &str) -> String {
    token(json!({ "sub": sub, "role": "viewer" }))
}

/// base64url without padding, as JWT segments are written.
fn b64url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// Asserts the admin error shape `{error:{code,message}}` and the status.
fn assert_error(got: StatusCode, v: &Value, want: StatusCode, code: &str) {
    assert_eq!(got, want, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {v}"));
    assert!(!msg.is_empty(), "{v}");
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T05:30:00.123Z`.
fn assert_timestamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp string: {v}"));
    let b = s.as_bytes();
    assert!(s.len() == 24 && b[10] == b'T' && b[19] == b'.' && s.ends_with('Z') && s.starts_with("20"), "not RFC 3339: {s}");
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Sends `n` requests to `path` expecting `status` each.
async fn send_n(env: &Env, path: &str, n: usize, status: StatusCode) {
    for i in 0..n {
        let (s, _, body) = env.data(path).await;
        assert_eq!(s, status, "request {i} of {n} to {path}: {body}");
    }
}

/// Asserts the fail-fast answer of fusebox naming `state`.
fn assert_fast_503(s: StatusCode, h: &HeaderMap, body: &str, state: &str) {
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(h.get("x-fusebox-circuit").and_then(|v| v.to_str().ok()), Some(state), "{h:?} {body}");
    assert!(h.contains_key("retry-after"), "{h:?}");
}

/// Trips `api` with `n` upstream 500s and checks the next is refused.
async fn trip(env: &Env, up: &TestUpstream, n: usize) {
    up.set_status(500);
    let before = up.hits();
    send_n(env, "/x", n, StatusCode::INTERNAL_SERVER_ERROR).await;
    let (s, h, b) = env.data("/x").await;
    assert_fast_503(s, &h, &b, "open");
    assert_eq!(up.hits(), before + n, "the refused request never reached the upstream");
}

const STATUS: &str = "/api/admin/circuit-breaker/status";
const API_CONFIG: &str = "/api/admin/circuit-breaker/api/config";
const API_RESET: &str = "/api/admin/circuit-breaker/api/reset";
const API_FORCE: &str = "/api/admin/circuit-breaker/api/force";
const RELOAD: &str = "/api/admin/config/reload";
const AUDIT: &str = "/api/admin/audit";

// --- status ---

#[tokio::test]
async fn status_has_the_seed_shape_and_counts_real_traffic() {
    let api = upstream("api").await;
    let other = upstream("other").await;
    api.set_delay(Duration::from_millis(20));
    let env = Env::start(&upstreams_yaml(&api.url(), "failureThreshold: 5", Some(&other.url())), "").await;

    send_n(&env, "/x", 4, StatusCode::OK).await;
    api.set_status(500);
    send_n(&env, "/x", 2, StatusCode::INTERNAL_SERVER_ERROR).await;

    // Reads are open by default: no token.
    let (s, h, v) = env.api(Method::GET, STATUS, None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h.get("content-type").unwrap(), "application/json");
    assert_eq!(v["success"], true, "{v}");
    let services = v["services"].as_array().expect("services[]");
    let names: Vec<&str> = services.iter().map(|e| e["service"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "other"], "every configured upstream, sorted: {v}");

    let a = &services[0];
    assert_eq!(a["status"], "degraded", "closed with failures in the window: {a}");
    assert_eq!(a["circuit"]["state"], "closed", "{a}");
    assert_eq!(a["circuit"]["failureCount"], 2, "{a}");
    assert_timestamp(&a["circuit"]["lastFailure"]);
    assert_eq!(a["circuit"]["recoveryAttempts"], 0, "{a}");
    assert_eq!(a["operations"]["total"], 6, "{a}");
    assert_eq!(a["operations"]["successful"], 4, "{a}");
    assert_eq!(a["operations"]["failed"], 2, "{a}");
    assert_eq!(a["operations"]["successRate"], 66.67, "{a}");
    assert_eq!(a["operations"]["lastOperation"], a["circuit"]["lastFailure"], "the last operation was the last failure: {a}");
    let avg = num(&a["performance"]["averageOperationTimeMs"]);
    let last = num(&a["performance"]["lastOperationTimeMs"]);
    assert!((20.0..5000.0).contains(&avg), "upstream takes 20ms: {a}");
    assert!((20.0..5000.0).contains(&last), "upstream takes 20ms: {a}");

    let o = &services[1];
    assert_eq!(o["status"], "unknown", "no call yet: {o}");
    assert_eq!(o["circuit"]["state"], "closed", "{o}");
    assert_eq!(o["circuit"]["failureCount"], 0, "{o}");
    assert_eq!(o["circuit"]["lastFailure"], Value::Null, "{o}");
    assert_eq!(o["circuit"]["recoveryAttempts"], 0, "{o}");
    assert_eq!(o["operations"]["total"], 0, "{o}");
    assert_eq!(o["operations"]["successful"], 0, "{o}");
    assert_eq!(o["operations"]["failed"], 0, "{o}");
    assert_eq!(o["operations"]["successRate"], 100.0, "{o}");
    assert_eq!(o["operations"]["lastOperation"], Value::Null, "{o}");
    assert_eq!(o["performance"]["averageOperationTimeMs"], 0.0, "{o}");
    assert_eq!(o["performance"]["lastOperationTimeMs"], 0.0, "{o}");

    // More traffic: counts follow; a success ends the failure streak.
    api.set_status(200);
    send_n(&env, "/x", 3, StatusCode::OK).await;
    send_n(&env, "/other/y", 2, StatusCode::OK).await;
    let a = env.service("api").await;
    assert_eq!(a["operations"]["total"], 9, "{a}");
    assert_eq!(a["operations"]["successful"], 7, "{a}");
    assert_eq!(a["operations"]["failed"], 2, "{a}");
    assert_eq!(a["circuit"]["failureCount"], 0, "{a}");
    assert_eq!(a["operations"]["successRate"], 77.78, "{a}");
    let o = env.service("other").await;
    assert_eq!(o["status"], "healthy", "{o}");
    assert_eq!(o["operations"]["total"], 2, "{o}");
    assert_eq!(o["operations"]["successful"], 2, "{o}");
    assert_eq!(api.hits(), 9);
    assert_eq!(other.hits(), 2);
}

// --- runtime config override ---

#[tokio::test]
async fn put_config_override_drives_the_data_path_until_deleted() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 10, resetTimeout: 60s", None), "").await;
    let t = admin_token("ops");

    let (s, _, v) = env
        .api(
            Method::PUT,
            API_CONFIG,
            Some(&t),
            Some(json!({ "failureThreshold": 2, "resetTimeoutMs": 30000, "minHealthyPeriodMs": 1000, "requestLimit": 50 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["service"], "api", "{v}");
    assert_eq!(
        v["config"],
        json!({ "failureThreshold": 2, "resetTimeoutMs": 30000, "minHealthyPeriodMs": 1000, "requestLimit": 50 }),
        "{v}"
    );
    assert_timestamp(&v["appliedAt"]);

    let a = env.service("api").await;
    assert_eq!(a["override"]["failureThreshold"], 2, "{a}");
    assert_eq!(a["override"]["resetTimeoutMs"], 30000, "{a}");
    assert_eq!(a["override"]["appliedBy"], "ops", "{a}");
    assert_eq!(a["config"]["failureThreshold"], 2, "effective config: {a}");
    assert_eq!(a["config"]["resetTimeoutMs"], 30000, "{a}");
    assert_eq!(a["config"]["minHealthyPeriodMs"], 1000, "{a}");
    assert_eq!(a["config"]["requestLimit"], 50, "{a}");

    // The data path trips after 2 failures (YAML says 10) and stays open
    // for the overridden 30s.
    trip(&env, &up, 2).await;
    let (_, h, _) = env.data("/x").await;
    assert_eq!(h.get("retry-after").unwrap(), "30", "resetTimeoutMs is honoured");
    assert_eq!(up.hits(), 2);

    // DELETE restores the YAML values; a second DELETE has nothing to do.
    let (s, _, v) = env.api(Method::DELETE, API_CONFIG, Some(&t), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true, "{v}");
    let a = env.service("api").await;
    assert_eq!(a["override"], Value::Null, "{a}");
    assert_eq!(a["config"]["failureThreshold"], 10, "{a}");
    assert_eq!(a["config"]["resetTimeoutMs"], 60000, "{a}");
    assert_eq!(a["config"]["minHealthyPeriodMs"], 120000, "the 2m default: {a}");
    assert_eq!(a["config"]["requestLimit"], 1000, "the default: {a}");
    let (s, _, v) = env.api(Method::DELETE, API_CONFIG, Some(&t), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "no_override");

    // After a reset the YAML threshold (10) applies again: 9 failures pass.
    env.post(API_RESET, &t, json!({ "reason": "back to YAML" })).await;
    send_n(&env, "/x", 9, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(env.circuit("api").await["state"], "closed");
    send_n(&env, "/x", 1, StatusCode::INTERNAL_SERVER_ERROR).await;
    let (s, h, b) = env.data("/x").await;
    assert_fast_503(s, &h, &b, "open");
    assert_eq!(up.hits(), 12);

    // requestLimit is optional.
    let (s, _, v) = env
        .api(Method::PUT, API_CONFIG, Some(&t), Some(json!({ "failureThreshold": 4, "resetTimeoutMs": 1000, "minHealthyPeriodMs": 0 })))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(env.service("api").await["config"]["requestLimit"], 1000);

    // When given, requestLimit is the data path's bulkhead.
    let (s, _, v) = env
        .api(
            Method::PUT,
            API_CONFIG,
            Some(&t),
            Some(json!({ "failureThreshold": 4, "resetTimeoutMs": 1000, "minHealthyPeriodMs": 0, "requestLimit": 1 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.post(API_RESET, &t, json!({ "reason": "bulkhead test" })).await;
    up.set_status(200);
    up.set_delay(Duration::from_millis(300));
    let slow = tokio::spawn({
        let (c, url) = (env.c.clone(), env.data_url("/slow"));
        async move { get(&c, &url).await.0 }
    });
    // Wait for the slow request to reach the upstream (not a breaker timer).
    for _ in 0..1000 {
        if up.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (s, h, b) = env.data("/x").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(h.get("x-fusebox-overloaded").unwrap(), "true");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(up.hits(), 13);
}

#[tokio::test]
async fn put_config_refuses_invalid_values_and_unknown_fields() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let t = admin_token("validator");
    let valid = json!({ "failureThreshold": 2, "resetTimeoutMs": 1000, "minHealthyPeriodMs": 0 });
    let with = |k: &str, v: Value| {
        let mut b = valid.clone();
        b[k] = v;
        b
    };
    for (body, code) in [
        (with("failureThreshold", json!(0)), "invalid_config"),
        (with("resetTimeoutMs", json!(0)), "invalid_config"),
        (with("minHealthyPeriodMs", json!(8u64 * 86_400_000)), "invalid_config"),
        (with("requestLimit", json!(0)), "invalid_config"),
        (with("failureTreshold", json!(2)), "bad_body"),
        (with("failureThreshold", json!(-1)), "bad_body"),
        (with("failureThreshold", json!("2")), "bad_body"),
        (json!({ "failureThreshold": 2, "minHealthyPeriodMs": 0 }), "bad_body"),
    ] {
        let (s, _, v) = env.api(Method::PUT, API_CONFIG, Some(&t), Some(body.clone())).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, code);
        if body.get("failureTreshold").is_some() {
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("failureTreshold"), "names the unknown field: {msg}");
        }
    }
    let (s, _, v) = env.api_raw(Method::PUT, API_CONFIG, Some(&t), "{\"failureThreshold\": 2").await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_body");

    // Nothing was applied.
    let a = env.service("api").await;
    assert_eq!(a["override"], Value::Null, "{a}");
    assert_eq!(a["config"]["failureThreshold"], 3, "{a}");
    assert_eq!(env.app.state.store.generation(), 1, "no new generation was published");
}

#[tokio::test]
async fn override_survives_a_reload_of_the_same_file_and_dies_with_a_yaml_change() {
    let api = upstream("api").await;
    let other = upstream("other").await;
    let body = |api_threshold: u32| {
        format!(
            "upstreams:\n  api:\n    endpoints: [{}]\n    breaker: {{ jitter: 0, failureThreshold: {api_threshold}, resetTimeout: 60s }}\n  other:\n    endpoints: [{}]\n    breaker: {{ jitter: 0, failureThreshold: 10 }}\nroutes:\n  - {{ match: {{ pathPrefix: /other/ }}, upstream: other }}\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
            api.url(),
            other.url()
        )
    };
    let env = Env::start_file(&body(10)).await;
    let t = admin_token("ops");
    for (service, threshold) in [("api", 2), ("other", 4)] {
        let (s, _, v) = env
            .api(
                Method::PUT,
                &format!("/api/admin/circuit-breaker/{service}/config"),
                Some(&t),
                Some(json!({ "failureThreshold": threshold, "resetTimeoutMs": 5000, "minHealthyPeriodMs": 0 })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // Same file: both overrides stay, and the data path still uses them.
    let generation = env.app.state.store.generation();
    let (s, _, v) = env.post(RELOAD, &t, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert!(v["generation"].as_u64().unwrap() > generation, "{v}");
    let a = env.service("api").await;
    assert_eq!(a["override"]["failureThreshold"], 2, "{a}");
    assert_eq!(a["config"]["failureThreshold"], 2, "{a}");
    assert_eq!(env.service("other").await["override"]["failureThreshold"], 4);
    trip(&env, &api, 2).await;

    // Editing `api` in the YAML drops its override (and only its).
    std::fs::write(env.config_path(), file_text(&env.dir, &body(6))).unwrap();
    let (s, _, v) = env.post(RELOAD, &t, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let a = env.service("api").await;
    assert_eq!(a["override"], Value::Null, "the YAML of api changed: {a}");
    assert_eq!(a["config"]["failureThreshold"], 6, "{a}");
    assert_eq!(a["config"]["resetTimeoutMs"], 60000, "{a}");
    assert_eq!(a["circuit"]["state"], "open", "breaker state survives the reload: {a}");
    let o = env.service("other").await;
    assert_eq!(o["override"]["failureThreshold"], 4, "other's YAML is unchanged: {o}");
    assert_eq!(o["config"]["failureThreshold"], 4, "{o}");
}

// --- reset ---

#[tokio::test]
async fn reset_closes_an_open_circuit() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 2, resetTimeout: 60s", None), "").await;
    let t = admin_token("oncall");
    trip(&env, &up, 2).await;
    let a = env.service("api").await;
    assert_eq!(a["circuit"]["state"], "open", "{a}");
    assert_eq!(a["status"], "failed", "{a}");

    // `reason` is required and must say something.
    let (s, _, v) = env.post(API_RESET, &t, json!({})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_body");
    let (s, _, v) = env.post(API_RESET, &t, json!({ "reason": "  " })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_body");
    assert_eq!(env.circuit("api").await["state"], "open");

    let (s, _, v) = env
        .post(
            API_RESET,
            &t,
            json!({ "reason": "backend redeployed", "metadata": { "triggeredBy": "pager", "environment": "test", "notes": "INC-42" } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["service"], "api", "{v}");
    assert_timestamp(&v["resetTime"]);
    let prev = &v["previousState"];
    assert_eq!(prev["failureCount"], 2, "{v}");
    assert_timestamp(&prev["lastFailure"]);
    assert_eq!(prev["totalIncidents"], 1, "{v}");

    // Closed: requests reach the upstream again.
    up.set_status(200);
    let (s, _, body) = env.data("/x").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(up.hits(), 3);
    let a = env.service("api").await;
    assert_eq!(a["circuit"]["state"], "closed", "{a}");
    assert_eq!(a["circuit"]["failureCount"], 0, "{a}");
    assert_eq!(a["circuit"]["recoveryAttempts"], 0, "{a}");
    let cb = env.circuit("api").await;
    assert_eq!(cb["lastTransition"]["from"], "open", "{cb}");
    assert_eq!(cb["lastTransition"]["to"], "closed", "{cb}");
    assert_eq!(cb["lastTransition"]["rule"], "operator", "{cb}");
}

#[tokio::test]
async fn reset_during_half_open_closes_it() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 1, resetTimeout: 5s", None), "").await;
    let t = admin_token("oncall");
    trip(&env, &up, 1).await;

    advance(Duration::from_millis(5_010)).await;
    env.wait_state("api", "half-open").await;
    assert_eq!(up.hits(), 1, "half-open by time alone: no trial was sent");

    let (s, _, v) = env.post(API_RESET, &t, json!({ "reason": "skip the probe" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["previousState"]["totalIncidents"], 1, "{v}");
    let cb = env.circuit("api").await;
    assert_eq!(cb["state"], "closed", "{cb}");
    assert_eq!(cb["lastTransition"]["from"], "half-open", "{cb}");
    assert_eq!(cb["lastTransition"]["to"], "closed", "{cb}");

    // Closed, not half-open: many requests pass at once, none refused.
    up.set_status(200);
    send_n(&env, "/x", 3, StatusCode::OK).await;
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn reset_of_a_forced_circuit_needs_force() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let t = admin_token("oncall");
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "forced-open", "reason": "maintenance" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, _, v) = env.post(API_RESET, &t, json!({ "reason": "done" })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflicting_state");
    let (s, h, b) = env.data("/x").await;
    assert_fast_503(s, &h, &b, "forced-open");

    let (s, _, v) = env.post(API_RESET, &t, json!({ "reason": "done", "force": true })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true, "{v}");
    let a = env.service("api").await;
    assert_eq!(a["circuit"]["state"], "closed", "{a}");
    assert_eq!(a["mode"], "auto", "{a}");
    let (s, _, b) = env.data("/x").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(up.hits(), 1);
}

// --- force ---

#[tokio::test]
async fn forced_open_fails_fast_without_touching_the_upstream() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let t = admin_token("oncall");
    send_n(&env, "/x", 1, StatusCode::OK).await;

    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "forced-open", "reason": "drain api" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["service"], "api", "{v}");
    assert_eq!(v["state"], "forced-open", "{v}");

    for _ in 0..3 {
        let (s, h, b) = env.data("/x").await;
        assert_fast_503(s, &h, &b, "forced-open");
    }
    assert_eq!(up.hits(), 1, "the upstream was not touched");
    let a = env.service("api").await;
    assert_eq!(a["circuit"]["state"], "forced-open", "{a}");
    assert_eq!(a["status"], "failed", "{a}");

    // Same mode twice is a conflict.
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "forced-open", "reason": "again" })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflicting_state");

    // Back to auto: traffic flows.
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "auto", "reason": "done" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "closed", "{v}");
    send_n(&env, "/x", 1, StatusCode::OK).await;
    assert_eq!(up.hits(), 2);
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "auto", "reason": "again" })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflicting_state");
}

#[tokio::test]
async fn forced_closed_lets_a_failing_upstream_through() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 2", None), "").await;
    let t = admin_token("oncall");
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "forced-closed", "reason": "we know" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    up.set_status(500);
    for _ in 0..6 {
        let (s, h, b) = env.data("/x").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
        assert!(h.get("x-fusebox-circuit").is_none(), "{h:?}");
    }
    assert_eq!(up.hits(), 6, "3x the failure threshold reached the upstream");
    let a = env.service("api").await;
    assert_eq!(a["circuit"]["state"], "forced-closed", "{a}");
    assert_eq!(a["operations"]["failed"], 6, "failures are still counted: {a}");

    // Auto again: the machine starts afresh and trips at its threshold.
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "auto", "reason": "over" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    trip(&env, &up, 2).await;
    assert_eq!(up.hits(), 8);
}

#[tokio::test]
async fn metrics_only_never_rejects_but_reports_the_would_be_trip() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 2, resetTimeout: 60s", None), "").await;
    let t = admin_token("tuner");
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "metrics-only", "reason": "tune" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "metrics-only", "{v}");

    up.set_status(500);
    send_n(&env, "/x", 5, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert_eq!(up.hits(), 5, "nothing is rejected in metrics-only");

    let cb = env.circuit("api").await;
    assert_eq!(cb["state"], "metrics-only", "{cb}");
    assert_eq!(cb["mode"], "metrics-only", "{cb}");
    assert_eq!(cb["rejected"], 0, "{cb}");
    let lt = &cb["lastTransition"];
    assert_eq!(lt["from"], "closed", "{cb}");
    assert_eq!(lt["to"], "open", "{cb}");
    assert_eq!(lt["rule"], "consecutive", "{cb}");
    assert_eq!(lt["shadow"], true, "the trip is reported as a would-be trip: {cb}");
    assert!(lt["detail"].as_str().unwrap().contains("2 consecutive"), "{cb}");

    // Leaving shadow mode starts the automatic machine afresh (closed).
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "auto", "reason": "tuned" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "closed", "{v}");
    trip(&env, &up, 2).await;
}

#[tokio::test]
async fn force_ttl_returns_to_auto() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let t = admin_token("oncall");
    let (s, _, v) = env.post(API_FORCE, &t, json!({ "state": "forced-open", "reason": "5 minute window", "ttlMs": 3000 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_timestamp(&v["until"]);
    let a = env.service("api").await;
    assert_eq!(a["mode"], "forced-open", "{a}");
    assert_timestamp(&a["modeUntil"]);
    let (s, h, b) = env.data("/x").await;
    assert_fast_503(s, &h, &b, "forced-open");
    assert_eq!(h.get("retry-after").unwrap(), "3", "seconds until the override ends");

    advance(Duration::from_millis(2_900)).await;
    let (s, h, b) = env.data("/x").await;
    assert_fast_503(s, &h, &b, "forced-open");

    advance(Duration::from_millis(110)).await;
    let cb = env.wait_state("api", "closed").await;
    assert_eq!(cb["mode"], "auto", "{cb}");
    assert_eq!(cb["lastTransition"]["from"], "forced-open", "{cb}");
    assert_eq!(cb["lastTransition"]["rule"], "ttl", "{cb}");
    send_n(&env, "/x", 2, StatusCode::OK).await;
    assert_eq!(up.hits(), 2);
    assert_eq!(env.service("api").await["modeUntil"], Value::Null);
}

#[tokio::test]
async fn force_refuses_bad_bodies() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let t = admin_token("oncall");
    for body in [
        json!({ "state": "half-open", "reason": "x" }),
        json!({ "state": "bogus", "reason": "x" }),
        json!({ "state": "forced-open" }),
        json!({ "state": "forced-open", "reason": "" }),
        json!({ "state": "forced-open", "reason": "x", "ttlMs": 0 }),
        json!({ "state": "auto", "reason": "x", "ttlMs": 1000 }),
        json!({ "state": "forced-open", "reason": "x", "until": "later" }),
    ] {
        let (s, _, v) = env.post(API_FORCE, &t, body.clone()).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_body");
    }
    let a = env.service("api").await;
    assert_eq!(a["mode"], "auto", "nothing was applied: {a}");
    send_n(&env, "/x", 1, StatusCode::OK).await;
}

// --- history ---

#[tokio::test]
async fn history_shows_the_failed_period_and_counts_traffic() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3, resetTimeout: 60s", None), "").await;
    send_n(&env, "/x", 4, StatusCode::OK).await;
    trip(&env, &up, 3).await;
    let (s, h, b) = env.data("/x").await;
    assert_fast_503(s, &h, &b, "open");

    let path = |tf: &str| format!("/api/admin/circuit-breaker/api/history?timeframe={tf}");
    let (s, _, v) = env.api(Method::GET, &path("1h"), None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["service"], "api", "{v}");
    let entries = v["history"].as_array().unwrap_or_else(|| panic!("history[]: {v}"));
    assert!(!entries.is_empty(), "{v}");
    for e in entries {
        assert_timestamp(&e["timestamp"]);
        assert!(e["status"].is_string(), "{e}");
        assert!(e["duration"].as_u64().is_some(), "{e}");
        assert!(e["incidents"].as_u64().is_some(), "{e}");
    }
    let last = entries.last().unwrap();
    assert_eq!(last["status"], "failed", "the current period is the trip: {v}");
    assert_eq!(last["incidents"], 1, "{v}");
    assert_ne!(entries[0]["status"], "failed", "{v}");

    let data = &v["metrics"]["data"];
    assert_eq!(data["requestCount"], 7, "rejected requests are not operations: {v}");
    assert_eq!(data["successCount"], 4, "{v}");
    assert_eq!(data["failureCount"], 3, "{v}");
    let avg = num(&data["avgResponseTime"]);
    let p95 = num(&data["p95ResponseTime"]);
    let p99 = num(&data["p99ResponseTime"]);
    assert!(avg > 0.0 && avg < 1000.0, "{v}");
    assert!(p95 >= avg.min(1.0) && p99 >= p95, "{v}");

    for tf in ["24h", "7d", "30d"] {
        let (s, _, v) = env.api(Method::GET, &path(tf), None, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["timeframe"], tf, "{v}");
        assert_eq!(v["metrics"]["data"]["requestCount"], 7, "{tf}: {v}");
        assert_eq!(v["metrics"]["data"]["failureCount"], 3, "{tf}: {v}");
        let h = v["history"].as_array().unwrap();
        assert!(h.iter().any(|e| e["status"] == "failed" && e["incidents"] == 1), "{tf}: {v}");
    }

    for bad in ["2h", "1H", "", "1h;drop"] {
        let (s, _, v) = env.api(Method::GET, &path(bad), None, None).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "bad_timeframe");
    }
    let (s, _, v) = env.api(Method::GET, "/api/admin/circuit-breaker/nope/history?timeframe=1h", None, None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_service");
}

/// SPEC 8: the history records every status change, not only transitions:
/// one failure in the window (no trip) is a degraded period, and the
/// window clearing is a healthy one again, each within a tick.
#[tokio::test]
async fn history_records_status_changes_that_are_not_transitions() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 5, resetTimeout: 60s, monitoringWindow: 1s", None), "").await;
    send_n(&env, "/x", 2, StatusCode::OK).await;
    up.set_status(500);
    let (s, _, _) = env.data("/x").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    up.set_status(200);
    let path = "/api/admin/circuit-breaker/api/history?timeframe=1h";
    let statuses = |v: &Value| -> Vec<String> {
        v["history"].as_array().map(|a| a.iter().filter_map(|e| e["status"].as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let v = support::eventually(Duration::from_secs(10), "a degraded period", || async {
        let (_, _, v) = env.api(Method::GET, path, None, None).await;
        statuses(&v).contains(&"degraded".to_string()).then_some(v)
    })
    .await;
    assert!(!statuses(&v).contains(&"failed".to_string()), "no trip, no failed period: {v}");
    // The one-second window clears: healthy again, in the history too.
    support::eventually(Duration::from_secs(10), "healthy again after the window", || async {
        let (_, _, v) = env.api(Method::GET, path, None, None).await;
        let list = statuses(&v);
        let degraded_at = list.iter().position(|s| s == "degraded")?;
        (list.last().map(String::as_str) == Some("healthy") && list.len() > degraded_at + 1).then_some(())
    })
    .await;
}

// --- auth and errors ---

#[tokio::test]
async fn mutations_need_a_valid_admin_token() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let reset = json!({ "reason": "auth test" });
    let try_with = |auth: Option<String>| {
        let env = &env;
        let reset = reset.clone();
        async move {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let (s, _, text) = call(&env.bc, Method::POST, &env.admin_url(API_RESET), &headers, reset.to_string()).await;
            (s, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let bearer = |t: &str| Some(format!("Bearer {t}"));

    let (s, v) = try_with(None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, v) = try_with(Some("Basic YWRtaW46YWRtaW4=".into())).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, v) = try_with(bearer("not-a-jwt")).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");

    // Tampered signature: one character flipped.
    let good = admin_token("mallory");
    let sig_start = good.rfind('.').unwrap() + 1;
    let mut bytes = good.clone().into_bytes();
    let i = sig_start + 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let (s, v) = try_with(bearer(&String::from_utf8(bytes).unwrap())).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");

    // Tampered claims: a viewer token promoted to admin without re-signing.
    let viewer = viewer_token("mallory");
    let parts: Vec<&str> = viewer.split('.').collect();
    let claims = json!({ "sub": "mallory", "role": "admin", "exp": unix_now() + 600 });
    let forged = format!("{}.{}.{}", parts[0], b64url(claims.to_string().as_bytes()), parts[2]);
    let (s, v) = try_with(bearer(&forged)).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");

    // alg: none.
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()));
    let (s, v) = try_with(bearer(&none)).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");

    // Expired beyond the 30s leeway; inside the leeway is accepted.
    let expired = token(json!({ "sub": "late", "role": "admin", "exp": unix_now() - 120 }));
    let (s, v) = try_with(bearer(&expired)).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");
    let lenient = token(json!({ "sub": "late", "role": "admin", "exp": unix_now() - 10 }));
    let (s, v) = try_with(bearer(&lenient)).await;
    assert_eq!(s, StatusCode::OK, "within the 30s leeway: {v}");
    let early = token(json!({ "sub": "early", "role": "admin", "nbf": unix_now() + 300 }));
    let (s, v) = try_with(bearer(&early)).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");

    // The same secret with another algorithm, or another secret.
    let claims = json!({ "sub": "alg", "role": "admin", "exp": unix_now() + 600 });
    for alg in [Algorithm::HS512, Algorithm::HS384] {
        let (s, v) = try_with(bearer(&sign(alg, SECRET, &claims))).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");
    }
    let other_secret = sign(Algorithm::HS256, "some-other-secret-entirely", &claims);
    let (s, v) = try_with(bearer(&other_secret)).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");

    // Valid, but not an admin.
    let (s, v) = try_with(bearer(&viewer)).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    assert!(v["error"]["message"].as_str().unwrap().contains("admin"), "{v}");
    let roleless = token(json!({ "sub": "nobody" }));
    let (s, v) = try_with(bearer(&roleless)).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");

    // Roles from `role` (string) and `roles` (array) both work.
    let (s, v) = try_with(bearer(&admin_token("alice"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let roles = token(json!({ "sub": "bob", "roles": ["viewer", "admin"] }));
    let (s, v) = try_with(bearer(&roles)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Only the accepted calls were audited.
    let (_, _, audit) = env.api(Method::GET, AUDIT, None, None).await;
    let who: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["who"].as_str().unwrap()).collect();
    assert_eq!(who, ["late", "alice", "bob"], "{audit}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn role_claim_and_admin_role_are_configurable() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), ", roleClaim: groups").await;
    let reset = || json!({ "reason": "role claim" });
    let (s, _, v) = env.post(API_RESET, &token(json!({ "sub": "g1", "groups": ["dev", "admin"] })), reset()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = env.post(API_RESET, &token(json!({ "sub": "g2", "groups": "admin" })), reset()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The claim was renamed: `role` no longer counts.
    let (s, _, v) = env.post(API_RESET, &admin_token("g3"), reset()).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    let (s, _, v) = env.post(API_RESET, &token(json!({ "sub": "g4", "groups": ["dev"] })), reset()).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");

    // A custom admin role name.
    let up2 = upstream("api").await;
    let dir = temp_dir("admin-role");
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let yaml = format!(
        "auth: {{ jwt: {{ hs256SecretFile: {}, adminRole: fusebox-operators }} }}\n{}",
        secret.display(),
        upstreams_yaml(&up2.url(), "failureThreshold: 3", None)
    );
    let app = fusebox(&yaml).await;
    let bc = body_client();
    let url = format!("http://{}{API_RESET}", app.admin_addr());
    let body = reset().to_string();
    let ops = format!("Bearer {}", token(json!({ "sub": "o", "roles": ["fusebox-operators"] })));
    let (s, _, b) = call(&bc, Method::POST, &url, &[("authorization", &ops)], body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let adm = format!("Bearer {}", admin_token("a"));
    let (s, _, b) = call(&bc, Method::POST, &url, &[("authorization", &adm)], body).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "`admin` is not the configured role: {b}");
}

#[tokio::test]
async fn require_for_reads_protects_the_read_endpoints() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), ", requireForReads: true").await;
    let reads = [STATUS, "/api/admin/circuit-breaker/api/history?timeframe=1h", AUDIT];
    let viewer = viewer_token("reader");
    let mut tampered = viewer.clone();
    tampered.push('x');
    for path in reads {
        let (s, _, v) = env.api(Method::GET, path, None, None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
        let (s, _, v) = env.api(Method::GET, path, Some(&tampered), None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "invalid_token");
        let (s, _, v) = env.api(Method::GET, path, Some(&viewer), None).await;
        assert_eq!(s, StatusCode::OK, "a valid token of any role may read {path}: {v}");
        let (s, _, v) = env.api(Method::GET, path, Some(&admin_token("root")), None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    // Mutations still need the admin role.
    let (s, _, v) = env.post(API_RESET, &viewer, json!({ "reason": "x" })).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn mutations_are_rate_limited_per_caller() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let busy = admin_token("busy");
    for i in 0..10 {
        let (s, _, v) = env.post(API_RESET, &busy, json!({ "reason": format!("reset {i}") })).await;
        assert_eq!(s, StatusCode::OK, "mutation {i}: {v}");
    }
    let (s, h, v) = env.post(API_RESET, &busy, json!({ "reason": "one too many" })).await;
    assert_error(s, &v, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = h.get("retry-after").expect("Retry-After on 429").to_str().unwrap().parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // Per caller, not per endpoint: another kind of mutation is limited too.
    let (s, _, v) = env.post(API_FORCE, &busy, json!({ "state": "forced-open", "reason": "x" })).await;
    assert_error(s, &v, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(env.service("api").await["mode"], "auto", "the limited call did nothing");
    // Another caller, and reads, are not affected.
    let (s, _, v) = env.post(API_RESET, &admin_token("calm"), json!({ "reason": "mine" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, _) = env.api(Method::GET, STATUS, None, None).await;
    assert_eq!(s, StatusCode::OK);

    // A minute later the caller may mutate again. (New connections: the
    // jump in time idles out the pooled keep-alive ones.)
    advance(Duration::from_secs(61)).await;
    let auth = format!("Bearer {busy}");
    let (s, _, v) = call(
        &body_client(),
        Method::POST,
        &env.admin_url(API_RESET),
        &[("authorization", &auth)],
        json!({ "reason": "later" }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let env = Env { c: client(), bc: body_client(), ..env };

    let (_, _, audit) = env.api(Method::GET, AUDIT, None, None).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["who"] == "busy").count(), 11, "{audit}");
    assert_eq!(entries.iter().filter(|e| e["who"] == "calm").count(), 1, "{audit}");
}

#[tokio::test]
async fn unknown_service_path_and_method() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let t = admin_token("ops");
    let cfg = json!({ "failureThreshold": 2, "resetTimeoutMs": 1000, "minHealthyPeriodMs": 0 });
    for (method, path, body) in [
        (Method::POST, "/api/admin/circuit-breaker/nope/reset", json!({ "reason": "x" })),
        (Method::POST, "/api/admin/circuit-breaker/nope/force", json!({ "state": "forced-open", "reason": "x" })),
        (Method::PUT, "/api/admin/circuit-breaker/nope/config", cfg.clone()),
        (Method::DELETE, "/api/admin/circuit-breaker/nope/config", Value::Null),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, _, v) = env.api(method.clone(), path, Some(&t), body).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_service");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"), "{method} {path}: {v}");
    }
    let (s, _, v) = env.api(Method::GET, "/api/admin/no/such/thing", Some(&t), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");

    for (method, path, allow) in [
        (Method::GET, API_RESET, "POST"),
        (Method::GET, API_FORCE, "POST"),
        (Method::PATCH, API_CONFIG, "PUT, DELETE"),
        (Method::POST, API_CONFIG, "PUT, DELETE"),
        (Method::POST, STATUS, "GET"),
        (Method::DELETE, "/api/admin/circuit-breaker/api/history", "GET"),
        (Method::GET, RELOAD, "POST"),
        (Method::PUT, AUDIT, "GET"),
        (Method::POST, "/api/admin/config", "GET"),
        (Method::DELETE, "/api/admin/circuit-breaker/api/operations/x", "GET"),
    ] {
        let (s, h, v) = env.api(method.clone(), path, Some(&t), None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {v}");
        assert_error(s, &v, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(h.get("allow").map(|v| v.to_str().unwrap()), Some(allow), "{method} {path}");
    }
    // Nothing above changed the circuit.
    let a = env.service("api").await;
    assert_eq!(a["mode"], "auto", "{a}");
    assert_eq!(a["override"], Value::Null, "{a}");
}

// --- reload ---

#[tokio::test]
async fn reload_of_an_invalid_file_reports_line_and_column_and_keeps_serving() {
    let up = upstream("api").await;
    let good = format!(
        "upstreams:\n  api:\n    endpoints: [{}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    );
    let env = Env::start_file(&good).await;
    let t = admin_token("deployer");
    send_n(&env, "/x", 1, StatusCode::OK).await;
    let generation = env.app.state.store.generation();
    // The file: listen (1), admin (2), auth (3), upstreams (4), api (5),
    // endpoints (6), breaker (7), routes (8), the route (9).
    let bad = good.replace("failureThreshold: 3", "failureThreshold: 0").replace("upstream: api }", "upstream: nope }");
    std::fs::write(env.config_path(), file_text(&env.dir, &bad)).unwrap();

    let (s, _, v) = env.post(RELOAD, &t, json!({})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_config");
    let details = v["error"]["details"].as_array().unwrap_or_else(|| panic!("details[]: {v}"));
    assert_eq!(details.len(), 2, "every error is reported: {v}");
    for d in details {
        assert!(d["line"].as_u64().is_some_and(|l| l > 0), "{d}");
        assert!(d["column"].as_u64().is_some_and(|c| c > 0), "{d}");
        assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
    }
    let at = |needle: &str| details.iter().find(|d| d["path"] == needle).unwrap_or_else(|| panic!("no error about {needle}: {v}"));
    assert_eq!(at("upstreams.api.breaker.failureThreshold")["line"], 7, "{v}");
    assert_eq!(at("upstreams.api.breaker.failureThreshold")["column"], 27, "the key: {v}");
    assert_eq!(at("routes[0].upstream")["line"], 9, "{v}");

    // The running config keeps serving, unchanged.
    send_n(&env, "/x", 2, StatusCode::OK).await;
    assert_eq!(up.hits(), 3);
    let a = env.service("api").await;
    assert_eq!(a["config"]["failureThreshold"], 3, "{a}");
    assert_eq!(env.app.state.store.generation(), generation);
    let (_, _, d) = get(&env.c, &env.admin_url("/health/detailed")).await;
    let d: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["config"]["lastReload"]["ok"], false, "{d}");
    assert!(d["config"]["lastReload"]["errors"][0]["line"].as_u64().is_some(), "{d}");

    // A YAML syntax slip: one error, also located.
    let typo = good.replace("failureThreshold: 3", "failureTreshold: 3");
    std::fs::write(env.config_path(), file_text(&env.dir, &typo)).unwrap();
    let (s, _, v) = env.post(RELOAD, &t, json!({})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_config");
    let d = &v["error"]["details"][0];
    assert_eq!(d["line"], 7, "{v}");
    assert!(d["column"].as_u64().is_some_and(|c| c > 0), "{v}");
    assert!(d["message"].as_str().unwrap().contains("failureThreshold"), "suggests the key: {v}");

    // Fixed file: a new generation.
    std::fs::write(env.config_path(), file_text(&env.dir, &good.replace(": 3 }", ": 4 }"))).unwrap();
    let (s, _, v) = env.post(RELOAD, &t, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["generation"].as_u64().unwrap() > generation, "{v}");
    assert_eq!(env.service("api").await["config"]["failureThreshold"], 4);

    let (_, _, audit) = env.api(Method::GET, AUDIT, None, None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["who"], "deployer", "{e}");
            e["action"].as_str().unwrap()
        })
        .collect();
    assert_eq!(actions, ["reload-rejected", "reload-rejected", "reload"], "{audit}");
}

// --- audit ---

#[tokio::test]
async fn audit_lists_every_mutation_with_who_what_and_why() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 3", None), "").await;
    let (s, _, v) = env.post(API_FORCE, &admin_token("alice"), json!({ "state": "forced-open", "reason": "maintenance window" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = env
        .post(
            API_RESET,
            &admin_token("bob"),
            json!({ "reason": "maintenance over", "force": true, "metadata": { "triggeredBy": "pager", "environment": "test" } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = env
        .api(
            Method::PUT,
            API_CONFIG,
            Some(&admin_token("carol")),
            Some(json!({ "failureThreshold": 2, "resetTimeoutMs": 1000, "minHealthyPeriodMs": 0 })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = env.api(Method::DELETE, API_CONFIG, Some(&admin_token("dave")), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Refused attempts are not mutations.
    let (s, _, _) = env.post(API_RESET, &viewer_token("eve"), json!({ "reason": "x" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _, v) = env.api(Method::GET, AUDIT, None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let got: Vec<(&str, &str)> = entries.iter().map(|e| (e["who"].as_str().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(got, [("alice", "force"), ("bob", "reset"), ("carol", "config"), ("dave", "config-delete")], "{v}");
    for e in entries {
        assert_timestamp(&e["timestamp"]);
        assert_eq!(e["service"], "api", "{e}");
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
    }
    assert_eq!(entries[0]["reason"], "maintenance window", "{v}");
    assert_eq!(entries[0]["after"]["state"], "forced-open", "{v}");
    assert_eq!(entries[1]["reason"], "maintenance over", "{v}");
    assert_eq!(entries[1]["before"]["state"], "forced-open", "{v}");
    assert_eq!(entries[1]["after"]["metadata"]["triggeredBy"], "pager", "{v}");
    assert_eq!(entries[2]["after"]["failureThreshold"], 2, "{v}");
    assert_eq!(entries[3]["after"]["failureThreshold"], 3, "{v}");
}

/// The architecture seed's whole `CircuitBreakerConfig` is a valid body:
/// `enabled: false` counts but never rejects.
#[tokio::test]
async fn put_config_takes_the_architecture_seeds_whole_body() {
    let up = upstream("api").await;
    // healthCheckIntervalMs times a health check: the upstream has one.
    let yaml = upstreams_yaml(&up.url(), "failureThreshold: 10", None)
        .replace("    breaker: {", "    healthCheck: { path: /health, interval: 10s }\n    breaker: {");
    let env = Env::start(&yaml, "").await;
    let t = admin_token("ops");
    let body = json!({
        "enabled": false, "failureThreshold": 2, "resetTimeoutMs": 60000, "minHealthyPeriodMs": 120000,
        "monitoringWindowMs": 300000, "healthCheckIntervalMs": 30000,
    });
    let (s, _, v) = env.api(Method::PUT, API_CONFIG, Some(&t), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["config"]["enabled"], false, "{v}");
    assert_eq!(v["config"]["monitoringWindowMs"], 300000, "{v}");
    let a = env.service("api").await;
    assert_eq!(a["config"]["enabled"], false, "{a}");
    // Disabled: failures are counted, nothing is rejected.
    up.set_status(500);
    for _ in 0..5 {
        let (s, _, _) = env.data("/x").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(up.hits() >= 5);
    let (_, _, v) = env.api(Method::GET, "/api/admin/config", Some(&t), None).await;
    assert_eq!(v["upstreams"]["api"]["healthCheck"]["interval"], "30s", "the interval is applied: {v}");

    // Without a health check the interval would time nothing: refused,
    // never accepted and ignored.
    let plain = upstream("plain").await;
    let env = Env::start(&upstreams_yaml(&plain.url(), "failureThreshold: 10", None), "").await;
    let body = json!({ "failureThreshold": 2, "resetTimeoutMs": 60000, "minHealthyPeriodMs": 0, "healthCheckIntervalMs": 30000 });
    let (s, _, v) = env.api(Method::PUT, API_CONFIG, Some(&t), Some(body)).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_config");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("healthCheck")), "{v}");
}

/// `GET /api/admin/config`: the effective config with defaults applied,
/// runtime overrides marked, secrets redacted; admin-only with JWT auth.
#[tokio::test]
async fn effective_config_is_dumped_with_overrides_marked_and_secrets_redacted() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 7", None), "").await;
    let (s, _, _) = env.api(Method::GET, "/api/admin/config", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = env.api(Method::GET, "/api/admin/config", Some(&viewer_token("v")), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let t = admin_token("ops");
    let (s, _, v) = env.api(Method::GET, "/api/admin/config", Some(&t), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let api = &v["upstreams"]["api"];
    assert_eq!(api["breaker"]["failureThreshold"], 7, "{v}");
    assert_eq!(api["breaker"]["resetTimeout"], "1m", "defaults applied: {v}");
    assert_eq!(api["retry"]["on"], json!(["connect-failure", "reset-before-response", "504"]), "{v}");
    assert_eq!(api["outlierDetection"]["consecutiveFailures"], 5, "{v}");
    assert_eq!(v["client"]["headerTimeout"], "10s", "{v}");
    assert_eq!(v["auth"]["jwt"]["key"]["secret"], "<redacted>", "{v}");
    assert!(!v.to_string().contains(SECRET), "the secret never appears");
    assert!(api.get("runtimeOverride").is_none(), "{v}");

    let body = json!({ "failureThreshold": 2, "resetTimeoutMs": 30000, "minHealthyPeriodMs": 1000 });
    let (s, _, _) = env.api(Method::PUT, API_CONFIG, Some(&t), Some(body)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, v) = env.api(Method::GET, "/api/admin/config", Some(&t), None).await;
    let api = &v["upstreams"]["api"];
    assert_eq!(api["breaker"]["failureThreshold"], 2, "what runs: {v}");
    assert_eq!(api["runtimeOverride"]["keys"]["failureThreshold"], 2, "{v}");
    assert_eq!(api["runtimeOverride"]["yaml"]["failureThreshold"], 7, "{v}");
    assert_eq!(api["runtimeOverride"]["appliedBy"], "ops", "{v}");
}

/// A forced-open refusal says why the operator opened it; a config answer
/// and a fresh status entry carry no nulls for `requestLimit` or
/// `lastOperation`.
#[tokio::test]
async fn forced_open_refusals_carry_the_operators_reason() {
    let up = upstream("api").await;
    let env = Env::start(&upstreams_yaml(&up.url(), "failureThreshold: 5", None), "").await;
    let t = admin_token("ops");
    let a = env.service("api").await;
    assert_eq!(
        a["operations"].get("lastOperation"),
        Some(&Value::Null),
        "present (the seed's field is not optional), null before the first call: {a}"
    );
    let (s, _, v) = env
        .api(
            Method::POST,
            "/api/admin/circuit-breaker/api/force",
            Some(&t),
            Some(json!({ "state": "forced-open", "reason": "db migration" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, body) = env.data("/x").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["reason"].as_str().is_some_and(|r| r.contains("db migration")), "{v}");
    assert_eq!(v["rule"], "operator", "{v}");
    let body = json!({ "failureThreshold": 3, "resetTimeoutMs": 1000, "minHealthyPeriodMs": 0 });
    let (_, _, v) = env.api(Method::PUT, API_CONFIG, Some(&t), Some(body)).await;
    assert_eq!(v["config"]["requestLimit"], 1000, "defaulted, not null: {v}");
}
