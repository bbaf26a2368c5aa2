//! The fuzz targets of `fuzz/targets.rs` on the stable toolchain: each runs
//! its checked-in seed corpus (`fuzz/corpus/<target>/`) and then random and
//! seed-mutated inputs through proptest (a failure is shrunk and printed).
//! By default a few hundred cases per target (seconds in all, part of
//! `cargo test`); `FUSEBOX_FUZZ_SECONDS=N` turns each into an N-second
//! campaign that prints its executions (what `benches/fuzz.sh` runs). Also
//! the WebSocket client-message target (through a real socket, since the
//! handler in admin/ws.rs is private), the config round-trip property, and
//! `h1_response` (arbitrary upstream bytes into `fusebox::h1`, seeded
//! inline).
//!
//! Must not: need nightly, the network beyond 127.0.0.1, or run longer than
//! a few seconds without `FUSEBOX_FUZZ_SECONDS`.

#[path = "../fuzz/targets.rs"]
mod targets;

mod support;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Cases per target in a plain `cargo test`.
const SMOKE_CASES: u32 = 300;

fn campaign_seconds() -> Option<u64> {
    std::env::var("FUSEBOX_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok())
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    assert!(!seeds.is_empty(), "no seed corpus in {}", dir.display());
    seeds
}

/// Random bytes, YAML-ish fragments, and seeds with bytes replaced,
/// inserted or deleted and lines duplicated.
fn inputs(seeds: Vec<Vec<u8>>, vocabulary: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let mutated = (0..n, prop::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 0..12)).prop_map(move |(i, edits)| {
        let mut s = seeds[i].clone();
        for (op, at, b) in edits {
            let at = if s.is_empty() { 0 } else { usize::from(at) % (s.len() + 1) };
            match op % 5 {
                0 if at < s.len() => s[at] = b,
                1 => s.insert(at, b),
                2 if at < s.len() => {
                    s.remove(at);
                }
                3 => {
                    let word = vocabulary[usize::from(b) % vocabulary.len()].as_bytes();
                    s.splice(at..at, word.iter().copied());
                }
                _ => {
                    // Duplicate the line around `at`.
                    let start = s[..at.min(s.len())].iter().rposition(|c| *c == b'\n').map_or(0, |p| p + 1);
                    let end = s[at.min(s.len())..].iter().position(|c| *c == b'\n').map_or(s.len(), |p| at.min(s.len()) + p + 1);
                    let line = s[start..end].to_vec();
                    s.splice(start..start, line);
                }
            }
        }
        s
    });
    let fragments =
        prop::collection::vec(0..vocabulary.len(), 0..40).prop_map(move |ix| ix.into_iter().flat_map(|i| vocabulary[i].bytes()).collect());
    prop_oneof![2 => mutated, 1 => fragments, 1 => prop::collection::vec(any::<u8>(), 0..512)]
}

/// Seeds first, then cases (or a timed campaign); prints executions.
fn run(target: &str, f: fn(&[u8]), vocabulary: &'static [&'static str]) {
    run_with(target, seeds(target), f, vocabulary);
}

fn run_with(target: &str, corpus: Vec<Vec<u8>>, f: fn(&[u8]), vocabulary: &'static [&'static str]) {
    for s in &corpus {
        f(s);
    }
    let mut execs = corpus.len() as u64;
    let strategy = inputs(corpus, vocabulary);
    let deadline = campaign_seconds().map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let cases = if deadline.is_some() { 2000 } else { SMOKE_CASES };
        let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
        if let Err(e) = runner.run(&strategy, |input| {
            f(&input);
            Ok(())
        }) {
            panic!("fuzz target `{target}` failed: {e}");
        }
        execs += u64::from(cases);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    println!("fuzz target {target}: {execs} executions");
}

const YAML_WORDS: &[&str] = &[
    "\n",
    "  ",
    "    ",
    ": ",
    "- ",
    "{ ",
    " }",
    "[",
    "]",
    ", ",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "'",
    "\"",
    "~",
    "null",
    "0",
    "-1",
    "4294967296",
    "1e400",
    "500000000000y",
    "1ns",
    "365d",
    "listen",
    "admin",
    "auth",
    "upstreams",
    "routes",
    "match",
    "pathPrefix",
    "upstream",
    "endpoints",
    "breaker",
    "failureThreshold",
    "resetTimeout",
    "timeouts",
    "connect",
    "fallback",
    "body",
    "healthCheck",
    "store",
    "path",
    "http://127.0.0.1:9",
    "https://[::1]:443",
    "/",
    "${HOME}",
    "\u{feff}",
    "\t",
];

