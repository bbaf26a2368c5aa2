//! Fan-out of the state WebSocket (`GET /api/v2/ws/circuit-breaker`,
//! docs/websocket.md) at 1,000 and 10,000 connected clients:
//!
//! 1. latency from a circuit transition to its `service:update` at the
//!    clients: per transition the *last* client's receipt (p50/p99 over
//!    the transitions) and every client's receipt (p50/p99 over all);
//! 2. memory per client (process RSS, `/proc/self/status` VmRSS);
//! 3. proxy requests/s with the clients connected, as a ratio to none.
//!
//! Run: `cargo bench --bench ws_fanout` (release build; about a minute
//! after the build). Knobs (env): `WS_CLIENTS="1000,10000"` client counts,
//! `WS_BATCH=200` handshakes at once, `WS_TRANSITIONS=20`, `WS_LOAD_SECS=3`
//! per condition, `WS_ROUNDS=6`, `WS_LOAD_CONNS=32`.
//!
//! Method. fusebox runs in-process (`App::start`, `auth: none`) on a tokio
//! runtime with 2 workers (the machine has 2 cores), in front of a tiny
//! hyper upstream; the WebSocket clients (tokio-tungstenite, one reader task
//! each) and the HTTP load run on the same runtime, all on 127.0.0.1.
//! Every measurement runs in a fresh child process (this binary, re-run
//! with `WS_FANOUT_ROLE`), so one scenario's memory does not pollute the
//! next one's RSS:
//!
//! - `fusebox N`: connect N clients in parallel batches of 200 and wait
//!   for each one's first `services:state` (RSS before and after; once two
//!   whole batches are refused, the remaining attempts are skipped: fusebox
//!   caps clients at 16,384). Make 20 transitions of upstream `api`
//!   in-process with `Circuit::force` (forced-open, auto, ...; the time is
//!   taken just before the call and at each client right after its socket
//!   yields the message; the next transition waits until every client has
//!   it, or 5 s, and comes at least 300 ms after the previous one, since
//!   updates are batched per service at most one per 100 ms). Then the
//!   process's on-CPU time (all threads' schedstat) over 5 s of no load
//!   while `api` flips every 500 ms, with the clients and (after
//!   disconnecting) without: the fan-out's CPU cost, which this noisy VM
//!   measures far better than a requests/s ratio. Then the requests/s
//!   rounds (below);
//! - `hold M`: as many clients as fusebox accepted (M), against a server
//!   that completes the WebSocket handshake by hand, sends one text frame
//!   and parks the bare socket (no task, no buffers): its RSS delta is the
//!   *client side* cost, and fusebox's own cost per client is (fusebox
//!   delta - hold delta) / M;
//! - `echo N`: N clients against a minimal tokio-tungstenite echo server
//!   (one task and one `WebSocketStream` per connection): a reference for
//!   what the thinnest tungstenite server session costs, at the full N.
//!
//! Requests/s: 32 HTTP/1.1 keep-alive connections (hyper client) against
//! the data port, 3 s per condition in 6 rounds of 0.5 s without and 0.5 s
//! with the clients (connected, at most 100 handshakes at once, between
//! the slices), in ABBA order: this VM's speed drifts by +-30% over
//! seconds (a plain CPU loop shows it too), so a single 3 s run each way
//! gives ratios anywhere from 0.7 to 1.4. Meanwhile upstream `api` (the
//! one the load goes through) flips between forced-closed and auto every
//! 500 ms, so every connected session builds and sends an update twice a
//! second and takes the circuit's lock for its snapshot. Forced-closed
//! rather than forced-open, so the proxy keeps forwarding (a forced-open
//! circuit would answer 503 without touching the upstream, and requests/s
//! would measure that). The baseline flips too (nobody listens), so the
//! only difference is the clients. The ratio includes the clients' own CPU
//! (same process, same 2 workers): it is a lower bound for fusebox alone.
//!
//! File descriptors: 10,000 in-process clients need ~20,000 fds; the bench
//! raises RLIMIT_NOFILE with the `rlimit` dev-dependency (a safe wrapper;
//! `#![forbid(unsafe_code)]` is the library's), to 65,536 where the hard
//! limit allows, else to the hard limit.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fusebox::breaker::Mode;
use fusebox::runtime::upstream::Upstream;
use fusebox::App;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The binary's allocator, so memory and requests/s are fusebox's own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROLE_ENV: &str = "WS_FANOUT_ROLE";
const N_ENV: &str = "WS_FANOUT_N";
/// Handshakes in flight at once while connecting.
const BATCH: usize = 200;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long every client gets to read its first snapshot.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Minimum spacing of the measured transitions (updates are batched per
/// service, at most one per 100 ms).
const SPACING: Duration = Duration::from_millis(300);
/// How long a transition waits for its last client.
const TRANSITION_TIMEOUT: Duration = Duration::from_secs(5);
const FLIP_EVERY: Duration = Duration::from_millis(500);
/// A child that runs longer than this is killed (whole run < 3 minutes).
const CHILD_TIMEOUT: Duration = Duration::from_secs(100);
/// What `hold` and `echo` send first (the clients wait for a snapshot).
const FAKE_SNAPSHOT: &str = r#"{"type":"services:state","seq":1,"services":[]}"#;

fn main() {
    let nofile = raise_nofile(65_536);
    match std::env::var(ROLE_ENV) {
        Ok(role) => {
            let n: usize = std::env::var(N_ENV).ok().and_then(|v| v.parse().ok()).expect("WS_FANOUT_N");
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let data = rt.block_on(async move {
                match role.as_str() {
                    "fusebox" => fusebox_scenario(n).await,
                    "hold" => reference_scenario(n, false).await,
                    "echo" => reference_scenario(n, true).await,
                    other => panic!("unknown role {other}"),
                }
            });
            let line: Vec<String> = data.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("DATA {}", line.join(" "));
            // Skip the runtime's teardown of thousands of sockets.
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        Err(_) => parent(nofile),
    }
}

/// Raises RLIMIT_NOFILE to `want` (the hard limit too when allowed, e.g. as
/// root), else the soft limit to the hard one. Returns the soft limit.
fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((0, 0));
    if soft >= want {
        return soft;
    }
    if hard < want && Resource::NOFILE.set(want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(soft)
}

// === parent: runs the scenarios, prints the summary ===

type Data = BTreeMap<String, String>;

fn parent(nofile: u64) {
    let counts: Vec<usize> = std::env::var("WS_CLIENTS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let started = Instant::now();
    println!("ws_fanout: state WebSocket fan-out; clients {counts:?}; RLIMIT_NOFILE={nofile}; tokio multi-thread runtime, 2 workers");
    println!("  each scenario runs in a fresh child process; see the header of benches/ws_fanout.rs for the method");
    let mut rows = Vec::new();
    for &n in &counts {
        println!();
        println!("=== {n} clients ===");
        let f = run_child("fusebox", n);
        // The client-side cost is subtracted per client, so measure it at
        // the count fusebox really took (it caps at 16,384).
        let taken = f.get("connected").and_then(|v| v.parse().ok()).filter(|c| *c > 0).unwrap_or(n);
        let h = run_child("hold", taken);
        let e = run_child("echo", n);
        rows.push(report(n, &f, &h, &e));
    }
    println!();
    println!("=== summary ===");
    for range in [0..SPLIT, SPLIT..COLUMNS.len()] {
        let widths: Vec<usize> =
            range.clone().map(|i| rows.iter().map(|r| r.cells[i].len()).max().unwrap_or(0).max(COLUMNS[i].len())).collect();
        let line = |cells: &[String]| cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ");
        println!("{}", line(&COLUMNS[range.clone()].iter().map(|h| h.to_string()).collect::<Vec<_>>()));
        for r in &rows {
            println!("{}", line(&r.cells[range.clone()]));
        }
    }
    println!("  conn = clients connected (read their first snapshot); 503 = handshakes refused with 503; skip = attempts not made (server refusing);");
    println!(
        "  syn drop = SYNs dropped on fusebox's full admin accept queue while connecting (TcpExt ListenOverflows; 1 s retransmit each)"
    );
    println!(
        "  latencies in ms: last = per transition, the last client's receipt; all = every client's receipt; miss = receipts never seen"
    );
    println!("  KB/cl = fusebox's own RSS per client = total (fusebox + clients, per connected) - client (clients vs the hold server, per client)");
    println!("  echo = RSS per connection of the same clients against a minimal tokio-tungstenite echo server (client + thinnest server session)");
    println!(
        "  fan-out CPU = on-CPU time with the clients minus without, no load, 2 transitions/s (server and client side), % of one core"
    );
    println!(
        "  rps: 6 rounds of 0.5 s without and 0.5 s with the clients, ABBA order; ratio = sum with / sum none (the range shows the noise)"
    );
    for r in &rows {
        println!("{}", r.result);
    }
    println!("total run time {:.1} s", started.elapsed().as_secs_f64());
}

/// Runs this binary as `role` for `n` clients; its stderr goes straight
/// through, its stdout's `DATA k=v ...` line comes back.
fn run_child(role: &str, n: usize) -> Data {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .env(ROLE_ENV, role)
        .env(N_ENV, n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                eprintln!("  [{role} {n}] still running after {CHILD_TIMEOUT:?}: killed");
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let mut data = Data::new();
    for line in out.lines() {
        match line.strip_prefix("DATA ") {
            Some(rest) => {
                for kv in rest.split(' ') {
                    if let Some((k, v)) = kv.split_once('=') {
                        data.insert(k.to_string(), v.to_string());
                    }
                }
            }
            None => println!("{line}"),
        }
    }
    if data.is_empty() {
        eprintln!("  [{role} {n}] no result (exit: {status:?})");
    }
    data
}

const COLUMNS: [&str; 20] = [
    "clients",
    "conn",
    "503",
    "skip",
    "syn drop",
    "last p50",
    "last p99",
    "all p50",
    "all p99",
    "miss",
    "clients",
    "KB/cl",
    "total KB",
    "client KB",
    "echo KB",
    "rps none",
    "rps with",
    "ratio",
    "per-round ratio range",
    "fan-out CPU %",
];
/// The summary prints columns 0..SPLIT, then the rest.
const SPLIT: usize = 10;

struct Row {
    cells: Vec<String>,
    result: String,
}

fn report(n: usize, f: &Data, h: &Data, e: &Data) -> Row {
    let get = |d: &Data, k: &str| d.get(k).cloned().unwrap_or_else(|| "n/a".into());
    let num = |d: &Data, k: &str| d.get(k).and_then(|v| v.parse::<f64>().ok());
    let per = |d: &Data| match (num(d, "rss_delta_kb"), num(d, "connected")) {
        (Some(kb), Some(c)) if c > 0.0 => Some(kb / c),
        _ => None,
    };
    let total = per(f);
    let client = per(h);
    let server = total.zip(client).map(|(t, c)| t - c);
    let fmt = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"));
    let ratio = num(f, "rps_with").zip(num(f, "rps_none")).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
    let ratio = ratio.map_or_else(|| "n/a".into(), |r| format!("{r:.3}"));
    let cells = vec![
        n.to_string(),
        get(f, "connected"),
        get(f, "refused"),
        get(f, "skipped"),
        get(f, "listen_overflows"),
        get(f, "last_p50_ms"),
        get(f, "last_p99_ms"),
        get(f, "all_p50_ms"),
        get(f, "all_p99_ms"),
        get(f, "missed"),
        n.to_string(),
        fmt(server),
        fmt(total),
        fmt(client),
        fmt(per(e)),
        get(f, "rps_none"),
        get(f, "rps_with"),
        ratio.clone(),
        get(f, "rps_rounds"),
        get(f, "fanout_cpu_pct"),
    ];
    let kv = [
        ("connected", 1),
        ("refused", 2),
        ("skipped", 3),
        ("syn_drops", 4),
        ("last_p50_ms", 5),
        ("last_p99_ms", 6),
        ("all_p50_ms", 7),
        ("all_p99_ms", 8),
        ("missed", 9),
        ("rss_per_client_kb", 11),
        ("rss_total_per_client_kb", 12),
        ("rss_client_side_kb", 13),
        ("rss_echo_ref_kb", 14),
        ("rps_none", 15),
        ("rps_with", 16),
        ("rps_ratio", 17),
        ("fanout_cpu_pct_of_core", 19),
    ];
    let fields: Vec<String> = kv.iter().map(|(k, i)| format!("{k}={}", cells[*i])).collect();
    let result = format!("RESULT clients={n} {}", fields.join(" "));
    println!(
        "  memory: fusebox+clients {} KB per connected client, client side (hold) {} KB, echo reference {} KB => fusebox {} KB per client",
        cells[12], cells[13], cells[14], cells[11]
    );
    println!("{result}");
    Row { cells, result }
}

// === scenario: fusebox ===

async fn fusebox_scenario(n: usize) -> Data {
    let mut data = Data::new();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let transitions = env("WS_TRANSITIONS").map_or(20, |v| v as usize);
    let load_conns = env("WS_LOAD_CONNS").map_or(32, |v| v as usize);
    let rounds = env("WS_ROUNDS").map_or(6, |v| (v as usize).max(1));
    // Per condition, split over the rounds.
    let slice = Duration::from_secs_f64(env("WS_LOAD_SECS").unwrap_or(3.0) / rounds as f64);

    let upstream = tiny_upstream().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nshutdown: {{ drainDelay: 0s, gracePeriod: 1s }}\n\
         upstreams:\n  api:\n    endpoints: [http://{upstream}]\n    breaker: {{ jitter: 0 }}\n\
         routes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    );
    let app = App::start(fusebox::config::parse(&yaml).expect("bench config"), None).await.expect("fusebox starts");
    let api: Arc<Upstream> = app.state.store.current().upstreams["api"].clone();
    let metrics = &app.state.store.shared.metrics;
    let url = format!("ws://{}/api/v2/ws/circuit-breaker", app.admin_addr());
    let tag = format!("[fusebox {n}]");
    let _warm_up = load(app.data_addr(), load_conns, Duration::from_millis(500), None).await;

    // Round 0: connect (WS_BATCH at a time), memory, latency.
    let batch = std::env::var("WS_BATCH").ok().and_then(|v| v.parse().ok()).filter(|b| *b > 0).unwrap_or(BATCH);
    let clients = Clients::new(transitions);
    let rss0 = rss_kb();
    let c = connect_all(&url, n, batch, &clients, Some(&tag)).await;
    let rss1 = rss_kb();
    eprintln!(
        "  {tag} RSS {rss0} KB -> {rss1} KB; fusebox counts {} WebSocket clients (/health/websocket; cap 16,384), {} drops so far",
        metrics.websocket_clients.get(),
        metrics.websocket_drops.get()
    );
    data.insert("connected".into(), c.ready.to_string());
    data.insert("refused".into(), c.refused().to_string());
    data.insert("skipped".into(), c.skipped.to_string());
    data.insert("listen_overflows".into(), c.overflows.to_string());
    data.insert("rss_delta_kb".into(), (rss1 as i64 - rss0 as i64).to_string());
    latency(&mut data, &api, &clients, transitions, &tag).await;

    // CPU of the fan-out without load: the process's on-CPU time over 5 s
    // (one periodic snapshot and heartbeat per client) while `api` flips
    // every 500 ms, with the clients and (2 s) without.
    let alive = clients.alive();
    let updates_before = clients.updates.load(Ordering::Relaxed);
    let with_cpu = idle_cpu(&api, Duration::from_secs(5)).await;
    let updates = clients.updates.load(Ordering::Relaxed) - updates_before;
    let closed = clients.close_reasons.lock().unwrap().clone();
    disconnect(&clients, metrics).await;
    let none_cpu = idle_cpu(&api, Duration::from_secs(2)).await;
    let fanout = (with_cpu - none_cpu).max(0.0);
    eprintln!(
        "  {tag} idle CPU while `api` flips every 500 ms: {:.1}% of one core with {alive} clients ({updates} service:update read), {:.1}% without; \
         the fan-out costs {:.1}% of one core ({:.1} us per delivered update, server and client side, periodic snapshots and pings included); \
         client sockets the server had closed by then: {closed:?}",
        with_cpu * 100.0,
        none_cpu * 100.0,
        fanout * 100.0,
        fanout * 5e6 / updates.max(1) as f64,
    );
    data.insert("fanout_cpu_pct".into(), format!("{:.1}", fanout * 100.0));

    // Requests/s in short slices, without and with the clients, in ABBA
    // order (connecting and disconnecting between), so that drift of the
    // shared cores falls on both sides alike. Reconnects go at most 100 at
    // a time (below fusebox's accept backlog of 128), to keep the gaps short.
    let (mut sum_none, mut sum_with) = (0.0, 0.0);
    let mut pairs = Vec::new();
    let mut ratios = Vec::new();
    let mut stats = (0, 0, 0);
    for round in 0..rounds {
        let clients = Clients::new(0);
        let (none, with) = if round % 2 == 0 {
            let none = load(app.data_addr(), load_conns, slice, Some(api.clone())).await;
            connect_all(&url, n, batch.min(100), &clients, None).await;
            let with = load(app.data_addr(), load_conns, slice, Some(api.clone())).await;
            (none, with)
        } else {
            connect_all(&url, n, batch.min(100), &clients, None).await;
            let with = load(app.data_addr(), load_conns, slice, Some(api.clone())).await;
            disconnect(&clients, metrics).await;
            let none = load(app.data_addr(), load_conns, slice, Some(api.clone())).await;
            (none, with)
        };
        let alive = clients.alive();
        disconnect(&clients, metrics).await;
        stats.0 += none.not_ok + with.not_ok;
        stats.1 += none.errors + with.errors;
        stats.2 += clients.closed.load(Ordering::Relaxed);
        sum_none += none.rps();
        sum_with += with.rps();
        ratios.push(with.rps() / none.rps());
        pairs.push(format!("{:.0}/{:.0}@{alive}", none.rps(), with.rps()));
    }
    let ratio = sum_with / sum_none;
    let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let median = pct(&mut ratios, 50.0);
    eprintln!(
        "  {tag} requests/s, {rounds} rounds of {:.1} s each way, none/with@clients: {}; ratio of sums {ratio:.3}, per-round median {median:.3}, \
         range {lo:.3}..{hi:.3}; not-200 answers {}, errors {}, client sockets closed by the server {}; \
         fusebox: {} messages sent, {} drops; RSS {} KB",
        slice.as_secs_f64(),
        pairs.join(" "),
        stats.0,
        stats.1,
        stats.2,
        metrics.websocket_messages.get(),
        metrics.websocket_drops.get(),
        rss_kb()
    );
    data.insert("rps_none".into(), format!("{:.0}", sum_none / rounds as f64));
    data.insert("rps_with".into(), format!("{:.0}", sum_with / rounds as f64));
    data.insert("rps_rounds".into(), format!("{lo:.2}..{hi:.2}"));
    data
}

/// Cores busy (on-CPU seconds per second) over `dur` while `api` flips
/// every 500 ms and nothing else runs but what is connected.
async fn idle_cpu(api: &Arc<Upstream>, dur: Duration) -> f64 {
    let (t0, cpu0) = (Instant::now(), cpu_ns());
    let end = t0 + dur;
    let mut i = 0u64;
    while Instant::now() < end {
        let mode = if i % 2 == 0 { Mode::ForcedClosed } else { Mode::Auto };
        api.circuit.force(mode, None, &format!("idle-{i}"), fusebox::clock::now());
        i += 1;
        sleep(FLIP_EVERY.min(end.saturating_duration_since(Instant::now()))).await;
    }
    if i % 2 == 1 {
        api.circuit.force(Mode::Auto, None, "idle-end", fusebox::clock::now());
    }
    (cpu_ns() - cpu0) as f64 / 1e9 / t0.elapsed().as_secs_f64()
}

/// On-CPU time of every thread of this process, in ns (first field of
/// /proc/self/task/*/schedstat).
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Drops every client and waits until fusebox has let go of them.
async fn disconnect(clients: &Clients, metrics: &fusebox::telemetry::Metrics) {
    clients.disconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.websocket_clients.get() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
}

/// `transitions` transitions of `api` (forced-open, auto, ...), each timed
/// from just before `Circuit::force` to every client's receipt.
async fn latency(data: &mut Data, api: &Upstream, clients: &Clients, transitions: usize, tag: &str) {
    let mut starts = Vec::with_capacity(transitions);
    let mut incomplete = 0;
    let connected = clients.alive();
    for k in 0..transitions {
        let mode = if k % 2 == 0 { Mode::ForcedOpen } else { Mode::Auto };
        let expected = clients.alive();
        let t0 = Instant::now();
        starts.push(t0);
        api.circuit.force(mode, None, &format!("fanout-{k}"), fusebox::clock::now());
        let deadline = t0 + TRANSITION_TIMEOUT;
        while clients.received[k].load(Ordering::Acquire) < expected && Instant::now() < deadline {
            sleep(Duration::from_millis(1)).await;
        }
        if clients.received[k].load(Ordering::Acquire) < expected {
            incomplete += 1;
        }
        let next = (t0 + SPACING).max(Instant::now() + Duration::from_millis(150));
        tokio::time::sleep_until(next).await;
    }
    sleep(Duration::from_millis(200)).await;
    let receipts = std::mem::take(&mut *clients.receipts.lock().unwrap());
    let mut all = Vec::with_capacity(receipts.len());
    let mut last = vec![None::<f64>; transitions];
    for (k, at) in receipts {
        let ms = at.saturating_duration_since(starts[k]).as_secs_f64() * 1e3;
        all.push(ms);
        last[k] = Some(last[k].map_or(ms, |m: f64| m.max(ms)));
    }
    let missed = (connected * transitions).saturating_sub(all.len());
    let mut last: Vec<f64> = last.into_iter().flatten().collect();
    let (lp50, lp99) = (pct(&mut last, 50.0), pct(&mut last, 99.0));
    let (ap50, ap99) = (pct(&mut all, 50.0), pct(&mut all, 99.0));
    eprintln!(
        "  {tag} {transitions} transitions to {connected} clients: last-client p50 {lp50:.2} ms p99 {lp99:.2} ms (max {:.2}); \
         all receipts p50 {ap50:.2} ms p99 {ap99:.2} ms (max {:.2}); {} receipts, {missed} missed, {incomplete} transitions not complete within {TRANSITION_TIMEOUT:?}",
        last.last().copied().unwrap_or(f64::NAN),
        all.last().copied().unwrap_or(f64::NAN),
        all.len(),
    );
    data.insert("last_p50_ms".into(), format!("{lp50:.2}"));
    data.insert("last_p99_ms".into(), format!("{lp99:.2}"));
    data.insert("all_p50_ms".into(), format!("{ap50:.2}"));
    data.insert("all_p99_ms".into(), format!("{ap99:.2}"));
    data.insert("missed".into(), missed.to_string());
}

// === scenarios: reference servers for the client-side cost ===

async fn reference_scenario(n: usize, echo: bool) -> Data {
    let tag = format!("[{} {n}]", if echo { "echo" } else { "hold" });
    let listener = listen_long("127.0.0.1:0");
    let addr = listener.local_addr().expect("addr");
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let server_held = held.clone();
    let accept_errors: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let server_errors = accept_errors.clone();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    *server_errors.lock().unwrap().entry(e.to_string()).or_default() += 1;
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let held = server_held.clone();
            tokio::spawn(async move {
                if echo {
                    echo_session(stream).await;
                } else if let Some(stream) = hold_handshake(stream).await {
                    held.lock().unwrap().push(stream);
                }
            });
        }
    });
    let clients = Clients::new(0);
    let rss0 = rss_kb();
    let c = connect_all(&format!("ws://{addr}/"), n, BATCH, &clients, Some(&tag)).await;
    let rss1 = rss_kb();
    eprintln!(
        "  {tag} RSS {rss0} KB -> {rss1} KB: {:.1} KB per client; server accept errors {:?}",
        (rss1 as f64 - rss0 as f64) / c.ready.max(1) as f64,
        accept_errors.lock().unwrap()
    );
    let mut data = Data::new();
    data.insert("connected".into(), c.ready.to_string());
    data.insert("rss_delta_kb".into(), (rss1 as i64 - rss0 as i64).to_string());
    data
}

/// A minimal tokio-tungstenite server session: a snapshot-like first
/// message, then echo.
async fn echo_session(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    use futures_util::SinkExt;
    if ws.send(Message::Text(FAKE_SNAPSHOT.into())).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// Completes the WebSocket handshake by hand, sends one text frame and
/// hands back the bare socket, so holding a connection costs the server
/// next to nothing.
async fn hold_handshake(mut stream: TcpStream) -> Option<TcpStream> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_string())
    })?;
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    out.extend_from_slice(&[0x81, FAKE_SNAPSHOT.len() as u8]);
    out.extend_from_slice(FAKE_SNAPSHOT.as_bytes());
    stream.write_all(&out).await.ok()?;
    Some(stream)
}

