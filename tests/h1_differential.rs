//! The HTTP/1.1 client codec (`fusebox::h1`) against hyper's client
//! (`hyper::client::conn::http1`): a corpus of tricky upstream responses,
//! each delivered split at every byte boundary through a scripted in-memory
//! stream, must give the same status, version, reason, headers (in order),
//! body bytes, trailers, error-or-not and connection reuse through both —
//! except where the codec differs on purpose (each such case says why).
//! Then what the codec writes (one write for a bodyless request, the same
//! bytes as hyper for empty, sized and chunked bodies), early responses,
//! the error kinds a pool retries on, upgrades, and a few exchanges over
//! real 127.0.0.1 sockets with a raw-byte upstream.
//!
//! Must not: use fixed ports or sleeps to wait for readiness.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use fusebox::h1::{self, Connection, ErrorKind};
use http::{Method, Request};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";

// === the scripted stream ===

/// An in-memory upstream: serves one scripted response per request (a
/// request counts once its request line is written), cut into reads at
/// chosen offsets with a `Pending` at each cut, and records every write.
#[derive(Clone)]
struct Mock(Arc<Mutex<Script>>);

#[derive(Default)]
struct Script {
    responses: VecDeque<Vec<u8>>,
    /// Close (EOF) after the response of this index.
    close_after: Option<usize>,
    /// Response 0 is readable before any request.
    immediate: bool,
    served: usize,
    current: Vec<u8>,
    pos: usize,
    cuts: BTreeSet<usize>,
    paused_at: Option<usize>,
    written: Vec<u8>,
    writes: usize,
    /// Writes accept this many bytes in all, then stay pending.
    write_budget: Option<usize>,
    /// Writes fail with this error kind.
    write_error: Option<io::ErrorKind>,
    /// Once the budget is spent, writes fail (broken pipe) instead of
    /// blocking.
    fail_when_full: bool,
    read_waker: Option<Waker>,
}

impl Mock {
    fn new(responses: &[&[u8]], close_after: Option<usize>, cuts: impl IntoIterator<Item = usize>) -> Mock {
        let script = Script {
            responses: responses.iter().map(|r| r.to_vec()).collect(),
            close_after,
            cuts: cuts.into_iter().collect(),
            ..Script::default()
        };
        Mock(Arc::new(Mutex::new(script)))
    }

    fn with(self, f: impl FnOnce(&mut Script)) -> Mock {
        f(&mut self.0.lock().unwrap());
        self
    }

    fn written(&self) -> Vec<u8> {
        self.0.lock().unwrap().written.clone()
    }

    fn writes(&self) -> usize {
        self.0.lock().unwrap().writes
    }
}

impl Script {
    fn requests(&self) -> usize {
        // Hyper asks in HTTP/1.0 after an HTTP/1.0 response.
        self.written.windows(11).filter(|w| *w == b" HTTP/1.1\r\n" || *w == b" HTTP/1.0\r\n").count()
    }

    /// Makes the next responses readable as their requests arrive.
    fn release(&mut self) {
        while !self.responses.is_empty() && (self.served < self.requests() || (self.immediate && self.served == 0)) {
            if self.close_after.is_some_and(|c| self.served > c) {
                return;
            }
            let r = self.responses.pop_front().unwrap_or_default();
            if self.served > 0 {
                // Only the first response is cut.
                self.cuts = self.cuts.iter().copied().filter(|c| *c < self.current.len()).collect();
            }
            self.current.extend_from_slice(&r);
            self.served += 1;
        }
    }

    fn closed(&self) -> bool {
        self.close_after.is_some_and(|c| self.served > c) && self.pos == self.current.len()
    }
}

