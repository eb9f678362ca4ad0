//! Failover timeline benchmark on real database pairs (testkit): eight writer threads insert
//! through a pool while the primary fails, and the benchmark reports when the failure was seen,
//! when writers moved, when the mirror became writable and when the first write was acknowledged
//! by the new primary, with a breakdown of where the time went (from the pool's events).
//!
//! Run: `cargo bench --bench failover_timeline --features testkit` (both engines, ≈ 7 minutes;
//! PostgreSQL ≈ 3, MariaDB ≈ 4).
//!
//! - `ENGINE=postgres|mariadb|all` (default `all`: PostgreSQL, then MariaDB if the `mysql`
//!   feature is on, as it is by default).
//! - `SCENARIO=name` runs one scenario: `kill`, `external`, `stop`, `blackhole` (both engines),
//!   `r2d2_multihost`, `r2d2_multihost_stop` (PostgreSQL only: the baseline a user would build
//!   without mirrorpool).
//! - `RUNS=n` changes the number of runs per scenario (defaults: `kill` 10, `r2d2_multihost_stop`
//!   2, the rest 5).
//! - `TIMELINE_EVENTS=1` prints each run's events, failed statements and failed `get()`s in ms
//!   after the fault; `RUST_LOG=mirrorpool=debug` adds the pool's log (with µs timestamps).
//!
//! The harness (scenarios, the `Run` record, the report) is generic over [`Engine`], which holds
//! only what differs between PostgreSQL and MariaDB.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mirrorpool::event::Event;
use mirrorpool::testkit::{EventLog, Ledger, Load, LoadTable, PauseGuard, ProxyMode, TcpProxy};
use mirrorpool::{ManageConnection, MirrorPool, Side};

const WRITERS: usize = 8;
/// How long a scenario waits for the first write on the new primary.
const FIRST_WRITE_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// What differs between the engines
// ---------------------------------------------------------------------------------------------

/// One database engine: how to start a pair, break its primary, watch its mirror and build a
/// pool on it. Everything else is the harness's.
trait Engine: 'static {
    /// For report titles, e.g. "PostgreSQL".
    const NAME: &'static str;
    /// The replication mode of the SIGKILL pairs, for report titles.
    const SYNC_MODE: &'static str;
    type Pair;
    type Manager: ManageConnection;
    type Table: LoadTable<Self::Manager>;

    fn table() -> Self::Table;
    /// A fresh pair with the benchmark table, its mirror streaming.
    fn start_pair(synchronous: bool) -> Self::Pair;
    fn primary_port(pair: &Self::Pair) -> u16;
    fn kill_primary(pair: &Self::Pair);
    fn pause_primary(pair: &Self::Pair) -> PauseGuard<'_>;
    /// An external promotion of the mirror, as an administrator would run it; returns once the
    /// mirror takes writes.
    fn promote_mirror(pair: &Self::Pair);
    /// Points the mirror's replication at `proxy` (in front of the primary) and waits until it
    /// streams through it.
    fn replicate_through(pair: &Self::Pair, proxy: &TcpProxy);
    /// A pool with default settings but `max_size(8)`, as the least-privilege application role
    /// with the promotion grants; the primary is reached on `primary_port` (a proxy) if given.
    fn pool(
        pair: &Self::Pair,
        primary_port: Option<u16>,
        promote: bool,
        events: &EventLog,
    ) -> MirrorPool<Self::Manager>;
    /// A thread polling the mirror (own superuser connection, every 0.5 ms) for the moment it
    /// takes writes.
    fn watch_writable(pair: &Self::Pair) -> JoinHandle<Option<Instant>>;
    /// The rows on the mirror (the new primary).
    fn mirror_rows(pair: &Self::Pair) -> HashSet<(i32, i64)>;
}

mod pg {
    use super::*;
    use mirrorpool::postgres::PostgresManager;
    use mirrorpool::testkit::{Grants, PgPair, PgTable};
    use postgres::NoTls;

    pub struct Pg;

    pub fn table() -> PgTable {
        PgTable::new("t").expect("a valid table name")
    }