// === clients ===

/// What every client reports.
struct Clients {
    /// Clients that read their first `services:state`.
    ready: AtomicUsize,
    /// Clients whose socket has ended since.
    closed: AtomicUsize,
    close_reasons: Mutex<HashMap<String, usize>>,
    /// Per measured transition: clients that have its update.
    received: Vec<AtomicUsize>,
    /// (transition, when a client read its update).
    receipts: Mutex<Vec<(usize, Instant)>>,
    /// Every `service:update` read.
    updates: AtomicUsize,
    /// The reader tasks, to disconnect everyone.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Clients {
    fn new(transitions: usize) -> Arc<Clients> {
        Arc::new(Clients {
            ready: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            close_reasons: Mutex::default(),
            received: (0..transitions).map(|_| AtomicUsize::new(0)).collect(),
            receipts: Mutex::new(Vec::new()),
            updates: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Drops every client's socket.
    fn disconnect(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn alive(&self) -> usize {
        self.ready.load(Ordering::Acquire).saturating_sub(self.closed.load(Ordering::Acquire))
    }

    fn ended(&self, why: String) {
        self.closed.fetch_add(1, Ordering::AcqRel);
        *self.close_reasons.lock().unwrap().entry(why).or_default() += 1;
    }

    /// One `service:update`: which measured transitions it carries (their
    /// detail is `operator: fanout-<k>`; a coalesced update lists several).
    fn on_update(&self, text: &str, at: Instant) {
        self.updates.fetch_add(1, Ordering::Relaxed);
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let data = &v["data"];
        let list: Vec<&Value> = match data["transitions"].as_array() {
            Some(ts) => ts.iter().collect(),
            None => vec![&data["transition"]],
        };
        for t in list {
            let k = t["detail"].as_str().and_then(|d| d.strip_prefix("operator: fanout-")).and_then(|k| k.parse::<usize>().ok());
            if let Some(k) = k.filter(|k| *k < self.received.len()) {
                self.receipts.lock().unwrap().push((k, at));
                self.received[k].fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

#[derive(Default)]
struct Connected {
    ready: usize,
    /// Handshakes answered with an HTTP status instead of 101, by status.
    http: BTreeMap<u16, usize>,
    /// Other failures, by message.
    failed: BTreeMap<String, usize>,
    /// Attempts not made: the server had refused two whole batches.
    skipped: usize,
    /// SYNs dropped on a full accept queue while connecting.
    overflows: u64,
}

impl Connected {
    fn refused(&self) -> usize {
        self.http.values().sum::<usize>() + self.failed.values().sum::<usize>()
    }
}

enum Outcome {
    Open,
    Http(u16),
    Failed(String),
}

/// Connects `n` clients, `BATCH` handshakes at a time, and waits until each
/// open one has read its first snapshot.
async fn connect_all(url: &str, n: usize, batch_size: usize, clients: &Arc<Clients>, tag: Option<&str>) -> Connected {
    let started = Instant::now();
    let overflows = listen_overflows();
    let mut c = Connected::default();
    let mut open = 0;
    let mut done = 0;
    let mut refused_batches = 0;
    while done < n {
        let batch = batch_size.min(n - done);
        let handles: Vec<_> = (0..batch).map(|_| tokio::spawn(connect_one(url.to_string(), clients.clone()))).collect();
        let mut opened = 0;
        for h in handles {
            match h.await {
                Ok(Outcome::Open) => opened += 1,
                Ok(Outcome::Http(s)) => *c.http.entry(s).or_default() += 1,
                Ok(Outcome::Failed(e)) => *c.failed.entry(e).or_default() += 1,
                Err(e) => *c.failed.entry(format!("task: {e}")).or_default() += 1,
            }
        }
        open += opened;
        done += batch;
        // The server refuses every new client: more attempts only add noise
        // (and memory from the refused handshakes) to what is measured.
        refused_batches = if opened == 0 { refused_batches + 1 } else { 0 };
        if refused_batches == 2 && done < n {
            c.skipped = n - done;
            break;
        }
    }
    let handshakes = started.elapsed();
    let overflows = listen_overflows().zip(overflows).map(|(a, b)| a - b);
    let deadline = Instant::now() + READY_TIMEOUT;
    while clients.ready.load(Ordering::Acquire) + clients.closed.load(Ordering::Acquire) < open && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    c.ready = clients.ready.load(Ordering::Acquire);
    c.overflows = overflows.unwrap_or(0);
    let Some(tag) = tag else {
        return c;
    };
    let attempts = n - c.skipped;
    eprintln!(
        "  {tag} {attempts} connection attempts ({batch_size} at a time) in {:.2} s ({} handshakes/s): {open} open, {} with their first snapshot after {:.2} s; \
         refused by HTTP status {:?}; failed {:?}; skipped {} (two whole batches refused); SYNs dropped on a full accept queue \
         (TcpExt ListenOverflows) meanwhile: {}",
        handshakes.as_secs_f64(),
        (attempts as f64 / handshakes.as_secs_f64()) as u64,
        c.ready,
        started.elapsed().as_secs_f64(),
        c.http,
        c.failed,
        c.skipped,
        overflows.map_or_else(|| "n/a".to_string(), |o| o.to_string()),
    );
    c
}

async fn connect_one(url: String, clients: Arc<Clients>) -> Outcome {
    match timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => {
            let tasks = clients.clone();
            let task = tokio::spawn(async move {
                let mut ws = ws;
                let mut ready = false;
                let why = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let at = Instant::now();
                            if !ready {
                                if t.contains("\"services:state\"") {
                                    ready = true;
                                    clients.ready.fetch_add(1, Ordering::AcqRel);
                                }
                            } else if t.contains("\"service:update\"") {
                                clients.on_update(&t, at);
                            }
                        }
                        Some(Ok(Message::Close(f))) => break format!("close {}", f.map_or(0, |f| u16::from(f.code))),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break format!("error {e}"),
                        None => break "eof".to_string(),
                    }
                };
                if ready {
                    clients.ended(why);
                }
            });
            tasks.tasks.lock().unwrap().push(task.abort_handle());
            Outcome::Open
        }
        Ok(Err(WsError::Http(resp))) => Outcome::Http(resp.status().as_u16()),
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(_) => Outcome::Failed("handshake_timeout".into()),
    }
}

// === data path load ===

struct Load {
    ok: usize,
    not_ok: usize,
    errors: usize,
    elapsed: Duration,
}

impl Load {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `conns` keep-alive HTTP/1.1 connections sending GETs back to back for
/// `dur`; meanwhile `flip` (if any) alternates forced-closed and auto every
/// 500 ms.
async fn load(addr: std::net::SocketAddr, conns: usize, dur: Duration, flip: Option<Arc<Upstream>>) -> Load {
    let start = Instant::now();
    let end = start + dur;
    let flipper = flip.map(|up| {
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                let mode = if i % 2 == 0 { Mode::ForcedClosed } else { Mode::Auto };
                up.circuit.force(mode, None, &format!("load-{i}"), fusebox::clock::now());
                i += 1;
                sleep(FLIP_EVERY).await;
                if Instant::now() >= end && i % 2 == 0 {
                    return;
                }
            }
        })
    });
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(async move {
                let (mut ok, mut not_ok, mut errors) = (0, 0, 0);
                'outer: while Instant::now() < end {
                    let Ok(stream) = TcpStream::connect(addr).await else {
                        errors += 1;
                        sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
                    else {
                        errors += 1;
                        continue;
                    };
                    tokio::spawn(conn);
                    while Instant::now() < end {
                        let req = Request::get("/bench").header(http::header::HOST, "bench").body(Empty::new()).expect("request");
                        if sender.ready().await.is_err() {
                            errors += 1;
                            continue 'outer;
                        }
                        match sender.send_request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                if resp.into_body().collect().await.is_err() {
                                    errors += 1;
                                    continue 'outer;
                                }
                                if status == StatusCode::OK {
                                    ok += 1;
                                } else {
                                    not_ok += 1;
                                }
                            }
                            Err(_) => {
                                errors += 1;
                                continue 'outer;
                            }
                        }
                    }
                }
                (ok, not_ok, errors)
            })
        })
        .collect();
    let mut total = Load { ok: 0, not_ok: 0, errors: 0, elapsed: Duration::ZERO };
    for w in workers {
        if let Ok((ok, not_ok, errors)) = w.await {
            total.ok += ok;
            total.not_ok += not_ok;
            total.errors += errors;
        }
    }
    total.elapsed = start.elapsed();
    if let Some(f) = flipper {
        let _ = f.await;
    }
    total
}

/// A tiny upstream: `200 ok` to everything (HTTP/1.1 and h2c).
async fn tiny_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

// === helpers ===

/// Resident set size of this process, in KB (VmRSS of /proc/self/status).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())))
        .unwrap_or(0)
}

/// TcpExt ListenOverflows of this network namespace (/proc/net/netstat):
/// connections dropped because a listener's accept queue was full.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// A listener with a long accept queue (tokio's `bind` asks for 128), so the
/// reference servers do not drop SYNs while N clients connect at once.
fn listen_long(addr: &str) -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr.parse().expect("addr")).expect("bind");
    socket.listen(4096).expect("listen")
}

/// Nearest-rank percentile (sorts `v`); NaN when empty.
fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
