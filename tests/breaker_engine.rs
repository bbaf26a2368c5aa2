//! The pure breaker state machine, driven by an injected clock: every timer
//! is tested to the millisecond without sleeping.
#![allow(clippy::disallowed_methods)] // a fixed origin instant; time then only moves by addition

use std::time::{Duration, Instant};

use fusebox::breaker::{Breaker, CallOutcome, CircuitState, Mode, Policy, Reason, RejectReason, Status};

const OK: CallOutcome = CallOutcome { failure: false, slow: false };
const FAIL: CallOutcome = CallOutcome { failure: true, slow: false };
const SLOW: CallOutcome = CallOutcome { failure: false, slow: true };
const MS: Duration = Duration::from_millis(1);

fn policy() -> Policy {
    Policy {
        failure_threshold: 3,
        failure_rate_threshold: 50.0,
        minimum_request_count: 10,
        monitoring_window: Duration::from_secs(60),
        slow_call_duration: Duration::from_secs(1),
        slow_call_rate_threshold: 100.0,
        reset_timeout: Duration::from_secs(10),
        max_reset_timeout: Duration::from_secs(60),
        jitter: 0.0,
        half_open_requests: 1,
        min_healthy_period: Duration::from_secs(30),
        recovery_ramp: Duration::ZERO,
        trial_lease: Duration::from_secs(5),
        ..Policy::default()
    }
}

struct Rig {
    b: Breaker,
    t0: Instant,
}

impl Rig {
    fn new(p: Policy) -> Rig {
        let t0 = Instant::now();
        Rig { b: Breaker::new(p, t0, 42), t0 }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + MS * ms as u32
    }
    /// One call at `ms` with `outcome`; false if it was rejected.
    fn call(&mut self, ms: u64, outcome: CallOutcome) -> bool {
        let now = self.at(ms);
        match self.b.try_acquire(now) {
            Ok(p) => {
                self.b.on_result(p, outcome, MS, now);
                true
            }
            Err(_) => false,
        }
    }
    fn state(&mut self, ms: u64) -> CircuitState {
        self.b.tick(self.at(ms));
        self.b.state()
    }
}

#[test]
fn opens_after_exactly_failure_threshold_consecutive_failures() {
    let mut r = Rig::new(policy());
    assert!(r.call(0, FAIL));
    assert!(r.call(1, FAIL));
    assert_eq!(r.state(2), CircuitState::Closed);
    assert!(r.call(3, FAIL));
    assert_eq!(r.state(4), CircuitState::Open);
    let t = r.b.take_transitions();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].reason, Reason::Consecutive { failures: 3, threshold: 3 });
    assert!(!r.call(5, OK), "open rejects");
}

#[test]
fn a_success_resets_the_consecutive_count() {
    let mut r = Rig::new(Policy { minimum_request_count: 1000, ..policy() });
    for i in 0..30 {
        assert!(r.call(i * 3, FAIL));
        assert!(r.call(i * 3 + 1, FAIL));
        assert!(r.call(i * 3 + 2, OK));
    }
    // Two failures then a success, 30 times: never 3 in a row, and the rate
    // rule is out of play below 1000 calls.
    assert_eq!(r.state(100), CircuitState::Closed);
    assert!(r.b.take_transitions().is_empty());
}

#[test]
fn rejection_reports_time_until_half_open_and_the_trip() {
    let mut r = Rig::new(policy());
    for i in 0..3 {
        r.call(i, FAIL);
    }
    let rej = r.b.try_acquire(r.at(2_502)).unwrap_err();
    assert_eq!(rej.reason, RejectReason::CircuitOpen);
    assert_eq!(rej.state, CircuitState::Open);
    assert_eq!(rej.retry_after, Duration::from_millis(7_500));
    assert_eq!(rej.trip.unwrap().rule(), "consecutive");
}

