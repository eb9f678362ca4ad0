//! A writer load with a ledger of acknowledged writes, for any database.
//!
//! [`Load`] runs writer threads that insert `(writer, seq)` rows through a
//! [`MirrorPool`] as fast as the pool lets them, the way an application
//! would: one `get()` per statement, no retry, and every failed statement
//! reported to the pool with [`PooledConnection::report`] (the fast path).
//! Its [`Ledger`] records each acknowledged write with the side that took it
//! and when, each failed statement and each failed `get()`. After a failover
//! the ledger answers the questions a failover test asks: when was the first
//! write acknowledged by the new primary ([`Ledger::first_ack_on`]), and
//! which acknowledged writes are missing from it ([`Ledger::lost_against`]).
//!
//! The engine comes in through [`LoadTable`]: how to insert one row and how
//! to read all rows back. The PostgreSQL and MariaDB pairs provide one each
//! (`PgTable`, `MyTable`).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, Instant};
//! use mirrorpool::testkit::{Load, PgPair, PgTable};
//! use mirrorpool::Side;
//!
//! let pair = PgPair::builder().synchronous(true).start()?;
//! let table = PgTable::new("t")?;
//! pair.primary().execute(&table.create_sql())?;
//! let pool = mirrorpool::postgres::builder().promote_on_failover(true).build(
//!     mirrorpool::postgres::PostgresManager::new(pair.primary().app_config(), postgres::NoTls),
//!     mirrorpool::postgres::PostgresManager::new(pair.mirror().app_config(), postgres::NoTls),
//! )?;
//! let load = Load::builder().writers(8).start(&pool, table.clone())?;
//! let killed = Instant::now();
//! pair.primary().kill()?;
//! load.wait_for_acks(Side::Mirror, Some(killed), 100, Duration::from_secs(30));
//! let ledger = load.stop();
//! let mut check = pair.mirror().config().connect(postgres::NoTls)?;
//! let rows = table.rows(&mut check)?;
//! assert!(ledger.lost_against(&rows).is_empty());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```

use std::collections::HashSet;
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use r2d2::ManageConnection;

use super::error::TestkitError;
use crate::error::Cause;
use crate::{MirrorPool, PooledConnection, Side};

/// Writer ids are unique across all loads of a process, so two loads on one
/// table never collide on a key; they start high, clear of ids tests use for
/// their own rows.
static NEXT_WRITER: AtomicI32 = AtomicI32::new(10_000);

/// How the writer load talks to one database engine.
///
/// The table has two columns, `writer` (32-bit integer) and `seq` (64-bit
/// integer), with the primary key `(writer, seq)`.
pub trait LoadTable<M: ManageConnection>: Send + Sync + 'static {
    /// Inserts the row `(writer, seq)` on `conn` in its own transaction.
    fn insert(&self, conn: &mut M::Connection, writer: i32, seq: i64) -> Result<(), M::Error>;

    /// Every row of the table, as `(writer, seq)`.
    fn read_rows(&self, conn: &mut M::Connection) -> Result<Vec<(i32, i64)>, M::Error>;
}

/// A write a side acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The writer that made it.
    pub writer: i32,
    /// Its sequence number within the writer.
    pub seq: i64,
    /// The side whose connection acknowledged it.
    pub side: Side,
    /// When the acknowledgement arrived.
    pub at: Instant,
}

impl Ack {
    /// The row, as `(writer, seq)`.
    pub fn row(&self) -> (i32, i64) {
        (self.writer, self.seq)
    }
}

/// A statement that failed (it may or may not have committed: the pool never
/// retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedWrite {
    /// The writer that tried it.
    pub writer: i32,
    /// Its sequence number within the writer.
    pub seq: i64,
    /// The side of the connection it ran on.
    pub side: Side,
    /// When it failed.
    pub at: Instant,
    /// The error, as text, with its causes (`"db error: FATAL: ..."`).
    pub error: String,
}

/// A `get()` that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedGet {
    /// When it failed.
    pub at: Instant,
    /// The error, as text, with its causes.
    pub error: String,
}

/// What the writers of a [`Load`] saw.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Every acknowledged write, in the order the acknowledgements were
    /// recorded.
    pub acked: Vec<Ack>,
    /// Every failed statement.
    pub failed: Vec<FailedWrite>,
    /// Every failed `get()`.
    pub get_errors: Vec<FailedGet>,
}

impl Ledger {
    /// How many writes `side` acknowledged at or after `since`.
    pub fn acked_since(&self, side: Side, since: Instant) -> usize {
        self.acked
            .iter()
            .filter(|a| a.side == side && a.at >= since)
            .count()
    }

    /// When `side` acknowledged its first write at or after `after`.
    pub fn first_ack_on(&self, side: Side, after: Instant) -> Option<Instant> {
        self.acked
            .iter()
            .filter(|a| a.side == side && a.at >= after)
            .map(|a| a.at)
            .min()
    }

