//! The per-upstream state machine: closed / open / half-open, operator
//! modes, trial leases, backoff with jitter, recovery ramp, and the counters
//! the status API reports.

use std::fmt;
use std::time::{Duration, Instant};

use super::policy::Policy;
use super::window::Window;

/// The state as reported to people and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    ForcedClosed,
    MetricsOnly,
}

/// Operator override of the automatic machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    ForcedOpen,
    ForcedClosed,
    /// Shadow mode: nothing is rejected, would-be trips are reported.
    MetricsOnly,
}

/// Status for people: healthy / degraded / failed / unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Degraded,
    Failed,
    Unknown,
}

/// Why a transition happened, with the figures that fired it. Serialized
/// (tagged by `rule`) when the store keeps an open circuit's trip reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Reason {
    Consecutive {
        failures: u32,
        threshold: u32,
    },
    FailureRate {
        rate: f64,
        threshold: f64,
        calls: u64,
    },
    SlowRate {
        rate: f64,
        threshold: f64,
        calls: u64,
    },
    /// The open period ended.
    ResetTimeout {
        waited: Duration,
    },
    /// Evidence that the upstream is back ended the open period early (a
    /// TCP connect to an endpoint of a circuit opened by transport faults
    /// succeeded, or a health check passed).
    Evidence {
        what: String,
        waited: Duration,
    },
    /// Half-open trials decided: success closes, failure reopens.
    Probe {
        success: bool,
        trials: u32,
    },
    /// An operator forced a mode or reset the circuit.
    Operator {
        action: String,
    },
    /// An operator override expired.
    Ttl,
    /// The fleet decided (SPEC 10): a quorum of members opened this
    /// circuit on their own evidence, or the fleet's one trial decided.
    Fleet {
        text: String,
    },
}

/// One change of state. `shadow` is true for the would-be transitions of a
/// circuit in `metrics-only` mode (nothing was actually rejected).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
    pub reason: Reason,
    pub shadow: bool,
    pub at: Instant,
}

/// The result of one call, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallOutcome {
    pub failure: bool,
    pub slow: bool,
}

/// A ticket to call the upstream. Hand it back with `on_result` or
/// `on_cancel`; a half-open trial holds a lease that expires on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    epoch: u64,
    lease: Option<u64>,
}

impl Permit {
    /// A permit for `epoch` taken without the breaker, from the
    /// [`Breaker::free_pass`] the circuit published: what `try_acquire`
    /// gives in that state (no trial lease). Its result counts only while
    /// the epoch holds, like any permit's.
    pub fn free(epoch: u64) -> Permit {
        Permit { epoch, lease: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    CircuitOpen,
    HalfOpenFull,
    /// Recovery ramp: this share of traffic is still held back.
    Ramp,
}

/// Why a request is answered by fusebox instead of the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub state: CircuitState,
    /// Time until the circuit will try again (the `Retry-After`).
    pub retry_after: Duration,
    /// The rule that opened the circuit, if it was tripped automatically.
    pub trip: Option<Reason>,
}

/// Everything the status API, metrics and the WebSocket report.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: CircuitState,
    pub status: Status,
    pub mode: Mode,
    pub mode_until: Option<Instant>,
    /// Consecutive failures (closed) or failures in the window.
    pub failure_count: u32,
    pub window: super::Counts,
    pub last_failure: Option<Instant>,
    pub last_success: Option<Instant>,
    pub recovery_attempts: u32,
    pub total_incidents: u64,
    pub total: u64,
    pub successful: u64,
    pub failed: u64,
    pub rejected: u64,
    pub last_duration: Option<Duration>,
    pub average_duration: Option<Duration>,
    /// When an open circuit goes half-open.
    pub open_until: Option<Instant>,
    pub trip: Option<Reason>,
    /// The open phase was put back from the store after a restart (the
    /// trip is still the original one).
    pub restored: bool,
    pub state_since: Instant,
    pub last_transition: Option<Transition>,
}

