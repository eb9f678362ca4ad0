//! Failover timeline benchmark on real PostgreSQL pairs (testkit): eight writer threads insert
//! through a `MirrorPool` while the primary fails, and the benchmark reports when the failure
//! was seen, when writers moved, and when the first write was acknowledged by the new primary.
//!
//! Run: `cargo bench --bench failover_timeline --features testkit` (≈ 3 minutes).
//! `RUNS=n` changes the number of runs per scenario (default 10 for SIGKILL, 5 for the rest).
//! `ENGINE=mariadb` runs the same scenarios on MariaDB pairs (`MyPair`, semi-synchronous
//! replication for SIGKILL) instead of PostgreSQL (`ENGINE=postgres`, the default).

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::event::Event;
use mirrorpool::postgres::{PostgresManager, PostgresPool};
use mirrorpool::testkit::{EventLog, Ledger, Load, PgPair, PgServer, PgTable, ProxyMode, TcpProxy};
use mirrorpool::Side;
use postgres::NoTls;

const WRITERS: usize = 8;

/// With `TIMELINE_EVENTS=1`, prints every event in ms after `t0` (to see where time went).
fn dump(events: &EventLog, t0: Instant) {
    if std::env::var_os("TIMELINE_EVENTS").is_some() {
        eprint!("{}", events.timeline(t0));
    }
}

/// When the primary was marked down.
fn primary_down(events: &EventLog) -> Option<Instant> {
    events.first(|e| matches!(e, Event::SideDown(d) if d.side() == Side::Primary))
}

/// When writers moved to the mirror.
fn switched_to_mirror(events: &EventLog) -> Option<Instant> {
    events.first(|e| matches!(e, Event::Switch(s) if s.to() == Side::Mirror))
}

fn table() -> PgTable {
    PgTable::new("t").expect("a valid table name")
}

