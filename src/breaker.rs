//! The circuit breaker engine: a pure state machine, one per upstream.
//!
//! `policy` holds the thresholds, `window` the time-bucketed call counts,
//! `state` the machine itself. Time is always passed in (`now`), randomness
//! comes from a seeded generator, and every change of state is returned as a
//! [`Transition`] carrying its reason. This module must not read a clock,
//! sleep, log, touch metrics or import tokio, hyper or prometheus: the caller
//! holds the lock, and logs, counts and broadcasts after releasing it.

mod policy;
mod state;
mod window;

pub use policy::{Policy, StatusRange, StatusSet};
pub use state::{
    Breaker, CallOutcome, CircuitState, Mode, Permit, Reason, RejectReason, Rejection, ResetReport, Snapshot, Status, Transition,
};
pub use window::{Counts, Window};