impl AsyncRead for Mock {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.lock().unwrap();
        s.release();
        if s.pos == s.current.len() {
            if s.closed() {
                return Poll::Ready(Ok(()));
            }
            s.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let pos = s.pos;
        if s.cuts.contains(&pos) && s.paused_at != Some(pos) {
            s.paused_at = Some(pos);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let end = s.cuts.range(pos + 1..).next().copied().unwrap_or(s.current.len()).min(s.current.len());
        let n = (end - pos).min(buf.remaining());
        buf.put_slice(&s.current[pos..pos + n]);
        s.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Mock {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, _cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut s = self.0.lock().unwrap();
        if let Some(kind) = s.write_error {
            return Poll::Ready(Err(kind.into()));
        }
        let mut room = s.write_budget.map_or(usize::MAX, |b| b - s.written.len().min(b));
        if room == 0 && s.fail_when_full {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if room == 0 {
            return Poll::Pending;
        }
        s.writes += 1;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room);
            s.written.extend_from_slice(&b[..take]);
            room -= take;
            n += take;
        }
        s.release();
        if let Some(w) = s.read_waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// === one exchange through each client ===

/// Where an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Head,
    Body,
}

/// Everything observable about one exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Outcome {
    status: u16,
    version: String,
    reason: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    failed: Option<Failed>,
    /// A second request on the same connection got its response.
    reused: bool,
}

fn fields(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

fn request(method: &Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder().method(method.clone()).uri(path).header("host", "upstream").body(Full::new(Bytes::new())).expect("a valid request")
}

fn head_of(method: &Method, path: &str) -> http::request::Parts {
    request(method, path).into_parts().0
}

fn start<T>(res: &http::Response<T>) -> Outcome {
    Outcome {
        status: res.status().as_u16(),
        version: format!("{:?}", res.version()),
        reason: res.extensions().get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes().to_vec()),
        headers: fields(res.headers()),
        ..Outcome::default()
    }
}

/// Reads every frame of a body into the outcome.
async fn drain<B>(out: &mut Outcome, body: B) -> bool
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => out.body.extend_from_slice(&d),
                Err(f) => out.trailers = f.into_trailers().ok().map(|t| fields(&t)),
            },
            Err(_) => {
                out.failed = Some(Failed::Body);
                return false;
            }
        }
    }
    true
}

async fn via_hyper(mock: Mock, method: &Method) -> Outcome {
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(mock)).await.expect("hyper handshake");
    let task = tokio::spawn(conn);
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        let res = match tx.send_request(request(method, "/first")).await {
            Ok(res) => res,
            Err(_) => return Outcome { failed: Some(Failed::Head), ..Outcome::default() },
        };
        let mut out = start(&res);
        if drain(&mut out, res.into_body()).await && tx.ready().await.is_ok() {
            if let Ok(res) = tx.send_request(request(&Method::GET, "/second")).await {
                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                out.reused = body.is_ok_and(|b| b == "second");
            }
        }
        out
    })
    .await
    .expect("hyper's exchange finishes");
    task.abort();
    out
}

type Slot = Arc<Mutex<Option<Connection<Mock>>>>;

fn slot() -> (Slot, impl FnOnce(Connection<Mock>) + Send + Unpin) {
    let slot: Slot = Arc::default();
    let s = slot.clone();
    (slot, move |c| *s.lock().unwrap() = Some(c))
}

async fn via_codec(mock: Mock, method: &Method) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), async {
        let (slot, recycle) = self::slot();
        let res = match Connection::new(mock).send(&head_of(method, "/first"), Full::new(Bytes::new()), recycle).await {
            Ok(res) => res,
            Err(_) => return Outcome { failed: Some(Failed::Head), ..Outcome::default() },
        };
        let mut out = start(&res);
        let ok = drain(&mut out, res.into_body()).await;
        let conn = slot.lock().unwrap().take();
        if let (true, Some(mut conn)) = (ok, conn) {
            assert!(conn.is_reused());
            if conn.is_usable() {
                let (_slot, recycle) = self::slot();
                if let Ok(res) = conn.send(&head_of(&Method::GET, "/second"), Full::new(Bytes::new()), recycle).await {
                    let body = res.into_body().collect().await.map(|b| b.to_bytes());
                    out.reused = body.is_ok_and(|b| b == "second");
                }
            }
        }
        out
    })
    .await
    .expect("the codec's exchange finishes")
}

// === the corpus ===

/// What the codec does on purpose that hyper does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Same,
    /// `transfer-encoding` with `content-length`: the codec drops the stale
    /// `content-length` (RFC 9112 §6.3: an intermediary must remove it
    /// before forwarding) and never reuses the connection; hyper keeps both
    /// fields and reuses it.
    TeClStripped,
    /// A head over 64 KiB: the codec refuses it, hyper's buffer goes to
    /// ~408 KiB.
    HeadTooLarge,
}

struct Case {
    name: &'static str,
    method: Method,
    response: Vec<u8>,
    /// The upstream closes after this response.
    close: bool,
    expect: Expect,
}

fn case(name: &'static str, response: impl AsRef<[u8]>, close: bool) -> Case {
    Case { name, method: Method::GET, response: response.as_ref().to_vec(), close, expect: Expect::Same }
}

impl Case {
    fn method(mut self, m: Method) -> Case {
        self.method = m;
        self
    }

    fn expect(mut self, e: Expect) -> Case {
        self.expect = e;
        self
    }
}

