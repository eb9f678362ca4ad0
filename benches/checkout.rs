//! Cost of one checkout + return with a no-op in-memory connection manager, at 1, 4 and 16
//! threads, for `r2d2::Pool`, `MirrorPool` (without and with checkout validation) and a naive
//! `Mutex<Vec<_>> + Condvar` pool that serves as a floor.
//!
//! Multi-threaded cells use `iter_custom`: N threads each run their share of the iterations,
//! start together on a barrier, and the wall time of the whole batch is reported, so the
//! figure is wall time / total checkouts (not per-thread latency).
//!
//! Run with `cargo bench --bench checkout --no-default-features`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use mirrorpool::MirrorPool;
use parking_lot::{Condvar, Mutex};

/// Pool size (and idle connections kept) for every pool under test.
const POOL_SIZE: u32 = 16;
/// Thread counts measured.
const THREADS: [usize; 3] = [1, 4, 16];

/// A connection that does nothing.
#[derive(Debug)]
struct NoopConn;

/// A manager whose connects always succeed at once and whose connections never break.
#[derive(Debug)]
struct NoopManager;

impl r2d2::ManageConnection for NoopManager {
    type Connection = NoopConn;
    type Error = Infallible;

    fn connect(&self) -> Result<NoopConn, Infallible> {
        Ok(NoopConn)
    }

    fn is_valid(&self, _conn: &mut NoopConn) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut NoopConn) -> bool {
        false
    }
}

/// The floor: the least a blocking pool can do (one lock per checkout and per return, a
/// condvar for waiters, no bookkeeping).
struct NaivePool {
    idle: Mutex<Vec<NoopConn>>,
    available: Condvar,
}

struct NaiveGuard<'a> {
    pool: &'a NaivePool,
    conn: Option<NoopConn>,
}

impl NaivePool {
    fn new(size: u32) -> NaivePool {
        NaivePool {
            idle: Mutex::new((0..size).map(|_| NoopConn).collect()),
            available: Condvar::new(),
        }
    }

    fn get(&self) -> NaiveGuard<'_> {
        let mut idle = self.idle.lock();
        loop {
            if let Some(conn) = idle.pop() {
                return NaiveGuard {
                    pool: self,
                    conn: Some(conn),
                };
            }
            self.available.wait(&mut idle);
        }
    }
}

impl Drop for NaiveGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().push(conn);
            self.pool.available.notify_one();
        }
    }
}

/// Runs `iters` calls of `op` spread over `threads` threads that start together, and returns
/// the wall time from the start barrier to the moment the last thread finished.
fn run_threads<F: Fn() + Sync>(threads: usize, iters: u64, op: &F) -> Duration {
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    let per_thread = iters / threads as u64;
    let remainder = iters % threads as u64;
    thread::scope(|s| {
        for t in 0..threads as u64 {
            let n = per_thread + u64::from(t < remainder);
            let (start, end) = (&start, &end);
            s.spawn(move || {
                start.wait();
                for _ in 0..n {
                    op();
                }
                end.wait();
            });
        }
        start.wait();
        let t0 = Instant::now();
        end.wait();
        t0.elapsed()
    })
}

/// Builds a `MirrorPool` and waits (bounded) until the primary has all its idle connections,
/// which are opened in the background.
fn warm_mirrorpool(test_on_check_out: bool) -> MirrorPool<NoopManager> {
    let pool = MirrorPool::builder()
        .max_size(POOL_SIZE)
        .min_idle(POOL_SIZE)
        .mirror_min_idle(1)
        .test_on_check_out(test_on_check_out)
        .build(NoopManager, NoopManager)
        .expect("valid mirrorpool configuration");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.status().primary.idle < POOL_SIZE {
        assert!(
            Instant::now() < deadline,
            "mirrorpool did not open {POOL_SIZE} idle connections within 10 s: {:?}",
            pool.status()
        );
        thread::sleep(Duration::from_millis(1));
    }
    pool
}

fn checkout(c: &mut Criterion) {
    let r2d2_pool = r2d2::Pool::builder()
        .max_size(POOL_SIZE)
        .min_idle(Some(POOL_SIZE))
        .test_on_check_out(false)
        .build(NoopManager)
        .expect("r2d2 pool");
    let mirror = warm_mirrorpool(false);
    let mirror_validating = warm_mirrorpool(true);
    let naive = NaivePool::new(POOL_SIZE);

    let r2d2_op = || drop(black_box(r2d2_pool.get().expect("r2d2 checkout")));
    let mirror_op = || drop(black_box(mirror.get().expect("mirrorpool checkout")));
    let mirror_validating_op = || {
        drop(black_box(
            mirror_validating.get().expect("mirrorpool checkout"),
        ))
    };
    let naive_op = || drop(black_box(naive.get()));

    let mut group = c.benchmark_group("checkout");
    for threads in THREADS {
        bench_cell(&mut group, "r2d2", threads, &r2d2_op);
        bench_cell(&mut group, "mirrorpool", threads, &mirror_op);
        bench_cell(
            &mut group,
            "mirrorpool_validating",
            threads,
            &mirror_validating_op,
        );
        bench_cell(&mut group, "naive", threads, &naive_op);
    }
    group.finish();
}

/// One cell: `checkout/<name>/<threads>`, one checkout + return per iteration.
fn bench_cell<F: Fn() + Sync>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    op: &F,
) {
    group.bench_function(BenchmarkId::new(name, threads), |b| {
        b.iter_custom(|iters| run_threads(threads, iters, op));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = checkout
}
criterion_main!(benches);