    impl Engine for Pg {
        const NAME: &'static str = "PostgreSQL";
        const SYNC_MODE: &'static str = "synchronous replication";
        type Pair = PgPair;
        type Manager = PostgresManager<NoTls>;
        type Table = PgTable;

        fn table() -> PgTable {
            table()
        }

        fn start_pair(synchronous: bool) -> PgPair {
            let pair = PgPair::builder()
                .synchronous(synchronous)
                .app_grants(Grants::all())
                .start()
                .unwrap_or_else(|e| panic!("cannot start a PostgreSQL pair: {e}"));
            pair.primary().execute(&table().create_sql()).unwrap();
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .unwrap();
            pair
        }

        fn primary_port(pair: &PgPair) -> u16 {
            pair.primary().port()
        }

        fn kill_primary(pair: &PgPair) {
            pair.primary().kill().unwrap();
        }

        fn pause_primary(pair: &PgPair) -> PauseGuard<'_> {
            pair.primary().pause_guard().unwrap()
        }

        fn promote_mirror(pair: &PgPair) {
            pair.mirror().promote().unwrap();
        }

        fn replicate_through(pair: &PgPair, proxy: &TcpProxy) {
            pair.mirror()
                .execute(&format!(
                    "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=mirror'",
                    proxy.port()
                ))
                .unwrap();
            pair.mirror().execute("SELECT pg_reload_conf()").unwrap();
            wait(Duration::from_secs(10), || proxy.active_connections() > 0);
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .unwrap();
        }

        fn pool(
            pair: &PgPair,
            primary_port: Option<u16>,
            promote: bool,
            events: &EventLog,
        ) -> MirrorPool<PostgresManager<NoTls>> {
            let primary = match primary_port {
                Some(port) => pair.primary().app_config_on_port(port),
                None => pair.primary().app_config(),
            };
            mirrorpool::postgres::builder()
                .max_size(WRITERS as u32)
                .promote_on_failover(promote)
                .event_handler(Box::new(events.clone()))
                .build(
                    PostgresManager::new(primary, NoTls),
                    PostgresManager::new(pair.mirror().app_config(), NoTls),
                )
                .unwrap()
        }

        fn watch_writable(pair: &PgPair) -> JoinHandle<Option<Instant>> {
            let cfg = pair.mirror().config();
            thread::spawn(move || {
                let mut c = cfg.connect(NoTls).ok()?;
                let end = Instant::now() + Duration::from_secs(30);
                while Instant::now() < end {
                    let rec: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).ok()?.get(0);
                    if !rec {
                        return Some(Instant::now());
                    }
                    thread::sleep(Duration::from_micros(500));
                }
                None
            })
        }

        fn mirror_rows(pair: &PgPair) -> HashSet<(i32, i64)> {
            let mut c = pair.mirror().config().connect(NoTls).unwrap();
            table().rows(&mut c).unwrap()
        }
    }
}

#[cfg(feature = "mysql")]
mod maria {
    use super::*;
    use mirrorpool::mysql::MysqlManager;
    use mirrorpool::testkit::{Grants, MyPair, MyTable};
    use mysql::prelude::Queryable;

    pub struct Maria;

    fn table() -> MyTable {
        MyTable::new("t").expect("a valid table name")
    }

    fn connect(url: &str) -> mysql::Result<mysql::Conn> {
        mysql::Conn::new(mysql::Opts::from_url(url).expect("a valid URL"))
    }

    impl Engine for Maria {
        const NAME: &'static str = "MariaDB";
        const SYNC_MODE: &'static str = "semi-synchronous replication";
        type Pair = MyPair;
        type Manager = MysqlManager;
        type Table = MyTable;

        fn table() -> MyTable {
            table()
        }

        /// `synchronous`: lossless semi-synchronous replication (`AFTER_SYNC`).
        fn start_pair(synchronous: bool) -> MyPair {
            let pair = MyPair::builder()
                .synchronous(synchronous)
                .app_grants(Grants::all())
                .start()
                .unwrap_or_else(|e| panic!("cannot start a MariaDB pair: {e}"));
            pair.primary().execute(&table().create_sql()).unwrap();
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .unwrap();
            pair.wait_for_mirror_caught_up(Duration::from_secs(30))
                .unwrap();
            pair
        }

