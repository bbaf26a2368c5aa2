//! cargo-fuzz target `h1_response`: arbitrary bytes as an upstream's answer
//! to `fusebox::h1`, delivered with arbitrary read sizes and `Pending`s.
//! Must never panic, stall (every poll makes progress: the poll count is
//! bounded by the input's length), or hand out more body bytes than it was
//! given. When the codec recycles the connection, a second request is sent
//! on it and the rest of the input answers that one.
//!
//! Input: byte 0 picks the method and the request body, bytes 1..9 the read
//! sizes (cycled; 0 means "Pending first"), the rest is the response
//! stream. The same driver runs on stable in tests/fuzz_smoke.rs
//! (`fuzz_h1_response`); this file keeps its own copy because the shared
//! fuzz/targets.rs was outside this change.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use fusebox::h1::Connection;
use http_body::Body as _;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

libfuzzer_sys::fuzz_target!(|data: &[u8]| h1_response(data));

/// The upstream: serves `data` in pieces of the chosen sizes, a `Pending`
/// before a piece whose size byte is 0; swallows every write.
struct Feed {
    data: Vec<u8>,
    pos: usize,
    sizes: [u8; 8],
    turn: usize,
    paused: bool,
}

impl AsyncRead for Feed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % 8];
        if size == 0 && !self.paused {
            self.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.paused = false;
        self.turn += 1;
        let n = usize::from(size.max(1)).min(self.data.len() - self.pos).min(buf.remaining());
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls to completion; panics if it takes more polls than `budget`.
fn drive<F: Future>(f: F, budget: &mut usize) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        *budget = budget.checked_sub(1).expect("the codec stalled: a poll made no progress");
    }
}

type Slot = Arc<Mutex<Option<Connection<Feed>>>>;

fn h1_response(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (sizes, response) = rest.split_at(rest.len().min(8));
    let mut s = [1u8; 8];
    s[..sizes.len()].copy_from_slice(sizes);
    let feed = Feed { data: response.to_vec(), pos: 0, sizes: s, turn: 0, paused: false };
    // Two polls per piece at most, each piece at least a byte, per exchange.
    let mut budget = 64 + 4 * (response.len() + 1);
    let mut conn = Connection::new(feed);
    let mut body_bytes = 0usize;
    for exchange in 0..2 {
        let method = match (pick >> (exchange * 2)) & 3 {
            0 => http::Method::GET,
            1 => http::Method::HEAD,
            2 => http::Method::CONNECT,
            _ => http::Method::POST,
        };
        let uri = if method == http::Method::CONNECT { "upstream:443" } else { "/fuzz" };
        let (parts, ()) = http::Request::builder().method(method).uri(uri).body(()).expect("a valid request").into_parts();
        let body = Full::new(Bytes::from_static(if pick & 0x80 != 0 { b"request body" } else { b"" }));
        let slot: Slot = Arc::default();
        let recycle = {
            let slot = slot.clone();
            move |c| *slot.lock().expect("not poisoned") = Some(c)
        };
        let Ok(res) = drive(conn.send(&parts, body, recycle), &mut budget) else { return };
        let mut body = res.into_body();
        loop {
            let frame = drive(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)), &mut budget);
            match frame {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        body_bytes += d.len();
                        assert!(body_bytes <= response.len(), "more body than input");
                    } else {
                        assert!(f.trailers_ref().is_some_and(|t| t.len() <= fusebox::h1::MAX_TRAILERS));
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        assert!(body.is_end_stream() || body.is_upgrade(), "a finished body says so");
        let _ = body.into_upgraded();
        let next = slot.lock().expect("not poisoned").take();
        match next {
            Some(mut c) => {
                assert!(c.is_reused());
                let _ = c.is_usable();
                conn = c;
            }
            None => return,
        }
    }
}

