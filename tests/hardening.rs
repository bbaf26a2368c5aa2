//! Hardening over real sockets: config and secret files that must be
//! refused (empty, short, FIFO, /dev/zero, absurd durations, a non-key),
//! tokens without a usable `exp`, WebSocket sessions ended at token expiry,
//! Origin checks, WebSocket abuse (ping floods, protocol violations), log
//! injection through the audit line, a store on a full disk (mutations 503
//! and change nothing), coalesced off-worker reloads that never stall the
//! data plane, and an open circuit that stays open across a restart.
//!
//! Must not: depend on timing tighter than a second, or leave mounts,
//! processes or files behind.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{body_client, call, client, fusebox, fusebox_file, get, get_json, temp_dir, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "fusebox-test-secret-7f3a9c21e4b8d605";

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn sign(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// `auth:` with the HS256 secret in `dir/jwt.secret`, plus extra jwt keys.
fn auth_yaml(dir: &Path, extra: &str) -> String {
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    format!("auth: {{ jwt: {{ hs256SecretFile: {}, adminRole: admin{extra} }} }}\n", secret.display())
}

fn upstreams(api: &str) -> String {
    format!("upstreams:\n  api:\n    endpoints: [{api}]\n    breaker: {{ jitter: 0, failureThreshold: 2, resetTimeout: 60s }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n")
}

/// A full config text (both listeners on port 0, `auth: none`).
fn full(body: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\n{body}")
}

fn parse_err(text: &str) -> String {
    match fusebox::config::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

// --- secrets and keys ---

#[test]
fn empty_or_whitespace_hs256_secret_file_is_an_error() {
    let dir = temp_dir("hard-secret");
    for (name, content) in [("empty", ""), ("blank", "  \n\t \n")] {
        let file = dir.join(name);
        std::fs::write(&file, content).unwrap();
        let text = format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {{ jwt: {{ hs256SecretFile: {} }} }}\n{}",
            file.display(),
            upstreams("http://127.0.0.1:9")
        );
        let e = parse_err(&text);
        assert!(e.contains("hs256SecretFile"), "{name}: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_five_byte_secret_from_env_or_file_is_an_error() {
    let dir = temp_dir("hard-short");
    let file = dir.join("short");
    std::fs::write(&file, "12345").unwrap();
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {{ jwt: {{ hs256SecretFile: {} }} }}\n{}",
        file.display(),
        upstreams("http://127.0.0.1:9")
    );
    assert!(parse_err(&text).contains("hs256SecretFile"));
    std::env::set_var("FUSEBOX_HARDENING_SHORT_SECRET", "12345");
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {{ jwt: {{ hs256SecretEnv: FUSEBOX_HARDENING_SHORT_SECRET }} }}\n{}",
        upstreams("http://127.0.0.1:9")
    );
    assert!(parse_err(&text).contains("hs256SecretEnv"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_fifo_as_secret_file_is_an_error_without_hanging() {
    let dir = temp_dir("hard-fifo");
    let fifo = dir.join("secret.fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(status.success());
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {{ jwt: {{ hs256SecretFile: {} }} }}\n{}",
        fifo.display(),
        upstreams("http://127.0.0.1:9")
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fusebox::config::parse(&text).map(|_| ()).map_err(|e| e.to_string()));
    });
    let result = rx.recv_timeout(Duration::from_secs(5)).expect("parse returned (did not block on the FIFO)");
    assert!(result.is_err_and(|e| e.contains("hs256SecretFile")));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dev_zero_as_config_file_is_an_error() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fusebox::config::Config::load(Path::new("/dev/zero")).is_err());
    });
    assert!(rx.recv_timeout(Duration::from_secs(5)).expect("load returned"), "/dev/zero accepted");
}

