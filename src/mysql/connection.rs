//! A pooled MySQL/MariaDB connection: a `mysql::Conn` plus what the pool needs around it —
//! which server it talks to, its socket (for bounded calls and severing), and whether a call
//! the pool made on it failed.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mysql::{Conn, DriverError};

use crate::sever::{Registry, SocketHandle};

/// Which database server a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Flavor {
    /// MariaDB (`@@version` contains "MariaDB").
    MariaDb,
    /// MySQL, or a server that speaks its dialect (Percona Server).
    MySql,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
        })
    }
}

/// The flavour and version of the server behind a connection, read from `@@version` when the
/// connection was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Server {
    flavor: Flavor,
    version: (u16, u16, u16),
}

impl Server {
    /// Parses `@@version` (`10.11.6-MariaDB-0+deb12u1-log`, `8.0.36`, `8.0.36-28`). A version
    /// that does not start with `major.minor.patch` reads as 0.0.0.
    pub(crate) fn parse(version: &str) -> Server {
        let flavor = if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        let mut numbers = version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse::<u16>().ok());
        let mut next = || numbers.next().flatten();
        let version = match (next(), next(), next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => (0, 0, 0),
        };
        Server { flavor, version }
    }

    /// MariaDB or MySQL.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// `(major, minor, patch)`.
    pub fn version(&self) -> (u16, u16, u16) {
        self.version
    }

    pub(crate) fn at_least(&self, major: u16, minor: u16, patch: u16) -> bool {
        self.version >= (major, minor, patch)
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.version;
        write!(f, "{} {a}.{b}.{c}", self.flavor)
    }
}

/// A `mysql::Conn` managed by [`MysqlManager`](super::MysqlManager). Derefs to the `Conn`, so
/// `conn.query_drop(..)` works on a pooled connection as on a `Conn`.
///
/// Tell the pool about errors you get on it (`PooledConnection::report(&mut conn, &err)`): a
/// statement that failed on a read or write timeout leaves the connection out of step with
/// the server. The manager's `has_broken` recognises most such connections without a round
/// trip (the server closed the socket or wrote to it unasked; on Linux, the last data on the
/// socket was sent, not received), but a reported error is certain to close it before the next
/// borrower could read the old answer.
pub struct MyConnection {
    conn: Conn,
    fd: RawFd,
    server: Server,
    /// The socket timeouts the connection runs with between the pool's own bounded calls.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    broken: bool,
    /// Registered with the manager so a failover can sever it (Linux).
    socket: Option<Arc<SocketHandle>>,
}

impl MyConnection {
    pub(crate) fn new(
        conn: Conn,
        server: Server,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
    ) -> MyConnection {
        // `Conn::as_raw_fd` reads the stream, which a successfully opened `Conn` always has.
        let fd = conn.as_raw_fd();
        MyConnection {
            conn,
            fd,
            server,
            read_timeout,
            write_timeout,
            broken: false,
            socket: None,
        }
    }

    /// The connection.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The connection, mutably.
    pub fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The server this connection talks to.
    pub fn server(&self) -> Server {
        self.server
    }

