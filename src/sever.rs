//! Finding and severing this process's TCP sockets, for database client libraries that neither
//! expose their socket nor have a read timeout (the `postgres` crate). A backend uses it to:
//!
//! - bound a connect in total time, start-up and authentication included ([`ConnectWatch`]);
//! - bound single calls on an open connection ([`SocketHandle::watch`]): a heartbeat, a
//!   session reset, a close;
//! - abort every open connection of a side when the pool fails over away from a server that
//!   will not answer ([`Registry::sever_all`]).
//!
//! Severing is `shutdown(2)`, never `close(2)`: it ends the TCP stream (calls blocked on it fail
//! at once) but frees nothing, so the owning client still closes its descriptor normally.
//!
//! # Finding a connection's socket
//! Before a connect the backend takes a [`Tag`], a `TCP_USER_TIMEOUT` value in milliseconds that
//! no other connect of this process uses while it runs (the configured value rounded down to a
//! whole second, plus 1–999 ms), and configures the connect with it; the client library sets it
//! on the socket right after the TCP connect. The finder then looks at this process's sockets
//! (`/proc/self/fd`) and takes the one that carries the tag, whose peer is on a configured port
//! (and address, when the configuration names addresses rather than host names), and that no
//! live connection has claimed. Exactly one must match, or the connection is left unregistered:
//! it then works as usual but cannot be severed. Once the connect succeeded the configured
//! `TCP_USER_TIMEOUT` is put back, so the tag lives only while the connect runs.
//!
//! The peer is the address this process connected to. Behind NAT or a proxy that is the
//! proxy's address: the match does not depend on what the server saw (an earlier version
//! matched the client port the server reported, which a translating proxy makes meaningless).
//!
//! # Touching a descriptor this module does not own
//! Every shutdown goes through a duplicate of the descriptor (`F_DUPFD_CLOEXEC`) whose inode
//! (`fstat`) is compared with the socket's before use: a descriptor number that was closed and
//! reused in the meantime is never shut down. A registered connection's descriptor is only
//! duplicated under its handle's lock, which the connection takes (in [`SocketHandle::forget`])
//! before its client closes the socket. Watches ([`SocketHandle::watch`]) hold their own
//! duplicate, so they stay valid while the client closes its descriptor.
//!
//! # Limits
//! - Linux only (`/proc`); elsewhere nothing is found and nothing is severed.
//! - TCP only: connections over a Unix-domain socket are neither bounded nor severable.
//! - A host given by name is matched by port and tag only (no address check).
//! - The finder reads `/proc/self/fd` and makes a few system calls per socket of the process,
//!   once per connect.

#![cfg_attr(not(feature = "postgres"), allow(dead_code))] // the search is the postgres backend's

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use sys::OwnedSocket;

/// A descriptor number (`RawFd` on Unix).
pub(crate) type Fd = i32;

// ---------------------------------------------------------------------------------------------
// Matching (pure)

/// What the finder saw of one of this process's sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SocketFacts {
    /// The descriptor number, in this process.
    pub(crate) fd: Fd,
    /// The socket's inode (`socket:[inode]`), unique among live sockets.
    pub(crate) inode: u64,
    /// The address the socket is connected to.
    pub(crate) peer: SocketAddr,
    /// Its `TCP_USER_TIMEOUT` in milliseconds (`None`: not a TCP socket, or unreadable).
    pub(crate) user_timeout_ms: Option<u32>,
}

/// What identifies the socket of one connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// Ports the connect may have gone to.
    pub(crate) ports: Vec<u16>,
    /// Addresses the connect may have gone to; empty: any (a host given by name).
    pub(crate) addrs: Vec<IpAddr>,
    /// The tag the connect's socket carries.
    pub(crate) tag_ms: u32,
}

/// The outcome of [`pick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Exactly one socket matches: this index.
    One(usize),
    /// None does.
    NotFound,
    /// This many do: nothing is claimed.
    Ambiguous(usize),
}

