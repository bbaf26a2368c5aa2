//! Route matching: the first route whose host, path prefix and methods all
//! match wins; it names the upstream and, for a route with an `operation`,
//! that operation's circuit. Built once per generation; matching allocates
//! nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::RouteConfig;

use super::upstream::Upstream;

pub struct Router {
    routes: Vec<Target>,
}

/// Where a route sends its calls.
pub struct Target {
    route: RouteConfig,
    pub upstream: Arc<Upstream>,
    /// The operation's circuit (an `Upstream` named `upstream/operation`
    /// sharing its upstream's endpoints), for a route with `operation`.
    pub operation: Option<Arc<Upstream>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig], upstreams: &HashMap<String, Arc<Upstream>>) -> Router {
        let routes = routes
            .iter()
            .filter_map(|r| {
                let upstream = upstreams.get(&r.upstream)?.clone();
                let operation = r.circuit_name().and_then(|n| upstreams.get(&n).cloned());
                Some(Target { route: r.clone(), upstream, operation })
            })
            .collect();
        Router { routes }
    }

    /// `host` is the request's host without port, any case.
    pub fn route(&self, host: Option<&str>, path: &str, method: &http::Method) -> Option<&Target> {
        self.routes.iter().find(|t| {
            let r = &t.route;
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(h)) => want.eq_ignore_ascii_case(h),
                (Some(_), None) => false,
            };
            host_ok && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)) && r.methods.as_ref().is_none_or(|m| m.contains(method))
        })
    }
}

/// The host of a request: the URI authority (HTTP/2, absolute-form) or the
/// `Host` header, without the port.
pub fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    let raw = req.uri().host().or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()))?;
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("api.internal:8080"), "api.internal");
        assert_eq!(strip_port("api.internal"), "api.internal");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
