//! The pool handle and the connection guard.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use r2d2::ManageConnection;

use crate::backend::{Backend, Fault};
use crate::clock::{after, CoarseClock};
use crate::config::{Builder, Config, Customizer};
use crate::error::{Blocked, BuildError, GetError, SwitchError};
use crate::event::HandleEvent;
use crate::event::{CheckinEvent, CheckoutEvent, Event, TimeoutEvent};
use crate::extensions::Extensions;
use crate::health::Health;
use crate::monitor::{self, Command};
use crate::observation::Role;
use crate::report::{catch, Events};
use crate::shared::{route_side, ProbeRequester, Routing, Shared, ROUTE_BLOCKED};
use crate::side::{PerSide, Side};
use crate::status::{SideStatus, Status};
use crate::subpool::{Checkout, Conn, SubPool, SubPoolConfig, Wait, Wiring};

/// Owned by the user-facing handles only: when the last handle drops, the monitor stops.
struct Handle<M: ManageConnection> {
    shared: Arc<Shared<M>>,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

impl<M: ManageConnection> Handle<M> {
    /// Stops the monitor (which closes both sub-pools) and waits for it.
    fn close(&self) {
        let _ = self.shared.commands.send(Command::Shutdown);
        if let Some(m) = self.monitor.lock().take() {
            if m.thread().id() != thread::current().id() {
                let _ = m.join();
            }
        }
    }
}

impl<M: ManageConnection> Drop for Handle<M> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A connection pool over a primary database and its mirror that fails over by itself.
///
/// Cheap to clone; all clones share one pool. Dropping the last clone (or calling
/// [`close`](Self::close)) stops the monitor and closes every idle connection; connections
/// still checked out are closed when returned.
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

    /// A pool with default settings and the [`IsValid`](crate::backend::IsValid) backend.
    pub fn new(primary: M, mirror: M) -> Result<MirrorPool<M>, BuildError> {
        Builder::new().build(primary, mirror)
    }

    pub(crate) fn start(
        config: Config,
        primary: M,
        mirror: M,
        backend: Arc<dyn Backend<M>>,
        events: Vec<Arc<dyn HandleEvent>>,
        customizer: Option<Customizer<M>>,
    ) -> Result<MirrorPool<M>, BuildError> {
        let now = Instant::now();
        let clock = Arc::new(CoarseClock::new(now));
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let events = Events::new(events);
        let f = &config.failover;
        let sub = |side: Side, manager: M, min_idle: u32| {
            SubPool::new(
                side,
                Arc::new(manager),
                SubPoolConfig {
                    max_size: config.max_size,
                    min_idle,
                    test_on_check_out: config.test_on_check_out,
                    validation_window: config.validation_window,
                    clock_granularity: f.heartbeat_interval,
                    idle_timeout: config.idle_timeout,
                    max_lifetime: config.max_lifetime,
                    min_retry_delay: f.suspect_interval,
                    max_retry_delay: f.heartbeat_interval,
                    reset_on_return: config.reset_on_return,
                },
                Wiring {
                    clock: clock.clone(),
                    backend: backend.clone(),
                    probes: ProbeRequester(tx.clone()),
                    customizer: customizer.clone(),
                    events: events.clone(),
                    leak_threshold: config.leak_detection_threshold,
                },
            )
        };
        let sides = PerSide::new(
            sub(Side::Primary, primary, config.primary_min_idle()),
            sub(Side::Mirror, mirror, config.mirror_min_idle()),
        );
        let shared = Arc::new(Shared {
            sides,
            routing: RwLock::new(Routing {
                active: Side::Primary,
                blocked: None,
            }),
            route: std::sync::atomic::AtomicU64::new(0),
            backend,
            events,
            clock,
            view: Mutex::new(Status::new()),
            commands: tx,
            config,
        });
        let monitor = monitor::spawn(shared.clone(), rx, now).map_err(BuildError::Spawn)?;
        Ok(MirrorPool {
            handle: Arc::new(Handle {
                shared,
                monitor: Mutex::new(Some(monitor)),
            }),
        })
    }

    fn shared(&self) -> &Arc<Shared<M>> {
        &self.handle.shared
    }