impl Target {
    /// Whether a socket may be this connect's, claims aside.
    pub(crate) fn matches(&self, s: &SocketFacts) -> bool {
        s.user_timeout_ms == Some(self.tag_ms)
            && self.ports.contains(&s.peer.port())
            && (self.addrs.is_empty()
                || self
                    .addrs
                    .iter()
                    .any(|a| a.to_canonical() == s.peer.ip().to_canonical()))
    }
}

/// Picks the socket of a connect among `candidates`: the one that carries the tag, is
/// connected to one of the target's ports (and addresses, if it names any), and whose inode is
/// not in `claimed`.
pub(crate) fn pick(candidates: &[SocketFacts], target: &Target, claimed: &[u64]) -> Pick {
    let mut found = None;
    let mut n = 0;
    for (i, s) in candidates.iter().enumerate() {
        if target.matches(s) && !claimed.contains(&s.inode) {
            found.get_or_insert(i);
            n += 1;
        }
    }
    match (n, found) {
        (1, Some(i)) => Pick::One(i),
        (0, _) => Pick::NotFound,
        _ => Pick::Ambiguous(n),
    }
}

/// Parses a `/proc/self/fd/N` link target: the inode of `socket:[inode]`.
pub(crate) fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Tags

/// Tags per process: values 1..=TAG_SPAN ms are added to the configured user timeout.
const TAG_SPAN: u32 = 999;

struct TagTable {
    in_use: Vec<u32>,
    next: u32,
}

static TAGS: Mutex<TagTable> = Mutex::new(TagTable {
    in_use: Vec::new(),
    next: 0,
});

/// A `TCP_USER_TIMEOUT` value that no other connect of this process uses while this one runs.
#[derive(Debug)]
pub(crate) struct Tag {
    offset: u32,
    ms: u32,
}

impl Tag {
    /// A fresh tag near `base` (the user timeout the connection should have): `base` rounded
    /// down to a whole second (at least 1 s), plus 1–999 ms. `None` if 999 connects are
    /// already tagged.
    pub(crate) fn take(base: Duration) -> Option<Tag> {
        let mut t = TAGS.lock();
        for _ in 0..TAG_SPAN {
            t.next = t.next % TAG_SPAN + 1;
            let offset = t.next;
            if !t.in_use.contains(&offset) {
                t.in_use.push(offset);
                return Some(Tag {
                    offset,
                    ms: tag_ms(base, offset),
                });
            }
        }
        None
    }

    /// The tagged `TCP_USER_TIMEOUT`.
    pub(crate) fn duration(&self) -> Duration {
        Duration::from_millis(u64::from(self.ms))
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        TAGS.lock().in_use.retain(|o| *o != self.offset);
    }
}

/// `base` rounded down to whole seconds (at least one), plus `offset` ms, in a `u32`.
pub(crate) fn tag_ms(base: Duration, offset: u32) -> u32 {
    let ceiling = u64::from(u32::MAX - TAG_SPAN);
    let secs = base.as_secs().clamp(1, ceiling / 1000);
    // Fits: secs * 1000 <= u32::MAX - TAG_SPAN and offset <= TAG_SPAN.
    (secs * 1000) as u32 + offset.min(TAG_SPAN)
}

// ---------------------------------------------------------------------------------------------
// Claims

