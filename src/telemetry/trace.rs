//! Distributed tracing (SPEC 11): the trace context a request brings (W3C
//! `traceparent`/`tracestate`, B3 single `b3` and multi `X-B3-*`), the
//! sampling decision, the one span fusebox makes for its part of a sampled
//! call, the context it passes upstream (its own span as the new parent, in
//! the format the request came with), and the export of finished spans over
//! OTLP/HTTP protobuf by a background task.
//!
//! Must not: make the data path wait. A finished span goes into a bounded
//! queue with `try_send` (a full queue drops it, counted in
//! `fusebox_trace_spans_dropped_total`); the exporter posts batches with a
//! deadline on its own task, so a dead or slow collector costs requests
//! nothing. With tracing off no request reaches this module.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use prometheus::IntCounter;
use prost::Message;
use tokio::sync::mpsc;

use super::otlp::{self, KeyValue};
use crate::config::TracingConfig;

/// Finished spans waiting for export; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Spans per export request at most.
pub const MAX_BATCH: usize = 512;
/// How long the exporter gathers a batch after its first span.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const B3: &str = "b3";
const B3_TRACE: &str = "x-b3-traceid";
const B3_SPAN: &str = "x-b3-spanid";
const B3_PARENT: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// Counters of the trace pipeline.
#[derive(Clone)]
pub struct TraceMetrics {
    pub dropped: IntCounter,
    pub exported: IntCounter,
    pub export_failures: IntCounter,
}

/// Tracing for one config generation: the sampling rate and the queue to
/// the exporter (kept across reloads that leave `tracing:` as it was).
pub struct Tracer {
    pub config: TracingConfig,
    queue: mpsc::Sender<otlp::Span>,
    /// The exporter's end of the queue until [`Tracer::start_exporter`].
    pending: parking_lot::Mutex<Option<mpsc::Receiver<otlp::Span>>>,
    metrics: TraceMetrics,
}

/// How a request's context was written, so it is passed on the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// The trace context a request came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The sender's decision; None: deferred to us (B3 without a flag).
    pub sampled: Option<bool>,
    format: Format,
    /// A 64-bit B3 trace id is passed on as 16 hex digits, as it came.
    short_trace: bool,
}

/// The span of one sampled request, filled in as the request goes.
pub struct ActiveSpan {
    tracer: Arc<Tracer>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: String,
    start: u64,
    name: String,
    attributes: Vec<KeyValue>,
    events: Vec<otlp::Event>,
}

// === impl Tracer ===

impl Tracer {
    /// The tracer of `config`; spans wait in its queue until
    /// [`Tracer::start_exporter`].
    pub fn new(config: TracingConfig, metrics: TraceMetrics) -> Arc<Tracer> {
        let (queue, rx) = mpsc::channel(QUEUE);
        Arc::new(Tracer { config, queue, pending: parking_lot::Mutex::new(Some(rx)), metrics })
    }

    /// Starts the exporter task on the current tokio runtime (once; none
    /// outside a runtime: the queue then fills and drops are counted). It
    /// ends when the last generation using this tracer is gone.
    pub fn start_exporter(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        if let Some(rx) = self.pending.lock().take() {
            rt.spawn(export(rx, self.config.clone(), self.metrics.clone()));
        }
    }