fn corpus() -> Vec<Case> {
    let many = |n: usize| {
        let mut r = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..n {
            r.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        r.push_str("content-length: 0\r\n\r\n");
        r
    };
    let big_value = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok", "v".repeat(70 * 1024));
    let big_trailer = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-t: {}\r\n\r\n", "t".repeat(17 * 1024));
    vec![
        case("content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\nDate: x\r\n\r\nhello", false),
        case(
            "chunked with extensions and trailers",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;name=val\r\nhello\r\n6 ; q=\"x\"\r\n world\r\n0;end\r\nX-Sum: abc\r\nX-Other: 2\r\n\r\n",
            false,
        ),
        case("chunked, hex sizes, no trailers", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n00b\r\nabcdefghijk\r\n0\r\n\r\n", false),
        case("chunked, gzip then chunked", "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n", false),
        case(
            "1xx before the final response",
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        case("100-continue then 413", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", true),
        case("no length: close-delimited", "HTTP/1.1 200 OK\r\nx: y\r\n\r\nall of the rest\r\n\r\nuntil EOF", true),
        case("close-delimited, empty", "HTTP/1.1 200 OK\r\n\r\n", true),
        case("HEAD with content-length", "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n", false).method(Method::HEAD),
        case("HEAD with transfer-encoding", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false).method(Method::HEAD),
        case("204 with a stray content-length", "HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n", false),
        case("304 with a stray transfer-encoding", "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\netag: \"x\"\r\n\r\n", false),
        case("content-length: 0", "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        case("repeated equal content-length", "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok", false),
        case("differing content-length", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!", true),
        case("invalid content-length", "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", true),
        case("transfer-encoding and content-length", "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", false)
            .expect(Expect::TeClStripped),
        case("transfer-encoding in HTTP/1.0", "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", true),
        case("100 header fields", many(99), false),
        case("101 header fields", many(100), true),
        case("head over 64 KiB", big_value, false).expect(Expect::HeadTooLarge),
        case("trailers over 16 KiB", big_trailer, true),
        case("bad chunk size", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", true),
        case("chunk size overflow", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\nx\r\n0\r\n\r\n", true),
        case("chunk extension with a bare LF", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;a\nx\r\n0\r\n\r\n", true),
        case("chunk data without CRLF", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nxy0\r\n\r\n", true),
        case("truncated content-length body", "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", true),
        case("truncated chunked body", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel", true),
        case("truncated head", "HTTP/1.1 200 OK\r\ncontent-le", true),
        case("no response at all", "", true),
        case("connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok", true),
        case("connection: keep-alive, Close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok", true),
        case("HTTP/1.0 without keep-alive", "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", true),
        case("HTTP/1.0 with keep-alive", "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", false),
        case("HTTP/1.0 close-delimited", "HTTP/1.0 200 OK\r\n\r\nuntil the end", true),
        case("pipelined garbage after the body", "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE", false),
        case("obs-fold", "HTTP/1.1 200 OK\r\nx-folded: a\r\n  b\r\ncontent-length: 2\r\n\r\nok", true),
        case("NUL in a header value", "HTTP/1.1 200 OK\r\nx-nul: a\0b\r\ncontent-length: 2\r\n\r\nok", true),
        case("space before the colon", "HTTP/1.1 200 OK\r\nx-space : a\r\ncontent-length: 2\r\n\r\nok", true),
        case("obs-text in a value", b"HTTP/1.1 200 OK\r\nx-latin: caf\xe9\r\ncontent-length: 2\r\n\r\nok", false),
        case("bare LF line endings", "HTTP/1.1 200 OK\ncontent-length: 2\n\nok", false),
        case("custom reason phrase", "HTTP/1.1 200 Fine Thanks\r\ncontent-length: 2\r\n\r\nok", false),
        case("empty reason phrase", "HTTP/1.1 404 \r\ncontent-length: 0\r\n\r\n", false),
        case("no reason phrase, no space", "HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n", false),
        case("empty header value", "HTTP/1.1 200 OK\r\nx-empty:\r\nx-blank:   \r\ncontent-length: 0\r\n\r\n", false),
        case("unknown status 599", "HTTP/1.1 599 Odd\r\ncontent-length: 0\r\n\r\n", false),
        case("invalid status 099", "HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n", true),
        case("HTTP/2 status line", "HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n", true),
        case("not HTTP at all", "SSH-2.0-OpenSSH_9.6\r\n", true),
    ]
}

/// The read cuts to try for one response: none, every single split point,
/// and byte by byte (fewer for the big ones).
fn splits(len: usize) -> Vec<Vec<usize>> {
    if len <= 4096 {
        let mut all = vec![vec![], (1..len).collect()];
        all.extend((1..len).map(|k| vec![k]));
        all
    } else {
        vec![vec![], (1..len).step_by(1000).collect(), vec![1], vec![len / 2], vec![len - 1]]
    }
}

#[tokio::test]
async fn the_corpus_matches_hyper_at_every_split() {
    let mut compared = 0;
    for case in corpus() {
        let close = case.close.then_some(0);
        let baseline = via_hyper(Mock::new(&[case.response.as_slice(), SECOND], close, []), &case.method).await;
        for cuts in splits(case.response.len()) {
            let ours = via_codec(Mock::new(&[case.response.as_slice(), SECOND], close, cuts.clone()), &case.method).await;
            let theirs = via_hyper(Mock::new(&[case.response.as_slice(), SECOND], close, cuts.clone()), &case.method).await;
            assert_eq!(theirs, baseline, "{}: hyper itself depends on the cuts {cuts:?}", case.name);
            let ctx = format!("{} (cuts {:?})", case.name, &cuts[..cuts.len().min(4)]);
            match case.expect {
                Expect::Same => assert_eq!(ours, theirs, "{ctx}"),
                Expect::TeClStripped => {
                    let mut want = theirs.clone();
                    want.headers.retain(|(n, _)| n != "content-length");
                    want.reused = false;
                    assert_eq!(ours, want, "{ctx}");
                    assert!(theirs.headers.iter().any(|(n, _)| n == "content-length"), "hyper keeps content-length");
                    assert!(theirs.reused, "hyper reuses the connection");
                    assert_eq!(ours.body, b"hi");
                }
                Expect::HeadTooLarge => {
                    assert_eq!(ours.failed, Some(Failed::Head), "{ctx}");
                    assert_eq!((theirs.status, theirs.failed), (200, None), "{ctx}");
                }
            }
            compared += 1;
        }
    }
    assert!(compared > 4500, "only {compared} comparisons");
}

/// The corpus cases whose outcome the proxy depends on most, spelled out
/// (so a change in hyper cannot silently move both sides at once).
#[tokio::test]
async fn the_corpus_outcomes_are_the_expected_ones() {
    let by_name = |name: &str| corpus().into_iter().find(|c| c.name == name).expect("a corpus case");
    let run = |name: &'static str| async move {
        let c = by_name(name);
        via_codec(Mock::new(&[c.response.as_slice(), SECOND], c.close.then_some(0), []), &c.method).await
    };
    let o = run("chunked with extensions and trailers").await;
    assert_eq!((o.body.as_slice(), o.reused), (&b"hello world"[..], true));
    assert_eq!(o.trailers, Some(vec![("x-sum".into(), b"abc".to_vec()), ("x-other".into(), b"2".to_vec())]));
    let o = run("1xx before the final response").await;
    assert_eq!((o.status, o.body.as_slice(), o.reused), (201, &b"ok"[..], true));
    let o = run("no length: close-delimited").await;
    assert_eq!((o.body.as_slice(), o.reused), (&b"all of the rest\r\n\r\nuntil EOF"[..], false));
    let o = run("HEAD with content-length").await;
    assert_eq!((o.body.len(), o.reused, o.headers[0].1.as_slice()), (0, true, &b"1234"[..]));
    let o = run("204 with a stray content-length").await;
    assert_eq!((o.status, o.body.len(), o.reused), (204, 0, true));
    for name in ["differing content-length", "obs-fold", "NUL in a header value", "101 header fields", "transfer-encoding in HTTP/1.0"] {
        assert_eq!(run(name).await.failed, Some(Failed::Head), "{name}");
    }
    for name in ["bad chunk size", "truncated content-length body", "truncated chunked body", "trailers over 16 KiB"] {
        assert_eq!(run(name).await.failed, Some(Failed::Body), "{name}");
    }
    assert!(!run("HTTP/1.0 without keep-alive").await.reused);
    assert!(run("HTTP/1.0 with keep-alive").await.reused);
    assert!(!run("connection: close").await.reused);
    let o = run("pipelined garbage after the body").await;
    assert_eq!((o.body.as_slice(), o.reused), (&b"ok"[..], false));
    assert_eq!(run("custom reason phrase").await.reason.as_deref(), Some(&b"Fine Thanks"[..]));
}

// === what the codec writes ===

async fn written_by_hyper(req: Request<Full<Bytes>>) -> Vec<u8> {
    let mock = Mock::new(&[SECOND], None, []);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(mock.clone())).await.expect("hyper handshake");
    let task = tokio::spawn(conn);
    let res = tx.send_request(req).await.expect("hyper's response");
    res.into_body().collect().await.expect("hyper's body");
    task.abort();
    mock.written()
}

async fn written_by_codec<B>(parts: &http::request::Parts, body: B) -> (Vec<u8>, usize)
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mock = Mock::new(&[SECOND], None, []);
    let res = Connection::new(mock.clone()).send(parts, body, h1::Discard).await.expect("the codec's response");
    res.into_body().collect().await.expect("the codec's body");
    (mock.written(), mock.writes())
}

#[tokio::test]
async fn a_bodyless_request_is_one_write_of_the_expected_bytes() {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/a/b?c=d&e")
        .header("host", "upstream:8080")
        .header("x-forwarded-for", "10.0.0.1")
        .header("accept", "*/*")
        .header("x-forwarded-for", "10.0.0.2")
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    let want =
        "GET /a/b?c=d&e HTTP/1.1\r\nhost: upstream:8080\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\naccept: */*\r\n\r\n";
    let (parts, body) = req.clone().into_parts();
    let (written, writes) = written_by_codec(&parts, body).await;
    assert_eq!(String::from_utf8_lossy(&written), want);
    assert_eq!(writes, 1, "one write for the whole head");
    assert_eq!(written_by_hyper(req).await, written, "the same bytes as hyper");
}

#[tokio::test]
async fn request_bodies_are_framed_like_hyper_frames_them() {
    // Empty: no framing header, nothing after the head.
    let empty = Request::post("/e").header("host", "u").body(Full::new(Bytes::new())).expect("request");
    let (parts, body) = empty.clone().into_parts();
    let (ours, writes) = written_by_codec(&parts, body).await;
    assert_eq!(ours, b"POST /e HTTP/1.1\r\nhost: u\r\n\r\n");
    assert_eq!((writes, written_by_hyper(empty).await), (1, ours));

    // Sized: content-length added, head and body in one write.
    let sized = Request::put("/s").header("host", "u").body(Full::new(Bytes::from_static(b"0123456789"))).expect("request");
    let (parts, body) = sized.clone().into_parts();
    let (ours, writes) = written_by_codec(&parts, body).await;
    assert_eq!(ours, b"PUT /s HTTP/1.1\r\nhost: u\r\ncontent-length: 10\r\n\r\n0123456789");
    assert_eq!((writes, written_by_hyper(sized).await), (1, ours));

    // A large sized body: a vectored write of head and body, no copy.
    let big = Bytes::from(vec![b'x'; 100 * 1024]);
    let (parts, body) = Request::post("/b").header("host", "u").body(Full::new(big.clone())).expect("request").into_parts();
    let (ours, writes) = written_by_codec(&parts, body).await;
    assert_eq!(&ours[..ours.len() - big.len()], b"POST /b HTTP/1.1\r\nhost: u\r\ncontent-length: 102400\r\n\r\n");
    assert_eq!(writes, 1);

    // Unknown length: chunked, upper-case hex sizes, trailers kept.
    let frames = || {
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("42"));
        let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::new())),
            Ok(Frame::data(Bytes::from(vec![b'y'; 26]))),
            Ok(Frame::trailers(t)),
        ];
        StreamBody::new(futures_util::stream::iter(frames))
    };
    let (parts, _) = Request::post("/c").header("host", "u").header("trailer", "x-checksum").body(()).expect("request").into_parts();
    let (ours, _) = written_by_codec(&parts, frames()).await;
    let want = format!("POST /c HTTP/1.1\r\nhost: u\r\ntrailer: x-checksum\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1A\r\n{}\r\n0\r\nx-checksum: 42\r\n\r\n", "y".repeat(26));
    assert_eq!(String::from_utf8_lossy(&ours), want);
    let req = Request::from_parts(parts, frames().boxed());
    let mock = Mock::new(&[SECOND], None, []);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(mock.clone())).await.expect("hyper handshake");
    let task = tokio::spawn(conn);
    tx.send_request(req).await.expect("hyper's response").into_body().collect().await.expect("hyper's body");
    task.abort();
    assert_eq!(mock.written(), ours, "the same chunked bytes as hyper");
}

#[tokio::test]
async fn a_caller_framing_is_honoured_or_refused_before_sending() {
    // A caller's content-length is kept, and the body must match it.
    let (parts, _) = Request::post("/").header("content-length", "3").body(()).expect("request").into_parts();
    let (ours, _) = written_by_codec(&parts, Full::new(Bytes::from_static(b"abc"))).await;
    assert_eq!(ours, b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc");
    let mock = Mock::new(&[SECOND], None, []);
    let err = Connection::new(mock).send(&parts, Full::new(Bytes::from_static(b"abcd")), h1::Discard).await.expect_err("too long");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(!err.is_upstream_fault());
    // Both framings at once, or a transfer-encoding not ending in chunked: nothing written.
    for (name, value) in [("transfer-encoding", "gzip"), ("x-none", "")] {
        let mut b = Request::post("/").header("content-length", "3");
        if name == "transfer-encoding" {
            b = Request::post("/").header(name, value);
        } else {
            b = b.header("transfer-encoding", "chunked");
        }
        let (parts, _) = b.body(()).expect("request").into_parts();
        let mock = Mock::new(&[SECOND], None, []);
        let err =
            Connection::new(mock.clone()).send(&parts, Full::new(Bytes::from_static(b"abc")), h1::Discard).await.expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(mock.written().is_empty(), "nothing sent");
    }
}

// === early responses ===

/// A request body that never ends.
fn endless() -> StreamBody<futures_util::stream::Pending<Result<Frame<Bytes>, io::Error>>> {
    StreamBody::new(futures_util::stream::pending())
}

#[tokio::test]
async fn an_early_response_ends_the_request_and_the_connection() {
    let early = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
    // The upstream answers at once while the body is still streaming.
    let mock = Mock::new(&[early, SECOND], None, []);
    let (slot, recycle) = self::slot();
    let (parts, _) = Request::post("/upload").header("host", "u").body(()).expect("request").into_parts();
    let res = tokio::time::timeout(Duration::from_secs(5), Connection::new(mock.clone()).send(&parts, endless(), recycle))
        .await
        .expect("no deadlock")
        .expect("the early response");
    assert_eq!(res.status(), 413);
    assert_eq!(res.into_body().collect().await.expect("body").to_bytes(), "big!");
    assert!(slot.lock().unwrap().is_none(), "a half-sent request's connection is not reused");

    // The upstream stops reading (writes block) after answering: no deadlock.
    let mock = Mock::new(&[early, SECOND], None, []).with(|s| s.write_budget = Some(40));
    let big = Full::new(Bytes::from(vec![b'z'; 1 << 20]));
    let res = tokio::time::timeout(Duration::from_secs(5), Connection::new(mock.clone()).send(&parts, big, h1::Discard))
        .await
        .expect("no deadlock")
        .expect("the early response");
    assert_eq!(res.status(), 413);
    assert_eq!(mock.written().len(), 40);

    // Hyper delivers the same early response.
    let mock = Mock::new(&[early, SECOND], None, []);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(mock)).await.expect("hyper handshake");
    let task = tokio::spawn(conn);
    let req = Request::from_parts(parts, endless().boxed());
    let res = tokio::time::timeout(Duration::from_secs(5), tx.send_request(req)).await.expect("hyper answers").expect("hyper's response");
    assert_eq!(res.status(), 413);
    task.abort();
}

#[tokio::test]
async fn a_write_failure_still_returns_a_readable_response() {
    // The upstream answers, takes 10 bytes, then resets: the 413 counts.
    let early = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
    let (parts, _) = Request::post("/").body(()).expect("request").into_parts();
    let mock = Mock::new(&[early], Some(0), []).with(|s| {
        s.immediate = true;
        s.write_budget = Some(10);
        s.fail_when_full = true;
    });
    let big = Full::new(Bytes::from(vec![b'z'; 64 * 1024]));
    let res = tokio::time::timeout(Duration::from_secs(5), Connection::new(mock).send(&parts, big, h1::Discard))
        .await
        .expect("no hang")
        .expect("the 413");
    assert_eq!(res.status(), 413);

    // A write error with nothing readable is a write error, not a hang.
    let mock = Mock::new(&[], None, []).with(|s| {
        s.write_budget = Some(10);
        s.fail_when_full = true;
    });
    let big = Full::new(Bytes::from(vec![b'z'; 64 * 1024]));
    let err = tokio::time::timeout(Duration::from_secs(5), Connection::new(mock).send(&parts, big, h1::Discard))
        .await
        .expect("no hang")
        .expect_err("the write failed");
    assert_eq!(err.kind(), ErrorKind::Write);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_upstream_that_does_not_speak_http_fails_fast_without_closing() {
    // The connection stays open: the error must come from the first bytes.
    let mock = Mock::new(&[b"SSH-2.0-OpenSSH_9.6\r\n"], None, []);
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::new(mock).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard),
    )
    .await
    .expect("no wait for more bytes")
    .expect_err("not HTTP");
    assert_eq!(err.kind(), ErrorKind::Malformed);
    // A head that never ends stops at the limit, open connection or not.
    let endless_head = format!("HTTP/1.1 200 OK\r\n{}", "x-pad: 0123456789abcdef\r\n".repeat(5000));
    let mock = Mock::new(&[endless_head.as_bytes()], None, []);
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::new(mock).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard),
    )
    .await
    .expect("bounded")
    .expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::TooLarge);
}

