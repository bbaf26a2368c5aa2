//! The data path over real sockets: routing, forwarded headers, load
//! balancing, streaming both ways, h2c, WebSocket upgrades, bad client input
//! and pass-through of upstream errors.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{circuit, circuits, client, fusebox, get, one_upstream, send, upstream, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn get_req(url: &str) -> http::request::Builder {
    Request::get(url)
}

/// Asserts no circuit has seen a call, a failure, a rejection or an
/// in-flight request.
async fn assert_breakers_untouched(c: &TestClient, app: &fusebox::App) {
    for cb in circuits(c, app).await {
        assert_eq!(cb["failureCount"], 0, "{cb}");
        assert_eq!(cb["window"]["calls"], 0, "{cb}");
        assert_eq!(cb["window"]["failures"], 0, "{cb}");
        assert_eq!(cb["rejected"], 0, "{cb}");
        assert_eq!(cb["inFlight"], 0, "{cb}");
        assert_eq!(cb["state"], "closed", "{cb}");
        assert_eq!(cb["status"], "unknown", "no call was recorded: {cb}");
    }
}

// --- routing ---

#[tokio::test]
async fn routes_by_path_prefix_and_host_first_match_wins() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let app = fusebox(&format!(
        "upstreams:
  a: {{ endpoints: [{a}] }}
  b: {{ endpoints: [{b}] }}
routes:
  - {{ match: {{ pathPrefix: /a/ }}, upstream: a }}
  - {{ match: {{ host: b.internal }}, upstream: b }}
  - {{ match: {{ host: b.internal, pathPrefix: /a/ }}, upstream: b }}
  - {{ match: {{ pathPrefix: /both/ }}, upstream: a }}
",
        a = a.url(),
        b = b.url()
    ))
    .await;
    let c = client();
    let base = format!("http://{}", app.data_addr());

    // No route: a 404 from fusebox that touches no breaker.
    for path in ["/nothing", "/", "/b/1", "/A/upper-case"] {
        let (s, h, body) = get(&c, &format!("{base}{path}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(h.contains_key("x-request-id"));
        let v = json(&body);
        assert_eq!(v["error"]["code"], "no_route", "{v}");
    }
    let req = get_req(&format!("{base}/x")).header("host", "c.internal").body(Empty::new()).unwrap();
    let (s, _, body) = send(&c, req).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(json(&body)["error"]["code"], "no_route");
    assert_eq!(a.hits() + b.hits(), 0);
    assert_breakers_untouched(&c, &app).await;

    let cases = [
        ("/a/1", None, "a /a/1"),
        ("/b/1", Some("b.internal"), "b /b/1"),
        ("/b/2", Some("B.Internal:8080"), "b /b/2"),
        // Both route 1 and route 3 match: the first wins.
        ("/a/2", Some("b.internal"), "a /a/2"),
        // Route 2 (host) comes before route 4 (path).
        ("/both/x", Some("b.internal"), "b /both/x"),
        ("/both/y", None, "a /both/y"),
    ];
    for (path, host, want) in cases {
        let mut req = get_req(&format!("{base}{path}"));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let (s, _, body) = send(&c, req.body(Empty::new()).unwrap()).await;
        assert_eq!(s, StatusCode::OK, "{path} {host:?}");
        assert_eq!(body, want, "{path} {host:?}");
    }
    assert_eq!(a.hits(), 3);
    assert_eq!(b.hits(), 3);
}

// --- headers ---

#[tokio::test]
async fn sets_forwarded_headers_and_request_id_and_strips_hop_by_hop() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3")).await;
    let c = client();
    let data = app.data_addr();

    // Generated request id.
    let (s, h, _) = get(&c, &format!("http://{data}/h")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(up.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(up.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(up.header("x-forwarded-host"), Some(data.to_string()));
    let id = up.header("x-request-id").expect("upstream sees x-request-id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.chars().all(|ch| ch.is_ascii_hexdigit()), "{id}");
    assert_eq!(h.get("x-request-id").unwrap().to_str().unwrap(), id, "the response carries the same id");

    // A second generated id differs.
    let (_, h2, _) = get(&c, &format!("http://{data}/h")).await;
    assert_ne!(h2.get("x-request-id").unwrap().to_str().unwrap(), id);

    // A client's id is kept; an existing x-forwarded-for is appended to.
    let req = get_req(&format!("http://{data}/h"))
        .header("host", "shop.example:8443")
        .header("x-request-id", "client-id-123")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Empty::new())
        .unwrap();
    let (s, h, _) = send(&c, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(up.header("x-request-id").as_deref(), Some("client-id-123"));
    assert_eq!(h.get("x-request-id").unwrap(), "client-id-123");
    // One list, whether sent as one field line or several (RFC 9110 5.3).
    let xff: Vec<String> = up
        .last_headers
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(xff.join(", "), "203.0.113.9, 127.0.0.1");
    assert_eq!(up.header("x-forwarded-host").as_deref(), Some("shop.example:8443"));
    assert_eq!(up.header("host").as_deref(), Some("shop.example:8443"), "Host is passed through");

    // Hop-by-hop headers stay on this hop.
    let req = get_req(&format!("http://{data}/h"))
        .header("connection", "keep-alive, x-custom-hop")
        .header("keep-alive", "timeout=5")
        .header("x-custom-hop", "1")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body(Empty::new())
        .unwrap();
    let (s, _, _) = send(&c, req).await;
    assert_eq!(s, StatusCode::OK);
    let seen = up.last_headers.lock().unwrap().clone().unwrap();
    for name in ["connection", "keep-alive", "x-custom-hop", "proxy-authorization", "te"] {
        assert!(!seen.contains_key(name), "{name} was forwarded: {seen:?}");
    }
    assert_eq!(seen.get("x-end-to-end").unwrap(), "kept");
}

// --- load balancing ---

#[tokio::test]
async fn round_robin_splits_evenly() {
    let e1 = upstream("e1").await;
    let e2 = upstream("e2").await;
    let app = fusebox(&format!(
        "upstreams:\n  api:\n    endpoints: [{}, {}]\n    loadBalancing: round-robin\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        e1.url(),
        e2.url()
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        let (s, _, _) = get(&c, &format!("http://{}/rr", app.data_addr())).await;
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!((e1.hits(), e2.hits()), (5, 5));
}

#[tokio::test]
async fn least_request_prefers_the_fast_endpoint() {
    let slow = upstream("slow").await;
    slow.set_delay(Duration::from_millis(300));
    let fast = upstream("fast").await;
    let app = fusebox(&format!(
        "upstreams:\n  api:\n    endpoints: [{}, {}]\n    loadBalancing: least-request\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        slow.url(),
        fast.url()
    ))
    .await;
    let c = client();
    let url = format!("http://{}/lr", app.data_addr());
    // 10 overlapping requests, issued 20ms apart (all within the slow
    // endpoint's 300ms), so the balancer sees the slow one busy.
    let reqs = (0..10u64).map(|i| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            get(&c, &url).await.0
        }
    });
    let statuses = join_all(reqs).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(slow.hits() + fast.hits(), 10);
    assert!(fast.hits() > slow.hits(), "fast {} vs slow {}", fast.hits(), slow.hits());
    assert!(fast.hits() >= 7, "fast {} vs slow {}", fast.hits(), slow.hits());
}

// --- streaming ---

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 100 * 1024 * 1024;

/// A body fed from a channel, frame by frame.
struct ChanBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type Signal = Arc<Mutex<Option<oneshot::Sender<()>>>>;

fn fire(s: &Signal) {
    if let Some(tx) = s.lock().unwrap().take() {
        let _ = tx.send(());
    }
}

/// `POST /upload` counts the request body frame by frame (reporting the first
/// bytes on `first_in`) and answers the count; `GET /download` streams TOTAL
/// bytes, holding all but the first chunk until `go_on` fires.
async fn streaming_upstream(first_in: Signal, go_on: Arc<Mutex<Option<oneshot::Receiver<()>>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (first_in, go_on) = (first_in.clone(), go_on.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (first_in, go_on) = (first_in.clone(), go_on.clone());
                    async move {
                        let resp: Response<BoxBody<Bytes, Infallible>> = if req.uri().path() == "/upload" {
                            let mut body = req.into_body();
                            let mut n = 0usize;
                            while let Some(frame) = body.frame().await {
                                let Ok(frame) = frame else { break };
                                if let Some(d) = frame.data_ref() {
                                    n += d.len();
                                    if n > 0 {
                                        fire(&first_in);
                                    }
                                }
                            }
                            Response::new(Full::new(Bytes::from(n.to_string())).boxed())
                        } else {
                            let (tx, rx) = mpsc::channel(4);
                            let gate = go_on.lock().unwrap().take();
                            tokio::spawn(async move {
                                let chunk = Bytes::from(vec![b'd'; CHUNK]);
                                if tx.send(chunk.clone()).await.is_err() {
                                    return;
                                }
                                if let Some(gate) = gate {
                                    let _ = gate.await;
                                }
                                for _ in 1..TOTAL / CHUNK {
                                    if tx.send(chunk.clone()).await.is_err() {
                                        return;
                                    }
                                }
                            });
                            Response::new(ChanBody { rx }.boxed())
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn streams_100mb_both_ways_without_buffering() {
    let (first_in_tx, first_in_rx) = oneshot::channel();
    let (go_on_tx, go_on_rx) = oneshot::channel();
    let url = streaming_upstream(Arc::new(Mutex::new(Some(first_in_tx))), Arc::new(Mutex::new(Some(go_on_rx)))).await;
    let app = fusebox(&one_upstream(&url, "failureThreshold: 3")).await;
    let started = tokio::time::Instant::now();

    // Upload: the upstream must see the first chunk before the rest exists.
    let upload_client: Client<_, ChanBody> = Client::builder(TokioExecutor::new()).build_http();
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let req = Request::post(format!("http://{}/upload", app.data_addr())).body(ChanBody { rx }).unwrap();
    let call = tokio::spawn(async move {
        let resp = upload_client.request(req).await.expect("upload reaches fusebox");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    tx.send(chunk.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), first_in_rx)
        .await
        .expect("the upstream saw the first chunk while the client was still sending (streaming, not buffering)")
        .unwrap();
    for _ in 1..TOTAL / CHUNK {
        tx.send(chunk.clone()).await.unwrap();
    }
    drop(tx);
    let (status, body) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.parse::<usize>().unwrap(), TOTAL, "upstream counted every byte");

    // Download: the client must see the first chunk before the upstream
    // produces the rest.
    let c = client();
    let resp = tokio::time::timeout(Duration::from_secs(5), c.get(format!("http://{}/download", app.data_addr()).parse().unwrap()))
        .await
        .expect("response headers arrive before the upstream finished its body (streaming, not buffering)")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        if !d.is_empty() {
                            return d.len();
                        }
                    }
                }
                other => panic!("body ended early: {other:?}"),
            }
        }
    })
    .await
    .expect("the client got the first chunk while the upstream was still producing (streaming, not buffering)");
    go_on_tx.send(()).unwrap();
    let mut n = first;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.expect("body frame").data_ref() {
            n += d.len();
        }
    }
    assert_eq!(n, TOTAL, "client received every byte");
    eprintln!("200 MB streamed through fusebox in {:?}", started.elapsed());
}

// --- HTTP/2 ---

#[tokio::test]
async fn h2c_prior_knowledge_and_http2_upstreams() {
    let h1 = upstream("h1").await;
    let h2 = upstream("h2").await;
    let app = fusebox(&format!(
        "upstreams:
  one: {{ endpoints: [{}] }}
  two: {{ endpoints: [{}], protocol: http2 }}
routes:
  - {{ match: {{ pathPrefix: /two/ }}, upstream: two }}
  - {{ match: {{ pathPrefix: / }}, upstream: one }}
",
        h1.url(),
        h2.url()
    ))
    .await;

    let h2c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let resp = h2c.get(format!("http://{}/one/x", app.data_addr()).parse().unwrap()).await.expect("h2c to fusebox");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"h1 /one/x");
    assert_eq!(*h1.last_version.lock().unwrap(), Some(Version::HTTP_11), "HTTP/1.1 upstream spoken to in HTTP/1.1");
    assert_eq!(h1.header("x-forwarded-host"), Some(app.data_addr().to_string()), "authority becomes x-forwarded-host");

    let c = client();
    let (s, _, body) = get(&c, &format!("http://{}/two/y", app.data_addr())).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body, "h2 /two/y");
    assert_eq!(*h2.last_version.lock().unwrap(), Some(Version::HTTP_2), "protocol: http2 upstream gets HTTP/2");

    // h2c in, h2 out.
    let resp = h2c.get(format!("http://{}/two/z", app.data_addr()).parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h2.hits(), 2);
}

