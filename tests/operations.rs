//! Per-operation circuits (the usage-guide seed): a route with `operation`
//! has a circuit of its own, `upstream/operation`, admitted and counted
//! with its upstream's; a slow or failing operation opens while another
//! operation of the same upstream keeps serving.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;

/// An upstream whose `/search` paths answer 500 and everything else 200;
/// counts the `/search` calls that reached it.
async fn catalog() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let searches = Arc::new(AtomicUsize::new(0));
    let seen = searches.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let status = if req.uri().path().starts_with("/search") {
                            seen.fetch_add(1, Ordering::SeqCst);
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"catalog")));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, searches)
}

fn config(addr: SocketAddr) -> String {
    format!(
        "upstreams:\n  catalog:\n    endpoints: [http://{addr}]\n    breaker: {{ jitter: 0, failureThreshold: 10 }}\n\
         routes:\n\
         \x20 - match: {{ pathPrefix: /search }}\n    upstream: catalog\n    operation: search\n    breaker: {{ failureThreshold: 3, resetTimeout: 30s }}\n\
         \x20 - match: {{ pathPrefix: /items, methods: [GET] }}\n    upstream: catalog\n    operation: items\n\
         \x20 - {{ match: {{ pathPrefix: / }}, upstream: catalog }}\n"
    )
}

