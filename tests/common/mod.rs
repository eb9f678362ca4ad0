//! A scripted in-memory `ManageConnection` for testing the pool logic: its connections can be
//! made to fail, hang or break on command, which a real server cannot do with exact timing.
#![allow(dead_code)]

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mirrorpool::backend::{
    Backend, BackendError, Capabilities, LagKind, Observation, Replication, Role, Upstream,
};
use mirrorpool::ManageConnection;
use parking_lot::{Condvar, Mutex};

/// How a scripted server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers everything.
    Up,
    /// Refuses connects and fails every call at once.
    Refuse,
    /// Never answers: connects and calls block until the mode changes (bounded at 20 s).
    Hang,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    role: Role,
    /// Connections born before this epoch are broken.
    break_before: u64,
    epoch: u64,
    upstream_streaming: Option<bool>,
    lag_bytes: Option<u64>,
    /// Make only heartbeats (probes) hang, not pool connects.
    hang_probes: bool,
    /// Heartbeats answer only after this long (a busy server).
    probe_delay: Duration,
    promotions: u32,
    validations: u64,
    /// Make these calls panic (a misbehaving user manager).
    panic_connect: bool,
    panic_is_valid: bool,
    panic_has_broken: bool,
    panic_probe: bool,
    /// Make pool validations (`is_valid`) block until released.
    hang_validations: bool,
    /// Refuse new connects with "too many connections" while open ones keep working.
    full: bool,
    /// Fail the next heartbeat (its connection is then dropped and reopened).
    fail_next_probe: bool,
}

/// One scripted server, shared by its manager, its connections and the test.
#[derive(Debug)]
pub struct Server {
    pub name: &'static str,
    state: Mutex<State>,
    changed: Condvar,
    open: AtomicU64,
    connects: AtomicU64,
    next_id: AtomicU64,
}

impl Server {
    pub fn new(name: &'static str) -> Arc<Server> {
        Arc::new(Server {
            name,
            state: Mutex::new(State {
                mode: Mode::Up,
                role: Role::Unknown,
                break_before: 0,
                epoch: 1,
                upstream_streaming: None,
                lag_bytes: None,
                hang_probes: false,
                probe_delay: Duration::ZERO,
                promotions: 0,
                validations: 0,
                panic_connect: false,
                panic_is_valid: false,
                panic_has_broken: false,
                panic_probe: false,
                hang_validations: false,
                full: false,
                fail_next_probe: false,
            }),
            changed: Condvar::new(),
            open: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().mode = mode;
        self.changed.notify_all();
    }

    pub fn mode(&self) -> Mode {
        self.state.lock().mode
    }

    pub fn set_role(&self, role: Role) {
        self.state.lock().role = role;
    }

    pub fn set_epoch(&self, epoch: u64) {
        self.state.lock().epoch = epoch;
    }

    pub fn set_upstream_streaming(&self, streaming: Option<bool>) {
        self.state.lock().upstream_streaming = streaming;
    }

    pub fn set_lag_bytes(&self, lag: Option<u64>) {
        self.state.lock().lag_bytes = lag;
    }

    pub fn set_probe_delay(&self, delay: Duration) {
        self.state.lock().probe_delay = delay;
    }

    pub fn set_hang_probes(&self, hang: bool) {
        self.state.lock().hang_probes = hang;
        self.changed.notify_all();
    }

    /// Makes `connect`, `is_valid`, `has_broken` or the heartbeat panic (or stop panicking).
    pub fn set_panics(&self, connect: bool, is_valid: bool, has_broken: bool, probe: bool) {
        let mut s = self.state.lock();
        s.panic_connect = connect;
        s.panic_is_valid = is_valid;
        s.panic_has_broken = has_broken;
        s.panic_probe = probe;
    }

    /// Refuses new connects with "too many connections" (open connections keep working).
    pub fn set_full(&self, full: bool) {
        self.state.lock().full = full;
    }

    /// Fails the next heartbeat, so the heartbeat has to reconnect.
    pub fn fail_next_probe(&self) {
        self.state.lock().fail_next_probe = true;
    }

    /// Makes pool validations block until `set_hang_validations(false)`.
    pub fn set_hang_validations(&self, hang: bool) {
        self.state.lock().hang_validations = hang;
        self.changed.notify_all();
    }

    /// Breaks every connection that exists now (they report `has_broken`).
    pub fn break_connections(&self) {
        let mut s = self.state.lock();
        s.break_before = self.next_id.load(Ordering::SeqCst);
    }

    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    /// The id the next connection will get (ids grow by one per connect).
    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }

    pub fn promotions(&self) -> u32 {
        self.state.lock().promotions
    }

    pub fn validations(&self) -> u64 {
        self.state.lock().validations
    }

    /// Blocks while the server hangs; errors if it refuses.
    fn answer(&self, probe: bool) -> Result<(), ScriptError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut s = self.state.lock();
        loop {
            let hang = s.mode == Mode::Hang || (probe && s.hang_probes);
            if !hang {
                break;
            }
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                return Err(ScriptError::new(self.name, "timed out (script bound)"));
            }
        }
        match s.mode {
            Mode::Up => Ok(()),
            _ => Err(ScriptError::new(self.name, "connection refused")),
        }
    }
}

