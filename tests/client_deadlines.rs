//! The data listener's client deadlines and limits over real sockets:
//! `client.headerTimeout` (silent connections, a partial h2 preface, a
//! partial HTTP/1.1 head), `client.idleTimeout` (HTTP/1.1 keep-alive closed,
//! h2c GOAWAY, a slow request in flight never cut), `client.maxConnections`
//! (the next connection waits in the backlog) and the write stall deadline
//! (a client that stops reading releases its bulkhead slot).

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{client, fusebox, get, one_upstream, upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const SHORT: &str = "client: { headerTimeout: 300ms, idleTimeout: 500ms }\n";

/// Reads until the peer closes (EOF or reset), at most `limit`; returns
/// what arrived and how long it took. Panics if still open.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}; got {:?}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a content-length body: (status, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad head {head}"));
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or_else(|| panic!("no content-length in {head}"));
            while got.len() < end + 4 + len {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-body");
                got.extend_from_slice(&buf[..n]);
            }
            return (status, String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string());
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

// --- client.headerTimeout ---

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let up = upstream("api").await;
    let app = fusebox(&format!("{SHORT}{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;
    let mut s = TcpStream::connect(app.data_addr()).await.unwrap();
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    assert_eq!(up.connections(), 0);
}

#[tokio::test]
async fn a_partial_h2_preface_is_closed_after_the_header_timeout() {
    let up = upstream("api").await;
    let app = fusebox(&format!("{SHORT}{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;
    let mut s = TcpStream::connect(app.data_addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
}

#[tokio::test]
async fn a_partial_h1_head_is_closed_after_the_header_timeout() {
    let up = upstream("api").await;
    let app = fusebox(&format!("{SHORT}{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;
    let mut s = TcpStream::connect(app.data_addr()).await.unwrap();
    s.write_all(b"GET /slow-loris HTTP/1.1\r\nHost: test\r\nX-A: 1\r\n").await.unwrap();
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    assert_eq!(up.hits(), 0);

    // After a first request, a later head that stops midway is cut at the
    // header timeout (from its first byte), before the idle timeout.
    let mut s = TcpStream::connect(app.data_addr()).await.unwrap();
    s.write_all(get_request("/one").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "api /one".to_string()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /two HTTP/1.1\r\n").await.unwrap();
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(480), "not the header timeout: {took:?}");
}

// --- client.idleTimeout ---

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_slow_request_is_not_cut() {
    let up = upstream("api").await;
    let app = fusebox(&format!("{SHORT}{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;

    let mut s = TcpStream::connect(app.data_addr()).await.unwrap();
    s.write_all(get_request("/a").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "api /a".to_string()));
    // Keep-alive: a second request on the same connection is served.
    s.write_all(get_request("/b").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s).await, (200, "api /b".to_string()));
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(took >= Duration::from_millis(450), "closed before the idle timeout: {took:?}");

    // A request in flight twice as long as the idle timeout is not idle.
    up.set_delay(Duration::from_secs(1));
    let mut s = TcpStream::connect(app.data_addr()).await.unwrap();
    let start = Instant::now();
    s.write_all(get_request("/slow").as_bytes()).await.unwrap();
    let resp = timeout(Duration::from_secs(5), read_response(&mut s)).await.expect("the slow response arrives");
    assert_eq!(resp, (200, "api /slow".to_string()));
    assert!(start.elapsed() >= Duration::from_secs(1));
}

/// The bytes a client connection received, recorded as they are read.
struct Recorder {
    inner: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.seen.lock().unwrap().extend_from_slice(&buf.filled()[before..]);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The types of the h2 frames in `bytes` (the server's side, after its
/// connection preface, which is a SETTINGS frame).
fn h2_frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16) | (usize::from(bytes[at + 1]) << 8) | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

#[tokio::test]
async fn an_idle_h2c_connection_gets_goaway_and_closes() {
    const GOAWAY: u8 = 0x7;
    let up = upstream("api").await;
    let app = fusebox(&format!("{SHORT}{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tcp = TcpStream::connect(app.data_addr()).await.unwrap();
    let io = Recorder { inner: tcp, seen: seen.clone() };
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    let driver = tokio::spawn(async move {
        let r = conn.await;
        (r, Instant::now())
    });
    let req = Request::get(format!("http://{}/h2", app.data_addr())).body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"api /h2");
    let idle_from = Instant::now();
    assert!(!h2_frame_types(&seen.lock().unwrap()).contains(&GOAWAY), "GOAWAY before going idle");

    let (result, closed_at) = timeout(Duration::from_secs(3), driver).await.expect("connection closed after the idle timeout").unwrap();
    assert!(result.is_ok(), "not a graceful close: {result:?}");
    let took = closed_at.saturating_duration_since(idle_from);
    assert!(took >= Duration::from_millis(450), "closed before the idle timeout: {took:?}");
    assert!(h2_frame_types(&seen.lock().unwrap()).contains(&GOAWAY), "no GOAWAY received");
}

// --- client.maxConnections ---

#[tokio::test]
async fn above_max_connections_a_new_connection_waits_for_a_slot_and_idle_keep_alive_ones_make_room() {
    let up = upstream("api").await;
    up.set_delay(Duration::from_millis(800));
    let app = fusebox(&format!("client: {{ maxConnections: 2 }}\n{}", one_upstream(&up.url(), "failureThreshold: 3"))).await;
    let mut first = TcpStream::connect(app.data_addr()).await.unwrap();
    let mut second = TcpStream::connect(app.data_addr()).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(get_request("/held").as_bytes()).await.unwrap();
    }
    // The third connects (kernel backlog) but is not served while both
    // slots have a request in flight.
    let mut third = TcpStream::connect(app.data_addr()).await.unwrap();
    third.write_all(get_request("/third").as_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(timeout(Duration::from_millis(500), third.peek(&mut byte)).await.is_err(), "served above maxConnections");
    assert_eq!(up.hits(), 2);
    // The admin listener is not limited.
    let (status, _, _) = get(&client(), &format!("http://{}/livez", app.admin_addr())).await;
    assert_eq!(status, StatusCode::OK);

    // Both finish and go idle: an idle keep-alive connection is closed to
    // make room, and the third is served.
    for s in [&mut first, &mut second] {
        assert_eq!(read_response(s).await.0, 200);
    }
    let resp = timeout(Duration::from_secs(3), read_response(&mut third)).await.expect("served once a slot freed");
    assert_eq!(resp, (200, "api /third".to_string()));
    let mut closed = 0;
    for s in [&mut first, &mut second] {
        if matches!(timeout(Duration::from_secs(1), s.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert!(closed >= 1, "an idle keep-alive connection made room");
}

// --- write stall ---

/// An upstream answering `/big` with 32 MiB and anything else with "ok";
/// counts the `/big` requests.
async fn big_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let big = Bytes::from(vec![b'x'; 32 << 20]);
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let big = big.clone();
            let hits = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path() == "/big" {
                        hits.fetch_add(1, Ordering::SeqCst);
                        big.clone()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_releases_its_bulkhead_slot() {
    let (url, big_hits) = big_upstream().await;
    let app = fusebox(&format!(
        "{SHORT}upstreams:\n  api:\n    endpoints: [{url}]\n    maxConcurrentRequests: 1\n    timeouts: {{ idle: 1s }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    ))
    .await;
    // Asks for 32 MiB and never reads a byte.
    let mut stuck = TcpStream::connect(app.data_addr()).await.unwrap();
    stuck.write_all(get_request("/big").as_bytes()).await.unwrap();
    let start = Instant::now();
    while big_hits.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(3), "/big never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let c = client();
    let url = format!("http://{}/small", app.data_addr());
    let start = Instant::now();
    let mut overloaded = 0;
    loop {
        let (status, _, body) = get(&c, &url).await;
        if status == StatusCode::OK {
            assert_eq!(body, "ok");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        overloaded += 1;
        assert!(start.elapsed() < Duration::from_secs(5), "the stuck client still holds the slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(overloaded > 0, "the big response never held the slot");
    // The stuck client's connection was closed.
    let mut buf = vec![0u8; 1 << 20];
    let closed = timeout(Duration::from_secs(3), async {
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection is still open");
    drop(app);
}

// --- reload ---

#[tokio::test]
async fn a_reload_applies_client_deadlines_to_new_connections() {
    let up = upstream("api").await;
    let dir = support::temp_dir("client-reload");
    let path = dir.join("fusebox.yaml");
    let yaml = |client: &str| {
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nclient: {client}\n{}",
            one_upstream(&up.url(), "failureThreshold: 3")
        )
    };
    std::fs::write(&path, yaml("{ headerTimeout: 5s }")).unwrap();
    let app = support::fusebox_file(&path).await;
    let mut old = TcpStream::connect(app.data_addr()).await.unwrap();
    // Accepted under the first config.
    old.write_all(get_request("/old").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut old).await.0, 200);

    std::fs::write(&path, yaml("{ headerTimeout: 300ms, idleTimeout: 500ms }")).unwrap();
    app.state.reload("test").unwrap();
    let mut new = TcpStream::connect(app.data_addr()).await.unwrap();
    let (_, took) = read_until_closed(&mut new, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    // The connection from before the reload keeps its 60 s idle timeout.
    let mut byte = [0u8; 1];
    assert!(timeout(Duration::from_millis(200), old.peek(&mut byte)).await.is_err(), "the old connection was closed");
    old.write_all(get_request("/old-again").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut old).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
