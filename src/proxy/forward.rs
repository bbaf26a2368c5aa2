//! The request handler, in the phases of `proxy`'s module doc: check,
//! route, admit, forward (with retries over the endpoints), classify and
//! record, respond. Bodies stream in both directions; nothing is buffered
//! whole. Every failure is a typed [`Fault`] mapped once (`error`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::clock;
use crate::config::RetryOn;

use super::body::{ClientBody, TrackedBody, Upload};
use super::conn::{ConnControl, InFlight};
use super::headers::{self, is_upgrade, request_id, strip_hop_by_hop, REQUEST_ID};
use super::respond;
use crate::http::{BoxError, ProxyBody};
use crate::runtime::endpoint::EndpointLease;
use crate::runtime::fault::{describe, is_connection_refused, is_resource_exhaustion, ClientFault, Fault, LocalFault, UpstreamFault};
use crate::runtime::pool::{SendError, Stream, UpstreamBody};
use crate::runtime::route::request_host;
use crate::runtime::upstream::{CallGuard, Refusal, Upstream};
use crate::runtime::Generation;

/// What every request handler shares.
pub struct DataPlane {
    pub store: Arc<ArcSwap<Generation>>,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub scheme: &'static str,
    /// How many data-path workers share the listener address.
    pub workers: usize,
    /// `fusebox_open_connections{listener="data"}`, shared by the workers.
    pub open_connections: prometheus::IntGauge,
}

/// The client's IP as a header value, made once per connection.
#[derive(Clone)]
pub struct PeerIp(HeaderValue);

