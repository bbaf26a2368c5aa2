//! The floor of the data path, for `benches/load/compare.sh` (target
//! `floor`): hyper's HTTP/1.1 server in front of fusebox's own upstream
//! connection pool (its HTTP/1.1 codec, `fusebox::h1`), on one
//! current-thread runtime, with nothing else: no
//! routing, breaker, bulkhead, header rewriting, request ids, timeouts or
//! metrics. fusebox/floor is what fusebox's own work costs; floor/nginx is
//! what hyper costs against nginx.
//!
//!   cargo run --release --example hyper_floor -- LISTEN_ADDR UPSTREAM_URL

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: hyper_floor LISTEN_ADDR UPSTREAM_URL");
    };
    let yaml =
        format!("upstreams:\n  floor:\n    endpoints: [{upstream}]\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: floor }}\n");
    let config = fusebox::config::parse(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let up = config.upstream("floor").cloned().ok_or_else(|| anyhow::anyhow!("no upstream"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let transport = Arc::new(fusebox::runtime::pool::Transport::new(&up));
        let pool = fusebox::runtime::pool::EndpointPool::new(
            up.endpoints[0].clone(),
            up.endpoints[0].authority.as_str().parse().expect("the floor's endpoint is an ip:port"),
            transport,
        );
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let pool = pool.clone();
                    async move {
                        let (mut head, body) = req.into_parts();
                        let resp = match pool.send(&mut head, body.map_err(Into::into).boxed_unsync(), None, fusebox::clock::now()).await {
                            Ok(resp) => resp.map(|b| b.boxed_unsync()),
                            Err(e) => http::Response::builder()
                                .status(502)
                                .body(http_body_util::Full::new(bytes::Bytes::from(e.to_string())).map_err(|e| match e {}).boxed_unsync())
                                .unwrap_or_default(),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}