/// What a reset cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct ResetReport {
    pub failure_count: u32,
    pub last_failure: Option<Instant>,
    pub total_incidents: u64,
    pub previous: CircuitState,
}

#[derive(Debug, Clone)]
enum Phase {
    Closed {
        consecutive: u32,
        /// Set after a recovery: drives `minHealthyPeriod` and the ramp.
        recovered_at: Option<Instant>,
    },
    Open {
        opened_at: Instant,
        until: Instant,
        trip: Reason,
    },
    HalfOpen {
        trials: Vec<Lease>,
        successes: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: u64,
    expires: Instant,
}

/// One circuit. Not thread-safe by itself: the proxy keeps one per upstream
/// behind that upstream's own lock.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: Policy,
    phase: Phase,
    mode: Mode,
    mode_until: Option<Instant>,
    /// What the operator said when forcing the mode (the refusal's reason).
    mode_action: Option<String>,
    /// Bumped on every phase change; stale permits do not move the machine.
    epoch: u64,
    next_lease: u64,
    origin: Instant,
    window: Window,
    rng: u64,
    state_since: Instant,
    recovery_attempts: u32,
    total_incidents: u64,
    total: u64,
    successful: u64,
    failed: u64,
    rejected: u64,
    duration_sum: Duration,
    last_duration: Option<Duration>,
    last_failure: Option<Instant>,
    last_success: Option<Instant>,
    probed: bool,
    last_transition: Option<Transition>,
    events: Vec<Transition>,
    /// The epoch of an open phase put back from the store: while it lasts
    /// the snapshot says `restored` (the trip reason stays the original).
    restored_epoch: Option<u64>,
    /// The fleet holds this open phase (its epoch) past its end: another
    /// member sends the one trial of the recovery (SPEC 10).
    held_epoch: Option<u64>,
}

// === impl Breaker ===

impl Breaker {
    /// A closed circuit. `seed` feeds the jitter and ramp draws.
    pub fn new(policy: Policy, now: Instant, seed: u64) -> Breaker {
        Breaker {
            window: Window::new(policy.monitoring_window),
            policy,
            phase: Phase::Closed { consecutive: 0, recovered_at: None },
            mode: Mode::Auto,
            mode_until: None,
            mode_action: None,
            epoch: 0,
            next_lease: 1,
            origin: now,
            rng: seed | 1,
            state_since: now,
            recovery_attempts: 0,
            total_incidents: 0,
            total: 0,
            successful: 0,
            failed: 0,
            rejected: 0,
            duration_sum: Duration::ZERO,
            last_duration: None,
            last_failure: None,
            last_success: None,
            probed: false,
            last_transition: None,
            events: Vec::new(),
            restored_epoch: None,
            held_epoch: None,
        }
    }

    /// The fleet's verdict (SPEC 10): a closed, automatic circuit opens
    /// with reason `text` (rule `fleet`), for its usual open period, held
    /// past it until the fleet's trial decides. Whether it opened.
    pub fn fleet_open(&mut self, text: String, now: Instant) -> bool {
        if self.effective_mode() != Mode::Auto || !matches!(self.phase, Phase::Closed { .. }) {
            return false;
        }
        self.total_incidents += 1;
        self.open(now, Reason::Fleet { text });
        self.held_epoch = Some(self.epoch);
        true
    }

    /// Holds (or stops holding) the current open phase past its end.
    pub fn hold_open(&mut self, hold: bool) {
        self.held_epoch = (hold && matches!(self.phase, Phase::Open { .. })).then_some(self.epoch);
    }

    /// Whether the fleet holds this circuit open, and the open phase is
    /// due its trial (its period is over).
    pub fn held_and_due(&self, now: Instant) -> bool {
        matches!(&self.phase, Phase::Open { until, .. } if now >= *until) && self.held_epoch == Some(self.epoch)
    }