impl PeerIp {
    pub fn new(peer: SocketAddr) -> PeerIp {
        PeerIp(HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown")))
    }
}

/// What the access log and the debug line say of a proxied request.
#[derive(Default)]
struct Exchange {
    endpoint: Option<Arc<str>>,
    operation: Option<String>,
    outcome: &'static str,
    retries: u32,
    /// The fault that ended the request, if one did (its label).
    fault: Option<&'static str>,
    /// Why a circuit refused it: (reason code, the trip's rule).
    rejection: Option<(&'static str, Option<&'static str>)>,
    /// The fault behind each retry, in order (a trace's span events).
    retry_reasons: Vec<&'static str>,
}

/// Entry point for one request on the data listener.
/// `conn` is the client connection's control block and `in_flight` this
/// request's count on it, held until the response body ends.
pub async fn handle(
    mut req: Request<Incoming>,
    plane: Arc<DataPlane>,
    peer: PeerIp,
    (conn, in_flight): (ConnControl, InFlight),
) -> Result<Response<ProxyBody>, Infallible> {
    let generation = plane.store.load_full();
    let request_id = request_id(req.headers());
    let access = generation.config.access_log;
    let log = (access || tracing::enabled!(tracing::Level::DEBUG)).then(|| AccessLine::of(&req));
    let mut exchange = Exchange::default();
    // Sampled: a span of its own, named upstream as the new parent.
    let span = generation.tracer.as_ref().and_then(|t| {
        let name = req.method().as_str().to_string();
        t.begin(req.headers_mut(), name)
    });
    let (upstream, mut resp) = match check(&req) {
        Err(fault) => {
            exchange.outcome = "client_error";
            (None, respond::fault(None, fault, ""))
        }
        Ok(()) => match route(&generation, &req) {
            None => {
                exchange.outcome = "no_route";
                (None, respond::no_route(request_host(&req), req.uri().path()))
            }
            Some((up, op)) => {
                exchange.operation = op.as_ref().and_then(|o| o.operation.as_ref()).map(|(_, name)| name.clone());
                // Boxed in a statement of its own: the exchange's state is
                // large, and a temporary in the `.await` statement would be
                // kept in this future's state as well (rustc is conservative).
                let exchanged = Box::pin(proxy(up.clone(), op, req, (&peer, &conn, in_flight), &request_id, plane.scheme, &mut exchange));
                let resp = match &span {
                    // Its answers (a fast 503's `traceId`) and logs name the trace.
                    Some(s) => crate::http::TRACE_ID.scope(s.trace_id_hex(), exchanged).await,
                    None => exchanged.await,
                };
                (Some(up), resp)
            }
        },
    };
    let trace_id = span.as_ref().map(|s| s.trace_id_hex());
    if let Some(line) = log {
        line.write(access, (&request_id, trace_id.as_deref()), &peer, upstream.as_deref(), &exchange, &resp);
    }
    resp.headers_mut().entry(REQUEST_ID).or_insert(request_id);
    if let Some(span) = span {
        resp = traced(span, resp, upstream.as_deref(), &exchange);
    }
    Ok(resp)
}

/// Fills in a traced request's span from its exchange and hands it to
/// the response body, which ends it when the body ends (SPEC 11: from
/// admission to the end of the response body).
fn traced(
    mut span: Box<crate::telemetry::trace::ActiveSpan>,
    resp: Response<ProxyBody>,
    upstream: Option<&Upstream>,
    exchange: &Exchange,
) -> Response<ProxyBody> {
    let status = resp.status().as_u16();
    span.int_attribute("http.response.status_code", i64::from(status));
    if let Some(up) = upstream {
        span.attribute("fusebox.upstream", up.config.name.clone());
        span.attribute("fusebox.circuit.state", up.circuit.snapshot(clock::now()).state.as_str());
    }
    if let Some(op) = &exchange.operation {
        span.attribute("fusebox.operation", op.clone());
    }
    if let Some(e) = &exchange.endpoint {
        span.attribute("fusebox.endpoint", e.to_string());
    }
    span.attribute("fusebox.outcome", exchange.outcome);
    if let Some(fault) = exchange.fault {
        span.attribute("fusebox.fault", fault);
    }
    span.int_attribute("fusebox.attempts", i64::from(exchange.retries + u32::from(exchange.endpoint.is_some())));
    span.int_attribute("fusebox.retries", i64::from(exchange.retries));
    for (i, reason) in exchange.retry_reasons.iter().enumerate() {
        let attempt = (i + 2).to_string();
        span.event("retry", &[("fusebox.retry.reason", reason), ("fusebox.attempt", &attempt)]);
    }
    if let Some((reason, rule)) = exchange.rejection {
        span.event("rejected", &[("fusebox.rejection.reason", reason), ("fusebox.rejection.rule", rule.unwrap_or("none"))]);
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, crate::telemetry::trace::TracedBody::new(body, span, status).boxed_unsync())
}

/// What the access log says of a request, taken from its head before the
/// request is consumed (only when a line will be written).
struct AccessLine {
    started: Instant,
    method: Method,
    path: String,
    host: String,
    protocol: &'static str,
    user_agent: String,
    bytes_in: u64,
}

impl AccessLine {
    fn of(req: &Request<Incoming>) -> AccessLine {
        let text = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        AccessLine {
            started: clock::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            host: req.uri().authority().map_or_else(|| text(header::HOST), |a| a.to_string()),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: text(header::USER_AGENT),
            bytes_in: req.body().size_hint().exact().unwrap_or(0),
        }
    }

