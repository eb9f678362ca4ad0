//! Failover against real PostgreSQL primary + mirror pairs started by the testkit, with writer
//! load running during every fault.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod common;

use common::wait_until;
use common::SilentServer;
use mirrorpool::backend::{Access, Backend, Fault, Observation, Upstream};
use mirrorpool::event::SwitchReason;
use mirrorpool::postgres::{PostgresBackend, PostgresManager, PostgresPool};
use mirrorpool::testkit::{Grants, PgPair, ProxyMode, TcpProxy, APP_PASSWORD, APP_USER};
use mirrorpool::{
    Blocked, Builder, GetError, Health, Lag, ManageConnection, PooledConnection, Refusal, Role,
    Side,
};
use postgres::NoTls;

const LONG: Duration = Duration::from_secs(30);

/// A pair with a table for writers, used by the least-privilege application role with exactly
/// `grants` (promotion tests: `Grants::all()`, since promoting needs EXECUTE on pg_promote and
/// confirming the primary's failure needs pg_monitor). Fails with the testkit's message
/// (naming the packages to install) if PostgreSQL is missing.
fn pair(synchronous: bool, grants: Grants) -> PgPair {
    let pair = PgPair::builder()
        .synchronous(synchronous)
        .app_grants(grants)
        .start()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL pair: {e}"));
    pair.primary()
        .execute(
            "CREATE TABLE t (writer int NOT NULL, seq bigint NOT NULL, PRIMARY KEY (writer, seq))",
        )
        .expect("create table");
    pair.wait_for_mirror_streaming(LONG)
        .expect("mirror streams");
    pair
}

fn builder() -> Builder<PostgresManager<NoTls>> {
    mirrorpool::postgres::builder()
        .max_size(8)
        .min_idle(2)
        .mirror_min_idle(2)
        .connection_timeout(Duration::from_secs(20))
        .min_switch_interval(Duration::from_millis(500))
}

fn pool_on(pair: &PgPair, primary_port: u16, b: Builder<PostgresManager<NoTls>>) -> PostgresPool {
    b.build(
        PostgresManager::new(pair.primary().app_config_on_port(primary_port), NoTls),
        PostgresManager::new(pair.mirror().app_config(), NoTls),
    )
    .expect("valid configuration")
}

fn pool(pair: &PgPair, b: Builder<PostgresManager<NoTls>>) -> PostgresPool {
    pool_on(pair, pair.primary().port(), b)
}

fn both_up(pool: &PostgresPool) {
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.primary.health == Health::Up && s.mirror.health == Health::Up
        }),
        "both sides up: {:?}",
        pool.status()
    );
}

/// What the writers saw.
#[derive(Default, Debug)]
struct Outcome {
    /// (writer, seq, side, acknowledged at)
    acked: Vec<(i32, i64, Side, Instant)>,
    get_errors: Vec<String>,
    statement_errors: u64,
}

impl Outcome {
    fn first_ack_on(&self, side: Side, after: Instant) -> Option<Instant> {
        self.acked
            .iter()
            .filter(|a| a.2 == side && a.3 >= after)
            .map(|a| a.3)
            .min()
    }
}

/// Writer threads inserting (writer, seq) rows through `pool.get()` until stopped. Every
/// statement error is reported to the pool (the fast path); nothing is retried.
struct Writers {
    stop: Arc<AtomicBool>,
    outcome: Arc<Mutex<Outcome>>,
    handles: Vec<JoinHandle<()>>,
}