/// Inodes of sockets claimed by a live connection of any backend in this process.
static CLAIMED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn find(target: &Target) -> Option<(SocketFacts, OwnedSocket)> {
    let candidates = sys::sockets_to(&target.ports);
    let claimed = CLAIMED.lock().clone();
    match pick(&candidates, target, &claimed) {
        Pick::One(i) => {
            let facts = candidates.into_iter().nth(i)?;
            let dup = sys::dup_checked(facts.fd, facts.inode)?;
            Some((facts, dup))
        }
        Pick::NotFound => None,
        Pick::Ambiguous(n) => {
            log::debug!("{n} sockets carry the same connect tag; not claiming any");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Established connections

/// One open connection's socket, registered so that it can be severed.
pub(crate) struct SocketHandle {
    /// The client's descriptor; `None` once the connection started closing.
    fd: Mutex<Option<Fd>>,
    inode: u64,
}

impl fmt::Debug for SocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketHandle")
            .field("inode", &self.inode)
            .finish_non_exhaustive()
    }
}

impl SocketHandle {
    /// Claims the socket behind a descriptor the backend knows (the `mysql` crate exposes
    /// its connection's): no search needed. `None` if it is not a socket or already claimed.
    pub(crate) fn of_fd(fd: Fd) -> Option<Arc<SocketHandle>> {
        let inode = sys::socket_inode_of(fd)?;
        let mut claimed = CLAIMED.lock();
        if claimed.contains(&inode) {
            return None;
        }
        claimed.push(inode);
        Some(Arc::new(SocketHandle {
            fd: Mutex::new(Some(fd)),
            inode,
        }))
    }

    /// A duplicate of the client's descriptor, if it still refers to this socket.
    fn dup(&self) -> Option<OwnedSocket> {
        let fd = self.fd.lock();
        sys::dup_checked((*fd)?, self.inode)
    }

    /// Shuts the socket down: calls blocked on it fail at once. Returns whether it did.
    pub(crate) fn sever(&self) -> bool {
        match self.dup() {
            Some(s) => {
                s.shutdown();
                true
            }
            None => false,
        }
    }

    /// Severs the socket after `after` unless the returned guard is dropped first. `None` if
    /// the socket is gone or `after` is too far to represent (never).
    pub(crate) fn watch(&self, after: Duration, what: &'static str) -> Option<Watch> {
        let dup = self.dup()?;
        schedule(
            after,
            Box::new(move || {
                log::warn!("{what} took longer than {after:?}: severing its connection");
                dup.shutdown();
            }),
        )
    }

    /// Sets the socket's `TCP_USER_TIMEOUT`.
    fn set_user_timeout(&self, timeout: Duration) {
        if let Some(s) = self.dup() {
            s.set_user_timeout(timeout);
        }
    }

    /// Called by the connection before its client closes the socket: nothing touches the
    /// descriptor afterwards (watches hold their own duplicate).
    pub(crate) fn forget(&self) {
        *self.fd.lock() = None;
        CLAIMED.lock().retain(|i| *i != self.inode);
    }
}

/// The open connections of one manager.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    live: Mutex<Vec<Weak<SocketHandle>>>,
}

impl Registry {
    /// Registers a connection's socket.
    pub(crate) fn add(&self, handle: &Arc<SocketHandle>) {
        let mut live = self.live.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(handle));
    }

    /// Severs every registered connection that is still open; returns how many.
    pub(crate) fn sever_all(&self) -> usize {
        let live: Vec<Arc<SocketHandle>> =
            self.live.lock().iter().filter_map(Weak::upgrade).collect();
        live.iter().filter(|h| h.sever()).count()
    }
}

// ---------------------------------------------------------------------------------------------
// Connects

/// Bounds one connect in total time and finds its socket. Create it before the connect,
/// configure the connect's `TCP_USER_TIMEOUT` with [`user_timeout`](Self::user_timeout), call
/// [`connected`](ConnectHook::connected) from the connecting thread once the TCP connect is
/// done (before the start-up exchange), and [`finish`](Self::finish) after a successful
/// connect. At the deadline the connect's socket is shut down, and so is every socket a later
/// attempt of the same connect opens (a host list is tried in order).
pub(crate) struct ConnectWatch {
    state: Arc<Mutex<ConnectState>>,
    watch: Option<Watch>,
    tag: Option<Tag>,
}

struct ConnectState {
    target: Option<Target>,
    found: Option<(SocketFacts, OwnedSocket)>,
    expired: bool,
    what: String,
}

impl ConnectState {
    fn look(&mut self) {
        self.found = self.target.as_ref().and_then(find);
        if self.expired {
            if let Some((_, s)) = &self.found {
                s.shutdown();
            }
        }
    }
}

