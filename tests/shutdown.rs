//! Graceful shutdown of the real binary on SIGTERM: `/readyz` fails at once,
//! a slow request in flight completes, new connections are refused after
//! the drain delay, and the process exits 0 within the grace period; a
//! second signal exits at once.

// This test talks to a separate process on the wall clock: tokio time is
// never paused here, and std time is what the child sees too.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as StdInstant};

use support::{client, get, upstream};

struct Fusebox {
    child: Child,
    data: SocketAddr,
    admin: SocketAddr,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts `fusebox run` on a temp config and reads the bound addresses from
/// its JSON "ready" log line.
fn spawn(upstream_url: &str, drain: &str, grace: &str) -> Fusebox {
    let dir = std::env::temp_dir().join(format!("fusebox-shutdown-{}-{}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fusebox.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nshutdown: {{ drainDelay: {drain}, gracePeriod: {grace} }}\nupstreams:\n  api:\n    endpoints: [{upstream_url}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["--log-format", "json", "run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let (Some(d), Some(a)) = (v["data"].as_str(), v["admin"].as_str()) {
                    let _ = tx.send((d.parse().unwrap(), a.parse().unwrap()));
                }
            }
        }
    });
    let (data, admin) = rx.recv_timeout(Duration::from_secs(20)).expect("fusebox logs its addresses");
    Fusebox { child, data, admin, _dir: tempdir::Dir(dir) }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

/// Waits for the process to exit, at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = StdInstant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = upstream("slow").await;
    up.set_delay(Duration::from_millis(1500));
    let mut fb = spawn(&up.url(), "500ms", "10s");
    let url = format!("http://{}/slow", fb.data);
    let slow = tokio::spawn(async move { get(&client(), &url).await });
    // Wait until the slow request is at the upstream.
    let start = StdInstant::now();
    while up.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent_at = StdInstant::now();
    signal(&fb.child, "-TERM");

    // /readyz fails at once (the admin listener stays up during the drain).
    let readyz = format!("http://{}/readyz", fb.admin);
    let c = client();
    let mut not_ready = false;
    while sent_at.elapsed() < Duration::from_millis(400) {
        if get(&c, &readyz).await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_ready, "readyz still 200 during the drain");

    // After the drain delay, new connections are refused.
    let mut refused = false;
    while sent_at.elapsed() < Duration::from_secs(3) {
        if tokio::net::TcpStream::connect(fb.data).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting after the drain delay");
    assert!(sent_at.elapsed() >= Duration::from_millis(450), "stopped accepting before the drain delay");

    // The request in flight completes.
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slow /slow"));
    let code = wait_exit(&mut fb.child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code after a graceful drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let up = upstream("slow").await;
    up.set_delay(Duration::from_secs(20));
    let mut fb = spawn(&up.url(), "0s", "30s");
    let url = format!("http://{}/slow", fb.data);
    let _slow = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    let start = StdInstant::now();
    while up.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&fb.child, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fb.child.try_wait().unwrap().is_none(), "still draining the 20 s request");
    let second = StdInstant::now();
    signal(&fb.child, "-INT");
    let code = wait_exit(&mut fb.child, Duration::from_secs(3));
    assert!(code.is_some(), "did not exit after the second signal");
    assert_ne!(code, Some(0), "a forced exit is not a clean one");
    assert!(second.elapsed() < Duration::from_secs(3));
}
