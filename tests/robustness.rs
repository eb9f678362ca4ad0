//! The pool survives its users: panicking managers, backends and event handlers, extreme
//! settings, and sides of unknown role. Scripted in-memory servers give the exact timing.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Manager, Mode, Recorder, RoleAwareBackend, ScriptedBackend, Server};
use mirrorpool::backend::Role;
use mirrorpool::event::SwitchEvent;
use mirrorpool::{
    BuildError, Builder, CustomizeConnection, Failback, GetError, HandleEvent, Health, MirrorPool,
    PooledConnection, Side,
};
use proptest::prelude::*;

const LONG: Duration = Duration::from_secs(10);

fn builder(events: &Recorder) -> Builder<Manager> {
    MirrorPool::builder()
        .max_size(2)
        .min_idle(1)
        .mirror_min_idle(1)
        .heartbeat_interval(Duration::from_millis(20))
        .heartbeat_timeout(Duration::from_millis(50))
        .suspect_interval(Duration::from_millis(5))
        .min_switch_interval(Duration::ZERO)
        .connection_timeout(Duration::from_secs(5))
        .event_handler(Box::new(events.clone()))
        .backend(ScriptedBackend)
}

fn servers() -> (Arc<Server>, Arc<Server>) {
    (Server::new("primary"), Server::new("mirror"))
}

fn build(b: Builder<Manager>, p: &Arc<Server>, m: &Arc<Server>) -> MirrorPool<Manager> {
    b.build(Manager(p.clone()), Manager(m.clone()))
        .expect("valid configuration")
}

fn both_up(pool: &MirrorPool<Manager>) -> bool {
    wait_until(LONG, || {
        let s = pool.status();
        s.primary.health == Health::Up && s.mirror.health == Health::Up
    })
}

/// Panics on every event it gets, counting them.
#[derive(Debug, Default, Clone)]
struct PanickingHandler(Arc<AtomicU64>);

impl HandleEvent for PanickingHandler {
    fn handle_switch(&self, _: SwitchEvent) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a user's handler panicked");
    }
    fn handle_side_up(&self, _: mirrorpool::event::SideUpEvent) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a user's handler panicked");
    }
    fn handle_side_down(&self, _: mirrorpool::event::SideDownEvent) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a user's handler panicked");
    }
}

#[test]
fn a_panicking_event_handler_does_not_stop_heartbeats_or_failover() {
    let (p, m) = servers();
    let handler = PanickingHandler::default();
    let pool = build(
        builder(&Recorder::default()).event_handler(Box::new(handler.clone())),
        &p,
        &m,
    );
    assert!(both_up(&pool));
    assert!(
        handler.0.load(Ordering::SeqCst) >= 2,
        "the handler was called"
    );
    let before = pool.status().primary.last_heartbeat;
    p.set_mode(Mode::Refuse);
    assert!(
        wait_until(LONG, || pool.active() == Side::Mirror),
        "failover still happens"
    );
    assert_eq!(pool.get().unwrap().server, "mirror");
    let status = pool.status();
    assert!(status.monitor_running);
    assert!(status.primary.last_heartbeat > before, "heartbeats go on");
    assert_eq!(
        status.switches, 1,
        "the switch is recorded though its handler panicked"
    );
}

#[test]
fn a_panicking_manager_connect_loses_no_slot_and_the_pool_recovers() {
    let (p, m) = servers();
    let pool = build(
        builder(&Recorder::default())
            .max_size(1)
            .min_idle(0)
            .mirror_min_idle(0),
        &p,
        &m,
    );
    // Both managers panic (the heartbeat uses connect too, so a primary-only panic would
    // simply fail over).
    p.set_panics(true, false, false, false);
    m.set_panics(true, false, false, false);
    for _ in 0..3 {
        let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
        assert!(
            err.to_string().contains("panicked"),
            "the error says the manager panicked: {err}"
        );
    }
    let s = pool.status();
    assert_eq!(
        (s.primary.connections, s.primary.pending),
        (0, 0),
        "no slot is held by a panicked connect"
    );
    assert_eq!((s.mirror.connections, s.mirror.pending), (0, 0));
    p.set_panics(false, false, false, false);
    m.set_panics(false, false, false, false);
    let conn = pool
        .get_timeout(Duration::from_secs(5))
        .expect("max_size 1 is usable again");
    assert_eq!(pool.status().side(PooledConnection::side(&conn)).in_use, 1);
}

