//! The lifecycle of one database server process, the same for every engine:
//! start (with the engine's readiness check as a closure), SIGKILL, a stop
//! the engine asks for, pause/resume (SIGSTOP/SIGCONT of the server and all
//! its processes) with a guard, restart on the same port and data directory,
//! and a bounded, panic-free teardown on drop.
//!
//! An engine's server type (`PgServer`, `MyServer`) owns a [`ServerProcess`]
//! and adds what is its own: the command line, how to ask whether the server
//! is ready, and its admin client. Helpers for admin calls — a call on a
//! helper thread with a deadline and a bounded poll — live here too, since
//! every engine's client needs them against a hung server.

// Built for every engine; with only some engines enabled, parts are unused.
#![cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::error::TestkitError;
use super::os;

/// How long a polite stop (the engine's stop request or teardown signal)
/// gets before SIGKILL.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a SIGKILLed process gets to disappear.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long processes left over by a killed instance get to exit by
/// themselves before a restart SIGKILLs them.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// Readiness poll interval.
const READY_POLL: Duration = Duration::from_millis(100);
/// How many fresh ports an initial start tries when the port got taken.
const PORT_ATTEMPTS: usize = 5;

/// What describes a server process before it first starts.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    /// The engine, for messages: `"PostgreSQL"`, `"MariaDB"`.
    pub(crate) engine: &'static str,
    /// `"primary"` or `"mirror"`.
    pub(crate) name: &'static str,
    /// The TCP port, fixed for the server's lifetime.
    pub(crate) port: u16,
    /// The data directory; the server and all its processes work in it.
    pub(crate) data_dir: PathBuf,
    /// Where the server's stdout and stderr go.
    pub(crate) log_path: PathBuf,
    /// Deadline for the server to become ready after a start.
    pub(crate) start_timeout: Duration,
    /// The first, polite signal of the teardown on drop (SIGKILL follows
    /// after [`SHUTDOWN_GRACE`]).
    pub(crate) teardown_signal: libc::c_int,
}

#[derive(Default)]
struct State {
    /// The server's main process, while started by us and not yet reaped.
    child: Option<Child>,
    /// Processes SIGSTOPped by [`ServerProcess::pause`], main process first.
    paused: Vec<u32>,
}

/// One server process and everything the test kit does to it. All methods
/// take `&self` and the type is `Sync`, so a test can kill or pause a server
/// from another thread while a pool uses it. Dropping it tears the server
/// down (bounded, never panics).
pub(crate) struct ServerProcess {
    spec: ProcessSpec,
    label: String,
    state: Mutex<State>,
}

