//! Failover timeline benchmark on real PostgreSQL pairs (testkit): eight writer threads insert
//! through a `MirrorPool` while the primary fails, and the benchmark reports when the failure
//! was seen, when writers moved, and when the first write was acknowledged by the new primary.
//!
//! Run: `cargo bench --bench failover_timeline --features testkit` (≈ 3 minutes).
//! `RUNS=n` changes the number of runs per scenario (default 10 for SIGKILL, 5 for the rest).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::postgres::{PostgresManager, PostgresPool};
use mirrorpool::testkit::{PgPair, ProxyMode, TcpProxy};
use mirrorpool::{HandleEvent, PooledConnection, Side};
use postgres::NoTls;

const WRITERS: i32 = 8;

/// Event times, for the timeline.
#[derive(Debug, Default, Clone)]
struct Events(Arc<Mutex<Vec<(Instant, String)>>>);

impl Events {
    /// With `TIMELINE_EVENTS=1`, prints every event in ms after `t0` (to see where time went).
    fn dump(&self, t0: Instant) {
        if std::env::var_os("TIMELINE_EVENTS").is_none() {
            return;
        }
        let mut log = self.0.lock().unwrap().clone();
        log.sort_by_key(|e| e.0);
        for (t, e) in log {
            let ms = if t >= t0 {
                (t - t0).as_secs_f64() * 1e3
            } else {
                -((t0 - t).as_secs_f64() * 1e3)
            };
            eprintln!("  {ms:9.1} ms  {e}");
        }
    }

    fn first(&self, prefix: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| e.starts_with(prefix))
            .map(|(t, _)| *t)
    }
}

impl HandleEvent for Events {
    fn handle_side_down(&self, e: mirrorpool::event::SideDownEvent) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), format!("down {}", e.side())));
    }
    fn handle_switch(&self, e: mirrorpool::event::SwitchEvent) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), format!("switch {}", e.to())));
    }
    fn handle_promotion(&self, e: mirrorpool::event::PromotionEvent) {
        let now = Instant::now();
        let mut log = self.0.lock().unwrap();
        log.push((now - e.duration(), "promotion started".to_string()));
        log.push((now, format!("promoted {}", e.error().is_none())));
    }
    fn handle_switch_refused(&self, e: mirrorpool::event::SwitchRefusedEvent) {
        self.0.lock().unwrap().push((
            Instant::now(),
            format!("refused {}: {}", e.to(), e.reason()),
        ));
    }
}

#[derive(Default)]
struct Record {
    acked: Vec<(i32, i64, Side, Instant)>,
    failed: Vec<(i32, i64)>,
    get_errors: u64,
}

struct Load {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    threads: Vec<thread::JoinHandle<()>>,
}

fn start_load(pool: &PostgresPool) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let threads = (0..WRITERS)
        .map(|w| {
            let (pool, stop, record) = (pool.clone(), stop.clone(), record.clone());
            thread::spawn(move || {
                let mut seq = 0i64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut conn = match pool.get() {
                        Ok(c) => c,
                        Err(_) => {
                            record.lock().unwrap().get_errors += 1;
                            continue;
                        }
                    };
                    seq += 1;
                    let side = PooledConnection::side(&conn);
                    match conn.execute("INSERT INTO t VALUES ($1, $2)", &[&w, &seq]) {
                        Ok(_) => record
                            .lock()
                            .unwrap()
                            .acked
                            .push((w, seq, side, Instant::now())),
                        Err(e) => {
                            PooledConnection::report(&mut conn, &e);
                            record.lock().unwrap().failed.push((w, seq));
                        }
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        record,
        threads,
    }
}

impl Load {
    fn acked_on(&self, side: Side, after: Instant) -> usize {
        self.record
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|a| a.2 == side && a.3 >= after)
            .count()
    }

    fn finish(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.record)
            .ok()
            .expect("writers gone")
            .into_inner()
            .unwrap()
    }
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
        .expect("start a PostgreSQL pair (is PostgreSQL installed?)");
    pair.primary()
        .execute("CREATE TABLE t (writer int, seq bigint, PRIMARY KEY (writer, seq))")
        .unwrap();
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .unwrap();
    pair
}

fn pool(
    primary: postgres::Config,
    mirror: postgres::Config,
    promote: bool,
    events: &Events,
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
    get_errors: u64,
    lost: usize,
}

/// Rows on a server, to count lost and failed-but-committed writes.
fn rows(server: &mirrorpool::testkit::PgServer) -> HashSet<(i32, i64)> {
    let mut c = server.config().connect(NoTls).unwrap();
    c.query("SELECT writer, seq FROM t", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn tally(run: &mut Run, rec: &Record, new_primary: &mirrorpool::testkit::PgServer) {
    let on_new = rows(new_primary);
    run.lost = rec
        .acked
        .iter()
        .filter(|a| !on_new.contains(&(a.0, a.1)))
        .count();
    run.failed = rec.failed.len();
    run.failed_committed = rec.failed.iter().filter(|f| on_new.contains(f)).count();
    run.get_errors = rec.get_errors;
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
    let events = Events::default();
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
    wait(Duration::from_secs(20), || {
        load.acked_on(Side::Mirror, t0) > 0
    });
    thread::sleep(Duration::from_millis(500));
    let rec = load.finish();
    events.dump(t0);
    let writable = watcher.join().ok().flatten();
    let first = rec
        .acked
        .iter()
        .filter(|a| a.2 == Side::Mirror)
        .map(|a| a.3)
        .min();
    let mut run = Run {
        detected: since(events.first("down primary"), t0),
        switched: since(events.first("switch mirror"), t0),
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
    tally(&mut run, &rec, pair.mirror());
    run
}

fn hang(black_hole: bool) -> Run {
    let pair = new_pair(false);
    let events = Events::default();
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
    wait(Duration::from_secs(20), || {
        load.acked_on(Side::Mirror, t0) > 0
    });
    thread::sleep(Duration::from_millis(300));
    let writable = watcher.join().ok().flatten();
    // Let anything still in flight to the old primary finish before stopping the writers.
    drop(guard);
    if let Some((app, repl)) = &proxies {
        app.set_mode(ProxyMode::Drop);
        repl.set_mode(ProxyMode::Drop);
    }
    let rec = load.finish();
    events.dump(t0);
    let first = rec
        .acked
        .iter()
        .filter(|a| a.2 == Side::Mirror && a.3 >= t0)
        .map(|a| a.3)
        .min();
    let mut run = Run {
        detected: since(events.first("down primary"), t0),
        switched: since(events.first("switch mirror"), t0),
        writable: since(writable, t0),
        first_write: since(first, t0),
        ..Run::default()
    };
    run.failed = rec.failed.len();
    run.get_errors = rec.get_errors;
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
