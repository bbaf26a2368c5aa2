//! The per-session limit on client messages (ping frames included):
//! [`MESSAGES_PER_MINUTE`] as a GCRA through `governor` (a burst of that
//! many, then one every 60 s / that many), and twice that rate before the
//! connection is closed. On the crate's clock (tokio's), so paused test
//! time reaches it.
//!
//! It must not answer the client: the session turns a [`Rate`] into error
//! 4029 or the close.

use std::num::NonZeroU32;

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::MESSAGES_PER_MINUTE;
use crate::admin::auth::LimiterClock;

const ALLOWED: NonZeroU32 = match NonZeroU32::new(MESSAGES_PER_MINUTE) {
    Some(n) => n,
    None => panic!("MESSAGES_PER_MINUTE must not be zero"),
};
const TOLERATED: NonZeroU32 = match NonZeroU32::new(2 * MESSAGES_PER_MINUTE) {
    Some(n) => n,
    None => panic!("MESSAGES_PER_MINUTE must not be zero"),
};

type Limiter = RateLimiter<NotKeyed, InMemoryState, LimiterClock, NoOpMiddleware<std::time::Instant>>;

/// One session's client messages.
pub(super) struct MessageRate {
    /// [`MESSAGES_PER_MINUTE`] a minute: past it, error 4029.
    allowed: Limiter,
    /// Twice that (every message counts, refused ones too): past it, close.
    tolerated: Limiter,
}

/// What one more client message is.
pub(super) enum Rate {
    Allowed,
    Limited,
    Exceeded,
}

// === impl MessageRate ===

impl MessageRate {
    pub(super) fn new() -> MessageRate {
        MessageRate {
            allowed: RateLimiter::direct_with_clock(Quota::per_minute(ALLOWED), LimiterClock),
            tolerated: RateLimiter::direct_with_clock(Quota::per_minute(TOLERATED), LimiterClock),
        }
    }

    /// Counts one client message.
    pub(super) fn hit(&self) -> Rate {
        if self.tolerated.check().is_err() {
            Rate::Exceeded
        } else if self.allowed.check().is_err() {
            Rate::Limited
        } else {
            Rate::Allowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn limits_then_closes() {
        let rate = MessageRate::new();
        for _ in 0..MESSAGES_PER_MINUTE {
            assert!(matches!(rate.hit(), Rate::Allowed));
        }
        for _ in 0..MESSAGES_PER_MINUTE {
            assert!(matches!(rate.hit(), Rate::Limited));
        }
        assert!(matches!(rate.hit(), Rate::Exceeded));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(matches!(rate.hit(), Rate::Allowed));
    }

    #[tokio::test(start_paused = true)]
    async fn refills_one_a_second() {
        let rate = MessageRate::new();
        for _ in 0..MESSAGES_PER_MINUTE {
            assert!(matches!(rate.hit(), Rate::Allowed));
        }
        assert!(matches!(rate.hit(), Rate::Limited));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(rate.hit(), Rate::Allowed));
        assert!(matches!(rate.hit(), Rate::Limited));
    }
}
