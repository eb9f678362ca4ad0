//! A fault-injecting TCP proxy for simulating network failures between a
//! client and a server.
//!
//! [`TcpProxy`] listens on a free 127.0.0.1 port and forwards every
//! connection to a target address. Its [`ProxyMode`] can be switched at any
//! time to cut connections ([`ProxyMode::Drop`]) or to silently stop
//! forwarding ([`ProxyMode::BlackHole`]), like a network partition.

// `kill(2)`, `getpwnam_r(3)` and `setsockopt(2)` have no safe std wrapper;
// every unsafe block is commented. This keeps the module building in a crate
// that denies unsafe code.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::error::TestkitError;

/// How often idle loops look at the mode and the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Accept-loop sleep when there is nothing to accept.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Deadline for connecting to the target.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `Drop` waits for the proxy's threads to finish.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
const BUFFER_SIZE: usize = 16 * 1024;

/// What a [`TcpProxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyMode {
    /// Forward bytes in both directions (the default).
    #[default]
    Pass,
    /// Close every current connection (both sides) and close new ones right
    /// after accepting them: clients fail fast.
    Drop,
    /// Keep every socket open but forward nothing in either direction; new
    /// connections are accepted but never answered. Clients hang until their
    /// own timeouts fire. Switching back to [`ProxyMode::Pass`] delivers the
    /// held-back bytes, like a healed network partition.
    BlackHole,
}

impl ProxyMode {
    fn to_u8(self) -> u8 {
        match self {
            ProxyMode::Pass => 0,
            ProxyMode::Drop => 1,
            ProxyMode::BlackHole => 2,
        }
    }

    fn from_u8(v: u8) -> ProxyMode {
        match v {
            1 => ProxyMode::Drop,
            2 => ProxyMode::BlackHole,
            _ => ProxyMode::Pass,
        }
    }
}

/// The sockets of one proxied connection, kept so that they can be shut down
/// from outside the connection's threads.
struct Sockets {
    client: TcpStream,
    upstream: Option<TcpStream>,
}

impl Sockets {
    fn shutdown(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

struct Shared {
    target: SocketAddr,
    mode: AtomicU8,
    stop: AtomicBool,
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Sockets>>,
    /// Live accept and connection threads.
    threads: AtomicUsize,
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        ProxyMode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Sockets>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shutdown_all(&self) {
        for sockets in self.connections().values() {
            sockets.shutdown();
        }
    }
}

/// Decrements the live-thread counter when a proxy thread ends (also on
/// panic).
struct ThreadToken(Arc<Shared>);

impl ThreadToken {
    fn new(shared: &Arc<Shared>) -> ThreadToken {
        shared.threads.fetch_add(1, Ordering::SeqCst);
        ThreadToken(Arc::clone(shared))
    }
}

impl Drop for ThreadToken {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes a connection's sockets and unregisters it when its thread ends.
struct ConnectionGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(sockets) = self.shared.connections().remove(&self.id) {
            sockets.shutdown();
        }
    }
}

/// A TCP proxy on 127.0.0.1 with switchable failure modes.
///
/// Uses plain threads: one accept thread plus two per connection. Every
/// thread polls its stop flag and the mode at least every 50 ms. Dropping the
/// proxy stops the threads and closes every socket (waiting at most 2 s).
///
/// Beware: dropping a `postgres::Client` that has an unanswered request
/// (e.g. after `is_valid` timed out in [`ProxyMode::BlackHole`]) blocks until
/// the request is answered. Switch the proxy to [`ProxyMode::Pass`] or
/// [`ProxyMode::Drop`] before dropping such clients — see
/// [`mode_guard`](TcpProxy::mode_guard).
pub struct TcpProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("mode", &self.mode())
            .field("active_connections", &self.active_connections())
            .finish()
    }
}

