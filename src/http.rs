//! The body type every response fusebox serves is made of, and the small
//! JSON answers fusebox writes itself (errors, admin replies). The bottom
//! layer: it knows HTTP types and nothing of fusebox.
//!
//! Owns: [`ProxyBody`], [`full`], [`json_response`] and the one error body
//! shape `{"error": {"code", "message"}}` ([`error_response`]). Must not:
//! depend on any other fusebox module.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: an upstream's streamed through, or one of ours.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body with no bytes (no allocation).
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of known bytes.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed_unsync()
}

/// `value` as an `application/json` response with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    // A traced request's answer names its trace (SPEC 11: `traceId`).
    let traced = trace_id().and_then(|id| {
        let mut v = value.clone();
        v.as_object_mut()?.insert("traceId".to_string(), serde_json::Value::String(id));
        Some(v)
    });
    let mut resp = Response::new(full(traced.as_ref().unwrap_or(value).to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

tokio::task_local! {
    /// The trace id (32 hex digits) of the sampled request being handled
    /// on this task; set by the data path around a traced request only.
    pub static TRACE_ID: String;
}

/// The trace id of the request this task is handling, if it is traced.
pub fn trace_id() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok()
}

/// The error body every fusebox-made error carries, data path and admin
/// alike: `{"error": {"code": ..., "message": ...}}`.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ProxyBody> {
    json_response(status, &serde_json::json!({ "error": { "code": code, "message": message.into() } }))
}