    /// The fleet's trial on another member decided: `closed` closes this
    /// circuit (its recovery ramp follows as after its own trial); else it
    /// stays open for a new, longer period, still held.
    pub fn fleet_trial(&mut self, closed: bool, text: String, now: Instant) {
        if !matches!(self.phase, Phase::Open { .. }) || self.effective_mode() != Mode::Auto {
            return;
        }
        if closed {
            self.held_epoch = None;
            self.close(now, Reason::Fleet { text });
        } else {
            self.recovery_attempts = self.recovery_attempts.saturating_add(1);
            let held = self.held_epoch == Some(self.epoch);
            self.open(now, Reason::Fleet { text });
            if held {
                self.held_epoch = Some(self.epoch);
            }
        }
    }

    /// Puts back the counters and times a restart would lose (SPEC 8):
    /// totals, rejections and the last failure and success. Only a circuit
    /// that has not seen a call yet takes them.
    pub fn restore_counters(
        &mut self,
        (total, successful, failed, rejected): (u64, u64, u64, u64),
        last: (Option<Instant>, Option<Instant>),
    ) {
        if self.total > 0 {
            return;
        }
        self.total = total;
        self.successful = successful;
        self.failed = failed;
        self.rejected = self.rejected.max(rejected);
        (self.last_failure, self.last_success) = last;
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Applies new thresholds to the carried state from the next call on.
    /// A changed window length starts an empty window.
    pub fn set_policy(&mut self, policy: Policy) {
        if policy.monitoring_window != self.policy.monitoring_window {
            self.window = Window::new(policy.monitoring_window);
        }
        self.policy = policy;
    }

    /// Transitions produced since the last call (empty: no allocation).
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.events)
    }

    /// The mode the circuit acts in: `breaker.enabled: false` (the
    /// architecture seed's switch) counts but never rejects, as metrics-only
    /// does, unless an operator chose another mode.
    fn effective_mode(&self) -> Mode {
        if !self.policy.enabled && self.mode == Mode::Auto {
            Mode::MetricsOnly
        } else {
            self.mode
        }
    }

    /// The reported state.
    pub fn state(&self) -> CircuitState {
        match self.effective_mode() {
            Mode::ForcedOpen => CircuitState::ForcedOpen,
            Mode::ForcedClosed => CircuitState::ForcedClosed,
            Mode::MetricsOnly => CircuitState::MetricsOnly,
            Mode::Auto => self.phase_state(),
        }
    }

    fn phase_state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to send one user request to the upstream.
    /// The epoch for which every request is admitted as things stand, until
    /// the breaker changes again: closed in automatic mode with no recovery
    /// ramp running, or forced closed / metrics-only with no TTL. The
    /// circuit publishes it so admission needs no lock in the common case
    /// ([`Permit::free`]); `None` means: ask [`Breaker::try_acquire`].
    /// `now` is read only while a recovery ramp may be running.
    pub fn free_pass(&self, now: impl FnOnce() -> Instant) -> Option<u64> {
        if self.mode_until.is_some() {
            return None;
        }
        match self.effective_mode() {
            Mode::ForcedOpen => None,
            Mode::ForcedClosed | Mode::MetricsOnly => Some(self.epoch),
            Mode::Auto => match self.phase {
                Phase::Closed { recovered_at: None, .. } => Some(self.epoch),
                Phase::Closed { recovered_at: Some(at), .. } => {
                    let ramp = self.policy.recovery_ramp;
                    (ramp.is_zero() || now().saturating_duration_since(at) >= ramp).then_some(self.epoch)
                }
                _ => None,
            },
        }
    }

    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejection> {
        self.acquire(now, false)
    }

    /// Asks to send an active health probe. In half-open with
    /// `probe_trials`, probes are the trials.
    pub fn try_acquire_probe(&mut self, now: Instant) -> Result<Permit, Rejection> {
        self.acquire(now, true)
    }

    fn acquire(&mut self, now: Instant, probe: bool) -> Result<Permit, Rejection> {
        self.tick(now);
        let epoch = self.epoch;
        match self.effective_mode() {
            Mode::ForcedOpen => {
                let retry = self.mode_until.map_or(self.policy.reset_timeout, |u| u.saturating_duration_since(now));
                let why = self.mode_action.clone().map(|action| Reason::Operator { action });
                return Err(self.reject(RejectReason::CircuitOpen, retry, why));
            }
            Mode::ForcedClosed | Mode::MetricsOnly => return Ok(Permit { epoch, lease: None }),
            Mode::Auto => {}
        }
        match &mut self.phase {
            Phase::Closed { recovered_at, .. } => {
                let ramp = self.policy.recovery_ramp;
                if let Some(at) = *recovered_at {
                    let at: Instant = at;
                    let since = now.saturating_duration_since(at);
                    if !ramp.is_zero() && since < ramp && !probe {
                        let share = since.as_secs_f64() / ramp.as_secs_f64();
                        if self.draw() >= share {
                            return Err(self.reject(RejectReason::Ramp, ramp - since, None));
                        }
                    }
                }
                Ok(Permit { epoch, lease: None })
            }
            Phase::Open { until, trip, .. } => {
                let retry = until.saturating_duration_since(now);
                let trip = trip.clone();
                Err(self.reject(RejectReason::CircuitOpen, retry, Some(trip)))
            }
            Phase::HalfOpen { trials, .. } => {
                let user_barred = self.policy.probe_trials && !probe;
                if user_barred || trials.len() as u32 >= self.policy.half_open_requests {
                    let retry = trials
                        .iter()
                        .map(|l| l.expires.saturating_duration_since(now))
                        .min()
                        .unwrap_or(Duration::ZERO)
                        .max(Duration::from_secs(1));
                    return Err(self.reject(RejectReason::HalfOpenFull, retry, None));
                }
                let id = self.next_lease;
                self.next_lease += 1;
                trials.push(Lease { id, expires: now + self.policy.trial_lease });
                Ok(Permit { epoch, lease: Some(id) })
            }
        }
    }

    fn reject(&mut self, reason: RejectReason, retry_after: Duration, trip: Option<Reason>) -> Rejection {
        self.rejected += 1;
        Rejection { reason, state: self.state(), retry_after, trip }
    }

    /// Records the result of a call made with `permit`, `elapsed` long.
    pub fn on_result(&mut self, permit: Permit, outcome: CallOutcome, elapsed: Duration, now: Instant) {
        self.count(outcome, elapsed, now);
        if permit.lease.is_none() && permit.epoch != self.epoch {
            // Started under another phase (e.g. before the circuit opened):
            // counted in the totals, but it says nothing about the present.
            return;
        }
        match self.effective_mode() {
            Mode::ForcedOpen | Mode::ForcedClosed => {}
            Mode::Auto | Mode::MetricsOnly => self.advance(permit, outcome, now),
        }
    }

    /// Records the result of an active health probe.
    /// (`_elapsed`: a probe's latency is reported, never counted as slow.)
    pub fn on_probe(&mut self, permit: Permit, healthy: bool, _elapsed: Duration, now: Instant) {
        self.probed = true;
        let outcome = CallOutcome { failure: !healthy, slow: false };
        if permit.lease.is_none() && permit.epoch != self.epoch {
            return;
        }
        if matches!(self.effective_mode(), Mode::Auto | Mode::MetricsOnly) {
            self.advance(permit, outcome, now);
        }
    }

    /// A probe ran without a permit (the circuit refused one): it still
    /// counts as "probed" for the `unknown` status.
    pub fn note_probe(&mut self) {
        self.probed = true;
    }

    /// A permit whose call never completed (client gone): frees its trial
    /// slot without counting a result.
    pub fn on_cancel(&mut self, permit: Permit) {
        if let (Some(id), Phase::HalfOpen { trials, .. }) = (permit.lease, &mut self.phase) {
            trials.retain(|l| l.id != id);
        }
    }

    /// Takes back `n` failures counted in the closed state: they came from
    /// an endpoint that has now been ejected and is routed around, so they
    /// say nothing about the upstream as a whole.
    pub fn forgive(&mut self, n: u32, now: Instant) {
        if let Phase::Closed { consecutive, .. } = &mut self.phase {
            *consecutive = consecutive.saturating_sub(n);
            let t = now.saturating_duration_since(self.origin);
            self.window.forgive(u64::from(n), t);
        }
    }

    fn count(&mut self, outcome: CallOutcome, elapsed: Duration, now: Instant) {
        self.total += 1;
        self.duration_sum += elapsed;
        self.last_duration = Some(elapsed);
        if outcome.failure {
            self.failed += 1;
            self.last_failure = Some(now);
        } else {
            self.successful += 1;
            self.last_success = Some(now);
        }
    }

    fn advance(&mut self, permit: Permit, outcome: CallOutcome, now: Instant) {
        let t = now.saturating_duration_since(self.origin);
        let shadow_trial = self.effective_mode() == Mode::MetricsOnly;
        match &mut self.phase {
            Phase::Closed { consecutive, .. } => {
                self.window.record(t, outcome.failure, outcome.slow);
                if outcome.failure {
                    *consecutive += 1;
                } else {
                    *consecutive = 0;
                }
                if outcome.failure || outcome.slow {
                    self.check_trip(now);
                }
            }
            Phase::Open { .. } => {}
            Phase::HalfOpen { trials, successes } => {
                let held = match permit.lease {
                    Some(id) => {
                        let before = trials.len();
                        trials.retain(|l| l.id != id);
                        trials.len() != before
                    }
                    None => shadow_trial,
                };
                if !held {
                    return;
                }
                if outcome.failure {
                    let trials_done = *successes + 1;
                    self.recovery_attempts += 1;
                    self.open(now, Reason::Probe { success: false, trials: trials_done });
                } else {
                    *successes += 1;
                    if *successes >= self.policy.half_open_requests {
                        let trials_done = *successes;
                        self.close(now, Reason::Probe { success: true, trials: trials_done });
                    }
                }
            }
        }
    }

    fn check_trip(&mut self, now: Instant) {
        let Phase::Closed { consecutive, .. } = self.phase else { return };
        let p = &self.policy;
        let reason = if consecutive >= p.failure_threshold {
            Some(Reason::Consecutive { failures: consecutive, threshold: p.failure_threshold })
        } else {
            let c = self.window.totals(now.saturating_duration_since(self.origin));
            if c.calls >= u64::from(p.minimum_request_count) && c.calls > 0 {
                let fail_rate = c.failures as f64 * 100.0 / c.calls as f64;
                let slow_rate = c.slow as f64 * 100.0 / c.calls as f64;
                if fail_rate >= p.failure_rate_threshold {
                    Some(Reason::FailureRate { rate: fail_rate, threshold: p.failure_rate_threshold, calls: c.calls })
                } else if slow_rate >= p.slow_call_rate_threshold {
                    Some(Reason::SlowRate { rate: slow_rate, threshold: p.slow_call_rate_threshold, calls: c.calls })
                } else {
                    None
                }
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            self.total_incidents += 1;
            self.open(now, reason);
        }
    }

    /// Time-driven changes: override expiry, open -> half-open, expired
    /// trial leases. Called on every acquire; call it from a timer too so an
    /// idle circuit still reports half-open on time.
    pub fn tick(&mut self, now: Instant) {
        if let Some(until) = self.mode_until {
            if now >= until {
                let from = self.state();
                self.mode = Mode::Auto;
                self.mode_until = None;
                self.phase = Phase::Closed { consecutive: 0, recovered_at: None };
                self.epoch += 1;
                self.window.clear();
                self.emit(from, Reason::Ttl, now, false);
            }
        }
        let held = self.held_epoch == Some(self.epoch);
        match &mut self.phase {
            Phase::Open { until, opened_at, .. } if now >= *until && !held => {
                let waited = now.saturating_duration_since(*opened_at);
                let from = self.phase_state();
                self.phase = Phase::HalfOpen { trials: Vec::new(), successes: 0 };
                self.epoch += 1;
                let shadow = self.effective_mode() == Mode::MetricsOnly;
                self.emit_phase(from, Reason::ResetTimeout { waited }, now, shadow);
            }
            Phase::HalfOpen { trials, .. } => trials.retain(|l| l.expires > now),
            _ => {}
        }
    }

    /// Evidence that the upstream is back (`what`): an open circuit goes
    /// half-open now instead of at the end of its open period, and its
    /// trials decide as usual. Whether it did.
    pub fn recover_early(&mut self, what: String, now: Instant) -> bool {
        if !matches!(self.effective_mode(), Mode::Auto | Mode::MetricsOnly) {
            return false;
        }
        let Phase::Open { opened_at, .. } = &self.phase else { return false };
        let waited = now.saturating_duration_since(*opened_at);
        let from = self.phase_state();
        self.phase = Phase::HalfOpen { trials: Vec::new(), successes: 0 };
        self.epoch += 1;
        let shadow = self.effective_mode() == Mode::MetricsOnly;
        self.emit_phase(from, Reason::Evidence { what, waited }, now, shadow);
        true
    }

    /// Sets an operator mode, optionally for `ttl`.
    pub fn force(&mut self, mode: Mode, ttl: Option<Duration>, action: &str, now: Instant) {
        let from = self.state();
        self.mode = mode;
        self.mode_until = match mode {
            Mode::Auto => None,
            _ => ttl.and_then(|d| now.checked_add(d)),
        };
        self.mode_action = (mode != Mode::Auto).then(|| action.to_string());
        if matches!(mode, Mode::Auto | Mode::ForcedClosed) {
            // Leaving a forced state starts the automatic machine afresh.
            if !matches!(self.phase, Phase::Closed { .. }) || mode == Mode::ForcedClosed {
                self.phase = Phase::Closed { consecutive: 0, recovered_at: None };
                self.epoch += 1;
                self.window.clear();
            }
        }
        if from != self.state() {
            self.emit(from, Reason::Operator { action: action.to_string() }, now, false);
        }
    }

    /// Puts back an open phase saved before a restart: the circuit is open
    /// until `now + remaining` (a zero `remaining` goes half-open at the
    /// next tick), with the recovery attempts and incident count it had, so
    /// the next open period keeps its backoff. `opened_for` is how long it
    /// had already been open. Only a closed, automatic circuit that has not
    /// seen a call yet (a fresh one) is changed; it reports `closed -> open`.
    /// `trip` is the reason it opened (the snapshot keeps reporting it,
    /// flagged `restored`); without one, the restore is the reason.
    pub fn restore_open(
        &mut self,
        (opened_for, remaining): (Duration, Duration),
        (recovery_attempts, total_incidents): (u32, u64),
        trip: Option<Reason>,
        now: Instant,
    ) {
        if !matches!(self.phase, Phase::Closed { consecutive: 0, .. }) || self.total > 0 {
            return;
        }
        self.recovery_attempts = recovery_attempts;
        self.total_incidents = self.total_incidents.max(total_incidents);
        let from = self.phase_state();
        let opened_at = now.checked_sub(opened_for).unwrap_or(now);
        let action = "restored from the store after a restart".to_string();
        let trip = trip.unwrap_or_else(|| Reason::Operator { action: action.clone() });
        self.phase = Phase::Open { opened_at, until: now + remaining, trip };
        self.epoch += 1;
        self.restored_epoch = Some(self.epoch);
        self.emit_phase(from, Reason::Operator { action }, now, self.effective_mode() == Mode::MetricsOnly);
    }

    /// Closes the circuit and clears its failure history (not its totals).
    pub fn reset(&mut self, action: &str, now: Instant) -> ResetReport {
        let report = ResetReport {
            failure_count: self.failure_count(now),
            last_failure: self.last_failure,
            total_incidents: self.total_incidents,
            previous: self.state(),
        };
        let from = self.state();
        self.mode = Mode::Auto;
        self.mode_until = None;
        self.phase = Phase::Closed { consecutive: 0, recovered_at: None };
        self.epoch += 1;
        self.recovery_attempts = 0;
        self.window.clear();
        if from != CircuitState::Closed {
            self.emit(from, Reason::Operator { action: action.to_string() }, now, false);
        }
        report
    }

    fn open(&mut self, now: Instant, reason: Reason) {
        let from = self.phase_state();
        let wait = self.open_period();
        self.phase = Phase::Open { opened_at: now, until: now + wait, trip: reason.clone() };
        self.epoch += 1;
        let shadow = self.effective_mode() == Mode::MetricsOnly;
        self.emit_phase(from, reason, now, shadow);
    }

    fn close(&mut self, now: Instant, reason: Reason) {
        let from = self.phase_state();
        self.phase = Phase::Closed { consecutive: 0, recovered_at: Some(now) };
        self.epoch += 1;
        self.recovery_attempts = 0;
        self.window.clear();
        let shadow = self.effective_mode() == Mode::MetricsOnly;
        self.emit_phase(from, reason, now, shadow);
    }

    /// `resetTimeout * 2^recoveryAttempts`, capped, with jitter.
    fn open_period(&mut self) -> Duration {
        let p = &self.policy;
        let factor = 2u32.saturating_pow(self.recovery_attempts.min(31));
        let base = p.reset_timeout.saturating_mul(factor).min(p.max_reset_timeout);
        if p.jitter <= 0.0 {
            return base;
        }
        let spread = p.jitter * (2.0 * self.draw() - 1.0);
        base.mul_f64((1.0 + spread).max(0.0))
    }

    /// Emits a change of the automatic phase (reported as such only in auto
    /// and metrics-only modes; a forced circuit keeps its reported state).
    fn emit_phase(&mut self, from: CircuitState, reason: Reason, now: Instant, shadow: bool) {
        let to = self.phase_state();
        if !matches!(self.effective_mode(), Mode::Auto | Mode::MetricsOnly) {
            return;
        }
        self.push(Transition { from, to, reason, shadow, at: now });
    }

    fn emit(&mut self, from: CircuitState, reason: Reason, now: Instant, shadow: bool) {
        let to = self.state();
        self.push(Transition { from, to, reason, shadow, at: now });
    }

    fn push(&mut self, t: Transition) {
        if !t.shadow {
            self.state_since = t.at;
        }
        self.last_transition = Some(t.clone());
        // Bounded: a caller that never drains keeps the latest few.
        if self.events.len() >= 16 {
            self.events.remove(0);
        }
        self.events.push(t);
    }

    /// xorshift64*: a uniform draw in [0, 1).
    fn draw(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn failure_count(&self, now: Instant) -> u32 {
        match self.phase {
            Phase::Closed { consecutive, .. } => consecutive,
            _ => {
                let c = self.window.totals(now.saturating_duration_since(self.origin));
                u32::try_from(c.failures).unwrap_or(u32::MAX)
            }
        }
    }

    pub fn status(&self, now: Instant) -> Status {
        let phase_status = || match &self.phase {
            Phase::Open { .. } => Status::Failed,
            Phase::HalfOpen { .. } => Status::Degraded,
            Phase::Closed { recovered_at, .. } => {
                let window = self.window.totals(now.saturating_duration_since(self.origin));
                if self.total == 0 && !self.probed {
                    Status::Unknown
                } else if recovered_at.is_some_and(|at| now.saturating_duration_since(at) < self.policy.min_healthy_period)
                    || window.failures > 0
                {
                    Status::Degraded
                } else {
                    Status::Healthy
                }
            }
        };
        match self.effective_mode() {
            Mode::ForcedOpen => Status::Failed,
            // Shadow mode lets everything through: a would-be trip is worth a
            // look (degraded), not an outage (failed).
            Mode::MetricsOnly => match phase_status() {
                Status::Failed => Status::Degraded,
                s => s,
            },
            Mode::Auto | Mode::ForcedClosed => phase_status(),
        }
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let (open_until, trip) = match &self.phase {
            Phase::Open { until, trip, .. } => (Some(*until), Some(trip.clone())),
            _ => (None, None),
        };
        Snapshot {
            state: self.state(),
            status: self.status(now),
            mode: self.mode,
            mode_until: self.mode_until,
            failure_count: self.failure_count(now),
            window: self.window.totals(now.saturating_duration_since(self.origin)),
            last_failure: self.last_failure,
            last_success: self.last_success,
            recovery_attempts: self.recovery_attempts,
            total_incidents: self.total_incidents,
            total: self.total,
            successful: self.successful,
            failed: self.failed,
            rejected: self.rejected,
            last_duration: self.last_duration,
            average_duration: (self.total > 0).then(|| self.duration_sum / u32::try_from(self.total).unwrap_or(u32::MAX)),
            open_until,
            trip,
            restored: self.restored_epoch == Some(self.epoch),
            state_since: self.state_since,
            last_transition: self.last_transition.clone(),
        }
    }
}

// === impl CircuitState ===

impl CircuitState {
    pub const ALL: [CircuitState; 6] = [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
        CircuitState::ForcedOpen,
        CircuitState::ForcedClosed,
        CircuitState::MetricsOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
            CircuitState::ForcedOpen => "forced-open",
            CircuitState::ForcedClosed => "forced-closed",
            CircuitState::MetricsOnly => "metrics-only",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Status ===

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }

    /// The status [`Status::as_str`] names.
    pub fn parse(s: &str) -> Option<Status> {
        [Status::Healthy, Status::Degraded, Status::Failed, Status::Unknown].into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Mode ===

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::ForcedOpen => "forced-open",
            Mode::ForcedClosed => "forced-closed",
            Mode::MetricsOnly => "metrics-only",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "auto" => Mode::Auto,
            "forced-open" => Mode::ForcedOpen,
            "forced-closed" => Mode::ForcedClosed,
            "metrics-only" => Mode::MetricsOnly,
            _ => return None,
        })
    }
}

