//! A coarse clock the monitor advances, so the checkout path never reads the system clock
//! just to age connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the pool started, as of the monitor's last wake-up (at least once per
/// heartbeat interval).
#[derive(Debug)]
pub(crate) struct CoarseClock {
    start: Instant,
    ms: AtomicU64,
}

impl CoarseClock {
    pub(crate) fn new(start: Instant) -> CoarseClock {
        CoarseClock {
            start,
            ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }

    pub(crate) fn advance(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        self.ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// The longest any deadline reaches: a century is "never" for a pool, and far from where
/// `Instant` arithmetic could overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `t + d`, saturating: any duration too large to add (`Duration::MAX`, say) means "not in
/// this process's lifetime". Every deadline in the crate is computed with this, so no
/// configured or caller-given duration can make instant arithmetic panic.
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(NEVER))
        .or_else(|| t.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(t)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_saturates_instead_of_overflowing() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > after(now, Duration::from_secs(3600 * 24 * 365)));
        assert_eq!(
            after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(7)), 7);
    }
}