/// The part of a [`ConnectWatch`] the connecting thread calls.
#[derive(Clone)]
pub(crate) struct ConnectHook {
    state: Arc<Mutex<ConnectState>>,
}

impl ConnectHook {
    /// The TCP connect of an attempt just completed: finds its socket (severing it at once if
    /// the deadline already passed).
    pub(crate) fn connected(&self) {
        self.state.lock().look();
    }
}

impl ConnectWatch {
    /// Starts watching a connect to `ports` (and `addrs`; empty: any address) that should end
    /// within `bound`. `base_user_timeout` is the `TCP_USER_TIMEOUT` the connection should have
    /// (see [`Tag::take`]); `what` names the server in the log.
    pub(crate) fn start(
        ports: Vec<u16>,
        addrs: Vec<IpAddr>,
        base_user_timeout: Duration,
        bound: Duration,
        what: String,
    ) -> ConnectWatch {
        let tag = if sys::SUPPORTED {
            Tag::take(base_user_timeout)
        } else {
            None
        };
        let target = tag.as_ref().map(|t| Target {
            ports,
            addrs,
            tag_ms: t.ms,
        });
        let state = Arc::new(Mutex::new(ConnectState {
            target,
            found: None,
            expired: false,
            what,
        }));
        let watch = if tag.is_some() {
            let s = state.clone();
            schedule(
                bound,
                Box::new(move || {
                    let mut s = s.lock();
                    s.expired = true;
                    if s.found.is_none() {
                        s.look();
                    }
                    let outcome = match &s.found {
                        Some((_, sock)) => {
                            sock.shutdown();
                            "aborting it"
                        }
                        None => "its socket was not found, the TCP connect timeout applies",
                    };
                    log::warn!(
                        "connecting to {} took longer than {bound:?}: {outcome}",
                        s.what
                    );
                }),
            )
        } else {
            None
        };
        ConnectWatch { state, watch, tag }
    }

    /// The `TCP_USER_TIMEOUT` the connect must be configured with (the tag), if any.
    pub(crate) fn user_timeout(&self) -> Option<Duration> {
        self.tag.as_ref().map(Tag::duration)
    }

    /// The hook for the connecting thread.
    pub(crate) fn hook(&self) -> ConnectHook {
        ConnectHook {
            state: self.state.clone(),
        }
    }

    /// Whether the deadline passed (the connect's socket was severed).
    pub(crate) fn expired(&self) -> bool {
        self.state.lock().expired
    }

    /// After a successful connect: stops the deadline, restores `user_timeout` on the socket
    /// and claims it. `None` if the socket could not be identified (the connection then cannot
    /// be severed).
    pub(crate) fn finish(mut self, user_timeout: Duration) -> Option<Arc<SocketHandle>> {
        drop(self.watch.take());
        let mut state = self.state.lock();
        if state.found.is_none() {
            state.look();
        }
        let (facts, dup) = state.found.take()?;
        drop(state);
        {
            let mut claimed = CLAIMED.lock();
            if claimed.contains(&facts.inode) {
                return None;
            }
            claimed.push(facts.inode);
        }
        drop(dup);
        let handle = Arc::new(SocketHandle {
            fd: Mutex::new(Some(facts.fd)),
            inode: facts.inode,
        });
        handle.set_user_timeout(user_timeout);
        Some(handle)
    }
}

impl Drop for ConnectWatch {
    fn drop(&mut self) {
        drop(self.watch.take());
        // Closes the duplicate of a failed attempt's socket.
        self.state.lock().found = None;
    }
}

// ---------------------------------------------------------------------------------------------
// The watchdog: one thread for every deadline of the process, alive while there are any.

type Action = Box<dyn FnOnce() + Send>;

/// How long the watchdog thread waits for new work before it ends.
const LINGER: Duration = Duration::from_millis(200);

struct WatchdogState {
    entries: BTreeMap<(Instant, u64), Action>,
    next_id: u64,
    running: bool,
}