// === impl RejectReason ===

impl RejectReason {
    /// The `reason` label of `fusebox_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::CircuitOpen => "circuit_open",
            RejectReason::HalfOpenFull => "half_open_full",
            RejectReason::Ramp => "recovery_ramp",
        }
    }
}

// === impl Reason ===

impl Reason {
    /// The rule name: the `reason` label of transition metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            Reason::Consecutive { .. } => "consecutive",
            Reason::FailureRate { .. } => "failure-rate",
            Reason::SlowRate { .. } => "slow-rate",
            Reason::ResetTimeout { .. } => "reset-timeout",
            Reason::Evidence { .. } => "evidence",
            Reason::Probe { .. } => "probe",
            Reason::Operator { .. } => "operator",
            Reason::Ttl => "ttl",
            Reason::Fleet { .. } => "fleet",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Consecutive { failures, threshold } => {
                write!(f, "{failures} consecutive failures (threshold {threshold})")
            }
            Reason::FailureRate { rate, threshold, calls } => {
                write!(f, "failure rate {rate:.1}% over {calls} calls (threshold {threshold}%)")
            }
            Reason::SlowRate { rate, threshold, calls } => {
                write!(f, "slow-call rate {rate:.1}% over {calls} calls (threshold {threshold}%)")
            }
            Reason::ResetTimeout { waited } => write!(f, "reset timeout elapsed after {waited:.1?}"),
            Reason::Evidence { what, waited } => write!(f, "{what} after {waited:.1?} open"),
            Reason::Probe { success: true, trials } => write!(f, "{trials} trial(s) succeeded"),
            Reason::Probe { success: false, trials } => write!(f, "trial {trials} failed"),
            Reason::Operator { action } => write!(f, "operator: {action}"),
            Reason::Ttl => f.write_str("operator override expired"),
            Reason::Fleet { text } => f.write_str(text),
        }
    }
}