// === errors a pool retries on ===

#[tokio::test]
async fn a_connection_that_fails_before_any_byte_is_not_sent() {
    let mock = Mock::new(&[], None, []).with(|s| s.write_error = Some(io::ErrorKind::ConnectionReset));
    let err = Connection::new(mock).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard).await.expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::NotSent);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn eof_before_the_response_is_the_keep_alive_race_only_on_a_reused_connection() {
    // Fresh: the upstream may have seen the request.
    let mock = Mock::new(&[b""], Some(0), []);
    let err = Connection::new(mock).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard).await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert!(!err.is_retryable());

    // Reused: the upstream closed it while idle.
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let mock = Mock::new(&[ok, b""], Some(1), []);
    let (slot, recycle) = self::slot();
    let res = Connection::new(mock).send(&head_of(&Method::GET, "/1"), Full::new(Bytes::new()), recycle).await.expect("first");
    res.into_body().collect().await.expect("first body");
    let conn = slot.lock().unwrap().take().expect("recycled");
    assert!(conn.is_reused());
    let err = conn.send(&head_of(&Method::GET, "/2"), Full::new(Bytes::new()), h1::Discard).await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::ClosedIdle);
    assert!(err.is_retryable());

    // Reused, but part of the response arrived: not retryable.
    let mock = Mock::new(&[ok, b"HTTP/1.1 2"], Some(1), []);
    let (slot, recycle) = self::slot();
    let res = Connection::new(mock).send(&head_of(&Method::GET, "/1"), Full::new(Bytes::new()), recycle).await.expect("first");
    res.into_body().collect().await.expect("first body");
    let conn = slot.lock().unwrap().take().expect("recycled");
    let err = conn.send(&head_of(&Method::GET, "/2"), Full::new(Bytes::new()), h1::Discard).await.expect_err("cut");
    assert_eq!(err.kind(), ErrorKind::Incomplete);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_idle_connection_with_eof_or_bytes_is_not_usable() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let late_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\r\n";
    for (responses, close, usable) in [(vec![ok], None, true), (vec![ok], Some(0), false)] {
        let mock = Mock::new(&responses, close, []);
        let (slot, recycle) = self::slot();
        let res = Connection::new(mock).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), recycle).await.expect("response");
        res.into_body().collect().await.expect("body");
        let mut conn = slot.lock().unwrap().take().expect("recycled");
        assert_eq!(conn.is_usable(), usable, "close {close:?}");
    }
    // Unsolicited bytes on an idle connection.
    let mock = Mock::new(&[ok], None, []);
    let (slot, recycle) = self::slot();
    let res = Connection::new(mock.clone()).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), recycle).await.expect("response");
    res.into_body().collect().await.expect("body");
    let mut conn = slot.lock().unwrap().take().expect("recycled");
    {
        let mut s = mock.0.lock().unwrap();
        s.current.extend_from_slice(late_408);
    }
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn a_body_dropped_early_never_returns_its_connection() {
    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234";
    let mock = Mock::new(&[resp], None, []);
    let (slot, recycle) = self::slot();
    let res = Connection::new(mock).send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), recycle).await.expect("response");
    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "01234");
    drop(body);
    assert!(slot.lock().unwrap().is_none());
}

