//! Steady throughput on real PostgreSQL and MariaDB (issue 8 §3.2): eight threads, each looping
//! checkout + one statement + return as fast as it can against the primary of a testkit pair,
//! through mirrorpool with its defaults and through what users would pick instead: `r2d2` with
//! its defaults (`r2d2_postgres` / `r2d2_mysql`, validating every checkout), `r2d2` with
//! `test_on_check_out(false)`, and on PostgreSQL `r2d2` through pgpool-II in streaming
//! replication mode (started by this benchmark on loopback, if installed).
//!
//! Run: `cargo bench --bench throughput --features testkit` (≈ 10 minutes with the defaults).
//!
//! Environment:
//! - `ENGINE` (default `all`): `postgres`, `mariadb` or `all`.
//! - `WORKLOAD` (default `all`): `select` (`SELECT 1`), `insert` (one-row `INSERT` of the
//!   testkit's `PgTable` / `MyTable`, autocommit) or `all`.
//! - `POOLS` (default: the first five that apply): comma separated, of `mirrorpool`, `r2d2`,
//!   `r2d2_nocheck`, `pgpool`, `pgpool_nocheck` (these two PostgreSQL only) and, opt-in,
//!   `r2d2_bare` (MariaDB only: `r2d2_nocheck` without `r2d2_mysql`'s ping on every return).
//! - `ROUNDS` (default 3): rounds per engine and workload; each runs every pool once, the
//!   order rotating per round.
//! - `SECS` (default 8) and `WARMUP_MS` (default 1000): each run lasts `WARMUP_MS + SECS` from
//!   the moment the threads start (right after the pool's `build()`); only operations that
//!   started after the warm-up count.
//! - `SLOWEST` (default 3): how many of each run's slowest counted operations to list, with
//!   their checkout / statement / return breakdown; every run also prints how many operations
//!   took over 20 ms in each second since the threads started (warm-up included).
//! - `RUST_LOG=mirrorpool=debug`: the pool's log, stamped in ms since the run's threads started
//!   (while the pool is being built: since the build started).
//!
//! Every pool has `max_size` 10 (both libraries' default) and connects as the testkit's
//! least-privilege application role with no extra grant. No timed assertions.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const THREADS: usize = 8;

// ----- settings -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Select,
    Insert,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Select => "SELECT 1",
            Workload::Insert => "one-row INSERT",
        }
    }
}

/// A pool under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mirrorpool,
    R2d2,
    R2d2NoCheck,
    /// r2d2 defaults through pgpool-II (PostgreSQL only).
    Pgpool,
    /// r2d2 with `test_on_check_out(false)` through pgpool-II (PostgreSQL only).
    PgpoolNoCheck,
    /// Opt-in, MariaDB only: r2d2 with `test_on_check_out(false)` and a manager whose
    /// `has_broken` makes no round trip (r2d2_mysql's pings on every return), as
    /// `r2d2_postgres`'s does: r2d2 with no round trip of its own, a diagnostic.
    R2d2Bare,
}

impl Kind {
    /// The default set.
    const DEFAULT: [Kind; 5] = [
        Kind::Mirrorpool,
        Kind::R2d2,
        Kind::R2d2NoCheck,
        Kind::Pgpool,
        Kind::PgpoolNoCheck,
    ];
    const ALL: [Kind; 6] = [
        Kind::Mirrorpool,
        Kind::R2d2,
        Kind::R2d2NoCheck,
        Kind::Pgpool,
        Kind::PgpoolNoCheck,
        Kind::R2d2Bare,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Mirrorpool => "mirrorpool",
            Kind::R2d2 => "r2d2",
            Kind::R2d2NoCheck => "r2d2_nocheck",
            Kind::Pgpool => "pgpool",
            Kind::PgpoolNoCheck => "pgpool_nocheck",
            Kind::R2d2Bare => "r2d2_bare",
        }
    }

    fn via_pgpool(self) -> bool {
        matches!(self, Kind::Pgpool | Kind::PgpoolNoCheck)
    }
}

struct Settings {
    engines: Vec<&'static str>,
    workloads: Vec<Workload>,
    pools: Vec<Kind>,
    rounds: usize,
    secs: u64,
    warmup: Duration,
    slowest: usize,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings() -> Result<Settings, String> {
    let engines = match std::env::var("ENGINE").as_deref() {
        Err(_) | Ok("all") => vec!["postgres", "mariadb"],
        Ok("postgres") => vec!["postgres"],
        Ok("mariadb") | Ok("mysql") => vec!["mariadb"],
        Ok(other) => return Err(format!("ENGINE={other}: postgres, mariadb or all")),
    };
    let workloads = match std::env::var("WORKLOAD").as_deref() {
        Err(_) | Ok("all") => vec![Workload::Select, Workload::Insert],
        Ok("select") => vec![Workload::Select],
        Ok("insert") => vec![Workload::Insert],
        Ok(other) => return Err(format!("WORKLOAD={other}: select, insert or all")),
    };
    let pools: Vec<Kind> = match std::env::var("POOLS") {
        Ok(list) => Kind::ALL
            .into_iter()
            .filter(|k| list.split(',').any(|p| p.trim() == k.name()))
            .collect(),
        Err(_) => Kind::DEFAULT.to_vec(),
    };
    if pools.is_empty() {
        return Err("POOLS names no known pool".into());
    }
    Ok(Settings {
        engines,
        workloads,
        pools,
        rounds: env_num("ROUNDS", 3).max(1) as usize,
        secs: env_num("SECS", 8).max(1),
        warmup: Duration::from_millis(env_num("WARMUP_MS", 1000)),
        slowest: env_num("SLOWEST", 3) as usize,
    })
}

// ----- a log stamped relative to the current run (`RUST_LOG=mirrorpool=debug`) -----

/// The process's first clock reading; the current run's release is stored relative to it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When the current run's threads were released, ns since [`epoch`].
static RELEASED_NS: AtomicU64 = AtomicU64::new(0);

fn init_log() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            let now = Instant::now().saturating_duration_since(epoch()).as_nanos() as f64;
            let ms = (now - RELEASED_NS.load(Ordering::Relaxed) as f64) / 1e6;
            writeln!(
                buf,
                "[{ms:+10.3} ms] {:5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            )
        })
        .try_init();
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ----- the harness, the same for every engine and pool -----

