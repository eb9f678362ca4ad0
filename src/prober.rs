//! Prober threads: run heartbeats and promotions on a dedicated connection per side, so that a
//! probe that hangs is abandoned by the monitor instead of awaited.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use r2d2::ManageConnection;

use crate::backend::{Backend, BackendError, Fault};
use crate::clock::millis;
use crate::error::Cause;
use crate::observation::Observation;
use crate::report::catch;
use crate::shared::Shared;
use crate::side::Side;
use crate::subpool::SubPool;

/// At most this many abandoned (hung) prober threads per side; past it, probes fail at once
/// instead of piling up threads against a server that never answers.
const MAX_HUNG_PROBERS: usize = 4;

/// A prober thread stuck in one call for this many heartbeat timeouts (and at least
/// `MIN_REPLACE_AFTER`) is replaced by a fresh one with a fresh connection. Until then a timed
/// out heartbeat is left running: a slow server's late answer then clears the failures, and no
/// reconnect (far slower than a query) is forced on a server that is merely busy.
const REPLACE_AFTER_TIMEOUTS: u32 = 5;
const MIN_REPLACE_AFTER: Duration = Duration::from_secs(1);

enum Job {
    Probe { seq: u64 },
    Promote { seq: u64 },
}

/// What a prober reports back to the monitor.
pub(crate) enum Reply {
    Probe {
        side: Side,
        seq: u64,
        result: Result<Box<Observation>, Cause>,
        /// The heartbeat could not open its connection because the server refuses new ones
        /// (too many connections), while the side answered: on a pool connection it borrowed
        /// (then `result` is that answer), or with a server error saying so.
        saturated: bool,
        /// The heartbeat was not run at all (its thread could not be had): no answer, like a
        /// timeout, rather than an error from the server.
        not_run: bool,
        rtt: Duration,
    },
    Promote {
        side: Side,
        seq: u64,
        result: Result<(), Cause>,
    },
}

/// What every prober thread of one side shares.
struct Setup<M: ManageConnection> {
    side: Side,
    manager: Arc<M>,
    backend: Arc<dyn Backend<M>>,
    timeout: Duration,
    promotion_timeout: Duration,
    replies: Sender<Reply>,
    epoch: Instant,
    live_threads: AtomicUsize,
    /// The side's pool, to borrow a connection from when the heartbeat cannot open its own.
    pool: Arc<SubPool<M>>,
    /// The heartbeat connection is recycled after this, like pool connections.
    max_lifetime: Option<Duration>,
}

/// One side's current prober thread, replaced when abandoned.
pub(crate) struct Prober<M: ManageConnection> {
    setup: Arc<Setup<M>>,
    /// The current thread's job queue (one slot), with a receiver to take back a job that
    /// is still queued when a newer one comes.
    jobs: Option<(Sender<Job>, Receiver<Job>)>,
    /// When the current thread started the call it is in, in ms since `epoch` (+1; 0: idle).
    busy_since: Arc<AtomicU64>,
    seq: u64,
}

impl<M: ManageConnection> Prober<M> {
    pub(crate) fn new(side: Side, shared: Arc<Shared<M>>, replies: Sender<Reply>) -> Prober<M> {
        let f = &shared.config.failover;
        Prober {
            setup: Arc::new(Setup {
                side,
                manager: shared.sides[side].manager.clone(),
                backend: shared.backend.clone(),
                timeout: f.heartbeat_timeout,
                promotion_timeout: f.promotion_timeout,
                replies,
                epoch: Instant::now(),
                live_threads: AtomicUsize::new(0),
                pool: shared.sides[side].clone(),
                max_lifetime: shared.config.max_lifetime,
            }),
            jobs: None,
            busy_since: Arc::new(AtomicU64::new(0)),
            seq: 0,
        }
    }

    /// The sequence number of the job in flight; replies with another number are stale.
    pub(crate) fn current(&self) -> u64 {
        self.seq
    }

    pub(crate) fn probe(&mut self) {
        self.seq += 1;
        let seq = self.seq;
        self.send(Job::Probe { seq });
    }

    pub(crate) fn promote(&mut self) {
        self.seq += 1;
        let seq = self.seq;
        self.send(Job::Promote { seq });
    }