    /// The span of a request with `headers` when it is sampled (its
    /// context says so, or, without one, `sampleRate` picks it); the
    /// headers then name fusebox's span as the parent for the upstream. An
    /// unsampled request's headers pass untouched.
    pub fn begin(self: &Arc<Self>, headers: &mut HeaderMap, name: String) -> Option<Box<ActiveSpan>> {
        let context = Context::extract(headers);
        let sampled = match context.as_ref().and_then(|c| c.sampled) {
            Some(decided) => decided,
            None => self.config.sample_rate > 0.0 && fastrand::f64() < self.config.sample_rate,
        };
        if !sampled {
            return None;
        }
        let span_id = random_span_id();
        let (trace_id, parent) = match &context {
            Some(c) => (c.trace_id, Some(c.span_id)),
            None => (random_trace_id(), None),
        };
        let trace_state = headers.get(TRACESTATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        inject(headers, context.as_ref(), trace_id, span_id);
        Some(Box::new(ActiveSpan {
            tracer: self.clone(),
            trace_id,
            span_id,
            parent,
            trace_state,
            start: unix_nanos(),
            name,
            attributes: Vec::with_capacity(12),
            events: Vec::new(),
        }))
    }
}

/// Writes the context for the upstream: fusebox's span is the parent, in
/// every format the request came with (W3C for a trace fusebox started).
fn inject(headers: &mut HeaderMap, context: Option<&Context>, trace_id: [u8; 16], span_id: [u8; 8]) {
    let span = hex(&span_id);
    let put = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    let Some(c) = context else {
        put(headers, TRACEPARENT, format!("00-{}-{span}-01", hex(&trace_id)));
        return;
    };
    let trace = if c.short_trace { hex(&trace_id[8..]) } else { hex(&trace_id) };
    let parent = hex(&c.span_id);
    if headers.contains_key(TRACEPARENT) || c.format == Format::W3c {
        put(headers, TRACEPARENT, format!("00-{}-{span}-01", hex(&trace_id)));
    }
    if headers.contains_key(B3) {
        put(headers, B3, format!("{trace}-{span}-1-{parent}"));
    }
    if headers.contains_key(B3_TRACE) {
        put(headers, B3_SPAN, span);
        put(headers, B3_PARENT, parent);
        put(headers, B3_SAMPLED, "1".to_string());
        headers.remove(B3_FLAGS);
    }
}

// === impl Context ===

impl Context {
    /// The context of `headers`: W3C first, then B3 single, then B3 multi.
    /// A malformed header counts as none (a new trace, W3C says).
    pub fn extract(headers: &HeaderMap) -> Option<Context> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        text(TRACEPARENT)
            .and_then(Context::w3c)
            .or_else(|| text(B3).and_then(Context::b3_single))
            .or_else(|| Context::b3_multi(text(B3_TRACE)?, text(B3_SPAN)?, text(B3_SAMPLED), text(B3_FLAGS)))
    }

    /// `00-<32 hex trace>-<16 hex span>-<2 hex flags>` (a later version may
    /// add fields after a `-`).
    fn w3c(value: &str) -> Option<Context> {
        let mut parts = value.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok().filter(|_| flags.len() == 2)?;
        Some(Context {
            trace_id: trace_id(trace).filter(|_| trace.len() == 32)?,
            span_id: span_id(span)?,
            sampled: Some(flags & 1 == 1),
            format: Format::W3c,
            short_trace: false,
        })
    }

    /// `<trace>-<span>[-<sampled>[-<parent>]]`, or a lone sampling state.
    fn b3_single(value: &str) -> Option<Context> {
        let mut parts = value.split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        let sampled = match parts.next() {
            None => None,
            Some("1" | "d") => Some(true),
            Some("0") => Some(false),
            Some(_) => return None,
        };
        Some(Context {
            trace_id: trace_id(trace)?,
            span_id: span_id(span)?,
            sampled,
            format: Format::B3Single,
            short_trace: trace.len() == 16,
        })
    }

    fn b3_multi(trace: &str, span: &str, sampled: Option<&str>, flags: Option<&str>) -> Option<Context> {
        let sampled = match (flags, sampled) {
            (Some("1"), _) => Some(true),
            (_, Some("1" | "true")) => Some(true),
            (_, Some("0" | "false")) => Some(false),
            _ => None,
        };
        Some(Context {
            trace_id: trace_id(trace)?,
            span_id: span_id(span)?,
            sampled,
            format: Format::B3Multi,
            short_trace: trace.len() == 16,
        })
    }
}

