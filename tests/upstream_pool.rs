//! The upstream connection pool over real sockets: keep-alive reuse, bodies
//! that end without being polled (HEAD, 204), connections the upstream
//! closes between requests, a client that abandons a body mid-way, and idle
//! expiry on tokio's clock.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{advance, circuit, client, fusebox, get, one_upstream, send, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let up = upstream("a").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let c = client();
    for i in 0..20 {
        let (status, _, body) = get(&c, &format!("http://{}/n{i}", app.data_addr())).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, format!("a /n{i}").as_str()));
    }
    assert_eq!(up.hits(), 20);
    assert_eq!(up.connections(), 1, "every request after the first reused the pooled connection");
}

#[tokio::test]
async fn bodiless_responses_return_the_connection() {
    let up = upstream("a").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let c = client();
    let url = format!("http://{}/x", app.data_addr());
    let head = Request::builder().method(Method::HEAD).uri(&url).body(Empty::<Bytes>::new()).unwrap();
    let (status, _, body) = send(&c, head).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    up.set_status(204);
    let (status, _, _) = get(&c, &url).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    up.set_status(200);
    let (status, _, body) = get(&c, &url).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a /x"));
    assert_eq!(up.connections(), 1, "HEAD and 204 answers (bodies never polled) gave the connection back");
}

/// Reads one request head (up to the blank line); false if the peer left.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that says `keep-alive` but closes every connection right
/// after its answer: each pooled connection is dead by the next request,
/// sometimes before fusebox notices. Returns (address, connections accepted).
async fn closing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn connections_closed_by_the_upstream_are_not_failures() {
    let (addr, accepted) = closing_upstream().await;
    let app = fusebox(&one_upstream(&format!("http://{addr}"), "failureThreshold: 1")).await;
    let c = client();
    for _ in 0..50 {
        let (status, _, body) = get(&c, &format!("http://{}/", app.data_addr())).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["state"], "closed", "{cb}");
    assert_eq!(cb["window"]["failures"], 0, "{cb}");
    assert_eq!(accepted.load(Ordering::SeqCst), 50, "one fresh connection per request");
}

#[tokio::test]
async fn an_abandoned_body_does_not_leave_bytes_for_the_next_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/big" { Bytes::from(vec![b'x'; 4 << 20]) } else { Bytes::from_static(b"small") };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let app = fusebox(&one_upstream(&format!("http://{addr}"), "failureThreshold: 3")).await;
    let c = client();
    let resp = c.get(format!("http://{}/big", app.data_addr()).parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a first frame").expect("no error");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    for _ in 0..5 {
        let (status, _, text) = get(&c, &format!("http://{}/small", app.data_addr())).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "small"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the half-read connection was closed, the next one reused");
}

#[tokio::test]
async fn idle_connections_expire() {
    let up = upstream("a").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let url = format!("http://{}/", app.data_addr());
    // A new client connection each time: fusebox's own idle client
    // connections are cut by its header read timeout as the clock jumps.
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    // pool.idleTimeout: 4s by default.
    advance(Duration::from_secs(3)).await;
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    assert_eq!(up.connections(), 1, "not idle long enough to expire");
    advance(Duration::from_secs(5)).await;
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    assert_eq!(up.connections(), 2, "the expired connection was replaced");
}

#[tokio::test]
async fn a_connection_still_uploading_is_not_waited_for() {
    // The upstream answers every request head at once and never reads a
    // request body, keeping the connection open (a keep-alive answer to an
    // upload still in flight).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly").await;
                // Hold the socket open; read nothing more.
                std::future::pending::<()>().await;
            });
        }
    });
    // The default request timeout (30 s) is far longer than this test.
    let app = fusebox(&one_upstream(&format!("http://{addr}"), "failureThreshold: 3")).await;

    // A: an upload that never finishes, answered early and read to the end.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tx.send(Bytes::from_static(b"first chunk")).await.unwrap();
    let body = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
    }));
    let upload: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/upload", app.data_addr())).body(http_body_util::StreamBody::new(body)).unwrap();
    let resp = upload.request(req).await.expect("the early answer arrives");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "early");

    // B: gets a connection of its own instead of waiting for A's upload.
    let b = tokio::time::timeout(Duration::from_secs(10), get(&client(), &format!("http://{}/next", app.data_addr()))).await;
    let (status, _, body) = b.expect("B is not stuck behind A's unfinished upload");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "early"));
    drop(tx);
}

/// An upstream that answers every request on a connection with
/// `Keep-Alive: timeout=2` (as Node does with 5): returns its address and
/// how many connections it accepted.
async fn keep_alive_upstream(header: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{header}\r\n\r\nok");
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn the_upstreams_keep_alive_timeout_lowers_the_pool_idle_timeout() {
    let (addr, accepted) = keep_alive_upstream("keep-alive: timeout=2, max=100").await;
    let app = fusebox(&one_upstream(&format!("http://{addr}"), "failureThreshold: 3")).await;
    let url = format!("http://{}/", app.data_addr());
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    advance(Duration::from_millis(500)).await;
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused within the upstream's keep-alive timeout");
    // Idle 1.5 s: past timeout=2 less fusebox's 1 s margin, though well
    // within pool.idleTimeout (4 s): given up before the upstream closes it.
    advance(Duration::from_millis(1500)).await;
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection, not one the upstream is about to close");
}

#[tokio::test]
async fn pool_idle_timeout_is_configurable() {
    let (addr, accepted) = keep_alive_upstream("x-no-keep-alive-hint: 1").await;
    let app = fusebox(&format!(
        "defaults: {{ pool: {{ idleTimeout: 1s }} }}\n{}",
        one_upstream(&format!("http://{addr}"), "failureThreshold: 3")
    ))
    .await;
    let url = format!("http://{}/", app.data_addr());
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    advance(Duration::from_millis(1500)).await;
    assert_eq!(get(&client(), &url).await.0, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "idle past pool.idleTimeout: replaced");
}

#[tokio::test]
async fn a_body_request_lost_to_the_keep_alive_race_is_a_502_counted_for_no_circuit() {
    // Answers the first request with keep-alive, then closes each
    // connection as soon as the next request head arrives (its keep-alive
    // timeout and fusebox's reuse crossed).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = false;
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if answered {
                            return;
                        }
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize =
                            head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            buf.drain(..end + 4 + len);
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                            answered = true;
                            continue;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let app = fusebox(&one_upstream(&format!("http://{addr}"), "failureThreshold: 1")).await;
    let post = || {
        Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/orders", app.data_addr()))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"order")))
            .unwrap()
    };
    let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let first = c.request(post()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let _ = first.into_body().collect().await;
    let second = c.request(post()).await.unwrap();
    let status = second.status();
    let body = String::from_utf8_lossy(&second.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("keep-alive race"), "{body}");
    // failureThreshold: 1, and still closed: nobody's failure.
    let cb = circuit(&client(), &app, "api").await;
    assert_eq!(cb["state"], "closed", "{cb}");
    assert_eq!(cb["endpoints"][0]["consecutiveFailures"], 0, "{cb}");
}
