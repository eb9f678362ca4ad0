//! A coarse clock the monitor advances, so the checkout path never reads the system clock
//! just to age connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