/// One operation: checkout wait, statement and return, in ns.
#[derive(Clone, Copy, Debug)]
struct Op {
    /// Start, ns after the threads were released.
    start_ns: u64,
    wait_ns: u64,
    stmt_ns: u64,
    ret_ns: u64,
}

impl Op {
    fn total_ns(&self) -> u64 {
        self.wait_ns + self.stmt_ns + self.ret_ns
    }
}

#[derive(Default)]
struct Recorded {
    ops: Vec<Op>,
    /// Operations completed, warm-up included.
    completed: u64,
    /// CPU time (user + system) of this whole process over the run, warm-up included: the
    /// client side's cost, the pool's own threads (mirrorpool's monitor) included.
    cpu_ns: u64,
    errors: u64,
    first_error: Option<String>,
}

/// User + system CPU time of this process so far, ns.
fn process_cpu_ns() -> u64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// What a run of one pool needs besides the pool.
struct RunCtx<'a> {
    cfg: &'a Settings,
    workload: Workload,
    /// Writer ids `writer_base..writer_base + THREADS` are this run's (unique across runs, so
    /// the INSERT workload never collides with an earlier run's rows).
    writer_base: i32,
}

/// Releases `THREADS` threads together; each loops `get` + `op` + dropping the guard until
/// `warmup + secs` after the release, timing every operation. Operations that started in the
/// warm-up are kept but not counted in the statistics.
fn drive<G, F, O>(ctx: &RunCtx<'_>, get: F, op: O) -> Recorded
where
    F: Fn() -> Result<G, String> + Sync,
    O: Fn(&mut G, Workload, i32, i64) -> Result<(), String> + Sync,
{
    let warmup = ctx.cfg.warmup;
    let run_for = warmup + Duration::from_secs(ctx.cfg.secs);
    let start = Barrier::new(THREADS + 1);
    let released: OnceLock<Instant> = OnceLock::new();
    let mut all = Recorded::default();
    thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (start, released, get, op) = (&start, &released, &get, &op);
                let writer = ctx.writer_base + i as i32;
                s.spawn(move || {
                    let mut rec = Recorded {
                        ops: Vec::with_capacity(1 << 17),
                        ..Recorded::default()
                    };
                    start.wait();
                    let t_start = *released.get().expect("set before the release");
                    let end = t_start + run_for;
                    let mut seq: i64 = 0;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let mut guard = match get() {
                            Ok(g) => g,
                            Err(e) => {
                                rec.errors += 1;
                                rec.first_error.get_or_insert(e);
                                continue;
                            }
                        };
                        let t1 = Instant::now();
                        seq += 1;
                        let ok = match op(&mut guard, ctx.workload, writer, seq) {
                            Ok(()) => true,
                            Err(e) => {
                                rec.errors += 1;
                                rec.first_error.get_or_insert(e);
                                false
                            }
                        };
                        let t2 = Instant::now();
                        drop(guard);
                        let t3 = Instant::now();
                        rec.completed += u64::from(ok);
                        if ok {
                            rec.ops.push(Op {
                                start_ns: (t0 - t_start).as_nanos() as u64,
                                wait_ns: (t1 - t0).as_nanos() as u64,
                                stmt_ns: (t2 - t1).as_nanos() as u64,
                                ret_ns: (t3 - t2).as_nanos() as u64,
                            });
                        }
                    }
                    rec
                })
            })
            .collect();
        let cpu_before = process_cpu_ns();
        let t = Instant::now();
        let since_epoch = t.saturating_duration_since(epoch()).as_nanos() as u64;
        RELEASED_NS.store(since_epoch, Ordering::Relaxed);
        let _ = released.set(t);
        start.wait();
        for h in handles {
            match h.join() {
                Ok(r) => {
                    all.ops.extend_from_slice(&r.ops);
                    all.completed += r.completed;
                    all.errors += r.errors;
                    if all.first_error.is_none() {
                        all.first_error = r.first_error;
                    }
                }
                Err(_) => {
                    all.errors += 1;
                    all.first_error.get_or_insert("a worker panicked".into());
                }
            }
        }
        all.cpu_ns = process_cpu_ns().saturating_sub(cpu_before);
    });
    all
}

