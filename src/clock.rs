//! The one clock: tokio's (so `tokio::time::pause` reaches every timer),
//! handed to the pure breaker as `std::time::Instant`, plus the conversion of
//! those instants to wall-clock time for JSON timestamps.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, on tokio's clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn anchor() -> &'static (Instant, SystemTime) {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    ANCHOR.get_or_init(|| (now(), SystemTime::now()))
}

/// Wall-clock time of a monotonic instant.
pub fn wall(at: Instant) -> SystemTime {
    let (i0, s0) = *anchor();
    if at >= i0 {
        s0 + (at - i0)
    } else {
        s0 - (i0 - at)
    }
}

/// Milliseconds of `at` since the clock's anchor (0 for earlier instants),
/// for instants kept in atomics.
pub fn ms(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(anchor().0).as_millis()).unwrap_or(u64::MAX)
}

/// The instant `ms` milliseconds after the clock's anchor (saturating).
pub fn from_ms(ms: u64) -> Instant {
    let base = anchor().0;
    base.checked_add(Duration::from_millis(ms)).unwrap_or(base)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T05:30:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    // humantime formats 1970..=9999 and panics outside: clamp first.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let t = t.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 before it, saturating).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall-clock RFC 3339 of now.
pub fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_325_400_123);
        assert_eq!(rfc3339(t), "2026-11-22T05:30:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z", "clamped, no panic");
        assert!(rfc3339(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)).starts_with("9999-12-31"), "clamped, no panic");
    }
}
