//! The failover demo: mirrorpool keeps a service writing while its primary database fails.
//!
//! It starts its own primary + mirror pair (PostgreSQL, or MariaDB with `--mysql`) through the
//! testkit, runs writers and readers through a `MirrorPool` connected as a least-privilege
//! application role, injects a fault into the primary (`--fault kill|hang|cut|restart`) and
//! shows what the pool did: its log lines, a timeline, a picture of the acknowledged writes
//! around the fault, the errors callers saw, and whether every acknowledged write is on the new
//! primary.
//!
//! ```sh
//! cargo run --release --example failover_demo --all-features -- --help
//! ```
//!
//! Layout: `args.rs` (flags), `engine.rs` (what differs between PostgreSQL and MariaDB),
//! `workload.rs` (readers beside the testkit's writers), `ui.rs` (progress line and logger),
//! `picture.rs` (the writes-per-bucket picture), `report.rs` (everything printed at the end).
//! This file is the flow: set up, warm up, inject, watch, tear down, report.

mod args;
mod engine;
mod picture;
mod report;
mod ui;
mod workload;

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use mirrorpool::event::Event;
use mirrorpool::testkit::{EventLog, Grants, Load, ProxyMode, TcpProxy};
use mirrorpool::{Role, Side, Status};

use crate::args::{Args, Command, EngineKind, Fault};
use crate::engine::{DemoResult, Engine, Mariadb, Postgres, Server};
use crate::report::{Outcome, Run};
use crate::ui::Ui;
use crate::workload::{Counts, Readers};