/// A run's result: the operations and a line about the pool's state at the end (mirrorpool).
struct Outcome {
    rec: Recorded,
    note: Option<String>,
    /// CPU time of the servers (and pgpool-II) over the whole run, build and teardown
    /// included, ns (the servers' own background work too); set by the harness.
    server_cpu_ns: u64,
}

/// CPU time (user + system) of processes `pids`, with their children, live or reaped, ns.
fn server_cpu_ns(pids: &[u32]) -> u64 {
    // Fields after the command: 0 state, 1 ppid, … 11 utime, 12 stime, 13 cutime, 14 cstime.
    let stat = |pid: &str| -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(vec![num(1), num(11) + num(12), num(13) + num(14)])
    };
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some(f) = stat(pid) else { continue };
        let own = pid.parse::<u32>().is_ok_and(|p| pids.contains(&p));
        let child = u32::try_from(f[0]).is_ok_and(|pp| pids.contains(&pp));
        if own {
            // Its own time and that of the children it reaped (PostgreSQL backends).
            ticks += f[1] + f[2];
        } else if child {
            ticks += f[1];
        }
    }
    ticks * 1_000_000_000 / tick
}

/// One database engine: its pair, and how each pool kind is opened and does one operation.
trait Engine {
    /// The pair and whatever else the engine's pools need (pgpool-II), torn down on drop.
    type Setup;
    fn name() -> &'static str;
    /// Starts the pair, creates the INSERT workload's table; returns a description.
    fn start(cfg: &Settings) -> Result<(Self::Setup, String), String>;
    /// Whether `kind` can run here (pgpool-II: PostgreSQL, if installed).
    fn supports(setup: &Self::Setup, kind: Kind) -> bool;
    /// Connections to either server, except the testkit's own (to wait for a pool's teardown).
    fn connections(setup: &Self::Setup) -> Result<i64, String>;
    /// The server processes (and pgpool-II's), for their CPU time.
    fn server_pids(setup: &Self::Setup) -> Vec<u32>;
    /// Builds `kind`, runs [`drive`] with it and drops it.
    fn run(setup: &Self::Setup, kind: Kind, ctx: &RunCtx<'_>) -> Result<Outcome, String>;
}

/// mirrorpool's state at the end of a run, one line.
fn mirrorpool_note(st: &mirrorpool::Status) -> String {
    let side =
        |s: &mirrorpool::SideStatus| {
            format!(
            "{:?} {:?}, {} open ({} idle), {} created, {} closed, {} checkouts, heartbeat rtt {}",
            s.health,
            s.role,
            s.connections,
            s.idle,
            s.created,
            s.closed,
            s.checkouts,
            s.last_rtt
                .map_or("-".to_string(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        )
        };
    format!(
        "active {:?}, switches {}; primary: {}; mirror: {}",
        st.active,
        st.switches,
        side(&st.primary),
        side(&st.mirror)
    )
}

/// r2d2's builder with its defaults (`max_size` 10, `min_idle` = `max_size`, every checkout
/// validated) or with `test_on_check_out(false)`.
fn r2d2_builder<M: r2d2::ManageConnection>(validate: bool) -> r2d2::Builder<M> {
    r2d2::Pool::builder().test_on_check_out(validate)
}

// ----- PostgreSQL -----

mod pg {
    use super::*;
    use mirrorpool::postgres::PostgresManager;
    use mirrorpool::testkit::{PgPair, PgTable};
    use postgres::{Client, NoTls};
    use r2d2_postgres::PostgresConnectionManager;

    pub struct Setup {
        // Dropped first: pgpool-II stops before its backends.
        pub pgpool: Option<pgpool::Pgpool>,
        pub pair: PgPair,
        pub table: PgTable,
    }

    pub struct Postgres;

    fn op(
        c: &mut Client,
        w: Workload,
        table: &PgTable,
        writer: i32,
        seq: i64,
    ) -> Result<(), String> {
        match w {
            Workload::Select => c.simple_query("SELECT 1").map(drop),
            Workload::Insert => table.insert(c, writer, seq),
        }
        .map_err(|e| e.to_string())
    }

    impl Engine for Postgres {
        type Setup = Setup;

        fn name() -> &'static str {
            "PostgreSQL"
        }

        fn start(cfg: &Settings) -> Result<(Setup, String), String> {
            eprintln!("starting a PostgreSQL pair (asynchronous replication)…");
            let pair = PgPair::builder()
                .start()
                .map_err(|e| format!("starting the PostgreSQL pair: {e}"))?;
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .map_err(|e| format!("waiting for the mirror: {e}"))?;
            let table = PgTable::new("thru").map_err(|e| e.to_string())?;
            pair.primary()
                .execute(&table.create_sql())
                .map_err(|e| format!("creating the table: {e}"))?;
            let version = pair
                .primary()
                .app_config()
                .connect(NoTls)
                .and_then(|mut c| c.query_one("SHOW server_version", &[]))
                .map(|r| r.get::<_, String>(0))
                .map_err(|e| format!("reading the server version: {e}"))?;
            let pgpool = if cfg.pools.iter().any(|k| k.via_pgpool()) {
                pgpool::Pgpool::start(&pair)?
            } else {
                None
            };
            let mut about = format!("PostgreSQL {version}");
            if let Some(p) = &pgpool {
                about.push_str(&format!(", {} on port {}", p.version, p.port));
            }
            Ok((
                Setup {
                    pgpool,
                    pair,
                    table,
                },
                about,
            ))
        }

        fn supports(setup: &Setup, kind: Kind) -> bool {
            // r2d2_postgres's `has_broken` makes no round trip: r2d2_nocheck is bare already.
            kind != Kind::R2d2Bare && (!kind.via_pgpool() || setup.pgpool.is_some())
        }

        fn server_pids(setup: &Setup) -> Vec<u32> {
            let mut pids: Vec<u32> = [setup.pair.primary().pid(), setup.pair.mirror().pid()]
                .into_iter()
                .flatten()
                .collect();
            pids.extend(setup.pgpool.as_ref().map(|p| p.pid()));
            pids
        }

        fn connections(setup: &Setup) -> Result<i64, String> {
            let p = setup.pair.primary().connection_count(None);
            let m = setup.pair.mirror().connection_count(None);
            Ok(p.map_err(|e| e.to_string())? + m.map_err(|e| e.to_string())?)
        }

        fn run(setup: &Setup, kind: Kind, ctx: &RunCtx<'_>) -> Result<Outcome, String> {
            let (primary, mirror) = (setup.pair.primary(), setup.pair.mirror());
            let table = &setup.table;
            if kind == Kind::Mirrorpool {
                let pool = mirrorpool::postgres::builder()
                    .build(
                        PostgresManager::new(primary.app_config(), NoTls),
                        PostgresManager::new(mirror.app_config(), NoTls),
                    )
                    .map_err(|e| format!("building mirrorpool: {e}"))?;
                let rec = drive(
                    ctx,
                    || pool.get().map_err(|e| e.to_string()),
                    |g, w, writer, seq| op(g.client_mut(), w, table, writer, seq),
                );
                let note = Some(mirrorpool_note(&pool.status()));
                return Ok(Outcome {
                    rec,
                    note,
                    server_cpu_ns: 0,
                });
            }
            let config = match (kind.via_pgpool(), &setup.pgpool) {
                (true, Some(p)) => primary.app_config_on_port(p.port),
                (true, None) => return Err("pgpool-II is not running".into()),
                (false, _) => primary.app_config(),
            };
            let validate = matches!(kind, Kind::R2d2 | Kind::Pgpool);
            let pool = r2d2_builder(validate)
                .build(PostgresConnectionManager::new(config, NoTls))
                .map_err(|e| format!("building r2d2: {e}"))?;
            let rec = drive(
                ctx,
                || pool.get().map_err(|e| e.to_string()),
                |g, w, writer, seq| op(g, w, table, writer, seq),
            );
            Ok(Outcome {
                rec,
                note: None,
                server_cpu_ns: 0,
            })
        }
    }

    /// pgpool-II in front of the pair, started from a configuration written to a temporary
    /// directory and stopped on drop (also during a panic unwind).
    pub mod pgpool {
        use mirrorpool::testkit::{PgPair, APP_PASSWORD, APP_USER};
        use std::fs;
        use std::os::unix::process::CommandExt as _;
        use std::path::PathBuf;
        use std::process::{Child, Command, Stdio};
        use std::time::{Duration, Instant};

        pub struct Pgpool {
            child: Child,
            pub port: u16,
            pub version: String,
            dir: tempfile::TempDir,
        }

        fn find_binary() -> Option<PathBuf> {
            let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default();
            dirs.extend(
                ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from),
            );
            dirs.into_iter()
                .map(|d| d.join("pgpool"))
                .find(|p| p.is_file())
        }

        fn free_port() -> Result<u16, String> {
            std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("finding a free port: {e}"))
        }

        impl Pgpool {
            /// `Ok(None)` when pgpool-II is not installed.
            pub fn start(pair: &PgPair) -> Result<Option<Pgpool>, String> {
                let Some(bin) = find_binary() else {
                    println!("pgpool-II not installed: apt-get install pgpool2");
                    return Ok(None);
                };
                let version = Command::new(&bin)
                    .arg("--version")
                    .output()
                    // It prints its version on stderr.
                    .map(|o| {
                        let mut v = String::from_utf8_lossy(&o.stdout).into_owned();
                        v.push_str(&String::from_utf8_lossy(&o.stderr));
                        v.trim().to_string()
                    })
                    .unwrap_or_default();
                let dir = tempfile::Builder::new()
                    .prefix("mirrorpool-pgpool-")
                    .tempdir()
                    .map_err(|e| format!("creating pgpool's directory: {e}"))?;
                let (port, pcp_port) = (free_port()?, free_port()?);
                let d = dir.path().display();
                // Streaming replication mode, no load balancing (every statement goes to the
                // primary, as with the other pools), no health checks (with 1 s checks, a check
                // that timed out on this loaded 2-core machine detached a backend mid-run), no
                // failover command, no watchdog, no query cache.
                let conf = format!(
                    "backend_clustering_mode = 'streaming_replication'\n\
                     listen_addresses = '127.0.0.1'\n\
                     port = {port}\n\
                     socket_dir = '{d}'\n\
                     pcp_listen_addresses = '127.0.0.1'\n\
                     pcp_port = {pcp_port}\n\
                     pcp_socket_dir = '{d}'\n\
                     backend_hostname0 = '127.0.0.1'\n\
                     backend_port0 = {p}\n\
                     backend_weight0 = 1\n\
                     backend_flag0 = 'ALLOW_TO_FAILOVER'\n\
                     backend_hostname1 = '127.0.0.1'\n\
                     backend_port1 = {m}\n\
                     backend_weight1 = 1\n\
                     backend_flag1 = 'ALLOW_TO_FAILOVER'\n\
                     enable_pool_hba = on\n\
                     pool_passwd = '{d}/pool_passwd'\n\
                     num_init_children = 32\n\
                     max_pool = 4\n\
                     connection_cache = on\n\
                     load_balance_mode = off\n\
                     sr_check_period = 0\n\
                     sr_check_user = '{APP_USER}'\n\
                     sr_check_password = '{APP_PASSWORD}'\n\
                     sr_check_database = 'postgres'\n\
                     health_check_period = 0\n\
                     failover_command = ''\n\
                     use_watchdog = off\n\
                     memory_cache_enabled = off\n\
                     log_destination = 'stderr'\n\
                     log_min_messages = warning\n\
                     pid_file_name = '{d}/pgpool.pid'\n\
                     logdir = '{d}'\n",
                    p = pair.primary().port(),
                    m = pair.mirror().port(),
                );
                // The application role authenticates to pgpool with SCRAM, and pgpool to the
                // servers with the password from pool_passwd (the servers want SCRAM too).
                let files = [
                    ("pgpool.conf", conf),
                    ("pcp.conf", String::new()),
                    (
                        "pool_hba.conf",
                        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n".into(),
                    ),
                    ("pool_passwd", format!("{APP_USER}:TEXT{APP_PASSWORD}\n")),
                ];
                for (name, text) in files {
                    fs::write(dir.path().join(name), text)
                        .map_err(|e| format!("writing {name}: {e}"))?;
                }
                let log = fs::File::create(dir.path().join("pgpool.log"))
                    .map_err(|e| format!("creating pgpool's log: {e}"))?;
                let log2 = log.try_clone().map_err(|e| e.to_string())?;
                let child = Command::new(&bin)
                    .arg("-n") // no daemon: our child
                    .arg("-D") // discard any node status file
                    .arg("-f")
                    .arg(dir.path().join("pgpool.conf"))
                    .arg("-F")
                    .arg(dir.path().join("pcp.conf"))
                    .arg("-a")
                    .arg(dir.path().join("pool_hba.conf"))
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    // Its own process group, so the guard can signal pgpool and its children.
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", bin.display()))?;
                let mut pgpool = Pgpool {
                    child,
                    port,
                    version,
                    dir,
                };
                pgpool.wait_ready(pair)?;
                Ok(Some(pgpool))
            }

            pub fn pid(&self) -> u32 {
                self.child.id()
            }

            fn log_tail(&self) -> String {
                let text =
                    fs::read_to_string(self.dir.path().join("pgpool.log")).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }

            /// Until the application role gets an answer through pgpool and pgpool reports
            /// the primary as node 0, at most 30 s.
            fn wait_ready(&mut self, pair: &PgPair) -> Result<(), String> {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut last = String::new();
                while Instant::now() < deadline {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!("pgpool-II exited ({status}):\n{}", self.log_tail()));
                    }
                    let attempt = pair
                        .primary()
                        .app_config_on_port(self.port)
                        .connect(postgres::NoTls)
                        .and_then(|mut c| c.simple_query("SHOW pool_nodes"));
                    match attempt {
                        Ok(msgs) => {
                            let rows: Vec<String> = msgs
                                .iter()
                                .filter_map(|m| match m {
                                    postgres::SimpleQueryMessage::Row(r) => Some(
                                        (0..r.len())
                                            .map(|i| r.get(i).unwrap_or(""))
                                            .collect::<Vec<_>>()
                                            .join(" | "),
                                    ),
                                    _ => None,
                                })
                                .collect();
                            if rows.iter().any(|r| r.contains("primary")) {
                                println!("pgpool-II ready, SHOW pool_nodes:");
                                for r in rows {
                                    println!("  {r}");
                                }
                                return Ok(());
                            }
                            last = format!("no primary yet: {rows:?}");
                        }
                        Err(e) => last = e.to_string(),
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(format!(
                    "pgpool-II not ready after 30 s ({last}):\n{}",
                    self.log_tail()
                ))
            }
        }

        impl Drop for Pgpool {
            fn drop(&mut self) {
                let log =
                    fs::read_to_string(self.dir.path().join("pgpool.log")).unwrap_or_default();
                if ["failover", "degenerat", "health check"]
                    .iter()
                    .any(|w| log.contains(w))
                {
                    println!(
                        "pgpool-II reported failovers; its log ends:\n{}",
                        self.log_tail()
                    );
                }
                let pgid = self.child.id() as i32;
                // Fast shutdown of pgpool and its children, then SIGKILL after 5 s.
                // SAFETY: signalling our own child's process group.
                unsafe { libc::kill(-pgid, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        // Children left over in the group, if any.
                        unsafe { libc::kill(-pgid, libc::SIGKILL) };
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = self.child.wait();
            }
        }
    }
}

// ----- MariaDB -----

mod my {
    use super::*;
    use mirrorpool::mysql::MysqlManager;
    use mirrorpool::testkit::{MyPair, MyTable};
    use mysql::prelude::Queryable;
    use mysql::{Conn, Opts, OptsBuilder};
    use r2d2_mysql::MySqlConnectionManager;

    pub struct Setup {
        pub pair: MyPair,
        pub table: MyTable,
    }

    pub struct Mariadb;

    /// `r2d2_mysql`'s manager with a `has_broken` that makes no round trip.
    struct Bare(MySqlConnectionManager);

    impl r2d2::ManageConnection for Bare {
        type Connection = Conn;
        type Error = mysql::Error;
        fn connect(&self) -> Result<Conn, mysql::Error> {
            self.0.connect()
        }
        fn is_valid(&self, conn: &mut Conn) -> Result<(), mysql::Error> {
            self.0.is_valid(conn)
        }
        fn has_broken(&self, _conn: &mut Conn) -> bool {
            false
        }
    }

    fn op(c: &mut Conn, w: Workload, table: &MyTable, writer: i32, seq: i64) -> Result<(), String> {
        match w {
            Workload::Select => c.query_drop("SELECT 1"),
            Workload::Insert => table.insert(c, writer, seq),
        }
        .map_err(|e| e.to_string())
    }

    impl Engine for Mariadb {
        type Setup = Setup;

        fn name() -> &'static str {
            "MariaDB"
        }

        fn start(_cfg: &Settings) -> Result<(Setup, String), String> {
            eprintln!("starting a MariaDB pair (asynchronous replication)…");
            let pair = MyPair::builder()
                .start()
                .map_err(|e| format!("starting the MariaDB pair: {e}"))?;
            pair.wait_for_mirror_streaming(Duration::from_secs(30))
                .map_err(|e| format!("waiting for the mirror: {e}"))?;
            let table = MyTable::new("thru").map_err(|e| e.to_string())?;
            pair.primary()
                .execute(&table.create_sql())
                .map_err(|e| format!("creating the table: {e}"))?;
            let version = pair
                .primary()
                .query_one_string("SELECT VERSION()")
                .map_err(|e| format!("reading the server version: {e}"))?
                .unwrap_or_default();
            Ok((Setup { pair, table }, format!("MariaDB {version}")))
        }

        fn supports(_setup: &Setup, kind: Kind) -> bool {
            !kind.via_pgpool()
        }

        fn server_pids(setup: &Setup) -> Vec<u32> {
            [setup.pair.primary().pid(), setup.pair.mirror().pid()]
                .into_iter()
                .flatten()
                .collect()
        }

        fn connections(setup: &Setup) -> Result<i64, String> {
            let p = setup.pair.primary().connection_count(None);
            let m = setup.pair.mirror().connection_count(None);
            Ok(p.map_err(|e| e.to_string())? + m.map_err(|e| e.to_string())?)
        }

        fn run(setup: &Setup, kind: Kind, ctx: &RunCtx<'_>) -> Result<Outcome, String> {
            let (primary, mirror) = (setup.pair.primary(), setup.pair.mirror());
            let table = &setup.table;
            if kind == Kind::Mirrorpool {
                let manager = |url: String| {
                    MysqlManager::from_url(&url).map_err(|e| format!("a testkit URL: {e}"))
                };
                let pool = mirrorpool::mysql::builder()
                    .build(manager(primary.app_url())?, manager(mirror.app_url())?)
                    .map_err(|e| format!("building mirrorpool: {e}"))?;
                let rec = drive(
                    ctx,
                    || pool.get().map_err(|e| e.to_string()),
                    |g, w, writer, seq| op(g.conn_mut(), w, table, writer, seq),
                );
                let note = Some(mirrorpool_note(&pool.status()));
                return Ok(Outcome {
                    rec,
                    note,
                    server_cpu_ns: 0,
                });
            }
            let opts = Opts::from_url(&primary.app_url()).map_err(|e| e.to_string())?;
            if kind == Kind::R2d2Bare {
                let pool = r2d2_builder(false)
                    .build(Bare(MySqlConnectionManager::new(OptsBuilder::from_opts(
                        opts,
                    ))))
                    .map_err(|e| format!("building r2d2: {e}"))?;
                let rec = drive(
                    ctx,
                    || pool.get().map_err(|e| e.to_string()),
                    |g, w, writer, seq| op(g, w, table, writer, seq),
                );
                return Ok(Outcome {
                    rec,
                    note: None,
                    server_cpu_ns: 0,
                });
            }
            let pool = r2d2_builder(kind == Kind::R2d2)
                .build(MySqlConnectionManager::new(OptsBuilder::from_opts(opts)))
                .map_err(|e| format!("building r2d2: {e}"))?;
            let rec = drive(
                ctx,
                || pool.get().map_err(|e| e.to_string()),
                |g, w, writer, seq| op(g, w, table, writer, seq),
            );
            Ok(Outcome {
                rec,
                note: None,
                server_cpu_ns: 0,
            })
        }
    }
}

// ----- statistics and report -----

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    ops_per_s: f64,
    /// Latencies of checkout + statement + return, µs.
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// Counted operations over 20 ms.
    over_20ms: usize,
    errors: u64,
    /// Client CPU per completed operation, µs (see [`Recorded::cpu_ns`]).
    cpu_us_per_op: f64,
    /// Server-side CPU per completed operation, µs (see [`Outcome::server_cpu_ns`]).
    server_us_per_op: f64,
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

fn fmt_us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else if v >= 1_000.0 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
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

fn min_max(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Prints one run's line (and its slowest operations) and returns its statistics.
fn report_run(kind: Kind, round: usize, out: &Outcome, cfg: &Settings) -> Stats {
    let warm_ns = cfg.warmup.as_nanos() as u64;
    let counted: Vec<&Op> = out
        .rec
        .ops
        .iter()
        .filter(|o| o.start_ns >= warm_ns)
        .collect();
    let mut totals: Vec<u64> = counted.iter().map(|o| o.total_ns()).collect();
    totals.sort_unstable();
    let s = Stats {
        ops_per_s: totals.len() as f64 / cfg.secs as f64,
        p50: us(pct(&totals, 0.50)),
        p99: us(pct(&totals, 0.99)),
        p999: us(pct(&totals, 0.999)),
        max: us(totals.last().copied().unwrap_or(0)),
        over_20ms: totals.iter().filter(|t| **t > 20_000_000).count(),
        errors: out.rec.errors,
        cpu_us_per_op: out.rec.cpu_ns as f64 / 1e3 / out.rec.completed.max(1) as f64,
        server_us_per_op: out.server_cpu_ns as f64 / 1e3 / out.rec.completed.max(1) as f64,
    };
    println!(
        "  round {} {:<15} {:>8.0} ops/s  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  max {:>8}  >20ms {:>3}  errors {}  CPU µs/op client {:.1} server {:.1}  (load {})",
        round + 1,
        kind.name(),
        s.ops_per_s,
        fmt_us(s.p50),
        fmt_us(s.p99),
        fmt_us(s.p999),
        fmt_us(s.max),
        s.over_20ms,
        s.errors,
        s.cpu_us_per_op,
        s.server_us_per_op,
        load_average()
    );
    if let Some(e) = &out.rec.first_error {
        println!("      first error: {e}");
    }
    if let Some(n) = &out.note {
        println!("      {n}");
    }
    // When the slow operations happened, warm-up included: per second since the release.
    let secs = (cfg.warmup + Duration::from_secs(cfg.secs)).as_secs() as usize + 1;
    let mut per_sec = vec![0usize; secs];
    for o in out.rec.ops.iter().filter(|o| o.total_ns() > 20_000_000) {
        per_sec[((o.start_ns / 1_000_000_000) as usize).min(secs - 1)] += 1;
    }
    if per_sec.iter().any(|n| *n > 0) {
        println!("      ops > 20 ms per second since the threads started: {per_sec:?}");
    }
    let mut slow = counted;
    slow.sort_unstable_by_key(|o| std::cmp::Reverse(o.total_ns()));
    for o in slow.iter().take(cfg.slowest) {
        println!(
            "      slow: +{:>8.1} ms  {:>8} = checkout {:>8} + statement {:>8} + return {:>8}",
            o.start_ns as f64 / 1e6,
            fmt_us(us(o.total_ns())),
            fmt_us(us(o.wait_ns)),
            fmt_us(us(o.stmt_ns)),
            fmt_us(us(o.ret_ns))
        );
    }
    let _ = std::io::stdout().flush();
    s
}

/// The Markdown tables of one engine and workload: each pool's medians over the rounds, and
/// mirrorpool's per-round ratios to every other pool.
fn summary(
    engine: &str,
    about: &str,
    workload: Workload,
    results: &[(Kind, usize, Stats)],
    cfg: &Settings,
) {
    let kinds: Vec<Kind> = cfg
        .pools
        .iter()
        .copied()
        .filter(|k| results.iter().any(|(r, _, _)| r == k))
        .collect();
    println!(
        "\n### {engine} · checkout + {} + return · {THREADS} threads · {} rounds × {} s (after {} ms warm-up) · {about}\n",
        workload.name(),
        cfg.rounds,
        cfg.secs,
        cfg.warmup.as_millis()
    );
    println!("Median over the rounds (min–max):\n");
    println!(
        "| pool | ops/s | p50 | p99 | p99.9 | max | max per round | ops > 20 ms per round | errors | CPU µs/op: client | server |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|");
    for kind in &kinds {
        let runs: Vec<Stats> = results
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, _, s)| *s)
            .collect();
        let col = |f: fn(&Stats) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let tput = col(|s| s.ops_per_s);
        let (lo, hi) = min_max(&tput);
        let maxes: Vec<String> = runs.iter().map(|s| fmt_us(s.max)).collect();
        println!(
            "| {} | {:.0} ({lo:.0}–{hi:.0}) | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            kind.name(),
            median(tput.clone()),
            fmt_us(median(col(|s| s.p50))),
            fmt_us(median(col(|s| s.p99))),
            fmt_us(median(col(|s| s.p999))),
            fmt_us(median(col(|s| s.max))),
            maxes.join(", "),
            runs.iter()
                .map(|s| s.over_20ms.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            runs.iter().map(|s| s.errors).sum::<u64>(),
            median(col(|s| s.cpu_us_per_op)),
            median(col(|s| s.server_us_per_op))
        );
    }
    if !kinds.contains(&Kind::Mirrorpool) {
        return;
    }
    println!("\nmirrorpool ÷ each pool, median of the per-round ratios (min–max):\n");
    println!("| vs | throughput | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for other in kinds.iter().filter(|k| **k != Kind::Mirrorpool) {
        let ratios = |f: fn(&Stats) -> f64| -> String {
            let v: Vec<f64> = (0..cfg.rounds)
                .filter_map(|round| {
                    let get = |k: Kind| {
                        results
                            .iter()
                            .find(|(rk, rr, _)| *rk == k && *rr == round)
                            .map(|(_, _, s)| f(s))
                    };
                    match (get(Kind::Mirrorpool), get(*other)) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    }
                })
                .collect();
            let (lo, hi) = min_max(&v);
            format!("{:.2} ({lo:.2}–{hi:.2})", median(v))
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            other.name(),
            ratios(|s| s.ops_per_s),
            ratios(|s| s.p50),
            ratios(|s| s.p99),
            ratios(|s| s.max)
        );
    }
    let _ = std::io::stdout().flush();
}