#[test]
fn half_open_exactly_at_reset_timeout_and_not_before() {
    let mut r = Rig::new(policy());
    for i in 0..3 {
        r.call(i, FAIL);
    }
    // Opened at t=2ms: half-open at 10_002ms.
    assert_eq!(r.state(10_001), CircuitState::Open);
    assert_eq!(r.state(10_002), CircuitState::HalfOpen);
    let t = r.b.take_transitions();
    assert_eq!(t.last().unwrap().reason.rule(), "reset-timeout");
}

#[test]
fn half_open_admits_at_most_half_open_requests_at_once() {
    let mut r = Rig::new(Policy { half_open_requests: 2, ..policy() });
    for i in 0..3 {
        r.call(i, FAIL);
    }
    let now = r.at(10_002);
    let p1 = r.b.try_acquire(now).unwrap();
    let p2 = r.b.try_acquire(now).unwrap();
    let rej = r.b.try_acquire(now).unwrap_err();
    assert_eq!(rej.reason, RejectReason::HalfOpenFull);
    // One success is not enough with two trials: still half-open.
    r.b.on_result(p1, OK, MS, now);
    assert_eq!(r.b.state(), CircuitState::HalfOpen);
    // A finished trial frees its slot.
    let p3 = r.b.try_acquire(now).unwrap();
    r.b.on_result(p2, OK, MS, now);
    assert_eq!(r.b.state(), CircuitState::Closed);
    // A late trial result after closing changes nothing.
    r.b.on_result(p3, FAIL, MS, now);
    assert_eq!(r.b.state(), CircuitState::Closed);
}

#[test]
fn a_trial_lease_that_never_completes_is_released() {
    let mut r = Rig::new(policy());
    for i in 0..3 {
        r.call(i, FAIL);
    }
    let _lost = r.b.try_acquire(r.at(10_002)).unwrap();
    assert!(r.b.try_acquire(r.at(10_003)).is_err(), "slot taken");
    // trial_lease is 5 s: at 15_002 the lease has expired.
    assert!(r.b.try_acquire(r.at(15_001)).is_err());
    let p = r.b.try_acquire(r.at(15_002)).expect("lease expired, slot free again");
    r.b.on_result(p, OK, MS, r.at(15_003));
    assert_eq!(r.b.state(), CircuitState::Closed);
}

#[test]
fn a_cancelled_trial_frees_its_slot_without_a_result() {
    let mut r = Rig::new(policy());
    for i in 0..3 {
        r.call(i, FAIL);
    }
    let p = r.b.try_acquire(r.at(10_002)).unwrap();
    r.b.on_cancel(p);
    assert_eq!(r.b.state(), CircuitState::HalfOpen);
    assert!(r.b.try_acquire(r.at(10_003)).is_ok());
}

#[test]
fn failed_recoveries_double_the_open_period_up_to_the_cap() {
    let mut r = Rig::new(Policy { max_reset_timeout: Duration::from_secs(35), ..policy() });
    for i in 0..3 {
        r.call(i, FAIL);
    }
    // Opened at 2 -> half-open at 10_002; the trial fails: open for 20 s.
    assert!(r.call(10_002, FAIL));
    assert_eq!(r.b.snapshot(r.at(10_002)).recovery_attempts, 1);
    assert_eq!(r.state(30_001), CircuitState::Open);
    assert_eq!(r.state(30_002), CircuitState::HalfOpen);
    // Fails again: 40 s capped to 35 s.
    assert!(r.call(30_002, FAIL));
    assert_eq!(r.state(65_001), CircuitState::Open);
    assert_eq!(r.state(65_002), CircuitState::HalfOpen);
    assert_eq!(r.b.snapshot(r.at(65_002)).recovery_attempts, 2);
    // Success closes and resets the backoff.
    assert!(r.call(65_002, OK));
    assert_eq!(r.b.state(), CircuitState::Closed);
    assert_eq!(r.b.snapshot(r.at(65_002)).recovery_attempts, 0);
    for i in 0..3 {
        r.call(70_000 + i, FAIL);
    }
    assert_eq!(r.state(80_001), CircuitState::Open);
    assert_eq!(r.state(80_002), CircuitState::HalfOpen);
}