    /// The acknowledged writes missing from `rows` (the rows a server holds,
    /// e.g. from [`LoadTable::read_rows`]): writes a failover lost.
    pub fn lost_against(&self, rows: &HashSet<(i32, i64)>) -> Vec<Ack> {
        self.acked
            .iter()
            .filter(|a| !rows.contains(&a.row()))
            .copied()
            .collect()
    }

    /// How many failed statements are in `rows` anyway: writes that
    /// committed although their caller saw an error.
    pub fn failed_but_committed(&self, rows: &HashSet<(i32, i64)>) -> usize {
        self.failed
            .iter()
            .filter(|f| rows.contains(&(f.writer, f.seq)))
            .count()
    }

    /// The messages of the failed `get()` calls.
    pub fn get_error_messages(&self) -> Vec<&str> {
        self.get_errors.iter().map(|g| g.error.as_str()).collect()
    }
}

/// Options of a [`Load`]; obtain it with [`Load::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LoadBuilder {
    writers: usize,
    pause: Duration,
    get_error_backoff: Duration,
    max_duration: Duration,
}

impl Default for LoadBuilder {
    fn default() -> Self {
        LoadBuilder {
            writers: 4,
            pause: Duration::ZERO,
            get_error_backoff: Duration::from_millis(20),
            max_duration: Duration::from_secs(120),
        }
    }
}

impl LoadBuilder {
    /// Number of writer threads. Default: 4.
    pub fn writers(mut self, writers: usize) -> Self {
        self.writers = writers;
        self
    }

    /// Sleep of each writer after each statement (and its connection's
    /// return). Default: none.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Sleep of a writer after a failed `get()`. Default: 20 ms.
    pub fn get_error_backoff(mut self, backoff: Duration) -> Self {
        self.get_error_backoff = backoff;
        self
    }

    /// Writers stop by themselves this long after the start, so a test
    /// that forgets to stop its load cannot run forever. Default: 120 s.
    pub fn max_duration(mut self, max: Duration) -> Self {
        self.max_duration = max;
        self
    }

    /// Starts the writers on `pool`, inserting into `table`.
    ///
    /// Errors only if a thread cannot be spawned (the writers started so far
    /// are stopped again).
    pub fn start<M, T>(self, pool: &MirrorPool<M>, table: T) -> Result<Load, TestkitError>
    where
        M: ManageConnection,
        T: LoadTable<M>,
    {
        let n = i32::try_from(self.writers).unwrap_or(i32::MAX / 2);
        let first = NEXT_WRITER.fetch_add(n, Ordering::Relaxed);
        let table = Arc::new(table);
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ledger: Arc::new(Mutex::new(Ledger::default())),
            handles: Vec::with_capacity(self.writers),
        };
        for writer in first..first.saturating_add(n) {
            let writer_loop = WriterLoop {
                writer,
                pool: pool.clone(),
                table: Arc::clone(&table),
                stop: Arc::clone(&load.stop),
                ledger: Arc::clone(&load.ledger),
                options: self.clone(),
            };
            let handle = thread::Builder::new()
                .name(format!("testkit-writer-{writer}"))
                .spawn(move || writer_loop.run())
                .map_err(|e| TestkitError::io("spawning a writer thread", e))?;
            load.handles.push(handle);
        }
        Ok(load)
    }
}

/// One writer thread's state.
struct WriterLoop<M: ManageConnection, T> {
    writer: i32,
    pool: MirrorPool<M>,
    table: Arc<T>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    options: LoadBuilder,
}

impl<M: ManageConnection, T: LoadTable<M>> WriterLoop<M, T> {
    fn run(self) {
        let started = Instant::now();
        let mut seq = 0i64;
        while !self.stop.load(Ordering::Relaxed) && started.elapsed() < self.options.max_duration {
            let mut conn = match self.pool.get() {
                Ok(c) => c,
                Err(e) => {
                    lock(&self.ledger).get_errors.push(FailedGet {
                        at: Instant::now(),
                        error: with_causes(&e),
                    });
                    sleep(self.options.get_error_backoff);
                    continue;
                }
            };
            seq += 1;
            let side = PooledConnection::side(&conn);
            match self.table.insert(&mut conn, self.writer, seq) {
                Ok(()) => lock(&self.ledger).acked.push(Ack {
                    writer: self.writer,
                    seq,
                    side,
                    at: Instant::now(),
                }),
                Err(e) => {
                    let at = Instant::now();
                    PooledConnection::report(&mut conn, &e);
                    lock(&self.ledger).failed.push(FailedWrite {
                        writer: self.writer,
                        seq,
                        side,
                        at,
                        error: with_causes(&e),
                    });
                }
            }
            drop(conn);
            sleep(self.options.pause);
        }
    }
}