#[test]
fn a_panicking_is_valid_or_has_broken_loses_no_slot() {
    let (p, m) = servers();
    let pool = build(
        builder(&Recorder::default())
            .max_size(1)
            .min_idle(0)
            .mirror_min_idle(0)
            .validation_window(Duration::from_millis(1)),
        &p,
        &m,
    );
    drop(pool.get().unwrap());
    // Idle long enough for the next checkout to validate it; is_valid panics.
    thread::sleep(Duration::from_millis(100));
    p.set_panics(false, true, false, false);
    let _ = pool.get_timeout(Duration::from_millis(200));
    p.set_panics(false, false, true, false);
    // has_broken panics on return: the connection is closed, its slot freed.
    if let Ok(conn) = pool.get_timeout(Duration::from_secs(2)) {
        drop(conn);
    }
    p.set_panics(false, false, false, false);
    assert!(wait_until(LONG, || {
        let s = pool.status().primary;
        s.connections == s.idle + s.pending
    }));
    let conn = pool
        .get_timeout(Duration::from_secs(5))
        .expect("the only slot is usable again");
    assert_eq!(conn.server, "primary");
    assert_eq!(pool.status().primary.in_use, 1);
}

#[test]
fn a_panicking_heartbeat_counts_as_a_failed_one() {
    let (p, m) = servers();
    let pool = build(builder(&Recorder::default()), &p, &m);
    assert!(both_up(&pool));
    p.set_panics(false, false, false, true);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    // (A heartbeat whose panic takes long to print may time out instead.)
    assert!(wait_until(LONG, || pool
        .status()
        .primary
        .last_error
        .is_some_and(|e| e.chain().contains("the backend panicked"))));
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    p.set_panics(false, false, false, false);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Up));
}

#[test]
fn a_validation_failure_during_a_drain_finishes_the_drain() {
    let (p, m) = servers();
    let events = Recorder::default();
    let pool = build(
        builder(&events)
            .min_idle(1)
            .validation_window(Duration::from_millis(1)),
        &p,
        &m,
    );
    assert!(both_up(&pool));
    drop(pool.get().unwrap());
    thread::sleep(Duration::from_millis(100));
    // A caller takes the idle connection and blocks validating it ...
    p.set_hang_validations(true);
    let getter = {
        let pool = pool.clone();
        thread::spawn(move || pool.get().map(|c| c.server))
    };
    assert!(wait_until(LONG, || p.validations() >= 1
        && pool.status().primary.in_use == 1));
    // ... while the primary is drained, and then the validation fails.
    pool.switch_over(Side::Mirror).unwrap();
    assert_eq!(pool.status().primary.stale, 1);
    p.break_connections();
    p.set_hang_validations(false);
    assert_eq!(getter.join().unwrap().unwrap(), "mirror");
    assert!(
        wait_until(LONG, || pool.status().primary.stale == 0
            && events.count("drain primary") == 1),
        "stale = {}, events = {:?}",
        pool.status().primary.stale,
        events.lines()
    );
}

#[test]
fn writers_are_never_served_by_a_side_whose_role_no_heartbeat_reported() {
    let (p, m) = servers();
    // The app starts while the primary is dead; the mirror is a replica whose heartbeats all
    // answer late (a slow link), so only "late answers" mark it up.
    p.set_mode(Mode::Refuse);
    m.set_role(Role::ReadOnly);
    m.set_probe_delay(Duration::from_millis(120));
    let pool = build(
        builder(&Recorder::default()).backend(RoleAwareBackend),
        &p,
        &m,
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match pool.get_timeout(Duration::from_millis(100)) {
            Ok(conn) => panic!("writer served by the {}", conn.server),
            Err(e) => assert!(e.is_timeout(), "{e}"),
        }
    }
    assert!(
        wait_until(LONG, || pool.status().mirror.health == Health::Up),
        "the mirror's late answers still count as up"
    );
}

