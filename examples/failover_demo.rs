//! The failover demo: starts its own PostgreSQL primary + synchronous mirror (testkit), runs
//! eight writer threads through a `MirrorPool`, SIGKILLs the primary, and shows the pool
//! promoting the mirror and carrying on; then restarts the old primary and shows it fenced.
//!
//! Run: `cargo run --release --example failover_demo --features testkit`
//! (`RUST_LOG=mirrorpool=info` shows the pool's own log lines.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::postgres::{PostgresManager, PostgresPool};
use mirrorpool::testkit::PgPair;
use mirrorpool::{HandleEvent, PooledConnection, Side};
use postgres::NoTls;

/// Prints every pool event with the time since the start of the demo.
#[derive(Debug)]
struct Timeline(Instant);

impl Timeline {
    fn say(&self, what: String) {
        println!(
            "{:>8.1} ms  event: {what}",
            self.0.elapsed().as_secs_f64() * 1e3
        );
    }
}

impl HandleEvent for Timeline {
    fn handle_side_down(&self, e: mirrorpool::event::SideDownEvent) {
        self.say(format!(
            "{} DOWN after {} failed heartbeats",
            e.side(),
            e.failures()
        ));
    }
    fn handle_side_up(&self, e: mirrorpool::event::SideUpEvent) {
        self.say(format!("{} up", e.side()));
    }
    fn handle_switch(&self, e: mirrorpool::event::SwitchEvent) {
        self.say(format!("SWITCH {} -> {}: {}", e.from(), e.to(), e.reason()));
    }
    fn handle_promotion(&self, e: mirrorpool::event::PromotionEvent) {
        match e.error() {
            None => self.say(format!("{} promoted in {:?}", e.side(), e.duration())),
            Some(err) => self.say(format!("promotion failed: {}", err.chain())),
        }
    }
    fn handle_drain(&self, e: mirrorpool::event::DrainEvent) {
        self.say(format!(
            "{} drained ({} stale connections closed)",
            e.side(),
            e.closed()
        ));
    }
    fn handle_switch_refused(&self, e: mirrorpool::event::SwitchRefusedEvent) {
        self.say(format!("switch to {} refused: {}", e.to(), e.reason()));
    }
    fn handle_split_brain(&self, e: mirrorpool::event::SplitBrainEvent) {
        self.say(format!(
            "SPLIT BRAIN: writers stay on the {}, the {} is fenced",
            e.writer(),
            e.fenced()
        ));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let t0 = Instant::now();
    println!("starting a PostgreSQL primary + synchronous mirror ...");
    let pair = PgPair::builder().synchronous(true).start()?;
    pair.primary()
        .execute("CREATE TABLE demo (writer int, seq bigint, PRIMARY KEY (writer, seq))")?;
    pair.wait_for_mirror_streaming(Duration::from_secs(30))?;
    println!(
        "primary on 127.0.0.1:{}, mirror on 127.0.0.1:{} (ready in {:?})",
        pair.primary().port(),
        pair.mirror().port(),
        t0.elapsed()
    );

    let start = Instant::now();
    let pool: PostgresPool = mirrorpool::postgres::builder()
        .max_size(8)
        .promote_on_failover(true)
        .event_handler(Box::new(Timeline(start)))
        .build(
            PostgresManager::new(pair.primary().app_config(), NoTls),
            PostgresManager::new(pair.mirror().app_config(), NoTls),
        )?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(i32, i64, Side, Instant)>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let get_failed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (pool, stop, acked, failed, get_failed) = (
                pool.clone(),
                stop.clone(),
                acked.clone(),
                failed.clone(),
                get_failed.clone(),
            );
            thread::spawn(move || {
                let mut seq = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = match pool.get() {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("get() failed: {e}");
                            get_failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    seq += 1;
                    let side = PooledConnection::side(&conn);
                    match conn.execute("INSERT INTO demo VALUES ($1, $2)", &[&w, &seq]) {
                        Ok(_) => acked.lock().unwrap().push((w, seq, side, Instant::now())),
                        Err(e) => {
                            PooledConnection::report(&mut conn, &e);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(2));
    let before = acked.lock().unwrap().len();
    println!(
        "{:>8.1} ms  {before} writes acknowledged by the primary; SIGKILL the primary now",
        start.elapsed().as_secs_f64() * 1e3
    );
    let killed = Instant::now();
    pair.primary().kill()?;
    thread::sleep(Duration::from_secs(3));

    let first_on_mirror = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.2 == Side::Mirror)
        .map(|a| a.3)
        .min();
    match first_on_mirror {
        Some(t) => println!(
            "           first write acknowledged by the promoted mirror {:.1} ms after the kill",
            (t - killed).as_secs_f64() * 1e3
        ),
        None => println!("           no write reached the mirror yet"),
    }

    println!("restarting the old primary (it comes back writable, on the old timeline) ...");
    pair.primary().start()?;
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }

    let acked = acked.lock().unwrap();
    let mut check = pair.mirror().config().connect(NoTls)?;
    let rows: HashSet<(i32, i64)> = check
        .query("SELECT writer, seq FROM demo", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let lost = acked.iter().filter(|a| !rows.contains(&(a.0, a.1))).count();
    let status = pool.status();
    println!();
    println!("acknowledged writes:  {}", acked.len());
    println!(
        "failed statements:    {} (in flight at the kill; never retried)",
        failed.load(Ordering::Relaxed)
    );
    println!(
        "failed get() calls:   {}",
        get_failed.load(Ordering::Relaxed)
    );
    println!("acknowledged but missing on the new primary: {lost}");
    println!(
        "status: active={} switches={} split_brain={} fenced={:?}",
        status.active, status.switches, status.split_brain, status.fenced
    );
    println!(
        "        primary: {} {} epoch {:?}; mirror: {} {} epoch {:?}",
        status.primary.health,
        status.primary.role,
        status.primary.epoch,
        status.mirror.health,
        status.mirror.role,
        status.mirror.epoch
    );
    drop(pool);
    println!("done in {:?}; the pair is torn down on exit", t0.elapsed());
    if lost > 0 || status.active != Side::Mirror {
        return Err("the demo did not fail over cleanly".into());
    }
    Ok(())
}