    /// A connection for writers, from the active side, waiting up to `connection_timeout`.
    pub fn get(&self) -> Result<PooledConnection<M>, GetError> {
        self.get_timeout(self.shared().config.connection_timeout)
    }

    /// A connection for writers, from the active side, waiting up to `timeout`
    /// (`Duration::MAX`: without a deadline).
    ///
    /// During a failover the caller waits and is then served by the new side; it gets an
    /// error only if no side can serve within `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<PooledConnection<M>, GetError> {
        self.checkout(None, timeout)
    }

    /// An idle connection of the active side, if one is available now. Never waits for
    /// another connection or opens one, but may validate the idle one it takes (a round
    /// trip, see `test_on_check_out`); `None` if that fails.
    pub fn try_get(&self) -> Option<PooledConnection<M>> {
        let shared = self.shared();
        let word = shared.route.load(Ordering::Acquire);
        if word & ROUTE_BLOCKED != 0 {
            return None;
        }
        let sub = &shared.sides[route_side(word)];
        let conn = sub.try_take()?;
        Some(PooledConnection::new(sub.clone(), conn))
    }

    /// A connection to a given side, whatever the active side is: for reads from the mirror
    /// or maintenance. Fails at once if that side is marked down.
    pub fn get_from(&self, side: Side) -> Result<PooledConnection<M>, GetError> {
        self.get_from_timeout(side, self.shared().config.connection_timeout)
    }

    /// [`get_from`](Self::get_from) with an explicit timeout.
    pub fn get_from_timeout(
        &self,
        side: Side,
        timeout: Duration,
    ) -> Result<PooledConnection<M>, GetError> {
        let shared = self.shared();
        let (health, cause) = {
            let view = shared.view.lock();
            let s = view.side(side);
            (s.health, s.last_error.clone())
        };
        if health == Health::Down {
            return Err(GetError::SideDown { side, cause });
        }
        self.checkout(Some(side), timeout)
    }

    fn checkout(
        &self,
        explicit: Option<Side>,
        timeout: Duration,
    ) -> Result<PooledConnection<M>, GetError> {
        let shared = self.shared();
        let mut wait: Option<Wait> = None;
        let result = loop {
            let word = shared.route.load(Ordering::Acquire);
            let (side, blocked) = match explicit {
                Some(side) => (side, false),
                None => (route_side(word), word & ROUTE_BLOCKED != 0),
            };
            let sub = &shared.sides[side];
            if blocked {
                if shared.routing.read().blocked == Some(Blocked::Unmonitored) {
                    // Nothing will change: say so now rather than after the whole timeout.
                    return Err(self.unavailable(Duration::ZERO));
                }
                let now = Instant::now();
                let until = wait
                    .get_or_insert_with(|| Wait {
                        started: now,
                        deadline: after(now, timeout),
                    })
                    .deadline;
                if now >= until {
                    break Err(self.unavailable(timeout));
                }
                sub.wait_for_change(&shared.route, word, until);
                continue;
            }
            match sub.checkout(&shared.route, word, &mut wait, timeout) {
                Checkout::Got(conn) => break Ok(PooledConnection::new(sub.clone(), conn)),
                Checkout::Changed => continue,
                Checkout::Failed => sub.request_probe(),
                Checkout::TimedOut(cause) => {
                    // If routing blocked meanwhile, the better error names both sides.
                    if explicit.is_none() && shared.routing.read().blocked.is_some() {
                        break Err(self.unavailable(timeout));
                    }
                    break Err(GetError::Timeout {
                        side,
                        waited: timeout,
                        cause,
                    });
                }
                Checkout::Closed => return Err(GetError::Closed),
            }
        };
        // The fast path (an idle connection at hand, no event handler) reports nothing and
        // reads no clock.
        if wait.is_some() || shared.events.enabled() {
            self.report_checkout(&result, explicit, wait, timeout);
        }
        result
    }

    /// What a checkout tells operators: the slow-checkout warning, the wait histogram and
    /// timeout counter (feature `metrics`), and the checkout or timeout event (when a handler
    /// is installed). The wait is measured once, from the clock read the slow path made; an
    /// uncontended checkout waited zero.
    fn report_checkout(
        &self,
        result: &Result<PooledConnection<M>, GetError>,
        explicit: Option<Side>,
        wait: Option<Wait>,
        timeout: Duration,
    ) {
        let shared = self.shared();
        let waited = wait.map(|w| w.started.elapsed());
        let name = &shared.config.name;
        match result {
            Ok(conn) => {
                let side = PooledConnection::side(conn);
                if let Some(waited) = waited {
                    if shared
                        .config
                        .slow_checkout_threshold
                        .is_some_and(|limit| waited >= limit)
                    {
                        log::warn!(
                            "get() waited {waited:?} for a {side} connection (slow_checkout_threshold {:?})",
                            shared.config.slow_checkout_threshold.unwrap_or_default()
                        );
                    }
                    crate::metrics::seconds(name, "mirrorpool_checkout_wait_seconds", side, waited);
                }
                if shared.events.enabled() {
                    shared.events.emit(Event::Checkout(CheckoutEvent {
                        side,
                        connection_id: PooledConnection::id(conn),
                        duration: waited.unwrap_or(Duration::ZERO),
                    }));
                }
            }
            Err(e) => {
                let side = match e {
                    GetError::Timeout { side, .. } => Some(*side),
                    _ => None,
                };
                if waited.is_some() && e.is_timeout() && cfg!(feature = "metrics") {
                    let counted = explicit.unwrap_or_else(|| shared.routing.read().active);
                    crate::metrics::side_counter(
                        name,
                        "mirrorpool_checkout_timeouts_total",
                        counted,
                        1,
                    );
                }
                if shared.events.enabled() {
                    shared
                        .events
                        .emit(Event::Timeout(TimeoutEvent { side, timeout }));
                }
            }
        }
    }

    fn unavailable(&self, waited: Duration) -> GetError {
        let shared = self.shared();
        let blocked = shared
            .routing
            .read()
            .blocked
            .clone()
            .unwrap_or(Blocked::NoWritableSide);
        let view = shared.view.lock();
        GetError::Unavailable {
            waited,
            blocked,
            primary: Box::new(shared.side_report(&view, Side::Primary)),
            mirror: Box::new(shared.side_report(&view, Side::Mirror)),
        }
    }

    /// Moves writers to `to` now (a planned switch-over). Refused if `to` is down, fenced, a
    /// read-only replica or of a role not yet known; ignores `min_switch_interval`. Waits
    /// for the monitor to apply it.
    pub fn switch_over(&self, to: Side) -> Result<(), SwitchError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared()
            .commands
            .send(Command::Switch(to, tx))
            .map_err(|_| SwitchError::Closed)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(SwitchError::Refused { to, reason }),
            Err(_) => Err(SwitchError::Closed),
        }
    }

    /// Asks the monitor to probe both sides now rather than at the next tick.
    pub fn probe_now(&self) {
        for side in Side::BOTH {
            self.shared().sides[side].request_probe();
        }
    }

    /// Closes the pool: stops the monitor, closes every idle connection, and fails every
    /// `get()` from now on with [`GetError::Closed`] (also for other clones of this handle).
    /// Connections still checked out are closed when returned. Dropping the last handle does
    /// the same.
    pub fn close(&self) {
        self.handle.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.handle.monitor.lock().is_none()
    }

    /// A snapshot of the pool: routing, per-side health, roles, lag and connection counts.
    ///
    /// Briefly takes the monitor's status lock and each side's pool lock (for the last
    /// connect error): fine for a metrics scrape, not meant for every checkout.
    pub fn status(&self) -> Status {
        self.shared().status()
    }

    /// The side `get()` serves from.
    pub fn active(&self) -> Side {
        self.shared().routing.read().active
    }

    /// The manager of one side.
    pub fn manager(&self, side: Side) -> &M {
        &self.shared().sides[side].manager
    }

    /// Maximum pool connections per side (each side has one heartbeat connection besides).
    pub fn max_size(&self) -> u32 {
        self.shared().config.max_size
    }

    /// Idle connections the primary side keeps open.
    pub fn min_idle(&self) -> u32 {
        self.shared().config.primary_min_idle()
    }

    /// Idle connections the mirror side keeps open.
    pub fn mirror_min_idle(&self) -> u32 {
        self.shared().config.mirror_min_idle()
    }

    /// The default `get()` timeout.
    pub fn connection_timeout(&self) -> Duration {
        self.shared().config.connection_timeout
    }

    /// How long an idle connection is kept beyond `min_idle`.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.shared().config.idle_timeout
    }

    /// How long a connection lives at most.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.shared().config.max_lifetime
    }

    /// Whether connections are validated at checkout (outside the validation window).
    pub fn test_on_check_out(&self) -> bool {
        self.shared().config.test_on_check_out
    }

    /// Waits up to `timeout` for the first heartbeat of each side and checks what it showed
    /// (see [`Builder::build_checked`]).
    pub(crate) fn check(&self, timeout: Duration) -> Result<(), BuildError> {
        let shared = self.shared();
        let deadline = after(Instant::now(), timeout);
        let answered = |s: &SideStatus| s.last_heartbeat.is_some() && s.health != Health::Unknown;
        loop {
            let status = shared.view.lock().clone();
            let done = Side::BOTH.iter().all(|side| {
                let s = status.side(*side);
                answered(s) && (s.health != Health::Suspect || s.consecutive_failures == 0)
                    || s.health == Health::Down
            });
            if done || Instant::now() >= deadline {
                return check_status(&status, &shared.config);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What `build_checked` requires of the first heartbeats.
fn check_status(status: &Status, config: &Config) -> Result<(), BuildError> {
    for side in Side::BOTH {
        let s = status.side(side);
        if s.health != Health::Up {
            return Err(BuildError::Unreachable {
                side,
                cause: s.last_error.clone(),
            });
        }
    }
    if status
        .side(Side::Primary)
        .problems
        .contains(&crate::Refusal::SameServer)
        || status
            .side(Side::Mirror)
            .problems
            .contains(&crate::Refusal::SameServer)
    {
        return Err(BuildError::SameServer);
    }
    let f = &config.failover;
    if !f.capabilities.roles {
        return Ok(());
    }
    let (p, m) = (status.side(Side::Primary), status.side(Side::Mirror));
    if p.role != Role::Writable {
        return Err(BuildError::NotAMirror {
            problem: format!("the primary is a {}, not a writable primary", p.role),
        });
    }
    if m.role != Role::ReadOnly {
        return Err(BuildError::NotAMirror {
            problem: format!("the mirror is a {}, not a read-only replica", m.role),
        });
    }
    if let (Some(a), Some(b)) = (p.identity, m.identity) {
        if let (Some(x), Some(y)) = (a.cluster, b.cluster) {
            if x != y {
                return Err(BuildError::NotAMirror {
                    problem: "the mirror belongs to another cluster (different system identifiers)"
                        .into(),
                });
            }
        }
    }
    let upstream = m.replication.and_then(|r| r.upstream);
    if f.capabilities.upstream && upstream.is_some_and(|u| u.streaming == Some(false)) {
        return Err(BuildError::NotAMirror {
            problem: "the mirror does not replicate (its replication link is down)".into(),
        });
    }
    for side in Side::BOTH {
        for problem in &status.side(side).problems {
            if let crate::Refusal::MissingPrivilege { side, what } = problem {
                return Err(BuildError::MissingPrivilege { side: *side, what });
            }
        }
    }
    Ok(())
}

/// A connection checked out of a [`MirrorPool`]. Derefs to the connection; returns it on drop.
///
/// Its own functions are associated functions (`PooledConnection::side(&conn)`), as r2d2's
/// `extensions`, so they never shadow methods of the connection it derefs to.
///
/// A connection dropped while its thread panics is closed, not returned: it may be in the
/// middle of a transaction. A connection the manager's `has_broken` calls broken is closed on
/// a background thread after `drop` returns, so a hung server never blocks the returning
/// caller.
pub struct PooledConnection<M: ManageConnection> {
    // The side's sub-pool rather than the whole pool: all a guard needs.
    sub: Arc<SubPool<M>>,
    conn: Option<Conn<M>>,
    broken: bool,
    /// When it was checked out: read only when an event handler wants checkin events.
    checked_out_at: Option<Instant>,
}

impl<M: ManageConnection> PooledConnection<M> {
    fn new(sub: Arc<SubPool<M>>, conn: Conn<M>) -> Self {
        let checked_out_at = sub.events.enabled().then(Instant::now);
        if let Some(leaks) = &sub.leaks {
            leaks.checked_out(conn.id);
        }
        PooledConnection {
            sub,
            conn: Some(conn),
            broken: false,
            checked_out_at,
        }
    }

    /// This connection's typed storage, kept across returns and checkouts for as long as the
    /// connection lives (r2d2's `extensions`).
    pub fn extensions(this: &Self) -> &Extensions {
        match &this.conn {
            Some(c) => &c.extensions,
            None => unreachable!("a PooledConnection holds its connection until dropped"),
        }
    }

    /// This connection's typed storage, mutably.
    pub fn extensions_mut(this: &mut Self) -> &mut Extensions {
        match &mut this.conn {
            Some(c) => &mut c.extensions,
            None => unreachable!("a PooledConnection holds its connection until dropped"),
        }
    }

    /// The side this connection belongs to.
    pub fn side(this: &Self) -> Side {
        this.sub.side
    }

    /// A number identifying this connection among all pools in the process.
    pub fn id(this: &Self) -> u64 {
        this.conn.as_ref().map_or(0, |c| c.id)
    }

    /// Tells the pool about an error this connection returned. If it means the connection is
    /// lost or the server no longer takes writes, the connection is closed on return and the
    /// monitor probes the side at once (the fast path). Returns the classification (a backend
    /// that panics classifying counts as [`Fault::Other`]).
    pub fn report(this: &mut Self, error: &M::Error) -> Fault {
        let fault = catch(|| this.sub.backend.classify(error)).unwrap_or(Fault::Other);
        match fault {
            Fault::ConnectionLost => {
                this.broken = true;
                this.sub.request_probe();
            }
            Fault::NotWritable => this.sub.request_probe(),
            _ => {}
        }
        fault
    }

    /// Marks the connection broken: it is closed instead of returned.
    pub fn mark_broken(this: &mut Self) {
        this.broken = true;
    }
}

impl<M: ManageConnection> Deref for PooledConnection<M> {
    type Target = M::Connection;
    fn deref(&self) -> &M::Connection {
        match &self.conn {
            Some(c) => &c.conn,
            // Only `drop` takes the connection out.
            None => unreachable!("a PooledConnection holds its connection until dropped"),
        }
    }
}

impl<M: ManageConnection> DerefMut for PooledConnection<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        match &mut self.conn {
            Some(c) => &mut c.conn,
            None => unreachable!("a PooledConnection holds its connection until dropped"),
        }
    }
}

impl<M: ManageConnection> fmt::Debug for PooledConnection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("side", &PooledConnection::side(self))
            .field("id", &PooledConnection::id(self))
            .finish_non_exhaustive()
    }
}

impl<M: ManageConnection> Drop for PooledConnection<M> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let sub = &self.sub;
        // A manager or backend that panics here must neither leak the pool slot nor start a
        // second panic during an unwind: either way the connection is closed.
        let mut broken = self.broken
            || thread::panicking()
            || catch(|| sub.manager.has_broken(&mut conn.conn)).unwrap_or(true);
        if !broken && sub.resets_on_return() {
            match catch(|| sub.backend.reset(&sub.manager, &mut conn.conn)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::debug!(
                        "resetting a {} connection failed, closing it: {}",
                        sub.side,
                        crate::error::Cause::capture(&*e).chain()
                    );
                    broken = true;
                }
                Err(msg) => {
                    log::error!(
                        "the backend panicked resetting a {} connection: {msg}",
                        sub.side
                    );
                    broken = true;
                }
            }
        }
        if let Some(leaks) = &sub.leaks {
            leaks.returned(conn.id, sub.side);
        }
        if let Some(at) = self.checked_out_at {
            sub.events.emit(Event::Checkin(CheckinEvent {
                side: sub.side,
                connection_id: conn.id,
                duration: at.elapsed(),
            }));
        }
        sub.checkin(conn, broken);
    }
}