impl fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerProcess")
            .field("server", &self.label)
            .field("port", &self.spec.port)
            .field("data_dir", &self.spec.data_dir)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ServerProcess {
    /// A server that is not started yet.
    pub(crate) fn new(spec: ProcessSpec) -> ServerProcess {
        ServerProcess {
            label: format!("{} {}", spec.engine, spec.name),
            spec,
            state: Mutex::new(State::default()),
        }
    }

    /// `"primary"` or `"mirror"`.
    pub(crate) fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The engine and the name, for messages: `"PostgreSQL primary"`.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn port(&self) -> u16 {
        self.spec.port
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// The last `max_lines` lines of the server log.
    pub(crate) fn log_tail(&self, max_lines: usize) -> String {
        os::log_tail(&self.spec.log_path, 0, max_lines)
    }

    pub(crate) fn not_running(&self) -> TestkitError {
        TestkitError::NotRunning {
            server: self.label.clone(),
        }
    }

    /// [`TestkitError::Paused`] if the server is paused: admin clients call
    /// this first instead of hanging on a stopped server.
    pub(crate) fn check_not_paused(&self) -> Result<(), TestkitError> {
        if self.is_paused() {
            Err(TestkitError::Paused {
                server: self.label.clone(),
            })
        } else {
            Ok(())
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reaps the main process if it exited; returns whether it still runs.
    fn child_alive(state: &mut State) -> bool {
        let alive = match state.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        };
        if !alive {
            state.child = None;
        }
        alive
    }

    /// Takes the main process's `Child` out of `state`, or errors if it is
    /// not running.
    fn take_running_child(&self, state: &mut State) -> Result<Child, TestkitError> {
        if !Self::child_alive(state) {
            return Err(self.not_running());
        }
        state.child.take().ok_or_else(|| self.not_running())
    }

    /// The main process's pid while it runs (also while paused).
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut state = self.lock_state();
        if Self::child_alive(&mut state) {
            state.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// Whether the main process runs (a paused server counts as running).
    pub(crate) fn is_running(&self) -> bool {
        let mut state = self.lock_state();
        Self::child_alive(&mut state)
    }

    /// Whether the server is paused by [`pause`](Self::pause).
    pub(crate) fn is_paused(&self) -> bool {
        !self.lock_state().paused.is_empty()
    }

    /// Pids of the main process's live descendants.
    pub(crate) fn child_pids(&self) -> Vec<u32> {
        self.pid().map(os::descendants).unwrap_or_default()
    }

    /// Starts the server with `cmd` (its stdout and stderr are appended to
    /// the log) and waits until `ready` succeeds, at most the start timeout.
    /// Processes left over from a killed instance get 10 s to exit by
    /// themselves and are then SIGKILLed. Errors with
    /// [`TestkitError::AlreadyRunning`] if the server runs, and with
    /// [`TestkitError::StartFailed`] (carrying the log's tail) if it exits or
    /// does not become ready in time — it is then killed.
    pub(crate) fn start(
        &self,
        mut cmd: Command,
        ready: impl FnMut() -> Result<(), TestkitError>,
    ) -> Result<(), TestkitError> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "the server".to_owned());
        let offset = {
            let mut state = self.lock_state();
            if Self::child_alive(&mut state) {
                return Err(TestkitError::AlreadyRunning {
                    server: self.label.clone(),
                });
            }
            state.paused.clear();
            let left = os::reap_processes_under(&self.spec.data_dir, ORPHAN_GRACE, KILL_WAIT);
            if !left.is_empty() {
                return Err(TestkitError::StartFailed {
                    server: self.label.clone(),
                    reason: format!("processes {left:?} of the previous instance do not exit"),
                    log_tail: self.log_tail(20),
                });
            }
            let offset = os::file_len(&self.spec.log_path);
            let (out, err) = os::log_handles(&self.spec.log_path)?;
            cmd.stdout(out).stderr(err);
            let child = cmd.spawn().map_err(|e| {
                TestkitError::io(format!("spawning {program} for the {}", self.label), e)
            })?;
            log::info!(
                "testkit: started {} ({program} {}) on port {}",
                self.label,
                child.id(),
                self.spec.port
            );
            state.child = Some(child);
            offset
        };
        self.wait_until_ready(&program, offset, ready)
    }

    fn wait_until_ready(
        &self,
        program: &str,
        log_offset: u64,
        mut ready: impl FnMut() -> Result<(), TestkitError>,
    ) -> Result<(), TestkitError> {
        let timeout = self.spec.start_timeout;
        let deadline = os::deadline_after(timeout);
        let failed = |reason: String| TestkitError::StartFailed {
            server: self.label.clone(),
            reason,
            log_tail: os::log_tail(&self.spec.log_path, log_offset, 30),
        };
        loop {
            {
                let mut state = self.lock_state();
                let Some(child) = state.child.as_mut() else {
                    return Err(failed("it was stopped while starting".to_owned()));
                };
                match child.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        state.child = None;
                        return Err(failed(format!("{program} exited ({status})")));
                    }
                    Err(e) => return Err(TestkitError::io(format!("waiting for {program}"), e)),
                }
            }
            let last_error = match ready() {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let mut state = self.lock_state();
                if let Some(mut child) = state.child.take() {
                    os::kill_and_reap(&mut child, KILL_WAIT);
                }
                return Err(failed(format!(
                    "it did not accept connections within {timeout:?} (last error: {last_error})"
                )));
            }
            thread::sleep(READY_POLL);
        }
    }

    /// SIGKILLs the main process and reaps it. A paused server's other
    /// processes are sent SIGCONT, so that they can notice and exit. Errors
    /// with [`TestkitError::NotRunning`] if the server is not running.
    pub(crate) fn kill(&self) -> Result<(), TestkitError> {
        let mut state = self.lock_state();
        let mut child = self.take_running_child(&mut state)?;
        let pid = child.id();
        log::info!("testkit: SIGKILL {} ({pid})", self.label);
        if let Err(e) = child.kill() {
            state.child = Some(child);
            return Err(TestkitError::io(
                format!("SIGKILL to the {} ({pid})", self.label),
                e,
            ));
        }
        for p in state.paused.drain(..) {
            if p != pid {
                let _ = os::signal(p, libc::SIGCONT);
            }
        }
        if os::wait_child(&mut child, KILL_WAIT).is_none() {
            state.child = Some(child);
            return Err(TestkitError::Timeout {
                what: format!("the SIGKILLed {} ({pid}) to exit", self.label),
                timeout: KILL_WAIT,
                last_error: None,
            });
        }
        Ok(())
    }

    /// Stops the server: resumes it if paused, calls `request` with the main
    /// pid (the engine's way to ask for a stop; if it fails, `fallback_signal`
    /// is sent instead), waits [`SHUTDOWN_GRACE`], then SIGKILLs, and finally
    /// waits (bounded) until no process works in the data directory. Errors
    /// with [`TestkitError::NotRunning`] if the server is not running.
    pub(crate) fn stop(
        &self,
        request: impl FnOnce(u32) -> Result<(), TestkitError>,
        fallback_signal: libc::c_int,
    ) -> Result<(), TestkitError> {
        let mut state = self.lock_state();
        let mut child = self.take_running_child(&mut state)?;
        Self::resume_locked(&mut state);
        let pid = child.id();
        log::info!("testkit: stopping {} ({pid})", self.label);
        if let Err(e) = request(pid) {
            log::warn!("testkit: {e}; sending signal {fallback_signal} to {pid}");
            let _ = os::signal(pid, fallback_signal);
        }
        if os::wait_child(&mut child, SHUTDOWN_GRACE).is_none()
            && os::kill_and_reap(&mut child, KILL_WAIT).is_none()
        {
            state.child = Some(child);
            return Err(TestkitError::Timeout {
                what: format!("the {} ({pid}) to exit", self.label),
                timeout: SHUTDOWN_GRACE + KILL_WAIT,
                last_error: None,
            });
        }
        drop(state);
        os::reap_processes_under(&self.spec.data_dir, SHUTDOWN_GRACE, KILL_WAIT);
        Ok(())
    }

    /// SIGSTOPs the main process and then all its descendants, rescanning
    /// until no new one shows up, and waits until every one has stopped: the
    /// server is hung on return. Idempotent.
    pub(crate) fn pause(&self) -> Result<(), TestkitError> {
        let mut state = self.lock_state();
        if !Self::child_alive(&mut state) {
            return Err(self.not_running());
        }
        if !state.paused.is_empty() {
            return Ok(());
        }
        let Some(pid) = state.child.as_ref().map(Child::id) else {
            return Err(self.not_running());
        };
        log::info!("testkit: pausing {} ({pid})", self.label);
        os::signal(pid, libc::SIGSTOP)
            .map_err(|e| TestkitError::io(format!("SIGSTOP to the {} ({pid})", self.label), e))?;
        state.paused.push(pid);
        // Once the main process is stopped it cannot fork; then stop the
        // children, rescanning until no new one shows up.
        let deadline = Instant::now() + Duration::from_secs(2);
        while os::is_alive(pid) && !os::is_stopped(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..20 {
            let fresh: Vec<u32> = os::descendants(pid)
                .into_iter()
                .filter(|p| !state.paused.contains(p))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for p in fresh {
                if os::signal(p, libc::SIGSTOP).is_ok() {
                    state.paused.push(p);
                }
            }
        }
        // Signal delivery is asynchronous: wait until every process has
        // actually stopped (or exited), so the server is hung on return.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && state
                .paused
                .iter()
                .any(|&p| os::is_alive(p) && !os::is_stopped(p))
        {
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// [`pause`](Self::pause), returning a guard that resumes on drop.
    pub(crate) fn pause_guard(&self) -> Result<PauseGuard<'_>, TestkitError> {
        self.pause()?;
        Ok(PauseGuard { process: self })
    }

    fn resume_locked(state: &mut State) {
        // Children first, the main process (first entry) last.
        for &p in state.paused.iter().rev() {
            let _ = os::signal(p, libc::SIGCONT);
        }
        state.paused.clear();
    }

    /// SIGCONTs every process [`pause`](Self::pause) stopped. A no-op if the
    /// server is not paused.
    pub(crate) fn resume(&self) -> Result<(), TestkitError> {
        let mut state = self.lock_state();
        if !state.paused.is_empty() {
            log::info!("testkit: resuming {}", self.label);
        }
        Self::resume_locked(&mut state);
        Ok(())
    }

    /// Teardown: resume, the teardown signal, SIGKILL fallback, then kill
    /// anything still working in the data directory. Bounded, panic-free and
    /// idempotent.
    pub(crate) fn shutdown(&self) {
        let mut state = self.lock_state();
        Self::resume_locked(&mut state);
        if let Some(mut child) = state.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let pid = child.id();
                log::debug!("testkit: stopping {} ({pid})", self.label);
                let _ = os::signal(pid, self.spec.teardown_signal);
                if os::wait_child(&mut child, SHUTDOWN_GRACE).is_none() {
                    log::warn!("testkit: {} ({pid}) did not stop, killing it", self.label);
                    if os::kill_and_reap(&mut child, KILL_WAIT).is_none() {
                        log::warn!("testkit: {} ({pid}) survived SIGKILL", self.label);
                    }
                }
            }
        }
        drop(state);
        let left = os::reap_processes_under(&self.spec.data_dir, Duration::from_secs(2), KILL_WAIT);
        if !left.is_empty() {
            log::warn!(
                "testkit: {} processes {left:?} survived teardown",
                self.label
            );
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Resumes a paused server when dropped; obtain it with `pause_guard` on a
/// `PgServer` or a `MyServer`.
///
/// Declare it after the clients that talk to the paused server, so that it
/// is dropped (and the server resumed) before them, also during a panic
/// unwind: dropping a client that waits for an answer from a stopped server
/// can block.
#[derive(Debug)]
#[must_use = "the server is resumed as soon as the guard is dropped"]
pub struct PauseGuard<'a> {
    process: &'a ServerProcess,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        let _ = self.process.resume();
    }
}