    /// One line: on target `fusebox::access` at info (the access log), or
    /// at debug. Strings are logged as they are (the JSON formatter quotes
    /// them once; the text formatter escapes control characters); the
    /// duration is whole microseconds, shown in ms with three decimals;
    /// `bytes_out` is the response body's length when known at its head
    /// (-1: streamed).
    fn write(
        self,
        access: bool,
        (request_id, trace_id): (&HeaderValue, Option<&str>),
        peer: &PeerIp,
        upstream: Option<&Upstream>,
        exchange: &Exchange,
        resp: &Response<ProxyBody>,
    ) {
        let us = u64::try_from(clock::now().saturating_duration_since(self.started).as_micros()).unwrap_or(u64::MAX);
        let duration_ms = us as f64 / 1000.0;
        let (method, path, status) = (self.method.as_str(), self.path.as_str(), resp.status().as_u16());
        let request_id = request_id.to_str().unwrap_or("-");
        let upstream = upstream.map_or("-", |u| u.config.name.as_str());
        let operation = exchange.operation.as_deref().unwrap_or("-");
        let endpoint = exchange.endpoint.as_deref().unwrap_or("-");
        let client = peer.0.to_str().unwrap_or("-");
        let bytes_out = resp.body().size_hint().exact().and_then(|n| i64::try_from(n).ok()).unwrap_or(-1);
        let attempts = exchange.retries + u32::from(exchange.endpoint.is_some());
        let trace_id = trace_id.unwrap_or("-");
        if access {
            tracing::info!(target: "fusebox::access", request_id, trace_id, client, method, host = self.host.as_str(), path, protocol = self.protocol, status, duration_ms, bytes_in = self.bytes_in, bytes_out, upstream, operation, endpoint, outcome = exchange.outcome, attempts, retries = exchange.retries, user_agent = self.user_agent.as_str(), "{method} {path} {status}");
        } else {
            tracing::debug!(
                request_id,
                trace_id,
                method,
                path,
                upstream,
                endpoint,
                status,
                outcome = exchange.outcome,
                retries = exchange.retries,
                duration_ms,
                "request"
            );
        }
    }
}

/// Phase 0: what makes a request malformed before routing (RFC 9112 3.2):
/// an HTTP/1.1 request needs exactly one `Host`; none has two.
fn check(req: &Request<Incoming>) -> Result<(), Fault> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Fault::Client(ClientFault::BadRequest("more than one Host header")));
    }
    if first.is_none() && req.version() == Version::HTTP_11 {
        return Err(Fault::Client(ClientFault::BadRequest("an HTTP/1.1 request needs a Host header")));
    }
    Ok(())
}

/// Phase 1: the first matching route: its upstream and, for a route with
/// an `operation`, that operation's circuit.
fn route(generation: &Generation, req: &Request<Incoming>) -> Option<(Arc<Upstream>, Option<Arc<Upstream>>)> {
    generation.router.route(request_host(req), req.uri().path(), req.method()).map(|t| (t.upstream.clone(), t.operation.clone()))
}

/// One attempt's failure: its fault, whether the request never reached
/// the upstream (and its body, when that was not consumed), and what the
/// error said.
struct Failed {
    fault: Fault,
    unsent: bool,
    /// The connect was refused (nothing listens at the endpoint).
    refused: bool,
    body: Option<ProxyBody>,
    detail: String,
}