    /// Whether a call the pool made on this connection (validation, heartbeat, reset) failed
    /// in a way that leaves it unusable. Errors of your own statements count only once reported.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// The connection's socket (TCP, or Unix when the options name a socket file).
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Applies the connection's own read and write timeouts to its socket.
    pub(crate) fn apply_timeouts(&mut self) -> io::Result<()> {
        let (read, write) = (self.read_timeout, self.write_timeout);
        let result = set_socket_timeouts(self.fd, read, write);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Bounds every socket read and write of the calls made until [`restore`] to `timeout`.
    /// A failure marks the connection broken.
    ///
    /// [`restore`]: MyConnection::restore
    pub(crate) fn bound(&mut self, timeout: Duration) -> io::Result<()> {
        let t = Some(clamp(timeout));
        let result = set_socket_timeouts(self.fd, t, t);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Runs `call` with every socket read and write bounded by `timeout`, then restores the
    /// connection's own timeouts. A connectivity error (I/O, timeout, protocol) or a failed
    /// restore marks the connection broken: a call cut short leaves it out of step.
    pub(crate) fn bounded<T>(
        &mut self,
        timeout: Duration,
        call: impl FnOnce(&mut Conn) -> Result<T, mysql::Error>,
    ) -> Result<T, mysql::Error> {
        self.bound(timeout)?;
        let result = call(&mut self.conn);
        if let Err(e) = &result {
            if breaks_connection(e) {
                self.broken = true;
            }
        }
        self.apply_timeouts()?;
        result
    }

    /// Whether the connection is out of use, seen without a round trip: the server closed it
    /// or sent something unasked (a MySQL or MariaDB server sends nothing on an idle
    /// connection unless it is closing it — `wait_timeout`, `KILL`, shutdown: an error packet
    /// and/or FIN/RST — so a readable or hung-up socket means the connection is done), or a
    /// statement was abandoned before the server answered it.
    pub(crate) fn out_of_step(&self) -> bool {
        self.peer_closed() || answer_owed(self.fd)
    }

    fn peer_closed(&self) -> bool {
        // The fd is open while `self.conn` lives.
        readable_or_closed(self.fd)
    }
}

/// Whether a zero-timeout `poll(2)` shows `fd` readable, hung up or in error.
fn readable_or_closed(fd: RawFd) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let events = libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let events = libc::POLLIN | libc::POLLPRI;
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    for _ in 0..3 {
        // SAFETY: `pfd` is one valid pollfd and a zero timeout never blocks; a closed fd is
        // reported in `revents` (POLLNVAL), not undefined behaviour.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n == 0 {
            return false;
        }
        if n > 0 {
            return pfd.revents != 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return true;
        }
    }
    true
}

/// Whether the last thing on this TCP connection was data sent that no data answered (the
/// kernel's last-send time is newer than its last-receive time): a statement its caller
/// abandoned on a read timeout before the server answered anything — the one case in which
/// the late answer would start with the packet number a next command expects, and be taken
/// for that command's answer. (An answer cut short after its first packet makes the next
/// command fail with "packets out of sync" instead, and its rest makes the socket readable.)
///
/// The kernel keeps both times in ticks (1–10 ms): a statement sent within a tick of the
/// previous answer is not told apart. A MySQL client sends without awaiting an answer only
/// `COM_STMT_CLOSE` (an explicit `Conn::close` as the last call reads as abandoned: the
/// connection is closed, no harm done) and `COM_QUIT`. Not a TCP socket, or not Linux:
/// `false`.
#[cfg(target_os = "linux")]
fn answer_owed(fd: RawFd) -> bool {
    // SAFETY: tcp_info is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most `len` and returns
    // how many it wrote; a bad or non-TCP fd is an error return.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // The two fields sit in the first 64 bytes, which every kernel with TCP_INFO fills.
    rc == 0 && len >= 64 && info.tcpi_last_data_sent < info.tcpi_last_data_recv
}

#[cfg(not(target_os = "linux"))]
fn answer_owed(_fd: RawFd) -> bool {
    false
}

/// Whether an error leaves the connection it happened on unusable.
pub(crate) fn breaks_connection(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::MySqlError(e) => lost_code(e.code),
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => true,
        mysql::Error::DriverError(d) => driver_lost(d),
        _ => e.is_connectivity_error(),
    }
}

/// Error codes that mean the connection is gone: the server is shutting down (1053), the
/// connection was killed (MariaDB 1927), went away or was lost (2006, 2013, client-side codes
/// some proxies relay), or was closed for inactivity (MySQL 8.0.24+, 4031).
pub(crate) fn lost_code(code: u16) -> bool {
    matches!(code, 1053 | 1927 | 2006 | 2013 | 4031)
}

/// Whether a driver error leaves the connection unusable. Only errors raised before anything
/// was sent (bad parameters, pool misuse) do not.
pub(crate) fn driver_lost(e: &DriverError) -> bool {
    !matches!(
        e,
        DriverError::MismatchedStmtParams(..)
            | DriverError::Params(_)
            | DriverError::MixedParams
            | DriverError::InvalidPoolConstraints
            | DriverError::PoisonedPoolMutex
            | DriverError::ReadOnlyTransNotSupported
            | DriverError::BulkExecute(_)
    )
}

/// A socket timeout of at least 1 ms (zero would mean "no timeout") and at most a day.
fn clamp(d: Duration) -> Duration {
    d.clamp(Duration::from_millis(1), Duration::from_secs(24 * 60 * 60))
}

fn timeval(d: Option<Duration>) -> libc::timeval {
    match d {
        // A zero timeval means "block forever", which is what `None` asks for.
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        Some(d) => {
            let d = clamp(d);
            libc::timeval {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                // Below 1_000_000: fits every platform's suseconds_t.
                tv_usec: d.subsec_micros() as libc::suseconds_t,
            }
        }
    }
}