impl Writers {
    fn start(pool: &PostgresPool, n: i32) -> Writers {
        // Writer ids are unique across all writer sets, so two sets never collide on a key.
        static NEXT_WRITER: AtomicI32 = AtomicI32::new(10_000);
        let first = NEXT_WRITER.fetch_add(n, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let handles = (first..first + n)
            .map(|w| {
                let (pool, stop, outcome) = (pool.clone(), stop.clone(), outcome.clone());
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut seq = 0i64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let mut conn = match pool.get() {
                            Ok(c) => c,
                            Err(e) => {
                                outcome.lock().unwrap().get_errors.push(e.to_string());
                                thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        };
                        seq += 1;
                        let side = PooledConnection::side(&conn);
                        match conn
                            .execute("INSERT INTO t (writer, seq) VALUES ($1, $2)", &[&w, &seq])
                        {
                            Ok(_) => {
                                outcome
                                    .lock()
                                    .unwrap()
                                    .acked
                                    .push((w, seq, side, Instant::now()))
                            }
                            Err(e) => {
                                PooledConnection::report(&mut conn, &e);
                                outcome.lock().unwrap().statement_errors += 1;
                            }
                        }
                        drop(conn);
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Writers {
            stop,
            outcome,
            handles,
        }
    }

    /// Waits (bounded) until more than `n` writes were acknowledged by `side` since `since`
    /// (any time if `None`); fails the test with the pool's status otherwise.
    fn expect_acks(&self, side: Side, since: Option<Instant>, n: usize, pool: &PostgresPool) {
        let since = since.unwrap_or_else(|| Instant::now() - LONG);
        assert!(
            wait_until(LONG, || self.acked_since(side, since) > n),
            "fewer than {n} writes acknowledged by the {side}: {:?}",
            pool.status()
        );
    }

    fn acked_since(&self, side: Side, t: Instant) -> usize {
        self.outcome
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|a| a.2 == side && a.3 >= t)
            .count()
    }

    fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            h.join().expect("writer thread");
        }
        std::mem::take(&mut *self.outcome.lock().unwrap())
    }
}

impl Drop for Writers {
    /// A failing test stops its writers too (without waiting for them).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Rows present on a server, as (writer, seq).
fn rows(server: &mirrorpool::testkit::PgServer) -> HashSet<(i32, i64)> {
    let mut c = server
        .config()
        .connect(NoTls)
        .expect("connect for verification");
    c.query("SELECT writer, seq FROM t", &[])
        .expect("read rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn sigkill_of_the_primary_promotes_the_mirror_loses_no_acknowledged_write_and_fails_no_get() {
    let pair = pair(true, Grants::all());
    let pool = pool(&pair, builder().promote_on_failover(true));
    both_up(&pool);
    let writers = Writers::start(&pool, 8);
    writers.expect_acks(Side::Primary, None, 100, &pool);
    let killed_at = Instant::now();
    pair.primary().kill().unwrap();
    writers.expect_acks(Side::Mirror, Some(killed_at), 100, &pool);
    let outcome = writers.stop();

    assert!(
        outcome.get_errors.is_empty(),
        "get() failed: {:?}",
        outcome.get_errors
    );
    // Only statements in flight at the kill may fail (8 writers).
    assert!(
        outcome.statement_errors <= 16,
        "{} statements failed",
        outcome.statement_errors
    );
    let status = pool.status();
    assert_eq!(status.active, Side::Mirror);
    assert_eq!(status.mirror.role, Role::Writable);
    assert_eq!(status.primary.health, Health::Down);
    assert_eq!(status.fenced, Some(Side::Primary));
    // Synchronous replication: every acknowledged insert is on the new primary.
    let on_mirror = rows(pair.mirror());
    let missing: Vec<_> = outcome
        .acked
        .iter()
        .filter(|a| !on_mirror.contains(&(a.0, a.1)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(outcome.acked.len() > 200);
    let first = outcome.first_ack_on(Side::Mirror, killed_at).unwrap();
    eprintln!(
        "kill -> first acknowledged write on the promoted mirror: {:?}",
        first - killed_at
    );
    assert!(first - killed_at < Duration::from_secs(10));
}

#[test]
fn immediate_shutdown_of_the_primary_fails_over() {
    let pair = pair(false, Grants::all());
    let pool = pool(&pair, builder().promote_on_failover(true));
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    let t = Instant::now();
    pair.primary().stop_immediate().unwrap();
    writers.expect_acks(Side::Mirror, Some(t), 50, &pool);
    let outcome = writers.stop();
    assert!(outcome.get_errors.is_empty(), "{:?}", outcome.get_errors);
    assert_eq!(pool.status().switches, 1);
}

#[test]
fn a_hung_primary_is_switched_away_from_and_fenced_when_it_resumes() {
    let pair = pair(false, Grants::all());
    let pool = pool(&pair, builder().promote_on_failover(true));
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    let paused_at = Instant::now();
    let guard = pair.primary().pause_guard().unwrap();
    // Detection needs failure_threshold × heartbeat_timeout; promotion waits until the mirror
    // itself lost the primary (its wal_receiver_timeout, 2 s in the testkit).
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    let detected = paused_at.elapsed();
    // Writers leave the hung primary at once and wait on the mirror until it confirms the
    // loss (≈ 1.3 s later here), instead of queueing on the hung server meanwhile.
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.active == Side::Mirror
                && matches!(
                    s.blocked,
                    Some(Blocked::ConfirmingFailure(Side::Mirror))
                        | Some(Blocked::Refused(Refusal::PrimaryStillStreaming))
                )
        }),
        "writers did not wait on the mirror before its promotion: {:?}",
        pool.status()
    );
    writers.expect_acks(Side::Mirror, Some(paused_at), 20, &pool);
    let served = paused_at.elapsed();
    eprintln!("SIGSTOP -> primary down {detected:?}, -> writes on the mirror {served:?}");
    assert!(detected < Duration::from_secs(5));
    // The old primary resumes, writable, on the old timeline: split brain, fenced.
    drop(guard);
    assert!(
        wait_until(LONG, || pool.status().split_brain),
        "{:?}",
        pool.status()
    );
    let status = pool.status();
    assert_eq!(status.active, Side::Mirror);
    assert_eq!(status.fenced, Some(Side::Primary));
    let resumed = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let outcome = writers.stop();
    assert!(outcome.get_errors.is_empty(), "{:?}", outcome.get_errors);
    assert_eq!(
        outcome
            .acked
            .iter()
            .filter(|a| a.2 == Side::Primary && a.3 > resumed + Duration::from_millis(100))
            .count(),
        0,
        "writes went to the fenced old primary after it resumed"
    );
}

/// Writers left the lost primary for the (unpromoted) mirror and returned when it came back.
fn writers_left_and_came_back(pool: &PostgresPool<NoTls>) {
    let status = pool.status();
    assert_eq!(status.active, Side::Primary, "{status:?}");
    assert_eq!(status.switches, 2, "{status:?}");
    let last = status.last_switch.as_ref().expect("a switch record");
    assert_eq!(
        (last.from, last.to, last.reason),
        (Side::Mirror, Side::Primary, SwitchReason::Recovered),
        "{status:?}"
    );
    assert_eq!(status.fenced, None, "{status:?}");
}

#[test]
fn a_black_holed_primary_is_not_promoted_over_while_the_mirror_still_streams_from_it() {
    let pair = pair(false, Grants::all());
    let proxy = TcpProxy::start(([127, 0, 0, 1], pair.primary().port()).into()).unwrap();
    let pool = pool_on(&pair, proxy.port(), builder().promote_on_failover(true));
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    let cut_at = Instant::now();
    proxy.set_mode(ProxyMode::BlackHole);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    eprintln!("black hole -> primary down in {:?}", cut_at.elapsed());
    assert!(cut_at.elapsed() < Duration::from_secs(5));
    // Only this application lost the primary: the mirror still streams, so no promotion.
    assert!(
        wait_until(LONG, || pool.status().blocked
            == Some(Blocked::Refused(Refusal::PrimaryStillStreaming))),
        "{:?}",
        pool.status()
    );
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(
        err.to_string()
            .contains("mirror still receives from the primary"),
        "{err}"
    );
    assert_eq!(pool.status().mirror.role, Role::ReadOnly);
    // Reads still work from the mirror.
    let mut reader = pool.get_from(Side::Mirror).unwrap();
    let n: i64 = reader
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert!(n > 0);
    drop(reader);
    // The network heals: writers go back to the primary.
    proxy.set_mode(ProxyMode::Pass);
    let healed = Instant::now();
    writers.expect_acks(Side::Primary, Some(healed), 20, &pool);
    writers.stop();
    writers_left_and_came_back(&pool);
    assert_eq!(
        pair.mirror()
            .query_one_i64("SELECT pg_is_in_recovery()::int")
            .unwrap(),
        1
    );
}

#[test]
fn an_isolated_primary_black_holed_for_everyone_is_switched_away_from_within_seconds() {
    let pair = pair(false, Grants::all());
    // Route the mirror's replication through a second proxy, so one cut isolates the primary.
    let app_proxy = TcpProxy::start(([127, 0, 0, 1], pair.primary().port()).into()).unwrap();
    let repl_proxy = TcpProxy::start(([127, 0, 0, 1], pair.primary().port()).into()).unwrap();
    pair.mirror()
        .execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=mirror'",
            repl_proxy.port()
        ))
        .unwrap();
    pair.mirror().execute("SELECT pg_reload_conf()").unwrap();
    assert!(wait_until(LONG, || repl_proxy.active_connections() > 0));
    pair.wait_for_mirror_streaming(LONG).unwrap();
    let pool = pool_on(&pair, app_proxy.port(), builder().promote_on_failover(true));
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    let cut_at = Instant::now();
    app_proxy.set_mode(ProxyMode::BlackHole);
    repl_proxy.set_mode(ProxyMode::BlackHole);
    writers.expect_acks(Side::Mirror, Some(cut_at), 20, &pool);
    eprintln!(
        "isolation -> writes on the promoted mirror after {:?}",
        cut_at.elapsed()
    );
    let outcome = writers.stop();
    assert!(outcome.get_errors.is_empty(), "{:?}", outcome.get_errors);
    assert_eq!(pool.status().active, Side::Mirror);
}