/// Waits (at most 10 s) until the previous pool's connections are gone: none left, or the
/// count steady for 0.5 s (pgpool-II keeps its cached backend connections).
fn settle<E: Engine>(setup: &E::Setup) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut steady) = (-1, 0);
    while Instant::now() < deadline {
        match E::connections(setup) {
            Ok(0) => break,
            Ok(n) if n == last => {
                steady += 1;
                if steady >= 10 {
                    break;
                }
            }
            Ok(n) => (last, steady) = (n, 0),
            Err(e) => {
                eprintln!("could not count connections: {e}");
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
}

fn bench_engine<E: Engine>(cfg: &Settings, writer_base: &mut i32) -> Result<(), String> {
    // Dropped at the end of this function, also on an error or a panic: servers stop.
    let (setup, about) = E::start(cfg)?;
    let kinds: Vec<Kind> = cfg
        .pools
        .iter()
        .copied()
        .filter(|k| E::supports(&setup, *k))
        .collect();
    println!(
        "\n{} pools {:?} · {about}",
        E::name(),
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>()
    );
    for &workload in &cfg.workloads {
        println!(
            "\n== {} · {} · load average {} ==",
            E::name(),
            workload.name(),
            load_average()
        );
        let mut results = Vec::new();
        for round in 0..cfg.rounds {
            let n = kinds.len();
            for i in 0..n {
                // Rotate the order each round, so no pool always runs first.
                let kind = kinds[(i + round) % n];
                settle::<E>(&setup);
                let ctx = RunCtx {
                    cfg,
                    workload,
                    writer_base: *writer_base,
                };
                *writer_base += THREADS as i32;
                // Until the threads are released, the log is stamped from the build's start.
                let since_epoch = Instant::now().saturating_duration_since(epoch()).as_nanos();
                RELEASED_NS.store(since_epoch as u64, Ordering::Relaxed);
                let pids = E::server_pids(&setup);
                let cpu_before = server_cpu_ns(&pids);
                match E::run(&setup, kind, &ctx) {
                    Ok(mut out) => {
                        // After this pool's backends have exited (and been reaped, adding
                        // their time to their parent's).
                        settle::<E>(&setup);
                        out.server_cpu_ns = server_cpu_ns(&pids).saturating_sub(cpu_before);
                        results.push((kind, round, report_run(kind, round, &out, cfg)));
                    }
                    // Counted as missing; the other pools go on.
                    Err(e) => println!("  round {} {:<15} FAILED: {e}", round + 1, kind.name()),
                }
            }
        }
        summary(E::name(), &about, workload, &results, cfg);
        println!("\nload average after: {}", load_average());
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let cfg = settings()?;
    println!(
        "steady throughput: {THREADS} threads, {} s after a {} ms warm-up, {} rounds, engines {:?}, load average {}",
        cfg.secs,
        cfg.warmup.as_millis(),
        cfg.rounds,
        cfg.engines,
        load_average()
    );
    let mut writer_base = 0;
    for engine in &cfg.engines {
        match *engine {
            "postgres" => bench_engine::<pg::Postgres>(&cfg, &mut writer_base)?,
            _ => bench_engine::<my::Mariadb>(&cfg, &mut writer_base)?,
        }
    }
    println!(
        "\npools (all max_size 10, the application role with no extra grant):\n\
         \x20 mirrorpool: the crate's builder() defaults (min_idle 2, validation only after 500 ms idle), build() — primary + mirror\n\
         \x20 r2d2: r2d2 0.8 defaults (min_idle = max_size, validates every checkout) with r2d2_postgres / r2d2_mysql\n\
         \x20 r2d2_nocheck: the same with test_on_check_out(false)\n\
         \x20 pgpool / pgpool_nocheck: r2d2 / r2d2_nocheck + r2d2_postgres through pgpool-II (streaming replication, load_balance_mode off)\n\
         \x20 r2d2_bare (opt-in, MariaDB): r2d2_nocheck with a has_broken that does not ping\n\
         CPU µs/op: this process's CPU (pool threads included) and the servers' (+ pgpool-II's) per completed operation, warm-up included"
    );
    Ok(())
}

fn main() {
    init_log();
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    if let Err(e) = run() {
        eprintln!("throughput benchmark failed: {e}");
        std::process::exit(1);
    }
}