#[tokio::test]
async fn a_bodyless_response_recycles_before_the_body_is_polled() {
    for resp in [&b"HTTP/1.1 204 No Content\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"] {
        let (slot, recycle) = self::slot();
        let res = Connection::new(Mock::new(&[resp], None, []))
            .send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), recycle)
            .await
            .expect("response");
        assert!(slot.lock().unwrap().is_some(), "recycled with the head");
        assert!(http_body::Body::is_end_stream(res.body()));
    }
    // Chunked: the last data frame and the terminator in one read recycle
    // in the same poll, so is_end_stream is true right after the data.
    let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (slot, recycle) = self::slot();
    let res = Connection::new(Mock::new(&[resp], None, []))
        .send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), recycle)
        .await
        .expect("response");
    let mut body = res.into_body();
    let data = body.frame().await.expect("a frame").expect("data");
    assert_eq!(data.into_data().expect("data"), "ok");
    assert!(http_body::Body::is_end_stream(&body));
    assert!(slot.lock().unwrap().is_some());
}

// === upgrades ===

#[tokio::test]
async fn switching_protocols_gives_back_the_stream_and_the_bytes_past_the_head() {
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x02hi";
    let mock = Mock::new(&[resp], None, []);
    let (parts, _) =
        Request::get("/ws").header("upgrade", "websocket").header("connection", "upgrade").body(()).expect("request").into_parts();
    let (slot, recycle) = self::slot();
    let res = Connection::new(mock).send(&parts, Full::new(Bytes::new()), recycle).await.expect("101");
    assert_eq!(res.status(), 101);
    let body = res.into_body();
    assert!(body.is_upgrade());
    let mut up = body.into_upgraded().expect("upgraded");
    assert_eq!(&up.read_buf[..], b"\x81\x02hi");
    up.io.write_all(b"\x88\x00").await.expect("the stream is writable");
    assert!(slot.lock().unwrap().is_none(), "an upgraded connection is never pooled");

    // A 2xx to CONNECT is a tunnel too; an ordinary response is not.
    let (parts, _) = Request::connect("upstream:443").body(()).expect("request").into_parts();
    let res = Connection::new(Mock::new(&[b"HTTP/1.1 200 Connection Established\r\n\r\nTLS"], None, []))
        .send(&parts, Full::new(Bytes::new()), h1::Discard)
        .await
        .expect("200");
    assert_eq!(&res.into_body().into_upgraded().expect("a tunnel").read_buf[..], b"TLS");
    let res = Connection::new(Mock::new(&[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], None, []))
        .send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard)
        .await
        .expect("200");
    assert!(res.into_body().into_upgraded().is_err());
}

