//! Latency under saturation (issue 6 item 12): eight threads doing checkout + `SELECT 1` +
//! return as fast as they can against one PostgreSQL primary, through mirrorpool with its
//! defaults, `r2d2` + `r2d2_postgres` with r2d2's defaults (validates every checkout) and r2d2
//! with `test_on_check_out(false)`. Every operation's latency is recorded (checkout wait,
//! statement, return) with its start time since `build()`, so start-up stalls show.
//!
//! Run: `cargo bench --bench latency --features testkit` (≈ 3 minutes with the defaults).
//!
//! Environment:
//! - `ROUNDS` (default 5): rounds; each runs every pool once, the order rotating per round.
//! - `SECS` (default 10) and `WARMUP_MS` (default 1000): each run lasts `WARMUP_MS + SECS`
//!   from the moment the threads start; the "from build" view counts every operation, the
//!   "after warm-up" view only those that started after the warm-up.
//! - `POOLS` (default `mirrorpool,r2d2,r2d2_nocheck`): which pools, comma separated; also
//!   `mirrorpool_warm` (opt-in: `min_idle(10)` + `build_checked()` + waiting until the ten
//!   connections are open, all counted as build time, i.e. started like r2d2).
//! - `SLOWEST` (default 20): how many of the slowest operations to list per run.
//! - `LATENCY_TRACE=1`: also samples mirrorpool's `status()` every 5 ms and prints how its
//!   connection counts and routing changed (costs a pool lock per sample).
//! - `RUST_LOG=mirrorpool=debug`: the pool's log, stamped in ms since the run's `build()`.
//! - `STALL_MS=n` (default 0: off) and `STALL_AT_MS` (default 3000): SIGSTOP the primary for
//!   `n` ms, `STALL_AT_MS` after the threads start — a server that answers late, as a
//!   CPU-starved one does — and report how long after the resume callers were served again.
//!
//! Times printed for operations are ms since `build()` was called. No timed assertions.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::event::{
    DrainEvent, HeartbeatFailureEvent, SideDownEvent, SideUpEvent, SwitchEvent, SwitchRefusedEvent,
};
use mirrorpool::postgres::{PostgresManager, PostgresPool};
use mirrorpool::testkit::PgPair;
use mirrorpool::HandleEvent;
use postgres::{Client, NoTls};
use r2d2_postgres::{r2d2, PostgresConnectionManager};

const THREADS: usize = 8;

// ----- a clock shared with the log output -----

/// Nanoseconds since the process's first reading of [`epoch`] at which the current run's
/// `build()` was called, so log lines can be stamped relative to it.
static BUILD_AT_NS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn set_build_instant(t: Instant) {
    let ns = t.saturating_duration_since(epoch()).as_nanos() as u64;
    BUILD_AT_NS.store(ns, Ordering::Relaxed);
}

/// ms since the current run's `build()` (negative before it).
fn ms_since_build(t: Instant) -> f64 {
    let ns = t.saturating_duration_since(epoch()).as_nanos() as f64;
    (ns - BUILD_AT_NS.load(Ordering::Relaxed) as f64) / 1e6
}

fn init_log() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            writeln!(
                buf,
                "[{:+10.3} ms] {:5} {}: {}",
                ms_since_build(Instant::now()),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .try_init();
}

// ----- the pools under test -----

/// Checkout, statement and return, each timed.
trait Target: Sync {
    type Guard;
    fn checkout(&self) -> Result<Self::Guard, String>;
    fn client(guard: &mut Self::Guard) -> &mut Client;
}

impl Target for PostgresPool<NoTls> {
    type Guard = mirrorpool::PooledConnection<PostgresManager<NoTls>>;
    fn checkout(&self) -> Result<Self::Guard, String> {
        self.get().map_err(|e| e.to_string())
    }
    fn client(guard: &mut Self::Guard) -> &mut Client {
        guard.client_mut()
    }
}

type R2d2Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

