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
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60, d.subsec_millis())
}

/// Wall-clock RFC 3339 of now.
pub fn timestamp() -> String {
    rfc3339(SystemTime::now())
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_325_400_123);
        assert_eq!(rfc3339(t), "2026-11-22T05:30:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