#[test]
fn a_cut_network_without_promotion_blocks_writers_with_a_clear_error_and_recovers() {
    let pair = pair(false, Grants::none());
    let proxy = TcpProxy::start(([127, 0, 0, 1], pair.primary().port()).into()).unwrap();
    let pool = pool_on(
        &pair,
        proxy.port(),
        builder().connection_timeout(Duration::from_secs(1)),
    );
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    proxy.set_mode(ProxyMode::Drop);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    let started = Instant::now();
    match pool.get_timeout(Duration::from_millis(500)) {
        Err(e @ GetError::Unavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no side accepts writes"), "{msg}");
            assert!(msg.contains("primary is down"), "{msg}");
            assert!(msg.contains("mirror is up"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Longer than the writers' 1 s timeout, so their own get() calls fail too.
    thread::sleep(Duration::from_millis(1500));
    proxy.set_mode(ProxyMode::Pass);
    let healed = Instant::now();
    writers.expect_acks(Side::Primary, Some(healed), 20, &pool); // writers resume when the network heals
    let outcome = writers.stop();
    // Every error names what blocked the writer: the pool's state, or the cause on the primary
    // (a get() that started before the primary was marked down).
    assert!(!outcome.get_errors.is_empty());
    for e in &outcome.get_errors {
        assert!(
            e.contains("no side accepts writes")
                || (e.contains("primary") && (e.contains("reset") || e.contains("refused"))),
            "unclear error: {e}"
        );
    }
    writers_left_and_came_back(&pool);
}

#[test]
fn a_restarted_primary_is_served_again_when_nobody_promoted() {
    let pair = pair(false, Grants::none());
    let pool = pool(&pair, builder());
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    pair.primary().kill().unwrap();
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    let restarted = Instant::now();
    pair.primary().start().unwrap();
    writers.expect_acks(Side::Primary, Some(restarted), 50, &pool);
    let outcome = writers.stop();
    // Writers waited through the restart instead of failing.
    assert!(outcome.get_errors.is_empty(), "{:?}", outcome.get_errors);
    writers_left_and_came_back(&pool);
}

#[test]
fn an_external_promotion_is_followed_without_the_pool_promoting() {
    let pair = pair(false, Grants::none());
    let pool = pool(&pair, builder());
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    writers.expect_acks(Side::Primary, None, 50, &pool);
    pair.primary().kill().unwrap();
    assert!(wait_until(LONG, || pool.status().blocked
        == Some(Blocked::NoWritableSide)));
    pair.mirror().promote().unwrap();
    let writable_at = Instant::now();
    writers.expect_acks(Side::Mirror, Some(writable_at), 20, &pool);
    let outcome = writers.stop();
    let first = outcome
        .first_ack_on(Side::Mirror, writable_at - Duration::from_secs(1))
        .unwrap();
    eprintln!(
        "mirror writable -> first write {:?}",
        first.saturating_duration_since(writable_at)
    );
    assert!(outcome.get_errors.is_empty(), "{:?}", outcome.get_errors);
    assert_eq!(pool.status().active, Side::Mirror);
}

#[test]
fn a_dead_mirror_with_a_healthy_primary_causes_no_switch() {
    let pair = pair(false, Grants::all());
    let pool = pool(&pair, builder().promote_on_failover(true));
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    pair.mirror().kill().unwrap();
    assert!(wait_until(LONG, || pool.status().mirror.health == Health::Down));
    let t = Instant::now();
    writers.expect_acks(Side::Primary, Some(t), 50, &pool);
    let outcome = writers.stop();
    assert!(outcome.get_errors.is_empty());
    let s = pool.status();
    assert_eq!(s.switches, 0);
    assert_eq!(s.active, Side::Primary);
    assert!(s.mirror.last_error.is_some());
    // The primary sees its replica gone.
    assert!(wait_until(LONG, || pool
        .status()
        .primary
        .replication
        .and_then(|r| r.replicas_attached)
        == Some(0)));
}

#[test]
fn with_both_down_get_names_both_sides_and_the_pool_recovers_when_one_returns() {
    let pair = pair(false, Grants::none());
    let pool = pool(&pair, builder());
    both_up(&pool);
    let writers = Writers::start(&pool, 4);
    pair.mirror().kill().unwrap();
    pair.primary().kill().unwrap();
    assert!(wait_until(LONG, || pool.status().blocked == Some(Blocked::BothDown)));
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("both sides are down"), "{msg}");
    assert!(
        msg.contains("primary is down (last error:") && msg.contains("mirror is down (last error:"),
        "{msg}"
    );
    pair.primary().start().unwrap();
    let back = Instant::now();
    writers.expect_acks(Side::Primary, Some(back), 20, &pool); // recovers when the primary returns
    let outcome = writers.stop();
    assert!(
        outcome.get_errors.iter().all(|e| e.contains("no side")),
        "{:?}",
        outcome.get_errors
    );
}

#[test]
fn the_lag_gate_refuses_to_promote_a_mirror_that_is_far_behind() {
    let pair = pair(false, Grants::all());
    let pool = pool(
        &pair,
        builder()
            .promote_on_failover(true)
            .max_failover_lag(Some(Lag::Bytes(64 * 1024))),
    );
    both_up(&pool);
    // Stop replay on the mirror and write a few MB on the primary.
    pair.mirror()
        .execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    pair.primary()
        .execute("INSERT INTO t SELECT 1000, g FROM generate_series(1, 50000) g")
        .unwrap();
    assert!(
        wait_until(LONG, || pool
            .status()
            .mirror
            .replication
            .and_then(|r| r.lag_bytes)
            .unwrap_or(0)
            > 64 * 1024),
        "{:?}",
        pool.status().mirror
    );
    pair.primary().kill().unwrap();
    assert!(
        wait_until(LONG, || matches!(
            pool.status().blocked,
            Some(Blocked::Refused(Refusal::LagTooHigh { .. }))
        )),
        "{:?}",
        pool.status()
    );
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(
        err.to_string().contains("exceeds max_failover_lag"),
        "{err}"
    );
    assert_eq!(
        pair.mirror()
            .query_one_i64("SELECT pg_is_in_recovery()::int")
            .unwrap(),
        1,
        "mirror promoted"
    );
}

#[test]
fn after_a_promotion_a_restarted_old_primary_is_fenced_and_reported() {
    let pair = pair(false, Grants::all());
    let pool = pool(
        &pair,
        builder()
            .promote_on_failover(true)
            .failback(mirrorpool::Failback::Automatic {
                after: Duration::from_millis(200),
            }),
    );
    both_up(&pool);
    pair.primary().kill().unwrap();
    assert!(
        wait_until(LONG, || pool.status().mirror.role == Role::Writable),
        "{:?}",
        pool.status()
    );
    let before = pair
        .mirror()
        .query_one_i64("SELECT count(*) FROM t")
        .unwrap();
    pair.primary().start().unwrap();
    assert!(
        wait_until(LONG, || pool.status().split_brain),
        "{:?}",
        pool.status()
    );
    let status = pool.status();
    assert_eq!(status.active, Side::Mirror);
    assert_eq!(status.fenced, Some(Side::Primary));
    assert!(status.mirror.epoch > status.primary.epoch, "{status:?}");
    // Writes go to the new primary only, even with automatic failback configured.
    for i in 0..50 {
        let mut c = pool.get().unwrap();
        assert_eq!(PooledConnection::side(&c), Side::Mirror);
        c.execute("INSERT INTO t VALUES (500, $1)", &[&i64::from(i)])
            .unwrap();
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(pool.active(), Side::Mirror);
    assert_eq!(
        pair.primary()
            .query_one_i64("SELECT count(*) FROM t WHERE writer = 500")
            .unwrap(),
        0
    );
    assert_eq!(
        pair.mirror()
            .query_one_i64("SELECT count(*) FROM t")
            .unwrap(),
        before + 50
    );
}

#[test]
fn repeated_switches_under_load_leak_no_server_connections() {
    let pair = pair(false, Grants::none());
    // Role-blind backend so switches can go both ways on a healthy pair (reads only).
    let max = 4u32;
    // Generous heartbeat bounds: this test is about connection accounting, and a starved
    // machine must not turn it into a failover test.
    let pool = mirrorpool::MirrorPool::builder()
        .max_size(max)
        .min_idle(2)
        .mirror_min_idle(2)
        .heartbeat_timeout(Duration::from_secs(2))
        .failure_threshold(10)
        .build(
            PostgresManager::new(pair.primary().app_config(), NoTls),
            PostgresManager::new(pair.mirror().app_config(), NoTls),
        )
        .unwrap();
    both_up(&pool);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                    let mut c = pool.get().expect("get during switches");
                    c.query_one("SELECT 1", &[]).expect("read");
                    n += 1;
                }
            })
        })
        .collect();
    let limit = i64::from(max) + 1; // the pool's connections plus its heartbeat connection
    for i in 0..10 {
        let to = if i % 2 == 0 {
            Side::Mirror
        } else {
            Side::Primary
        };
        pool.switch_over(to).unwrap();
        thread::sleep(Duration::from_millis(150));
        for server in [pair.primary(), pair.mirror()] {
            // Drained connections close in the background: allow them a moment to go.
            let mut n = 0;
            assert!(
                wait_until(Duration::from_secs(5), || {
                    n = server.connection_count(Some("mirrorpool")).unwrap();
                    n <= limit
                }),
                "{} has {n} pool connections, limit {limit}",
                server.name()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    drop(pool);
    for server in [pair.primary(), pair.mirror()] {
        assert!(
            wait_until(LONG, || server
                .connection_count(Some("mirrorpool"))
                .unwrap()
                == 0),
            "{} still has connections after the pool was dropped",
            server.name()
        );
    }
}

#[test]
fn wrong_credentials_and_unreachable_hosts_are_clear_errors_without_secrets() {
    let pair = pair(false, Grants::none());
    let mut wrong = pair.primary().app_config();
    wrong.password("not-the-password");
    let pool = mirrorpool::postgres::builder()
        .connection_timeout(Duration::from_millis(800))
        .build(
            PostgresManager::new(wrong, NoTls),
            // Nothing listens on the mirror's port once it is killed.
            PostgresManager::new(pair.mirror().app_config(), NoTls),
        )
        .unwrap();
    pair.mirror().kill().unwrap();
    let err = pool.get().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("not-the-password"));
    let debug = format!(
        "{err:?} {:?} {:?}",
        pool.status(),
        pool.manager(Side::Primary)
    );
    assert!(!debug.contains("not-the-password"), "{debug}");
    assert!(!debug.contains(APP_PASSWORD), "{debug}");
    assert!(wait_until(LONG, || pool.status().mirror.health == Health::Down));
    let mirror_err = pool.status().mirror.last_error.unwrap().chain();
    assert!(mirror_err.contains("refused"), "{mirror_err}");
    // A connection string that does not parse names the side and does not echo the string.
    let e = mirrorpool::postgres::pool("host=x port=notaport password=s3cret", "host=y", NoTls)
        .unwrap_err();
    assert!(e.to_string().contains("primary connection string"), "{e}");
    assert!(!e.to_string().contains("s3cret"));
}

#[test]
fn reset_on_return_discards_session_state() {
    let pair = pair(false, Grants::none());
    let pool = pool(
        &pair,
        builder()
            .max_size(1)
            .min_idle(1)
            .mirror_min_idle(1)
            .reset_on_return(true),
    );
    {
        let mut c = pool.get().unwrap();
        c.batch_execute("CREATE TEMP TABLE scratch (x int); SET application_name = 'dirty'")
            .unwrap();
    }
    let mut c = pool.get().unwrap();
    let temp: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(temp, 0, "temp table leaked to the next borrower");
    let name: String = c.query_one("SHOW application_name", &[]).unwrap().get(0);
    assert_eq!(name, "mirrorpool");
}

#[test]
fn status_reports_roles_timelines_and_replication() {
    let pair = pair(true, Grants::none().replication_status(true));
    let pool = pool(&pair, builder());
    both_up(&pool);
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.primary.replication.and_then(|r| r.replicas_attached) == Some(1)
                && s.mirror
                    .replication
                    .and_then(|r| r.upstream)
                    .is_some_and(|u| u.streaming == Some(true))
        }),
        "{:?}",
        pool.status()
    );
    let s = pool.status();
    assert_eq!(s.primary.role, Role::Writable);
    assert_eq!(s.mirror.role, Role::ReadOnly);
    assert_eq!(s.primary.epoch, Some(1));
    assert!(s.primary.last_rtt.is_some());
    // The backend classifies a write on the replica as "not writable".
    let mut c = pool.get_from(Side::Mirror).unwrap();
    let e = c.execute("INSERT INTO t VALUES (1, 1)", &[]).unwrap_err();
    assert_eq!(
        PooledConnection::report(&mut c, &e),
        mirrorpool::backend::Fault::NotWritable
    );
}

