//! Shared test harness: real hyper upstreams on 127.0.0.1:0 that count what
//! they see and answer as told, fusebox started on port 0 from YAML, and a
//! plain HTTP client.
#![allow(dead_code)]

pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fusebox::App;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A counting upstream whose answer can be changed while it runs.
#[derive(Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// Requests that reached this upstream.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections it accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests being handled right now, and the most seen at once.
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    /// Headers of the last request seen.
    pub last_headers: Arc<Mutex<Option<http::HeaderMap>>>,
    pub last_version: Arc<Mutex<Option<http::Version>>>,
}

impl TestUpstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.last_headers.lock().unwrap().as_ref().and_then(|h| h.get(name).map(|v| v.to_str().unwrap_or("").to_string()))
    }
}

/// Starts an upstream answering `200 "<name> <path>"` (HTTP/1.1 and h2c).
pub async fn upstream(name: &'static str) -> TestUpstream {
    upstream_on(name, 0).await
}

/// [`upstream`] on a given 127.0.0.1 port (0: any).
pub async fn upstream_on(name: &'static str, port: u16) -> TestUpstream {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let up = TestUpstream {
        addr: listener.local_addr().unwrap(),
        hits: Arc::default(),
        connections: Arc::default(),
        in_flight: Arc::default(),
        max_in_flight: Arc::default(),
        status: Arc::new(AtomicU16::new(200)),
        delay_ms: Arc::default(),
        last_headers: Arc::default(),
        last_version: Arc::default(),
    };
    let state = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(name, state.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

async fn answer(name: &'static str, s: TestUpstream, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    *s.last_headers.lock().unwrap() = Some(req.headers().clone());
    *s.last_version.lock().unwrap() = Some(req.version());
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap();
    let mut resp = Response::new(Full::new(Bytes::from(format!("{name} {}", req.uri().path()))));
    *resp.status_mut() = status;
    Ok(resp)
}

/// Starts fusebox from YAML; `listen` and `admin.listen` default to port 0.
pub async fn fusebox(yaml: &str) -> App {
    let mut text = String::new();
    if !yaml.contains("\nlisten:") && !yaml.starts_with("listen:") {
        text.push_str("listen: 127.0.0.1:0\n");
    }
    if !yaml.contains("admin:") {
        text.push_str("admin: { listen: 127.0.0.1:0 }\n");
    }
    if !yaml.contains("auth:") {
        text.push_str("auth: none\n");
    }
    text.push_str(yaml);
    let config = fusebox::config::parse(&text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
    App::start(config, None).await.expect("fusebox starts")
}

/// One upstream named `api` at `url`, routed at `/`, with extra breaker keys.
pub fn one_upstream(url: &str, breaker: &str) -> String {
    format!(
        "upstreams:\n  api:\n    endpoints: [{url}]\n    breaker: {{ jitter: 0, {breaker} }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET and collect: (status, headers, body).
pub async fn get(client: &TestClient, url: &str) -> (StatusCode, http::HeaderMap, String) {
    let resp = client.get(url.parse().unwrap()).await.expect("request reaches fusebox");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get_json(client: &TestClient, url: &str) -> serde_json::Value {
    let (_, _, body) = get(client, url).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

// --- added for the breaker/proxy integration tests ---

impl TestUpstream {
    /// Forgets the highest concurrency seen so far.
    pub fn reset_max_in_flight(&self) {
        self.max_in_flight.store(0, Ordering::SeqCst);
    }
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Sends a prepared request and collects: (status, headers, body).
pub async fn send(client: &TestClient, req: Request<Empty<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
    let resp = client.request(req).await.expect("request reaches fusebox");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Moves tokio's clock (the one fusebox's breaker reads) forward by `d`
/// without sleeping. Needs the current-thread runtime of `#[tokio::test]`.
pub async fn advance(d: Duration) {
    tokio::time::pause();
    tokio::time::advance(d).await;
    tokio::time::resume();
}

/// Every circuit from the admin `/health/circuit-breakers`.
pub async fn circuits(client: &TestClient, app: &App) -> Vec<serde_json::Value> {
    let v = get_json(client, &format!("http://{}/health/circuit-breakers", app.admin_addr())).await;
    v["circuitBreakers"].as_array().cloned().unwrap_or_else(|| panic!("no circuitBreakers array: {v}"))
}

/// One circuit (by upstream name) from `/health/circuit-breakers`.
pub async fn circuit(client: &TestClient, app: &App, name: &str) -> serde_json::Value {
    circuits(client, app).await.into_iter().find(|c| c["service"] == name).unwrap_or_else(|| panic!("no circuit named {name}"))
}

/// A 127.0.0.1 port where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// --- added for the admin API and metrics tests ---

pub type BodyClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A client that can send request bodies (PUT/POST with JSON).
pub fn body_client() -> BodyClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `method url` with extra headers and a body (empty: none) and
/// collects: (status, headers, body).
pub async fn call(
    client: &BodyClient,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, http::HeaderMap, String) {
    let body = body.into();
    let mut req = Request::builder().method(method).uri(url);
    if !body.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body)).unwrap()).await.expect("request reaches fusebox");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A fresh, empty directory for one test's files (config, secrets).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("fusebox-test-{tag}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts fusebox from a config file, so `POST /api/admin/config/reload`
/// (and the file watcher) re-read it. The file must set both listeners.
pub async fn fusebox_file(path: &std::path::Path) -> App {
    let config = fusebox::config::Config::load(path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    App::start(config, Some(path.to_path_buf())).await.expect("fusebox starts")
}

/// Polls `check` (every 20 ms) until it gives `Some`, and returns that; panics
/// with `what` if `limit` passes first. The one way tests wait for I/O
/// (never for breaker time: that is `advance`).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
