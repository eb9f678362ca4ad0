//! One side's connections: an r2d2-style pool over a `ManageConnection`, with generations so a
//! switch can drain it.
//!
//! Why not `r2d2::Pool`: it cannot drop its idle connections on demand, retries failed
//! connects on a doubling backoff from 400 ms (most of an r2d2 failover's time), makes `get()`
//! wait out its whole timeout when every connect is refused, keeps only the last error's text,
//! and reads the clock five times per checkout. This one connects in the background without
//! lockstep backoff chains, tells waiters about every connect failure (with its cause), reads
//! no clock on the checkout path unless validation is on, and drains by generation.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use r2d2::ManageConnection;

use crate::backend::Backend;
use crate::clock::{after, millis, CoarseClock};
use crate::config::Customizer;
use crate::error::Cause;
use crate::event::{AcquireEvent, Event, ReleaseEvent};
use crate::extensions::Extensions;
use crate::leaks::Leaks;
use crate::report::{catch, Events};
use crate::shared::ProbeRequester;
use crate::side::Side;

/// At most this many connects in flight per side: enough to warm a side up for a burst of
/// callers, few enough that a server that accepts connections but never answers them cannot
/// make the pool start hundreds of threads.
const MAX_CONNECTS_IN_FLIGHT: u32 = 8;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A pooled connection with the bookkeeping the pool needs.
pub(crate) struct Conn<M: ManageConnection> {
    pub(crate) conn: M::Connection,
    pub(crate) id: u64,
    pub(crate) extensions: Extensions,
    /// `Inner::checkouts` when it was last taken: tells returns of work that began after a
    /// heartbeat started from returns of work already in flight then.
    taken_seq: u64,
    generation: u64,
    created_ms: u64,
    /// When it was last returned (or opened), on the coarse clock.
    idle_since_ms: u64,
}

/// Per-side settings.
#[derive(Clone, Debug)]
pub(crate) struct SubPoolConfig {
    pub max_size: u32,
    pub min_idle: u32,
    pub test_on_check_out: bool,
    pub validation_window: Duration,
    /// Granularity of the coarse clock (the monitor advances it at least this often).
    pub clock_granularity: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    /// Cap of the retry delay after failed connects.
    pub max_retry_delay: Duration,
    /// First retry delay after a failed connect.
    pub min_retry_delay: Duration,
    /// Reset sessions of returned connections ([`Backend::reset`]).
    pub reset_on_return: bool,
}

// `repr(C)`: the fields every checkout and return touches come first, on one cache line
// with the lock (see `SubPool`).
#[repr(C)]
struct Inner<M: ManageConnection> {
    idle: Vec<Conn<M>>,
    /// Connections that exist or are being opened: idle + checked out + pending.
    open: u32,
    waiters: u32,
    generation: u64,
    closed: bool,
    pending: u32,
    /// Checked-out connections of an older generation, still to be returned.
    stale_out: u32,
    error_seq: u64,
    connect_failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<Cause>,
    /// Connections returned unbroken that were taken after `progress_mark`: evidence that the
    /// side completed work begun after the heartbeat in flight was sent (see
    /// `Policy::on_progress`). Kept under the lock the return already holds.
    returned: u64,
    /// `checkouts` when the monitor last started a heartbeat of this side.
    progress_mark: u64,
    /// Connections handed out (under the lock the checkout already holds).
    checkouts: u64,
}

/// Lock-free counters for status reports: metrics must never contend with checkouts.
#[derive(Default)]
pub(crate) struct Counters {
    open: AtomicU32,
    pending: AtomicU32,
    waiters: AtomicU32,
    stale_out: AtomicU32,
    pub(crate) created: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

/// A snapshot of one side's connection counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub open: u32,
    pub idle: u32,
    pub pending: u32,
    pub waiters: u32,
    pub stale_out: u32,
    pub created: u64,
    pub closed: u64,
    pub connect_failures: u64,
}

