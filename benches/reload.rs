//! The cost of one config reload (parse + validate + build the generation +
//! swap) at 100 and 1,000 upstreams, and of rendering `/metrics` at 1,000
//! upstreams.
//!
//! Run: cargo bench --bench reload

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fusebox::config;
use fusebox::runtime::reload::ConfigStore;
use fusebox::runtime::Shared;
use fusebox::telemetry::Metrics;
use tokio::sync::broadcast;

fn yaml(n: usize) -> String {
    let mut s = String::from("listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nauth: none\ndefaults:\n  breaker: { failureThreshold: 5, resetTimeout: 30s }\nupstreams:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  svc-{i}:\n    endpoints: [http://10.0.{}.{}:8080, http://10.1.{}.{}:8080]\n    breaker: {{ failureThreshold: {} }}\n",
            i / 250,
            i % 250,
            i / 250,
            i % 250,
            3 + i % 5
        ));
    }
    s.push_str("routes:\n");
    for i in 0..n {
        s.push_str(&format!("  - {{ match: {{ pathPrefix: /svc-{i}/ }}, upstream: svc-{i} }}\n"));
    }
    s
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = rt.enter();
    let mut g = c.benchmark_group("reload");
    for n in [100usize, 1000] {
        let text = yaml(n);
        let (events, _) = broadcast::channel(16);
        let store = ConfigStore::new(config::parse(&text).expect("valid"), None, Shared::new(Metrics::new(), events));
        g.bench_with_input(BenchmarkId::new("parse_validate_swap", n), &text, |b, text| {
            b.iter(|| {
                let config = config::parse(text).expect("valid");
                store.apply(config, "bench")
            });
        });
        g.bench_with_input(BenchmarkId::new("parse_validate_only", n), &text, |b, text| {
            b.iter(|| config::parse(text).expect("valid"));
        });
        if n == 1000 {
            let rendered = store.shared.metrics.render();
            println!("/metrics at {n} upstreams: {} bytes, {} lines", rendered.len(), rendered.iter().filter(|b| **b == b'\n').count());
            g.bench_function("render_metrics/1000", |b| b.iter(|| store.shared.metrics.render()));
        }
    }
    g.finish();
}

criterion_group! {
    name = group;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = benches
}
criterion_main!(group);