/// Phases 2-5 for a routed request.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    up: Arc<Upstream>,
    op: Option<Arc<Upstream>>,
    mut req: Request<Incoming>,
    (peer, conn, in_flight): (&PeerIp, &ConnControl, InFlight),
    request_id: &HeaderValue,
    scheme: &'static str,
    exchange: &mut Exchange,
) -> Response<ProxyBody> {
    // Phase 2: admit: the operation's circuit (if any), then the upstream's.
    let refused_status = up.config.fallback.as_ref().map_or(503, |f| f.status.as_u16());
    let now = clock::now();
    let op_guard = match &op {
        None => None,
        Some(o) => match o.circuit.admit(o.config.max_concurrent_requests, refused_status, now) {
            Ok(g) => Some(g),
            Err(refusal) => {
                // Counted at upstream level too (SPEC 7): every client
                // response once there, whichever circuit answered it, so
                // the upstream's series and alerts see its operations'.
                match &refusal {
                    Refusal::Overloaded { .. } => up.circuit.metrics.rejected(None, 503),
                    Refusal::Circuit(rej) => up.circuit.metrics.rejected(Some(rej.reason), refused_status),
                }
                exchange.outcome = "rejected";
                exchange.rejection = Some(rejection(&refusal));
                return respond::refused(o, &refusal);
            }
        },
    };
    let mut guard = match up.circuit.admit(up.config.max_concurrent_requests, refused_status, now) {
        Ok(g) => match op_guard {
            Some(o) => g.with_operation(o),
            None => g,
        },
        Err(refusal) => {
            exchange.outcome = "rejected";
            exchange.rejection = Some(rejection(&refusal));
            return respond::refused(&up, &refusal);
        }
    };
    up.retry_budget.on_request(now);
    // A client that stops reading frees its slot after `timeouts.idle`.
    conn.set_stall_timeout(up.config.timeouts.idle);
    // Phase 3: forward, on one endpoint and maybe again on another.
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let bodyless = req.body().is_end_stream();
    let idempotent = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    let (out, upload) = rewrite(req, &up, peer, request_id, scheme, upgrade, bodyless);
    // The head stays here across attempts; a bodyless idempotent request
    // may be sent again even after it left.
    let (mut head, body) = out.into_parts();
    let replayable = bodyless && idempotent && !upgrade;
    // A small body of known length is read whole before the first attempt
    // (as nginx buffers request bodies), so that a pooled connection lost
    // to the keep-alive race before it took a byte can carry it again on a
    // fresh one. Its client faults are answered here, before any upstream.
    // (A bodyless request has no upload: its headers are not looked at.)
    let buffered = upload.as_deref().filter(|_| !upgrade).and_then(|u| Some((u, content_length(&head.headers)?)));
    let (body, replay) = match buffered {
        Some((up_load, n)) if n <= REPLAY_LIMIT => match body.collect().await {
            Ok(whole) => {
                let bytes = whole.to_bytes();
                (crate::http::full(bytes.clone()), Some(bytes))
            }
            Err(e) => {
                let fault = Fault::Client(up_load.client_fault().unwrap_or(ClientFault::MalformedBody));
                return finish_with_fault(&up, guard, exchange, fault, &e.to_string());
            }
        },
        _ => (body, None),
    };
    if !up.endpoints.is_resolved() {
        up.endpoints.ensure_resolved().await;
    }
    let mut next = Some(body);
    let mut exclude: Option<Arc<crate::runtime::endpoint::Member>> = None;
    let mut retrying: Option<&'static str> = None;
    // One clock read per attempt start and per outcome: the first attempt
    // starts at the admission's instant.
    let mut started = Some(now);
    let (resp, mut lease, ejected, now) = loop {
        let now = started.take().unwrap_or_else(clock::now);
        let Some(mut lease) = up.endpoints.pick(exclude.as_deref(), now) else {
            return finish_with_fault(&up, guard, exchange, Fault::Local(LocalFault::NoEndpoint), "");
        };
        exchange.endpoint = Some(lease.member.label.clone());
        let body = match next.take() {
            Some(b) => b,
            None if bodyless => crate::http::empty(),
            // (Unreachable: a retry of a request with a body needs its body back.)
            None => return finish_with_fault(&up, guard, exchange, Fault::Local(LocalFault::Resources), "request body lost"),
        };
        let result = attempt(&up, &lease, &mut head, (body, replay.as_ref()), upload.as_deref(), now).await;
        let now = clock::now();
        let failed = match result {
            Ok(resp) => {
                lease.member.answered();
                up.circuit.answered();
                if resp.extensions().get::<crate::runtime::pool::SentAgain>().is_some() {
                    // The pool's resend after the keep-alive race: one
                    // retry metric for every second send.
                    up.circuit.metrics.retry("keep-alive-race", "success");
                }
                let status = resp.status().as_u16();
                let failure = up.config.breaker.failure_statuses.contains(status);
                // A failure status is the endpoint's failure now; a success
                // is one only once its body has arrived whole (phase 4).
                let ejected = failure && up.endpoints.record(&mut lease, Some(Fault::Upstream(UpstreamFault::Status(status))), now);
                let retry_status = RetryOn::for_status(status).filter(|on| up.config.retry.on.contains(*on));
                if let Some(reason) = retrying.take() {
                    up.circuit.metrics.retry(reason, if failure || retry_status.is_some() { "failure" } else { "success" });
                }
                match retry_status {
                    Some(_) if replayable && may_retry(&up, exchange, "status", &lease, now) => {
                        retrying = Some(status_reason(status));
                        exclude = Some(lease.member.clone());
                        continue;
                    }
                    _ => break (resp, lease, ejected, now),
                }
            }
            Err(mut failed) => {
                // The app beside the sidecar is not listening yet.
                if failed.refused
                    && failed.fault == Fault::Upstream(UpstreamFault::Connect)
                    && !up.circuit.has_answered()
                    && lease.member.is_starting(up.config.startup_grace, now)
                {
                    failed.fault = Fault::Upstream(UpstreamFault::Starting);
                }
                failed
            }
        };
        let ejected = up.endpoints.record(&mut lease, Some(failed.fault), now);
        if let Some(reason) = retrying.take() {
            up.circuit.metrics.retry(reason, "failure");
        }
        tracing::debug!(upstream = %up.config.name, endpoint = %lease.member.label, fault = failed.fault.label(), error = %failed.detail, "upstream attempt failed");
        // A request that never left may always go again; one that left
        // only when bodyless, idempotent and its fault is in `retry.on`.
        let resendable = failed.unsent && (failed.body.is_some() || bodyless);
        let retryable = match failed.fault.retry_on() {
            None => false,
            Some(_) if resendable => true,
            // A timed-out request goes again only to another endpoint:
            // waiting the whole timeout twice on the same one helps nobody.
            Some(_) if failed.fault == Fault::Upstream(UpstreamFault::Timeout) && !up.endpoints.has_other(&lease.member) => false,
            Some(on) => replayable && up.config.retry.on.contains(on),
        };
        if retryable && may_retry(&up, exchange, failed.fault.label(), &lease, now) {
            retrying = Some(failed.fault.label());
            exclude = Some(lease.member.clone());
            next = failed.body;
            continue;
        }
        if failed.fault.counts() {
            forgive_ejected(&up, &guard, &lease, true, ejected, now);
        }
        return finish_with_fault(&up, guard, exchange, failed.fault, &failed.detail);
    };
    // Phase 4: the client request's one outcome: a failure status now; a
    // success once its body has arrived whole (TrackedBody), so a response
    // that breaks mid-body is one failure, never a success and a failure.
    let status = resp.status().as_u16();
    let failed = up.config.breaker.failure_statuses.contains(status);
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let pending = (!failed && !switching && !resp.body().is_end_stream()).then_some(status);
    if pending.is_none() {
        if !failed {
            up.endpoints.record(&mut lease, None, now);
        }
        forgive_ejected(&up, &guard, &lease, failed, ejected, now);
        let outcome = guard.finish(Some(status), false, now);
        exchange.outcome = if outcome.failure { "failure" } else { "success" };
    } else {
        exchange.outcome = "success";
    }
    // Phase 5: respond.
    let set = up.endpoints.clone();
    let (mut parts, body) = resp.into_parts();
    let body = match (parts.status == StatusCode::SWITCHING_PROTOCOLS, client_upgrade, body) {
        (true, Some(client_upgrade), UpstreamBody::H1(body)) => match body.into_upgraded() {
            Ok(upstream) => {
                tokio::spawn(splice(client_upgrade, upstream, guard, lease));
                return Response::from_parts(parts, crate::http::empty());
            }
            Err(body) => UpstreamBody::H1(body),
        },
        (_, _, body) => body,
    };
    strip_hop_by_hop(&mut parts.headers, false);
    let body = TrackedBody::new(body, guard, (lease, set), up.config.timeouts.idle, in_flight, pending);
    Response::from_parts(parts, body.boxed_unsync())
}