// === over real sockets ===

/// A raw upstream on 127.0.0.1:0: for each accepted connection, answers
/// each request head with the next of `responses`, then closes if told.
async fn raw_upstream(responses: Vec<Vec<u8>>, close_after_all: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let responses = responses.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                for r in responses {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
                    seen.drain(..end);
                    if s.write_all(&r).await.is_err() {
                        return;
                    }
                }
                if !close_after_all {
                    let _ = s.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn over_tcp_a_connection_carries_several_exchanges() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n".to_vec();
    let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nworld".to_vec();
    let addr = raw_upstream(vec![chunked, sized.clone(), sized], false).await;
    let mut conn = Connection::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    for (i, want) in ["hello", "world", "world"].into_iter().enumerate() {
        assert!(conn.is_usable(), "exchange {i}");
        let (slot, recycle) = {
            let slot: Arc<Mutex<Option<Connection<tokio::net::TcpStream>>>> = Arc::default();
            let s = slot.clone();
            (slot, move |c| *s.lock().unwrap() = Some(c))
        };
        let res = conn.send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), recycle).await.expect("response");
        let collected = res.into_body().collect().await.expect("body");
        assert_eq!(collected.trailers().is_some(), i == 0);
        assert_eq!(collected.to_bytes(), want);
        let next = slot.lock().unwrap().take();
        conn = next.expect("recycled");
    }
}