/// Writes before the fault: long enough to see the steady state (and fill the picture's
/// half second before the fault).
const WARM_UP: Duration = Duration::from_secs(3);
/// When `--fault restart` starts the old primary again, after the fault.
const RESTART_AFTER: Duration = Duration::from_millis(1500);
/// With `--fault restart`, how long to watch at least after the restart.
const WATCH_AFTER_RESTART: Duration = Duration::from_secs(2);
/// After the first write on the mirror, how long to keep going (the picture's tail).
const TAIL: Duration = Duration::from_secs(1);
/// The longest the demo waits after the fault for writers to reach the mirror.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// How often the main loop updates the progress line and checks for Ctrl-C.
const TICK: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            // `--help | head` closes the pipe early: not worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("failover_demo: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let ui = Ui::install(start);

    // Ctrl-C only raises a flag: the main flow stops at its next check and returns normally,
    // so the pair's Drop tears the servers down (dying on the signal would leave them running).
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        ui.say(format!(
            "warning: cannot catch Ctrl-C ({e}); interrupting may leave servers running"
        ));
    }

    if let Some(addr) = args.metrics_addr {
        if let Err(e) = serve_metrics(addr) {
            ui.finish();
            eprintln!("failover_demo: cannot serve metrics on {addr}: {e}");
            return ExitCode::FAILURE;
        }
        ui.say(format!(
            "metrics: curl http://{addr}/metrics   (while the demo runs)"
        ));
    }

    let result = match args.engine {
        EngineKind::Postgres => run::<Postgres>(&args, &ui, &interrupted),
        EngineKind::Mariadb => run::<Mariadb>(&args, &ui, &interrupted),
    };
    ui.finish();
    // A terminal's Ctrl-C reaches the servers and their tools too (one process group), so a
    // step may fail because of it: that is an interruption, not an error.
    let result = match result {
        Err(_) if interrupted.load(Ordering::SeqCst) => Ok(Outcome::Interrupted),
        other => other,
    };
    match result {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => {
            println!("interrupted: the pair was torn down");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("failover_demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the Prometheus exporter with its HTTP listener (its own thread and runtime).
fn serve_metrics(addr: SocketAddr) -> DemoResult<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    Ok(())
}

/// The whole demo on one engine. Every wait is bounded and checks `interrupted`; every early
/// return drops the pair, which stops its servers.
fn run<E: Engine>(args: &Args, ui: &Ui, interrupted: &AtomicBool) -> DemoResult<Outcome> {
    let stopped = || interrupted.load(Ordering::SeqCst);
    ui.status(format!("starting a {} primary + mirror ...", E::NAME));
    let began = Instant::now();
    // The application role gets exactly what promote_on_failover needs: seeing replication
    // (to confirm the mirror lost the primary too) and promoting.
    let db = E::start(args.synchronous, Grants::all())?;
    ui.event(format!(
        "{} pair ready in {:.1} s: primary on :{}, mirror on :{}",
        E::NAME,
        began.elapsed().as_secs_f64(),
        db.primary_port(),
        db.mirror_port(),
    ));
    ui.event(format!("  {}", E::replication(args.synchronous)));
    ui.event(format!("  in {} (removed at exit)", db.dir().display()));
    if stopped() {
        return Ok(Outcome::Interrupted);
    }

    // For the black hole, the pool's traffic to the primary AND the mirror's replication go
    // through proxies: the mirror then loses the primary too, which is what allows promotion.
    let proxies = match args.fault {
        Fault::Cut => Some(Proxies::start::<E>(&db, ui)?),
        _ => None,
    };
    let primary_port = proxies.as_ref().map_or(db.primary_port(), |p| p.app.port());

    let events = EventLog::new().keep(|e| !matches!(e, Event::HeartbeatFailure(_)));
    let (primary, mirror) = db.managers(primary_port)?;
    let pool = E::builder()
        .name("demo")
        .max_size(u32::try_from(args.threads + 2).unwrap_or(u32::MAX))
        .promote_on_failover(true)
        .event_handler(Box::new(events.clone()))
        // Waits for the first heartbeats and checks the setup (roles, replication, grants).
        .build_checked(primary, mirror)?;
    ui.event(format!(
        "pool \"demo\" as role {:?} (sees replication, may promote)",
        mirrorpool::testkit::APP_USER
    ));

    let bound = WARM_UP + args.duration + WATCH_AFTER_RESTART + Duration::from_secs(60);
    let load = Load::builder()
        .writers(args.threads)
        .max_duration(bound)
        .start(&pool, db.table())?;
    let readers = Readers::start::<E>(&pool, bound)?;
    ui.event(format!(
        "{} writers: get() + INSERT; 2 readers: get(), get_from(Side::Mirror)",
        args.threads
    ));

    // Declared after the load, so on an early return it is released (server resumed, proxies
    // opened) before anything else is dropped.
    let mut injector = Injector {
        fault: args.fault,
        primary: db.primary(),
        proxies: proxies.as_ref(),
        paused: false,
    };
    let warm_until = Instant::now() + WARM_UP;
    let mut fault_at: Option<Instant> = None;
    let mut restarted_at: Option<Instant> = None;
    // When the mirror was first seen acknowledging writes after the fault.
    let mut mirror_since: Option<Instant> = None;
    let mut progress = Progress::default();
    loop {
        thread::sleep(TICK);
        if stopped() {
            break;
        }
        let now = Instant::now();
        ui.status(progress.line(&load, &readers, &pool.status(), began, fault_at));
        let Some(t) = fault_at else {
            if now >= warm_until {
                ui.event(format!(
                    "---- fault: {} ({} writes so far)",
                    args.fault.describe(),
                    load.acked()
                ));
                fault_at = Some(Instant::now());
                injector.inject()?;
            }
            continue;
        };
        if mirror_since.is_none() && load.acked_since(Side::Mirror, t) > 0 {
            mirror_since = Some(now);
        }
        if args.fault == Fault::Restart && restarted_at.is_none() && now >= t + RESTART_AFTER {
            ui.event("---- restarting the old primary");
            restarted_at = Some(Instant::now());
            db.primary().start()?;
            ui.event("---- the old primary accepts connections again");
        }
        // At least --duration; and the picture wants the first writes on the mirror with a
        // tail after them, unless they never come.
        let tail_seen = mirror_since.is_some_and(|m| now >= m + TAIL);
        if now >= t + watch_time(args) && (tail_seen || now >= t + GIVE_UP_AFTER) {
            break;
        }
    }
    let status = pool.status();
    // Statements stuck on a hung or black-holed primary return only once it is released.
    injector.release();
    ui.status("stopping the writers ...".into());
    let ledger = load.stop();
    let reads = readers.stop();
    ui.finish();
    if stopped() {
        return Ok(Outcome::Interrupted);
    }
    let fault_at = fault_at.ok_or("the run ended before the fault")?;
    let rows = db.rows_on_mirror()?;
    let run = Run {
        engine: E::NAME,
        args,
        fault_at,
        restarted_at,
        events: events.events(),
        ledger,
        reads: &reads,
        rows,
        status,
    };
    Ok(report::print(&run))
}

/// How long to keep going after the fault.
fn watch_time(args: &Args) -> Duration {
    match args.fault {
        Fault::Restart => args.duration.max(RESTART_AFTER + WATCH_AFTER_RESTART),
        _ => args.duration,
    }
}

/// The black hole's plumbing: a proxy for the application and one for the replication.
struct Proxies {
    app: TcpProxy,
    repl: TcpProxy,
}

impl Proxies {
    fn start<E: Engine>(db: &E, ui: &Ui) -> DemoResult<Proxies> {
        let target = SocketAddr::from(([127, 0, 0, 1], db.primary_port()));
        let proxies = Proxies {
            app: TcpProxy::start(target)?,
            repl: TcpProxy::start(target)?,
        };
        db.replicate_through(&proxies.repl)?;
        ui.event(format!(
            "proxies to the primary: :{} for the pool, :{} for replication",
            proxies.app.port(),
            proxies.repl.port()
        ));
        Ok(proxies)
    }
}

/// The fault in force, and how to undo it.
struct Injector<'a> {
    fault: Fault,
    primary: &'a dyn Server,
    proxies: Option<&'a Proxies>,
    paused: bool,
}

impl Injector<'_> {
    fn inject(&mut self) -> DemoResult<()> {
        match self.fault {
            Fault::Kill => self.primary.kill()?,
            Fault::Hang => {
                self.primary.pause()?;
                self.paused = true;
            }
            Fault::Cut => {
                let p = self.proxies.ok_or("the black hole needs its proxies")?;
                p.app.set_mode(ProxyMode::BlackHole);
                p.repl.set_mode(ProxyMode::BlackHole);
            }
            Fault::Restart => self.primary.stop_immediate()?,
        }
        Ok(())
    }

    /// Resumes a hung primary; turns a black hole into refused connections (the old primary
    /// stays unreachable, but nothing waits on it any more). Idempotent.
    fn release(&mut self) {
        if self.paused {
            self.paused = false;
            if let Err(e) = self.primary.resume() {
                log::warn!("resuming the primary: {e}");
            }
        }
        if let Some(p) = self.proxies {
            p.app.set_mode(ProxyMode::Drop);
            p.repl.set_mode(ProxyMode::Drop);
        }
    }
}