impl Target for R2d2Pool {
    type Guard = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;
    fn checkout(&self) -> Result<Self::Guard, String> {
        self.get().map_err(|e| e.to_string())
    }
    fn client(guard: &mut Self::Guard) -> &mut Client {
        guard
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mirrorpool,
    /// Opt-in (`POOLS=…,mirrorpool_warm`): what a user can configure today to start like r2d2.
    MirrorpoolWarm,
    R2d2,
    R2d2NoCheck,
}

impl Kind {
    /// The default set.
    const DEFAULT: [Kind; 3] = [Kind::Mirrorpool, Kind::R2d2, Kind::R2d2NoCheck];
    const ALL: [Kind; 4] = [
        Kind::Mirrorpool,
        Kind::MirrorpoolWarm,
        Kind::R2d2,
        Kind::R2d2NoCheck,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Mirrorpool => "mirrorpool",
            Kind::MirrorpoolWarm => "mirrorpool_warm",
            Kind::R2d2 => "r2d2",
            Kind::R2d2NoCheck => "r2d2_nocheck",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Mirrorpool => {
                "mirrorpool defaults (max_size 10, min_idle 2, validation window 500 ms)"
            }
            Kind::MirrorpoolWarm => {
                "mirrorpool, min_idle(10), build_checked() and waiting until 10 are open (counted in build)"
            }
            Kind::R2d2 => "r2d2 defaults (max_size 10 = min_idle, validates every checkout)",
            Kind::R2d2NoCheck => "r2d2 defaults + test_on_check_out(false)",
        }
    }
}

// ----- recording -----

/// One operation: start since the threads were released, and its three parts.
#[derive(Clone, Copy, Debug)]
struct Op {
    /// Start, ns since `build()` was called.
    start_ns: u64,
    wait_ns: u64,
    stmt_ns: u64,
    ret_ns: u64,
    thread: u8,
}

impl Op {
    fn total_ns(&self) -> u64 {
        self.wait_ns + self.stmt_ns + self.ret_ns
    }
}

#[derive(Default)]
struct Recorded {
    ops: Vec<Op>,
    get_errors: u64,
    stmt_errors: u64,
    first_error: Option<String>,
}

fn worker<P: Target>(
    pool: &P,
    t_build: Instant,
    end: &std::sync::OnceLock<Instant>,
    thread: u8,
    start: &Barrier,
) -> Recorded {
    let mut rec = Recorded {
        ops: Vec::with_capacity(1 << 17),
        ..Recorded::default()
    };
    start.wait();
    let end = *end
        .get()
        .expect("the end is set before the threads are released");
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let mut guard = match pool.checkout() {
            Ok(g) => g,
            Err(e) => {
                rec.get_errors += 1;
                rec.first_error.get_or_insert(e);
                continue;
            }
        };
        let t1 = Instant::now();
        let ok = match P::client(&mut guard).simple_query("SELECT 1") {
            Ok(_) => true,
            Err(e) => {
                rec.stmt_errors += 1;
                rec.first_error.get_or_insert(e.to_string());
                false
            }
        };
        let t2 = Instant::now();
        drop(guard);
        let t3 = Instant::now();
        if ok {
            rec.ops.push(Op {
                start_ns: (t0 - t_build).as_nanos() as u64,
                wait_ns: (t1 - t0).as_nanos() as u64,
                stmt_ns: (t2 - t1).as_nanos() as u64,
                ret_ns: (t3 - t2).as_nanos() as u64,
                thread,
            });
        }
    }
    rec
}

/// Failover events of mirrorpool, stamped on arrival.
#[derive(Debug, Clone, Default)]
struct EventLog(Arc<Mutex<Vec<(Instant, String)>>>);