static WATCHDOG: Mutex<WatchdogState> = Mutex::new(WatchdogState {
    entries: BTreeMap::new(),
    next_id: 0,
    running: false,
});
static WAKE: Condvar = Condvar::new();

/// A scheduled action; dropping it cancels the action if it has not run yet.
#[must_use = "the action is cancelled when the watch is dropped"]
pub(crate) struct Watch {
    key: (Instant, u64),
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let action = WATCHDOG.lock().entries.remove(&self.key);
        // Dropped outside the lock: it may close a descriptor.
        drop(action);
    }
}

/// Runs `action` on the watchdog thread after `after`, unless the returned watch is dropped
/// first. `None` if `after` is too far to represent (then it never runs) or no thread could
/// be started.
fn schedule(after: Duration, action: Action) -> Option<Watch> {
    let deadline = Instant::now().checked_add(after)?;
    let mut w = WATCHDOG.lock();
    w.next_id = w.next_id.wrapping_add(1);
    let key = (deadline, w.next_id);
    w.entries.insert(key, action);
    if !w.running {
        let spawned = thread::Builder::new()
            .name("mirrorpool-watchdog".into())
            .spawn(watchdog);
        match spawned {
            Ok(_) => w.running = true,
            Err(e) => {
                w.entries.remove(&key);
                drop(w);
                log::error!("could not start the watchdog thread: {e}");
                return None;
            }
        }
    } else if w.entries.first_key_value().map(|(k, _)| *k) == Some(key) {
        WAKE.notify_one();
    }
    Some(Watch { key })
}

fn watchdog() {
    let mut w = WATCHDOG.lock();
    loop {
        let now = Instant::now();
        match w.entries.first_key_value().map(|(k, _)| *k) {
            None => {
                let timed_out = WAKE.wait_for(&mut w, LINGER).timed_out();
                if timed_out && w.entries.is_empty() {
                    w.running = false;
                    return;
                }
            }
            Some(key) if key.0 <= now => {
                if let Some(action) = w.entries.remove(&key) {
                    MutexGuard::unlocked(&mut w, || {
                        if panic::catch_unwind(AssertUnwindSafe(action)).is_err() {
                            log::error!("a watchdog action panicked");
                        }
                    });
                }
            }
            Some(key) => {
                WAKE.wait_until(&mut w, key.0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// System calls

#[cfg(all(target_os = "linux", any(feature = "postgres", feature = "mysql")))]
mod sys {
    //! Linux: `/proc/self/fd`, `fcntl(F_DUPFD_CLOEXEC)`, `fstat`, `getpeername`,
    //! `getsockopt`/`setsockopt(TCP_USER_TIMEOUT)`, `shutdown`.
    #![allow(unsafe_code)]

    use std::fs;
    use std::net::{SocketAddr, TcpStream};
    use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
    use std::os::linux::fs::MetadataExt;
    use std::time::Duration;

    use super::{socket_inode, Fd, SocketFacts};

    pub(super) const SUPPORTED: bool = true;

    /// A duplicate descriptor of a socket, owned here (closed on drop).
    pub(crate) struct OwnedSocket(OwnedFd);

    impl OwnedSocket {
        pub(crate) fn shutdown(&self) {
            // SAFETY: the descriptor is ours and open; shutdown() frees nothing.
            unsafe {
                libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR);
            }
        }

        pub(crate) fn set_user_timeout(&self, timeout: Duration) {
            let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
            // SAFETY: valid descriptor, pointer and length of a c_uint.
            unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_USER_TIMEOUT,
                    (&ms as *const libc::c_uint).cast(),
                    std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
                );
            }
        }

        fn user_timeout_ms(&self) -> Option<u32> {
            let mut ms: libc::c_uint = 0;
            let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
            // SAFETY: valid descriptor; `ms` and `len` are valid for writes of their sizes.
            let rc = unsafe {
                libc::getsockopt(
                    self.0.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_USER_TIMEOUT,
                    (&mut ms as *mut libc::c_uint).cast(),
                    &mut len,
                )
            };
            (rc == 0).then_some(ms)
        }

        fn peer(&self) -> Option<SocketAddr> {
            // getpeername(2) through std, on a clone that is closed right after.
            let clone = self.0.try_clone().ok()?;
            TcpStream::from(clone).peer_addr().ok()
        }
    }

    /// The inode of the socket `fd` refers to, if it is an open socket.
    pub(crate) fn socket_inode_of(fd: Fd) -> Option<u64> {
        if fd < 0 {
            return None;
        }
        // SAFETY: as in `dup_checked`: a borrowed number, duplicated and checked.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let file = fs::File::from(borrowed.try_clone_to_owned().ok()?);
        let meta = file.metadata().ok()?;
        ((meta.st_mode() & libc::S_IFMT) == libc::S_IFSOCK).then(|| meta.st_ino())
    }

    /// Duplicates `fd` if it is open and refers to the socket `inode`.
    pub(crate) fn dup_checked(fd: Fd, inode: u64) -> Option<OwnedSocket> {
        if fd < 0 {
            return None;
        }
        // SAFETY: borrow_raw only needs the number to stay valid while borrowed; fcntl on a
        // closed or reused number fails or yields another inode, which is checked below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let dup = borrowed.try_clone_to_owned().ok()?;
        let file = fs::File::from(dup);
        let meta = file.metadata().ok()?;
        if meta.st_ino() != inode || (meta.st_mode() & libc::S_IFMT) != libc::S_IFSOCK {
            return None;
        }
        Some(OwnedSocket(OwnedFd::from(file)))
    }

    /// This process's sockets connected to one of `ports`.
    pub(crate) fn sockets_to(ports: &[u16]) -> Vec<SocketFacts> {
        let Ok(dir) = fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let e = e.ok()?;
            let fd: Fd = e.file_name().to_str()?.parse().ok()?;
            // Only sockets are duplicated (closing a duplicate of a file would drop its locks).
            let inode = socket_inode(fs::read_link(e.path()).ok()?.to_str()?)?;
            let sock = dup_checked(fd, inode)?;
            let peer = sock.peer()?;
            if !ports.contains(&peer.port()) {
                return None;
            }
            Some(SocketFacts {
                fd,
                inode,
                peer,
                user_timeout_ms: sock.user_timeout_ms(),
            })
        })
        .collect()
    }
}