/// Eight writers, no pause between statements, no backoff after a failed `get()`.
fn start_load(pool: &PostgresPool) -> Load {
    Load::builder()
        .writers(WRITERS)
        .get_error_backoff(Duration::ZERO)
        .max_duration(Duration::from_secs(60))
        .start(pool, table())
        .expect("start the writers")
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

fn new_pair(synchronous: bool) -> PgPair {
    let pair = PgPair::builder()
        .synchronous(synchronous)
        .app_grants(mirrorpool::testkit::Grants::all())
        .start()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL pair: {e}"));
    pair.primary().execute(&table().create_sql()).unwrap();
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .unwrap();
    pair
}

fn pool(
    primary: postgres::Config,
    mirror: postgres::Config,
    promote: bool,
    events: &EventLog,
) -> PostgresPool {
    mirrorpool::postgres::builder()
        .max_size(WRITERS as u32)
        .promote_on_failover(promote)
        .event_handler(Box::new(events.clone()))
        .build(
            PostgresManager::new(primary, NoTls),
            PostgresManager::new(mirror, NoTls),
        )
        .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn since(t: Option<Instant>, t0: Instant) -> Option<f64> {
    t.map(|t| ms(t.saturating_duration_since(t0)))
}

#[derive(Debug, Default)]
struct Run {
    detected: Option<f64>,
    switched: Option<f64>,
    writable: Option<f64>,
    first_write: Option<f64>,
    failed: usize,
    failed_committed: usize,
    get_errors: usize,
    lost: usize,
}

/// Rows on a server, to count lost and failed-but-committed writes.
fn rows(server: &PgServer) -> HashSet<(i32, i64)> {
    let mut c = server.config().connect(NoTls).unwrap();
    table().rows(&mut c).unwrap()
}

fn tally(run: &mut Run, ledger: &Ledger, new_primary: &PgServer) {
    let on_new = rows(new_primary);
    run.lost = ledger.lost_against(&on_new).len();
    run.failed = ledger.failed.len();
    run.failed_committed = ledger.failed_but_committed(&on_new);
    run.get_errors = ledger.get_errors.len();
}

/// Polls the mirror for the moment it leaves recovery.
fn watch_writable(pair: &PgPair) -> thread::JoinHandle<Option<Instant>> {
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

fn sigkill(promote: bool) -> Run {
    let pair = new_pair(true);
    let events = EventLog::new();
    let pool = pool(
        pair.primary().app_config(),
        pair.mirror().app_config(),
        promote,
        &events,
    );
    let load = start_load(&pool);
    thread::sleep(Duration::from_secs(1));
    let watcher = watch_writable(&pair);
    let t0 = Instant::now();
    pair.primary().kill().unwrap();
    if !promote {
        // An external orchestrator promotes the instant the primary dies.
        pair.mirror().promote().unwrap();
    }
    load.wait_for_acks(Side::Mirror, Some(t0), 0, Duration::from_secs(20));
    thread::sleep(Duration::from_millis(500));
    let ledger = load.stop();
    dump(&events, t0);
    let writable = watcher.join().ok().flatten();
    let first = ledger.first_ack_on(Side::Mirror, t0);
    let mut run = Run {
        detected: since(primary_down(&events), t0),
        switched: since(switched_to_mirror(&events), t0),
        writable: since(writable, t0),
        first_write: since(first, t0),
        ..Run::default()
    };
    if !promote {
        // Report the external case relative to the moment the mirror became writable.
        run.first_write = match (first, writable) {
            (Some(f), Some(w)) => Some(ms(f.saturating_duration_since(w))),
            _ => None,
        };
    }
    tally(&mut run, &ledger, pair.mirror());
    run
}

fn hang(black_hole: bool) -> Run {
    let pair = new_pair(false);
    let events = EventLog::new();
    let proxies = if black_hole {
        let target = ([127, 0, 0, 1], pair.primary().port()).into();
        let app = TcpProxy::start(target).unwrap();
        let repl = TcpProxy::start(target).unwrap();
        pair.mirror()
            .execute(&format!(
                "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=mirror'",
                repl.port()
            ))
            .unwrap();
        pair.mirror().execute("SELECT pg_reload_conf()").unwrap();
        wait(Duration::from_secs(10), || repl.active_connections() > 0);
        pair.wait_for_mirror_streaming(Duration::from_secs(30))
            .unwrap();
        Some((app, repl))
    } else {
        None
    };
    let primary_cfg = match &proxies {
        Some((app, _)) => pair.primary().app_config_on_port(app.port()),
        None => pair.primary().app_config(),
    };
    let pool = pool(primary_cfg, pair.mirror().app_config(), true, &events);
    let load = start_load(&pool);
    thread::sleep(Duration::from_secs(1));
    let watcher = watch_writable(&pair);
    let t0 = Instant::now();
    let guard = match &proxies {
        Some((app, repl)) => {
            app.set_mode(ProxyMode::BlackHole);
            repl.set_mode(ProxyMode::BlackHole);
            None
        }
        None => Some(pair.primary().pause_guard().unwrap()),
    };
    load.wait_for_acks(Side::Mirror, Some(t0), 0, Duration::from_secs(20));
    thread::sleep(Duration::from_millis(300));
    let writable = watcher.join().ok().flatten();
    // Let anything still in flight to the old primary finish before stopping the writers.
    drop(guard);
    if let Some((app, repl)) = &proxies {
        app.set_mode(ProxyMode::Drop);
        repl.set_mode(ProxyMode::Drop);
    }
    let ledger = load.stop();
    dump(&events, t0);
    let first = ledger.first_ack_on(Side::Mirror, t0);
    let mut run = Run {
        detected: since(primary_down(&events), t0),
        switched: since(switched_to_mirror(&events), t0),
        writable: since(writable, t0),
        first_write: since(first, t0),
        ..Run::default()
    };
    run.failed = ledger.failed.len();
    run.get_errors = ledger.get_errors.len();
    drop(pool);
    run
}

fn median(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn report(name: &str, runs: &[Run]) {
    println!("\n## {name} ({} runs)", runs.len());
    println!("| run | detected ms | switched ms | mirror writable ms | first write ms | failed stmts | failed but committed | get() errors | lost acked |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            f(r.detected),
            f(r.switched),
            f(r.writable),
            f(r.first_write),
            r.failed,
            r.failed_committed,
            r.get_errors,
            r.lost
        );
    }
    let col = |g: fn(&Run) -> Option<f64>| median(runs.iter().filter_map(g).collect());
    let show = |m: Option<(f64, f64, f64)>| {
        m.map_or("-".into(), |(m, lo, hi)| {
            format!("{m:.1} ({lo:.1}–{hi:.1})")
        })
    };
    println!(
        "| **median (min–max)** | {} | {} | {} | **{}** | | | | |",
        show(col(|r| r.detected)),
        show(col(|r| r.switched)),
        show(col(|r| r.writable)),
        show(col(|r| r.first_write)),
    );
}

/// A scenario: name for `SCENARIO`, default number of runs, one run, report title.
type Scenario = (&'static str, usize, fn() -> Run, &'static str);

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let engine = std::env::var("ENGINE").unwrap_or_default();
    match engine.as_str() {
        "" | "postgres" => {}
        #[cfg(feature = "mysql")]
        "mariadb" => return maria::main(),
        other => panic!("ENGINE={other}: expected postgres or mariadb (with feature mysql)"),
    }
    let only = std::env::var("SCENARIO").unwrap_or_default();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let n = |default: usize| if runs > 0 { runs } else { default };
    println!("# failover timeline: 8 writers, times in ms after the fault");
    let scenarios: [Scenario; 4] = [
        ("kill", 10, || sigkill(true),
         "SIGKILL of the primary, pool promotes the mirror (synchronous replication)"),
        ("external", 5, || sigkill(false),
         "SIGKILL + external promotion at once; first write = ms after the mirror became writable"),
        ("stop", 5, || hang(false),
         "SIGSTOP of the primary (hung), pool promotes (asynchronous replication)"),
        ("blackhole", 5, || hang(true),
         "primary black-holed for the application and the mirror, pool promotes"),
    ];
    for (name, default_runs, run, title) in scenarios {
        if only.is_empty() || only == name {
            let r: Vec<Run> = (0..n(default_runs)).map(|_| run()).collect();
            report(title, &r);
        }
    }
}

/// The same scenarios on MariaDB pairs (`ENGINE=mariadb`).
#[cfg(feature = "mysql")]
mod maria {
    use std::collections::HashSet;
    use std::thread;
    use std::time::{Duration, Instant};

    use mirrorpool::mysql::{MysqlManager, MysqlPool};
    use mirrorpool::testkit::{EventLog, Grants, Ledger, Load, MyPair, MyServer, MyTable};
    use mirrorpool::testkit::{ProxyMode, TcpProxy};
    use mirrorpool::Side;
    use mysql::prelude::Queryable;

    use super::{dump, ms, primary_down, report, since, switched_to_mirror, wait, Run, WRITERS};

    fn table() -> MyTable {
        MyTable::new("t").expect("a valid table name")
    }

    fn start_load(pool: &MysqlPool) -> Load {
        Load::builder()
            .writers(WRITERS)
            .get_error_backoff(Duration::ZERO)
            .max_duration(Duration::from_secs(60))
            .start(pool, table())
            .expect("start the writers")
    }

    /// `synchronous`: semi-synchronous replication.
    fn new_pair(synchronous: bool) -> MyPair {
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

    fn pool(primary_url: &str, mirror_url: &str, promote: bool, events: &EventLog) -> MysqlPool {
        mirrorpool::mysql::builder()
            .max_size(WRITERS as u32)
            .promote_on_failover(promote)
            .event_handler(Box::new(events.clone()))
            .build(
                MysqlManager::from_url(primary_url).unwrap(),
                MysqlManager::from_url(mirror_url).unwrap(),
            )
            .unwrap()
    }

    fn connect(url: &str) -> mysql::Result<mysql::Conn> {
        mysql::Conn::new(mysql::Opts::from_url(url).expect("a valid URL"))
    }

    fn rows(server: &MyServer) -> HashSet<(i32, i64)> {
        let mut c = connect(&server.url()).unwrap();
        table().rows(&mut c).unwrap()
    }

    fn tally(run: &mut Run, ledger: &Ledger, new_primary: &MyServer) {
        let on_new = rows(new_primary);
        run.lost = ledger.lost_against(&on_new).len();
        run.failed = ledger.failed.len();
        run.failed_committed = ledger.failed_but_committed(&on_new);
        run.get_errors = ledger.get_errors.len();
    }

    /// Polls the mirror's `@@read_only` for the moment it turns off.
    fn watch_writable(pair: &MyPair) -> thread::JoinHandle<Option<Instant>> {
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

    fn sigkill(promote: bool) -> Run {
        let pair = new_pair(true);
        let events = EventLog::new();
        let pool = pool(
            &pair.primary().app_url(),
            &pair.mirror().app_url(),
            promote,
            &events,
        );
        let load = start_load(&pool);
        thread::sleep(Duration::from_secs(1));
        let watcher = watch_writable(&pair);
        let t0 = Instant::now();
        pair.primary().kill().unwrap();
        if !promote {
            // An external orchestrator promotes the instant the primary dies.
            pair.mirror().promote().unwrap();
        }
        load.wait_for_acks(Side::Mirror, Some(t0), 0, Duration::from_secs(20));
        thread::sleep(Duration::from_millis(500));
        let ledger = load.stop();
        dump(&events, t0);
        let writable = watcher.join().ok().flatten();
        let first = ledger.first_ack_on(Side::Mirror, t0);
        let mut run = Run {
            detected: since(primary_down(&events), t0),
            switched: since(switched_to_mirror(&events), t0),
            writable: since(writable, t0),
            first_write: since(first, t0),
            ..Run::default()
        };
        if !promote {
            run.first_write = match (first, writable) {
                (Some(f), Some(w)) => Some(ms(f.saturating_duration_since(w))),
                _ => None,
            };
        }
        tally(&mut run, &ledger, pair.mirror());
        run
    }

    fn hang(black_hole: bool) -> Run {
        let pair = new_pair(false);
        let events = EventLog::new();
        let proxies = if black_hole {
            let target = ([127, 0, 0, 1], pair.primary().port()).into();
            let app = TcpProxy::start(target).unwrap();
            let repl = TcpProxy::start(target).unwrap();
            pair.mirror()
                .execute(&format!(
                    "STOP SLAVE; CHANGE MASTER TO MASTER_PORT = {}; START SLAVE",
                    repl.port()
                ))
                .unwrap();
            wait(Duration::from_secs(10), || repl.active_connections() > 0);
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .unwrap();
            Some((app, repl))
        } else {
            None
        };
        let primary_url = match &proxies {
            Some((app, _)) => pair.primary().app_url_on_port(app.port()),
            None => pair.primary().app_url(),
        };
        let pool = pool(&primary_url, &pair.mirror().app_url(), true, &events);
        let load = start_load(&pool);
        thread::sleep(Duration::from_secs(1));
        let watcher = watch_writable(&pair);
        let t0 = Instant::now();
        let guard = match &proxies {
            Some((app, repl)) => {
                app.set_mode(ProxyMode::BlackHole);
                repl.set_mode(ProxyMode::BlackHole);
                None
            }
            None => Some(pair.primary().pause_guard().unwrap()),
        };
        load.wait_for_acks(Side::Mirror, Some(t0), 0, Duration::from_secs(20));
        thread::sleep(Duration::from_millis(300));
        let writable = watcher.join().ok().flatten();
        // Let anything still in flight to the old primary finish before stopping the writers.
        drop(guard);
        if let Some((app, repl)) = &proxies {
            app.set_mode(ProxyMode::Drop);
            repl.set_mode(ProxyMode::Drop);
        }
        let ledger = load.stop();
        dump(&events, t0);
        let first = ledger.first_ack_on(Side::Mirror, t0);
        let mut run = Run {
            detected: since(primary_down(&events), t0),
            switched: since(switched_to_mirror(&events), t0),
            writable: since(writable, t0),
            first_write: since(first, t0),
            ..Run::default()
        };
        run.failed = ledger.failed.len();
        run.get_errors = ledger.get_errors.len();
        drop(pool);
        run
    }

    pub(super) fn main() {
        let only = std::env::var("SCENARIO").unwrap_or_default();
        let runs: usize = std::env::var("RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let n = |default: usize| if runs > 0 { runs } else { default };
        println!("# failover timeline on MariaDB: 8 writers, times in ms after the fault");
        let scenarios: [super::Scenario; 4] = [
            ("kill", 10, || sigkill(true),
             "MariaDB: SIGKILL of the primary, pool promotes the mirror (semi-synchronous replication)"),
            ("external", 5, || sigkill(false),
             "MariaDB: SIGKILL + external promotion at once; first write = ms after the mirror became writable"),
            ("stop", 5, || hang(false),
             "MariaDB: SIGSTOP of the primary (hung), pool promotes (asynchronous replication)"),
            ("blackhole", 5, || hang(true),
             "MariaDB: primary black-holed for the application and the mirror, pool promotes"),
        ];
        for (name, default_runs, run, title) in scenarios {
            if only.is_empty() || only == name {
                let r: Vec<Run> = (0..n(default_runs)).map(|_| run()).collect();
                report(title, &r);
            }
        }
    }
}