    /// Stops waiting for the job in flight: its reply, if it ever comes, counts as late. The
    /// thread keeps its call (see `REPLACE_AFTER_TIMEOUTS`).
    pub(crate) fn abandon(&mut self) {
        self.seq += 1;
    }

    /// Whether the current thread has been stuck in one call for too long.
    fn stuck(&self) -> bool {
        let since = self.busy_since.load(Ordering::Acquire);
        if since == 0 {
            return false;
        }
        let limit = self
            .setup
            .timeout
            .saturating_mul(REPLACE_AFTER_TIMEOUTS)
            .max(MIN_REPLACE_AFTER);
        let now_ms = millis(self.setup.epoch.elapsed()).saturating_add(1);
        now_ms.saturating_sub(since) >= millis(limit)
    }

    fn send(&mut self, job: Job) {
        if self.jobs.is_some() && self.stuck() {
            // Abandon the thread: it ends (dropping its connection) when its call returns.
            self.jobs = None;
        }
        if self.jobs.is_none() {
            self.jobs = self.spawn();
        }
        let failed = match &self.jobs {
            // Never block the monitor. A job that finds an older one still queued behind a
            // slow call takes its place: the first job the thread runs once the slow call
            // returns is then the newest, whose answer counts (the older one's would be stale).
            Some((tx, rx)) => {
                let job = match tx.try_send(job) {
                    Err(TrySendError::Full(job)) => {
                        let _ = rx.try_recv();
                        tx.try_send(job)
                    }
                    other => other,
                };
                match job {
                    Ok(()) | Err(TrySendError::Full(_)) => None,
                    Err(TrySendError::Disconnected(job)) => {
                        self.jobs = None;
                        Some((job, "the heartbeat thread ended"))
                    }
                }
            }
            None => Some((job, "earlier heartbeats are still hung")),
        };
        if let Some((job, why)) = failed {
            let side = self.setup.side;
            let why = Cause::new(format!(
                "heartbeat to the {side} not run: {why} (at most {MAX_HUNG_PROBERS} hung heartbeat threads)"
            ));
            let reply = match job {
                Job::Probe { seq } => Reply::Probe {
                    side,
                    seq,
                    result: Err(why),
                    saturated: false,
                    not_run: true,
                    rtt: Duration::ZERO,
                },
                Job::Promote { seq } => Reply::Promote {
                    side,
                    seq,
                    result: Err(why),
                },
            };
            let _ = self.setup.replies.send(reply);
        }
    }

    fn spawn(&mut self) -> Option<(Sender<Job>, Receiver<Job>)> {
        let setup = &self.setup;
        // One live thread is the current prober; more are hung ones.
        if setup.live_threads.load(Ordering::Acquire) > MAX_HUNG_PROBERS {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        // Each thread has its own flag: an abandoned one keeps its own.
        let busy_since = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            busy_since: busy_since.clone(),
            setup: setup.clone(),
        };
        let taken_back = rx.clone();
        setup.live_threads.fetch_add(1, Ordering::AcqRel);
        let spawned = thread::Builder::new()
            .name(format!("mirrorpool-heartbeat-{}", setup.side))
            .spawn(move || worker.run(rx));
        match spawned {
            Ok(_) => {
                self.busy_since = busy_since;
                Some((tx, taken_back))
            }
            Err(e) => {
                setup.live_threads.fetch_sub(1, Ordering::AcqRel);
                log::error!(
                    "could not start a heartbeat thread for the {}: {e}",
                    setup.side
                );
                None
            }
        }
    }
}

struct Worker<M: ManageConnection> {
    busy_since: Arc<AtomicU64>,
    setup: Arc<Setup<M>>,
}

/// The heartbeat connection and when it was opened.
struct Heartbeat<C> {
    conn: C,
    opened: Instant,
}

/// Why a heartbeat call failed, and whether the side is merely saturated.
struct Failure {
    cause: Cause,
    saturated: bool,
}

impl From<Cause> for Failure {
    fn from(cause: Cause) -> Failure {
        Failure {
            cause,
            saturated: false,
        }
    }
}