/// 32 hex digits, or 16 (a 64-bit B3 id, left-padded); never all zero.
fn trace_id(text: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match text.len() {
        32 => unhex(text, &mut id)?,
        16 => unhex(text, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

fn span_id(text: &str) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    if text.len() != 16 {
        return None;
    }
    unhex(text, &mut id)?;
    (id != [0; 8]).then_some(id)
}

fn unhex(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(())
}

/// Lower-case hex, as trace headers and logs write ids.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// === impl ActiveSpan ===

impl ActiveSpan {
    /// The trace id as logs and the 503 body write it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn attribute(&mut self, key: &str, value: impl Into<String>) {
        self.attributes.push(KeyValue::string(key, value));
    }

    pub fn int_attribute(&mut self, key: &str, value: i64) {
        self.attributes.push(KeyValue::int(key, value));
    }

    /// A span event now, with string attributes.
    pub fn event(&mut self, name: &str, attributes: &[(&str, &str)]) {
        self.events.push(otlp::Event {
            time_unix_nano: unix_nanos(),
            name: name.to_string(),
            attributes: attributes.iter().map(|(k, v)| KeyValue::string(k, *v)).collect(),
        });
    }

    /// Ends the span now with the response's `status` (an error for 5xx
    /// or a broken response) and queues it; never waits.
    pub fn finish(self, status: u16, error: Option<&str>) {
        let me = self;
        let failed = error.is_some() || status >= 500;
        let span = otlp::Span {
            trace_id: me.trace_id.to_vec(),
            span_id: me.span_id.to_vec(),
            trace_state: me.trace_state,
            parent_span_id: me.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: me.name,
            kind: otlp::SPAN_KIND_SERVER,
            start_time_unix_nano: me.start,
            end_time_unix_nano: unix_nanos().max(me.start),
            attributes: me.attributes,
            events: me.events,
            status: failed.then(|| otlp::Status { message: error.unwrap_or_default().to_string(), code: otlp::STATUS_ERROR }),
            flags: 1,
        };
        if me.tracer.queue.try_send(span).is_err() {
            me.tracer.metrics.dropped.inc();
        }
    }
}

// === impl TracedBody ===

/// A traced response's body: ends the span when the body ends (complete,
/// broken or abandoned by the client), so the span covers the whole
/// exchange.
pub struct TracedBody {
    inner: crate::http::ProxyBody,
    span: Option<Box<ActiveSpan>>,
    status: u16,
}

impl TracedBody {
    pub fn new(inner: crate::http::ProxyBody, span: Box<ActiveSpan>, status: u16) -> TracedBody {
        TracedBody { inner, span: Some(span), status }
    }

    fn end(&mut self, error: Option<&str>) {
        if let Some(span) = self.span.take() {
            span.finish(self.status, error);
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = bytes::Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.end(None),
            Poll::Ready(Some(Err(e))) => {
                if let Some(span) = this.span.as_mut() {
                    span.attribute("fusebox.outcome", "failure");
                    span.event("response body broken", &[("error", &e.to_string())]);
                }
                this.end(Some("the response body broke"));
            }
            Poll::Ready(None) => this.end(None),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        use http_body::Body as _;
        if self.span.is_some() && !self.inner.is_end_stream() {
            if let Some(span) = self.span.as_mut() {
                span.attribute("fusebox.abandoned", "true");
            }
        }
        self.end(None);
    }
}

// === the exporter ===

/// Gathers finished spans into batches and posts them until every sender
/// is gone (the generations that used this tracer), then flushes.
async fn export(mut rx: mpsc::Receiver<otlp::Span>, config: TracingConfig, metrics: TraceMetrics) {
    let client = client();
    let resource = otlp::Resource {
        attributes: vec![
            KeyValue::string("service.name", config.service_name.clone()),
            KeyValue::string("service.version", crate::build::VERSION),
            KeyValue::string("telemetry.sdk.name", "fusebox"),
        ],
    };
    let mut failures_logged = 0u32;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope { name: "fusebox".to_string(), version: crate::build::VERSION.to_string() }),
                    spans: batch,
                }],
            }],
        };
        match tokio::time::timeout(config.otlp.timeout, post(&client, &config, request.encode_to_vec())).await {
            Ok(Ok(())) => {
                metrics.exported.inc_by(n);
                failures_logged = 0;
            }
            outcome => {
                metrics.export_failures.inc();
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {:?}", config.otlp.timeout),
                };
                // One line per outage, not one per batch.
                if failures_logged == 0 {
                    tracing::warn!(endpoint = %config.otlp.endpoint, error = %why, spans = n, "trace export failed; spans are dropped until the collector answers");
                }
                failures_logged = failures_logged.saturating_add(1);
            }
        }
    }
}

type ExportClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<bytes::Bytes>,
>;

fn client() -> ExportClient {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let tls = crate::tls::client_config(&crate::config::UpstreamTls::default());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match tls {
        Ok(tls) => builder.with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http),
        Err(e) => {
            tracing::warn!(error = %e, "no TLS roots for the trace exporter: https collectors will fail");
            builder.with_tls_config(rustls_fallback()).https_or_http().enable_http1().wrap_connector(http)
        }
    };
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A client config with no roots (every https handshake fails, cleanly).
fn rustls_fallback() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
        .unwrap_or_else(|_| rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
}

async fn post(client: &ExportClient, config: &TracingConfig, body: Vec<u8>) -> Result<(), String> {
    let mut req = http::Request::post(config.otlp.endpoint.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    for (name, value) in &config.otlp.headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read (a bounded amount of) the answer so the connection is reused.
    let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_contexts_are_read_and_bad_ones_refused() {
        let c = Context::extract(&headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])).unwrap();
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.span_id), "00f067aa0ba902b7");
        assert_eq!(c.sampled, Some(true));
        let unsampled = Context::extract(&headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]));
        assert_eq!(unsampled.unwrap().sampled, Some(false));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(Context::extract(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        // A later version may add fields.
        assert!(Context::extract(&headers(&[("traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")])).is_some());
    }

    #[test]
    fn b3_single_and_multi_are_read() {
        let c = Context::extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")])).unwrap();
        assert_eq!(hex(&c.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(c.sampled, Some(true));
        let short = Context::extract(&headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")])).unwrap();
        assert_eq!(hex(&short.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(short.sampled, None, "deferred");
        let multi = Context::extract(&headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(multi.sampled, Some(false));
        assert_eq!(Context::extract(&headers(&[("b3", "0")])), None, "a lone sampling state is no context");
    }

    #[tokio::test]
    async fn a_sampled_request_names_fusebox_as_the_parent_in_its_own_format() {
        let metrics = TraceMetrics {
            dropped: IntCounter::new("d", "d").unwrap(),
            exported: IntCounter::new("e", "e").unwrap(),
            export_failures: IntCounter::new("f", "f").unwrap(),
        };
        let config = TracingConfig {
            sample_rate: 0.0,
            service_name: "t".into(),
            otlp: crate::config::OtlpConfig {
                endpoint: "http://127.0.0.1:9/v1/traces".parse().unwrap(),
                headers: vec![],
                timeout: Duration::from_secs(1),
            },
        };
        let tracer = Tracer::new(config, metrics);
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let span = tracer.begin(&mut h, "GET".into()).expect("sampled by its context");
        let b3 = h.get("b3").unwrap().to_str().unwrap().to_string();
        assert_eq!(b3, format!("80f198ee56343ba864fe8b2a57d3eff7-{}-1-e457b5a2e4d86bd1", hex(&span.span_id)));
        assert!(h.get("traceparent").is_none(), "B3 in, B3 out");

        let mut h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), ("tracestate", "a=1")]);
        assert!(tracer.begin(&mut h, "GET".into()).is_none(), "not sampled upstream, not here");
        assert_eq!(h.get("traceparent").unwrap(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "untouched");

        let mut h = HeaderMap::new();
        assert!(tracer.begin(&mut h, "GET".into()).is_none(), "sampleRate 0 starts no trace");
        assert!(h.is_empty());
    }
}