/// What both sides' sub-pools share with the rest of the pool.
pub(crate) struct Wiring<M: ManageConnection> {
    pub clock: Arc<CoarseClock>,
    pub backend: Arc<dyn Backend<M>>,
    pub probes: ProbeRequester,
    pub customizer: Option<Customizer<M>>,
    pub events: Events,
    pub leak_threshold: Option<Duration>,
}

/// A caller's wait, begun when it first found no idle connection (the fast path reads no
/// clock).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait {
    pub started: Instant,
    pub deadline: Instant,
}

/// The result of one wait for a connection.
pub(crate) enum Checkout<M: ManageConnection> {
    Got(Conn<M>),
    /// The pool's routing changed while waiting: re-read it.
    Changed,
    /// A connect or validation failed while waiting: ask for a probe, then wait again.
    Failed,
    TimedOut(Option<Cause>),
    Closed,
}

// Cache-line aligned, with the idle count, the lock and the hot part of `Inner` first, so a
// checkout or return moves as few cache lines between cores as it can.
#[repr(C, align(64))]
pub(crate) struct SubPool<M: ManageConnection> {
    idle_count: AtomicU32,
    inner: Mutex<Inner<M>>,
    counters: Counters,
    pub(crate) side: Side,
    cond: Condvar,
    pub(crate) manager: Arc<M>,
    pub(crate) backend: Arc<dyn Backend<M>>,
    probes: ProbeRequester,
    customizer: Option<Customizer<M>>,
    pub(crate) events: Events,
    /// Checked-out connections, when leak detection is on.
    pub(crate) leaks: Option<Leaks>,
    cfg: SubPoolConfig,
    clock: Arc<CoarseClock>,
    me: Weak<SubPool<M>>,
}

