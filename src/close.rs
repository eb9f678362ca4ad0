//! Closing connections off the caller's and the monitor's threads.

use std::thread;

/// Runs `close` on a thread of its own: dropping a client with a request still unanswered
/// (say, after a validation timeout) blocks until the server answers, which a hung server
/// never does. Callers and the monitor must never wait for that. If no thread can be started,
/// the work is dropped on a best-effort basis on this thread (logged).
pub(crate) fn in_background<F: FnOnce() + Send + 'static>(close: F) {
    let spawned = thread::Builder::new()
        .name("mirrorpool-close".into())
        .spawn(close);
    if let Err(e) = spawned {
        log::error!("could not start a thread to close connections ({e}); closing them here");
    }
}