#[test]
fn two_pools_on_one_cluster_promote_once_and_both_follow() {
    let pair = pair(true, Grants::all());
    let a = pool(&pair, builder().promote_on_failover(true));
    let b = pool(&pair, builder().promote_on_failover(true));
    both_up(&a);
    both_up(&b);
    let (wa, wb) = (Writers::start(&a, 3), Writers::start(&b, 3));
    wa.expect_acks(Side::Primary, None, 20, &a);
    let killed = Instant::now();
    pair.primary().kill().unwrap();
    assert!(
        wait_until(LONG, || wa.acked_since(Side::Mirror, killed) > 20
            && wb.acked_since(Side::Mirror, killed) > 20),
        "{:?}\n{:?}",
        a.status(),
        b.status()
    );
    let (oa, ob) = (wa.stop(), wb.stop());
    assert!(
        oa.get_errors.is_empty() && ob.get_errors.is_empty(),
        "{:?} {:?}\n{:?}\n{:?}",
        oa.get_errors,
        ob.get_errors,
        a.status(),
        b.status()
    );
    // One promotion: the mirror moved from timeline 1 to 2, not further.
    let tli = pair
        .mirror()
        .query_one_i64(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
        )
        .unwrap();
    assert_eq!(tli, 2);
    for p in [&a, &b] {
        let s = p.status();
        assert_eq!(s.active, Side::Mirror);
        assert_eq!(s.mirror.epoch, Some(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded calls: connects, resets and promotions never wait forever on a silent server.

#[test]
fn a_connect_to_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout() {
    let _ = env_logger::builder().is_test(true).try_init();
    let silent = SilentServer::start();
    let timeout = Duration::from_millis(500);
    let manager = silent.manager(timeout);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        let result = manager.connect().map(|_| ()).map_err(|e| e.to_string());
        let _ = tx.send((result, started.elapsed()));
    });
    let (result, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the connect returned");
    assert!(result.is_err(), "{result:?}");
    eprintln!("connect to a silent server failed after {took:?}: {result:?}");
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_millis(1500), "{took:?}");
}

#[test]
fn returning_a_connection_to_a_hung_server_with_reset_on_return_takes_at_most_the_reset_timeout() {
    let _ = env_logger::builder().is_test(true).try_init();
    let pair = pair(false, Grants::none());
    let reset_timeout = Duration::from_millis(300);
    let pool = builder()
        .max_size(2)
        .min_idle(1)
        .mirror_min_idle(1)
        .reset_on_return(true)
        // This test is about the returning thread, not about failing over.
        .failure_threshold(1000)
        .build(
            PostgresManager::new(pair.primary().app_config(), NoTls).reset_timeout(reset_timeout),
            PostgresManager::new(pair.mirror().app_config(), NoTls),
        )
        .expect("valid configuration");
    let conn = pool.get().unwrap();
    assert_eq!(PooledConnection::side(&conn), Side::Primary);
    assert!(conn.severable());
    let guard = pair.primary().pause_guard().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let started = Instant::now();
        drop(conn);
        let _ = tx.send(started.elapsed());
    });
    let took = rx.recv_timeout(Duration::from_secs(10));
    drop(guard);
    let took = took.expect("the returning thread was released");
    eprintln!("returning a connection to a hung server took {took:?}");
    assert!(took >= reset_timeout, "{took:?}");
    assert!(
        took < reset_timeout + Duration::from_millis(1200),
        "{took:?}"
    );
}

