//! The pool handle, its shared state, and the connection guard.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use r2d2::ManageConnection;

use crate::backend::{Backend, Fault};
use crate::clock::CoarseClock;
use crate::config::{Builder, Config};
use crate::error::{Blocked, Error, SideReport};
use crate::event::HandleEvent;
use crate::health::Health;
use crate::monitor::{self, Command};
use crate::side::{PerSide, Side};
use crate::status::{SideStatus, Status};
use crate::subpool::{Checkout, Conn, SubPool, SubPoolConfig};

/// Where `get()` is served from. Guarded by the pool's `RwLock`: read on every checkout,
/// written only by the monitor when it switches or blocks writers.
#[derive(Debug)]
pub(crate) struct Routing {
    pub(crate) active: Side,
    pub(crate) blocked: Option<Blocked>,
}

/// State shared by handles, guards and the monitor.
pub(crate) struct Shared<M: ManageConnection> {
    pub(crate) config: Config,
    pub(crate) sides: PerSide<Arc<SubPool<M>>>,
    pub(crate) routing: RwLock<Routing>,
    /// The routing as one word for the checkout path (a plain load, no lock): bit 0 the active
    /// side, bit 1 "blocked", the rest a version bumped on every change, so waiters notice it.
    /// Written only under the routing write lock.
    pub(crate) route: AtomicU64,
    pub(crate) backend: Arc<dyn Backend<M>>,
    pub(crate) events: Arc<dyn HandleEvent>,
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
            let word = version << 2 | u64::from(blocked.is_some()) << 1 | active.index() as u64;
            r.active = active;
            r.blocked = blocked;
            self.route.store(word, Ordering::Release);
        }
        for side in Side::BOTH {
            self.sides[side].wake_all();
        }
    }

    fn side_report(&self, view: &Status, side: Side) -> SideReport {
        let s = view.side(side);
        SideReport {
            side,
            health: s.health,
            last_error: s.last_error.clone(),
            connect_error: self.sides[side].last_error(),
        }
    }
}

/// Owned by the user-facing handles only: when the last handle drops, the monitor stops.
struct Handle<M: ManageConnection> {
    shared: Arc<Shared<M>>,
    monitor: Option<JoinHandle<()>>,
}

impl<M: ManageConnection> Drop for Handle<M> {
    fn drop(&mut self) {
        let _ = self.shared.commands.send(Command::Shutdown);
        if let Some(m) = self.monitor.take() {
            if m.thread().id() != thread::current().id() {
                let _ = m.join();
            }
        }
    }
}

/// A connection pool over a primary database and its mirror that fails over by itself.
///
/// Cheap to clone; all clones share one pool. Dropping the last clone stops the monitor and
/// closes every idle connection; connections still checked out are closed when returned.
pub struct MirrorPool<M: ManageConnection> {
    handle: Arc<Handle<M>>,
}

impl<M: ManageConnection> Clone for MirrorPool<M> {
    fn clone(&self) -> Self {
        MirrorPool {
            handle: self.handle.clone(),
        }
    }
}

impl<M: ManageConnection> fmt::Debug for MirrorPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.shared().routing.read();
        f.debug_struct("MirrorPool")
            .field("active", &r.active)
            .field("blocked", &r.blocked)
            .finish_non_exhaustive()
    }
}

impl<M: ManageConnection> MirrorPool<M> {
    /// A builder with default settings.
    pub fn builder() -> Builder<M> {
        Builder::new()
    }

    /// A pool with default settings and the [`IsValid`](crate::IsValid) backend.
    pub fn new(primary: M, mirror: M) -> Result<MirrorPool<M>, Error> {
        Builder::new().build(primary, mirror)
    }