const DURATION_WORDS: &[&str] = &[
    "0",
    "1",
    "9",
    "18446744073709551615",
    "ns",
    "us",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "w",
    "M",
    "y",
    " ",
    ".",
    "-",
    "+",
    "e9",
    "min",
    "sec",
    "\u{1f600}",
];

const JWT_WORDS: &[&str] = &[
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
    "eyJhbGciOiJub25lIn0",
    "eyJhbGciOiJSUzI1NiJ9",
    ".",
    "..",
    "=",
    "Bearer ",
    "eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MTAyNDQ0ODAwfQ",
    "AAAA",
    "_-",
];

#[test]
fn fuzz_config_loader() {
    run("config", targets::config, YAML_WORDS);
}

const FLEET_WORDS: &[&str] = &[
    "{\"v\":1,",
    "\"member\":\"pod-a\",",
    "\"type\":\"opened\",",
    "\"type\":\"action\",",
    "\"type\":\"trial\",",
    "\"circuit\":\"payments\",",
    "\"kind\":\"force\",",
    "\"mode\":\"forced-open\",",
    "\"closed\":true,",
    "\"atMs\":1}",
    "\"v\":2",
    "null",
    "[]",
    "\\u0000",
    "}",
];

#[test]
fn fuzz_fleet_message_decoder() {
    run("fleet_message", targets::fleet_message, FLEET_WORDS);
}

#[test]
fn fuzz_duration_parser() {
    run("duration", targets::duration, DURATION_WORDS);
}

#[test]
fn fuzz_jwt_verify() {
    run("jwt", targets::jwt, JWT_WORDS);
}

const H1_WORDS: &[&str] = &[
    "HTTP/1.1 ",
    "HTTP/1.0 ",
    "200 OK\r\n",
    "100 Continue\r\n\r\n",
    "101 Switching Protocols\r\n",
    "204 No Content\r\n",
    "\r\n",
    "\n",
    "\r\n\r\n",
    "content-length: ",
    "transfer-encoding: chunked\r\n",
    "connection: close\r\n",
    "connection: keep-alive\r\n",
    "0\r\n\r\n",
    "5\r\nhello\r\n",
    ";ext=1",
    "ffffffffffffffff",
    "x-t: 1\r\n",
    " ",
    ":",
    "18446744073709551616",
    "\0",
];

/// Responses the `h1_response` target starts from; each is prefixed with a
/// method/body byte and read sizes (see its driver).
fn h1_seeds() -> Vec<Vec<u8>> {
    let responses: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nx-t: 1\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nlink: <a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x02hi",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\n\r\nrest",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\nx-a: 1\r\n\r\nok",
    ];
    let mut seeds = Vec::new();
    for (i, r) in responses.iter().enumerate() {
        for prefix in [[0u8, 1, 1, 1, 1, 1, 1, 1, 1], [0x95, 0, 3, 0, 7, 255, 2, 0, 64], [i as u8, 255, 255, 255, 255, 255, 255, 255, 255]]
        {
            seeds.push(prefix.iter().chain(r.iter()).copied().collect());
        }
    }
    seeds
}

#[test]
fn fuzz_h1_response() {
    run_with("h1_response", h1_seeds(), targets::h1_response, H1_WORDS);
}

const WS_WORDS: &[&str] = &[
    "{",
    "}",
    "\"type\"",
    ":",
    "\"ping\"",
    "\"subscribe:services\"",
    "\"timestamp\"",
    "1e308",
    "null",
    "[",
    "]",
    ",",
    "\"\\u0000\"",
    "\"service\"",
    "\"api\"",
    "true",
];

