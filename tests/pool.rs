//! Behaviour of the generic failover pool, driven by scripted in-memory servers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Manager, Mode, Recorder, ScriptedBackend, Server};
use mirrorpool::{
    BuildError, Failback, GetError, Health, ManageConnection, MirrorPool, PooledConnection, Side,
    SwitchError,
};

const LONG: Duration = Duration::from_secs(10);

struct Pair {
    primary: Arc<Server>,
    mirror: Arc<Server>,
    events: Recorder,
}

fn pair() -> Pair {
    Pair {
        primary: Server::new("primary"),
        mirror: Server::new("mirror"),
        events: Recorder::default(),
    }
}

/// Fast timings so failures are seen in tens of milliseconds.
fn builder(p: &Pair) -> mirrorpool::Builder<Manager> {
    MirrorPool::builder()
        .max_size(4)
        .min_idle(1)
        .mirror_min_idle(1)
        .heartbeat_interval(Duration::from_millis(20))
        .heartbeat_timeout(Duration::from_millis(50))
        .suspect_interval(Duration::from_millis(5))
        .failure_threshold(3)
        .min_switch_interval(Duration::ZERO)
        .connection_timeout(Duration::from_secs(5))
        .event_handler(Box::new(p.events.clone()))
        .backend(ScriptedBackend)
}

fn build(p: &Pair, b: mirrorpool::Builder<Manager>) -> MirrorPool<Manager> {
    b.build(Manager(p.primary.clone()), Manager(p.mirror.clone()))
        .expect("valid configuration")
}

fn both_up(pool: &MirrorPool<Manager>) -> bool {
    wait_until(LONG, || {
        let s = pool.status();
        s.primary.health == Health::Up && s.mirror.health == Health::Up
    })
}

#[test]
fn serves_from_the_primary_by_default() {
    let p = pair();
    let pool = build(&p, builder(&p));
    let conn = pool.get().unwrap();
    assert_eq!(PooledConnection::side(&conn), Side::Primary);
    assert_eq!(conn.server, "primary");
    assert!(both_up(&pool));
}

#[test]
fn fails_over_after_the_failure_threshold() {
    let p = pair();
    let pool = build(&p, builder(&p));
    assert!(both_up(&pool));
    p.primary.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    let status = pool.status();
    assert_eq!(status.primary.health, Health::Down);
    assert!(status.primary.consecutive_failures >= 3);
    assert_eq!(status.switches, 1);
    let conn = pool.get().unwrap();
    assert_eq!(conn.server, "mirror");
    assert_eq!(p.events.count("switch primary->mirror Failover"), 1);
    assert_eq!(p.events.count("down primary"), 1);
    // The cause is kept: the last error names the refused connection.
    let err = status.primary.last_error.expect("last error kept");
    assert!(
        err.chain().contains("connection refused"),
        "{}",
        err.chain()
    );
}

#[test]
fn does_not_fail_over_on_a_single_transient_failure() {
    let p = pair();
    // Slow heartbeats so one refused probe is followed by fast re-probes we can outlast.
    let pool = build(
        &p,
        builder(&p)
            .failure_threshold(5)
            .suspect_interval(Duration::from_millis(40)),
    );
    assert!(both_up(&pool));
    p.primary.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool
        .status()
        .primary
        .consecutive_failures
        >= 1));
    p.primary.set_mode(Mode::Up);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Up));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(pool.active(), Side::Primary);
    assert_eq!(pool.status().switches, 0);
    assert!(p.events.count("hbfail primary") >= 1);
    assert_eq!(p.events.count("switch"), 0);
}