    pub(crate) fn start(
        config: Config,
        primary: M,
        mirror: M,
        backend: Arc<dyn Backend<M>>,
        events: Arc<dyn HandleEvent>,
    ) -> Result<MirrorPool<M>, Error> {
        let now = Instant::now();
        let clock = Arc::new(CoarseClock::new(now));
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let sub = |side: Side, manager: M, min_idle: u32| {
            SubPool::new(
                side,
                Arc::new(manager),
                SubPoolConfig {
                    max_size: config.max_size,
                    min_idle,
                    test_on_check_out: config.test_on_check_out,
                    validation_window: config.validation_window,
                    clock_granularity: config.heartbeat_interval,
                    idle_timeout: config.idle_timeout,
                    max_lifetime: config.max_lifetime,
                    min_retry_delay: config.suspect_interval,
                    max_retry_delay: config.heartbeat_interval,
                    reset_on_return: config.reset_on_return,
                },
                clock.clone(),
                backend.clone(),
                tx.clone(),
            )
        };
        let sides = PerSide::new(
            sub(Side::Primary, primary, config.min_idle),
            sub(Side::Mirror, mirror, config.mirror_min_idle),
        );
        let shared = Arc::new(Shared {
            sides,
            routing: RwLock::new(Routing {
                active: Side::Primary,
                blocked: None,
            }),
            route: AtomicU64::new(0),
            backend,
            events,
            clock,
            view: Mutex::new(Status {
                active: Side::Primary,
                blocked: None,
                primary: SideStatus::new(Health::Unknown),
                mirror: SideStatus::new(Health::Unknown),
                switches: 0,
                last_switch: None,
                split_brain: false,
                fenced: None,
            }),
            commands: tx,
            config,
        });
        let monitor = monitor::spawn(shared.clone(), rx, now).map_err(Error::Spawn)?;
        Ok(MirrorPool {
            handle: Arc::new(Handle {
                shared,
                monitor: Some(monitor),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared<M>> {
        &self.handle.shared
    }

    /// A connection for writers, from the active side, waiting up to `connection_timeout`.
    pub fn get(&self) -> Result<PooledConnection<M>, Error> {
        self.get_timeout(self.shared().config.connection_timeout)
    }

    /// A connection for writers, from the active side, waiting up to `timeout`.
    ///
    /// During a failover the caller waits and is then served by the new side; it gets an
    /// error only if no side can serve within `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<PooledConnection<M>, Error> {
        self.checkout(None, timeout)
    }

    /// An idle connection of the active side, if one is available now. Never waits or connects.
    pub fn try_get(&self) -> Option<PooledConnection<M>> {
        let shared = self.shared();
        let word = shared.route.load(Ordering::Acquire);
        if word & 2 != 0 {
            return None;
        }
        let sub = &shared.sides[route_side(word)];
        let conn = sub.try_take()?;
        Some(PooledConnection::new(sub.clone(), conn))
    }

    /// A connection to a given side, whatever the active side is: for reads from the mirror
    /// or maintenance. Fails at once if that side is marked down.
    pub fn get_from(&self, side: Side) -> Result<PooledConnection<M>, Error> {
        self.get_from_timeout(side, self.shared().config.connection_timeout)
    }

    /// [`get_from`](Self::get_from) with an explicit timeout.
    pub fn get_from_timeout(
        &self,
        side: Side,
        timeout: Duration,
    ) -> Result<PooledConnection<M>, Error> {
        let shared = self.shared();
        let (health, cause) = {
            let view = shared.view.lock();
            let s = view.side(side);
            (s.health, s.last_error.clone())
        };
        if health == Health::Down {
            return Err(Error::SideDown { side, cause });
        }
        self.checkout(Some(side), timeout)
    }

    fn checkout(
        &self,
        explicit: Option<Side>,
        timeout: Duration,
    ) -> Result<PooledConnection<M>, Error> {
        let shared = self.shared();
        let mut deadline: Option<Instant> = None;
        loop {
            let word = shared.route.load(Ordering::Acquire);
            let (side, blocked) = match explicit {
                Some(side) => (side, false),
                None => (route_side(word), word & 2 != 0),
            };
            let sub = &shared.sides[side];
            if blocked {
                let now = Instant::now();
                let until = *deadline.get_or_insert(now + timeout);
                if now >= until {
                    return Err(self.unavailable(timeout));
                }
                sub.wait_for_change(&shared.route, word, until);
                continue;
            }
            match sub.checkout(&shared.route, word, &mut deadline, timeout) {
                Checkout::Got(conn) => return Ok(PooledConnection::new(sub.clone(), conn)),
                Checkout::Changed => continue,
                Checkout::Failed => sub.request_probe(),
                Checkout::TimedOut(cause) => {
                    // If routing blocked meanwhile, the better error names both sides.
                    if explicit.is_none() && shared.routing.read().blocked.is_some() {
                        return Err(self.unavailable(timeout));
                    }
                    return Err(Error::Timeout {
                        side,
                        waited: timeout,
                        cause,
                    });
                }
                Checkout::Closed => return Err(Error::Closed),
            }
        }
    }

    fn unavailable(&self, waited: Duration) -> Error {
        let shared = self.shared();
        let blocked = shared
            .routing
            .read()
            .blocked
            .clone()
            .unwrap_or(Blocked::NoWritableSide);
        let view = shared.view.lock();
        Error::Unavailable {
            waited,
            blocked,
            primary: Box::new(shared.side_report(&view, Side::Primary)),
            mirror: Box::new(shared.side_report(&view, Side::Mirror)),
        }
    }

    /// Moves writers to `to` now (a planned switch-over). Refused if `to` is down, fenced or a
    /// read-only replica; ignores `min_switch_interval`. Waits for the monitor to apply it.
    pub fn switch_over(&self, to: Side) -> Result<(), Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared()
            .commands
            .send(Command::Switch(to, tx))
            .map_err(|_| Error::Closed)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::SwitchRefused { to, reason }),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Asks the monitor to probe both sides now rather than at the next tick.
    pub fn probe_now(&self) {
        for side in Side::BOTH {
            self.shared().sides[side].request_probe();
        }
    }

    /// A snapshot of the pool: routing, per-side health, roles, lag and connection counts.
    pub fn status(&self) -> Status {
        let shared = self.shared();
        let mut status = shared.view.lock().clone();
        {
            let r = shared.routing.read();
            status.active = r.active;
            status.blocked = r.blocked.clone();
        }
        for side in Side::BOTH {
            let c = shared.sides[side].counts();
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
            s.last_connect_error = shared.sides[side].last_error();
        }
        status
    }

    /// The side `get()` serves from.
    pub fn active(&self) -> Side {
        self.shared().routing.read().active
    }

    /// The manager of one side.
    pub fn manager(&self, side: Side) -> &M {
        &self.shared().sides[side].manager
    }

    /// Maximum connections per side.
    pub fn max_size(&self) -> u32 {
        self.shared().config.max_size
    }

    /// The default `get()` timeout.
    pub fn connection_timeout(&self) -> Duration {
        self.shared().config.connection_timeout
    }
}

/// A connection checked out of a [`MirrorPool`]. Derefs to the connection; returns it on drop.
///
/// A connection dropped while its thread panics is closed, not returned: it may be in the
/// middle of a transaction.
pub struct PooledConnection<M: ManageConnection> {
    // The side's sub-pool rather than the whole pool: all a guard needs.
    sub: Arc<SubPool<M>>,
    conn: Option<Conn<M>>,
    broken: bool,
}

impl<M: ManageConnection> PooledConnection<M> {
    fn new(sub: Arc<SubPool<M>>, conn: Conn<M>) -> Self {
        PooledConnection {
            sub,
            conn: Some(conn),
            broken: false,
        }
    }

    /// The side this connection belongs to.
    pub fn side(&self) -> Side {
        self.sub.side
    }

    /// A number identifying this connection among all pools in the process.
    pub fn id(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.id)
    }

    /// Tells the pool about an error this connection returned. If it means the connection is
    /// lost or the server no longer takes writes, the connection is closed on return and the
    /// monitor probes the side at once (the fast path). Returns the classification.
    pub fn report(&mut self, error: &M::Error) -> Fault {
        let fault = self.sub.backend.classify(error);
        match fault {
            Fault::ConnectionLost => {
                self.broken = true;
                self.sub.request_probe();
            }
            Fault::NotWritable => self.sub.request_probe(),
            Fault::TooManyConnections | Fault::Other => {}
        }
        fault
    }

    /// Marks the connection broken: it is closed instead of returned.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }
}

impl<M: ManageConnection> Deref for PooledConnection<M> {
    type Target = M::Connection;
    fn deref(&self) -> &M::Connection {
        &self
            .conn
            .as_ref()
            .expect("connection present until drop")
            .conn
    }
}

impl<M: ManageConnection> DerefMut for PooledConnection<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self
            .conn
            .as_mut()
            .expect("connection present until drop")
            .conn
    }
}

impl<M: ManageConnection> fmt::Debug for PooledConnection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("side", &self.side())
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl<M: ManageConnection> Drop for PooledConnection<M> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let sub = &self.sub;
            let mut broken =
                self.broken || thread::panicking() || sub.manager.has_broken(&mut conn.conn);
            if !broken && sub.resets_on_return() {
                if let Err(e) = sub.backend.reset(&sub.manager, &mut conn.conn) {
                    log::debug!(
                        "resetting a {} connection failed, closing it: {}",
                        sub.side,
                        crate::Cause::capture(&*e).chain()
                    );
                    broken = true;
                }
            }
            sub.checkin(conn, broken);
        }
    }
}

/// The active side encoded in a routing word.
fn route_side(word: u64) -> Side {
    if word & 1 == 0 {
        Side::Primary
    } else {
        Side::Mirror
    }
}
