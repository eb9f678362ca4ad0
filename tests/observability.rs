//! What operators are told: leak detection, slow checkouts, the status report. A recording
//! logger is installed for this test binary alone.

mod common;

use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use common::{wait_until, Manager, Mode, Server};
use mirrorpool::{MirrorPool, Side};
use parking_lot::Mutex;

struct Recording(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Recording {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("mirrorpool")
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            self.0.lock().push((r.level(), r.args().to_string()));
        }
    }
    fn flush(&self) {}
}

fn logs() -> &'static Recording {
    static LOGS: OnceLock<&'static Recording> = OnceLock::new();
    LOGS.get_or_init(|| {
        let r: &'static Recording = Box::leak(Box::new(Recording(Mutex::new(Vec::new()))));
        log::set_logger(r).expect("the only logger of this binary");
        log::set_max_level(log::LevelFilter::Trace);
        r
    })
}

fn warnings_containing(text: &str) -> Vec<String> {
    logs()
        .0
        .lock()
        .iter()
        .filter(|(l, m)| *l == log::Level::Warn && m.contains(text))
        .map(|(_, m)| m.clone())
        .collect()
}

fn builder() -> mirrorpool::Builder<Manager> {
    MirrorPool::builder()
        .max_size(1)
        .heartbeat_interval(Duration::from_millis(20))
        .heartbeat_timeout(Duration::from_millis(50))
        .suspect_interval(Duration::from_millis(5))
        .backend(common::ScriptedBackend)
}

#[test]
fn a_connection_held_past_the_leak_threshold_is_logged_once_with_where_it_was_taken() {
    logs();
    let (p, m) = (Server::new("primary"), Server::new("mirror"));
    let pool = builder()
        .leak_detection_threshold(Some(Duration::from_millis(100)))
        .build(Manager(p), Manager(m))
        .unwrap();
    let held = pool.get().unwrap();
    let id = mirrorpool::PooledConnection::id(&held);
    let needle = format!("primary connection {id} has been checked out for");
    assert!(wait_until(Duration::from_secs(5), || !warnings_containing(
        &needle
    )
    .is_empty()));
    thread::sleep(Duration::from_millis(200));
    let reported = warnings_containing(&needle);
    assert_eq!(reported.len(), 1, "once: {reported:?}");
    assert!(
        reported[0].contains("a_connection_held_past_the_leak_threshold"),
        "the backtrace names the taker: {}",
        reported[0]
    );
    drop(held);
    // The same connection checked out again and returned in time is not reported again.
    drop(pool.get().unwrap());
    thread::sleep(Duration::from_millis(250));
    assert_eq!(warnings_containing(&needle).len(), 1);
}

#[test]
fn a_get_that_waited_past_the_slow_threshold_is_logged() {
    logs();
    let (p, m) = (Server::new("primary"), Server::new("mirror"));
    let pool = builder()
        .slow_checkout_threshold(Some(Duration::from_millis(50)))
        .build(Manager(p.clone()), Manager(m))
        .unwrap();
    let held = pool.get().unwrap();
    let waiter = {
        let pool = pool.clone();
        thread::spawn(move || pool.get().map(|c| c.server))
    };
    thread::sleep(Duration::from_millis(150));
    drop(held);
    assert_eq!(waiter.join().unwrap().unwrap(), "primary");
    assert_eq!(
        warnings_containing("slow_checkout_threshold 50ms").len(),
        1,
        "{:?}",
        logs().0.lock()
    );
    p.set_mode(Mode::Refuse);
    assert!(wait_until(Duration::from_secs(10), || pool.active() == Side::Mirror));
    // The readable status names both sides.
    let text = pool.status().to_string();
    assert!(text.starts_with("writers: mirror"), "{text}");
    assert!(text.contains("\n  primary: down"), "{text}");
}
