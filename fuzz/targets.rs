//! The fuzz targets, shared by the coverage-guided cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` (nightly, libFuzzer) and the stable harness in
//! `tests/fuzz_smoke.rs` (proptest; `benches/fuzz.sh` runs both). Each takes
//! raw bytes and asserts the invariants that must hold for any input: no
//! panic, and a config that passes `check` is fully validated.
//!
//! Must not: read the clock, touch the network or keep state between calls
//! (beyond a lazily built authorizer), so that every crash reproduces from
//! its input alone.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

/// The HS256 secret of the JWT target (32+ bytes, as validation requires).
pub const SECRET: &str = "fusebox-fuzz-secret-0123456789abcdef";
const SECRET_ENV: &str = "FUSEBOX_FUZZ_HS256_SECRET";
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// YAML text -> `fusebox::config::parse`: never panics; a config that is
/// accepted has an upstream, a route, and every route names an upstream.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = fusebox::config::parse(&text) {
        assert!(!cfg.upstreams.is_empty(), "accepted without upstreams:\n{text}");
        assert!(!cfg.routes.is_empty(), "accepted without routes:\n{text}");
        for r in &cfg.routes {
            assert!(cfg.upstream(&r.upstream).is_some(), "route to an unknown upstream `{}`:\n{text}", r.upstream);
        }
        for u in &cfg.upstreams {
            assert!(u.breaker.reset_timeout <= MAX_DURATION, "resetTimeout over a year:\n{text}");
        }
    }
}

/// A message read back from a fleet's Redis (SPEC 10): the one decoder
/// never panics, and what it accepts is within its bounds and encodes back
/// to a message it accepts again.
pub fn fleet_message(data: &[u8]) {
    use fusebox::fleet::codec::{Envelope, MAX_MESSAGE, MAX_TEXT};
    if let Ok(e) = Envelope::decode(data) {
        assert!(data.len() <= MAX_MESSAGE);
        assert!(!e.member.is_empty() && e.member.len() <= MAX_TEXT);
        let again = Envelope::decode(&e.encode()).expect("an accepted message encodes to an accepted one");
        assert_eq!(again, e);
    }
}

/// A duration written by the fuzzer, through the config (humantime): never
/// panics; an accepted one is at most a year.
pub fn duration(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    // One YAML scalar: quoted, with quotes and line breaks taken out.
    let value: String = raw.chars().filter(|c| !matches!(c, '"' | '\\' | '\n' | '\r')).take(200).collect();
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nupstreams:\n  api:\n    endpoints: [http://127.0.0.1:9]\n    breaker: {{ resetTimeout: \"{value}\" }}\n    timeouts: {{ connect: \"{value}\" }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    );
    if let Ok(cfg) = fusebox::config::parse(&text) {
        let u = cfg.upstream("api").expect("the one upstream");
        assert!(u.breaker.reset_timeout <= MAX_DURATION, "{value:?}");
        assert!(u.timeouts.connect <= MAX_DURATION, "{value:?}");
    }
}

fn authorizer() -> &'static fusebox::admin::auth::Authorizer {
    static AUTH: OnceLock<fusebox::admin::auth::Authorizer> = OnceLock::new();
    AUTH.get_or_init(|| {
        std::env::set_var(SECRET_ENV, SECRET);
        let text = format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: {{ jwt: {{ hs256SecretEnv: {SECRET_ENV}, adminRole: admin, leeway: 0s }} }}\nupstreams:\n  api:\n    endpoints: [http://127.0.0.1:9]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
        );
        let cfg = fusebox::config::parse(&text).expect("the fuzz auth config is valid");
        fusebox::admin::auth::Authorizer::new(&cfg.auth).expect("the fuzz authorizer builds")
    })
}

/// `Authorizer::verify` on an arbitrary string (and as a bearer header
/// value): never panics.
pub fn jwt_raw(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let auth = authorizer();
    let _ = auth.verify(Some(&token));
    let _ = auth.admin(Some(&token));
}

/// A structurally valid HS256 token (signed with the right secret) whose
/// claims the fuzzer chose: never panics, and a token it accepts has a
/// numeric `exp` in the future.
pub fn jwt_claims(data: &[u8]) {
    let claims = json_value(&mut Bytes(data), 0);
    let claims = match claims {
        serde_json::Value::Object(m) => serde_json::Value::Object(m),
        other => serde_json::json!({ "sub": other, "role": "admin", "exp": 4_102_444_800u64 }),
    };
    let Ok(token) = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    ) else {
        return;
    };
    if authorizer().verify(Some(&token)).is_ok() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let exp = claims.get("exp").and_then(serde_json::Value::as_f64);
        assert!(exp.is_some_and(|e| e >= now as f64), "accepted without a future numeric exp: {claims}");
    }
}

/// Both JWT targets on one input (the first byte picks).
pub fn jwt(data: &[u8]) {
    match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => jwt_claims(rest),
        Some((_, rest)) => jwt_raw(rest),
        None => jwt_raw(data),
    }
}

/// A byte cursor for building values from fuzz input.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn string(&mut self) -> String {
        let n = usize::from(self.byte() % 24);
        let take = n.min(self.0.len());
        let (s, rest) = self.0.split_at(take);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

/// A JSON value from bytes, with JWT claim names likely as keys.
fn json_value(b: &mut Bytes<'_>, depth: u8) -> serde_json::Value {
    use serde_json::Value;
    const KEYS: [&str; 10] = ["sub", "role", "roles", "exp", "nbf", "iat", "iss", "aud", "scope", "x"];
    match b.byte() % if depth > 3 { 6 } else { 8 } {
        0 => Value::Null,
        1 => Value::Bool(b.byte() % 2 == 0),
        2 => Value::from(i64::from_le_bytes([b.byte(), b.byte(), b.byte(), b.byte(), b.byte(), b.byte(), b.byte(), b.byte()])),
        3 => Value::from(4_102_444_800u64.wrapping_add(u64::from(b.byte()))),
        4 => serde_json::Number::from_f64(f64::from(b.byte()) * 1e9 - 1e10).map_or(Value::Null, Value::Number),
        5 => Value::String(match b.byte() % 3 {
            0 => "admin".to_string(),
            1 => "viewer".to_string(),
            _ => b.string(),
        }),
        6 => Value::Array((0..b.byte() % 4).map(|_| json_value(b, depth + 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..b.byte() % 8 {
                let k = KEYS[usize::from(b.byte()) % KEYS.len()].to_string();
                m.insert(k, json_value(b, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// `fusebox::h1` fed arbitrary upstream bytes with arbitrary read sizes and
/// `Pending`s: never panics, never stalls (the poll count is bounded by the
/// input's length), never hands out more body bytes than it was given;
/// when the codec recycles the connection, a second request is sent on it
/// and the rest of the input answers that one. Input: byte 0 picks the
/// method and the request body, bytes 1..9 the read sizes (cycled; 0 means
/// "Pending first"), the rest is the response stream.
pub fn h1_response(data: &[u8]) {
    h1_target::h1_response(data)
}

mod h1_target {
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

    pub fn h1_response(data: &[u8]) {
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
}
