//! `fusebox demo`: three built-in upstreams on loopback (healthy, flaky in
//! bursts, slow in phases), the proxy in front of them on an embedded
//! config, and a traffic generator, so a new user sees circuits trip, open,
//! probe and close within a minute. Demo-only code: nothing here is used by
//! `fusebox run`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{self, ConfigErrors};
use crate::{app, clock, App};

/// The embedded demo config; `{HEALTHY}` etc. become the demo upstreams'
/// addresses, `{LISTEN}` and `{ADMIN}` the listeners.
pub const DEMO_CONFIG: &str = r#"
listen: {LISTEN}
admin: { listen: {ADMIN} }
auth: none
shutdown: { drainDelay: 0s, gracePeriod: 5s }
defaults:
  breaker:
    failureThreshold: 5
    failureRateThreshold: 50
    minimumRequestCount: 10
    monitoringWindow: 10s
    slowCallDuration: 1s
    slowCallRateThreshold: 60
    resetTimeout: 5s
    maxResetTimeout: 40s
    jitter: 0.1
    halfOpenRequests: 1
    minHealthyPeriod: 15s
  timeouts: { connect: 1s, request: 5s }
upstreams:
  catalog:
    endpoints: [http://{HEALTHY}]
  payments:
    endpoints: [http://{FLAKY}]
    fallback:
      status: 503
      headers: { content-type: application/json }
      body: '{"error":"payments are unavailable, try again shortly"}'
  search:
    endpoints: [http://{SLOW}]
    breaker: { recoveryRamp: 10s }
routes:
  - { match: { pathPrefix: /catalog }, upstream: catalog }
  - { match: { pathPrefix: /payments }, upstream: payments }
  - { match: { pathPrefix: /search }, upstream: search }
"#;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a demo upstream: {0}")]
    Io(#[from] std::io::Error),
    #[error("the embedded demo config is invalid: {0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    App(#[from] app::AppError),
}

#[derive(Clone, Copy)]
enum Behaviour {
    Healthy,
    /// 20 s of successes, then 10 s of 500s.
    Flaky,
    /// 25 s at 30 ms, then 15 s at 1.5 s per response.
    Slow,
}

/// Runs the demo until Ctrl-C (or `duration`).
pub async fn run(listen: SocketAddr, admin: SocketAddr, duration: Option<Duration>) -> Result<(), DemoError> {
    let started = tokio::time::Instant::now();
    let healthy = spawn_upstream(Behaviour::Healthy, started).await?;
    let flaky = spawn_upstream(Behaviour::Flaky, started).await?;
    let slow = spawn_upstream(Behaviour::Slow, started).await?;
    let text = DEMO_CONFIG
        .replace("{LISTEN}", &listen.to_string())
        .replace("{ADMIN}", &admin.to_string())
        .replace("{HEALTHY}", &healthy.to_string())
        .replace("{FLAKY}", &flaky.to_string())
        .replace("{SLOW}", &slow.to_string());
    let config = config::parse(&text)?;
    let app = App::start(config, None).await?;
    let data = app.data_addr();
    tracing::info!(
        "demo upstreams: catalog (healthy) {healthy}, payments (fails 10 s of every 30 s) {flaky}, search (slow 15 s of every 40 s) {slow}"
    );
    tracing::info!(
        "try: curl -i http://{data}/payments/charge   |   health: http://{}/health/circuit-breakers   |   metrics: http://{}/metrics",
        app.admin_addr(),
        app.admin_addr()
    );
    tracing::info!("dashboard: http://{}/dashboard", app.admin_addr());
    tracing::info!("sending ~10 requests/s to each route; circuit transitions are logged below");
    let traffic = tokio::spawn(traffic(data));
    match duration {
        Some(d) => {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = app::until_signal(&app) => {}
            }
        }
        None => app::until_signal(&app).await,
    }
    traffic.abort();
    app.shutdown().await;
    Ok(())
}

async fn spawn_upstream(behaviour: Behaviour, started: tokio::time::Instant) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| respond(behaviour, started, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

async fn respond(
    behaviour: Behaviour,
    started: tokio::time::Instant,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let t = started.elapsed().as_secs();
    let (status, delay, body) = match behaviour {
        Behaviour::Healthy => (StatusCode::OK, 5, "catalog: ok\n"),
        Behaviour::Flaky if t % 30 >= 20 => (StatusCode::INTERNAL_SERVER_ERROR, 5, "payments: database unavailable\n"),
        Behaviour::Flaky => (StatusCode::OK, 10, "payments: charged\n"),
        Behaviour::Slow if t % 40 >= 25 => (StatusCode::OK, 1500, "search: results (slowly)\n"),
        Behaviour::Slow => (StatusCode::OK, 30, "search: results\n"),
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    Ok(resp)
}

/// ~10 requests/s per route, at most 64 in flight, with a summary every 5 s.
async fn traffic(data: SocketAddr) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let limit = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let counts = Arc::new(std::sync::Mutex::new([[0u32; 3]; 3]));
    let mut last_report = clock::now();
    loop {
        tick.tick().await;
        for (i, route) in ["/catalog/items", "/payments/charge", "/search?q=fuse"].into_iter().enumerate() {
            let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
            let client = client.clone();
            let counts = counts.clone();
            let Ok(uri) = format!("http://{data}{route}").parse::<http::Uri>() else { continue };
            tokio::spawn(async move {
                let _permit = permit;
                let class = match client.get(uri).await {
                    Ok(resp) => {
                        let rejected = resp.headers().contains_key("x-fusebox-circuit");
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            0
                        } else if rejected {
                            2
                        } else {
                            1
                        }
                    }
                    Err(_) => 1,
                };
                if let Ok(mut c) = counts.lock() {
                    c[i][class] += 1;
                }
            });
        }
        if clock::now().saturating_duration_since(last_report) >= Duration::from_secs(5) {
            last_report = clock::now();
            if let Ok(mut c) = counts.lock() {
                let line = ["catalog", "payments", "search"]
                    .iter()
                    .zip(c.iter())
                    .map(|(n, [ok, failed, fast])| format!("{n}: {ok} ok / {failed} failed / {fast} fast-503"))
                    .collect::<Vec<_>>()
                    .join("  |  ");
                tracing::info!("last 5 s  {line}");
                *c = [[0; 3]; 3];
            }
        }
    }
}