#[test]
fn jitter_spreads_open_periods_within_bounds() {
    let mut seen = Vec::new();
    for seed in 0..50u64 {
        let t0 = Instant::now();
        let mut b = Breaker::new(Policy { jitter: 0.2, ..policy() }, t0, seed * 7919 + 1);
        for _ in 0..3 {
            let p = b.try_acquire(t0).unwrap();
            b.on_result(p, FAIL, MS, t0);
        }
        let until = b.snapshot(t0).open_until.unwrap() - t0;
        assert!(until >= Duration::from_secs(8) && until <= Duration::from_secs(12), "{until:?}");
        seen.push(until);
    }
    seen.sort();
    seen.dedup();
    assert!(seen.len() > 10, "jitter must actually vary: {seen:?}");
}

#[test]
fn failure_rate_waits_for_minimum_request_count() {
    let mut r = Rig::new(Policy { failure_threshold: 100, ..policy() });
    for i in 0..9 {
        assert!(r.call(i, if i % 2 == 0 { FAIL } else { OK }));
    }
    // 5 of 9 failed (55%) but only 9 calls: no decision yet.
    assert_eq!(r.state(9), CircuitState::Closed);
    assert!(r.call(10, FAIL));
    assert_eq!(r.state(11), CircuitState::Open);
    match &r.b.take_transitions()[0].reason {
        Reason::FailureRate { rate, calls, .. } => {
            assert_eq!(*calls, 10);
            assert!((*rate - 60.0).abs() < 1e-9);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn old_failures_leave_the_window() {
    let mut r = Rig::new(Policy { failure_threshold: 100, ..policy() });
    for i in 0..9 {
        r.call(i, FAIL);
    }
    // A minute later those failures have slid out: 10 fresh calls with 4
    // failures stay under 50%.
    for i in 0..10 {
        r.call(61_000 + i, if i < 4 { FAIL } else { OK });
    }
    assert_eq!(r.state(61_011), CircuitState::Closed);
}

#[test]
fn slow_call_rate_trips() {
    let mut r = Rig::new(Policy { slow_call_rate_threshold: 50.0, minimum_request_count: 4, ..policy() });
    assert!(r.call(0, OK));
    assert!(r.call(1, SLOW));
    assert!(r.call(2, OK));
    assert_eq!(r.state(3), CircuitState::Closed);
    assert!(r.call(4, SLOW));
    assert_eq!(r.state(5), CircuitState::Open);
    assert_eq!(r.b.take_transitions()[0].reason.rule(), "slow-rate");
}

#[test]
fn classify_uses_failure_statuses_and_slow_duration() {
    let p = policy();
    assert!(p.classify(Some(503), MS).failure);
    assert!(!p.classify(Some(404), MS).failure);
    assert!(p.classify(None, MS).failure);
    assert!(p.classify(Some(200), Duration::from_millis(1_001)).slow);
    assert!(!p.classify(Some(200), Duration::from_millis(1_000)).slow);
}

#[test]
fn status_follows_state_and_min_healthy_period() {
    let mut r = Rig::new(policy());
    assert_eq!(r.b.status(r.at(0)), Status::Unknown);
    r.call(0, OK);
    assert_eq!(r.b.status(r.at(1)), Status::Healthy);
    r.call(1, FAIL);
    assert_eq!(r.b.status(r.at(2)), Status::Degraded, "failure in the window");
    r.call(2, FAIL);
    r.call(3, FAIL);
    assert_eq!(r.b.status(r.at(4)), Status::Failed);
    r.b.tick(r.at(10_003));
    assert_eq!(r.b.status(r.at(10_003)), Status::Degraded, "half-open");
    r.call(10_003, OK);
    assert_eq!(r.b.state(), CircuitState::Closed);
    assert_eq!(r.b.status(r.at(40_002)), Status::Degraded, "inside minHealthyPeriod");
    assert_eq!(r.b.status(r.at(40_003)), Status::Healthy);
}

#[test]
fn recovery_ramp_admits_a_growing_share() {
    let mut r = Rig::new(Policy { recovery_ramp: Duration::from_secs(10), ..policy() });
    for i in 0..3 {
        r.call(i, FAIL);
    }
    assert!(r.call(10_002, OK));
    assert_eq!(r.b.state(), CircuitState::Closed);
    let share = |r: &mut Rig, at: u64| {
        let admitted = (0..1000).filter(|_| r.call(at, OK)).count();
        admitted as f64 / 1000.0
    };
    let early = share(&mut r, 11_002); // 10% into the ramp
    let late = share(&mut r, 19_002); // 90% into the ramp
    let done = share(&mut r, 20_002);
    assert!((0.05..0.16).contains(&early), "early {early}");
    assert!((0.84..0.96).contains(&late), "late {late}");
    assert_eq!(done, 1.0);
    let rej = {
        let now = r.at(20_001);
        r.b.tick(now);
        r.b.snapshot(now).rejected
    };
    assert!(rej > 0);
}

#[test]
fn forced_open_rejects_and_ttl_returns_to_auto() {
    let mut r = Rig::new(policy());
    r.b.force(Mode::ForcedOpen, Some(Duration::from_secs(5)), "maintenance", r.at(0));
    assert_eq!(r.b.state(), CircuitState::ForcedOpen);
    let rej = r.b.try_acquire(r.at(1_000)).unwrap_err();
    assert_eq!(rej.retry_after, Duration::from_secs(4));
    assert_eq!(r.state(4_999), CircuitState::ForcedOpen);
    assert_eq!(r.state(5_000), CircuitState::Closed);
    let t = r.b.take_transitions();
    assert_eq!(t[0].reason.rule(), "operator");
    assert_eq!(t[1].reason, Reason::Ttl);
    assert!(r.call(5_001, OK));
}

#[test]
fn forced_closed_never_trips() {
    let mut r = Rig::new(policy());
    r.b.force(Mode::ForcedClosed, None, "incident override", r.at(0));
    for i in 0..50 {
        assert!(r.call(i, FAIL));
    }
    assert_eq!(r.b.state(), CircuitState::ForcedClosed);
    assert_eq!(r.b.snapshot(r.at(50)).failed, 50);
    r.b.force(Mode::Auto, None, "back to auto", r.at(51));
    assert_eq!(r.b.state(), CircuitState::Closed);
}

#[test]
fn metrics_only_admits_everything_but_reports_would_be_trips() {
    let mut r = Rig::new(policy());
    r.b.force(Mode::MetricsOnly, None, "tuning", r.at(0));
    r.b.take_transitions();
    for i in 0..10 {
        assert!(r.call(i, FAIL), "metrics-only never rejects");
    }
    assert_eq!(r.b.state(), CircuitState::MetricsOnly);
    let t = r.b.take_transitions();
    assert!(!t.is_empty());
    assert!(t[0].shadow);
    assert_eq!((t[0].from, t[0].to), (CircuitState::Closed, CircuitState::Open));
    assert_eq!(t[0].reason.rule(), "consecutive");
}

#[test]
fn reset_closes_and_reports_what_it_cleared() {
    let mut r = Rig::new(policy());
    for i in 0..3 {
        r.call(i, FAIL);
    }
    let report = r.b.reset("operator reset", r.at(100));
    assert_eq!(report.previous, CircuitState::Open);
    assert_eq!(report.total_incidents, 1);
    assert_eq!(report.last_failure, Some(r.at(2)));
    assert_eq!(r.b.state(), CircuitState::Closed);
    assert!(r.call(101, OK));
}

#[test]
fn policy_change_applies_to_carried_state() {
    let mut r = Rig::new(policy());
    r.call(0, FAIL);
    r.call(1, FAIL);
    r.b.set_policy(Policy { failure_threshold: 2, ..policy() });
    // The carried count is 2 already; the next failure is the third.
    assert!(r.call(2, FAIL));
    assert_eq!(r.b.state(), CircuitState::Open);
}

#[test]
fn probes_are_the_trials_when_health_checks_run() {
    let mut r = Rig::new(Policy { probe_trials: true, ..policy() });
    for i in 0..3 {
        r.call(i, FAIL);
    }
    let now = r.at(10_002);
    let rej = r.b.try_acquire(now).unwrap_err();
    assert_eq!(rej.reason, RejectReason::HalfOpenFull, "user requests are not spent on trials");
    let probe = r.b.try_acquire_probe(now).unwrap();
    r.b.on_probe(probe, true, MS, now);
    assert_eq!(r.b.state(), CircuitState::Closed);
}

#[test]
fn results_from_before_the_trip_do_not_reopen() {
    let mut r = Rig::new(policy());
    let early = r.b.try_acquire(r.at(0)).unwrap();
    for i in 0..3 {
        r.call(i, FAIL);
    }
    r.b.tick(r.at(10_002));
    let trial = r.b.try_acquire(r.at(10_002)).unwrap();
    r.b.on_result(trial, OK, MS, r.at(10_003));
    assert_eq!(r.b.state(), CircuitState::Closed);
    // The request that started before the trip finally fails: counted, but
    // it says nothing about the recovered upstream.
    r.b.on_result(early, FAIL, MS, r.at(10_004));
    assert_eq!(r.b.snapshot(r.at(10_004)).failure_count, 0);
}

#[test]
fn disabled_breaker_counts_but_never_rejects() {
    let mut r = Rig::new(Policy { enabled: false, ..policy() });
    for ms in 0..10 {
        assert!(r.call(ms, FAIL), "never rejected");
    }
    assert_eq!(r.state(10), CircuitState::MetricsOnly);
    assert_eq!(r.b.snapshot(r.at(10)).failed, 10, "still counted");
}

#[test]
fn forgiven_failures_of_an_ejected_endpoint_do_not_trip() {
    let mut r = Rig::new(policy());
    assert!(r.call(0, FAIL));
    assert!(r.call(1, FAIL));
    // The endpoint that failed was ejected: its failures are taken back.
    r.b.forgive(2, r.at(2));
    assert!(r.call(3, FAIL));
    assert_eq!(r.state(4), CircuitState::Closed, "1 consecutive failure, not 3");
    assert!(r.call(5, FAIL));
    assert!(r.call(6, FAIL));
    assert_eq!(r.state(7), CircuitState::Open, "the upstream as a whole still trips");
}

#[test]
fn the_free_pass_is_published_only_while_every_request_would_be_admitted() {
    let mut r = Rig::new(Policy { recovery_ramp: Duration::from_secs(4), ..policy() });
    assert!(r.b.free_pass(|| r.at(0)).is_some(), "closed: admission needs no lock");
    let closed_epoch = r.b.free_pass(|| r.at(0));
    for ms in 1..=3 {
        assert!(r.call(ms, FAIL));
    }
    assert_eq!(r.state(4), CircuitState::Open);
    assert_eq!(r.b.free_pass(|| r.at(4)), None, "open: every request asks the breaker");
    assert_eq!(r.state(10_004), CircuitState::HalfOpen);
    assert_eq!(r.b.free_pass(|| r.at(10_004)), None, "half-open: trials are counted under the lock");
    assert!(r.call(10_005, OK));
    assert_eq!(r.state(10_006), CircuitState::Closed);
    assert_eq!(r.b.free_pass(|| r.at(10_006)), None, "recovery ramp running: some requests are held back");
    let after_ramp = r.b.free_pass(|| r.at(14_006));
    assert!(after_ramp.is_some(), "ramp over: free again");
    assert_ne!(after_ramp, closed_epoch, "with a new epoch: a pass from before the trip counts for nothing");

    r.b.force(Mode::ForcedOpen, None, "test", r.at(14_010));
    assert_eq!(r.b.free_pass(|| r.at(14_010)), None);
    r.b.force(Mode::ForcedClosed, Some(Duration::from_secs(60)), "test", r.at(14_020));
    assert_eq!(r.b.free_pass(|| r.at(14_020)), None, "a mode with a TTL is checked under the lock, so it ends on time");
    r.b.force(Mode::ForcedClosed, None, "test", r.at(14_030));
    assert!(r.b.free_pass(|| r.at(14_030)).is_some());
}
