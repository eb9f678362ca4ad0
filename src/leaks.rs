//! Leak detection (off by default): a connection held longer than a threshold is logged once
//! with where it was checked out, like HikariCP's `leakDetectionThreshold`. The backtrace is
//! captured only when the option is on.

use std::backtrace::Backtrace;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::side::Side;

struct Held {
    since: Instant,
    taken_at: Backtrace,
    reported: bool,
}

/// The checked-out connections of one side, by connection id.
pub(crate) struct Leaks {
    threshold: Duration,
    held: Mutex<HashMap<u64, Held>>,
}

impl Leaks {
    pub(crate) fn new(threshold: Duration) -> Leaks {
        Leaks {
            threshold,
            held: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn checked_out(&self, id: u64) {
        let held = Held {
            since: Instant::now(),
            taken_at: Backtrace::force_capture(),
            reported: false,
        };
        self.held.lock().insert(id, held);
    }

    pub(crate) fn returned(&self, id: u64, side: Side) {
        if let Some(h) = self.held.lock().remove(&id) {
            if h.reported {
                log::info!(
                    "{side} connection {id}, reported as possibly leaked, was returned after {:?}",
                    h.since.elapsed()
                );
            }
        }
    }

    /// Logs (once each) connections held longer than the threshold; returns how many were
    /// reported now.
    pub(crate) fn report(&self, side: Side, now: Instant) -> usize {
        let mut n = 0;
        for (id, h) in self.held.lock().iter_mut() {
            let held_for = now.saturating_duration_since(h.since);
            if !h.reported && held_for >= self.threshold {
                h.reported = true;
                n += 1;
                log::warn!(
                    "{side} connection {id} has been checked out for {held_for:?} (leak detection threshold {:?}); it was taken at:\n{}",
                    self.threshold,
                    h.taken_at
                );
            }
        }
        n
    }
}