#[cfg(not(all(target_os = "linux", any(feature = "postgres", feature = "mysql"))))]
mod sys {
    //! Elsewhere: nothing is found, so nothing is severed.

    use std::time::Duration;

    use super::{Fd, SocketFacts};

    pub(super) const SUPPORTED: bool = false;

    pub(crate) struct OwnedSocket(());

    impl OwnedSocket {
        pub(crate) fn shutdown(&self) {}
        pub(crate) fn set_user_timeout(&self, _timeout: Duration) {}
    }

    pub(crate) fn socket_inode_of(_fd: Fd) -> Option<u64> {
        None
    }

    pub(crate) fn dup_checked(_fd: Fd, _inode: u64) -> Option<OwnedSocket> {
        None
    }

    pub(crate) fn sockets_to(_ports: &[u16]) -> Vec<SocketFacts> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn facts(fd: Fd, inode: u64, peer: &str, ut: Option<u32>) -> SocketFacts {
        SocketFacts {
            fd,
            inode,
            peer: peer.parse().unwrap(),
            user_timeout_ms: ut,
        }
    }

    fn target(ports: &[u16], addrs: &[IpAddr], tag_ms: u32) -> Target {
        Target {
            ports: ports.to_vec(),
            addrs: addrs.to_vec(),
            tag_ms,
        }
    }

    #[test]
    fn the_one_socket_with_the_tag_on_a_configured_port_is_picked() {
        let sockets = [
            facts(7, 70, "10.0.0.1:5432", Some(5000)),
            facts(8, 80, "10.0.0.1:5432", Some(5017)),
            facts(9, 90, "10.0.0.1:6379", Some(5017)),
        ];
        let t = target(&[5432], &[], 5017);
        assert_eq!(pick(&sockets, &t, &[]), Pick::One(1));
    }