        fn primary_port(pair: &MyPair) -> u16 {
            pair.primary().port()
        }

        fn kill_primary(pair: &MyPair) {
            pair.primary().kill().unwrap();
        }

        fn pause_primary(pair: &MyPair) -> PauseGuard<'_> {
            pair.primary().pause_guard().unwrap()
        }

        fn promote_mirror(pair: &MyPair) {
            pair.mirror().promote().unwrap();
        }

        fn replicate_through(pair: &MyPair, proxy: &TcpProxy) {
            pair.mirror()
                .execute(&format!(
                    "STOP SLAVE; CHANGE MASTER TO MASTER_PORT = {}; START SLAVE",
                    proxy.port()
                ))
                .unwrap();
            wait(Duration::from_secs(10), || proxy.active_connections() > 0);
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .unwrap();
        }

        fn pool(
            pair: &MyPair,
            primary_port: Option<u16>,
            promote: bool,
            events: &EventLog,
        ) -> MirrorPool<MysqlManager> {
            let primary = match primary_port {
                Some(port) => pair.primary().app_url_on_port(port),
                None => pair.primary().app_url(),
            };
            mirrorpool::mysql::builder()
                .max_size(WRITERS as u32)
                .promote_on_failover(promote)
                .event_handler(Box::new(events.clone()))
                .build(
                    MysqlManager::from_url(&primary).unwrap(),
                    MysqlManager::from_url(&pair.mirror().app_url()).unwrap(),
                )
                .unwrap()
        }

        fn watch_writable(pair: &MyPair) -> JoinHandle<Option<Instant>> {
            let url = pair.mirror().url();
            thread::spawn(move || {
                let mut c = connect(&url).ok()?;
                let end = Instant::now() + Duration::from_secs(30);
                while Instant::now() < end {
                    let ro: i64 = c.query_first("SELECT @@read_only").ok()??;
                    if ro == 0 {
                        return Some(Instant::now());
                    }
                    thread::sleep(Duration::from_micros(500));
                }
                None
            })
        }

