//! Traces (SPEC 11) over real sockets: fusebox between a client that sends
//! trace context and an upstream that records the headers it gets, with a
//! real OTLP/HTTP receiver that decodes every export with the OpenTelemetry
//! project's own protobuf definitions (`opentelemetry-proto`).
//!
//! Checked: a sampled W3C request makes one span, child of the caller's,
//! whose id the upstream gets as its parent; B3 in, B3 out; an unsampled
//! context passes untouched and exports nothing; `sampleRate: 1` starts
//! traces; a fast 503 gets a span with its rejection event and names the
//! trace in its body; a dead collector changes no response.
//!
//! Must not: wait on fixed sleeps (every wait is `eventually`).

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::{body_client, call, closed_port, eventually, fusebox, upstream};
use tokio::net::TcpListener;

/// A real OTLP/HTTP receiver: every span of every export it accepted.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> (Collector, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c = Collector::default();
        let me = c.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move {
                            me.paths.lock().unwrap().push(req.uri().path().to_string());
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).expect("a valid OTLP protobuf export");
                            for rs in export.resource_spans {
                                let name = rs.resource.iter().flat_map(|r| &r.attributes).find(|kv| kv.key == "service.name");
                                if let Some(Value::StringValue(n)) = name.and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.clone()) {
                                    me.service_names.lock().unwrap().push(n);
                                }
                                for ss in rs.scope_spans {
                                    me.spans.lock().unwrap().extend(ss.spans);
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (c, port)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    async fn span_of_trace(&self, trace: &str) -> Span {
        eventually(Duration::from_secs(15), "the span is exported", || async {
            self.spans().into_iter().find(|s| hex(&s.trace_id) == trace)
        })
        .await
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let kv = span.attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn config(upstream_url: &str, tracing: &str) -> String {
    format!(
        "tracing: {tracing}\nupstreams:\n  api:\n    endpoints: [{upstream_url}]\n    breaker: {{ failureThreshold: 2, jitter: 0 }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: api }}\n"
    )
}

#[tokio::test]
async fn a_sampled_w3c_request_gets_one_span_and_the_upstream_gets_fusebox_as_its_parent() {
    let (collector, port) = Collector::start().await;
    let up = upstream("api").await;
    let app =
        fusebox(&config(&up.url(), &format!("{{ serviceName: checkout-sidecar, otlp: {{ endpoint: 'http://127.0.0.1:{port}' }} }}"))).await;
    let url = format!("http://{}/orders/7", app.data_addr());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let parent = format!("00-{trace}-{caller}-01");
    let (s, _, body) = call(&body_client(), Method::GET, &url, &[("traceparent", &parent), ("tracestate", "vendor=1")], "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let seen = up.header("traceparent").expect("the upstream gets a traceparent");
    assert!(seen.starts_with(&format!("00-{trace}-")) && seen.ends_with("-01"), "{seen}");
    let fusebox_span = &seen[36..52];
    assert_ne!(fusebox_span, caller, "fusebox's own span is the upstream's parent");
    assert_eq!(up.header("tracestate").as_deref(), Some("vendor=1"), "tracestate passes untouched");

    let span = collector.span_of_trace(trace).await;
    assert_eq!(hex(&span.span_id), fusebox_span, "the exported span is the one named upstream");
    assert_eq!(hex(&span.parent_span_id), caller, "child of the caller's span");
    assert_eq!(span.trace_state, "vendor=1");
    assert_eq!(span.kind, 2, "a server span");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);
    assert_eq!(attr(&span, "fusebox.upstream").as_deref(), Some("api"));
    assert_eq!(attr(&span, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(&span, "fusebox.outcome").as_deref(), Some("success"));
    assert_eq!(attr(&span, "fusebox.attempts").as_deref(), Some("1"));
    assert_eq!(attr(&span, "fusebox.circuit.state").as_deref(), Some("closed"));
    assert_eq!(attr(&span, "fusebox.endpoint"), Some(up.url().trim_start_matches("http://").to_string()));
    assert!(collector.paths.lock().unwrap().iter().all(|p| p == "/v1/traces"), "posted to /v1/traces");
    assert!(collector.service_names.lock().unwrap().iter().all(|n| n == "checkout-sidecar"));

    // B3 single in, B3 single out, with fusebox's span and the caller's as parent.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3 = format!("{b3_trace}-e457b5a2e4d86bd1-1");
    let (s, _, _) = call(&body_client(), Method::GET, &url, &[("b3", &b3)], "").await;
    assert_eq!(s, StatusCode::OK);
    let seen = up.header("b3").expect("b3 passed on");
    let span = collector.span_of_trace(b3_trace).await;
    assert_eq!(seen, format!("{b3_trace}-{}-1-e457b5a2e4d86bd1", hex(&span.span_id)));
    assert_eq!(hex(&span.parent_span_id), "e457b5a2e4d86bd1");

    // Not sampled by the caller: untouched, and no span.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let (s, _, _) = call(&body_client(), Method::GET, &url, &[("traceparent", unsampled)], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(up.header("traceparent").as_deref(), Some(unsampled), "passed untouched");
    // No context and sampleRate 0: no trace is started.
    let (s, _, _) = call(&body_client(), Method::GET, &url, &[], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(up.header("traceparent"), None);
    let before = collector.spans().len();
    // A later sampled request's span arrives; the unsampled ones never did.
    let (s, _, _) =
        call(&body_client(), Method::GET, &url, &[("traceparent", "00-33333333333333333333333333333333-4444444444444444-01")], "").await;
    assert_eq!(s, StatusCode::OK);
    collector.span_of_trace("33333333333333333333333333333333").await;
    assert!(collector.spans().iter().all(|s| hex(&s.trace_id) != "11111111111111111111111111111111"));
    assert!(collector.spans().len() <= before + 1);
    app.shutdown().await;
}

#[tokio::test]
async fn sample_rate_starts_traces_and_a_fast_503_is_traced_with_its_rejection() {
    let (collector, port) = Collector::start().await;
    let up = upstream("api").await;
    up.set_status(500);
    let app = fusebox(&config(&up.url(), &format!("{{ sampleRate: 1, otlp: {{ endpoint: 'http://127.0.0.1:{port}/v1/traces' }} }}"))).await;
    let url = format!("http://{}/pay", app.data_addr());
    // Two 500s open the circuit (failureThreshold 2); every request is traced.
    for _ in 0..2 {
        let (s, _, _) = call(&body_client(), Method::GET, &url, &[], "").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let seen = up.header("traceparent").expect("sampleRate 1 starts a trace");
        assert!(seen.starts_with("00-") && seen.ends_with("-01"), "{seen}");
    }
    let (s, _, body) = call(&body_client(), Method::GET, &url, &[], "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let trace = v["traceId"].as_str().unwrap_or_else(|| panic!("the 503 names its trace: {body}")).to_string();
    assert_eq!(v["error"]["code"], "circuit_open", "the seed's fields stay: {body}");
    let span = collector.span_of_trace(&trace).await;
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(attr(&span, "http.response.status_code").as_deref(), Some("503"));
    assert_eq!(attr(&span, "fusebox.outcome").as_deref(), Some("rejected"));
    assert_eq!(attr(&span, "fusebox.circuit.state").as_deref(), Some("open"));
    let event = span.events.iter().find(|e| e.name == "rejected").expect("a rejection event");
    let reason = event.attributes.iter().find(|kv| kv.key == "fusebox.rejection.reason").and_then(|kv| kv.value.clone());
    assert_eq!(reason.and_then(|v| v.value), Some(Value::StringValue("circuit_open".into())));
    let rule = event.attributes.iter().find(|kv| kv.key == "fusebox.rejection.rule").and_then(|kv| kv.value.clone());
    assert_eq!(rule.and_then(|v| v.value), Some(Value::StringValue("consecutive".into())));
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "a 503 is an error span");
    // The 500s were traced too, as failures.
    eventually(Duration::from_secs(15), "the failures' spans", || async {
        (collector.spans().iter().filter(|s| attr(s, "fusebox.outcome").as_deref() == Some("failure")).count() == 2).then_some(())
    })
    .await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_collector_changes_no_response() {
    let up = upstream("api").await;
    let dead = closed_port();
    let app =
        fusebox(&config(&up.url(), &format!("{{ sampleRate: 1, otlp: {{ endpoint: 'http://127.0.0.1:{dead}', timeout: 1s }} }}"))).await;
    let url = format!("http://{}/x", app.data_addr());
    let client = body_client();
    for i in 0..200 {
        let (s, _, body) = call(&client, Method::GET, &url, &[], "").await;
        assert_eq!(s, StatusCode::OK, "request {i}: {body}");
    }
    let metrics = format!("http://{}/metrics", app.admin_addr());
    eventually(Duration::from_secs(15), "the failed exports are counted", || async {
        let (_, _, text) = call(&body_client(), Method::GET, &metrics, &[], "").await;
        let failures = text.lines().find(|l| l.starts_with("fusebox_trace_export_failures_total "))?;
        (failures.rsplit(' ').next()?.parse::<f64>().ok()? >= 1.0).then_some(())
    })
    .await;
    app.shutdown().await;
}