/// The WebSocket client-message target: arbitrary text messages through a
/// real socket to a running fusebox, in sessions of 50 (the per-session
/// rate limit is 60 a minute). Every session must stay open or close
/// cleanly, and fusebox must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_websocket_client_messages() {
    let up = support::upstream("api").await;
    let app = support::fusebox(&support::one_upstream(&up.url(), "failureThreshold: 3")).await;
    let url = format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr());
    let corpus = seeds("ws");
    let strategy = inputs(corpus.clone(), WS_WORDS);
    let mut runner = TestRunner::new(RunnerConfig { failure_persistence: None, ..RunnerConfig::default() });
    let deadline = campaign_seconds().map(|s| Instant::now() + Duration::from_secs(s));
    let rounds = if deadline.is_some() { u32::MAX } else { 6 };
    let mut execs = 0u64;
    for round in 0..rounds {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("fusebox still accepts WebSocket clients");
        let mut batch: Vec<Vec<u8>> = if round == 0 { corpus.clone() } else { Vec::new() };
        while batch.len() < 50 {
            batch.push(strategy.new_tree(&mut runner).expect("an input").current());
        }
        for input in batch {
            let text = String::from_utf8_lossy(&input).into_owned();
            if ws.send(Message::Text(text)).await.is_err() {
                break;
            }
            execs += 1;
        }
        // Drain what fusebox answered; it must not have died.
        let _ = tokio::time::timeout(Duration::from_millis(50), async { while let Some(Ok(_)) = ws.next().await {} }).await;
        let _ = ws.close(None).await;
        let (status, _, _) = support::get(&support::client(), &format!("http://{}/healthz", app.admin_addr())).await;
        assert!(status.is_success() || status == http::StatusCode::NOT_FOUND, "admin listener broken: {status}");
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    println!("fuzz target ws: {execs} executions");
    app.shutdown().await;
}

// --- the round-trip property ---

#[derive(Debug, Clone)]
struct GenUpstream {
    name: String,
    port: u16,
    failure_threshold: u32,
    reset_ms: u64,
    connect_ms: u64,
    prefix: String,
}

fn gen_upstreams() -> impl Strategy<Value = Vec<GenUpstream>> {
    prop::collection::vec(("[a-z][a-z0-9-]{0,10}", 1u16..65535, 1u32..100_000, 1u64..86_400_000, 1u64..600_000, "/[a-z0-9]{0,8}"), 1..8)
        .prop_map(|v| {
            let mut seen = std::collections::HashSet::new();
            v.into_iter()
                .filter(|t| seen.insert(t.0.clone()))
                .map(|(name, port, failure_threshold, reset_ms, connect_ms, prefix)| GenUpstream {
                    name,
                    port,
                    failure_threshold,
                    reset_ms,
                    connect_ms,
                    prefix,
                })
                .collect()
        })
}

fn render(ups: &[GenUpstream]) -> String {
    let mut y = String::from("listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nauth: none\nupstreams:\n");
    for u in ups {
        y.push_str(&format!(
            "  {}:\n    endpoints: [http://127.0.0.1:{}]\n    breaker: {{ failureThreshold: {}, resetTimeout: {}ms, maxResetTimeout: {}ms }}\n    timeouts: {{ connect: {}ms }}\n",
            u.name,
            u.port,
            u.failure_threshold,
            u.reset_ms,
            u.reset_ms.max(600_000),
            u.connect_ms
        ));
    }
    y.push_str("routes:\n");
    for u in ups {
        y.push_str(&format!("  - {{ match: {{ pathPrefix: \"{}\" }}, upstream: {} }}\n", u.prefix, u.name));
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// A generated valid config renders to YAML that `check` accepts with
    /// the same values.
    #[test]
    fn a_generated_config_round_trips_through_check(ups in gen_upstreams()) {
        let text = render(&ups);
        let cfg = fusebox::config::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(cfg.upstreams.len(), ups.len());
        prop_assert_eq!(cfg.routes.len(), ups.len());
        for (u, r) in ups.iter().zip(&cfg.routes) {
            let c = cfg.upstream(&u.name).ok_or_else(|| TestCaseError::fail(format!("no upstream {}", u.name)))?;
            prop_assert_eq!(c.breaker.failure_threshold, u.failure_threshold);
            prop_assert_eq!(c.breaker.reset_timeout, Duration::from_millis(u.reset_ms));
            prop_assert_eq!(c.timeouts.connect, Duration::from_millis(u.connect_ms));
            prop_assert_eq!(c.endpoints.len(), 1);
            prop_assert_eq!(&r.upstream, &u.name);
            prop_assert_eq!(r.path_prefix.as_deref(), Some(u.prefix.as_str()));
        }
    }
}