#[test]
fn absurd_durations_are_errors_not_panics() {
    for breaker in ["timeouts: { connect: 500000000000y }", "breaker: { resetTimeout: 500000000000y }"] {
        let text = full(&format!(
            "upstreams:\n  api:\n    endpoints: [http://127.0.0.1:9]\n    {breaker}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
        ));
        let e = std::panic::catch_unwind(|| parse_err(&text)).unwrap_or_else(|_| panic!("parse panicked on {breaker}"));
        assert!(!e.is_empty());
    }
}

#[test]
fn a_bad_value_under_defaults_is_an_error_even_where_every_upstream_overrides_it() {
    let text = full(
        "defaults:\n  breaker: { jitter: 2 }\nupstreams:\n  api:\n    endpoints: [http://127.0.0.1:9]\n    breaker: { jitter: 0.1 }\nroutes:\n  - { match: { pathPrefix: / }, upstream: api }\n",
    );
    let e = parse_err(&text);
    assert!(e.contains("defaults.breaker.jitter"), "{e}");
    assert!(e.contains("line 5"), "located in the file: {e}");
    // Reported once, not once per upstream plus once for `defaults:`.
    assert_eq!(e.matches("defaults.breaker.jitter").count(), 1, "{e}");
    // A sound `defaults:` that upstreams override is still fine.
    let ok = full(
        "defaults:\n  breaker: { jitter: 0.3 }\nupstreams:\n  api:\n    endpoints: [http://127.0.0.1:9]\n    breaker: { jitter: 0.1 }\nroutes:\n  - { match: { pathPrefix: / }, upstream: api }\n",
    );
    assert!(fusebox::config::parse(&ok).is_ok());
}

#[test]
fn a_public_key_file_that_is_not_a_key_is_an_error() {
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {{ jwt: {{ publicKeyFile: /etc/hostname }} }}\n{}",
        upstreams("http://127.0.0.1:9")
    );
    assert!(parse_err(&text).contains("publicKeyFile"));
}