impl EventLog {
    fn push(&self, what: String) {
        self.0.lock().unwrap().push((Instant::now(), what));
    }
    fn take(&self) -> Vec<(Instant, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl HandleEvent for EventLog {
    fn handle_side_down(&self, e: SideDownEvent) {
        self.push(format!(
            "{} marked DOWN after {} failures",
            e.side(),
            e.failures()
        ));
    }
    fn handle_side_up(&self, e: SideUpEvent) {
        if e.was_down() {
            self.push(format!("{} up again", e.side()));
        }
    }
    fn handle_switch(&self, e: SwitchEvent) {
        self.push(format!(
            "switch {} -> {} ({})",
            e.from(),
            e.to(),
            e.reason()
        ));
    }
    fn handle_drain(&self, e: DrainEvent) {
        self.push(format!("drained {} ({} closed)", e.side(), e.closed()));
    }
    fn handle_heartbeat_failure(&self, e: HeartbeatFailureEvent) {
        let why = match (e.timed_out(), e.error()) {
            (true, _) => "timed out".to_string(),
            (false, Some(c)) => c.to_string(),
            (false, None) => "failed".to_string(),
        };
        self.push(format!(
            "heartbeat {} failed #{}: {why}",
            e.side(),
            e.failures()
        ));
    }
    fn handle_switch_refused(&self, e: SwitchRefusedEvent) {
        self.push(format!("switch to {} refused: {}", e.to(), e.reason()));
    }
}

/// `status()` samples of mirrorpool's primary side (LATENCY_TRACE=1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Sample {
    active_primary: bool,
    blocked: bool,
    open: u32,
    idle: u32,
    pending: u32,
    waiters: u32,
}

struct Run {
    kind: Kind,
    round: usize,
    build: Duration,
    /// Threads released, since build.
    started: Duration,
    ops: Vec<Op>,
    get_errors: u64,
    stmt_errors: u64,
    first_error: Option<String>,
    events: Vec<(f64, String)>,
    samples: Vec<(f64, Sample)>,
    /// When the primary was paused and resumed (`STALL_MS`), ms since build.
    paused: Option<(f64, f64)>,
}

struct Settings {
    rounds: usize,
    secs: u64,
    warmup: Duration,
    pools: Vec<Kind>,
    slowest: usize,
    trace: bool,
    /// `STALL_MS` / `STALL_AT_MS`: pause (SIGSTOP) the primary for this long, this long after
    /// the threads start: a server that answers late.
    stall: Option<(Duration, Duration)>,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings() -> Settings {
    let pools = match std::env::var("POOLS") {
        Ok(list) => Kind::ALL
            .into_iter()
            .filter(|k| list.split(',').any(|p| p.trim() == k.name()))
            .collect(),
        Err(_) => Kind::DEFAULT.to_vec(),
    };
    Settings {
        rounds: env_num("ROUNDS", 5).max(1) as usize,
        secs: env_num("SECS", 10).max(1),
        warmup: Duration::from_millis(env_num("WARMUP_MS", 1000)),
        pools,
        slowest: env_num("SLOWEST", 20) as usize,
        trace: std::env::var_os("LATENCY_TRACE").is_some(),
        stall: match env_num("STALL_MS", 0) {
            0 => None,
            ms => Some((
                Duration::from_millis(env_num("STALL_AT_MS", 3000)),
                Duration::from_millis(ms),
            )),
        },
    }
}

/// What `drive` saw besides the operations.
struct Driven {
    /// Threads released, since build.
    started: Duration,
    paused: Option<(f64, f64)>,
}

fn drive<P: Target>(
    pool: &P,
    pair: &PgPair,
    cfg: &Settings,
    t_build: Instant,
) -> (Driven, Recorded) {
    let run_for = cfg.warmup + Duration::from_secs(cfg.secs);
    let start = Barrier::new(THREADS + 1);
    // Set just before the threads are released; the run ends `run_for` after that.
    let end: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let mut all = Recorded::default();
    let mut started = Duration::ZERO;
    let mut paused = None;
    thread::scope(|s| {
        let stall = cfg.stall.map(|(at, len)| {
            let end = &end;
            s.spawn(move || -> Result<(f64, f64), String> {
                // Wait for the release, then for the stall's moment.
                let released = loop {
                    if let Some(e) = end.get() {
                        break *e - run_for;
                    }
                    thread::sleep(Duration::from_millis(1));
                };
                thread::sleep((released + at).saturating_duration_since(Instant::now()));
                let guard = pair
                    .primary()
                    .pause_guard()
                    .map_err(|e| format!("pausing the primary: {e}"))?;
                let stopped = Instant::now();
                thread::sleep(len);
                drop(guard);
                let resumed = Instant::now();
                Ok((ms_since_build(stopped), ms_since_build(resumed)))
            })
        });
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (start, end) = (&start, &end);
                s.spawn(move || worker(pool, t_build, end, i as u8, start))
            })
            .collect();
        let released = Instant::now();
        started = released.saturating_duration_since(t_build);
        let _ = end.set(released + run_for);
        start.wait();
        if let Some(h) = stall {
            match h.join() {
                Ok(Ok(p)) => paused = Some(p),
                Ok(Err(e)) => eprintln!("{e}"),
                Err(_) => eprintln!("the pausing thread panicked"),
            }
        }
        for h in handles {
            match h.join() {
                Ok(r) => {
                    all.ops.extend_from_slice(&r.ops);
                    all.get_errors += r.get_errors;
                    all.stmt_errors += r.stmt_errors;
                    if all.first_error.is_none() {
                        all.first_error = r.first_error;
                    }
                }
                Err(_) => {
                    all.stmt_errors += 1;
                    all.first_error.get_or_insert("a worker panicked".into());
                }
            }
        }
    });
    (Driven { started, paused }, all)
}