impl TcpProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `target`, in
    /// [`ProxyMode::Pass`]. The target is connected to (with a 2 s deadline)
    /// once per accepted connection; if that fails the client's connection is
    /// closed.
    pub fn start(target: SocketAddr) -> Result<TcpProxy, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestkitError::io("binding the proxy to 127.0.0.1:0", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TestkitError::io("making the proxy listener non-blocking", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("reading the proxy address", e))?;
        let shared = Arc::new(Shared {
            target,
            mode: AtomicU8::new(ProxyMode::Pass.to_u8()),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            threads: AtomicUsize::new(0),
        });
        let token = ThreadToken::new(&shared);
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("testkit-proxy-accept-{}", addr.port()))
            .spawn(move || {
                let _token = token;
                accept_loop(&accept_shared, &listener);
            })
            .map_err(|e| TestkitError::io("spawning the proxy accept thread", e))?;
        log::debug!("testkit: proxy {addr} -> {target} started");
        Ok(TcpProxy {
            shared,
            addr,
            accept_thread: Some(accept_thread),
        })
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the proxy listens on (127.0.0.1 and [`port`](Self::port)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Switches the mode. Switching to [`ProxyMode::Drop`] shuts down every
    /// current connection before returning; for the other modes the
    /// connection threads pick the change up within 50 ms, and bytes read
    /// after the switch are held back while in [`ProxyMode::BlackHole`].
    pub fn set_mode(&self, mode: ProxyMode) {
        let old = ProxyMode::from_u8(self.shared.mode.swap(mode.to_u8(), Ordering::SeqCst));
        if old != mode {
            log::info!("testkit: proxy {} mode {old:?} -> {mode:?}", self.addr);
        }
        if mode == ProxyMode::Drop {
            self.shared.shutdown_all();
        }
    }

    /// Sets `mode` and returns a guard that restores the previous mode when
    /// dropped. Declare the guard after the clients using the proxy so that
    /// it is dropped before them (also during a panic unwind).
    pub fn mode_guard(&self, mode: ProxyMode) -> ProxyModeGuard<'_> {
        let previous = self.mode();
        self.set_mode(mode);
        ProxyModeGuard {
            proxy: self,
            previous,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Number of client connections currently held by the proxy (forwarding,
    /// black-holed or waiting to be connected upstream).
    pub fn active_connections(&self) -> usize {
        self.shared.connections().len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.shutdown_all();
        if let Some(handle) = self.accept_thread.take() {
            // The accept loop never blocks for more than ACCEPT_POLL.
            let _ = handle.join();
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while self.shared.threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            self.shared.shutdown_all();
            thread::sleep(Duration::from_millis(5));
        }
        let left = self.shared.threads.load(Ordering::SeqCst);
        if left > 0 {
            log::warn!(
                "testkit: proxy {}: {left} threads still running after drop",
                self.addr
            );
        }
    }
}

/// Restores a [`TcpProxy`]'s previous mode when dropped; see
/// [`TcpProxy::mode_guard`].
#[derive(Debug)]
#[must_use = "the previous mode is restored as soon as the guard is dropped"]
pub struct ProxyModeGuard<'a> {
    proxy: &'a TcpProxy,
    previous: ProxyMode,
}

impl Drop for ProxyModeGuard<'_> {
    fn drop(&mut self) {
        self.proxy.set_mode(self.previous);
    }
}

