//! The per-request breaker cost: the pure state machine alone, then the
//! real hot path (`Circuit::admit` + `CallGuard::finish`: bulkhead atomics,
//! the per-upstream lock, metric handles) with 1 and 2 threads on one
//! upstream and on two upstreams. No global lock: two threads on two
//! upstreams should cost about what one thread costs.
//!
//! Run: cargo bench --bench breaker
#![allow(clippy::disallowed_methods)] // benches measure wall time

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fusebox::breaker::{Breaker, CallOutcome, Policy};
use fusebox::runtime::upstream::Circuit;
use fusebox::telemetry::Metrics;
use tokio::sync::broadcast;

fn circuit(metrics: &Metrics, name: &str) -> Arc<Circuit> {
    let (tx, _) = broadcast::channel(16);
    let (status_tx, _) = broadcast::channel(16);
    Arc::new(Circuit::new(name, Policy::default(), metrics.upstream(name), (tx, status_tx), Instant::now()))
}

fn one_call(c: &Arc<Circuit>) {
    let now = Instant::now();
    if let Ok(mut guard) = c.admit(1_000_000, 503, now) {
        black_box(guard.finish(Some(200), false, now));
    }
}

/// Runs `iters` calls split over `threads` threads, one circuit each from `circuits`.
fn parallel(iters: u64, circuits: &[Arc<Circuit>]) -> Duration {
    let per = iters / circuits.len() as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in circuits {
            s.spawn(move || {
                for _ in 0..per {
                    one_call(c);
                }
            });
        }
    });
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    g.bench_function("state_machine/acquire+result", |b| {
        let t0 = Instant::now();
        let mut br = Breaker::new(Policy::default(), t0, 1);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let now = t0 + Duration::from_micros(i);
            if let Ok(p) = br.try_acquire(now) {
                br.on_result(p, CallOutcome::default(), Duration::from_micros(300), now);
            }
        });
    });
    let metrics = Metrics::new();
    let a = circuit(&metrics, "a");
    let b2 = circuit(&metrics, "b");
    g.bench_function("hot_path/1_thread", |b| b.iter(|| one_call(&a)));
    g.bench_function("hot_path/2_threads_one_upstream", |b| {
        b.iter_custom(|iters| parallel(iters, &[a.clone(), a.clone()]));
    });
    g.bench_function("hot_path/2_threads_two_upstreams", |b| {
        b.iter_custom(|iters| parallel(iters, &[a.clone(), b2.clone()]));
    });
    g.finish();
}

criterion_group! {
    name = group;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(group);