        fn mirror_rows(pair: &MyPair) -> HashSet<(i32, i64)> {
            let mut c = connect(&pair.mirror().url()).unwrap();
            table().rows(&mut c).unwrap()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// One run, times in ms after the fault.
#[derive(Debug, Default)]
struct Run {
    /// The first error anyone saw at or after the fault: a failed statement or heartbeat.
    first_error: Option<f64>,
    /// The first failed heartbeat of the primary at or after the fault.
    first_failure: Option<f64>,
    /// The primary was marked down.
    detected: Option<f64>,
    /// Writers left the primary for the mirror.
    switched: Option<f64>,
    /// The promotion of the mirror started (the pool's, or the orchestrator's at the fault).
    promote_issued: Option<f64>,
    /// A separate connection saw the mirror take writes.
    writable: Option<f64>,
    /// The first write acknowledged by the mirror.
    first_write: Option<f64>,
    failed: usize,
    failed_committed: usize,
    get_errors: usize,
    lost: usize,
    /// The 1-minute load average when the run started.
    load: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn since(t: Option<Instant>, t0: Instant) -> Option<f64> {
    t.map(|t| ms(t.saturating_duration_since(t0)))
}

/// Like `since`, but negative for a time before `t0` (a false alarm before the fault).
fn signed(t: Option<Instant>, t0: Instant) -> Option<f64> {
    t.map(|t| if t >= t0 { ms(t - t0) } else { -ms(t0 - t) })
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A random 0–250 ms: a hang is noticed only by the heartbeats (every 250 ms), so a fault at
/// a fixed time after the pool started would always hit the same point of their cycle.
fn heartbeat_phase() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_nanos(u64::from(nanos % 250_000_000))
}

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}

/// With `TIMELINE_EVENTS=1`, prints every event, failed statement and failed `get()` in ms after
/// `t0` (to see where time went).
fn dump(events: &EventLog, ledger: &Ledger, t0: Instant) {
    if std::env::var_os("TIMELINE_EVENTS").is_none() {
        return;
    }
    let at = |t: Instant| signed(Some(t), t0).unwrap_or_default();
    let mut lines: Vec<(f64, String)> = events
        .events()
        .iter()
        .map(|(t, e)| (at(*t), e.to_string()))
        .collect();
    for f in &ledger.failed {
        lines.push((
            at(f.at),
            format!("writer {} statement failed: {}", f.writer, f.error),
        ));
    }
    for g in &ledger.get_errors {
        lines.push((at(g.at), format!("get() failed: {}", g.error)));
    }
    if let Some(first) = ledger.first_ack_on(Side::Mirror, t0) {
        lines.push((at(first), "first write acknowledged by the mirror".into()));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, line) in lines {
        eprintln!("{t:9.1} ms  {line}");
    }
}

/// Fills in the times the pool's events tell.
fn from_events(run: &mut Run, events: &EventLog, t0: Instant) {
    let primary = |side: Side| side == Side::Primary;
    run.first_failure = events
        .events()
        .iter()
        .find(|(t, e)| *t >= t0 && matches!(e, Event::HeartbeatFailure(f) if primary(f.side())))
        .map(|(t, _)| ms(t.saturating_duration_since(t0)));
    run.detected = signed(
        events.first(|e| matches!(e, Event::SideDown(d) if primary(d.side()))),
        t0,
    );
    run.switched = signed(
        events.first(|e| matches!(e, Event::Switch(s) if s.to() == Side::Mirror)),
        t0,
    );
    // A promotion is reported when it ends, with its duration.
    run.promote_issued = events
        .events()
        .iter()
        .find_map(|(t, e)| match e {
            Event::Promotion(p) if p.side() == Side::Mirror && p.error().is_none() => {
                Some(*t - p.duration())
            }
            _ => None,
        })
        .map(|t| ms(t.saturating_duration_since(t0)));
}

/// The first failed statement at or after the fault, or the first failed heartbeat if earlier.
fn first_error(run: &mut Run, ledger: &Ledger, t0: Instant) {
    let statement = since(
        ledger
            .failed
            .iter()
            .map(|f| f.at)
            .filter(|t| *t >= t0)
            .min(),
        t0,
    );
    run.first_error = match (statement, run.first_failure) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// Failed statements, failed `get()`s, and (against the new primary's rows) lost and
/// failed-but-committed writes. Writes acknowledged after `until` (when the benchmark resumed a
/// hung primary to end the run) are not counted as lost: they went to the resumed old primary.
fn tally(run: &mut Run, ledger: &Ledger, rows: &HashSet<(i32, i64)>, until: Option<Instant>) {
    run.lost = ledger
        .lost_against(rows)
        .iter()
        .filter(|a| until.is_none_or(|u| a.at < u))
        .count();
    run.failed = ledger.failed.len();
    run.failed_committed = ledger.failed_but_committed(rows);
    run.get_errors = ledger.get_errors.len();
}

/// Eight writers, no pause between statements, no backoff after a failed `get()`.
fn start_load<E: Engine>(pool: &MirrorPool<E::Manager>) -> Load {
    Load::builder()
        .writers(WRITERS)
        .get_error_backoff(Duration::ZERO)
        .max_duration(Duration::from_secs(60))
        .start(pool, E::table())
        .expect("start the writers")
}

/// SIGKILL of the primary. `promote`: the pool promotes; otherwise an orchestrator promotes the
/// mirror the instant the primary is dead.
fn sigkill<E: Engine>(promote: bool) -> Run {
    let load_avg = load_average();
    let pair = E::start_pair(true);
    let events = EventLog::new();
    let pool = E::pool(&pair, None, promote, &events);
    let load = start_load::<E>(&pool);
    thread::sleep(Duration::from_secs(1));
    let watcher = E::watch_writable(&pair);
    let t0 = Instant::now();
    E::kill_primary(&pair);
    let promote_issued = (!promote).then(Instant::now);
    if !promote {
        E::promote_mirror(&pair);
    }
    load.wait_for_acks(Side::Mirror, Some(t0), 0, FIRST_WRITE_LIMIT);
    thread::sleep(Duration::from_millis(500));
    let ledger = load.stop();
    dump(&events, &ledger, t0);
    let writable = watcher.join().ok().flatten();
    let mut run = Run {
        writable: since(writable, t0),
        first_write: since(ledger.first_ack_on(Side::Mirror, t0), t0),
        load: load_avg,
        ..Run::default()
    };
    from_events(&mut run, &events, t0);
    first_error(&mut run, &ledger, t0);
    if promote_issued.is_some() {
        run.promote_issued = since(promote_issued, t0);
    }
    tally(&mut run, &ledger, &E::mirror_rows(&pair), None);
    run
}

/// A hung primary (SIGSTOP), or one black-holed for the application and the mirror (testkit
/// proxies); the pool promotes. Asynchronous replication.
fn hang<E: Engine>(black_hole: bool) -> Run {
    let load_avg = load_average();
    let pair = E::start_pair(false);
    let events = EventLog::new();
    let proxies = black_hole.then(|| {
        let target = ([127, 0, 0, 1], E::primary_port(&pair)).into();
        let app = TcpProxy::start(target).unwrap();
        let repl = TcpProxy::start(target).unwrap();
        E::replicate_through(&pair, &repl);
        (app, repl)
    });
    let pool = E::pool(
        &pair,
        proxies.as_ref().map(|(app, _)| app.port()),
        true,
        &events,
    );
    let load = start_load::<E>(&pool);
    thread::sleep(Duration::from_secs(1) + heartbeat_phase());
    let watcher = E::watch_writable(&pair);
    let t0 = Instant::now();
    let guard = match &proxies {
        Some((app, repl)) => {
            app.set_mode(ProxyMode::BlackHole);
            repl.set_mode(ProxyMode::BlackHole);
            None
        }
        None => Some(E::pause_primary(&pair)),
    };
    load.wait_for_acks(Side::Mirror, Some(t0), 0, FIRST_WRITE_LIMIT);
    thread::sleep(Duration::from_millis(300));
    let writable = watcher.join().ok().flatten();
    // Let anything still in flight to the old primary finish before stopping the writers.
    let resumed = Instant::now();
    drop(guard);
    if let Some((app, repl)) = &proxies {
        app.set_mode(ProxyMode::Drop);
        repl.set_mode(ProxyMode::Drop);
    }
    let ledger = load.stop();
    dump(&events, &ledger, t0);
    let mut run = Run {
        writable: since(writable, t0),
        first_write: since(ledger.first_ack_on(Side::Mirror, t0), t0),
        load: load_avg,
        ..Run::default()
    };
    from_events(&mut run, &events, t0);
    first_error(&mut run, &ledger, t0);
    drop(pool);
    tally(&mut run, &ledger, &E::mirror_rows(&pair), Some(resumed));
    run
}

// ---------------------------------------------------------------------------------------------
// The baseline: r2d2 + a multi-host postgres::Config + an external promotion
// ---------------------------------------------------------------------------------------------

/// What a user would build without mirrorpool: `r2d2` with `r2d2_postgres` over one multi-host
/// config (primary, then mirror; `target_session_attrs=read-write`), and an orchestrator that
/// promotes the mirror at the fault.
mod baseline {
    use super::*;
    use mirrorpool::testkit::{Ack, FailedGet, FailedWrite, PgPair, APP_PASSWORD, APP_USER};
    use postgres::config::TargetSessionAttrs;
    use postgres::NoTls;
    use r2d2_postgres::{r2d2, PostgresConnectionManager};

    type R2d2Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

    /// How long the SIGSTOP run waits for a first write before it gives up.
    pub const STOP_LIMIT: Duration = Duration::from_secs(10);

    /// `host=127.0.0.1,127.0.0.1 port=P,M target_session_attrs=read-write connect_timeout=5`
    /// as the application role (the same login and `connect_timeout` the mirrorpool runs use).
    fn multi_host(pair: &PgPair) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .host("127.0.0.1")
            .port(pair.primary().port())
            .port(pair.mirror().port())
            .user(APP_USER)
            .password(APP_PASSWORD)
            .dbname("postgres")
            .target_session_attrs(TargetSessionAttrs::ReadWrite)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// r2d2's defaults (it validates every checkout) but `max_size(8)`, and the
    /// `connection_timeout` of mirrorpool's default (30 s, r2d2's default too).
    fn pool(pair: &PgPair) -> R2d2Pool {
        r2d2::Pool::builder()
            .max_size(WRITERS as u32)
            .connection_timeout(Duration::from_secs(30))
            .build(PostgresConnectionManager::new(multi_host(pair), NoTls))
            .expect("build the r2d2 pool")
    }

    /// The testkit `Load`'s writer loop for an r2d2 pool: one `get()` per insert, no retry, no
    /// pause. Each insert returns the server's port, so every acknowledgement is attributed to
    /// the server that gave it.
    pub struct R2d2Load {
        stop: Arc<AtomicBool>,
        ledger: Arc<Mutex<Ledger>>,
        handles: Vec<JoinHandle<()>>,
    }

    impl R2d2Load {
        fn start(pool: &R2d2Pool, mirror_port: u16) -> R2d2Load {
            let stop = Arc::new(AtomicBool::new(false));
            let ledger = Arc::new(Mutex::new(Ledger::default()));
            let handles = (1..=WRITERS as i32)
                .map(|writer| {
                    let (pool, stop, ledger) = (pool.clone(), stop.clone(), ledger.clone());
                    thread::spawn(move || writer_loop(writer, &pool, mirror_port, &stop, &ledger))
                })
                .collect();
            R2d2Load {
                stop,
                ledger,
                handles,
            }
        }

        fn first_mirror_ack(&self, t0: Instant) -> Option<Instant> {
            self.ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first_ack_on(Side::Mirror, t0)
        }

        fn stop(mut self) -> Ledger {
            self.stop.store(true, Ordering::Relaxed);
            for h in std::mem::take(&mut self.handles) {
                let _ = h.join();
            }
            std::mem::take(&mut *self.ledger.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    impl Drop for R2d2Load {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn writer_loop(
        writer: i32,
        pool: &R2d2Pool,
        mirror_port: u16,
        stop: &AtomicBool,
        ledger: &Mutex<Ledger>,
    ) {
        let insert = format!(
            "INSERT INTO {} (writer, seq) VALUES ($1, $2) RETURNING inet_server_port()",
            pg::table().name()
        );
        let started = Instant::now();
        let record = |f: &mut dyn FnMut(&mut Ledger)| {
            f(&mut ledger.lock().unwrap_or_else(PoisonError::into_inner))
        };
        let mut seq = 0i64;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            let mut conn = match pool.get() {
                Ok(c) => c,
                Err(e) => {
                    let at = Instant::now();
                    record(&mut |l| {
                        l.get_errors.push(FailedGet {
                            at,
                            error: e.to_string(),
                        })
                    });
                    continue;
                }
            };
            seq += 1;
            let result = conn.query_one(insert.as_str(), &[&writer, &seq]);
            let at = Instant::now();
            match result {
                Ok(row) => {
                    let port: Option<i32> = row.get(0);
                    let side = if port == Some(i32::from(mirror_port)) {
                        Side::Mirror
                    } else {
                        Side::Primary
                    };
                    record(&mut |l| {
                        l.acked.push(Ack {
                            writer,
                            seq,
                            side,
                            at,
                        })
                    });
                }
                Err(e) => record(&mut |l| {
                    l.failed.push(FailedWrite {
                        writer,
                        seq,
                        side: Side::Primary,
                        at,
                        error: e.to_string(),
                    })
                }),
            }
        }
    }

    /// SIGKILL (`hung == false`) or SIGSTOP of the primary, and the mirror promoted at once.
    pub fn run(hung: bool) -> Run {
        let load_avg = load_average();
        let pair = pg::Pg::start_pair(!hung);
        let pool = pool(&pair);
        let load = R2d2Load::start(&pool, pair.mirror().port());
        thread::sleep(Duration::from_secs(1));
        let watcher = pg::Pg::watch_writable(&pair);
        let t0 = Instant::now();
        let guard = if hung {
            Some(pg::Pg::pause_primary(&pair))
        } else {
            pg::Pg::kill_primary(&pair);
            None
        };
        let promote_issued = Instant::now();
        pg::Pg::promote_mirror(&pair);
        let limit = if hung { STOP_LIMIT } else { FIRST_WRITE_LIMIT };
        wait(limit, || load.first_mirror_ack(t0).is_some());
        thread::sleep(Duration::from_millis(500));
        let writable = watcher.join().ok().flatten();
        // Writers stuck on the stopped primary return once it runs again.
        let resumed = Instant::now();
        drop(guard);
        let ledger = load.stop();
        dump(&EventLog::new(), &ledger, t0);
        let mut run = Run {
            promote_issued: since(Some(promote_issued), t0),
            writable: since(writable, t0),
            first_write: since(ledger.first_ack_on(Side::Mirror, t0), t0),
            load: load_avg,
            ..Run::default()
        };
        first_error(&mut run, &ledger, t0);
        drop(pool);
        tally(
            &mut run,
            &ledger,
            &pg::Pg::mirror_rows(&pair),
            Some(resumed),
        );
        run
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// Median, min, max.
fn median(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn report(title: &str, runs: &[Run]) {
    let loads = median(runs.iter().map(|r| r.load).collect());
    println!(
        "\n## {title} ({} runs; 1-min load average at run start {})",
        runs.len(),
        loads.map_or("-".into(), |(_, lo, hi)| format!("{lo:.1}–{hi:.1}"))
    );
    println!("| run | detected | switched | promote issued | mirror writable | first write | failed stmts | failed but committed | failed get() | lost acked |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            f(r.detected),
            f(r.switched),
            f(r.promote_issued),
            f(r.writable),
            f(r.first_write),
            r.failed,
            r.failed_committed,
            r.get_errors,
            r.lost
        );
    }
    let show = |m: Option<(f64, f64, f64)>| {
        m.map_or("-".into(), |(m, lo, hi)| {
            format!("{m:.1} ({lo:.1}–{hi:.1})")
        })
    };
    let col = |g: &dyn Fn(&Run) -> Option<f64>| show(median(runs.iter().filter_map(g).collect()));
    let count = |g: fn(&Run) -> usize| {
        let v: Vec<usize> = runs.iter().map(g).collect();
        let (lo, hi) = (v.iter().min().unwrap_or(&0), v.iter().max().unwrap_or(&0));
        if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}–{hi}")
        }
    };
    let never = runs.iter().filter(|r| r.first_write.is_none()).count();
    println!(
        "| **median (min–max)** | {} | {} | {} | {} | **{}**{} | {} | {} | {} | {} |",
        col(&|r| r.detected),
        col(&|r| r.switched),
        col(&|r| r.promote_issued),
        col(&|r| r.writable),
        col(&|r| r.first_write),
        if never > 0 {
            format!(" ({never} runs: none)")
        } else {
            String::new()
        },
        count(|r| r.failed),
        count(|r| r.failed_committed),
        count(|r| r.get_errors),
        count(|r| r.lost),
    );
    // Where the time goes: each step's median over the runs that have both ends.
    // A step that runs backwards (a false alarm before the fault, or an external promotion
    // issued before the pool saw the failure) is left out; "(n)" says how many runs a step's
    // median is over when not all. Events of one monitor turn may be stamped a few µs apart
    // out of order: up to 1 ms backwards counts as 0.
    let step = |a: &dyn Fn(&Run) -> Option<f64>, b: &dyn Fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(b(r)? - a(r)?))
            .filter(|d| *d >= -1.0)
            .map(|d| d.max(0.0))
            .collect();
        let n = v.len();
        let m = show(median(v));
        if n > 0 && n < runs.len() {
            format!("{m} ({n})")
        } else {
            m
        }
    };
    let fault = |_: &Run| Some(0.0);
    println!("\nWhere the time goes (median (min–max) ms of each step):\n");
    println!("| fault → 1st error | → 1st failed heartbeat | → detected | detected → promote issued | promote issued → writable | writable → first write |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} |",
        step(&fault, &|r| r.first_error),
        step(&|r| r.first_error, &|r| r.first_failure),
        step(&|r| r.first_failure, &|r| r.detected),
        step(&|r| r.detected, &|r| r.promote_issued),
        step(&|r| r.promote_issued, &|r| r.writable),
        step(&|r| r.writable, &|r| r.first_write),
    );
}

/// A scenario: name for `SCENARIO`, default number of runs, one run, report title.
struct Scenario {
    name: &'static str,
    runs: usize,
    run: fn() -> Run,
    title: String,
}

fn scenarios<E: Engine>() -> Vec<Scenario> {
    let n = E::NAME;
    vec![
        Scenario {
            name: "kill",
            runs: 10,
            run: || sigkill::<E>(true),
            title: format!("{n}: SIGKILL of the primary, pool promotes the mirror ({})", E::SYNC_MODE),
        },
        Scenario {
            name: "external",
            runs: 5,
            run: || sigkill::<E>(false),
            title: format!("{n}: SIGKILL + external promotion at once, pool follows ({})", E::SYNC_MODE),
        },
        Scenario {
            name: "stop",
            runs: 5,
            run: || hang::<E>(false),
            title: format!("{n}: SIGSTOP of the primary (hung), pool promotes (asynchronous replication)"),
        },
        Scenario {
            name: "blackhole",
            runs: 5,
            run: || hang::<E>(true),
            title: format!("{n}: primary black-holed for the application and the mirror, pool promotes (asynchronous replication)"),
        },
    ]
}

fn baseline_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "r2d2_multihost",
            runs: 5,
            run: || baseline::run(false),
            title: "PostgreSQL baseline: r2d2 + multi-host config (target_session_attrs=read-write), SIGKILL + external promotion at once (synchronous replication)".into(),
        },
        Scenario {
            name: "r2d2_multihost_stop",
            runs: 2,
            run: || baseline::run(true),
            title: format!(
                "PostgreSQL baseline: r2d2 + multi-host config, SIGSTOP (hung) + external promotion at once (asynchronous replication; gives up after {} s)",
                baseline::STOP_LIMIT.as_secs()
            ),
        },
    ]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .format_timestamp_micros()
        .init();
    let engine = std::env::var("ENGINE").unwrap_or_default();
    let only = std::env::var("SCENARIO").unwrap_or_default();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut list: Vec<Scenario> = Vec::new();
    let postgres = matches!(engine.as_str(), "" | "all" | "postgres");
    let mariadb = matches!(engine.as_str(), "" | "all" | "mariadb");
    if !postgres && !mariadb {
        panic!("ENGINE={engine}: expected postgres, mariadb or all");
    }
    if postgres {
        list.extend(scenarios::<pg::Pg>());
        list.extend(baseline_scenarios());
    }
    #[cfg(feature = "mysql")]
    if mariadb {
        list.extend(scenarios::<maria::Maria>());
    }
    #[cfg(not(feature = "mysql"))]
    if mariadb && engine == "mariadb" {
        panic!("ENGINE=mariadb needs the mysql feature");
    }
    list.retain(|s| only.is_empty() || only == s.name);
    if list.is_empty() {
        panic!("SCENARIO={only}: no such scenario for ENGINE={engine}");
    }
    println!("# failover timeline: 8 writers, times in ms after the fault");
    for s in list {
        let n = if runs > 0 { runs } else { s.runs };
        let r: Vec<Run> = (0..n).map(|_| (s.run)()).collect();
        report(&s.title, &r);
    }
}