#[test]
fn manual_switch_moves_writers_and_is_refused_to_a_down_side() {
    let p = pair();
    let pool = build(&p, builder(&p));
    assert!(both_up(&pool));
    pool.switch_over(Side::Mirror).unwrap();
    assert_eq!(pool.active(), Side::Mirror);
    assert_eq!(pool.get().unwrap().server, "mirror");
    assert_eq!(p.events.count("switch primary->mirror Manual"), 1);

    p.primary.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    match pool.switch_over(Side::Primary) {
        Err(SwitchError::Refused {
            to: Side::Primary,
            reason,
        }) => {
            assert_eq!(reason, mirrorpool::Refusal::TargetDown)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(pool.active(), Side::Mirror);
}

#[test]
fn manual_failback_stays_on_the_mirror_until_told() {
    let p = pair();
    let pool = build(&p, builder(&p).failback(Failback::Manual));
    assert!(both_up(&pool));
    p.primary.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    p.primary.set_mode(Mode::Up);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Up));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        pool.active(),
        Side::Mirror,
        "manual failback must not move back"
    );
    pool.switch_over(Side::Primary).unwrap();
    assert_eq!(pool.get().unwrap().server, "primary");
}

#[test]
fn automatic_failback_returns_after_the_primary_is_healthy_for_a_while() {
    let p = pair();
    let after = Duration::from_millis(300);
    let pool = build(&p, builder(&p).failback(Failback::Automatic { after }));
    assert!(both_up(&pool));
    p.primary.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    p.primary.set_mode(Mode::Up);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Up));
    let up_at = Instant::now();
    assert!(wait_until(LONG, || pool.active() == Side::Primary));
    assert!(
        up_at.elapsed() >= after - Duration::from_millis(50),
        "failed back after only {:?}",
        up_at.elapsed()
    );
    assert_eq!(p.events.count("switch mirror->primary Failback"), 1);
}

#[test]
fn a_flapping_primary_with_automatic_failback_does_not_ping_pong() {
    let p = pair();
    let pool = build(
        &p,
        builder(&p)
            .failback(Failback::Automatic {
                after: Duration::from_millis(400),
            })
            .min_switch_interval(Duration::from_millis(300)),
    );
    assert!(both_up(&pool));
    // The primary answers for 100 ms, then fails for 100 ms, over and over.
    let stop = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < stop {
        p.primary.set_mode(Mode::Refuse);
        thread::sleep(Duration::from_millis(100));
        p.primary.set_mode(Mode::Up);
        thread::sleep(Duration::from_millis(100));
    }
    // One failover at most; never back to the flapping primary.
    assert_eq!(pool.status().switches, 1, "{:?}", p.events.lines());
    assert_eq!(pool.active(), Side::Mirror);
}

#[test]
fn drain_closes_idle_at_once_and_stale_checked_out_on_return() {
    let p = pair();
    let pool = build(&p, builder(&p).min_idle(3).max_size(4));
    assert!(both_up(&pool));
    assert!(wait_until(LONG, || pool.status().primary.idle >= 3));
    let held = pool.get().unwrap();
    assert_eq!(held.server, "primary");
    // The checkout topped the idle list back up to min_idle.
    assert!(wait_until(LONG, || pool.status().primary.idle == 3));
    let before = pool.status().primary;
    let first_new_id = p.primary.next_id();
    pool.switch_over(Side::Mirror).unwrap();
    // Idle primary connections are closed at once; the held one is stale until returned.
    let after = pool.status().primary;
    assert_eq!(after.closed, before.closed + u64::from(before.idle));
    assert_eq!(after.stale, 1);
    assert!(
        p.events.count("drain primary") == 0,
        "drain cannot finish while one is held"
    );
    let closed_before_return = after.closed;
    drop(held);
    let s = pool.status().primary;
    assert_eq!(s.stale, 0);
    assert!(
        s.closed > closed_before_return,
        "stale connection went back to the idle list"
    );
    assert!(
        wait_until(LONG, || p.events.count("drain primary 4") == 1),
        "{:?}",
        p.events.lines()
    );
    // Nothing from before the switch is ever handed out again.
    for _ in 0..20 {
        assert_eq!(pool.get().unwrap().server, "mirror");
    }
    for _ in 0..8 {
        let c = pool.get_from(Side::Primary).unwrap();
        assert!(
            c.id >= first_new_id,
            "connection {} predates the switch",
            c.id
        );
    }
}

