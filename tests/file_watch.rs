//! The config watcher against files an operator (or an attacker with write
//! access to the config directory) can put at the config path, with
//! `fusebox run` as a real process: a FIFO, a symlink to `/dev/zero` and a
//! 200 MB file are refused without blocking or growing the process; a
//! config rewritten slowly in place is applied once and only whole, under
//! traffic; a file rewritten without pause is still reloaded.
//!
//! Must not: leave processes or files behind, or depend on timing tighter
//! than the watcher's own second-scale windows.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::process::Process;
use support::{client, get, upstream, TestClient};
use tokio::time::{timeout, Instant};

/// A config with one upstream and a route per prefix in `routes`, one line
/// each, so a file cut at a line boundary is still valid YAML.
fn config(up: &str, routes: &[&str]) -> String {
    let mut text = format!(
        "listen: 127.0.0.1:0\nworkers: 2\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nupstreams:\n  api:\n    endpoints: [{up}]\nroutes:\n"
    );
    for r in routes {
        text.push_str(&format!("  - {{ match: {{ pathPrefix: {r} }}, upstream: api }}\n"));
    }
    text
}

/// A GET that must answer within `limit`; None on timeout or error.
async fn get_within(c: &TestClient, url: &str, limit: Duration) -> Option<StatusCode> {
    match timeout(limit, c.get(url.parse().unwrap())).await {
        Ok(Ok(resp)) => Some(resp.status()),
        _ => None,
    }
}

/// The reloads counted so far with `result`.
async fn reloads(c: &TestClient, fb: &Process, result: &str) -> u64 {
    let (_, _, text) = get(c, &format!("http://{}/metrics", fb.admin)).await;
    let key = format!("fusebox_config_reloads_total{{result=\"{result}\"}}");
    text.lines().find_map(|l| l.strip_prefix(key.as_str())).and_then(|v| v.trim().parse::<f64>().ok()).map_or(0, |v| v as u64)
}

