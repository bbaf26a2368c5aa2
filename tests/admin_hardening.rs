//! Admin hardening over real sockets (issue 24, items 4, 7 and 8): DNS
//! rebinding refused by `Host` (421) on reads, mutations and the WebSocket
//! handshake while IPs, `localhost` and `admin.allowedHosts` names pass;
//! Origin never compared with `Host`; CR/LF in a reason, a token's `sub`
//! and a YAML key never forge a log line (the binary's own output); tokens
//! with a string `nbf` or a `crit` header refused; one decoding of
//! `{service}` for every verb; a flood of new subjects that locks out no
//! one.
//!
//! Must not: depend on timing tighter than a second, or leave processes or
//! files behind.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::{Method, StatusCode};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{body_client, call, fusebox, temp_dir, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "fusebox-admin-hardening-secret-5c1e9a";

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn admin_token(sub: &str) -> String {
    token(&json!({ "sub": sub, "role": "admin", "exp": unix_now() + 600 }))
}

/// A correctly signed HS256 token with a hand-written header.
fn token_with_header(header: &Value, claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn auth_yaml(dir: &Path) -> String {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    format!("auth: {{ jwt: {{ hs256SecretFile: {}, adminRole: admin }} }}\n", secret.display())
}

fn upstreams(url: &str) -> String {
    format!(
        "upstreams:\n  api:\n    endpoints: [{url}]\n    breaker: {{ jitter: 0 }}\n  market-data:\n    endpoints: [{url}]\n    breaker: {{ jitter: 0 }}\nroutes:\n  - {{ match: {{ pathPrefix: /md }}, upstream: market-data }}\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

async fn mode(base: &str, name: &str) -> String {
    let (_, _, body) = call(&body_client(), Method::GET, &format!("{base}/api/admin/circuit-breaker/status"), &[], "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let s = v["services"].as_array().unwrap().iter().find(|s| s["name"] == name || s["service"] == name).cloned();
    s.map(|s| s["mode"].as_str().unwrap_or("").to_string()).unwrap_or_else(|| panic!("no {name} in {v}"))
}

fn force_body(state: &str) -> String {
    json!({ "state": state, "reason": "test" }).to_string()
}

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code: {v}")).to_string()
}

// --- item 4: DNS rebinding ---

#[tokio::test]
async fn rebinding_hosts_are_refused_421_on_every_path_and_known_hosts_pass() {
    let up = upstream("api").await;
    let app = fusebox(&format!("admin: {{ listen: 127.0.0.1:0, allowedHosts: [fusebox.internal] }}\n{}", upstreams(&up.url()))).await;
    let port = app.admin_addr().port();
    let base = format!("http://{}", app.admin_addr());
    let c = body_client();
    let force = format!("{base}/api/admin/circuit-breaker/api/force");

    // The attack: Host and Origin both the attacker's rebound name.
    let evil_host = format!("evil.example:{port}");
    let evil_origin = format!("http://evil.example:{port}");
    let evil = [("host", evil_host.as_str()), ("origin", evil_origin.as_str())];
    let (s, _, body) = call(&c, Method::POST, &force, &evil, force_body("forced-open")).await;
    assert_eq!(s, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert_eq!(error_code(&body), "host_not_allowed");
    assert_eq!(mode(&base, "api").await, "auto", "the circuit was not forced");
    for path in ["/metrics", "/api/admin/circuit-breaker/status", "/health/detailed", "/dashboard", "/health"] {
        let (s, _, body) = call(&c, Method::GET, &format!("{base}{path}"), &evil[..1], "").await;
        assert_eq!(s, StatusCode::MISDIRECTED_REQUEST, "{path}: {body}");
        assert_eq!(error_code(&body), "host_not_allowed", "{path}");
    }
    // The WebSocket handshake too.
    let mut req = format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr()).into_client_request().unwrap();
    req.headers_mut().insert("host", evil_host.parse().unwrap());
    req.headers_mut().insert("origin", evil_origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST),
        Ok(_) => panic!("a rebound WebSocket handshake was accepted"),
        Err(e) => panic!("{e}"),
    }

    // Hosts it answers for: its IP, localhost and an allowedHosts name,
    // each with its own origin.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("fusebox.internal:{port}")] {
        let origin = format!("http://{host}");
        let headers = [("host", host.as_str()), ("origin", origin.as_str())];
        let (s, _, body) = call(&c, Method::POST, &force, &headers, force_body("forced-open")).await;
        assert_eq!(s, StatusCode::OK, "{host}: {body}");
        let (s, _, body) = call(&c, Method::POST, &force, &headers, force_body("auto")).await;
        assert_eq!(s, StatusCode::OK, "{host}: {body}");
        let (s, _, body) = call(&c, Method::GET, &format!("{base}/metrics"), &headers[..1], "").await;
        assert_eq!(s, StatusCode::OK, "{host}: {body}");
        let mut req = format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr()).into_client_request().unwrap();
        req.headers_mut().insert("host", host.parse().unwrap());
        req.headers_mut().insert("origin", origin.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        let _ = ws.close(None).await;
    }
    // A name on another port than the listener's, or an allowed name as an
    // origin on a foreign port, or a foreign IP as origin: not the admin.
    let own = format!("127.0.0.1:{port}");
    for origin in
        [format!("http://localhost:{}", port.wrapping_add(1)), "http://203.0.113.5".to_string(), format!("http://203.0.113.5:{port}")]
    {
        let (s, _, body) =
            call(&c, Method::POST, &force, &[("host", own.as_str()), ("origin", origin.as_str())], force_body("forced-open")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{origin}: {body}");
    }
    // An IPv6 literal is answered (it cannot be rebound), an unknown name is not,
    // whatever its port.
    let (s, _, body) = call(&c, Method::GET, &format!("{base}/health"), &[("host", "[::1]:9901")], "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _, _) = call(&c, Method::GET, &format!("{base}/health"), &[("host", "fusebox.internal.evil.example")], "").await;
    assert_eq!(s, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(mode(&base, "api").await, "auto");

    // HTTP/1.0 without Host passes.
    let mut tcp = tokio::net::TcpStream::connect(app.admin_addr()).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_star_in_allowed_hosts_answers_any_host_but_no_foreign_origin() {
    let up = upstream("api").await;
    let app = fusebox(&format!("admin: {{ listen: 127.0.0.1:0, allowedHosts: [\"*\"] }}\n{}", upstreams(&up.url()))).await;
    let port = app.admin_addr().port();
    let base = format!("http://{}", app.admin_addr());
    let host = format!("proxy.example:{port}");
    let (s, _, body) = call(&body_client(), Method::GET, &format!("{base}/health"), &[("host", host.as_str())], "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let origin = format!("http://proxy.example:{port}");
    let url = format!("{base}/api/admin/circuit-breaker/api/force");
    let (s, _, body) =
        call(&body_client(), Method::POST, &url, &[("host", host.as_str()), ("origin", origin.as_str())], force_body("forced-open")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "`*` is for Host only: {body}");
    app.shutdown().await;
}

// --- item 8: tokens ---

#[tokio::test]
async fn wrongly_typed_time_claims_and_a_crit_header_are_refused() {
    let up = upstream("api").await;
    let dir = temp_dir("adm-jwt");
    let app = fusebox(&format!("{}{}", auth_yaml(&dir), upstreams(&up.url()))).await;
    let base = format!("http://{}", app.admin_addr());
    let url = format!("{base}/api/admin/circuit-breaker/api/force");
    let exp = unix_now() + 600;
    let hs = json!({ "alg": "HS256", "typ": "JWT" });
    let refused = [
        ("string nbf", token(&json!({ "sub": "a", "role": "admin", "exp": exp, "nbf": "2999-01-01" }))),
        (
            "fractional nbf in the future",
            token(&json!({ "sub": "a", "role": "admin", "exp": exp, "nbf": (unix_now() + 3600) as f64 + 0.5 })),
        ),
        ("string iat", token(&json!({ "sub": "a", "role": "admin", "exp": exp, "iat": "yesterday" }))),
        ("string exp", token(&json!({ "sub": "a", "role": "admin", "exp": exp.to_string() }))),
        ("boolean nbf", token(&json!({ "sub": "a", "role": "admin", "exp": exp, "nbf": true }))),
        (
            "unknown crit",
            token_with_header(
                &json!({ "alg": "HS256", "typ": "JWT", "crit": ["exp-ext"], "exp-ext": 1 }),
                &json!({ "sub": "a", "role": "admin", "exp": exp }),
            ),
        ),
        ("empty crit", token_with_header(&json!({ "alg": "HS256", "crit": [] }), &json!({ "sub": "a", "role": "admin", "exp": exp }))),
    ];
    for (what, t) in &refused {
        let bearer = format!("Bearer {t}");
        let (s, _, body) = call(&body_client(), Method::POST, &url, &[("authorization", bearer.as_str())], force_body("forced-open")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(error_code(&body), "invalid_token", "{what}");
    }
    // The same header without `crit`, and numeric claims, pass.
    let good = token_with_header(&hs, &json!({ "sub": "a", "role": "admin", "exp": exp, "nbf": unix_now() - 10, "iat": unix_now() - 10 }));
    let bearer = format!("Bearer {good}");
    let (s, _, body) = call(&body_client(), Method::POST, &url, &[("authorization", bearer.as_str())], force_body("forced-open")).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // The WebSocket goes through the same checker: 4001.
    let crit = &refused[5].1;
    let mut req = format!("ws://{}/api/v2/ws/circuit-breaker?token={crit}", app.admin_addr()).into_client_request().unwrap();
    req.headers_mut().remove("origin");
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("the handshake completes, then the session closes");
    let code = timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(CloseCode::Library(4001)));
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

use futures_util::StreamExt as _;

// --- item 8: one decoding of {service} ---

#[tokio::test]
async fn an_encoded_service_name_addresses_the_same_circuit_for_every_verb() {
    let up = upstream("api").await;
    let app = fusebox(&upstreams(&up.url())).await;
    let base = format!("http://{}/api/admin/circuit-breaker", app.admin_addr());
    let c = body_client();
    let enc = "market%2Ddata";
    let (s, _, body) = call(&c, Method::POST, &format!("{base}/{enc}/force"), &[], force_body("forced-open")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["service"], "market-data");
    assert_eq!(mode(&format!("http://{}", app.admin_addr()), "market-data").await, "forced-open");
    let config = json!({ "failureThreshold": 7, "resetTimeoutMs": 5000, "minHealthyPeriodMs": 0 }).to_string();
    let (s, _, body) = call(&c, Method::PUT, &format!("{base}/{enc}/config"), &[], config).await;
    assert_eq!(s, StatusCode::OK, "PUT: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["service"], "market-data");
    let (s, _, body) = call(&c, Method::GET, &format!("{base}/{enc}/history?timeframe=1h"), &[], "").await;
    assert_eq!(s, StatusCode::OK, "history: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["service"], "market-data");
    let (s, _, body) = call(&c, Method::DELETE, &format!("{base}/{enc}/config"), &[], "").await;
    assert_eq!(s, StatusCode::OK, "DELETE: {body}");
    let reset = json!({ "reason": "encoded", "force": true }).to_string();
    let (s, _, body) = call(&c, Method::POST, &format!("{base}/{enc}/reset"), &[], reset).await;
    assert_eq!(s, StatusCode::OK, "reset: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["service"], "market-data");
    // Decoded once: a doubly encoded name is another (unknown) name.
    let (s, _, body) = call(&c, Method::POST, &format!("{base}/market%252Ddata/force"), &[], force_body("forced-open")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    // The audit names the circuit as configured.
    let (_, _, body) = call(&c, Method::GET, &format!("http://{}/api/admin/audit", app.admin_addr()), &[], "").await;
    let audit: Value = serde_json::from_str(&body).unwrap();
    let services: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["service"].as_str()).collect();
    assert_eq!(services, ["market-data"; 4], "{audit}");
    app.shutdown().await;
}

// --- item 8: the caller rate limit ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_new_subjects_do_not_lock_out_a_fresh_admin() {
    let up = upstream("api").await;
    let dir = temp_dir("adm-flood");
    let app = fusebox(&format!("{}{}", auth_yaml(&dir), upstreams(&up.url()))).await;
    let url = format!("http://{}/api/admin/circuit-breaker/api/reset", app.admin_addr());
    let started = Instant::now();
    // 10,050 subjects, each one admin change (refused later for its empty
    // reason, after the rate limit counted it).
    let tasks: Vec<_> = (0..10usize)
        .map(|worker| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = body_client();
                for i in (worker..10_050).step_by(10) {
                    let bearer = format!("Bearer {}", admin_token(&format!("flood-{i}")));
                    let (s, _, body) =
                        call(&c, Method::POST, &url, &[("authorization", bearer.as_str())], json!({ "reason": " " }).to_string()).await;
                    assert_eq!(s, StatusCode::BAD_REQUEST, "subject {i}: {body}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(50), "the flood must fit in the limit's window: {:?}", started.elapsed());
    let bearer = format!("Bearer {}", admin_token("fresh-admin"));
    let (s, h, body) =
        call(&body_client(), Method::POST, &url, &[("authorization", bearer.as_str())], json!({ "reason": "after the flood" }).to_string())
            .await;
    assert_eq!(s, StatusCode::OK, "a fresh admin is not locked out: {body} {h:?}");
    // Its own limit still holds, with the true wait.
    let mut refused = None;
    for _ in 0..12 {
        let (s, h, _) =
            call(&body_client(), Method::POST, &url, &[("authorization", bearer.as_str())], json!({ "reason": "again" }).to_string()).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(h);
            break;
        }
    }
    let h = refused.expect("the fresh admin is limited after its burst");
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&wait), "one change every 6 s: retry-after {wait}");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

// --- item 7: one event, one line ---

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn cr_lf_in_a_reason_a_subject_and_a_yaml_key_forge_no_log_line() {
    let up = upstream("api").await;
    let dir = temp_dir("adm-log");
    let (data, admin) = (support::closed_port(), support::closed_port());
    let path = dir.join("fusebox.yaml");
    let head = format!("listen: 127.0.0.1:{data}\nadmin: {{ listen: 127.0.0.1:{admin} }}\n{}", auth_yaml(&dir));
    std::fs::write(&path, format!("{head}{}", upstreams(&up.url()))).unwrap();
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the binary starts");
    let _child = Child(child);
    let c = body_client();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let started = Instant::now();
    loop {
        if let Ok(Ok(resp)) = timeout(Duration::from_secs(1), support::client().get(ready.parse().unwrap())).await {
            if resp.status() == StatusCode::OK {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "fusebox did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sub = "ops\r\nFORGED-SUB circuit api: open -> closed";
    let bearer = format!("Bearer {}", admin_token(sub));
    let reason = "maintenance\r\nFORGED-REASON circuit api: open -> closed\nFORGED-LF";
    let url = format!("http://127.0.0.1:{admin}/api/admin/circuit-breaker/api/force");
    let (s, _, body) = call(
        &c,
        Method::POST,
        &url,
        &[("authorization", bearer.as_str())],
        json!({ "state": "forced-open", "reason": reason }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // A reload of a file with a CR/LF key: rejected, in one log line.
    std::fs::write(&path, format!("{head}\"bogus\\r\\nFORGED-KEY x\": 1\n{}", upstreams(&up.url()))).unwrap();
    let reload = format!("http://127.0.0.1:{admin}/api/admin/config/reload");
    let (s, _, body) = call(&c, Method::POST, &reload, &[("authorization", bearer.as_str())], "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("forced-open") && text.contains("reload rejected") && text.contains("admin force") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("reload rejected"), "{text}");
    for forged in ["FORGED-SUB", "FORGED-REASON", "FORGED-LF", "FORGED-KEY"] {
        assert!(text.contains(forged), "{forged} is logged: {text}");
        for line in text.lines().filter(|l| l.contains(forged)) {
            assert!(!line.trim_start().starts_with(forged), "{forged} starts a line of its own:\n{text}");
        }
    }
    assert!(!text.contains('\r'), "no raw CR in the log: {text:?}");
    let transition = text.lines().find(|l| l.contains("-> forced-open")).unwrap_or_else(|| panic!("no transition line:\n{text}"));
    assert!(
        transition.contains("FORGED-SUB") && transition.contains("FORGED-LF"),
        "sub and reason on the transition's one line: {transition}"
    );

    // `fusebox check` prints the same error on one line too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fusebox")).args(["check", "-c"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("FORGED-KEY") && !stderr.lines().any(|l| l.starts_with("FORGED-KEY")) && !stderr.contains('\r'), "{stderr:?}");
    let _ = std::fs::remove_dir_all(dir);
}

// --- SPEC 9a: a rotated secret file is read again, like a certificate ---

#[tokio::test]
async fn a_rotated_hs256_secret_file_is_read_again_without_a_restart() {
    const NEW_SECRET: &str = "fusebox-rotated-secret-after-the-rotation-77d2";
    let dir = temp_dir("key-rotation");
    let up = upstream("api").await;
    // From a file: a reload reads the file again.
    let config = dir.join("fusebox.yaml");
    let yaml = format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{}{}", auth_yaml(&dir), upstreams(&up.url()));
    std::fs::write(&config, yaml).unwrap();
    let app = support::fusebox_file(&config).await;
    let url = format!("http://{}/api/admin/circuit-breaker/api/force", app.admin_addr());
    let with = |secret: &str| {
        let claims = json!({ "sub": "rotation", "role": "admin", "exp": unix_now() + 600 });
        format!("Bearer {}", encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap())
    };
    // Accepted is 200 (or 409 once the circuit is already forced open).
    let force = |bearer: String| {
        let url = url.clone();
        async move {
            let (s, _, _) =
                call(&body_client(), Method::POST, &url, &[("authorization", bearer.as_str())], force_body("forced-open")).await;
            if s == StatusCode::CONFLICT {
                StatusCode::OK
            } else {
                s
            }
        }
    };
    assert_eq!(force(with(SECRET)).await, StatusCode::OK, "the first secret signs");
    assert_eq!(force(with(NEW_SECRET)).await, StatusCode::UNAUTHORIZED, "not yet the new one");

    // A Secret volume swaps the file: written aside, renamed into place.
    let path = dir.join("jwt.secret");
    std::fs::write(dir.join("jwt.secret.new"), NEW_SECRET).unwrap();
    std::fs::rename(dir.join("jwt.secret.new"), &path).unwrap();
    support::eventually(Duration::from_secs(15), "tokens signed with the rotated secret pass", || async {
        (force(with(NEW_SECRET)).await != StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert_eq!(force(with(SECRET)).await, StatusCode::UNAUTHORIZED, "the old secret no longer signs");

    // A bad rotation (too short) keeps the last good key, with the error.
    std::fs::write(&path, "short").unwrap();
    support::eventually(Duration::from_secs(15), "the failed reload is reported", || async {
        let (_, _, body) = call(&body_client(), Method::GET, &format!("http://{}/health/detailed", app.admin_addr()), &[], "").await;
        body.contains("hs256SecretFile").then_some(())
    })
    .await;
    assert_eq!(force(with(NEW_SECRET)).await, StatusCode::OK, "the last good key stays in force");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