#[tokio::test]
async fn an_empty_or_comment_only_file_is_an_error_and_a_live_reload_of_one_keeps_the_routes() {
    parse_err("");
    parse_err("# nothing here\n   \n# still nothing\n");
    let up = upstream("api").await;
    let dir = temp_dir("hard-empty");
    let path = dir.join("fusebox.yaml");
    std::fs::write(&path, full(&upstreams(&up.url()))).unwrap();
    let app = fusebox_file(&path).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    std::fs::write(&path, "# emptied by mistake\n").unwrap();
    assert!(app.state.reload_coalesced("test").await.is_err());
    assert_eq!(get(&c, &url).await.0, StatusCode::OK, "routes kept");
    let d = get_json(&c, &format!("http://{}/health/detailed", app.admin_addr())).await;
    assert_eq!(d["config"]["lastReload"]["ok"], false, "{d}");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

// --- tokens ---

#[tokio::test]
async fn tokens_without_a_numeric_exp_are_refused() {
    let up = upstream("api").await;
    let dir = temp_dir("hard-exp");
    let app = fusebox(&format!("{}{}", auth_yaml(&dir, ""), upstreams(&up.url()))).await;
    let bc = body_client();
    let url = format!("http://{}/api/admin/circuit-breaker/api/force", app.admin_addr());
    let body = json!({ "state": "forced-open", "reason": "test" }).to_string();
    for claims in [
        json!({ "sub": "a", "role": "admin" }),
        json!({ "sub": "a", "role": "admin", "exp": null }),
        json!({ "sub": "a", "role": "admin", "exp": "tomorrow" }),
    ] {
        let bearer = format!("Bearer {}", sign(&claims));
        let (s, _, v) = call(&bc, Method::POST, &url, &[("authorization", &bearer)], body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{claims}: {v}");
    }
    // And a good one passes (the test is not vacuous).
    let bearer = format!("Bearer {}", sign(&json!({ "sub": "a", "role": "admin", "exp": unix_now() + 600 })));
    let (s, _, v) = call(&bc, Method::POST, &url, &[("authorization", &bearer)], body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_websocket_session_is_closed_with_4001_when_its_token_expires() {
    let up = upstream("api").await;
    let dir = temp_dir("hard-ws-exp");
    let app = fusebox(&format!("{}{}", auth_yaml(&dir, ", leeway: 0s, requireForReads: true"), upstreams(&up.url()))).await;
    let token = sign(&json!({ "sub": "viewer", "role": "viewer", "exp": unix_now() + 2 }));
    let url = format!("ws://{}/api/v2/ws/circuit-breaker?token={token}", app.admin_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("handshake with a live token");
    let started = Instant::now();
    let code = timeout(Duration::from_secs(6), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame.map(|f| f.code);
            }
            if msg.is_err() {
                return None;
            }
        }
        None
    })
    .await
    .expect("the session ended");
    assert_eq!(code, Some(CloseCode::Library(4001)));
    assert!(started.elapsed() <= Duration::from_secs(4), "{:?}", started.elapsed());
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

// --- Origin ---

async fn post_raw(url: &str, content_type: &str, origin: &str, body: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", content_type)
        .header("origin", origin)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = body_client().request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn cross_origin_mutations_are_refused_and_the_admin_origin_is_not() {
    let up = upstream("api").await;
    let app = fusebox(&upstreams(&up.url())).await;
    let url = format!("http://{}/api/admin/circuit-breaker/api/force", app.admin_addr());
    let body = json!({ "state": "forced-open", "reason": "csrf" }).to_string();
    let (s, v) = post_raw(&url, "text/plain", "http://evil.example", &body).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let c = client();
    assert_eq!(support::circuit(&c, &app, "api").await["mode"], "auto", "circuit unchanged");
    let own = format!("http://{}", app.admin_addr());
    let (s, v) = post_raw(&url, "application/json", &own, &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(support::circuit(&c, &app, "api").await["mode"], "forced-open");
    app.shutdown().await;
}

#[tokio::test]
async fn a_websocket_handshake_from_a_foreign_origin_is_refused_unless_allowed() {
    let up = upstream("api").await;
    for (allowed, ok) in [("", false), ("admin: { listen: 127.0.0.1:0, allowedOrigins: [http://evil.example] }\n", true)] {
        let app = fusebox(&format!("{allowed}{}", upstreams(&up.url()))).await;
        let mut req = format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr()).into_client_request().unwrap();
        req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => assert!(ok, "a foreign origin got through"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!ok, "allowed origin refused: {}", resp.status());
                assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            }
            Err(e) => panic!("{e}"),
        }
        app.shutdown().await;
    }
}

// --- WebSocket abuse ---

#[tokio::test]
async fn a_ping_flood_that_never_reads_is_closed() {
    let up = upstream("api").await;
    let app = fusebox(&upstreams(&up.url())).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr())).await.unwrap();
    let payload = vec![7u8; 125];
    for _ in 0..1000 {
        if ws.feed(Message::Ping(payload.clone())).await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    // Now read: the socket must end within a few seconds.
    let ended = timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the flooding socket is still open");
    app.shutdown().await;
}

/// A raw WebSocket handshake; returns the stream after the 101.
async fn raw_ws(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/v2/ws/circuit-breaker HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads server frames until a close frame; its code (None: the socket
/// ended without one).
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    timeout(Duration::from_secs(5), async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.ok()?;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            s.read_exact(&mut payload).await.ok()?;
            if h[0] & 0x0f == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![first, 0x80 | u8::try_from(payload.len()).unwrap()];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_1002_or_1007() {
    let up = upstream("api").await;
    let app = fusebox(&upstreams(&up.url())).await;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("unmasked client frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("invalid UTF-8 text", masked(0x81, &[0xff, 0xfe, 0xfd]), 1007),
        ("RSV1 without an extension", masked(0xC1, b"hi"), 1002),
    ];
    for (what, frame, want) in cases {
        let mut s = raw_ws(app.admin_addr()).await;
        s.write_all(&frame).await.unwrap();
        assert_eq!(close_code(&mut s).await, Some(want), "{what}");
    }
    app.shutdown().await;
}

// --- log injection ---

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_audit_line_of_a_reset_escapes_newlines_and_escape_sequences() {
    let up = upstream("api").await;
    let dir = temp_dir("hard-log");
    let (data, admin) = (support::closed_port(), support::closed_port());
    let path = dir.join("fusebox.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:{data}\nadmin: {{ listen: 127.0.0.1:{admin} }}\nauth: none\n{}", upstreams(&up.url())),
    )
    .unwrap();
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the binary starts");
    let _child = Child(child);
    let c = client();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let started = Instant::now();
    loop {
        if let Ok(Ok(resp)) = timeout(Duration::from_secs(1), c.get(ready.parse().unwrap())).await {
            if resp.status() == StatusCode::OK {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "fusebox did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = "maintenance\nINFO fusebox::audit: admin reset by \"root\"\x1b[31m";
    let url = format!("http://127.0.0.1:{admin}/api/admin/circuit-breaker/api/reset");
    let (s, _, v) = call(&body_client(), Method::POST, &url, &[], json!({ "reason": reason }).to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("admin reset") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("maintenance")).collect();
    assert_eq!(lines.len(), 1, "the reason stays on one line:\n{text}");
    assert!(lines[0].contains("\\n"), "newline escaped: {}", lines[0]);
    assert!(!text.contains('\x1b'), "no raw escape sequence in the log:\n{text:?}");
    assert!(!text.lines().any(|l| l.starts_with("INFO fusebox::audit")), "forged line:\n{text}");
    let _ = std::fs::remove_dir_all(dir);
}

// --- store on a full disk ---

/// A tiny tmpfs mounted at a fresh directory; unmounted on drop. None when
/// this machine does not allow mounting (the test then says so and passes).
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(size: &str) -> Option<TinyFs> {
        let dir = temp_dir("hard-tmpfs");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(TinyFs(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }

    /// Writes zeros until the filesystem is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_store_on_a_full_disk_makes_mutations_answer_503_and_change_nothing() {
    let Some(fs) = TinyFs::mount("1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)");
        return;
    };
    let up = upstream("api").await;
    let db = fs.0.join("fusebox.db");
    let app =
        fusebox(&format!("store: {{ path: {} }}\nshutdown: {{ drainDelay: 0s, gracePeriod: 1s }}\n{}", db.display(), upstreams(&up.url())))
            .await;
    let c = client();
    let bc = body_client();
    let force = format!("http://{}/api/admin/circuit-breaker/api/force", app.admin_addr());
    // A healthy store: the mutation is committed and applied.
    let (s, _, v) = call(&bc, Method::POST, &force, &[], json!({ "state": "metrics-only", "reason": "before" }).to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    fs.fill();
    let (s, _, v) = call(&bc, Method::POST, &force, &[], json!({ "state": "forced-open", "reason": "disk full" }).to_string()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(support::circuit(&c, &app, "api").await["mode"], "metrics-only", "nothing changed");
    let reset = format!("http://{}/api/admin/circuit-breaker/api/reset", app.admin_addr());
    let (s, _, _) = call(&bc, Method::POST, &reset, &[], json!({ "reason": "x", "force": true }).to_string()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(support::circuit(&c, &app, "api").await["mode"], "metrics-only", "nothing changed");
    let audit = get_json(&c, &format!("http://{}/api/admin/audit", app.admin_addr())).await;
    assert_eq!(audit["entries"].as_array().map(Vec::len), Some(1), "only the committed mutation: {audit}");

    let d = get_json(&c, &format!("http://{}/health/detailed", app.admin_addr())).await;
    assert_eq!(d["store"]["status"], "degraded", "{d}");
    assert!(d["store"]["writeErrors"].as_u64().is_some_and(|n| n >= 2), "{d}");
    assert!(d["store"]["lastError"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
    assert_eq!(d["status"], "degraded", "{d}");
    let (_, _, metrics) = get(&c, &format!("http://{}/metrics", app.admin_addr())).await;
    let line = metrics.lines().find(|l| l.starts_with("fusebox_store_write_errors_total")).expect("the counter is exported");
    assert!(line.split_whitespace().last().and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n >= 2.0), "{line}");

    // Room again: mutations work and the store recovers.
    let _ = std::fs::remove_file(fs.0.join("filler"));
    let (s, _, v) = call(&bc, Method::POST, &force, &[], json!({ "state": "forced-open", "reason": "room again" }).to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let d = get_json(&c, &format!("http://{}/health/detailed", app.admin_addr())).await;
    assert_eq!(d["store"]["status"], "ok", "{d}");
    app.shutdown().await;
}

// --- reloads ---

/// A config of about `bytes` bytes: many upstreams, each with a route.
pub fn large_config(api: &str, bytes: usize) -> String {
    let mut text = full("");
    text.push_str("upstreams:\n");
    let mut routes = String::from("routes:\n");
    let mut i = 0;
    while text.len() + routes.len() < bytes {
        text.push_str(&format!(
            "  svc{i:05}:\n    endpoints: [{api}]\n    breaker: {{ jitter: 0, failureThreshold: 5, resetTimeout: 30s, monitoringWindow: 60s }}\n    timeouts: {{ connect: 1s, request: 10s }}\n"
        ));
        routes.push_str(&format!("  - {{ match: {{ pathPrefix: /svc{i:05}/ }}, upstream: svc{i:05} }}\n"));
        i += 1;
    }
    text.push_str(&format!("  api:\n    endpoints: [{api}]\n"));
    routes.push_str("  - { match: { pathPrefix: / }, upstream: api }\n");
    text + &routes
}

#[tokio::test]
async fn concurrent_reloads_of_a_large_config_never_stall_the_data_plane() {
    let up = upstream("api").await;
    let dir = temp_dir("hard-large");
    let path = dir.join("fusebox.yaml");
    let text = large_config(&up.url(), 1000 * 1024);
    assert!(text.len() <= 1024 * 1024, "{}", text.len());
    std::fs::write(&path, &text).unwrap();
    let app = fusebox_file(&path).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    assert_eq!(get(&c, &url).await.0, StatusCode::OK);
    let reload = format!("http://{}/api/admin/config/reload", app.admin_addr());
    let runs_before = app.state.reloader.runs();
    let mut reloads = Vec::new();
    for _ in 0..3 {
        let reload = reload.clone();
        reloads.push(tokio::spawn(async move { call(&body_client(), Method::POST, &reload, &[], Bytes::new()).await.0 }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let (s, _, _) = timeout(Duration::from_secs(5), get(&c, &url)).await.expect("request completes");
        assert_eq!(s, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1), "a request took {:?} during reloads", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in reloads {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    let runs = app.state.reloader.runs() - runs_before;
    assert!((1..=2).contains(&runs), "3 concurrent admin reloads ran {runs} times");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_burst_of_triggers_while_a_reload_runs_costs_at_most_one_more_run() {
    let reloader = Arc::new(fusebox::runtime::reload::Reloader::default());
    let slow = |_: &str| {
        std::thread::sleep(Duration::from_millis(300));
        Ok(1)
    };
    let first = reloader.request("first", slow);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let burst: Vec<_> = (0..10).map(|_| reloader.request("burst", slow)).collect();
    assert!(first.await.unwrap().is_ok());
    for b in burst {
        assert!(b.await.unwrap().is_ok());
    }
    assert_eq!(reloader.runs(), 2);
}

#[tokio::test]
async fn a_reload_that_panics_is_a_failure_and_the_next_one_runs() {
    let reloader = Arc::new(fusebox::runtime::reload::Reloader::default());
    let boom = reloader.request("boom", |_: &str| panic!("a bug in build"));
    let e = boom.await.expect("answered").expect_err("a panic is a failed reload");
    assert!(e.to_string().contains("a bug in build"), "{e}");
    // The driver survived the panic and has stopped: a new request runs
    // its own closure.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = reloader.request("next", |_: &str| Ok(7));
    assert_eq!(next.await.unwrap().unwrap(), 7);
}

// --- circuit state across a restart ---

#[tokio::test]
async fn an_open_circuit_stays_open_across_a_restart_and_the_upstream_sees_nothing() {
    let dir = temp_dir("hard-restart");
    let db = dir.join("fusebox.db");
    let broken = upstream("api").await;
    broken.set_status(500);
    let yaml =
        format!("store: {{ path: {} }}\nshutdown: {{ drainDelay: 0s, gracePeriod: 1s }}\n{}", db.display(), upstreams(&broken.url()));
    let c = client();

    let first = fusebox(&yaml).await;
    for _ in 0..2 {
        assert_eq!(get(&c, &format!("http://{}/x", first.data_addr())).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let before = support::circuit(&c, &first, "api").await;
    assert_eq!(before["state"], "open", "{before}");
    // A crash: the first instance never shuts down. Only the save made
    // right after the transition can carry the open phase over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = broken.hits();
    assert_eq!(hits, 2);

    let second = fusebox(&yaml).await;
    let after = support::circuit(&c, &second, "api").await;
    assert_eq!(after["state"], "open", "open across the restart: {after}");
    assert_eq!(after["totalIncidents"], before["totalIncidents"], "{after}");
    assert_eq!(after["recoveryAttempts"], before["recoveryAttempts"], "{after}");
    // SPEC 8: not only the state: counts, times and the original trip
    // reason come back ("restored" is a flag beside it, not the reason).
    assert_eq!(before["trip"]["rule"], "consecutive", "{before}");
    assert_eq!(after["trip"]["rule"], before["trip"]["rule"], "{after}");
    assert_eq!(after["trip"]["detail"], before["trip"]["detail"], "{after}");
    assert_eq!(after["trip"]["restored"], true, "{after}");
    assert_eq!(before["trip"]["restored"], false, "{before}");
    for key in ["total", "failed", "successful"] {
        assert_eq!(after[key], before[key], "{key}: {before} vs {after}");
    }
    assert_eq!(after["failed"], 2, "{after}");
    let at = |v: &Value| humantime::parse_rfc3339(v["lastFailure"].as_str().unwrap_or_else(|| panic!("lastFailure: {v}"))).unwrap();
    let moved = at(&after).duration_since(at(&before)).unwrap_or_else(|e| e.duration());
    assert!(moved < Duration::from_secs(1), "the last failure's time is kept: {before} vs {after}");
    let until = |v: &Value| humantime::parse_rfc3339(v["openUntil"].as_str().unwrap_or_else(|| panic!("openUntil: {v}"))).unwrap();
    let drift = until(&after).duration_since(until(&before)).unwrap_or_else(|e| e.duration());
    assert!(drift < Duration::from_secs(1), "the remaining wait is kept, not restarted: {before} vs {after}");
    for _ in 0..5 {
        assert_eq!(get(&c, &format!("http://{}/x", second.data_addr())).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(broken.hits(), hits, "the restarted instance sent nothing to the broken upstream");
    second.shutdown().await;

    // A clean restart keeps it open too (saved at shutdown).
    let third = fusebox(&yaml).await;
    assert_eq!(support::circuit(&c, &third, "api").await["state"], "open");
    assert_eq!(get(&c, &format!("http://{}/x", third.data_addr())).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(broken.hits(), hits);
    third.shutdown().await;
    drop(first);
    let _ = std::fs::remove_dir_all(dir);
}