/// Makes a later `close` send RST instead of FIN.
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd, pointer to a correctly sized, initialised `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::debug!("testkit: SO_LINGER failed: {}", io::Error::last_os_error());
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.mode() == ProxyMode::Drop {
                    log::debug!("testkit: proxy refusing {peer}");
                    set_linger_zero(&stream);
                    drop(stream);
                    continue;
                }
                spawn_connection(shared, stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. EMFILE or ECONNABORTED: back off and keep serving.
                log::warn!("testkit: proxy accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, client: TcpStream) {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let prepared = client
        .set_nonblocking(false)
        .and_then(|()| client.set_nodelay(true))
        .and_then(|()| client.set_read_timeout(Some(POLL)))
        .and_then(|()| client.set_write_timeout(Some(POLL)))
        .and_then(|()| client.try_clone());
    let registered = match prepared {
        Ok(clone) => clone,
        Err(e) => {
            log::warn!("testkit: proxy could not prepare a connection: {e}");
            return;
        }
    };
    shared.connections().insert(
        id,
        Sockets {
            client: registered,
            upstream: None,
        },
    );
    let guard = ConnectionGuard {
        shared: Arc::clone(shared),
        id,
    };
    let token = ThreadToken::new(shared);
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("testkit-proxy-conn-{id}"))
        .spawn(move || {
            let _token = token;
            let _guard = guard;
            run_connection(&thread_shared, id, client);
        });
    if let Err(e) = spawned {
        // The closure (with token and guard) was dropped: the connection is
        // unregistered and closed.
        log::warn!("testkit: proxy could not spawn a connection thread: {e}");
    }
}

/// Waits until the mode allows talking to the target, connects, and pumps
/// bytes until either side closes, the mode becomes `Drop` or the proxy
/// stops.
///
/// The upstream connection keeps the client's source port (from 127.0.0.2, where that port is
/// free), so the server sees the same client port as without the proxy: the proxy stands in
/// for the network, not for a middlebox. mirrorpool's PostgreSQL manager relies on this to find
/// a connection's socket (see `postgres/socket.rs`); it falls back to an ephemeral port.
fn run_connection(shared: &Arc<Shared>, id: u64, client: TcpStream) {
    loop {
        if shared.stopping() {
            return;
        }
        match shared.mode() {
            ProxyMode::Pass => break,
            ProxyMode::Drop => return,
            ProxyMode::BlackHole => thread::sleep(POLL),
        }
    }
    let upstream = match connect_upstream(&client, shared.target) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("testkit: proxy could not reach {}: {e}", shared.target);
            set_linger_zero(&client);
            return;
        }
    };
    let prepared = upstream
        .set_nodelay(true)
        .and_then(|()| upstream.set_read_timeout(Some(POLL)))
        .and_then(|()| upstream.set_write_timeout(Some(POLL)))
        .and_then(|()| {
            Ok((
                upstream.try_clone()?,
                upstream.try_clone()?,
                client.try_clone()?,
            ))
        });
    let (registered, upstream_reader, client_writer) = match prepared {
        Ok(parts) => parts,
        Err(e) => {
            log::warn!("testkit: proxy could not prepare the upstream socket: {e}");
            return;
        }
    };
    {
        let mut connections = shared.connections();
        match connections.get_mut(&id) {
            // Shut down (mode Drop or proxy stop) while we were connecting.
            None => return,
            Some(sockets) => sockets.upstream = Some(registered),
        }
    }
    if shared.stopping() || shared.mode() == ProxyMode::Drop {
        return;
    }
    let token = ThreadToken::new(shared);
    let pump_shared = Arc::clone(shared);
    let reverse = thread::Builder::new()
        .name(format!("testkit-proxy-pump-{id}"))
        .spawn(move || {
            let _token = token;
            pump(&pump_shared, upstream_reader, client_writer);
        });
    let reverse = match reverse {
        Ok(handle) => handle,
        Err(e) => {
            log::warn!("testkit: proxy could not spawn a pump thread: {e}");
            return;
        }
    };
    pump(shared, client, upstream);
    // `pump` shut both sockets down, so the other pump ends within POLL.
    let _ = reverse.join();
}

/// Copies `src` to `dst` while the mode is `Pass`; holds bytes back while it
/// is `BlackHole`. Shuts both sockets down when done.
fn pump(shared: &Shared, mut src: TcpStream, mut dst: TcpStream) {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut pending: Vec<u8> = Vec::new();
    let mut written = 0usize;
    loop {
        if shared.stopping() {
            break;
        }
        match shared.mode() {
            ProxyMode::Drop => break,
            ProxyMode::BlackHole => {
                thread::sleep(POLL);
                continue;
            }
            ProxyMode::Pass => {}
        }
        if written < pending.len() {
            // Mode was checked just above, so nothing is forwarded after a
            // switch to BlackHole has been observed.
            match dst.write(&pending[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if is_retryable(&e) => {}
                Err(_) => break,
            }
            if written == pending.len() {
                pending.clear();
                written = 0;
            }
            continue;
        }
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if is_retryable(&e) => {}
            Err(_) => break,
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}

fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Connects to `target` from 127.0.0.2 on the client's own source port if possible.
fn connect_upstream(client: &TcpStream, target: SocketAddr) -> std::io::Result<TcpStream> {
    if let Ok(peer) = client.peer_addr() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let source = SocketAddr::from(([127, 0, 0, 2], peer.port()));
        if socket.bind(&source.into()).is_ok() {
            socket.connect_timeout(&target.into(), UPSTREAM_CONNECT_TIMEOUT)?;
            return Ok(socket.into());
        }
    }
    TcpStream::connect_timeout(&target, UPSTREAM_CONNECT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            // Serves exactly one connection.
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        (addr, handle)
    }

    fn roundtrip(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn black_hole_holds_bytes_back_and_pass_delivers_them() {
        let (target, server) = echo_server();
        let proxy = TcpProxy::start(target).unwrap();
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(roundtrip(&mut client, b"hello").unwrap(), b"hello");

        proxy.set_mode(ProxyMode::BlackHole);
        let err = roundtrip(&mut client, b"again").unwrap_err();
        assert!(is_retryable(&err), "{err}");

        proxy.set_mode(ProxyMode::Pass);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again");
        drop(client);
        drop(proxy);
        server.join().unwrap();
    }

    #[test]
    fn drop_mode_closes_connections_and_drop_stops_threads() {
        let (target, _server) = echo_server();
        let proxy = TcpProxy::start(target).unwrap();
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(roundtrip(&mut client, b"x").unwrap(), b"x");
        assert_eq!(proxy.active_connections(), 1);

        proxy.set_mode(ProxyMode::Drop);
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let res = client.read(&mut buf);
        assert!(matches!(res, Ok(0) | Err(_)), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let shared = Arc::clone(&proxy.shared);
        drop(proxy);
        assert_eq!(shared.threads.load(Ordering::SeqCst), 0);
        assert!(shared.connections().is_empty());
    }
}