/// Starts a server on a free loopback port: `start_on(port)` builds and
/// starts it; when its start fails because the port got taken in the
/// meantime (`is_port_conflict`), another port is tried, up to 5 times.
pub(crate) fn launch_on_free_port<S>(
    label: &str,
    mut start_on: impl FnMut(u16) -> Result<S, TestkitError>,
    is_port_conflict: impl Fn(&TestkitError) -> bool,
) -> Result<S, TestkitError> {
    let mut last_err = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = os::free_loopback_port()?;
        match start_on(port) {
            Ok(server) => return Ok(server),
            Err(e) if is_port_conflict(&e) => {
                log::info!("testkit: port {port} was taken, retrying: {e}");
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| TestkitError::StartFailed {
        server: label.to_owned(),
        reason: "no start attempt was made".to_owned(),
        log_tail: String::new(),
    }))
}

/// Runs `f` on a helper thread and waits at most `timeout` for it: database
/// clients bound their connect, but not every later read, so a call to a hung
/// server could block forever. On timeout the helper thread is abandoned; it
/// ends when the server answers or dies (at the latest at teardown).
///
/// `Ok(f's result)`, or [`TestkitError::Timeout`] naming `what`.
pub(crate) fn call_with_deadline<T, E>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<Result<T, E>, TestkitError>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("mirrorpool-testkit-admin".to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| TestkitError::io("spawning an admin thread", e))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => Ok(result),
        Err(RecvTimeoutError::Timeout) => Err(TestkitError::Timeout {
            what: what.to_owned(),
            timeout,
            last_error: None,
        }),
        Err(RecvTimeoutError::Disconnected) => Err(TestkitError::UnexpectedResult {
            what: what.to_owned(),
            detail: "the admin thread ended without a result".to_owned(),
        }),
    }
}