#[test]
fn callers_blocked_in_get_during_a_switch_are_served_by_the_new_side() {
    let p = pair();
    let pool = build(&p, builder(&p).max_size(2).min_idle(2));
    assert!(both_up(&pool));
    // Saturate the primary so callers must wait.
    let a = pool.get().unwrap();
    let b = pool.get().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            let served = served.clone();
            thread::spawn(move || {
                let c = pool
                    .get_timeout(Duration::from_secs(5))
                    .expect("served during the switch");
                assert_eq!(c.server, "mirror");
                served.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            })
        })
        .collect();
    assert!(wait_until(LONG, || pool.status().primary.waiters >= 4));
    p.primary.set_mode(Mode::Refuse);
    for h in handles {
        h.join().expect("no caller failed");
    }
    assert_eq!(served.load(Ordering::SeqCst), 8);
    drop((a, b));
}

#[test]
fn a_refused_connect_is_seen_at_once_and_callers_wait_only_for_the_switch() {
    let p = pair();
    // Heartbeats slow: detection must come from the callers' fast path.
    let pool = build(
        &p,
        builder(&p)
            .heartbeat_interval(Duration::from_secs(5))
            .min_idle(0)
            .test_on_check_out(true)
            .validation_window(Duration::from_millis(1)),
    );
    assert!(both_up(&pool));
    drop(pool.get().unwrap());
    p.primary.set_mode(Mode::Refuse);
    p.primary.break_connections();
    thread::sleep(Duration::from_millis(5)); // past the validation window
    let started = Instant::now();
    let conn = pool
        .get_timeout(Duration::from_secs(30))
        .expect("served by the mirror");
    assert_eq!(conn.server, "mirror");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited {:?}",
        started.elapsed()
    );
}

#[test]
fn reporting_a_lost_connection_closes_it_and_triggers_a_probe_now() {
    let p = pair();
    let pool = build(
        &p,
        builder(&p)
            .heartbeat_interval(Duration::from_secs(5))
            .min_idle(0),
    );
    assert!(both_up(&pool));
    let mut conn = pool.get().unwrap();
    let id = conn.id;
    p.primary.set_mode(Mode::Refuse);
    let err = Manager(p.primary.clone()).connect().unwrap_err();
    assert_eq!(
        PooledConnection::report(&mut conn, &err),
        mirrorpool::backend::Fault::ConnectionLost
    );
    drop(conn);
    // The probe runs now, not in 5 s: the primary is down and writers move within a second.
    assert!(wait_until(Duration::from_secs(2), || pool.active() == Side::Mirror));
    p.primary.set_mode(Mode::Up);
    pool.probe_now();
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Up));
    let c = pool.get_from(Side::Primary).unwrap();
    assert_ne!(c.id, id, "a reported connection was reused");
}

#[test]
fn a_slow_server_whose_heartbeats_answer_late_is_not_failed_over_from() {
    let p = pair();
    let pool = build(&p, builder(&p).heartbeat_timeout(Duration::from_millis(50)));
    assert!(both_up(&pool));
    // Every heartbeat takes twice the timeout, but answers.
    p.primary.set_probe_delay(Duration::from_millis(100));
    thread::sleep(Duration::from_secs(2));
    let s = pool.status();
    assert_eq!(s.switches, 0, "{:?}", p.events.lines());
    assert_eq!(s.active, Side::Primary);
    assert_ne!(s.primary.health, Health::Down, "{:?}", p.events.lines());
    assert!(
        p.events.count("hbfail primary") >= 2,
        "the timeouts were seen"
    );
    // A hung one still is: no answers at all.
    p.primary.set_probe_delay(Duration::ZERO);
    p.primary.set_hang_probes(true);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    p.primary.set_hang_probes(false);
}

