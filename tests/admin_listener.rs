//! The admin listener under abuse, over real sockets: it has the data
//! listener's deadlines (`client.headerTimeout`, `client.idleTimeout`),
//! and a flood of idle keep-alive admin connections at a 1,024-descriptor
//! limit (the real binary under `prlimit`) starves neither the data port
//! nor a fresh `/livez`.
//!
//! Must not: leave processes behind, or depend on timing tighter than a
//! second.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::process::Process;
use support::{client, fusebox, upstream, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Reads until the peer closes; how long that took, None if it stayed open
/// for `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn admin_connections_get_the_client_header_and_idle_timeouts() {
    let up = upstream("api").await;
    let app = fusebox(&format!(
        "client: {{ headerTimeout: 1s, idleTimeout: 1s }}\nupstreams:\n  api:\n    endpoints: [{}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    ))
    .await;
    let admin = app.admin_addr();

    // Idle keep-alive: one request, then nothing.
    let mut idle = TcpStream::connect(admin).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(took.is_some(), "an idle admin connection is closed after client.idleTimeout");
    assert!(took.unwrap() >= Duration::from_millis(900), "not before the idle timeout: {took:?}");

    // A head that never ends.
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.").await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(3)), "an unfinished admin head is closed after client.headerTimeout: {took:?}");
}

/// A GET that must answer within 2 s.
async fn answers(c: &TestClient, url: &str) -> Option<StatusCode> {
    match timeout(Duration::from_secs(2), c.get(url.parse().unwrap())).await {
        Ok(Ok(resp)) => Some(resp.status()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_at_a_1024_descriptor_limit_starves_neither_the_data_port_nor_livez() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        println!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    // This process needs more than the flood's 1,100 descriptors itself.
    let _ = rlimit::increase_nofile_limit(8192);
    let up = upstream("api").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nworkers: 1\nadmin: {{ listen: 127.0.0.1:0 }}\nauth: none\nupstreams:\n  api:\n    endpoints: [{}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n",
        up.url()
    );
    let fb = Process::start("admin-flood", &yaml, &["prlimit", "--nofile=1024:1024", "--"]);
    let c = client();
    let data = format!("http://{}/api", fb.data);
    let livez = format!("http://{}/livez", fb.admin);
    assert_eq!(answers(&c, &data).await, Some(StatusCode::OK));

    // 1,100 keep-alive admin connections, each after one unauthenticated
    // GET /livez, all kept open.
    let mut flood = Vec::with_capacity(1100);
    for _ in 0..1100 {
        let mut s = TcpStream::connect(fb.admin).await.expect("the kernel accepts into the backlog");
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        flood.push(s);
    }
    // While they are open, the data port and a fresh /livez keep answering.
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(answers(&c, &data).await, Some(StatusCode::OK), "data port during an admin flood:\n{}", fb.log_text());
        assert_eq!(answers(&client(), &livez).await, Some(StatusCode::OK), "fresh /livez during an admin flood:\n{}", fb.log_text());
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = fb.log_text();
    assert!(!log.contains("accept failed"), "no accept ran out of descriptors:\n{log}");
    println!("{rounds} rounds of data + fresh /livez answered with 1,100 admin connections open");
    drop(flood);
}
