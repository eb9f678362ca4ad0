//! A recording event handler for tests, benchmarks and demos.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::event::{Event, HandleEvent};

/// A [`HandleEvent`] that records every event the pool reports, with the
/// instant it arrived, and optionally prints each one as it comes.
///
/// Clones share one record, so install a clone in the pool and keep the
/// original for assertions. The per-connection events (acquire, release,
/// checkout, checkin) are left out unless asked for: a busy pool reports
/// thousands of them.
///
/// ```
/// use mirrorpool::event::Event;
/// use mirrorpool::testkit::EventLog;
/// let log = EventLog::new();
/// let pool_side = log.clone(); // give this one to `Builder::event_handler`
/// # drop(pool_side);
/// assert_eq!(log.count(|e| matches!(e, Event::Switch(_))), 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
    connection_events: bool,
    keep: Option<fn(&Event) -> bool>,
    echo_since: Option<Instant>,
}

impl EventLog {
    /// An empty log that records failover events only.
    pub fn new() -> EventLog {
        EventLog::default()
    }

    /// Also records the per-connection events (acquire, release, checkout,
    /// checkin). Default: `false`.
    #[must_use]
    pub fn with_connection_events(mut self, record: bool) -> EventLog {
        self.connection_events = record;
        self
    }

    /// Records (and echoes) only the events for which `keep` returns true,
    /// e.g. `|e| !matches!(e, Event::HeartbeatFailure(_))` to leave out the
    /// heartbeat failures that repeat while a side is down. Default: all.
    #[must_use]
    pub fn keep(mut self, keep: fn(&Event) -> bool) -> EventLog {
        self.keep = Some(keep);
        self
    }

    /// Prints each recorded event to stdout as it arrives, as
    /// `"<ms since t0> ms  event: <event>"`. Default: silent.
    #[must_use]
    pub fn echo_since(mut self, t0: Instant) -> EventLog {
        self.echo_since = Some(t0);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Instant, Event)>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every recorded event with its arrival, oldest first.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.lock().clone()
    }

    /// Every recorded event as text ([`Event`]'s `Display`), oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lock().iter().map(|(_, e)| e.to_string()).collect()
    }

    /// When the first event matching `pred` arrived.
    pub fn first(&self, pred: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.lock().iter().find(|(_, e)| pred(e)).map(|(t, _)| *t)
    }

    /// How many recorded events match `pred`.
    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.lock().iter().filter(|(_, e)| pred(e)).count()
    }

    /// The record as one line per event, each with its milliseconds after
    /// `t0` (negative before it).
    pub fn timeline(&self, t0: Instant) -> String {
        let mut out = String::new();
        for (t, e) in self.lock().iter() {
            let _ = writeln!(out, "{:9.1} ms  {e}", ms_after(t0, *t));
        }
        out
    }
}

/// Milliseconds from `t0` to `t`, negative if `t` is earlier.
fn ms_after(t0: Instant, t: Instant) -> f64 {
    if t >= t0 {
        (t - t0).as_secs_f64() * 1e3
    } else {
        -((t0 - t).as_secs_f64() * 1e3)
    }
}

impl HandleEvent for EventLog {
    fn handle(&self, event: Event) {
        let per_connection = matches!(
            event,
            Event::Acquire(_) | Event::Release(_) | Event::Checkout(_) | Event::Checkin(_)
        );
        if per_connection && !self.connection_events {
            return;
        }
        if self.keep.is_some_and(|keep| !keep(&event)) {
            return;
        }
        let now = Instant::now();
        if let Some(t0) = self.echo_since {
            println!("{:>8.1} ms  event: {event}", ms_after(t0, now));
        }
        self.lock().push((now, event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::event::{CheckoutEvent, SideUpEvent};
    use crate::Side;
    use std::time::Duration;

    #[test]
    fn clones_share_one_record_of_failover_events() {
        let t0 = Instant::now();
        let log = EventLog::new();
        let pool_side = log.clone();
        assert_eq!(log.first(|_| true), None);
        pool_side.handle(Event::SideUp(SideUpEvent {
            side: Side::Mirror,
            was_down: true,
        }));
        let checkout = || {
            Event::Checkout(CheckoutEvent {
                side: Side::Primary,
                connection_id: 1,
                duration: Duration::ZERO,
            })
        };
        pool_side.handle(checkout());
        assert_eq!(log.lines(), vec!["the mirror is up".to_owned()]);
        assert_eq!(log.count(|e| matches!(e, Event::SideUp(_))), 1);
        assert!(log.first(|e| matches!(e, Event::SideUp(_))).unwrap() >= t0);
        assert!(log.timeline(t0).ends_with("ms  the mirror is up\n"));
        let all = EventLog::new().with_connection_events(true);
        all.handle(checkout());
        assert_eq!(all.events().len(), 1);
        let no_checkouts = all.clone().keep(|e| !matches!(e, Event::Checkout(_)));
        no_checkouts.handle(checkout());
        assert_eq!(all.events().len(), 1);
        assert!(ms_after(t0 + Duration::from_millis(5), t0) < 0.0);
    }
}
