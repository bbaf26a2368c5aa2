//! The data listener: accepts connections, serves HTTP/1.1 and h2c (prior
//! knowledge) with upgrades, and shuts down gracefully. Malformed requests
//! and oversized headers are answered by hyper (400 / 431) before any
//! routing, so they never reach a breaker; slow-loris clients are cut by the
//! header read timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use super::forward::{self, DataPlane};

/// Longest a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (431 above it).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The connection builder shared by the data and admin listeners.
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEADER_BYTES).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1024);
    builder
}

/// Longest a client may take to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The data listener: serves the proxy until `stop` resolves, then stops
/// accepting and gives open connections `grace` to finish their requests.
/// With `tls`, every connection is TLS (ALPN picks h2 or HTTP/1.1).
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    stop: impl Future<Output = ()>,
    grace: Duration,
    tls: Option<TlsAcceptor>,
) {
    accept_loop(listener, stop, grace, tls, move |peer| {
        let plane = plane.clone();
        let peer_ip = forward::PeerIp::new(peer);
        service_fn(move |req| forward::handle(req, plane.clone(), peer_ip.clone()))
    })
    .await;
}

/// Accepts connections until `stop`, serving each with the service that
/// `make_service` builds for its peer (HTTP/1.1 with upgrades, or h2),
/// then drains. Shared by the data and admin listeners.
pub async fn accept_loop<F, S, B>(
    listener: TcpListener,
    stop: impl Future<Output = ()>,
    grace: Duration,
    tls: Option<TlsAcceptor>,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = http_builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = make_service(peer);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc)).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc)).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain(graceful, grace).await;
}

/// Waits for watched connections to finish, at most `grace`.
pub async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over: closing the remaining connections"),
    }
}

/// The accept backlog: large enough that a burst of connections (every
/// dashboard reconnecting after a restart, a traffic spike) is not met with
/// dropped SYNs and 1 s client retransmits; the kernel caps it at somaxconn.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(named)?;
    socket.set_reuseaddr(true).map_err(named)?;
    socket.bind(addr).map_err(named)?;
    socket.listen(LISTEN_BACKLOG).map_err(named)
}