/// Whether one more attempt may be made: attempts left, budget, and the
/// circuit not open meanwhile. Counts a refusal by the budget.
fn may_retry(up: &Upstream, exchange: &mut Exchange, reason: &'static str, _lease: &EndpointLease, now: Instant) -> bool {
    if exchange.retries >= up.config.retry.attempts || up.circuit_refuses() {
        return false;
    }
    if !up.retry_budget.try_retry(&up.config.retry, now) {
        up.circuit.metrics.retry(reason, "budget_exhausted");
        return false;
    }
    exchange.retries += 1;
    exchange.retry_reasons.push(reason);
    true
}

/// A refusal for the trace: its reason code and the rule that tripped.
fn rejection(refusal: &Refusal) -> (&'static str, Option<&'static str>) {
    match refusal {
        Refusal::Overloaded { .. } => ("overloaded", None),
        Refusal::Circuit(rej) => (rej.reason.as_str(), rej.trip.as_ref().map(|t| t.rule())),
    }
}

/// Before the circuit counts a client request's outcome: when its endpoint
/// was just ejected, the circuit takes back the failures that endpoint
/// gave it — one bad replica is routed around, it does not open the
/// upstream's circuit for everyone (the whole still can: a failure of
/// every endpoint trips it, and a lone endpoint is never ejected).
fn forgive_ejected(up: &Upstream, guard: &CallGuard, lease: &EndpointLease, failed: bool, ejected: bool, now: Instant) {
    let n = up.endpoints.settle(&lease.member, failed, ejected);
    if n > 0 {
        guard.forgive(n, now);
        tracing::debug!(upstream = %up.config.name, endpoint = %lease.member.label, failures = n, "failures of an ejected endpoint taken back from the circuit");
    }
}

