//! Shutdown, in a test binary of its own: it counts the process's threads, so no other
//! test's pool may run beside it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Manager, Recorder, ScriptedBackend, Server};
use mirrorpool::{Health, MirrorPool};

const LONG: Duration = Duration::from_secs(10);

struct Pair {
    primary: Arc<Server>,
    mirror: Arc<Server>,
}

#[test]
fn dropping_the_last_handle_stops_the_monitor_and_closes_every_connection() {
    let p = Pair {
        primary: Server::new("primary"),
        mirror: Server::new("mirror"),
    };
    let pool = MirrorPool::builder()
        .min_idle(3)
        .mirror_min_idle(2)
        .heartbeat_interval(Duration::from_millis(20))
        .heartbeat_timeout(Duration::from_millis(50))
        .event_handler(Box::new(Recorder::default()))
        .backend(ScriptedBackend)
        .build(Manager(p.primary.clone()), Manager(p.mirror.clone()))
        .unwrap();
    assert!(wait_until(LONG, || {
        let s = pool.status();
        s.primary.health == Health::Up && s.mirror.health == Health::Up
    }));
    assert!(wait_until(LONG, || p.primary.open_connections() >= 3
        && p.mirror.open_connections() >= 2));
    let clone = pool.clone();
    let held = pool.get().unwrap();
    drop(pool);
    // A clone keeps the pool alive.
    assert!(clone.get_timeout(Duration::from_secs(1)).is_ok());
    let started = Instant::now();
    drop(clone);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        started.elapsed()
    );
    // Idle and heartbeat connections close; the checked-out one closes when returned.
    assert!(
        wait_until(LONG, || p.primary.open_connections() == 1
            && p.mirror.open_connections() == 0),
        "primary {} mirror {}",
        p.primary.open_connections(),
        p.mirror.open_connections()
    );
    drop(held);
    assert!(wait_until(LONG, || p.primary.open_connections() == 0));
    // No monitor, heartbeat or connect thread is left.
    assert!(
        wait_until(LONG, || mirrorpool_threads() == 0),
        "threads left: {}",
        mirrorpool_threads()
    );
}

/// Threads of this process whose name starts with "mirrorpool" (Linux: /proc/self/task).
fn mirrorpool_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .filter(|c| c.starts_with("mirrorpool"))
                .count()
        })
        .unwrap_or(0)
}