/// `error` followed by each of its causes not already in the text, as `"error: cause"`: a
/// driver's own message alone (PostgreSQL's `"db error"`) says little.
fn with_causes(error: &(dyn Error + 'static)) -> String {
    Cause::capture(error).chain()
}

fn sleep(d: Duration) {
    if !d.is_zero() {
        thread::sleep(d);
    }
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writer threads inserting `(writer, seq)` rows through a pool until
/// stopped, with their [`Ledger`]. Dropping a load (e.g. in a failing test)
/// tells its writers to stop without waiting for them.
pub struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    handles: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ledger = lock(&self.ledger);
        f.debug_struct("Load")
            .field("writers", &self.handles.len())
            .field("acked", &ledger.acked.len())
            .field("failed", &ledger.failed.len())
            .field("get_errors", &ledger.get_errors.len())
            .finish()
    }
}

impl Load {
    /// A builder with the default options.
    pub fn builder() -> LoadBuilder {
        LoadBuilder::default()
    }

    /// Starts `writers` writers with the default options.
    pub fn start<M, T>(pool: &MirrorPool<M>, writers: usize, table: T) -> Result<Load, TestkitError>
    where
        M: ManageConnection,
        T: LoadTable<M>,
    {
        Load::builder().writers(writers).start(pool, table)
    }

    /// How many writes `side` acknowledged at or after `since`.
    pub fn acked_since(&self, side: Side, since: Instant) -> usize {
        lock(&self.ledger).acked_since(side, since)
    }

    /// How many writes were acknowledged so far, by either side.
    pub fn acked(&self) -> usize {
        lock(&self.ledger).acked.len()
    }

    /// How many statements failed so far.
    pub fn failed(&self) -> usize {
        lock(&self.ledger).failed.len()
    }

    /// How many `get()` calls failed so far.
    pub fn failed_gets(&self) -> usize {
        lock(&self.ledger).get_errors.len()
    }

    /// A copy of the ledger as it is now (a cheap count: [`acked`](Self::acked),
    /// [`failed`](Self::failed), [`failed_gets`](Self::failed_gets)).
    pub fn ledger(&self) -> Ledger {
        lock(&self.ledger).clone()
    }

    /// Waits until more than `n` writes were acknowledged by `side` at or
    /// after `since` (any time if `None`), polling every 5 ms for at most
    /// `timeout`; returns whether they were.
    pub fn wait_for_acks(
        &self,
        side: Side,
        since: Option<Instant>,
        n: usize,
        timeout: Duration,
    ) -> bool {
        let counted = |s: &Self| match since {
            Some(t) => s.acked_since(side, t),
            None => lock(&s.ledger)
                .acked
                .iter()
                .filter(|a| a.side == side)
                .count(),
        };
        let deadline = super::os::deadline_after(timeout);
        loop {
            if counted(self) > n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the writers, waits for them (each finishes its statement
    /// first, which the pool bounds) and returns the ledger. A writer that
    /// panicked is logged and its records are kept.
    pub fn stop(mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            if h.join().is_err() {
                log::error!("testkit: a writer thread panicked");
            }
        }
        std::mem::take(&mut *lock(&self.ledger))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(writer: i32, seq: i64, side: Side, at: Instant) -> Ack {
        Ack {
            writer,
            seq,
            side,
            at,
        }
    }

    #[test]
    fn errors_are_recorded_with_their_causes_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl fmt::Display for E {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl Error for E {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                self.1.as_deref().map(|e| e as &(dyn Error + 'static))
            }
        }
        let inner = E("FATAL: gone", None);
        assert_eq!(
            with_causes(&E("db error", Some(Box::new(inner)))),
            "db error: FATAL: gone"
        );
        // A cause the outer message already shows is not repeated.
        let inner = E("refused", None);
        assert_eq!(
            with_causes(&E("down: refused", Some(Box::new(inner)))),
            "down: refused"
        );
    }

    #[test]
    fn the_ledger_answers_what_a_failover_test_asks() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(10);
        let t2 = t0 + Duration::from_millis(20);
        let ledger = Ledger {
            acked: vec![
                ack(1, 1, Side::Primary, t0),
                ack(1, 2, Side::Mirror, t2),
                ack(2, 1, Side::Mirror, t1),
            ],
            failed: vec![FailedWrite {
                writer: 2,
                seq: 2,
                side: Side::Primary,
                at: t1,
                error: "lost".into(),
            }],
            get_errors: vec![FailedGet {
                at: t1,
                error: "no side".into(),
            }],
        };
        assert_eq!(ledger.first_ack_on(Side::Mirror, t0), Some(t1));
        assert_eq!(
            ledger.first_ack_on(Side::Mirror, t1 + Duration::from_millis(1)),
            Some(t2)
        );
        assert_eq!(ledger.first_ack_on(Side::Primary, t1), None);
        assert_eq!(ledger.acked_since(Side::Mirror, t1), 2);
        let rows: HashSet<(i32, i64)> = [(1, 1), (2, 1), (2, 2)].into_iter().collect();
        assert_eq!(
            ledger.lost_against(&rows),
            vec![ack(1, 2, Side::Mirror, t2)]
        );
        assert_eq!(ledger.failed_but_committed(&rows), 1);
        assert_eq!(ledger.get_error_messages(), vec!["no side"]);
    }
}