#[test]
fn a_hung_heartbeat_does_not_delay_get() {
    let p = pair();
    let pool = build(&p, builder(&p).failure_threshold(1_000));
    assert!(both_up(&pool));
    p.primary.set_hang_probes(true);
    thread::sleep(Duration::from_millis(200));
    for _ in 0..50 {
        let started = Instant::now();
        let c = pool.get().unwrap();
        assert_eq!(c.server, "primary");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "get took {:?}",
            started.elapsed()
        );
    }
    assert!(pool.status().primary.consecutive_failures >= 1);
    p.primary.set_hang_probes(false);
}

#[test]
fn a_hung_side_is_detected_within_threshold_times_interval_plus_timeout() {
    let p = pair();
    let interval = Duration::from_millis(20);
    let timeout = Duration::from_millis(50);
    let pool = build(
        &p,
        builder(&p)
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout),
    );
    assert!(both_up(&pool));
    let hung_at = Instant::now();
    p.primary.set_mode(Mode::Hang);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    let took = hung_at.elapsed();
    // threshold × (interval + timeout) = 210 ms; allow a busy machine its slack.
    assert!(
        took < 3 * (interval + timeout) + Duration::from_millis(800),
        "took {took:?}"
    );
    assert!(p
        .events
        .lines()
        .iter()
        .any(|l| l.starts_with("hbfail primary") && l.ends_with("timeout=true")));
    p.primary.set_mode(Mode::Up);
}

#[test]
fn bad_configuration_is_a_typed_error_not_a_panic() {
    let p = pair();
    let cases: Vec<(mirrorpool::Builder<Manager>, &str)> = vec![
        (MirrorPool::builder().max_size(0), "max_size"),
        (MirrorPool::builder().max_size(2).min_idle(3), "min_idle"),
        (
            MirrorPool::builder().max_size(2).mirror_min_idle(3),
            "mirror_min_idle",
        ),
        (
            MirrorPool::builder().connection_timeout(Duration::ZERO),
            "connection_timeout",
        ),
        (
            MirrorPool::builder().heartbeat_interval(Duration::ZERO),
            "heartbeat_interval",
        ),
        (
            MirrorPool::builder().heartbeat_timeout(Duration::ZERO),
            "heartbeat_timeout",
        ),
        (
            MirrorPool::builder().failure_threshold(0),
            "failure_threshold",
        ),
        (
            MirrorPool::builder().idle_timeout(Some(Duration::ZERO)),
            "idle_timeout",
        ),
        (
            MirrorPool::builder().max_lifetime(Some(Duration::ZERO)),
            "max_lifetime",
        ),
        (
            MirrorPool::builder().failback(Failback::Automatic {
                after: Duration::ZERO,
            }),
            "failback",
        ),
    ];
    for (b, option) in cases {
        match b.build(Manager(p.primary.clone()), Manager(p.mirror.clone())) {
            Err(e @ BuildError::InvalidConfig { .. }) => {
                assert!(e.to_string().contains(option), "{e} should name {option}")
            }
            other => panic!("{option}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[test]
fn with_both_sides_down_get_names_both_and_the_pool_recovers_by_itself() {
    let p = pair();
    let pool = build(&p, builder(&p));
    assert!(both_up(&pool));
    p.primary.set_mode(Mode::Refuse);
    p.mirror.set_mode(Mode::Refuse);
    p.primary.break_connections();
    p.mirror.break_connections();
    assert!(wait_until(LONG, || {
        let s = pool.status();
        s.primary.health == Health::Down && s.mirror.health == Health::Down
    }));
    let started = Instant::now();
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(290));
    let msg = err.to_string();
    assert!(msg.contains("both sides are down"), "{msg}");
    assert!(
        msg.contains("primary is down") && msg.contains("mirror is down"),
        "{msg}"
    );
    assert!(msg.contains("connection refused"), "cause missing: {msg}");
    // Every concurrent waiter sees the cause, not a bare timeout.
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.get_timeout(Duration::from_millis(200))
                    .unwrap_err()
                    .to_string()
            })
        })
        .collect();
    for w in waiters {
        assert!(w.join().unwrap().contains("connection refused"));
    }
    p.mirror.set_mode(Mode::Up);
    let c = pool
        .get_timeout(Duration::from_secs(5))
        .expect("recovers when the mirror returns");
    assert_eq!(c.server, "mirror");
}

