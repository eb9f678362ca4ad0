//! The failover demo: starts its own PostgreSQL primary + synchronous mirror (testkit), runs
//! eight writer threads through a `MirrorPool`, SIGKILLs the primary, and shows the pool
//! promoting the mirror and carrying on; then restarts the old primary and shows it fenced.
//!
//! Run: `cargo run --release --example failover_demo --features testkit`
//! (`RUST_LOG=mirrorpool=info` shows the pool's own log lines.)

use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::event::Event;
use mirrorpool::postgres::{PostgresManager, PostgresPool};
use mirrorpool::testkit::{EventLog, Grants, Load, PgPair, PgTable};
use mirrorpool::Side;
use postgres::NoTls;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let t0 = Instant::now();
    println!("starting a PostgreSQL primary + synchronous mirror ...");
    // The application role may promote (and see replication, which confirming the primary's
    // failure before promoting needs).
    let pair = PgPair::builder()
        .synchronous(true)
        .app_grants(Grants::all())
        .start()?;
    let table = PgTable::new("demo")?;
    pair.primary().execute(&table.create_sql())?;
    pair.wait_for_mirror_streaming(Duration::from_secs(30))?;
    println!(
        "primary on 127.0.0.1:{}, mirror on 127.0.0.1:{} (ready in {:?})",
        pair.primary().port(),
        pair.mirror().port(),
        t0.elapsed()
    );

    let start = Instant::now();
    // Prints every pool event with the time since the start of the demo, but the heartbeat
    // failures that repeat while a side is down.
    let events = EventLog::new()
        .keep(|e| !matches!(e, Event::HeartbeatFailure(_)))
        .echo_since(start);
    let pool: PostgresPool = mirrorpool::postgres::builder()
        .max_size(8)
        .promote_on_failover(true)
        .event_handler(Box::new(events))
        .build(
            PostgresManager::new(pair.primary().app_config(), NoTls),
            PostgresManager::new(pair.mirror().app_config(), NoTls),
        )?;

    // Eight writers, each inserting (writer, seq) rows as fast as the pool serves them.
    let load = Load::builder().writers(8).start(&pool, table.clone())?;

    thread::sleep(Duration::from_secs(2));
    println!(
        "{:>8.1} ms  {} writes acknowledged by the primary; SIGKILL the primary now",
        start.elapsed().as_secs_f64() * 1e3,
        load.acked()
    );
    let killed = Instant::now();
    pair.primary().kill()?;
    thread::sleep(Duration::from_secs(3));

    match load.ledger().first_ack_on(Side::Mirror, killed) {
        Some(t) => println!(
            "           first write acknowledged by the promoted mirror {:.1} ms after the kill",
            (t - killed).as_secs_f64() * 1e3
        ),
        None => println!("           no write reached the mirror yet"),
    }

    println!("restarting the old primary (it comes back writable, on the old timeline) ...");
    pair.primary().start()?;
    thread::sleep(Duration::from_secs(2));
    let ledger = load.stop();

    let mut check = pair.mirror().config().connect(NoTls)?;
    let rows = table.rows(&mut check)?;
    let lost = ledger.lost_against(&rows).len();
    let status = pool.status();
    println!();
    println!("acknowledged writes:  {}", ledger.acked.len());
    println!(
        "failed statements:    {} (in flight at the kill; never retried)",
        ledger.failed.len()
    );
    println!("failed get() calls:   {}", ledger.get_errors.len());
    for failed in &ledger.get_errors {
        println!("    {}", failed.error);
    }
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