/// An error from a scripted server, with a cause chain like a real driver's.
#[derive(Debug)]
pub struct ScriptError {
    server: &'static str,
    cause: std::io::Error,
}

impl ScriptError {
    fn new(server: &'static str, what: &str) -> ScriptError {
        ScriptError {
            server,
            cause: std::io::Error::other(what.to_string()),
        }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error talking to {}", self.server)
    }
}

impl StdError for ScriptError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub server: &'static str,
    srv: Arc<Server>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.srv.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
pub struct Manager(pub Arc<Server>);

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = ScriptError;

    fn connect(&self) -> Result<Conn, ScriptError> {
        if self.0.state.lock().panic_connect {
            panic!("scripted panic in connect");
        }
        if self.0.state.lock().full {
            return Err(ScriptError::new(self.0.name, "too many connections"));
        }
        self.0.answer(false)?;
        self.0.connects.fetch_add(1, Ordering::SeqCst);
        self.0.open.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            id: self.0.next_id.fetch_add(1, Ordering::SeqCst),
            server: self.0.name,
            srv: self.0.clone(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), ScriptError> {
        {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut s = self.0.state.lock();
            s.validations += 1;
            if s.panic_is_valid {
                panic!("scripted panic in is_valid");
            }
            while s.hang_validations {
                if self.0.changed.wait_until(&mut s, deadline).timed_out() {
                    break;
                }
            }
        }
        if conn.id < self.0.state.lock().break_before {
            return Err(ScriptError::new(self.0.name, "connection reset"));
        }
        self.0.answer(false)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        let s = self.0.state.lock();
        if s.panic_has_broken {
            drop(s);
            panic!("scripted panic in has_broken");
        }
        conn.id < s.break_before
    }
}

/// A role-aware heartbeat for scripted servers, like the PostgreSQL backend's.
#[derive(Debug, Default)]
pub struct ScriptedBackend;

impl Backend<Manager> for ScriptedBackend {
    fn classify(&self, error: &ScriptError) -> mirrorpool::backend::Fault {
        match error.cause.to_string().as_str() {
            "connection refused" | "connection reset" => mirrorpool::backend::Fault::ConnectionLost,
            "too many connections" => mirrorpool::backend::Fault::TooManyConnections,
            _ => mirrorpool::backend::Fault::Other,
        }
    }

    fn probe(&self, m: &Manager, _c: &mut Conn, _t: Duration) -> Result<Observation, BackendError> {
        if m.0.state.lock().panic_probe {
            panic!("scripted panic in the heartbeat");
        }
        if std::mem::take(&mut m.0.state.lock().fail_next_probe) {
            return Err(Box::new(ScriptError::new(m.0.name, "connection reset")));
        }
        let delay = m.0.state.lock().probe_delay;
        std::thread::sleep(delay);
        m.0.answer(true)?;
        let s = m.0.state.lock();
        let mut repl = Replication::default();
        repl.lag_bytes = s.lag_bytes;
        repl.upstream = s.upstream_streaming.map(Upstream::new);
        Ok(Observation::with_role(s.role)
            .with_epoch(s.epoch)
            .with_replication(repl))
    }