#[test]
fn a_connection_dropped_during_a_panic_is_closed_not_returned() {
    let p = pair();
    let pool = build(&p, builder(&p).min_idle(0));
    assert!(both_up(&pool));
    let id = {
        let pool = pool.clone();
        thread::spawn(move || {
            let c = pool.get().unwrap();
            let id = c.id;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _c = c;
                panic!("mid-transaction");
            }));
            assert!(r.is_err());
            id
        })
        .join()
        .unwrap()
    };
    for _ in 0..10 {
        assert_ne!(pool.get().unwrap().id, id);
    }
}

#[test]
fn validation_is_skipped_within_the_window_and_done_after_it() {
    let p = pair();
    let pool = build(
        &p,
        builder(&p)
            .min_idle(0)
            .max_size(1)
            .test_on_check_out(true)
            .validation_window(Duration::from_millis(200)),
    );
    assert!(both_up(&pool));
    drop(pool.get().unwrap());
    let before = p.primary.validations();
    for _ in 0..20 {
        drop(pool.get().unwrap());
    }
    // Heartbeats use their own path (the scripted heartbeat does not validate).
    assert_eq!(
        p.primary.validations(),
        before,
        "validated inside the window"
    );
    thread::sleep(Duration::from_millis(300));
    drop(pool.get().unwrap());
    assert_eq!(
        p.primary.validations(),
        before + 1,
        "not validated after the window"
    );
}

