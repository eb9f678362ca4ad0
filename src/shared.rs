//! State shared by pool handles, connection guards and the monitor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use r2d2::ManageConnection;

use crate::backend::Backend;
use crate::clock::CoarseClock;
use crate::config::Config;
use crate::error::{Blocked, SideReport};
use crate::monitor::Command;
use crate::report::Events;
use crate::side::{PerSide, Side};
use crate::status::Status;
use crate::subpool::SubPool;

/// Where `get()` is served from: the one truth of routing, written only by the monitor (under
/// the write lock) when it switches or blocks writers. Checkouts read its copy in
/// [`Shared::route`], one atomic word, so the uncontended path takes no lock.
#[derive(Debug)]
pub(crate) struct Routing {
    pub(crate) active: Side,
    pub(crate) blocked: Option<Blocked>,
}

/// Bit 0 of a route word: the active side; bit 1: writers are blocked; the rest a version.
pub(crate) const ROUTE_BLOCKED: u64 = 2;

/// The active side encoded in a route word.
pub(crate) fn route_side(word: u64) -> Side {
    if word & 1 == 0 {
        Side::Primary
    } else {
        Side::Mirror
    }
}

pub(crate) struct Shared<M: ManageConnection> {
    pub(crate) config: Config,
    pub(crate) sides: PerSide<Arc<SubPool<M>>>,
    pub(crate) routing: RwLock<Routing>,
    /// A read-optimised copy of `routing` for the checkout path, bumped on every change so
    /// waiters notice it. Written only under the routing write lock.
    pub(crate) route: AtomicU64,
    pub(crate) backend: Arc<dyn Backend<M>>,
    pub(crate) events: Events,
    pub(crate) clock: Arc<CoarseClock>,
    /// What the monitor last published for `status()`; never touched by checkouts.
    pub(crate) view: Mutex<Status>,
    pub(crate) commands: Sender<Command>,
}

impl<M: ManageConnection> Shared<M> {
    /// Changes routing and wakes every waiter on both sides so they re-read it.
    pub(crate) fn set_routing(&self, active: Side, blocked: Option<Blocked>) {
        {
            let mut r = self.routing.write();
            let version = (self.route.load(Ordering::Acquire) >> 2) + 1;
            let word = version << 2
                | if blocked.is_some() { ROUTE_BLOCKED } else { 0 }
                | active.index() as u64;
            r.active = active;
            r.blocked = blocked;
            self.route.store(word, Ordering::Release);
        }
        for side in Side::BOTH {
            self.sides[side].wake_all();
        }
    }

    /// A snapshot for `status()`, metrics and `build_checked`.
    pub(crate) fn status(&self) -> Status {
        let mut status = self.view.lock().clone();
        {
            let r = self.routing.read();
            status.active = r.active;
            status.blocked = r.blocked.clone();
        }
        status.max_size = self.config.max_size;
        for side in Side::BOTH {
            let sub = &self.sides[side];
            let c = sub.counts();
            let s = status.side_mut(side);
            s.connections = c.open;
            s.idle = c.idle;
            s.pending = c.pending;
            s.in_use = c.open.saturating_sub(c.idle + c.pending);
            s.waiters = c.waiters;
            s.stale = c.stale_out;
            s.created = c.created;
            s.closed = c.closed;
            s.connect_failures = c.connect_failures;
            let (error, checkouts) = sub.last_error_and_checkouts();
            s.last_connect_error = error;
            s.checkouts = checkouts;
        }
        status
    }

    pub(crate) fn side_report(&self, view: &Status, side: Side) -> SideReport {
        let s = view.side(side);
        SideReport {
            side,
            health: s.health,
            last_error: s.last_error.clone(),
            connect_error: self.sides[side].last_error(),
        }
    }
}

/// What a sub-pool may ask of the monitor: a probe of its side, nothing else.
#[derive(Clone, Debug)]
pub(crate) struct ProbeRequester(pub(crate) Sender<Command>);

impl ProbeRequester {
    /// Asks for a probe of `side` soon; never blocks (a full queue already holds requests).
    pub(crate) fn request(&self, side: Side) {
        let _ = self.0.try_send(Command::ProbeNow(side));
    }
}