/// The SQL text for messages, shortened to 200 characters.
pub(crate) fn describe_sql(sql: &str) -> String {
    let mut short: String = sql.chars().take(200).collect();
    if short.len() < sql.len() {
        short.push_str("...");
    }
    format!("`{short}`")
}

/// One attempt of [`poll_until`].
pub(crate) enum Attempt {
    /// The condition holds.
    Done,
    /// Not yet; the text says what was seen (for the timeout message).
    NotYet(String),
    /// Give up at once with this error.
    Fail(TestkitError),
}

/// Polls `attempt` every 100 ms until it is [`Attempt::Done`], at most
/// `timeout`. Each attempt is given a budget (what is left of the timeout,
/// clamped to 200 ms..5 s) for its own calls.
pub(crate) fn poll_until(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> Attempt,
) -> Result<(), TestkitError> {
    let deadline = os::deadline_after(timeout);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let budget = remaining.clamp(Duration::from_millis(200), Duration::from_secs(5));
        let last_error = match attempt(budget) {
            Attempt::Done => return Ok(()),
            Attempt::NotYet(seen) => seen,
            Attempt::Fail(e) => return Err(e),
        };
        if Instant::now() >= deadline {
            return Err(TestkitError::Timeout {
                what: what.to_owned(),
                timeout,
                last_error: Some(last_error),
            });
        }
        thread::sleep(READY_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> ServerProcess {
        ServerProcess::new(ProcessSpec {
            engine: "Test",
            name: "primary",
            port: 1,
            data_dir: dir.to_owned(),
            log_path: dir.join("server.log"),
            start_timeout: Duration::from_secs(5),
            teardown_signal: libc::SIGTERM,
        })
    }

    /// A "server" working in `dir`: it says it is up and sleeps.
    fn sleep_command(dir: &Path) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo up; exec sleep 60"]).current_dir(dir);
        cmd
    }

    #[test]
    fn a_process_is_started_paused_resumed_killed_restarted_and_torn_down() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let server = sleeper(&dir);
        assert!(matches!(
            server.kill(),
            Err(TestkitError::NotRunning { .. })
        ));
        server.start(sleep_command(&dir), || Ok(())).unwrap();
        let pid = server.pid().unwrap();
        {
            let _guard = server.pause_guard().unwrap();
            assert!(server.is_paused() && os::is_stopped(pid));
            assert!(matches!(
                server.check_not_paused(),
                Err(TestkitError::Paused { .. })
            ));
        }
        assert!(!server.is_paused() && !os::is_stopped(pid));
        assert!(matches!(
            server.start(sleep_command(&dir), || Ok(())),
            Err(TestkitError::AlreadyRunning { .. })
        ));
        server.pause().unwrap();
        server.kill().unwrap();
        assert!(!server.is_running() && !os::is_alive(pid));
        server.start(sleep_command(&dir), || Ok(())).unwrap();
        let pid = server.pid().unwrap();
        server
            .stop(
                |p| os::signal(p, libc::SIGTERM).map_err(|e| TestkitError::io("SIGTERM", e)),
                libc::SIGKILL,
            )
            .unwrap();
        assert!(!os::is_alive(pid));
        server.start(sleep_command(&dir), || Ok(())).unwrap();
        let pid = server.pid().unwrap();
        drop(server);
        assert!(!os::is_alive(pid));
    }

    #[test]
    fn a_server_that_never_gets_ready_fails_with_its_log_and_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let mut server = sleeper(&dir);
        server.spec.start_timeout = Duration::from_millis(300);
        let err = server
            .start(sleep_command(&dir), || {
                Err(TestkitError::UnexpectedResult {
                    what: "probe".into(),
                    detail: "not yet".into(),
                })
            })
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Test primary failed to start"), "{msg}");
        assert!(msg.contains("not yet") && msg.contains("up"), "{msg}");
        assert!(!server.is_running());
    }

    #[test]
    fn long_sql_is_shortened_in_messages() {
        assert_eq!(describe_sql("SELECT 1"), "`SELECT 1`");
        let long = "é".repeat(300);
        let d = describe_sql(&long);
        assert_eq!(d.chars().count(), 200 + 5);
        assert!(d.ends_with("...`"));
    }

    #[test]
    fn deadlines_bound_calls_and_polls() {
        let started = Instant::now();
        let r = call_with_deadline("a slow call", Duration::from_millis(100), || {
            thread::sleep(Duration::from_secs(2));
            Ok::<_, ()>(())
        });
        assert!(matches!(r, Err(TestkitError::Timeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            call_with_deadline("a quick call", Duration::from_secs(5), || Ok::<_, ()>(7)).unwrap(),
            Ok(7)
        );
        let mut n = 0;
        poll_until("three tries", Duration::from_secs(5), |_| {
            n += 1;
            if n == 3 {
                Attempt::Done
            } else {
                Attempt::NotYet(format!("try {n}"))
            }
        })
        .unwrap();
        let err = poll_until("never", Duration::from_millis(250), |_| {
            Attempt::NotYet("still no".into())
        })
        .unwrap_err();
        assert!(err.to_string().contains("still no"), "{err}");
    }
}
