//! Data-path workers (`workers: N` in `fusebox run`): each a thread with its
//! own runtime and its own `SO_REUSEPORT` listener on the data address.
//! Circuits stay one per upstream whatever worker a request lands on: a
//! trip happens after exactly `failureThreshold` failures in a row across
//! all of them.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{get, one_upstream, upstream};

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok()).map(|n| n.trim().to_string()).collect()
}

/// A client that opens a new connection for every request, so the kernel
/// spreads them over the workers' listeners.
fn fresh_client() -> support::TestClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).pool_max_idle_per_host(0).build_http()
}

async fn start(yaml: &str, workers: usize) -> fusebox::App {
    let text = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nshutdown: {{ drainDelay: 0s, gracePeriod: 1s }}\n{yaml}"
    );
    let config = fusebox::config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    fusebox::App::start_workers(config, None, workers).await.expect("fusebox starts with workers")
}

#[tokio::test]
async fn workers_share_one_circuit_serve_every_connection_and_end_at_shutdown() {
    let up = upstream("api").await;
    let app = start(&one_upstream(&up.url(), "failureThreshold: 7, resetTimeout: 60s"), 3).await;
    let names = thread_names();
    assert!(names.iter().any(|n| n == "fusebox-data-1"), "{names:?}");
    assert!(names.iter().any(|n| n == "fusebox-data-2"), "{names:?}");

    let c = fresh_client();
    let url = format!("http://{}/x", app.data_addr());
    for i in 0..20 {
        assert_eq!(get(&c, &url).await.0, StatusCode::OK, "request {i}");
    }
    up.set_status(500);
    for i in 0..7 {
        assert_eq!(get(&c, &url).await.0, StatusCode::INTERNAL_SERVER_ERROR, "failure {i} passes through");
    }
    for i in 0..10 {
        assert_eq!(get(&c, &url).await.0, StatusCode::SERVICE_UNAVAILABLE, "request {i} after the 7th failure fails fast");
    }
    assert_eq!(up.hits(), 27, "nothing reached the upstream once the circuit opened, whichever worker took the request");

    app.shutdown().await;

    // (In the same test: tests of one file share the process, and this one
    // counts the worker threads.)
    let up = upstream("api").await;
    let app = start(&one_upstream(&up.url(), "failureThreshold: 5"), 2).await;
    let url = format!("http://{}/y", app.data_addr());
    // Many clients at once, each on its own connections.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = fresh_client();
            for _ in 0..5 {
                let (s, _, body) = get(&c, &url).await;
                assert_eq!((s, body.as_str()), (StatusCode::OK, "api /y"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(up.hits(), 80);
    let keep_alive = support::client();
    for _ in 0..5 {
        assert_eq!(get(&keep_alive, &url).await.0, StatusCode::OK);
    }
    tokio::time::timeout(Duration::from_secs(10), app.shutdown()).await.expect("shutdown with workers ends");
    let left: Vec<String> = thread_names().into_iter().filter(|n| n.starts_with("fusebox-data-")).collect();
    assert!(left.is_empty(), "worker threads end at shutdown: {left:?}");
}