impl<M: ManageConnection> SubPool<M> {
    pub(crate) fn new(
        side: Side,
        manager: Arc<M>,
        cfg: SubPoolConfig,
        wiring: Wiring<M>,
    ) -> Arc<SubPool<M>> {
        Arc::new_cyclic(|me| SubPool {
            idle_count: AtomicU32::new(0),
            side,
            manager,
            backend: wiring.backend,
            probes: wiring.probes,
            customizer: wiring.customizer,
            events: wiring.events,
            leaks: wiring.leak_threshold.map(Leaks::new),
            cfg,
            clock: wiring.clock,
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                open: 0,
                pending: 0,
                generation: 0,
                waiters: 0,
                stale_out: 0,
                last_error: None,
                error_seq: 0,
                connect_failures: 0,
                retry_at: None,
                closed: false,
                returned: 0,
                progress_mark: 0,
                checkouts: 0,
            }),
            cond: Condvar::new(),
            counters: Counters::default(),
            me: me.clone(),
        })
    }

    fn publish(&self, inner: &Inner<M>) {
        let c = &self.counters;
        c.open.store(inner.open, Ordering::Relaxed);
        self.idle_count
            .store(inner.idle.len() as u32, Ordering::Relaxed);
        c.pending.store(inner.pending, Ordering::Relaxed);
        c.waiters.store(inner.waiters, Ordering::Relaxed);
        c.stale_out.store(inner.stale_out, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            open: c.open.load(Ordering::Relaxed),
            idle: self.idle_count.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            waiters: c.waiters.load(Ordering::Relaxed),
            stale_out: c.stale_out.load(Ordering::Relaxed),
            created: c.created.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
        }
    }

    /// Whether returned connections get their session reset.
    pub(crate) fn resets_on_return(&self) -> bool {
        self.cfg.reset_on_return
    }

    /// Asks the monitor to probe this side soon (a caller saw it fail).
    pub(crate) fn request_probe(&self) {
        self.probes.request(self.side);
    }

    /// How many connections callers have returned unbroken that they took after the last
    /// [`mark_progress`](Self::mark_progress) (wrapping).
    pub(crate) fn returned(&self) -> u64 {
        self.inner.lock().returned
    }

    /// A heartbeat of this side starts now: only work begun from here on counts as progress.
    pub(crate) fn mark_progress(&self) {
        let mut inner = self.inner.lock();
        inner.progress_mark = inner.checkouts;
    }

    /// The last connect or validation error and how many connections were handed out (one
    /// lock for both).
    pub(crate) fn last_error_and_checkouts(&self) -> (Option<Cause>, u64) {
        let inner = self.inner.lock();
        (inner.last_error.clone(), inner.checkouts)
    }

    pub(crate) fn last_error(&self) -> Option<Cause> {
        self.inner.lock().last_error.clone()
    }

    /// Lends an idle connection to the heartbeat when it cannot open its own (see
    /// `prober.rs`): no validation, counted as checked out until [`SubPool::checkin`].
    pub(crate) fn borrow_idle(&self) -> Option<Conn<M>> {
        let mut inner = self.inner.lock();
        self.take_idle(&mut inner)
    }

    /// Takes an idle connection without waiting or connecting (`try_get`).
    pub(crate) fn try_take(&self) -> Option<Conn<M>> {
        let conn = {
            let mut inner = self.inner.lock();
            self.take_idle(&mut inner)?
        };
        self.validated(conn).ok()
    }

    /// Waits until a connection is available, `version` stops matching `expected` (the pool's
    /// routing changed), a connect fails, or `deadline` passes. The deadline is computed only
    /// when the caller actually has to wait, so the fast path reads no clock.
    pub(crate) fn checkout(
        &self,
        version: &AtomicU64,
        expected: u64,
        wait: &mut Option<Wait>,
        timeout: Duration,
    ) -> Checkout<M> {
        let mut inner = self.inner.lock();
        let seen_errors = inner.error_seq;
        loop {
            if inner.closed {
                return Checkout::Closed;
            }
            if version.load(Ordering::Acquire) != expected {
                return Checkout::Changed;
            }
            if inner.error_seq != seen_errors {
                return Checkout::Failed;
            }
            if let Some(conn) = self.take_idle(&mut inner) {
                drop(inner);
                return match self.validated(conn) {
                    Ok(conn) => Checkout::Got(conn),
                    Err(()) => Checkout::Failed,
                };
            }
            let now = Instant::now();
            let deadline = wait
                .get_or_insert_with(|| Wait {
                    started: now,
                    deadline: after(now, timeout),
                })
                .deadline;
            if now >= deadline {
                return Checkout::TimedOut(inner.last_error.clone());
            }
            let mut wake = deadline;
            if inner.open < self.cfg.max_size && inner.pending < MAX_CONNECTS_IN_FLIGHT {
                match inner.retry_at {
                    Some(at) if at > now => wake = wake.min(at),
                    _ => self.spawn_connect(&mut inner),
                }
            }
            inner.waiters += 1;
            self.publish(&inner);
            self.cond.wait_until(&mut inner, wake);
            inner.waiters -= 1;
            self.publish(&inner);
        }
    }

    /// Takes the most recently returned idle connection (LIFO), with the lock held.
    fn take_idle(&self, inner: &mut Inner<M>) -> Option<Conn<M>> {
        let mut conn = inner.idle.pop()?;
        inner.checkouts = inner.checkouts.wrapping_add(1);
        conn.taken_seq = inner.checkouts;
        self.after_take(inner);
        Some(conn)
    }

    /// Called with the lock held after a connection left the idle list.
    fn after_take(&self, inner: &mut Inner<M>) {
        // Keep `min_idle` warm, but never more connects than needed.
        if (inner.idle.len() as u32 + inner.pending) < self.cfg.min_idle
            && inner.open < self.cfg.max_size
            && inner.pending < MAX_CONNECTS_IN_FLIGHT
            && inner.retry_at.is_none()
        {
            self.spawn_connect(inner);
            self.publish(inner);
        } else {
            // The hot path: only the idle count changed.
            self.idle_count
                .store(inner.idle.len() as u32, Ordering::Relaxed);
        }
    }

    /// Validates a connection outside the lock if it was not used within the validation
    /// window. A failed one is closed, its error recorded and waiters told. A manager that
    /// panics in `is_valid` fails the validation; the slot is given back either way.
    fn validated(&self, mut conn: Conn<M>) -> Result<Conn<M>, ()> {
        if !self.cfg.test_on_check_out {
            return Ok(conn);
        }
        // The coarse clock may lag by up to its granularity, so count that against the window:
        // a connection idle for the whole window is always validated. No clock read here.
        let idle_ms = self.clock.now_ms().saturating_sub(conn.idle_since_ms);
        let slack_ms = millis(self.cfg.clock_granularity);
        if idle_ms.saturating_add(slack_ms) < millis(self.cfg.validation_window) {
            return Ok(conn);
        }
        let cause = match catch(|| self.manager.is_valid(&mut conn.conn)) {
            Ok(Ok(())) => return Ok(conn),
            Ok(Err(e)) => Cause::capture(&e),
            Err(msg) => Cause::new(format!(
                "the connection manager panicked validating a {} connection: {msg}",
                self.side
            )),
        };
        log::debug!(
            "{} connection {} failed validation: {}",
            self.side,
            conn.id,
            cause.chain()
        );
        let mut inner = self.inner.lock();
        inner.last_error = Some(cause);
        inner.error_seq += 1;
        self.release_slot(&mut inner, &conn);
        self.publish(&inner);
        drop(inner);
        self.cond.notify_all();
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
        self.close_later(vec![conn]);
        Err(())
    }

    /// Gives back the slot of a checked-out connection that will be closed: one place, so a
    /// connection of a drained generation is always taken off the drain's count too.
    fn release_slot(&self, inner: &mut Inner<M>, conn: &Conn<M>) {
        inner.open = inner.open.saturating_sub(1);
        if conn.generation != inner.generation {
            inner.stale_out = inner.stale_out.saturating_sub(1);
        }
    }

    /// Closes connections on a background thread, giving each to the customizer's
    /// `on_release` first.
    pub(crate) fn close_later(&self, conns: Vec<Conn<M>>) {
        if conns.is_empty() {
            return;
        }
        let customizer = self.customizer.clone();
        let side = self.side;
        let events = self.events.clone();
        let now_ms = self.clock.now_ms();
        crate::close::in_background(move || {
            for c in conns {
                if events.enabled() {
                    events.emit(Event::Release(ReleaseEvent {
                        side,
                        connection_id: c.id,
                        age: Duration::from_millis(now_ms.saturating_sub(c.created_ms)),
                    }));
                }
                if let Some(cust) = &customizer {
                    if let Err(msg) = catch(|| cust.on_release(c.conn)) {
                        log::error!(
                            "the connection customizer panicked in on_release ({side}): {msg}"
                        );
                    }
                } else {
                    drop(c);
                }
            }
        });
    }

    /// Reserves a slot and opens a connection on a thread of its own, so that a connect that
    /// hangs never holds a caller past its deadline.
    fn spawn_connect(&self, inner: &mut Inner<M>) {
        inner.open += 1;
        inner.pending += 1;
        let generation = inner.generation;
        let me = self.me.clone();
        let manager = self.manager.clone();
        let customizer = self.customizer.clone();
        let side = self.side;
        let spawned = thread::Builder::new()
            .name(format!("mirrorpool-connect-{side}"))
            .spawn(move || {
                // Whatever the manager or the customizer does, the slot is accounted for.
                let result = match catch(|| open(&*manager, customizer.as_deref())) {
                    Ok(result) => result,
                    Err(msg) => Err(Cause::new(format!(
                        "the connection manager panicked connecting to the {side}: {msg}"
                    ))),
                };
                if let Some(pool) = me.upgrade() {
                    pool.finish_connect(result, generation);
                }
            });
        if let Err(e) = spawned {
            inner.open -= 1;
            inner.pending -= 1;
            inner.last_error = Some(Cause::new(format!("could not start a connect thread: {e}")));
            inner.error_seq += 1;
        }
    }

    fn finish_connect(&self, result: Result<M::Connection, Cause>, generation: u64) {
        let mut inner = self.inner.lock();
        inner.pending -= 1;
        match result {
            Ok(conn) if generation == inner.generation && !inner.closed => {
                self.counters.created.fetch_add(1, Ordering::Relaxed);
                let now_ms = self.clock.now_ms();
                let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
                inner.idle.push(Conn {
                    conn,
                    id,
                    extensions: Extensions::default(),
                    taken_seq: 0,
                    generation,
                    created_ms: now_ms,
                    idle_since_ms: now_ms,
                });
                inner.connect_failures = 0;
                inner.retry_at = None;
                self.publish(&inner);
                drop(inner);
                self.cond.notify_one();
                self.events.emit(Event::Acquire(AcquireEvent {
                    side: self.side,
                    connection_id: id,
                }));
            }
            Ok(conn) => {
                // Opened for a generation that was drained meanwhile (or the pool closed).
                inner.open -= 1;
                self.publish(&inner);
                drop(inner);
                self.counters.created.fetch_add(1, Ordering::Relaxed);
                self.counters.closed.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
            Err(cause) => {
                log::debug!("connect to the {} failed: {}", self.side, cause.chain());
                inner.open -= 1;
                inner.last_error = Some(cause);
                inner.error_seq += 1;
                inner.connect_failures = inner.connect_failures.saturating_add(1);
                let shift = inner.connect_failures.min(16) - 1;
                let delay = self
                    .cfg
                    .min_retry_delay
                    .saturating_mul(1 << shift)
                    .min(self.cfg.max_retry_delay);
                inner.retry_at = Some(after(Instant::now(), delay));
                self.publish(&inner);
                drop(inner);
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.cond.notify_all();
            }
        }
    }

    /// Returns a connection. Stale (older generation), broken and expired connections are
    /// closed instead of going back to the idle list.
    pub(crate) fn checkin(&self, mut conn: Conn<M>, broken: bool) {
        let now_ms = self.clock.now_ms();
        let expired = self
            .cfg
            .max_lifetime
            .is_some_and(|l| now_ms.saturating_sub(conn.created_ms) >= millis(l));
        let mut inner = self.inner.lock();
        let stale = conn.generation != inner.generation;
        if stale || broken || expired || inner.closed {
            self.release_slot(&mut inner, &conn);
            if !stale && !inner.closed {
                self.after_take(&mut inner);
            }
            self.publish(&inner);
            let waiters = inner.waiters > 0;
            drop(inner);
            if waiters {
                // A slot freed up: a waiter may open a new connection.
                self.cond.notify_one();
            }
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            self.close_later(vec![conn]);
            return;
        }
        conn.idle_since_ms = now_ms;
        if conn.taken_seq > inner.progress_mark {
            inner.returned = inner.returned.wrapping_add(1);
        }
        inner.idle.push(conn);
        // The hot path: only the idle count changed.
        self.idle_count
            .store(inner.idle.len() as u32, Ordering::Relaxed);
        let waiters = inner.waiters > 0;
        drop(inner);
        if waiters {
            self.cond.notify_one();
        }
    }

    /// Starts a new generation: every idle connection is returned for closing, checked-out
    /// ones will be closed when returned, pending connects are discarded when they finish.
    /// Connect backoff is reset so waiters retry at once.
    pub(crate) fn drain(&self) -> Vec<Conn<M>> {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        let idle = std::mem::take(&mut inner.idle);
        inner.open -= idle.len() as u32;
        inner.stale_out = inner.open - inner.pending;
        inner.connect_failures = 0;
        inner.retry_at = None;
        self.publish(&inner);
        drop(inner);
        self.cond.notify_all();
        self.counters
            .closed
            .fetch_add(idle.len() as u64, Ordering::Relaxed);
        idle
    }

    /// Wakes every waiter so it re-reads the pool's routing. Taking the lock orders this after
    /// any waiter's version check, so no wake-up is lost.
    pub(crate) fn wake_all(&self) {
        drop(self.inner.lock());
        self.cond.notify_all();
    }

    /// Waits (without connecting) until the routing version changes or `deadline` passes.
    pub(crate) fn wait_for_change(&self, version: &AtomicU64, expected: u64, deadline: Instant) {
        let mut inner = self.inner.lock();
        while version.load(Ordering::Acquire) == expected && !inner.closed {
            inner.waiters += 1;
            self.publish(&inner);
            let timed_out = self.cond.wait_until(&mut inner, deadline).timed_out();
            inner.waiters -= 1;
            self.publish(&inner);
            if timed_out {
                break;
            }
        }
    }

    /// The side answered heartbeats again: connect at once instead of after a backoff.
    pub(crate) fn reset_backoff(&self) {
        let mut inner = self.inner.lock();
        inner.connect_failures = 0;
        inner.retry_at = None;
        drop(inner);
        self.cond.notify_all();
    }

    /// Periodic upkeep: closes idle connections past their idle timeout (beyond `min_idle`) or
    /// lifetime, and opens connections up to `min_idle` if `connect` allows.
    pub(crate) fn maintain(&self, connect: bool) -> Vec<Conn<M>> {
        let now_ms = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let mut closed = Vec::new();
        let lifetime = self.cfg.max_lifetime.map(millis);
        let idle_timeout = self.cfg.idle_timeout.map(millis);
        let min_idle = self.cfg.min_idle as usize;
        let mut i = 0;
        while i < inner.idle.len() {
            let c = &inner.idle[i];
            let too_old = lifetime.is_some_and(|l| now_ms.saturating_sub(c.created_ms) >= l);
            let idle_long = idle_timeout
                .is_some_and(|t| now_ms.saturating_sub(c.idle_since_ms) >= t)
                && inner.idle.len() > min_idle;
            if too_old || idle_long {
                closed.push(inner.idle.swap_remove(i));
            } else {
                i += 1;
            }
        }
        inner.open -= closed.len() as u32;
        if connect {
            let now = Instant::now();
            while (inner.idle.len() as u32 + inner.pending) < self.cfg.min_idle
                && inner.open < self.cfg.max_size
                && inner.pending < MAX_CONNECTS_IN_FLIGHT
                && inner.retry_at.is_none_or(|at| at <= now)
            {
                let before = inner.pending;
                self.spawn_connect(&mut inner);
                if inner.pending == before {
                    break;
                }
            }
        }
        self.publish(&inner);
        drop(inner);
        self.counters
            .closed
            .fetch_add(closed.len() as u64, Ordering::Relaxed);
        closed
    }

    /// Closes the sub-pool: returns every idle connection for closing and wakes all waiters.
    pub(crate) fn close(&self) -> Vec<Conn<M>> {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.generation += 1;
        let idle = std::mem::take(&mut inner.idle);
        inner.open -= idle.len() as u32;
        self.publish(&inner);
        drop(inner);
        self.cond.notify_all();
        idle
    }
}

/// Opens one connection and runs the customizer's `on_acquire` on it.
fn open<M: ManageConnection>(
    manager: &M,
    customizer: Option<&dyn r2d2::CustomizeConnection<M::Connection, M::Error>>,
) -> Result<M::Connection, Cause> {
    let mut conn = manager.connect().map_err(|e| Cause::capture(&e))?;
    if let Some(c) = customizer {
        c.on_acquire(&mut conn).map_err(|e| {
            let cause = Cause::capture(&e);
            Cause::new(format!(
                "the connection customizer's on_acquire failed: {}",
                cause.chain()
            ))
        })?;
    }
    Ok(conn)
}
