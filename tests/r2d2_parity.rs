//! What users coming from r2d2 expect: per-connection events under r2d2's names, extensions
//! on the guard, several handlers, and a full (but healthy) server that is not failed over
//! from.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{wait_until, Manager, Mode, Recorder, ScriptedBackend, Server};
use mirrorpool::event::{
    AcquireEvent, CheckinEvent, CheckoutEvent, Event, ReleaseEvent, TimeoutEvent,
};
use mirrorpool::{Builder, HandleEvent, Health, MirrorPool, PooledConnection, Side};
use parking_lot::Mutex;

const LONG: Duration = Duration::from_secs(10);

fn builder(events: &Recorder) -> Builder<Manager> {
    MirrorPool::builder()
        .max_size(3)
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

fn both_up(pool: &MirrorPool<Manager>) -> bool {
    wait_until(LONG, || {
        let s = pool.status();
        s.primary.health == Health::Up && s.mirror.health == Health::Up
    })
}

/// Records per-connection events through r2d2's method names.
#[derive(Debug, Default, Clone)]
struct R2d2Style(Arc<Mutex<Vec<String>>>);

impl HandleEvent for R2d2Style {
    fn handle_acquire(&self, e: AcquireEvent) {
        self.0.lock().push(format!("acquire {}", e.connection_id()));
    }
    fn handle_release(&self, e: ReleaseEvent) {
        self.0.lock().push(format!("release {}", e.connection_id()));
    }
    fn handle_checkout(&self, e: CheckoutEvent) {
        self.0
            .lock()
            .push(format!("checkout {} {:?}", e.connection_id(), e.duration()));
    }
    fn handle_checkin(&self, e: CheckinEvent) {
        self.0.lock().push(format!(
            "checkin {} {}",
            e.connection_id(),
            e.duration() >= Duration::from_millis(30)
        ));
    }
    fn handle_timeout(&self, e: TimeoutEvent) {
        self.0.lock().push(format!("timeout {:?}", e.timeout()));
    }
}

/// Sees every event through the catch-all method.
#[derive(Debug, Default, Clone)]
struct CatchAll(Arc<Mutex<Vec<String>>>);

impl HandleEvent for CatchAll {
    fn handle(&self, event: Event) {
        self.0.lock().push(event.to_string());
    }
}

#[test]
fn per_connection_events_arrive_under_r2d2_names_at_every_handler() {
    let (p, m) = servers();
    let r2d2 = R2d2Style::default();
    let all = CatchAll::default();
    let pool = builder(&Recorder::default())
        .max_size(1)
        .event_handler(Box::new(r2d2.clone()))
        .event_handler(Box::new(all.clone()))
        .build(Manager(p.clone()), Manager(m.clone()))
        .unwrap();
    assert!(both_up(&pool));
    let conn = pool.get().unwrap();
    let id = PooledConnection::id(&conn);
    thread::sleep(Duration::from_millis(40));
    // The only slot is taken: a second caller times out.
    let err = pool.get_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_timeout());
    drop(conn);
    drop(pool);
    // Connections are closed (and released) on a background thread.
    let release = format!("release {id}");
    assert!(wait_until(LONG, || r2d2.0.lock().contains(&release)));
    let lines = r2d2.0.lock().clone();
    for want in [
        format!("acquire {id}"),
        format!("checkin {id} true"),
        format!("release {id}"),
        "timeout 50ms".to_string(),
    ] {
        assert!(lines.contains(&want), "{want} missing from {lines:?}");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&format!("checkout {id} "))));
    let all = all.0.lock().clone();
    assert!(
        all.iter()
            .any(|l| l.starts_with("checked out primary connection")),
        "{all:?}"
    );
    assert!(all.iter().any(|l| l == "the primary is up"), "{all:?}");
    assert!(
        all.iter().any(|l| l.contains("timed out after 50ms")),
        "{all:?}"
    );
}