#[tokio::test]
async fn over_tcp_an_upstream_that_closes_idle_connections_is_detected_and_retryable() {
    let addr = raw_upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()], true).await;
    let slot: Arc<Mutex<Option<Connection<tokio::net::TcpStream>>>> = Arc::default();
    let s = slot.clone();
    let conn = Connection::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let res =
        conn.send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), move |c| *s.lock().unwrap() = Some(c)).await.expect("response");
    res.into_body().collect().await.expect("body");
    let mut conn = slot.lock().unwrap().take().expect("recycled");
    // Wait (bounded) until the upstream's FIN arrives; then it is not usable.
    let mut usable = true;
    for _ in 0..200 {
        usable = conn.is_usable();
        if !usable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!usable, "an idle connection closed by the upstream is detected");
    // A pool that sends anyway gets a retryable error.
    let err = conn.send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard).await.expect_err("closed");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn over_tcp_close_delimited_and_truncated_bodies() {
    let addr = raw_upstream(vec![b"HTTP/1.0 200 OK\r\n\r\nuntil the end".to_vec()], true).await;
    let conn = Connection::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let res = conn.send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard).await.expect("response");
    assert_eq!(res.into_body().collect().await.expect("body").to_bytes(), "until the end");

    let addr = raw_upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".to_vec()], true).await;
    let conn = Connection::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let res = conn.send(&head_of(&Method::GET, "/"), Full::new(Bytes::new()), h1::Discard).await.expect("response");
    let err = res.into_body().collect().await.expect_err("truncated");
    assert_eq!(err.kind(), ErrorKind::Incomplete);
}