impl Drop for Injector<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The progress line: rates over the last second.
#[derive(Default)]
struct Progress {
    history: VecDeque<(Instant, Counts)>,
}

impl Progress {
    fn line(
        &mut self,
        load: &Load,
        readers: &Readers,
        status: &Status,
        began: Instant,
        fault_at: Option<Instant>,
    ) -> String {
        let now = Instant::now();
        let counts = Counts::now(load, readers);
        self.history.push_back((now, counts));
        while self.history.len() > 2 && now - self.history[0].0 > Duration::from_secs(1) {
            self.history.pop_front();
        }
        let (then, old) = self.history[0];
        let secs = (now - then).as_secs_f64().max(1e-3);
        let rate = (counts.ops - old.ops) as f64 / secs;
        let clock = match fault_at {
            None => format!("t {:>4.1}s", (now - began).as_secs_f64()),
            Some(f) => format!(
                "t {:>4.1}s (fault +{:.1}s)",
                (now - began).as_secs_f64(),
                (now - f).as_secs_f64()
            ),
        };
        let writers = match &status.blocked {
            None => status.active.to_string(),
            Some(_) => format!("{} (waiting)", status.active),
        };
        format!(
            "{clock}  {rate:>6.0} ops/s  {} errors  writers: {writers}  lag: {}",
            counts.errors,
            lag_text(status)
        )
    }
}

/// The mirror's replication lag while it is a replica, from the pool's heartbeats.
fn lag_text(status: &Status) -> String {
    if status.mirror.role != Role::ReadOnly {
        return "-".into();
    }
    let Some(r) = status.side(Side::Mirror).replication else {
        return "?".into();
    };
    let mut parts = Vec::new();
    if let Some(b) = r.lag_bytes {
        parts.push(if b < 10_000 {
            format!("{b} B")
        } else {
            format!("{} kB", b / 1000)
        });
    }
    if let Some(n) = r.lag_transactions {
        parts.push(format!("{n} trx"));
    }
    if let Some(t) = r.lag_time {
        parts.push(format!("{} ms", t.as_millis()));
    }
    if parts.is_empty() {
        "?".into()
    } else {
        parts.join(" / ")
    }
}