/// Sets `SO_RCVTIMEO` and `SO_SNDTIMEO` on `fd`.
pub(crate) fn set_socket_timeouts(
    fd: RawFd,
    read: Option<Duration>,
    write: Option<Duration>,
) -> io::Result<()> {
    for (option, value) in [(libc::SO_RCVTIMEO, read), (libc::SO_SNDTIMEO, write)] {
        let tv = timeval(value);
        // SAFETY: `tv` is a valid timeval and its size is passed; a bad fd is an error return.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl MyConnection {
    /// Registers the connection's socket with `registry`, so `sever_all` reaches it.
    pub(crate) fn register(&mut self, registry: &Registry) {
        if let Some(handle) = SocketHandle::of_fd(self.fd) {
            registry.add(&handle);
            self.socket = Some(handle);
        }
    }

    /// Whether a failover can sever this connection (its socket was registered).
    pub fn severable(&self) -> bool {
        self.socket.is_some()
    }
}

impl Drop for MyConnection {
    fn drop(&mut self) {
        // Before the client closes the socket: nothing may sever its number afterwards.
        if let Some(s) = &self.socket {
            s.forget();
        }
        // Closing writes a few bytes (COM_STMT_CLOSE per cached statement, COM_QUIT): never
        // wait long for a server that does not read them.
        let close = Some(Duration::from_millis(100));
        let _ = set_socket_timeouts(self.fd, close, close);
    }
}

impl AsRawFd for MyConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Deref for MyConnection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for MyConnection {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl fmt::Debug for MyConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MyConnection")
            .field("server", &self.server)
            .field("connection_id", &self.conn.connection_id())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        let m = Server::parse("10.11.19-MariaDB-0+deb12u1-log");
        assert_eq!(m.flavor(), Flavor::MariaDb);
        assert_eq!(m.version(), (10, 11, 19));
        assert!(m.at_least(10, 11, 0) && !m.at_least(11, 0, 0));
        let p = Server::parse("8.0.36-28");
        assert_eq!((p.flavor(), p.version()), (Flavor::MySql, (8, 0, 36)));
        let o = Server::parse("8.4.0");
        assert_eq!((o.flavor(), o.version()), (Flavor::MySql, (8, 4, 0)));
        assert_eq!(Server::parse("weird").version(), (0, 0, 0));
        assert_eq!(Server::parse("").flavor(), Flavor::MySql);
        assert_eq!(m.to_string(), "MariaDB 10.11.19");
    }

    #[test]
    fn sockets_tell_closed_unasked_and_unanswered() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::thread::sleep;
        let gap = Duration::from_millis(30);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();
        sleep(gap);
        assert!(!readable_or_closed(fd));
        assert!(!answer_owed(fd));
        // A request the server has not answered yet.
        client.write_all(b"request").unwrap();
        sleep(gap);
        #[cfg(target_os = "linux")]
        assert!(answer_owed(fd));
        // Answered.
        let mut buf = [0u8; 7];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"answer").unwrap();
        sleep(gap);
        let mut buf = [0u8; 6];
        client.read_exact(&mut buf).unwrap();
        assert!(!answer_owed(fd));
        assert!(!readable_or_closed(fd));
        // Something unasked.
        server.write_all(b"!").unwrap();
        sleep(gap);
        assert!(readable_or_closed(fd));
        let mut one = [0u8; 1];
        client.read_exact(&mut one).unwrap();
        assert!(!readable_or_closed(fd));
        // Closed by the server.
        drop(server);
        sleep(gap);
        assert!(readable_or_closed(fd));
        // Not a TCP socket: never "owed".
        assert!(!answer_owed(-1));
    }

    #[test]
    fn timevals_are_never_zero_or_negative() {
        let tv = timeval(Some(Duration::ZERO));
        assert_eq!((tv.tv_sec, tv.tv_usec), (0, 1000));
        let tv = timeval(Some(Duration::MAX));
        assert_eq!(tv.tv_sec, 24 * 60 * 60);
        let tv = timeval(None);
        assert_eq!((tv.tv_sec, tv.tv_usec), (0, 0));
        let tv = timeval(Some(Duration::from_millis(1500)));
        assert_eq!((tv.tv_sec, tv.tv_usec), (1, 500_000));
    }
}