impl<M: ManageConnection> Worker<M> {
    fn run_call<T>(
        &self,
        conn: &mut M::Connection,
        call: &mut dyn FnMut(&mut M::Connection) -> Result<T, BackendError>,
    ) -> Result<T, Cause> {
        match catch(|| call(conn)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Cause::capture(&*e)),
            Err(msg) => Err(Cause::new(format!(
                "the backend panicked on the {}: {msg}",
                self.setup.side
            ))),
        }
    }

    /// Runs `call` on the heartbeat connection, opening one if needed. A connection whose call
    /// failed is dropped, so the next job starts from a fresh one. A panic in the manager or
    /// the backend is the call's error; the connection it panicked on is dropped.
    ///
    /// If the heartbeat cannot open its connection, it tries the call on an idle pool
    /// connection: a side that refuses new connections (at `max_connections`) but answers on
    /// open ones is full, not down, and must not be failed over from. Returns whether that
    /// happened (or the refusal said "too many connections").
    fn with_conn<T>(
        &self,
        hb: &mut Option<Heartbeat<M::Connection>>,
        borrow: bool,
        mut call: impl FnMut(&mut M::Connection) -> Result<T, BackendError>,
    ) -> Result<(T, bool), Failure> {
        let s = &self.setup;
        let mut current = match hb.take() {
            Some(h) => h,
            None => match catch(|| s.manager.connect()) {
                Ok(Ok(conn)) => Heartbeat {
                    conn,
                    opened: Instant::now(),
                },
                Ok(Err(e)) => {
                    let fault = catch(|| s.backend.classify(&e)).unwrap_or(Fault::Other);
                    let full = fault == Fault::TooManyConnections;
                    let cause = Cause::capture(&e);
                    // A refused or reset connect (nothing listening) says the server is gone,
                    // even if connections it opened earlier still answer for a moment (a
                    // killed PostgreSQL's orphaned backends do): no fallback then.
                    if borrow && fault != Fault::ConnectionLost {
                        if let Some(mut lent) = s.pool.borrow_idle() {
                            let result = self.run_call(&mut lent.conn, &mut call);
                            s.pool.checkin(lent, result.is_err());
                            if let Ok(v) = result {
                                return Ok((v, true));
                            }
                        }
                    }
                    return Err(Failure {
                        cause,
                        saturated: full,
                    });
                }
                Err(msg) => {
                    return Err(Cause::new(format!(
                        "the connection manager panicked connecting to the {}: {msg}",
                        s.side
                    ))
                    .into())
                }
            },
        };
        let result = self.run_call(&mut current.conn, &mut call)?;
        // Servers and proxies rotate long-lived sessions for a reason: the heartbeat's own
        // connection is recycled like the pool's (the next heartbeat opens a fresh one).
        let expired = s
            .max_lifetime
            .is_some_and(|l| current.opened.elapsed() >= l);
        if !expired {
            *hb = Some(current);
        }
        Ok((result, false))
    }

    fn run(self, jobs: Receiver<Job>) {
        let s = self.setup.clone();
        let mut hb: Option<Heartbeat<M::Connection>> = None;
        // Ends when the monitor drops its sender (abandon or shutdown) or stops listening.
        while let Ok(job) = jobs.recv() {
            let started = Instant::now();
            let ms = millis(s.epoch.elapsed()).saturating_add(1);
            self.busy_since.store(ms, Ordering::Release);
            let reply = match job {
                Job::Probe { seq } => {
                    let (result, saturated) = match self
                        .with_conn(&mut hb, true, |c| s.backend.probe(&s.manager, c, s.timeout))
                    {
                        Ok((obs, saturated)) => (Ok(Box::new(obs)), saturated),
                        Err(f) => (Err(f.cause), f.saturated),
                    };
                    Reply::Probe {
                        side: s.side,
                        seq,
                        result,
                        saturated,
                        not_run: false,
                        rtt: started.elapsed(),
                    }
                }
                Job::Promote { seq } => Reply::Promote {
                    side: s.side,
                    seq,
                    result: self
                        .with_conn(&mut hb, false, |c| {
                            s.backend.promote(&s.manager, c, s.promotion_timeout)
                        })
                        .map(|_| ())
                        .map_err(|f| f.cause),
                },
            };
            self.busy_since.store(0, Ordering::Release);
            if s.replies.send(reply).is_err() {
                break;
            }
        }
        drop(hb);
        s.live_threads.fetch_sub(1, Ordering::AcqRel);
    }
}