fn status_reason(status: u16) -> &'static str {
    match status {
        502 => "502",
        503 => "503",
        _ => "504",
    }
}

/// Records a failed client request once and answers it.
fn finish_with_fault(up: &Upstream, mut guard: CallGuard, exchange: &mut Exchange, fault: Fault, detail: &str) -> Response<ProxyBody> {
    exchange.fault = Some(fault.label());
    match fault {
        // Excused: the permit is given back uncounted.
        Fault::Upstream(UpstreamFault::Starting) => {
            up.circuit.metrics.starting();
            exchange.outcome = "starting";
        }
        // Nobody's failure: counted as what it was, for no circuit.
        Fault::Upstream(UpstreamFault::KeepAliveRace) => {
            guard.finish_excused(fault.status().as_u16(), clock::now());
            exchange.outcome = "keep_alive_race";
            return respond::fault(Some(&up.config.name), fault, detail);
        }
        Fault::Upstream(f) => {
            guard.finish_fault(f, clock::now());
            exchange.outcome = if f == UpstreamFault::Timeout { "timeout" } else { "failure" };
        }
        // Not the upstream's: the permit is given back uncounted.
        Fault::Client(_) => {
            up.circuit.metrics.client_error(fault.label());
            exchange.outcome = "client_error";
        }
        Fault::Local(LocalFault::NoEndpoint) => {
            up.circuit.metrics.no_endpoint();
            exchange.outcome = "no_endpoint";
        }
        Fault::Local(LocalFault::Resources) => {
            up.circuit.metrics.rejected(None, 503);
            exchange.outcome = "local_error";
        }
    }
    respond::fault(Some(&up.config.name), fault, detail)
}

/// One attempt on one endpoint, within `timeouts.request` counted from the
/// end of the upload. (A request that a reused keep-alive connection lost
/// goes once more on a new connection inside the pool when it may: a
/// bodyless idempotent one, or one whose buffered body, `replay`, was not
/// taken; that is not the endpoint's fault.)
async fn attempt(
    up: &Upstream,
    lease: &EndpointLease,
    head: &mut http::request::Parts,
    (body, replay): (ProxyBody, Option<&bytes::Bytes>),
    upload: Option<&Upload>,
    now: Instant,
) -> Result<Response<UpstreamBody>, Failed> {
    let pool = lease.member.pool();
    let timeout = up.config.timeouts.request;
    match within(timeout, upload, pool.send(head, body, replay, now)).await {
        None => Err(Failed {
            fault: Fault::Upstream(UpstreamFault::Timeout),
            unsent: false,
            refused: false,
            body: None,
            detail: format!("no response within {timeout:?}"),
        }),
        Some(Ok(resp)) => Ok(resp),
        Some(Err(SendError::NotSent { error, body })) => {
            let fault = if is_resource_exhaustion(&*error) {
                Fault::Local(LocalFault::Resources)
            } else if body.is_none() && is_keep_alive_race(&*error) {
                // Lost with its body on a pooled connection: not a connect
                // failure of the endpoint (it answered the last request).
                Fault::Upstream(UpstreamFault::KeepAliveRace)
            } else {
                Fault::Upstream(UpstreamFault::Connect)
            };
            Err(Failed { fault, unsent: true, refused: is_connection_refused(&*error), body, detail: describe(&*error) })
        }
        Some(Err(SendError::Failed { error, reused })) => {
            let fault = match upload.and_then(Upload::client_fault) {
                Some(c) => Fault::Client(c),
                None if reused && upload.is_some() && is_keep_alive_race(&*error) => Fault::Upstream(UpstreamFault::KeepAliveRace),
                None => classify(&*error),
            };
            Err(Failed { fault, unsent: false, refused: false, body: None, detail: describe(&*error) })
        }
    }
}