fn run_mirrorpool(pair: &PgPair, cfg: &Settings, round: usize, warm: bool) -> Result<Run, String> {
    let events = EventLog::default();
    let t_build = Instant::now();
    set_build_instant(t_build);
    let builder = mirrorpool::postgres::builder().event_handler(Box::new(events.clone()));
    let managers = (
        PostgresManager::new(pair.primary().app_config(), NoTls),
        PostgresManager::new(pair.mirror().app_config(), NoTls),
    );
    let pool = if warm {
        let pool = builder
            .min_idle(10)
            .build_checked(managers.0, managers.1)
            .map_err(|e| format!("building mirrorpool: {e}"))?;
        // As r2d2's build() does: wait until the connections are open.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let s = pool.status();
            let p = s.side(mirrorpool::Side::Primary);
            if p.connections >= 10 && p.pending == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        pool
    } else {
        builder
            .build(managers.0, managers.1)
            .map_err(|e| format!("building mirrorpool: {e}"))?
    };
    let build = t_build.elapsed();
    let samples = Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (driven, rec) = thread::scope(|s| {
        if cfg.trace {
            let (pool, samples, done) = (&pool, &samples, &done);
            s.spawn(move || {
                let mut last: Option<Sample> = None;
                while !done.load(Ordering::Relaxed) {
                    let st = pool.status();
                    let p = st.side(mirrorpool::Side::Primary);
                    let sample = Sample {
                        active_primary: st.active == mirrorpool::Side::Primary,
                        blocked: st.blocked.is_some(),
                        open: p.connections,
                        idle: p.idle,
                        pending: p.pending,
                        waiters: p.waiters,
                    };
                    // Only changes of the slow-moving parts (idle/waiters flicker).
                    let key = |x: &Sample| (x.active_primary, x.blocked, x.open, x.pending);
                    if last.as_ref().map(key) != Some(key(&sample)) {
                        samples
                            .lock()
                            .unwrap()
                            .push((ms_since_build(Instant::now()), sample));
                        last = Some(sample);
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let r = drive(&pool, pair, cfg, t_build);
        done.store(true, Ordering::Relaxed);
        r
    });
    drop(pool);
    let events = events
        .take()
        .into_iter()
        .map(|(t, e)| (ms_since_build(t), e))
        .collect();
    Ok(Run {
        kind: if warm {
            Kind::MirrorpoolWarm
        } else {
            Kind::Mirrorpool
        },
        round,
        build,
        started: driven.started,
        ops: rec.ops,
        get_errors: rec.get_errors,
        stmt_errors: rec.stmt_errors,
        first_error: rec.first_error,
        events,
        samples: samples.into_inner().unwrap(),
        paused: driven.paused,
    })
}

fn run_r2d2(pair: &PgPair, cfg: &Settings, round: usize, check: bool) -> Result<Run, String> {
    let t_build = Instant::now();
    set_build_instant(t_build);
    let manager = PostgresConnectionManager::new(pair.primary().app_config(), NoTls);
    let pool = r2d2::Pool::builder()
        .test_on_check_out(check)
        .build(manager)
        .map_err(|e| format!("building r2d2: {e}"))?;
    let build = t_build.elapsed();
    let (driven, rec) = drive(&pool, pair, cfg, t_build);
    drop(pool);
    Ok(Run {
        kind: if check { Kind::R2d2 } else { Kind::R2d2NoCheck },
        round,
        build,
        started: driven.started,
        ops: rec.ops,
        get_errors: rec.get_errors,
        stmt_errors: rec.stmt_errors,
        first_error: rec.first_error,
        events: Vec::new(),
        samples: Vec::new(),
        paused: driven.paused,
    })
}

// ----- statistics -----

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    ops: usize,
    ops_per_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// Operations over 50 ms.
    over_50ms: usize,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Statistics of the operations that started at or after `from` (ns since build), over a
/// window of `secs` seconds.
fn stats(ops: &[Op], from_ns: u64, secs: f64) -> Stats {
    let mut totals: Vec<u64> = ops
        .iter()
        .filter(|o| o.start_ns >= from_ns)
        .map(Op::total_ns)
        .collect();
    totals.sort_unstable();
    Stats {
        ops: totals.len(),
        ops_per_s: totals.len() as f64 / secs,
        p50: us(pct(&totals, 0.50)),
        p99: us(pct(&totals, 0.99)),
        p999: us(pct(&totals, 0.999)),
        max: us(totals.last().copied().unwrap_or(0)),
        over_50ms: totals.iter().filter(|t| **t > 50_000_000).count(),
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else if v >= 1_000.0 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

struct Views {
    from_build: Stats,
    warm: Stats,
    /// `build()`'s own duration, ms.
    build_ms: f64,
    /// When every thread had finished its first operation, ms since build.
    served_ms: f64,
    /// With `STALL_MS`: the latest end of an operation in flight at the resume, and the
    /// slowest operation that started after it, both in ms.
    stall: Option<(f64, f64)>,
}

fn report_run(run: &Run, cfg: &Settings) -> Views {
    let started_ns = run.started.as_nanos() as u64;
    let warm_from = started_ns + cfg.warmup.as_nanos() as u64;
    let total_secs = (cfg.warmup + Duration::from_secs(cfg.secs)).as_secs_f64();
    let mut first_end = [u64::MAX; THREADS];
    for o in &run.ops {
        let e = &mut first_end[usize::from(o.thread)];
        *e = (*e).min(o.start_ns + o.total_ns());
    }
    let mut views = Views {
        from_build: stats(&run.ops, 0, total_secs),
        warm: stats(&run.ops, warm_from, cfg.secs as f64),
        build_ms: run.build.as_secs_f64() * 1e3,
        served_ms: first_end.iter().copied().max().unwrap_or(0) as f64 / 1e6,
        stall: None,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n=== round {} · {} · build() {:.1} ms, threads started at +{:.1} ms ===",
        run.round + 1,
        run.kind.name(),
        run.build.as_secs_f64() * 1e3,
        run.started.as_secs_f64() * 1e3
    );
    for (name, s) in [
        ("from build", views.from_build),
        ("after warm-up", views.warm),
    ] {
        let _ = writeln!(
            out,
            "  {name:>13}: {:>7} ops {:>8.0} ops/s  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  >50ms {}",
            s.ops,
            s.ops_per_s,
            fmt_us(s.p50),
            fmt_us(s.p99),
            fmt_us(s.p999),
            fmt_us(s.max),
            s.over_50ms
        );
    }
    if run.get_errors + run.stmt_errors > 0 {
        let _ = writeln!(
            out,
            "  errors: {} get, {} statement; first: {}",
            run.get_errors,
            run.stmt_errors,
            run.first_error.as_deref().unwrap_or("?")
        );
    }
    let _ = writeln!(
        out,
        "  every thread served by +{:.1} ms (first operation of the last thread ended)",
        views.served_ms
    );
    if let Some((a, b)) = run.paused {
        let (a_ns, b_ns) = ((a * 1e6) as u64, (b * 1e6) as u64);
        let end_of = |o: &Op| o.start_ns + o.total_ns();
        let in_flight = run
            .ops
            .iter()
            .filter(|o| o.start_ns < b_ns && end_of(o) > a_ns)
            .map(|o| end_of(o).saturating_sub(b_ns))
            .max()
            .unwrap_or(0);
        let mut after: Vec<&Op> = run.ops.iter().filter(|o| o.start_ns >= b_ns).collect();
        after.sort_unstable_by_key(|o| std::cmp::Reverse(o.total_ns()));
        let worst_after = after.first().map_or(0, |o| o.total_ns());
        let mut ramp = [0usize; 10];
        for o in &run.ops {
            if let Some(rel) = end_of(o).checked_sub(b_ns) {
                if let Some(slot) = ramp.get_mut((rel / 50_000_000) as usize) {
                    *slot += 1;
                }
            }
        }
        let _ = writeln!(
            out,
            "  primary paused +{a:.1} … +{b:.1} ms ({:.0} ms): operations in flight at the resume ended up to {:.1} ms after it; \
             the slowest operation started after the resume took {}",
            b - a,
            in_flight as f64 / 1e6,
            fmt_us(us(worst_after))
        );
        let _ = writeln!(
            out,
            "  ops completed per 50 ms in the 500 ms after the resume: {ramp:?}"
        );
        views.stall = Some((in_flight as f64 / 1e6, worst_after as f64 / 1e6));
    }
    // When the slow operations happened: operations over 20 ms per second since build.
    let mut per_sec = vec![0usize; (total_secs.ceil() as usize) + 2];
    for o in run.ops.iter().filter(|o| o.total_ns() > 20_000_000) {
        let i = ((o.start_ns / 1_000_000_000) as usize).min(per_sec.len() - 1);
        per_sec[i] += 1;
    }
    let _ = writeln!(out, "  ops over 20 ms per second since build: {per_sec:?}");
    // Throughput ramp: operations completed per 100 ms over the first second of the run.
    let mut ramp = [0usize; 10];
    for o in &run.ops {
        let end_ns = o.start_ns + o.total_ns();
        if let Some(rel) = end_ns.checked_sub(started_ns) {
            let bucket = (rel / 100_000_000) as usize;
            if bucket < ramp.len() {
                ramp[bucket] += 1;
            }
        }
    }
    let _ = writeln!(
        out,
        "  ops completed per 100 ms in the first second: {ramp:?}"
    );
    let mut slow: Vec<&Op> = run.ops.iter().collect();
    slow.sort_unstable_by_key(|o| std::cmp::Reverse(o.total_ns()));
    let after_warmup: Vec<&Op> = slow
        .iter()
        .copied()
        .filter(|o| o.start_ns >= warm_from)
        .collect();
    for (title, list) in [("from build", &slow), ("after warm-up", &after_warmup)] {
        let _ = writeln!(
            out,
            "  slowest {} ({title}): start (ms since build) · thread · total = checkout wait + statement + return",
            cfg.slowest.min(list.len())
        );
        for o in list.iter().take(cfg.slowest) {
            let warm = if o.start_ns >= warm_from {
                ""
            } else {
                "  (warm-up)"
            };
            let _ = writeln!(
                out,
                "    {:>9.1}  t{}  {:>9} = {:>9} + {:>9} + {:>9}{warm}",
                o.start_ns as f64 / 1e6,
                o.thread,
                fmt_us(us(o.total_ns())),
                fmt_us(us(o.wait_ns)),
                fmt_us(us(o.stmt_ns)),
                fmt_us(us(o.ret_ns)),
            );
        }
    }
    if !run.events.is_empty() {
        let _ = writeln!(out, "  pool events (ms since build):");
        for (t, e) in &run.events {
            let _ = writeln!(out, "    {t:>9.1}  {e}");
        }
    }
    if !run.samples.is_empty() {
        let _ = writeln!(
            out,
            "  primary side over time (ms since build: active/blocked, open, pending, idle, waiters):"
        );
        for (t, s) in &run.samples {
            let _ = writeln!(
                out,
                "    {t:>9.1}  {}{}  open {:>2}  pending {}  idle {}  waiters {}",
                if s.active_primary {
                    "primary"
                } else {
                    "MIRROR"
                },
                if s.blocked { " BLOCKED" } else { "" },
                s.open,
                s.pending,
                s.idle,
                s.waiters
            );
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    views
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary(results: &[(Kind, usize, Views)], cfg: &Settings) {
    println!(
        "\n=== summary: median over {} rounds (min–max), {THREADS} threads, checkout + SELECT 1 + return ===",
        cfg.rounds
    );
    for (view, pick) in [
        (
            "from build",
            (|v: &Views| v.from_build) as fn(&Views) -> Stats,
        ),
        ("after warm-up", |v: &Views| v.warm),
    ] {
        println!("\n{view}:");
        println!(
            "| pool | ops/s | p50 | p99 | p99.9 | max | max per round | ops > 50 ms per round |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        for kind in &cfg.pools {
            let runs: Vec<Stats> = results
                .iter()
                .filter(|(k, _, _)| k == kind)
                .map(|(_, _, v)| pick(v))
                .collect();
            if runs.is_empty() {
                continue;
            }
            let col = |f: fn(&Stats) -> f64| {
                let vals: Vec<f64> = runs.iter().map(f).collect();
                let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = vals.iter().copied().fold(0.0, f64::max);
                (median(vals), lo, hi)
            };
            let (tput, tlo, thi) = col(|s| s.ops_per_s);
            let cell = |f: fn(&Stats) -> f64| {
                let (m, lo, hi) = col(f);
                format!("{} ({}–{})", fmt_us(m), fmt_us(lo), fmt_us(hi))
            };
            let maxes: Vec<String> = runs.iter().map(|s| fmt_us(s.max)).collect();
            let over: Vec<String> = runs.iter().map(|s| s.over_50ms.to_string()).collect();
            println!(
                "| {} | {tput:.0} ({tlo:.0}–{thi:.0}) | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                cell(|s| s.p50),
                cell(|s| s.p99),
                cell(|s| s.p999),
                cell(|s| s.max),
                maxes.join(", "),
                over.join(", ")
            );
        }
    }
    println!("\nstart-up (median over rounds, min–max):");
    println!("| pool | build() ms | every thread served by, ms since build |");
    println!("|---|---:|---:|");
    for kind in &cfg.pools {
        let of = |f: fn(&Views) -> f64| {
            let v: Vec<f64> = results
                .iter()
                .filter(|(k, _, _)| k == kind)
                .map(|(_, _, v)| f(v))
                .collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{:.1} ({lo:.1}–{hi:.1})", median(v))
        };
        println!(
            "| {} | {} | {} |",
            kind.name(),
            of(|v| v.build_ms),
            of(|v| v.served_ms)
        );
    }
    if let Some((at, len)) = cfg.stall {
        println!(
            "\nprimary paused for {} ms at +{} ms: per round, how long after the resume the operations in flight ended, and the slowest operation started after the resume (ms):",
            len.as_millis(),
            at.as_millis()
        );
        println!("| pool | in flight ended after resume | slowest started after resume |");
        println!("|---|---|---|");
        for kind in &cfg.pools {
            let per: Vec<(f64, f64)> = results
                .iter()
                .filter(|(k, _, _)| k == kind)
                .filter_map(|(_, _, v)| v.stall)
                .collect();
            let a: Vec<String> = per.iter().map(|p| format!("{:.1}", p.0)).collect();
            let b: Vec<String> = per.iter().map(|p| format!("{:.1}", p.1)).collect();
            println!("| {} | {} | {} |", kind.name(), a.join(", "), b.join(", "));
        }
    }
    println!();
    for kind in &cfg.pools {
        println!("  {}: {}", kind.name(), kind.describe());
    }
}

/// Waits until the previous pool's connections to the primary are gone, so runs do not
/// overlap with another pool's teardown.
fn settle(pair: &PgPair) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match pair.primary().connection_count(None) {
            Ok(0) => break,
            Ok(_) => thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                eprintln!("could not count connections: {e}");
                break;
            }
        }
    }
    thread::sleep(Duration::from_millis(300));
}

fn run() -> Result<(), String> {
    let cfg = settings();
    if cfg.pools.is_empty() {
        return Err("POOLS names no known pool (mirrorpool, r2d2, r2d2_nocheck)".into());
    }
    eprintln!("starting a PostgreSQL pair (asynchronous replication)…");
    // Dropped at the end of this function, also on an error or a panic: the servers stop.
    let pair = PgPair::builder()
        .start()
        .map_err(|e| format!("starting the PostgreSQL pair: {e}"))?;
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .map_err(|e| format!("waiting for the mirror: {e}"))?;
    println!(
        "latency under saturation: {THREADS} threads, {} s after a {} ms warm-up, {} rounds, pools {:?}",
        cfg.secs,
        cfg.warmup.as_millis(),
        cfg.rounds,
        cfg.pools.iter().map(|k| k.name()).collect::<Vec<_>>()
    );
    let mut results = Vec::new();
    for round in 0..cfg.rounds {
        // Rotate the order each round, so no pool always runs first (or after another).
        let n = cfg.pools.len();
        let order: Vec<Kind> = (0..n).map(|i| cfg.pools[(i + round) % n]).collect();
        for kind in order {
            settle(&pair);
            let run = match kind {
                Kind::Mirrorpool => run_mirrorpool(&pair, &cfg, round, false)?,
                Kind::MirrorpoolWarm => run_mirrorpool(&pair, &cfg, round, true)?,
                Kind::R2d2 => run_r2d2(&pair, &cfg, round, true)?,
                Kind::R2d2NoCheck => run_r2d2(&pair, &cfg, round, false)?,
            };
            let views = report_run(&run, &cfg);
            results.push((kind, round, views));
        }
    }
    summary(&results, &cfg);
    Ok(())
}

fn main() {
    init_log();
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    if let Err(e) = run() {
        eprintln!("latency benchmark failed: {e}");
        std::process::exit(1);
    }
}