// --- WebSocket ---

#[tokio::test]
async fn websocket_upgrade_is_spliced_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                if ws.send(Message::Text("hello from upstream".into())).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        return;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let app = fusebox(&one_upstream(&format!("http://{ws_addr}"), "failureThreshold: 3")).await;

    let stream = TcpStream::connect(app.data_addr()).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", app.data_addr()), stream).await.expect("WebSocket handshake through fusebox");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(next(&mut ws).await, Message::Text("hello from upstream".into()), "upstream -> client");
    ws.send(Message::Text("ping 1".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("ping 1".into()), "client -> upstream -> client");
    ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Binary(vec![0, 1, 2, 255]));

    // One upgrade is one call for the breaker.
    let c = client();
    let cb = circuit(&c, &app, "api").await;
    assert_eq!(cb["window"]["calls"], 1, "{cb}");
    assert_eq!(cb["window"]["failures"], 0, "{cb}");
    ws.close(None).await.unwrap();
}

async fn next(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("message in time").expect("stream open").expect("message ok")
}

// --- bad client input ---

/// Writes `bytes` raw to the data port and reads the answer until the
/// server closes (or 5s pass). A reset after a partial read keeps what came.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: Vec<u8>) -> Result<String, std::io::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        // Keep the write half open until the server is done with us.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(wr);
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => return Ok(()),
            }
        }
    })
    .await
    .expect("the server answers or closes in time");
    writer.abort();
    result.map(|()| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_without_touching_breakers() {
    let up = upstream("api").await;
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 1")).await;
    let c = client();

    let answer = raw_exchange(app.data_addr(), b"GARBAGE\r\n\r\n".to_vec()).await.expect("a 400, not a reset");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let mut big = b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    match raw_exchange(app.data_addr(), big).await {
        Ok(answer) if answer.starts_with("HTTP/1.1 431") => eprintln!("oversized headers: 431"),
        Ok(answer) if answer.is_empty() => {
            eprintln!("oversized headers: connection closed without an answer")
        }
        Ok(answer) => {
            panic!("oversized headers: expected 431 or a closed connection, got {answer:?}")
        }
        Err(e) => eprintln!("oversized headers: connection reset ({e})"),
    }

    assert_eq!(up.hits(), 0);
    assert_breakers_untouched(&c, &app).await;

    // The listener still serves.
    let (s, _, _) = get(&c, &format!("http://{}/x", app.data_addr())).await;
    assert_eq!(s, StatusCode::OK);
}

// --- upstream errors ---

#[tokio::test]
async fn upstream_500_passes_through_until_the_circuit_opens() {
    let up = upstream("api").await;
    up.set_status(500);
    let app = fusebox(&one_upstream(&up.url(), "failureThreshold: 3, resetTimeout: 30s")).await;
    let c = client();
    let url = format!("http://{}/boom", app.data_addr());
    for i in 1..=3 {
        let (s, h, body) = get(&c, &url).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "call {i}");
        assert_eq!(body, "api /boom", "the upstream's own body");
        assert!(h.get("x-fusebox-circuit").is_none());
    }
    let (s, h, _) = get(&c, &url).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.get("x-fusebox-circuit").unwrap(), "open");
    assert_eq!(up.hits(), 3);
}