#[test]
fn extensions_live_as_long_as_their_connection() {
    let (p, m) = servers();
    let pool = builder(&Recorder::default())
        .max_size(1)
        .build(Manager(p), Manager(m))
        .unwrap();
    let mut conn = pool.get().unwrap();
    let id = PooledConnection::id(&conn);
    assert!(PooledConnection::extensions(&conn)
        .get::<Vec<u32>>()
        .is_none());
    PooledConnection::extensions_mut(&mut conn).insert(vec![1u32, 2]);
    drop(conn);
    let mut again = pool.get().unwrap();
    assert_eq!(PooledConnection::id(&again), id, "the same connection");
    assert_eq!(
        PooledConnection::extensions(&again).get::<Vec<u32>>(),
        Some(&vec![1, 2])
    );
    // A new connection starts empty.
    PooledConnection::mark_broken(&mut again);
    drop(again);
    let fresh = pool.get().unwrap();
    assert_ne!(PooledConnection::id(&fresh), id);
    assert!(PooledConnection::extensions(&fresh).is_empty());
}

#[test]
fn a_primary_that_refuses_new_connections_but_answers_is_saturated_not_down() {
    for idle in [1, 0] {
        let (p, m) = servers();
        let events = Recorder::default();
        let pool = builder(&events)
            .min_idle(idle)
            .build(Manager(p.clone()), Manager(m.clone()))
            .unwrap();
        assert!(both_up(&pool));
        let held = pool.get().unwrap();
        assert!(wait_until(LONG, || pool.status().primary.idle >= idle));
        // At its connection limit: new connects fail, open connections work. The heartbeat
        // loses its connection and cannot open another.
        p.set_full(true);
        p.fail_next_probe();
        assert!(
            wait_until(LONG, || pool.status().primary.saturated),
            "min_idle {idle}: {:?}",
            events.lines()
        );
        thread::sleep(Duration::from_millis(300));
        let s = pool.status();
        assert_eq!(s.primary.health, Health::Up, "min_idle {idle}");
        assert_eq!(s.active, Side::Primary);
        assert!(s.serving());
        assert_eq!(events.count("switch"), 0, "{:?}", events.lines());
        assert_eq!(events.count("saturated primary true"), 1);
        // Writers are still served by the connections the pool has.
        drop(held);
        assert_eq!(pool.get().unwrap().server, "primary");
        p.set_full(false);
        assert!(wait_until(LONG, || !pool.status().primary.saturated));
        assert_eq!(events.count("saturated primary false"), 1);
    }
}

#[test]
fn a_primary_refusing_connects_with_no_connection_to_answer_on_is_still_failed_over_from() {
    let (p, m) = servers();
    let events = Recorder::default();
    let pool = builder(&events)
        .min_idle(0)
        .build(Manager(p.clone()), Manager(m.clone()))
        .unwrap();
    assert!(both_up(&pool));
    // A refusal that is not "too many connections", and nothing open to answer on: down.
    p.set_mode(Mode::Refuse);
    assert!(wait_until(LONG, || pool.active() == Side::Mirror));
    assert!(!pool.status().primary.saturated);
}

#[test]
fn the_heartbeat_connection_is_recycled_after_max_lifetime_like_pool_connections() {
    for lifetime in [None, Some(Duration::from_millis(100))] {
        let (p, m) = servers();
        let pool = builder(&Recorder::default())
            .min_idle(0)
            .mirror_min_idle(0)
            .max_lifetime(lifetime)
            .build(Manager(p.clone()), Manager(m.clone()))
            .unwrap();
        assert!(both_up(&pool));
        let before = p.connects();
        thread::sleep(Duration::from_millis(700));
        let reconnects = p.connects() - before;
        match lifetime {
            None => assert_eq!(reconnects, 0, "a heartbeat connection lives on"),
            Some(_) => assert!(reconnects >= 3, "only {reconnects} reconnects"),
        }
        assert!(
            p.open_connections() <= 1,
            "old heartbeat connections are closed"
        );
    }
}
