//! No thread of a dropped pool outlives it, whatever the peer does. Alone in its own test
//! binary (its own process), because it counts the process's threads.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{mirrorpool_threads, SilentServer};

#[test]
fn a_pool_on_servers_that_never_answer_leaves_no_thread_behind() {
    let (p, m) = (SilentServer::start(), SilentServer::start());
    let connect_timeout = Duration::from_secs(1);
    let pool = mirrorpool::postgres::builder()
        .max_size(4)
        .min_idle(3)
        .mirror_min_idle(3)
        .connection_timeout(Duration::from_millis(300))
        .build(p.manager(connect_timeout), m.manager(connect_timeout))
        .expect("valid configuration");
    // Connects and heartbeats are now stuck in start-up exchanges that never get an answer.
    thread::sleep(Duration::from_millis(700));
    assert!(pool.get().is_err());
    assert!(!mirrorpool_threads().is_empty());
    let dropped = Instant::now();
    drop(pool);
    let bound = connect_timeout + Duration::from_secs(3);
    let mut left = mirrorpool_threads();
    while !left.is_empty() && dropped.elapsed() < bound {
        thread::sleep(Duration::from_millis(50));
        left = mirrorpool_threads();
    }
    assert!(
        left.is_empty(),
        "{} s after the pool was dropped these threads remain: {left:?}",
        bound.as_secs()
    );
    eprintln!(
        "all mirrorpool threads ended {:?} after the drop",
        dropped.elapsed()
    );
}
