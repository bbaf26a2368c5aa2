//! The floor of the data path, for `benches/load/compare.sh` (target
//! `floor`): hyper's HTTP/1.1 server in front of fusebox's own upstream
//! connection pool, on one current-thread runtime, with nothing else: no
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
                        let req = req.map(|b| b.map_err(Into::into).boxed_unsync());
                        let resp = match pool.send(req).await {
                            Ok((resp, lease)) => {
                                let (parts, body) = resp.into_parts();
                                let body = Released { inner: body, lease };
                                http::Response::from_parts(parts, body.boxed_unsync())
                            }
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

/// Gives the upstream connection back when the body is done.
struct Released {
    inner: hyper::body::Incoming,
    lease: Option<fusebox::runtime::pool::Lease>,
}

impl http_body::Body for Released {
    type Data = bytes::Bytes;
    type Error = fusebox::http::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.inner) {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}