    fn promote(&self, m: &Manager, _c: &mut Conn, _t: Duration) -> Result<(), BackendError> {
        m.0.answer(false)?;
        let mut s = m.0.state.lock();
        s.role = Role::Writable;
        s.epoch += 1;
        s.upstream_streaming = None;
        s.promotions += 1;
        Ok(())
    }
}

/// [`ScriptedBackend`] declaring what the PostgreSQL backend declares: roles, promotion,
/// upstream state and byte lag. With it, a side of unknown role takes no writes.
#[derive(Debug, Default)]
pub struct RoleAwareBackend;

impl Backend<Manager> for RoleAwareBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_roles()
            .with_promote()
            .with_upstream()
            .with_lag(LagKind::Bytes)
    }
    fn classify(&self, error: &ScriptError) -> mirrorpool::backend::Fault {
        ScriptedBackend.classify(error)
    }
    fn probe(&self, m: &Manager, c: &mut Conn, t: Duration) -> Result<Observation, BackendError> {
        ScriptedBackend.probe(m, c, t)
    }
    fn promote(&self, m: &Manager, c: &mut Conn, t: Duration) -> Result<(), BackendError> {
        ScriptedBackend.promote(m, c, t)
    }
}

/// Polls `f` every 5 ms until it returns true or `limit` passes; returns whether it did.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An event handler that records every event as a line, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Recorder(pub Arc<Mutex<Vec<String>>>);

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().clone()
    }
    pub fn count(&self, prefix: &str) -> usize {
        self.0
            .lock()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
    fn push(&self, s: String) {
        self.0.lock().push(s);
    }
}

impl mirrorpool::HandleEvent for Recorder {
    fn handle_side_down(&self, e: mirrorpool::event::SideDownEvent) {
        self.push(format!("down {}", e.side()));
    }
    fn handle_side_up(&self, e: mirrorpool::event::SideUpEvent) {
        self.push(format!("up {}", e.side()));
    }
    fn handle_switch(&self, e: mirrorpool::event::SwitchEvent) {
        self.push(format!("switch {}->{} {:?}", e.from(), e.to(), e.reason()));
    }
    fn handle_drain(&self, e: mirrorpool::event::DrainEvent) {
        self.push(format!("drain {} {}", e.side(), e.closed()));
    }
    fn handle_heartbeat_failure(&self, e: mirrorpool::event::HeartbeatFailureEvent) {
        self.push(format!(
            "hbfail {} {} timeout={}",
            e.side(),
            e.failures(),
            e.timed_out()
        ));
    }
    fn handle_switch_refused(&self, e: mirrorpool::event::SwitchRefusedEvent) {
        self.push(format!("refused {} {:?}", e.to(), e.reason()));
    }
    fn handle_split_brain(&self, e: mirrorpool::event::SplitBrainEvent) {
        self.push(format!(
            "splitbrain writer={} fenced={}",
            e.writer(),
            e.fenced()
        ));
    }
    fn handle_promotion(&self, e: mirrorpool::event::PromotionEvent) {
        self.push(format!("promotion {} ok={}", e.side(), e.error().is_none()));
    }
    fn handle_saturation(&self, e: mirrorpool::event::SaturationEvent) {
        self.push(format!("saturated {} {}", e.side(), e.saturated()));
    }
    fn handle_misconfiguration(&self, e: mirrorpool::event::MisconfigurationEvent) {
        self.push(format!("misconfigured {} {:?}", e.side(), e.problem()));
    }
}

/// A TCP listener that accepts connections and never sends a byte, like a stopped server
/// process whose kernel still completes handshakes, or a port taken by something else. Holds
/// every accepted socket until dropped.
pub struct SilentServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    #[cfg(feature = "postgres")]
    pub fn manager(
        &self,
        connect_timeout: Duration,
    ) -> mirrorpool::postgres::PostgresManager<postgres::NoTls> {
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("app")
            .password("secret")
            .dbname("app")
            .connect_timeout(connect_timeout);
        mirrorpool::postgres::PostgresManager::new(config, postgres::NoTls)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Threads of this process whose name starts with "mirrorpool" (`comm` holds the first 15
/// characters of a thread's name).
pub fn mirrorpool_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim_end().to_owned())
                .filter(|c| c.starts_with("mirrorpool"))
                .collect()
        })
        .unwrap_or_default()
}
