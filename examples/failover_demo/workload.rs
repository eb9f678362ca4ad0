//! The readers that run beside the testkit's writers (`Load`), and the counts the progress
//! line shows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mirrorpool::testkit::Load;
use mirrorpool::{MirrorPool, PooledConnection, Side};

use crate::engine::{DemoResult, Engine};

/// Where a reader reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// `pool.get()`: wherever the writers are.
    Active,
    /// `pool.get_from(Side::Mirror)`: the replica (a read-scaling pattern).
    Mirror,
}

impl ReadFrom {
    pub fn describe(self) -> &'static str {
        match self {
            ReadFrom::Active => "pool.get()",
            ReadFrom::Mirror => "pool.get_from(Side::Mirror)",
        }
    }
}

/// A failed read or checkout.
#[derive(Debug, Clone)]
pub struct FailedRead {
    pub from: ReadFrom,
    pub checkout: bool,
    pub error: String,
}

/// What the readers saw.
#[derive(Debug, Default)]
pub struct ReadStats {
    ok: AtomicU64,
    failed: Mutex<Vec<FailedRead>>,
}

impl ReadStats {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> Vec<FailedRead> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed_count(&self) -> usize {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn fail(&self, from: ReadFrom, checkout: bool, error: String) {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(FailedRead {
                from,
                checkout,
                error,
            });
    }
}

/// Reader threads: one per `ReadFrom`, each reading the newest row in a loop with a short pause
/// (reads are not the point; they show that they carry on).
pub struct Readers {
    stop: Arc<AtomicBool>,
    stats: Arc<ReadStats>,
    handles: Vec<JoinHandle<()>>,
}

impl Readers {
    pub fn start<E: Engine>(
        pool: &MirrorPool<E::Manager>,
        max_duration: Duration,
    ) -> DemoResult<Readers> {
        let mut readers = Readers {
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ReadStats::default()),
            handles: Vec::new(),
        };
        for from in [ReadFrom::Active, ReadFrom::Mirror] {
            let (pool, stop, stats) = (pool.clone(), readers.stop.clone(), readers.stats.clone());
            let handle = thread::Builder::new()
                .name(format!("reader-{from:?}"))
                .spawn(move || read_loop::<E>(&pool, from, &stop, &stats, max_duration))?;
            readers.handles.push(handle);
        }
        Ok(readers)
    }

    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// Stops the readers and waits for them (each finishes its read first, which the pool
    /// bounds once the fault is released).
    pub fn stop(mut self) -> Arc<ReadStats> {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.join();
        }
        Arc::clone(&self.stats)
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_loop<E: Engine>(
    pool: &MirrorPool<E::Manager>,
    from: ReadFrom,
    stop: &AtomicBool,
    stats: &ReadStats,
    max_duration: Duration,
) {
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < max_duration {
        let got = match from {
            ReadFrom::Active => pool.get(),
            ReadFrom::Mirror => pool.get_from(Side::Mirror),
        };
        match got {
            Ok(mut conn) => match E::read(&mut conn) {
                Ok(()) => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // Tells the pool at once (the fast path), as writers do.
                    PooledConnection::report(&mut conn, &e);
                    stats.fail(from, false, with_causes(&e));
                }
            },
            Err(e) => {
                stats.fail(from, true, e.to_string());
                thread::sleep(Duration::from_millis(20));
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// `error` and its causes not already in its text (PostgreSQL's `"db error"` alone says little).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// Cumulative operation counts, for the progress line's rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub ops: u64,
    pub errors: u64,
}

impl Counts {
    pub fn now(load: &Load, readers: &Readers) -> Counts {
        let stats = readers.stats();
        Counts {
            ops: load.acked() as u64 + stats.ok(),
            errors: (load.failed() + load.failed_gets() + stats.failed_count()) as u64,
        }
    }
}
