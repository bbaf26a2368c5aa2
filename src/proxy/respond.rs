//! Responses fusebox writes itself: the fail-fast 503 contract (or the
//! upstream's fallback), overload 503, 404 for no route, and the answer to
//! every typed [`Fault`] (400/408 for the client's, 502/504 for the
//! upstream's, the overloaded 503 for fusebox's own). Small JSON bodies, always with `x-request-id`.

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::breaker::{RejectReason, Rejection};
use crate::http::{error_response, full, json_response, ProxyBody};

use crate::runtime::fault::Fault;
use crate::runtime::upstream::{Refusal, Upstream};

pub const CIRCUIT_HEADER: &str = "x-fusebox-circuit";
pub const OVERLOADED_HEADER: &str = "x-fusebox-overloaded";

pub fn no_route(host: Option<&str>, path: &str) -> Response<ProxyBody> {
    error_response(StatusCode::NOT_FOUND, "no_route", format!("no route matches host {:?} path {path:?}", host.unwrap_or("")))
}

/// The answer to a request that failed: status, code and header from the
/// fault's one mapping (`runtime::fault::Fault`).
pub fn fault(upstream: Option<&str>, fault: Fault, detail: &str) -> Response<ProxyBody> {
    let message = match (upstream, detail.is_empty()) {
        (Some(u), false) => format!("upstream {u}: {fault}: {detail}"),
        (Some(u), true) => format!("upstream {u}: {fault}"),
        (None, _) => fault.to_string(),
    };
    let mut resp = error_response(fault.status(), fault.code(), message);
    if fault.overloaded() {
        resp.headers_mut().insert(OVERLOADED_HEADER, HeaderValue::from_static("true"));
    }
    if let Some(secs) = fault.retry_after() {
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if fault.status() == StatusCode::REQUEST_TIMEOUT || fault.status() == StatusCode::BAD_REQUEST {
        // The request body was not read to its end: the connection cannot
        // carry another request.
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The answer to a refused request.
pub fn refused(upstream: &Upstream, refusal: &Refusal) -> Response<ProxyBody> {
    match refusal {
        Refusal::Overloaded { limit } => {
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("upstream {} has {limit} requests in flight (maxConcurrentRequests)", upstream.config.name),
            );
            resp.headers_mut().insert(OVERLOADED_HEADER, HeaderValue::from_static("true"));
            resp
        }
        Refusal::Circuit(rej) => circuit_refused(upstream, rej),
    }
}

fn circuit_refused(upstream: &Upstream, rej: &Rejection) -> Response<ProxyBody> {
    // Seconds until the next trial, rounded up so clients never retry early.
    let retry = rej.retry_after.as_secs() + u64::from(rej.retry_after.subsec_nanos() > 0);
    let mut resp = match &upstream.config.fallback {
        Some(fb) => {
            let mut resp = Response::new(full(fb.body.clone()));
            *resp.status_mut() = fb.status;
            for (k, v) in &fb.headers {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
            resp
        }
        None => {
            let (code, message) = match rej.reason {
                RejectReason::CircuitOpen => ("circuit_open", format!("circuit for upstream {} is {}", upstream.config.name, rej.state)),
                RejectReason::HalfOpenFull => {
                    ("half_open_full", format!("circuit for upstream {} is half-open and its trial slots are taken", upstream.config.name))
                }
                RejectReason::Ramp => {
                    ("recovery_ramp", format!("upstream {} is recovering; this request was held back by the ramp", upstream.config.name))
                }
            };
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "error": { "code": code, "message": message },
                    "upstream": upstream.config.name,
                    "state": rej.state.as_str(),
                    "rule": rej.trip.as_ref().map(|r| r.rule()),
                    "reason": rej.trip.as_ref().map(|r| r.to_string()),
                    "retryAfterSeconds": retry,
                }),
            )
        }
    };
    let h = resp.headers_mut();
    h.insert(CIRCUIT_HEADER, HeaderValue::from_static(rej.state.as_str()));
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    resp
}