#[tokio::test]
async fn a_failing_operation_opens_while_another_keeps_serving() {
    let (addr, searches) = catalog().await;
    let app = fusebox(&config(addr)).await;
    let c = client();
    let data = |p: &str| format!("http://{}{p}", app.data_addr());
    let admin = |p: &str| format!("http://{}{p}", app.admin_addr());

    for i in 0..3 {
        let (s, _, _) = get(&c, &data(&format!("/search?q={i}"))).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let (s, _, _) = get(&c, &data("/items/1")).await;
        assert_eq!(s, StatusCode::OK);
    }
    // The operation's circuit opened after its own threshold (3)...
    let (s, h, body) = get(&c, &data("/search?q=x")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(h["x-fusebox-circuit"], "open");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstream"], "catalog/search", "{v}");
    assert_eq!(searches.load(Ordering::SeqCst), 3, "the open operation never reached the upstream");
    // ... while the upstream's (10) and the other operation's stay closed.
    for _ in 0..5 {
        assert_eq!(get(&c, &data("/items/2")).await.0, StatusCode::OK);
        assert_eq!(get(&c, &data("/other")).await.0, StatusCode::OK);
    }
    assert_eq!(circuit(&c, &app, "catalog").await["state"], "closed");
    assert_eq!(circuit(&c, &app, "catalog/items").await["state"], "closed");
    assert_eq!(circuit(&c, &app, "catalog/search").await["state"], "open");

    // The usage guide's CircuitBreakerStats.
    let stats = get_json(&c, &admin("/api/admin/circuit-breaker/catalog/operations/search")).await;
    assert_eq!(stats["state"], "OPEN", "{stats}");
    assert_eq!(stats["failureCount"], 3, "{stats}");
    assert_eq!(stats["consecutiveFailures"], 3, "the consecutive count is its own field: {stats}");
    assert_eq!(stats["successCount"], 0, "{stats}");
    assert_eq!(stats["totalRequests"], 3, "{stats}");
    assert_eq!(stats["failureRate"], 1.0, "{stats}");
    assert!(stats["nextAttemptTime"].is_string() && stats["lastFailureTime"].is_string(), "{stats}");
    let items = get_json(&c, &admin("/api/admin/circuit-breaker/catalog/operations/items")).await;
    assert_eq!(items["state"], "CLOSED", "{items}");
    assert_eq!(items["failureRate"], 0.0, "{items}");
    let (s, _, _) = get(&c, &admin("/api/admin/circuit-breaker/catalog/operations/nope")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Named upstream/operation in the status API and in metrics.
    let status = get_json(&c, &admin("/api/admin/circuit-breaker/status")).await;
    let names: Vec<&str> = status["services"].as_array().unwrap().iter().filter_map(|e| e["service"].as_str()).collect();
    assert!(names.contains(&"catalog/search") && names.contains(&"catalog/items"), "{names:?}");
    let (_, _, text) = get(&c, &admin("/metrics")).await;
    assert!(
        text.lines().any(|l| l.starts_with("fusebox_operation_circuit_state{")
            && l.contains("operation=\"search\"")
            && l.contains("upstream=\"catalog\"")
            && l.contains("state=\"open\"")
            && l.ends_with(" 1")),
        "{text}"
    );

    // The admin `{service}` segment is the URL-encoded circuit name.
    let bc = body_client();
    let (s, _, body) =
        call(&bc, http::Method::POST, &admin("/api/admin/circuit-breaker/catalog%2Fsearch/reset"), &[], r#"{"reason":"search fixed"}"#)
            .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(circuit(&c, &app, "catalog/search").await["state"], "closed");
}

#[tokio::test]
async fn methods_narrow_a_route() {
    let (addr, _) = catalog().await;
    let app = fusebox(&config(addr)).await;
    let bc = body_client();
    // POST /items does not match the GET-only route: it falls through to `/`,
    // so it is counted on the upstream only.
    let (s, _, _) = call(&bc, http::Method::POST, &format!("http://{}/items/1", app.data_addr()), &[], "").await;
    assert_eq!(s, StatusCode::OK);
    let c = client();
    assert_eq!(circuit(&c, &app, "catalog/items").await["window"]["calls"], 0);
    assert_eq!(circuit(&c, &app, "catalog").await["window"]["calls"], 1);
}

#[test]
fn a_route_breaker_needs_an_operation() {
    let text = "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - match: { pathPrefix: / }\n    upstream: a\n    breaker: { failureThreshold: 2 }\n";
    let err = fusebox::config::parse(text).unwrap_err().to_string();
    assert!(err.contains("operation"), "{err}");
    let text =
        "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - match: { pathPrefix: /, methods: [GETT] }\n    upstream: a\n";
    assert!(fusebox::config::parse(text).is_ok(), "an extension method is a method");
    let text =
        "upstreams:\n  a:\n    endpoints: [http://127.0.0.1:1]\nroutes:\n  - match: { pathPrefix: /, methods: [] }\n    upstream: a\n";
    assert!(fusebox::config::parse(text).is_err());
}

#[tokio::test]
async fn every_client_response_is_counted_once_at_upstream_level_operation_rejections_included() {
    let (addr, _) = catalog().await;
    let app = fusebox(&config(addr)).await;
    let c = client();
    // 40 searches: 3 failures open the operation's circuit, 37 fast 503s.
    for i in 0..40 {
        get(&c, &format!("http://{}/search?q={i}", app.data_addr())).await;
    }
    let (_, _, text) = get(&c, &format!("http://{}/metrics", app.admin_addr())).await;
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains("upstream=\"catalog\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    assert_eq!(sum("fusebox_requests_total{"), 40.0, "{text}");
    assert!(sum("fusebox_rejected_total{") >= 37.0, "{text}");
    assert!(text.lines().any(|l| l.starts_with("fusebox_build_info{") && l.ends_with(" 1")), "{text}");
    #[cfg(target_os = "linux")]
    for series in ["process_resident_memory_bytes ", "process_open_fds ", "process_cpu_seconds_total "] {
        assert!(text.lines().any(|l| l.starts_with(series)), "{series}in {text}");
    }
}

/// SPEC 3b, with the usage guide's own numbers (threshold 3 on the
/// upstream and on its operations): failure statuses of one operation open
/// that operation only; a dead upstream opens the upstream for all.
#[tokio::test]
async fn blame_goes_to_the_narrowest_part_that_explains_it() {
    let (addr, _) = catalog().await;
    let yaml = |endpoint: String| {
        format!(
            "upstreams:\n  dynamodb:\n    endpoints: [{endpoint}]\n    startupGrace: 0s\n    breaker: {{ jitter: 0, failureThreshold: 3, resetTimeout: 60s }}\n\
             routes:\n\
             \x20 - {{ match: {{ pathPrefix: /search }}, upstream: dynamodb, operation: storeUserMessage, breaker: {{ failureThreshold: 3 }} }}\n\
             \x20 - {{ match: {{ pathPrefix: /items }}, upstream: dynamodb, operation: storeBotMessage, breaker: {{ failureThreshold: 3 }} }}\n"
        )
    };
    let app = fusebox(&yaml(format!("http://{addr}"))).await;
    let c = client();
    let data = |p: &str| format!("http://{}{p}", app.data_addr());
    for _ in 0..3 {
        assert_eq!(get(&c, &data("/search")).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(circuit(&c, &app, "dynamodb/storeUserMessage").await["state"], "open");
    assert_eq!(circuit(&c, &app, "dynamodb").await["state"], "closed", "failure statuses of one operation are that operation's");
    for _ in 0..5 {
        assert_eq!(get(&c, &data("/items/1")).await.0, StatusCode::OK, "its sibling keeps serving");
    }
    // The upstream's metrics still count every client response as it was.
    let (_, _, text) = get(&c, &format!("http://{}/metrics", app.admin_addr())).await;
    let failures: f64 = text
        .lines()
        .filter(|l| l.starts_with("fusebox_requests_total{") && l.contains("upstream=\"dynamodb\"") && l.contains("outcome=\"failure\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 3.0, "{text}");
    app.shutdown().await;

    // A dead dynamodb: transport failures count on both, so the upstream
    // opens for every operation.
    let app = fusebox(&yaml(format!("http://127.0.0.1:{}", closed_port()))).await;
    let data = |p: &str| format!("http://{}{p}", app.data_addr());
    for _ in 0..3 {
        assert_eq!(get(&c, &data("/items/1")).await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(circuit(&c, &app, "dynamodb").await["state"], "open", "a dead upstream opens for all");
    let (s, h, body) = get(&c, &data("/search")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(h["x-fusebox-circuit"], "open");
    app.shutdown().await;
}

/// SPEC 3b: a route may carry its own `fallback`, answered while its
/// operation's circuit is open; the upstream's answers for the others.
#[tokio::test]
async fn an_operation_route_answers_with_its_own_fallback() {
    let (addr, _) = catalog().await;
    let app = fusebox(&format!(
        "upstreams:\n  catalog:\n    endpoints: [http://{addr}]\n    breaker: {{ jitter: 0, failureThreshold: 10 }}\n    fallback: {{ status: 503, body: upstream-fallback }}\n\
         routes:\n\
         \x20 - match: {{ pathPrefix: /search }}\n    upstream: catalog\n    operation: search\n    breaker: {{ failureThreshold: 2 }}\n    fallback: {{ status: 200, headers: {{ content-type: application/json }}, body: '{{\"results\":[],\"degraded\":true}}' }}\n\
         \x20 - {{ match: {{ pathPrefix: / }}, upstream: catalog }}\n"
    ))
    .await;
    let c = client();
    let data = |p: &str| format!("http://{}{p}", app.data_addr());
    for _ in 0..2 {
        assert_eq!(get(&c, &data("/search")).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (s, h, body) = get(&c, &data("/search")).await;
    assert_eq!(s, StatusCode::OK, "the route's fallback: {body}");
    assert_eq!(body, r#"{"results":[],"degraded":true}"#);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-fusebox-circuit"], "open");
    app.shutdown().await;

    // A route fallback without an operation is refused, with its key.
    let err = fusebox::config::parse(&format!(
        "upstreams: {{ a: {{ endpoints: [http://{addr}] }} }}\nroutes:\n  - {{ match: {{ pathPrefix: / }}, upstream: a, fallback: {{ status: 200 }} }}\n"
    ))
    .expect_err("no operation");
    assert!(err.errors.iter().any(|e| e.path == "routes[0].fallback"), "{err}");
}