#[test]
fn a_promotion_that_does_not_finish_in_time_fails_with_a_plain_error() {
    let pair = pair(false, Grants::all());
    // Stop the mirror's startup process: pg_promote() is accepted, recovery never ends.
    let startup: Vec<u32> = pair
        .mirror()
        .child_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("startup"))
        })
        .collect();
    assert_eq!(startup.len(), 1, "{startup:?}");
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &startup[0].to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let manager = PostgresManager::new(pair.mirror().app_config(), NoTls);
    let mut conn = manager.connect().unwrap();
    let started = Instant::now();
    let result = PostgresBackend.promote(&manager, &mut conn, Duration::from_millis(300));
    let took = started.elapsed();
    signal("-CONT");
    let err = result.unwrap_err().to_string();
    assert!(
        err.starts_with("the promoted server was still in recovery at the promotion timeout"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// What a heartbeat reports, as a least-privilege role and with each grant.

fn observe(config: postgres::Config) -> Observation {
    let manager = PostgresManager::new(config, NoTls);
    let mut conn = manager.connect().expect("connect");
    PostgresBackend
        .probe(&manager, &mut conn, Duration::from_secs(5))
        .expect("heartbeat")
}

fn upstream(obs: &Observation) -> Upstream {
    obs.replication()
        .and_then(|r| r.upstream)
        .expect("a replica reports its upstream")
}

#[test]
fn heartbeats_say_what_the_role_cannot_see_instead_of_reporting_it_as_false() {
    let pair = pair(false, Grants::none());
    pair.create_role("monitor", Grants::none().replication_status(true))
        .unwrap();
    pair.create_role("promoter", Grants::none().promote(true))
        .unwrap();
    let (primary, mirror) = (pair.primary(), pair.mirror());

    // No pg_monitor: the WAL receiver's state is unknown, not "stopped".
    let m = observe(mirror.app_config());
    assert_eq!(m.role(), Role::ReadOnly);
    assert_eq!(upstream(&m).streaming, None, "{m:?}");
    assert_eq!(upstream(&m).silence, None, "{m:?}");
    let denied = |a: Access, what: &str| matches!(a, Access::Denied(t) if t.contains(what));
    assert!(
        denied(m.privileges().replication_status, "GRANT pg_monitor"),
        "{m:?}"
    );
    assert!(denied(m.privileges().promote, "pg_promote"), "{m:?}");
    let p = observe(primary.app_config());
    let r = p.replication().copied().unwrap_or_default();
    assert_eq!(r.replicas_attached, None, "{p:?}");
    assert_eq!(r.lag_bytes, None, "{p:?}");

    // With pg_monitor: streaming, and the primary sees its replica.
    let m = observe(mirror.role_config("monitor"));
    assert_eq!(upstream(&m).streaming, Some(true), "{m:?}");
    assert!(upstream(&m).silence.is_some(), "{m:?}");
    assert_eq!(m.privileges().replication_status, Access::Granted);
    assert!(denied(m.privileges().promote, "pg_promote"), "{m:?}");
    let p = observe(primary.role_config("monitor"));
    assert_eq!(
        p.replication().and_then(|r| r.replicas_attached),
        Some(1),
        "{p:?}"
    );

    // With EXECUTE on pg_promote only.
    let m = observe(mirror.role_config("promoter"));
    assert_eq!(m.privileges().promote, Access::Granted);
    assert!(denied(m.privileges().replication_status, "pg_monitor"));
    assert_eq!(upstream(&m).streaming, None);

    // A receiver that is not running is "not streaming" for every role: no row is visible.
    pair.primary().kill().unwrap();
    assert!(
        wait_until(LONG, || upstream(&observe(mirror.app_config())).streaming
            == Some(false)),
        "the mirror still reports a receiver"
    );
}

#[test]
fn heartbeats_tell_the_servers_of_a_pair_apart_and_recognise_one_server_reached_twice() {
    let pair = pair(false, Grants::none());
    let proxy = TcpProxy::start(([127, 0, 0, 1], pair.primary().port()).into()).unwrap();
    let direct = observe(pair.primary().app_config())
        .identity()
        .expect("identity");
    let proxied = observe(pair.primary().app_config_on_port(proxy.port()))
        .identity()
        .expect("identity");
    let mirror = observe(pair.mirror().app_config())
        .identity()
        .expect("identity");
    assert_eq!(direct, proxied, "one server reached twice");
    assert_ne!(direct.instance, mirror.instance, "two servers");
    // A replica belongs to its primary's cluster (pg_control_system() is readable by default).
    assert!(direct.cluster.is_some());
    assert_eq!(direct.cluster, mirror.cluster);
    // An unrelated cluster differs.
    let other = self::pair(false, Grants::none());
    let stranger = observe(other.primary().app_config())
        .identity()
        .expect("identity");
    assert_ne!(stranger.cluster, direct.cluster);
    assert_ne!(stranger.instance, direct.instance);
}

#[test]
fn the_reported_wal_position_grows_with_writes_and_the_mirror_replays_up_to_it() {
    let pair = pair(false, Grants::none());
    let position = |config| {
        observe(config)
            .replication()
            .and_then(|r| r.position)
            .expect("a position")
    };
    let before = position(pair.primary().app_config());
    let mut app = pair.primary().app_config().connect(NoTls).unwrap();
    app.execute(
        "INSERT INTO t SELECT 1, g FROM generate_series(1, 1000) g",
        &[],
    )
    .unwrap();
    let after = position(pair.primary().app_config());
    assert!(after > before + 1000, "{before} -> {after}");
    assert!(
        wait_until(LONG, || position(pair.mirror().app_config()) >= after),
        "the mirror did not replay up to {after}"
    );
}

#[test]
fn too_many_connections_is_classified_as_capacity_not_failure() {
    let pair = PgPair::builder()
        .setting("max_connections", "6")
        .setting("superuser_reserved_connections", "3")
        .start()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL pair: {e}"));
    let mut held = Vec::new();
    let err = loop {
        match pair.primary().app_config().connect(NoTls) {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 10, "the connection limit was not enforced");
    };
    assert_eq!(
        Backend::<PostgresManager<NoTls>>::classify(&PostgresBackend, &err),
        Fault::TooManyConnections,
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Least privilege: what the pool does and says when the role lacks a grant.

/// Whether `problems` holds a missing privilege whose text mentions `grant`.
fn names_missing(problems: &[Refusal], grant: &str) -> bool {
    problems
        .iter()
        .any(|p| matches!(p, Refusal::MissingPrivilege { what, .. } if what.contains(grant)))
}

#[test]
fn a_role_that_cannot_see_replication_never_promotes_over_a_hung_primary_and_names_the_grant() {
    // The mirror's receiver keeps its (hidden) row for the whole test: it would give up on the
    // stopped primary only after a minute. Only pg_promote is granted.
    let pair = PgPair::builder()
        .app_grants(Grants::none().promote(true))
        .setting("wal_receiver_timeout", "60s")
        .start()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL pair: {e}"));
    let pool = pool(&pair, builder().promote_on_failover(true));
    both_up(&pool);
    let guard = pair.primary().pause_guard().unwrap();
    let paused = Instant::now();
    let refused_for_pg_monitor = |s: &mirrorpool::Status| {
        matches!(s.blocked, Some(Blocked::Refused(Refusal::MissingPrivilege { side: Side::Mirror, what }))
            if what.contains("pg_monitor"))
    };
    assert!(
        wait_until(LONG, || refused_for_pg_monitor(&pool.status())),
        "{:?}",
        pool.status()
    );
    let err = pool
        .get_timeout(Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(err.contains("GRANT pg_monitor"), "{err}");
    // Still refused seconds later, and the mirror was never promoted.
    while paused.elapsed() < Duration::from_secs(6) {
        let s = pool.status();
        assert_ne!(s.mirror.role, Role::Writable, "{s:?}");
        assert!(!matches!(s.blocked, Some(Blocked::Promoting(_))), "{s:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        refused_for_pg_monitor(&pool.status()),
        "{:?}",
        pool.status()
    );
    assert_eq!(
        pair.mirror()
            .query_one_i64("SELECT pg_is_in_recovery()::int")
            .unwrap(),
        1,
        "the mirror was promoted"
    );
    drop(guard);
}

#[test]
fn a_role_without_execute_on_pg_promote_is_reported_at_start_and_named_when_writers_wait() {
    let pair = pair(false, Grants::none().replication_status(true));
    let built = Instant::now();
    let pool = pool(&pair, builder().promote_on_failover(true));
    assert!(
        wait_until(Duration::from_secs(2), || names_missing(
            &pool.status().mirror.problems,
            "pg_promote"
        )),
        "{:?}",
        pool.status()
    );
    eprintln!(
        "missing EXECUTE on pg_promote reported {:?} after build",
        built.elapsed()
    );
    both_up(&pool);
    pair.primary().kill().unwrap();
    assert!(
        wait_until(LONG, || matches!(
            pool.status().blocked,
            Some(Blocked::Refused(Refusal::MissingPrivilege { side: Side::Mirror, what }))
                if what.contains("pg_promote")
        )),
        "{:?}",
        pool.status()
    );
    let err = pool
        .get_timeout(Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_promote"), "{err}");
    assert_eq!(
        pair.mirror()
            .query_one_i64("SELECT pg_is_in_recovery()::int")
            .unwrap(),
        1
    );
}

#[test]
fn build_checked_names_wrong_credentials_unreachable_sides_one_server_twice_strangers_and_missing_grants(
) {
    use mirrorpool::BuildError;
    let pair = pair(false, Grants::none());
    let checked = |b: Builder<PostgresManager<NoTls>>, p: postgres::Config, m: postgres::Config| {
        b.connection_timeout(Duration::from_secs(10))
            .build_checked(
                PostgresManager::new(p, NoTls),
                PostgresManager::new(m, NoTls),
            )
            .map(|_| ())
    };
    let (primary, mirror) = (pair.primary(), pair.mirror());

    // The healthy pair passes (no feature that needs a grant is on).
    checked(builder(), primary.app_config(), mirror.app_config()).expect("a healthy pair");

    let mut wrong = primary.app_config();
    wrong.password("not-the-password");
    match checked(builder(), wrong, mirror.app_config()) {
        Err(
            e @ BuildError::Unreachable {
                side: Side::Primary,
                ..
            },
        ) => {
            let chain = format!("{e} {:?}", std::error::Error::source(&e));
            assert!(chain.contains("password authentication failed"), "{chain}");
            assert!(!chain.contains("not-the-password"), "{chain}");
        }
        other => panic!("expected Unreachable(primary), got {other:?}"),
    }

    let nobody = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let closed_port = nobody.local_addr().unwrap().port();
    drop(nobody);
    match checked(
        builder(),
        primary.app_config(),
        mirror.app_config_on_port(closed_port),
    ) {
        Err(BuildError::Unreachable {
            side: Side::Mirror, ..
        }) => {}
        other => panic!("expected Unreachable(mirror), got {other:?}"),
    }

    // The primary twice, once through a proxy: one server.
    let proxy = TcpProxy::start(([127, 0, 0, 1], primary.port()).into()).unwrap();
    match checked(
        builder(),
        primary.app_config(),
        primary.app_config_on_port(proxy.port()),
    ) {
        Err(BuildError::SameServer) => {}
        other => panic!("expected SameServer, got {other:?}"),
    }

    // Another cluster's primary as the mirror.
    let stranger = self::pair(false, Grants::none());
    match checked(
        builder(),
        primary.app_config(),
        stranger.primary().app_config(),
    ) {
        Err(BuildError::NotAMirror { .. }) => {}
        other => panic!("expected NotAMirror, got {other:?}"),
    }
    // Another cluster's replica as the mirror.
    match checked(
        builder(),
        primary.app_config(),
        stranger.mirror().app_config(),
    ) {
        Err(BuildError::NotAMirror { problem }) => {
            assert!(problem.contains("another cluster"), "{problem}")
        }
        other => panic!("expected NotAMirror, got {other:?}"),
    }

    // Promotion configured for a role without the grants it needs.
    match checked(
        builder().promote_on_failover(true),
        primary.app_config(),
        mirror.app_config(),
    ) {
        Err(e @ BuildError::MissingPrivilege { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("pg_promote") || msg.contains("pg_monitor"),
                "{msg}"
            );
        }
        other => panic!("expected MissingPrivilege, got {other:?}"),
    }
}

#[test]
fn a_primary_at_its_connection_limit_is_saturated_not_down_and_writers_stay() {
    let _ = env_logger::builder().is_test(true).try_init();
    let pair = pair(false, Grants::none());
    let pool = pool(&pair, builder().max_size(4).min_idle(4));
    both_up(&pool);
    assert!(wait_until(LONG, || pool.status().primary.idle >= 4));
    let writers = Writers::start(&pool, 2);
    writers.expect_acks(Side::Primary, None, 5, &pool);
    // The role may open no new connection (PostgreSQL answers 53300); the ones open work on.
    // Then the heartbeat loses its session and cannot open another.
    pair.primary()
        .execute(&format!("ALTER ROLE {APP_USER} CONNECTION LIMIT 0"))
        .expect("limit");
    let killed = pair
        .primary()
        .query_one_i64(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE usename = '{APP_USER}' AND query LIKE '%AS sees_replication%' \
             AND pid <> pg_backend_pid()"
        ))
        .expect("terminate the heartbeat session");
    assert!(
        killed >= 1,
        "found the heartbeat session among {} sessions of {APP_USER}",
        pair.primary()
            .query_one_i64(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
            ))
            .unwrap_or(-1)
    );
    assert!(
        wait_until(LONG, || pool.status().primary.saturated),
        "{:?}",
        pool.status()
    );
    let since = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let status = pool.status();
    assert_eq!(status.active, Side::Primary, "{status:?}");
    assert_eq!(status.primary.health, Health::Up, "{status:?}");
    assert_eq!(status.switches, 0, "a full primary is not failed over from");
    writers.expect_acks(Side::Primary, Some(since), 20, &pool);
    pair.primary()
        .execute(&format!("ALTER ROLE {APP_USER} CONNECTION LIMIT -1"))
        .expect("unlimit");
    assert!(wait_until(LONG, || !pool.status().primary.saturated));
    let outcome = writers.stop();
    assert!(outcome.get_errors.is_empty(), "{:?}", outcome.get_errors);
}