#[test]
fn get_from_reaches_a_side_explicitly_and_fails_fast_when_it_is_down() {
    let p = pair();
    let pool = build(&p, builder(&p));
    assert!(both_up(&pool));
    assert_eq!(pool.get_from(Side::Mirror).unwrap().server, "mirror");
    p.mirror.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.status().mirror.health == Health::Down));
    let started = Instant::now();
    match pool.get_from(Side::Mirror) {
        Err(GetError::SideDown {
            side: Side::Mirror,
            cause,
        }) => {
            assert!(cause.unwrap().chain().contains("connection refused"))
        }
        other => panic!("expected SideDown, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    // Mirror down while the primary is healthy: no switch.
    assert_eq!(pool.active(), Side::Primary);
    assert_eq!(pool.status().switches, 0);
}

#[test]
fn try_get_never_waits() {
    let p = pair();
    let pool = build(&p, builder(&p).max_size(1).min_idle(1));
    assert!(wait_until(LONG, || pool.status().primary.idle == 1));
    let c = pool.try_get().expect("an idle connection");
    let started = Instant::now();
    assert!(pool.try_get().is_none());
    assert!(started.elapsed() < Duration::from_millis(50));
    drop(c);
    assert!(pool.try_get().is_some());
}

#[test]
fn many_threads_with_switches_never_exceed_max_size_nor_get_the_wrong_side() {
    let p = pair();
    let max = 4u32;
    // Generous heartbeat bounds: this test is about routing and limits, not detection, and a
    // starved machine must not mark a side down under it.
    let pool = build(
        &p,
        builder(&p)
            .max_size(max)
            .min_idle(2)
            .mirror_min_idle(2)
            .heartbeat_timeout(Duration::from_secs(2))
            .failure_threshold(10),
    );
    assert!(both_up(&pool));
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..12)
        .map(|i| {
            let (pool, stop, wrong, ops) = (pool.clone(), stop.clone(), wrong.clone(), ops.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 200_000 {
                    n += 1;
                    if i % 4 == 0 {
                        // Explicit side: must be exactly that side.
                        let side = if n % 2 == 0 {
                            Side::Primary
                        } else {
                            Side::Mirror
                        };
                        if let Ok(c) = pool.get_from_timeout(side, Duration::from_secs(5)) {
                            if PooledConnection::side(&c) != side || c.server != side.as_str() {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        // The pool counts a switch before it changes the route: reading the
                        // count first (and last) makes every route change between the two
                        // reads show in the difference.
                        let switches_before = pool.status().switches;
                        let before = pool.active();
                        let c = pool
                            .get_timeout(Duration::from_secs(5))
                            .expect("get during switches");
                        let after = pool.active();
                        let switches_after = pool.status().switches;
                        // The connection's server must match the side it claims, and that side
                        // must have been active around the call (unambiguous only if at most one
                        // switch happened meanwhile).
                        if c.server != PooledConnection::side(&c).as_str() {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        if switches_after - switches_before <= 1
                            && PooledConnection::side(&c) != before
                            && PooledConnection::side(&c) != after
                        {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let monitor = {
        let (pool, stop, p_open, m_open) = (
            pool.clone(),
            stop.clone(),
            p.primary.clone(),
            p.mirror.clone(),
        );
        thread::spawn(move || {
            let mut max_seen = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let s = pool.status();
                max_seen = max_seen
                    .max(s.primary.connections)
                    .max(s.mirror.connections);
                // Server-side counts include the heartbeat connection (one per side).
                assert!(p_open.open_connections() <= u64::from(max) + 1 + 8);
                assert!(m_open.open_connections() <= u64::from(max) + 1 + 8);
                thread::sleep(Duration::from_millis(1));
            }
            max_seen
        })
    };
    for i in 0..10 {
        thread::sleep(Duration::from_millis(60));
        let to = if i % 2 == 0 {
            Side::Mirror
        } else {
            Side::Primary
        };
        pool.switch_over(to).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let max_seen = monitor.join().expect("monitor");
    assert!(
        max_seen <= max,
        "a side had {max_seen} connections, max is {max}"
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    assert!(ops.load(Ordering::Relaxed) > 1000);
    assert_eq!(pool.status().switches, 10);
}

#[test]
fn the_pool_is_clone_send_and_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<MirrorPool<Manager>>();
    fn assert_send<T: Send>() {}
    assert_send::<mirrorpool::PooledConnection<Manager>>();
    assert_send::<GetError>();
    fn assert_sync<T: Send + Sync + std::error::Error + 'static>() {}
    assert_sync::<GetError>();
    assert_sync::<BuildError>();
    assert_sync::<SwitchError>();
}

#[test]
fn the_mirror_keeps_warm_connections_so_a_switch_needs_no_connect() {
    let p = pair();
    // max_size == mirror_min_idle: once the warm connections are open the pool may not open
    // another, so every get after the switch must be served by one made before it.
    let pool = build(&p, builder(&p).max_size(3).min_idle(1).mirror_min_idle(3));
    assert!(both_up(&pool));
    assert!(wait_until(LONG, || pool.status().mirror.idle == 3));
    // Ids are handed out in connect order (the heartbeat's connection included), so a
    // connection with an id below this one existed before the switch.
    let born_after_switch = p.mirror.next_id();
    pool.switch_over(Side::Mirror).unwrap();
    let held: Vec<_> = (0..3)
        .map(|_| pool.get_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    assert!(held.iter().all(|c| c.server == "mirror"));
    let ids: Vec<u64> = held.iter().map(|c| c.id).collect();
    assert!(
        ids.iter().all(|&id| id < born_after_switch),
        "a get after the switch used a new connection: ids {ids:?}, first new id {born_after_switch}"
    );
}

#[test]
fn errors_keep_their_cause_chain() {
    use std::error::Error as _;
    let p = pair();
    p.primary.set_mode(Mode::Refuse);
    p.mirror.set_mode(Mode::Refuse);
    let pool = build(&p, builder(&p).min_idle(0).mirror_min_idle(0));
    let err = pool
        .get_from_timeout(Side::Primary, Duration::from_millis(200))
        .unwrap_err();
    // Error -> captured driver error -> its io::Error source.
    let mut chain = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    assert!(
        chain.iter().any(|m| m == "error talking to primary"),
        "{chain:?}"
    );
    assert_eq!(
        chain.last().map(String::as_str),
        Some("connection refused"),
        "{chain:?}"
    );
}