/// Polls `/health/detailed` until the last reload error contains `needle`.
async fn reload_error_mentions(c: &TestClient, fb: &Process, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if let Some(StatusCode::OK) = get_within(c, &format!("http://{}/livez", fb.admin), Duration::from_secs(2)).await {
            let (_, _, body) = get(c, &format!("http://{}/health/detailed", fb.admin)).await;
            if body.contains(needle) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Puts a valid config back at the path by an atomic rename.
fn restore(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// For 3 s (longer than the watcher takes to look at a file), every data
/// request and every `/livez` answers within 2 s.
async fn keeps_serving(c: &TestClient, fb: &Process, what: &str) {
    let data = format!("http://{}/api/x", fb.data);
    let livez = format!("http://{}/livez", fb.admin);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(get_within(c, &data, Duration::from_secs(2)).await, Some(StatusCode::OK), "data port with {what} at the config path");
        assert_eq!(get_within(c, &livez, Duration::from_secs(2)).await, Some(StatusCode::OK), "admin port with {what} at the config path");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_a_dev_zero_symlink_or_a_huge_file_at_the_config_path_is_refused_without_blocking_or_growing() {
    let up = upstream("api").await;
    let good = config(&up.url(), &["/api"]);
    let fb = Process::start("watch-special", &good, &[]);
    let c = client();
    let path = fb.config_path().to_path_buf();
    let rss_before = fb.rss_kib().unwrap_or(0);

    // A FIFO: the process used to hang in open(2) on a runtime thread.
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&path).status().map(|s| s.success()).unwrap_or(false);
    assert!(made, "mkfifo");
    keeps_serving(&c, &fb, "a FIFO").await;
    assert!(reload_error_mentions(&c, &fb, "not a regular file (a FIFO)").await, "the refused FIFO is reported:\n{}", fb.log_text());
    // SIGHUP reads it too, and must not hang either.
    fb.signal("-HUP");
    keeps_serving(&c, &fb, "a FIFO after SIGHUP").await;
    restore(&path, &good);

    // A symlink to /dev/zero: the process used to read until allocation failed.
    let zero = fb.dir.join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::rename(&zero, &path).unwrap();
    keeps_serving(&c, &fb, "/dev/zero").await;
    assert!(reload_error_mentions(&c, &fb, "not a regular file (a character device)").await, "/dev/zero is reported");
    restore(&path, &good);

    // A 200 MB file (sparse: cheap to make, 200 MB to read).
    let big = fb.dir.join("big.yaml");
    std::fs::File::create(&big).unwrap().set_len(200 * 1024 * 1024).unwrap();
    std::fs::rename(&big, &path).unwrap();
    keeps_serving(&c, &fb, "a 200 MB file").await;
    assert!(reload_error_mentions(&c, &fb, "more than the 1 MiB allowed").await, "the huge file is reported");

    let rss_after = fb.rss_kib().unwrap_or(0);
    assert!(rss_after < rss_before + 50 * 1024, "nothing of the refused files is kept: RSS {rss_before} KiB before, {rss_after} KiB after");
    // And a valid file is picked up again.
    restore(&path, &config(&up.url(), &["/api", "/back"]));
    let back = format!("http://{}/back", fb.data);
    let deadline = Instant::now() + Duration::from_secs(8);
    while get_within(&c, &back, Duration::from_secs(2)).await != Some(StatusCode::OK) {
        assert!(Instant::now() < deadline, "the valid config is reloaded after the refused ones");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `text` to `path` in place, a line at a time with `pause` after
/// each line: with one open file (a program writing line by line) or, with
/// `append_each`, reopening the file for each line (`echo ... >> file`).
fn slow_write(path: &Path, text: &str, pause: Duration, append_each: bool) {
    if append_each {
        std::fs::File::create(path).unwrap();
        for line in text.split_inclusive('\n') {
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(line.as_bytes()).unwrap();
            drop(f);
            std::thread::sleep(pause);
        }
    } else {
        let mut f = std::fs::File::create(path).unwrap();
        for line in text.split_inclusive('\n') {
            f.write_all(line.as_bytes()).unwrap();
            f.flush().unwrap();
            std::thread::sleep(pause);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_written_slowly_in_place_is_applied_once_and_only_whole_under_traffic() {
    let up = upstream("api").await;
    let before = config(&up.url(), &["/a", "/b", "/c", "/d"]);
    let fb = Process::start("watch-slow", &before, &[]);
    let c = client();
    let path = fb.config_path().to_path_buf();

    for (round, append_each) in [(1, false), (2, true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let traffic = {
            let (stop, bad, sent, c) = (stop.clone(), bad.clone(), sent.clone(), c.clone());
            let base = format!("http://{}", fb.data);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for p in ["/a", "/b", "/c", "/d"] {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if get_within(&c, &format!("{base}{p}"), Duration::from_secs(2)).await != Some(StatusCode::OK) {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        let ok_before = reloads(&c, &fb, "success").await;
        // The next version keeps every route and adds one: any request that
        // fails saw a half-written file.
        let marker = format!("/new{round}");
        let next = config(&up.url(), &["/a", "/b", "/c", "/d", marker.as_str()]);
        let writer_path = path.clone();
        tokio::task::spawn_blocking(move || slow_write(&writer_path, &next, Duration::from_millis(250), append_each)).await.unwrap();
        let url = format!("http://{}{marker}", fb.data);
        let deadline = Instant::now() + Duration::from_secs(8);
        while get_within(&c, &url, Duration::from_secs(2)).await != Some(StatusCode::OK) {
            assert!(Instant::now() < deadline, "round {round}: the whole new config is applied once written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        traffic.await.unwrap();
        let (sent, bad) = (sent.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
        let applied = reloads(&c, &fb, "success").await - ok_before;
        println!("round {round} (append per line: {append_each}): {sent} requests, {bad} failed, {applied} reload(s) applied");
        assert_eq!(bad, 0, "round {round}: no request saw a half-written config ({sent} sent)");
        assert_eq!(applied, 1, "round {round}: one reload for one new version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_every_100ms_is_still_reloaded_while_the_writes_go_on() {
    let up = upstream("api").await;
    let fb = Process::start("watch-busy", &config(&up.url(), &["/a"]), &[]);
    let c = client();
    let path = fb.config_path().to_path_buf();
    let next = config(&up.url(), &["/a", "/busy"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(&path, &next).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let url = format!("http://{}/busy", fb.data);
    let mut applied = false;
    while started.elapsed() < Duration::from_secs(8) {
        if get_within(&c, &url, Duration::from_secs(2)).await == Some(StatusCode::OK) {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(applied, "a file rewritten every 100 ms is reloaded while the writes go on:\n{}", fb.log_text());
    println!("applied {took:?} after the rewrites began");
    assert!(took < Duration::from_secs(5), "within a few seconds: {took:?}");
}