/// Largest request body read whole before sending, so it can be sent again
/// after the keep-alive race (nginx's `client_body_buffer_size` is 8-16 KiB;
/// a little more room costs nothing).
const REPLAY_LIMIT: u64 = 64 * 1024;

/// The request's `Content-Length`, when it has exactly one valid one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// Whether the codec says a pooled connection was closed under the request
/// before any response (`NotSent`, `ClosedIdle`).
fn is_keep_alive_race(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    error
        .downcast_ref::<crate::h1::Error>()
        .is_some_and(|e| matches!(e.kind(), crate::h1::ErrorKind::NotSent | crate::h1::ErrorKind::ClosedIdle))
}

/// An exchange error that is not the client's: the upstream's, unless it
/// is fusebox out of resources.
fn classify(error: &(dyn std::error::Error + Send + Sync + 'static)) -> Fault {
    if is_resource_exhaustion(error) {
        return Fault::Local(LocalFault::Resources);
    }
    if let Some(e) = error.downcast_ref::<crate::h1::Error>() {
        return match e.kind() {
            crate::h1::ErrorKind::Malformed | crate::h1::ErrorKind::TooLarge => Fault::Upstream(UpstreamFault::Protocol),
            _ => Fault::Upstream(UpstreamFault::Reset),
        };
    }
    match error.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse() || e.is_parse_status() => Fault::Upstream(UpstreamFault::Protocol),
        _ => Fault::Upstream(UpstreamFault::Reset),
    }
}

/// Runs `send` with the request deadline: `timeout` from the end of the
/// upload (at once for a bodyless request). `None` when it expired.
async fn within<F: std::future::Future>(timeout: std::time::Duration, upload: Option<&Upload>, send: F) -> Option<F::Output> {
    match upload {
        None => tokio::time::timeout(timeout, send).await.ok(),
        Some(upload) => {
            let deadline = async {
                upload.finished().await;
                tokio::time::sleep(timeout).await;
            };
            tokio::select! {
                r = send => Some(r),
                () = deadline => None,
            }
        }
    }
}

/// Builds the upstream request: its head rewritten by [`headers::rewrite`];
/// a body that is not empty is wrapped to watch the upload, and the
/// [`Upload`] it reports to comes back with it.
fn rewrite(
    req: Request<Incoming>,
    up: &Upstream,
    peer: &PeerIp,
    request_id: &HeaderValue,
    scheme: &'static str,
    upgrade: bool,
    bodyless: bool,
) -> (Request<ProxyBody>, Option<Arc<Upload>>) {
    let (mut parts, body) = req.into_parts();
    headers::rewrite(&mut parts, up.config.protocol, &peer.0, request_id, scheme, upgrade);
    // (An HTTP/1.1 body of unknown length goes chunked whatever the method:
    // the h1 codec frames it.)
    if bodyless {
        let body = body.map_err(BoxError::from).boxed_unsync();
        return (Request::from_parts(parts, body), None);
    }
    let upload = Arc::new(Upload::default());
    let body = ClientBody::new(body, upload.clone(), up.config.timeouts.idle, up.circuit.metrics.request_bytes.clone()).boxed_unsync();
    (Request::from_parts(parts, body), Some(upload))
}

/// Copies bytes both ways between an upgraded client and upstream.
/// (The upstream's bytes read past its `101` head go to the client first.)
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: crate::h1::Upgraded<Stream>, guard: CallGuard, lease: EndpointLease) {
    use tokio::io::AsyncWriteExt;
    let _hold = (guard, lease);
    match client.await {
        Ok(c) => {
            let mut c = TokioIo::new(c);
            let mut u = upstream.io;
            if !upstream.read_buf.is_empty() {
                if let Err(e) = c.write_all(&upstream.read_buf).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                    return;
                }
            }
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}