    #[test]
    fn a_socket_to_another_address_is_not_picked_when_the_config_names_addresses() {
        let sockets = [
            facts(7, 70, "10.0.0.2:5432", Some(5017)),
            facts(8, 80, "10.0.0.1:5432", Some(5017)),
        ];
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            pick(&sockets, &target(&[5432], &[ip], 5017), &[]),
            Pick::One(1)
        );
        // By name (no addresses): both match, so neither is claimed.
        assert_eq!(
            pick(&sockets, &target(&[5432], &[], 5017), &[]),
            Pick::Ambiguous(2)
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_matches_its_ipv4_address() {
        let sockets = [facts(7, 70, "[::ffff:10.0.0.1]:5432", Some(5017))];
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            pick(&sockets, &target(&[5432], &[ip], 5017), &[]),
            Pick::One(0)
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            pick(&sockets, &target(&[5432], &[v6], 5017), &[]),
            Pick::NotFound
        );
    }

    #[test]
    fn a_claimed_socket_is_never_picked_again() {
        let sockets = [
            facts(7, 70, "10.0.0.1:5432", Some(5017)),
            facts(8, 80, "10.0.0.1:5432", Some(5017)),
        ];
        assert_eq!(
            pick(&sockets, &target(&[5432], &[], 5017), &[70]),
            Pick::One(1)
        );
        assert_eq!(
            pick(&sockets, &target(&[5432], &[], 5017), &[70, 80]),
            Pick::NotFound
        );
    }

    #[test]
    fn an_untagged_or_non_tcp_socket_is_never_picked() {
        // Same port and address as the connect, but a translated local port or another
        // library's socket: without the tag it is not ours.
        let sockets = [
            facts(7, 70, "127.0.0.1:5432", Some(5000)),
            facts(8, 80, "127.0.0.1:5432", None),
        ];
        assert_eq!(
            pick(&sockets, &target(&[5432], &[], 5017), &[]),
            Pick::NotFound
        );
    }

    #[test]
    fn proc_fd_links_are_parsed() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123456));
        assert_eq!(socket_inode("pipe:[123456]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[12x]"), None);
    }

    #[test]
    fn tags_stay_near_the_configured_user_timeout_and_never_overflow() {
        assert_eq!(tag_ms(Duration::from_secs(5), 17), 5017);
        assert_eq!(tag_ms(Duration::from_millis(5_900), 1), 5001);
        // Zero (the kernel default) is tagged from one second, so the connect is not cut
        // short by a tiny user timeout.
        assert_eq!(tag_ms(Duration::ZERO, 999), 1999);
        let max = tag_ms(Duration::MAX, 999);
        assert!(max > 4_000_000_000, "{max}");
    }

    #[test]
    fn tags_in_use_are_distinct_and_released_on_drop() {
        let a = Tag::take(Duration::from_secs(5)).unwrap();
        let b = Tag::take(Duration::from_secs(5)).unwrap();
        assert_ne!(a.ms, b.ms);
        assert!((5001..=5999).contains(&a.ms), "{}", a.ms);
        let offset = a.offset;
        drop(a);
        assert!(!TAGS.lock().in_use.contains(&offset));
        assert!(TAGS.lock().in_use.contains(&b.offset));
    }

    #[test]
    fn a_cancelled_watch_never_runs_and_a_due_one_runs_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let cancelled = schedule(
            Duration::from_millis(50),
            Box::new(move || {
                r.fetch_add(100, Ordering::SeqCst);
            }),
        );
        drop(cancelled);
        let r = ran.clone();
        let due = schedule(
            Duration::from_millis(10),
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while ran.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(100));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(due);
        // Too far to represent: never scheduled.
        assert!(schedule(Duration::MAX, Box::new(|| {})).is_none());
    }
}