#[test]
fn monitor_timings_outside_their_range_are_typed_errors_naming_the_bound() {
    let events = Recorder::default();
    type Set = fn(Builder<Manager>, Duration) -> Builder<Manager>;
    let options: [(&str, Set); 4] = [
        ("heartbeat_interval", |b, d| b.heartbeat_interval(d)),
        ("heartbeat_timeout", |b, d| b.heartbeat_timeout(d)),
        ("suspect_interval", |b, d| b.suspect_interval(d)),
        ("promotion_timeout", |b, d| b.promotion_timeout(d)),
    ];
    for (name, set) in options {
        for bad in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let (p, m) = servers();
            match set(builder(&events), bad).build(Manager(p), Manager(m)) {
                Err(BuildError::InvalidConfig { option, problem }) => {
                    assert_eq!(option, name);
                    assert!(
                        problem.contains("1ms") && problem.contains("3600s"),
                        "{problem}"
                    );
                }
                other => panic!("{name} = {bad:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn the_largest_durations_mean_never_and_do_not_panic() {
    let (p, m) = servers();
    let pool = build(
        builder(&Recorder::default())
            .connection_timeout(Duration::MAX)
            .idle_timeout(Some(Duration::MAX))
            .max_lifetime(Some(Duration::MAX))
            .validation_window(Duration::MAX)
            .min_switch_interval(Duration::MAX)
            .primary_silence_bound(Duration::MAX)
            .failback(Failback::Automatic {
                after: Duration::MAX,
            }),
        &p,
        &m,
    );
    assert!(both_up(&pool));
    assert_eq!(pool.get().unwrap().server, "primary");
    assert_eq!(pool.get_timeout(Duration::MAX).unwrap().server, "primary");
    let held = pool.get().unwrap();
    let other = pool.get().unwrap();
    // Both slots taken: a waiter with no deadline is served when one comes back.
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || pool.get_timeout(Duration::MAX).map(|c| c.server))
    };
    thread::sleep(Duration::from_millis(50));
    drop(held);
    assert_eq!(waiter.join().unwrap().unwrap(), "primary");
    drop(other);
    p.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::MAX),
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        (0u64..200).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any duration for any option: a typed error at build, or a pool that works; never a
    /// panic on any thread (a panic on a pool thread would show up as a dead monitor).
    #[test]
    fn any_duration_for_any_option_never_panics(
        d in proptest::collection::vec(any_duration(), 12),
    ) {
        let (p, m) = servers();
        let built = builder(&Recorder::default())
            .connection_timeout(d[0])
            .idle_timeout(Some(d[1]))
            .max_lifetime(Some(d[2]))
            .validation_window(d[3])
            .heartbeat_interval(d[4])
            .heartbeat_timeout(d[5])
            .suspect_interval(d[6])
            .min_switch_interval(d[7])
            .promotion_timeout(d[8])
            .primary_silence_bound(d[9])
            .failback(Failback::Automatic { after: d[10] })
            .build(Manager(p.clone()), Manager(m));
        match built {
            Err(BuildError::InvalidConfig { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
            Ok(pool) => {
                let _ = pool.get_timeout(d[11].min(Duration::from_millis(100)));
                let _ = pool.get_timeout(Duration::from_millis(20));
                p.set_mode(Mode::Refuse);
                thread::sleep(Duration::from_millis(20));
                let _ = pool.try_get();
                prop_assert!(pool.status().monitor_running);
                prop_assert_eq!(pool.status().monitor_panics, 0);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Customizer {
    acquired: AtomicU64,
    released: AtomicU64,
    fail: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct SharedCustomizer(Arc<Customizer>);

impl CustomizeConnection<common::Conn, common::ScriptError> for SharedCustomizer {
    fn on_acquire(&self, _conn: &mut common::Conn) -> Result<(), common::ScriptError> {
        if self.0.fail.load(Ordering::SeqCst) {
            panic!("a customizer that panics");
        }
        self.0.acquired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn on_release(&self, _conn: common::Conn) {
        self.0.released.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn an_r2d2_customizer_runs_on_every_pool_connection_opened_and_closed() {
    let (p, m) = servers();
    let c = Arc::new(Customizer::default());
    let pool = build(
        builder(&Recorder::default()).connection_customizer(Box::new(SharedCustomizer(c.clone()))),
        &p,
        &m,
    );
    assert!(both_up(&pool));
    let conn = pool.get().unwrap();
    assert!(c.acquired.load(Ordering::SeqCst) >= 1);
    drop(conn);
    // The mirror's warm connection, opened while the customizer still succeeds.
    assert!(wait_until(LONG, || pool.status().mirror.idle >= 1));
    // A customizer failing (here: panicking) in on_acquire fails the connect, clearly.
    c.fail.store(true, Ordering::SeqCst);
    pool.switch_over(Side::Mirror).unwrap();
    let a = pool.get().unwrap();
    let b = pool.get_timeout(Duration::from_millis(300));
    drop(a);
    if let Err(e) = b {
        assert!(e.to_string().contains("panicked"), "{e}");
    }
    c.fail.store(false, Ordering::SeqCst);
    drop(pool);
    // Every connection that entered the pool is given to on_release when the pool closes it
    // (those whose on_acquire failed never entered it; heartbeat ones are not customized).
    assert!(
        wait_until(LONG, || c.released.load(Ordering::SeqCst)
            == c.acquired.load(Ordering::SeqCst)),
        "released {} of {} acquired",
        c.released.load(Ordering::SeqCst),
        c.acquired.load(Ordering::SeqCst)
    );
    assert!(c.released.load(Ordering::SeqCst) >= 2);
}

#[test]
fn close_fails_every_later_get_and_is_closed_says_so() {
    let (p, m) = servers();
    let pool = build(builder(&Recorder::default()), &p, &m);
    let clone = pool.clone();
    assert!(both_up(&pool));
    let held = pool.get().unwrap();
    assert!(!pool.is_closed());
    pool.close();
    assert!(clone.is_closed());
    assert!(matches!(clone.get(), Err(GetError::Closed)));
    drop(held);
    assert!(wait_until(LONG, || p.open_connections()
        + m.open_connections()
        == 0));
}

#[test]
fn max_size_one_alone_is_accepted_and_an_explicit_contradiction_is_not() {
    let (p, m) = servers();
    let pool = MirrorPool::builder()
        .max_size(1)
        .backend(ScriptedBackend)
        .build(Manager(p.clone()), Manager(m.clone()))
        .expect("defaults adapt to max_size");
    assert_eq!((pool.min_idle(), pool.mirror_min_idle()), (1, 1));
    drop(pool);
    let err = MirrorPool::builder()
        .max_size(1)
        .min_idle(2)
        .backend(ScriptedBackend)
        .build(Manager(p), Manager(m))
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::InvalidConfig {
                option: "min_idle",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn build_checked_fails_fast_with_a_typed_error_naming_the_side() {
    // Unreachable mirror: the error names it and carries the connect error.
    let (p, m) = servers();
    m.set_mode(Mode::Refuse);
    let started = Instant::now();
    let err = builder(&Recorder::default())
        .build_checked(Manager(p.clone()), Manager(m.clone()))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4), "fails fast");
    match &err {
        BuildError::Unreachable {
            side: Side::Mirror,
            cause: Some(c),
        } => assert!(c.chain().contains("connection refused"), "{}", c.chain()),
        other => panic!("{other:?}"),
    }
    // A role-aware pool whose "mirror" is a writable primary is not a mirror pool.
    m.set_mode(Mode::Up);
    p.set_role(Role::Writable);
    m.set_role(Role::Writable);
    m.set_epoch(2);
    let err = builder(&Recorder::default())
        .backend(RoleAwareBackend)
        .build_checked(Manager(p.clone()), Manager(m.clone()))
        .unwrap_err();
    assert!(matches!(err, BuildError::NotAMirror { .. }), "{err}");
    // A proper pair passes and serves at once.
    m.set_role(Role::ReadOnly);
    m.set_upstream_streaming(Some(true));
    let pool = builder(&Recorder::default())
        .backend(RoleAwareBackend)
        .build_checked(Manager(p), Manager(m))
        .expect("a healthy pair");
    assert_eq!(pool.get().unwrap().server, "primary");
}

#[test]
fn a_primary_whose_heartbeats_time_out_while_it_serves_callers_is_not_failed_over_from() {
    let (p, m) = servers();
    let events = Recorder::default();
    let pool = build(builder(&events).max_size(4), &p, &m);
    assert!(both_up(&pool));
    // Heartbeats get no answer (a starved or stuck heartbeat session), callers are served.
    p.set_hang_probes(true);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let conn = pool.get().unwrap();
                    assert_eq!(conn.server, "primary");
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(events.count("switch"), 0, "{:?}", events.lines());
    assert_eq!(pool.status().primary.health, Health::Up);
    // Once nobody is served, the same silence is a failure.
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    p.set_hang_probes(false);
}
