//! The state WebSocket (docs/websocket.md) from a real tokio-tungstenite
//! client over a real socket: handshake and both auth ways, the messages
//! and their `seq`, client messages, limits, live updates from real
//! failing traffic, slow-client isolation, heartbeat, shutdown, and the
//! `fusebox watch` client.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fusebox::App;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

fn ws_url(app: &App) -> String {
    format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr())
}

/// Connects with an optional subprotocol header and query string; returns
/// the socket and the handshake response headers.
async fn connect_with(app: &App, protocol: Option<&str>, query: Option<&str>) -> (Ws, http::HeaderMap) {
    let url = match query {
        Some(q) => format!("{}?{q}", ws_url(app)),
        None => ws_url(app),
    };
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, resp) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .unwrap_or_else(|e| panic!("handshake: {e:?}"));
    (ws, resp.headers().clone())
}

async fn connect(app: &App) -> Ws {
    connect_with(app, None, None).await.0
}

/// The next JSON message (Ping/Pong frames skipped); panics on close.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = timeout(WAIT, ws.next()).await.expect("a message in time").expect("socket open").expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

/// The next message of `kind`, skipping others (periodic snapshots...).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

/// Reads until the server's Close frame; returns it and the JSON messages
/// seen before it.
async fn until_close(ws: &mut Ws) -> (Option<CloseFrame<'static>>, Vec<Value>) {
    let mut seen = Vec::new();
    loop {
        match timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => return (f, seen),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before the close frame: {e}"),
            None => panic!("socket ended without a close frame"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

/// Drives `n` requests through the data port.
async fn traffic(app: &App, n: usize) {
    let c = client();
    for _ in 0..n {
        get(&c, &format!("http://{}/x", app.data_addr())).await;
    }
}

fn assert_entry_shape(e: &Value) {
    assert!(e["service"].is_string(), "{e}");
    assert!(["healthy", "degraded", "failed", "unknown"].contains(&e["status"].as_str().unwrap()), "{e}");
    let c = &e["circuit"];
    assert!(c["state"].is_string() && c["failureCount"].is_u64() && c["recoveryAttempts"].is_u64(), "{e}");
    assert!(c["lastFailure"].is_null() || c["lastFailure"].is_string(), "{e}");
    let o = &e["operations"];
    assert!(o["total"].is_u64() && o["successful"].is_u64() && o["failed"].is_u64(), "{e}");
}

// === auth helpers ===

static SECRET_FILES: AtomicUsize = AtomicUsize::new(0);
const SECRET: &[u8] = b"ws-stream-test-secret-of-enough-length";

/// A JWT config (HS256 secret in a temp file) in front of `upstream`.
fn jwt_config(upstream: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("fusebox-ws-secret-{}-{}", std::process::id(), SECRET_FILES.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, SECRET).unwrap();
    format!("auth: {{ jwt: {{ hs256SecretFile: {} }} }}\n{}", path.display(), one_upstream(upstream, "failureThreshold: 3"))
}

fn token(sub: &str, role: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "role": role, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

// === tests ===

#[tokio::test]
async fn connect_sends_status_then_snapshot_and_seq_increases() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;

    let status = next_json(&mut ws).await;
    assert_eq!(status["type"], "connection:status");
    assert_eq!(status["status"], "connected");
    assert!(status["timestamp"].is_string());
    assert_eq!(status["seq"], 1);

    let state = next_json(&mut ws).await;
    assert_eq!(state["type"], "services:state", "{state}");
    assert_eq!(state["seq"], 2);
    assert!(state["timestamp"].is_string());
    let services = state["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    assert_entry_shape(&services[0]);
    assert_eq!(services[0]["service"], "api");
    assert_eq!(services[0]["circuit"]["state"], "closed");

    // ping/pong, the timestamp echoed as sent (number or string).
    send(&mut ws, json!({ "type": "ping", "timestamp": 1_700_000_000_123u64 })).await;
    let pong = next_of(&mut ws, "pong").await;
    assert_eq!(pong["timestamp"], 1_700_000_000_123u64);
    assert!(pong["serverTime"].as_u64().unwrap() > 1_700_000_000_000);
    send(&mut ws, json!({ "type": "ping", "timestamp": "2026-01-01T00:00:00Z" })).await;
    let pong2 = next_of(&mut ws, "pong").await;
    assert_eq!(pong2["timestamp"], "2026-01-01T00:00:00Z");

    // subscribe:services answers a service:update carrying every service
    // (the integration guide's client replaces its list with `services`).
    send(&mut ws, json!({ "type": "subscribe:services" })).await;
    let snap = next_of(&mut ws, "service:update").await;
    assert_eq!(snap["services"][0]["service"], "api");
    assert!(snap.get("service").is_none() && snap.get("data").is_none(), "{snap}");

    let seqs: Vec<u64> = [&status, &state, &pong, &pong2, &snap].iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "seq must increase: {seqs:?}");
}

#[tokio::test]
async fn health_check_probes_the_real_upstream() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;

    let before = up.hits();
    send(&mut ws, json!({ "type": "service:health_check", "service": "api" })).await;
    let r = next_of(&mut ws, "service:health_check").await;
    assert_eq!(r["service"], "api");
    assert_eq!(r["healthy"], true, "{r}");
    assert!(r["latencyMs"].as_f64().unwrap() >= 0.0);
    assert!(r["timestamp"].is_string());
    assert_eq!(up.hits(), before + 1, "the probe reached the upstream");

    up.set_status(500);
    send(&mut ws, json!({ "type": "service:health_check", "service": "api" })).await;
    let r = next_of(&mut ws, "service:health_check").await;
    assert_eq!(r["healthy"], false, "{r}");

    send(&mut ws, json!({ "type": "service:health_check", "service": "nope" })).await;
    let e = next_of(&mut ws, "error").await;
    assert_eq!(e["code"], 4004);
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_4004_and_the_connection_stays() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;

    for bad in [
        Message::Text("not json".into()),
        Message::Text("[1,2]".into()),
        Message::Text(r#"{"type":"nope"}"#.into()),
        Message::Text("{}".into()),
        Message::Binary(vec![1, 2, 3]),
    ] {
        ws.send(bad).await.unwrap();
        let e = next_of(&mut ws, "error").await;
        assert_eq!(e["code"], 4004, "{e}");
        assert!(e["message"].is_string() && e["timestamp"].is_string(), "{e}");
    }
    send(&mut ws, json!({ "type": "ping", "timestamp": 1 })).await;
    assert_eq!(next_of(&mut ws, "pong").await["timestamp"], 1);
}

#[tokio::test]
async fn jwt_in_subprotocol_is_echoed_and_query_token_works() {
    let up = upstream("api").await;
    let app = fusebox(&jwt_config(&up.url())).await;
    let admin = token("alice", "admin");

    // Browser form: new WebSocket(url, token).
    let (mut ws, headers) = connect_with(&app, Some(&admin), None).await;
    assert_eq!(headers.get("sec-websocket-protocol").unwrap(), admin.as_str());
    assert_eq!(next_json(&mut ws).await["type"], "connection:status");

    // Several offered: the one that verifies is echoed. (No space after the
    // comma: tungstenite's client compares the echo untrimmed; the server
    // trims, as browsers send ", ".)
    let (mut ws, headers) = connect_with(&app, Some(&format!("fusebox.v1,{admin}")), None).await;
    assert_eq!(headers.get("sec-websocket-protocol").unwrap(), admin.as_str());
    assert_eq!(next_json(&mut ws).await["type"], "connection:status");

    // ?token=
    let (mut ws, headers) = connect_with(&app, None, Some(&format!("token={admin}"))).await;
    assert!(headers.get("sec-websocket-protocol").is_none());
    assert_eq!(next_json(&mut ws).await["type"], "connection:status");
    next_of(&mut ws, "services:state").await;
    send(&mut ws, json!({ "type": "service:health_check", "service": "api" })).await;
    assert_eq!(next_of(&mut ws, "service:health_check").await["healthy"], true);

    // A valid token without the admin role reads, but may not probe.
    let (mut ws, _) = connect_with(&app, Some(&token("bob", "viewer")), None).await;
    assert_eq!(next_json(&mut ws).await["type"], "connection:status");
    next_of(&mut ws, "services:state").await;
    send(&mut ws, json!({ "type": "service:health_check", "service": "api" })).await;
    assert_eq!(next_of(&mut ws, "error").await["code"], 4003);
    send(&mut ws, json!({ "type": "subscribe:services" })).await;
    next_of(&mut ws, "service:update").await;
}

#[tokio::test]
async fn bad_or_missing_token_gets_4001_then_close_4001() {
    let up = upstream("api").await;
    let app = fusebox(&jwt_config(&up.url())).await;
    let forged = {
        let t = token("mallory", "admin");
        format!("{}x", &t[..t.len() - 1])
    };
    for (protocol, query) in [(Some(forged.as_str()), None), (None, Some("token=garbage")), (None, None)] {
        let (mut ws, headers) = connect_with(&app, protocol, query).await;
        if let Some(p) = protocol {
            // Echoed even when refused, so a browser reads the reason.
            assert_eq!(headers.get("sec-websocket-protocol").unwrap(), p);
        }
        let (frame, seen) = until_close(&mut ws).await;
        assert_eq!(seen.len(), 1, "only the error before the close: {seen:?}");
        assert_eq!(seen[0]["type"], "error");
        assert_eq!(seen[0]["code"], 4001);
        assert!(seen[0]["message"].is_string() && seen[0]["timestamp"].is_string());
        assert_eq!(u16::from(frame.expect("a close frame").code), 4001);
    }
}

#[tokio::test]
async fn rate_limit_answers_4029_then_closes() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;

    for i in 0..60 {
        send(&mut ws, json!({ "type": "ping", "timestamp": i })).await;
    }
    send(&mut ws, json!({ "type": "ping", "timestamp": 60 })).await;
    let mut pongs = 0;
    loop {
        let v = next_json(&mut ws).await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(v["code"], 4029, "{v}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(pongs, 60);
    // Still open while under twice the limit...
    for i in 61..120 {
        send(&mut ws, json!({ "type": "ping", "timestamp": i })).await;
    }
    // ...closed past it.
    send(&mut ws, json!({ "type": "ping", "timestamp": 120 })).await;
    let (frame, seen) = until_close(&mut ws).await;
    assert!(seen.iter().all(|v| v["type"] != "pong"), "no pong past the limit");
    assert!(seen.iter().filter(|v| v["code"] == 4029).count() >= 59);
    assert_eq!(u16::from(frame.expect("close frame").code), 4029);
}

#[tokio::test]
async fn a_17_kib_message_closes_with_1009() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;
    let big = format!(r#"{{"type":"ping","timestamp":"{}"}}"#, "x".repeat(17 * 1024));
    ws.send(Message::Text(big)).await.unwrap();
    let (frame, _) = until_close(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1009);
}

#[tokio::test]
async fn a_trip_from_real_traffic_arrives_within_200ms_with_its_reason() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3, resetTimeout: 60s")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;

    up.set_status(500);
    traffic(&app, 3).await;
    let tripped = Instant::now();
    let update = next_of(&mut ws, "service:update").await;
    let latency = tripped.elapsed();
    assert!(latency < Duration::from_millis(200), "update took {latency:?}");

    assert_eq!(update["service"], "api");
    assert!(update["timestamp"].is_string() && update["seq"].is_u64());
    let t = &update["data"]["transition"];
    assert_eq!(t["from"], "closed", "{update}");
    assert_eq!(t["to"], "open");
    assert_eq!(t["rule"], "consecutive");
    assert!(t["reason"].as_str().unwrap().contains("3 consecutive failures"), "{t}");
    assert!(t["detail"].as_str().unwrap().contains("3 consecutive failures"), "{t}");
    assert_eq!(update["data"]["status"], "failed");
    assert_eq!(update["data"]["circuit"]["state"], "open");
    assert_eq!(update["data"]["operations"]["failed"], 3);
    // All three seeds' shapes: data{...}, services[<every entry>] and the
    // architecture seed's flat fields.
    let services = update["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(update["status"], "failed");
    assert_eq!(update["circuit_breaker"]["isOpen"], true, "{update}");
    assert_eq!(update["circuit_breaker"]["failures"], 3, "{update}");
    assert_eq!(update["operations"]["failed"], 3);
    assert!(update["performance"]["averageOperationTimeMs"].is_number(), "{update}");
    assert_entry_shape(&services[0]);
    assert_eq!(services[0]["circuit"], update["data"]["circuit"]);
    assert!(services[0]["circuit"]["retryInMs"].as_u64().unwrap() > 50_000);
}

#[tokio::test]
async fn bursts_are_batched_per_service_keeping_the_last_transition() {
    use fusebox::breaker::Mode;
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;

    let circuit = app.state.store.current().upstreams["api"].circuit.clone();
    let now = fusebox::clock::now();
    circuit.force(Mode::ForcedOpen, None, "test 1", now);
    circuit.force(Mode::ForcedClosed, None, "test 2", now);
    circuit.force(Mode::MetricsOnly, None, "test 3", now);

    let first = next_of(&mut ws, "service:update").await;
    let at_first = Instant::now();
    assert_eq!(first["data"]["transition"]["to"], "forced-open", "{first}");
    let second = next_of(&mut ws, "service:update").await;
    let gap = at_first.elapsed();
    assert!(gap >= Duration::from_millis(60), "at most one update per service per 100 ms (gap {gap:?})");
    assert_eq!(second["data"]["transition"]["to"], "metrics-only", "the last transition is kept: {second}");
    let all: Vec<&str> = second["data"]["transitions"].as_array().unwrap().iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert_eq!(all, ["forced-closed", "metrics-only"]);
    assert_eq!(second["data"]["circuit"]["state"], "metrics-only");
}

#[tokio::test]
async fn a_stalled_client_does_not_delay_another() {
    use std::fmt::Write as _;
    // Many upstreams make every snapshot large, so the stalled socket fills.
    let up = upstream("api").await;
    let mut yaml = String::from("upstreams:\n");
    for i in 0..100 {
        let _ = writeln!(yaml, "  filler-{i:03}:\n    endpoints: [{}]", up.url());
    }
    let _ = write!(
        yaml,
        "  api:\n    endpoints: [{}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    );
    let app = fusebox(&yaml).await;

    // The stalled client: a tiny receive buffer, asks for 100 snapshots and
    // never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.admin_addr()).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(ws_url(&app), MaybeTlsStream::Plain(stream)).await.unwrap();
    for _ in 0..100 {
        send(&mut stalled, json!({ "type": "subscribe:services" })).await;
    }

    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;
    // Give the server time to choke on the stalled socket.
    let c = client();
    let admin = format!("http://{}/health/websocket", app.admin_addr());
    let deadline = Instant::now() + WAIT;
    while get_json(&c, &admin).await["drops"].as_u64().unwrap() == 0 {
        assert!(Instant::now() < deadline, "the stalled client never overflowed its queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    up.set_status(500);
    traffic(&app, 3).await;
    let tripped = Instant::now();
    let update = next_of(&mut ws, "service:update").await;
    let latency = tripped.elapsed();
    assert_eq!(update["data"]["transition"]["to"], "open");
    assert!(latency < Duration::from_millis(200), "the healthy client waited {latency:?}");

    // The proxy is not slowed either: a request is answered at once.
    let started = Instant::now();
    let (status, _, _) = get(&c, &format!("http://{}/x", app.data_addr())).await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_millis(200));
    let health = get_json(&c, &admin).await;
    assert_eq!(health["clients"], 2, "{health}");
    drop(stalled);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_three_heartbeats() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;

    // Two heartbeats of silence: still connected.
    advance(Duration::from_secs(11)).await;
    send(&mut ws, json!({ "type": "ping", "timestamp": 1 })).await;
    next_of(&mut ws, "pong").await;

    // Three: dropped (the client neither reads nor answers the Pings). The
    // silence check runs on the 5 s heartbeat tick, so go past the first
    // tick that sees 15 s of silence instead of relying on real time.
    advance(Duration::from_secs(21)).await;
    let (frame, _) = until_close(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1001);
}

#[tokio::test]
async fn health_websocket_reports_clients_messages_and_drops() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let c = client();
    let url = format!("http://{}/health/websocket", app.admin_addr());
    let v = get_json(&c, &url).await;
    assert_eq!(v["clients"], 0, "{v}");
    assert_eq!(v["status"], "ok");

    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;
    let v = get_json(&c, &url).await;
    assert_eq!(v["clients"], 1, "{v}");
    assert!(v["messagesSent"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["drops"], 0);
    assert!(v["timestamp"].is_string());
    let metrics = get(&c, &format!("http://{}/metrics", app.admin_addr())).await.2;
    assert!(metrics.contains("fusebox_websocket_clients 1"), "{metrics}");

    ws.close(None).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while get_json(&c, &url).await["clients"] != 0 {
        assert!(Instant::now() < deadline, "client count never went down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let up = upstream("api").await;
    let app =
        fusebox(&format!("shutdown: {{ drainDelay: 0s, gracePeriod: 1s }}\n{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;
    let stopping = tokio::spawn(app.shutdown());
    let (frame, seen) = until_close(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1001);
    // Said first, in the protocol's words (SPEC 6).
    let last = seen.last().expect("a message before the close");
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("connection:status"), Some("disconnected")), "{seen:?}");
    assert!(last["reason"].as_str().is_some_and(|r| !r.is_empty()), "{last}");
    timeout(WAIT, stopping).await.expect("shutdown finishes").unwrap();
}

#[tokio::test]
async fn the_dashboard_page_is_served() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let (status, headers, body) = get(&client(), &format!("http://{}/dashboard", app.admin_addr())).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(body.contains("/api/v2/ws/circuit-breaker"));
    assert!(!body.contains("http://") && !body.contains("https://"), "no external resources");
}

/// A `Write` the test can read while `fusebox watch` writes to it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.text().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{}", self.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn watch_prints_a_line_per_change_when_piped_and_a_table_on_a_tty() {
    use fusebox::watch::{run_with, WatchOptions};
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let options = WatchOptions { url: ws_url(&app), token: None };

    let piped = Shared::default();
    let piped_task = tokio::spawn(run_with(options.clone(), piped.clone(), false));
    let tty = Shared::default();
    let tty_task = tokio::spawn(run_with(options, tty.clone(), true));
    piped.wait_for("api state closed status=unknown").await;
    tty.wait_for("api").await;

    up.set_status(500);
    traffic(&app, 3).await;
    piped.wait_for("api closed -> open (consecutive: 3 consecutive failures").await;
    tty.wait_for("\x1b[1;31mopen").await;
    assert!(tty.text().contains("\x1b[H\x1b[2J"), "redrawn in place");
    let lines = piped.text();
    assert!(!lines.contains('\x1b'), "no ANSI when piped: {lines}");
    piped_task.abort();
    tty_task.abort();
}

#[tokio::test]
async fn watch_gives_up_on_a_refused_token() {
    let up = upstream("api").await;
    let app = fusebox(&jwt_config(&up.url())).await;
    let options = fusebox::watch::WatchOptions { url: ws_url(&app), token: Some("not-a-jwt".to_string()) };
    let result = timeout(WAIT, fusebox::watch::run_with(options, Shared::default(), false)).await.expect("gives up at once");
    assert!(matches!(result, Err(fusebox::watch::WatchError::Auth(_))), "{result:?}");
}

/// The dashboard seed: "emit updates whenever service state changes" —
/// a status change without a transition (unknown -> healthy -> degraded)
/// is a `service:update` of its own, within a second.
#[tokio::test]
async fn status_changes_without_a_transition_are_updates() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 10")).await;
    let mut ws = connect(&app).await;
    next_of(&mut ws, "services:state").await;
    traffic(&app, 1).await;
    let healthy = timeout(Duration::from_secs(1), next_of(&mut ws, "service:update")).await.expect("an update within 1 s");
    assert_eq!(healthy["service"], "api");
    assert_eq!(healthy["data"]["status"], "healthy", "{healthy}");
    up.set_status(500);
    traffic(&app, 1).await;
    let degraded = timeout(Duration::from_secs(1), next_of(&mut ws, "service:update")).await.expect("an update within 1 s");
    assert_eq!(degraded["data"]["status"], "degraded", "{degraded}");
    assert_eq!(degraded["data"]["circuit"]["state"], "closed", "no transition: {degraded}");
    assert!(degraded["data"].get("transition").is_none(), "{degraded}");
    // The integration guide's client replaces its list with `services`.
    assert_eq!(degraded["services"].as_array().map(Vec::len), Some(1));
}

/// `text` without ANSI escape sequences (CSI: ESC [ ... final byte).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether `text` holds a time HH:MM:SS.
fn has_time(text: &str) -> bool {
    let c: Vec<char> = text.chars().collect();
    c.windows(8).any(|w| w.iter().enumerate().all(|(i, ch)| if i == 2 || i == 5 { *ch == ':' } else { ch.is_ascii_digit() }))
}

/// `fusebox watch` on a 60-column terminal (COLUMNS=60): long names, an
/// operation's circuit and a long transition reason, and still no line of
/// the table is wider than 60 characters; what is cut ends in "…".
#[tokio::test]
async fn watch_fits_a_60_column_terminal() {
    use fusebox::watch::{run_with, WatchOptions};
    // Read once when the table starts; the other watch tests are fine at
    // any width.
    std::env::set_var("COLUMNS", "60");
    let up = upstream("api").await;
    let yaml = format!(
        "upstreams:\n  payments-authorization-gateway-eu-west:\n    endpoints: [{}]\n    breaker: {{ jitter: 0, failureThreshold: 3 }}\n\
         routes:\n\
         \x20 - {{ match: {{ pathPrefix: /capture }}, upstream: payments-authorization-gateway-eu-west, operation: capture-and-settle }}\n\
         \x20 - {{ match: {{ pathPrefix: / }}, upstream: payments-authorization-gateway-eu-west }}\n",
        up.url()
    );
    let app = fusebox(&yaml).await;
    let tty = Shared::default();
    let task = tokio::spawn(run_with(WatchOptions { url: ws_url(&app), token: None }, tty.clone(), true));
    tty.wait_for("capture").await;
    up.set_status(500);
    traffic(&app, 3).await;
    tty.wait_for("\x1b[1;31mopen").await;
    // One more redraw after the transition is in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let text = strip_ansi(&tty.text());
    for line in text.lines() {
        let n = line.chars().count();
        assert!(n <= 60, "a {n}-character line on a 60-column terminal: {line:?}\n{text}");
    }
    let frame = text.rsplit("\x1b").next().unwrap_or(&text).to_string();
    assert!(frame.contains('…'), "long names are cut with an ellipsis:\n{frame}");
    assert!(frame.lines().any(|l| l.contains("open")), "the state column stays:\n{frame}");
    assert!(frame.lines().any(|l| l.starts_with("payments") && l.contains("open") && has_time(l)), "the transition's time stays:\n{frame}");
}

/// Each transition carries its time: piped, "... at HH:MM:SS UTC"; in the
/// table, the last-transition column starts with it.
#[tokio::test]
async fn watch_prints_each_transition_with_its_time() {
    use fusebox::watch::{run_with, WatchOptions};
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let options = WatchOptions { url: ws_url(&app), token: None };
    let piped = Shared::default();
    let piped_task = tokio::spawn(run_with(options.clone(), piped.clone(), false));
    let tty = Shared::default();
    let tty_task = tokio::spawn(run_with(options, tty.clone(), true));
    piped.wait_for("api state closed").await;
    up.set_status(500);
    traffic(&app, 3).await;
    piped.wait_for("api closed -> open").await;
    tty.wait_for("\x1b[1;31mopen").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    piped_task.abort();
    tty_task.abort();
    let lines = piped.text();
    let line = lines.lines().find(|l| l.contains("closed -> open")).expect("a transition line");
    let at = line.split(" at ").nth(1).unwrap_or_else(|| panic!("no time in {line:?}"));
    assert!(has_time(&at[..at.len().min(8)]) && at[8..].starts_with(" UTC"), "HH:MM:SS UTC after `at`: {line:?}");
    let table = strip_ansi(&tty.text());
    assert!(table.contains("times UTC"), "the table says which clock:\n{table}");
    let row = table.lines().rev().find(|l| l.starts_with("api ")).expect("the api row");
    assert!(has_time(row), "the table's transition has its time: {row:?}");
}
