//! Finding and severing a connection's TCP socket, so that callers blocked on a server that
//! will never answer (stopped, black-holed) get an error when the pool fails over, instead of
//! waiting for the server to resume.
//!
//! The `postgres` crate does not expose its socket and has no read timeout. So after each
//! connect the manager asks the server for the client port it sees (`inet_client_port()`) and
//! looks in `/proc` (Linux) for this process's socket with that local port. Behind a proxy the
//! server sees the proxy's port; then the connection's socket is the one socket to the
//! configured port that no connection has claimed yet, if there is exactly one. Anything
//! ambiguous leaves the connection unregistered (it just cannot be severed). `shutdown(2)`,
//! not `close`, is used to sever, under a lock that the connection's drop also takes, so a
//! socket number is never touched after the connection closed it.

use std::fs;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Sockets claimed by a live connection of any manager in this process.
static CLAIMED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// One connection's socket, while the connection is alive.
#[derive(Debug)]
pub(crate) struct SocketHandle {
    fd: Mutex<Option<RawFd>>,
    inode: u64,
}

impl SocketHandle {
    fn sever(&self) {
        if let Some(fd) = *self.fd.lock() {
            // SAFETY: the fd is open: the owning connection clears it (under this lock) before
            // it closes the socket. shutdown() only ends the TCP stream; it frees nothing.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }

    /// Called by the connection's drop before its socket closes.
    pub(crate) fn forget(&self) {
        *self.fd.lock() = None;
        CLAIMED.lock().retain(|i| *i != self.inode);
    }
}

/// The live connections of one manager.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    live: Mutex<Vec<Weak<SocketHandle>>>,
}

impl Registry {
    /// Finds and claims the socket of a connection just opened to one of `ports`, whose server
    /// saw it come from `client_port` (`None`: not over TCP).
    pub(crate) fn claim(
        &self,
        client_port: Option<u16>,
        ports: &[u16],
    ) -> Option<Arc<SocketHandle>> {
        let client_port = client_port?;
        let mut claimed = CLAIMED.lock();
        let candidates: Vec<TcpSocket> = own_tcp_sockets(ports)
            .into_iter()
            .filter(|s| !claimed.contains(&s.inode))
            .collect();
        let exact: Vec<&TcpSocket> = candidates
            .iter()
            .filter(|s| s.local_port == client_port)
            .collect();
        let found = match (exact.as_slice(), candidates.as_slice()) {
            ([one], _) => *one,
            ([], [only]) => only,
            _ => return None,
        };
        claimed.push(found.inode);
        drop(claimed);
        let handle = Arc::new(SocketHandle {
            fd: Mutex::new(Some(found.fd)),
            inode: found.inode,
        });
        let mut live = self.live.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&handle));
        Some(handle)
    }

    /// Shuts down the socket of every live connection; returns how many.
    pub(crate) fn sever_all(&self) -> usize {
        let live: Vec<Arc<SocketHandle>> =
            self.live.lock().iter().filter_map(Weak::upgrade).collect();
        for h in &live {
            h.sever();
        }
        live.len()
    }
}

/// One of this process's TCP sockets.
struct TcpSocket {
    fd: RawFd,
    inode: u64,
    local_port: u16,
}

/// This process's TCP sockets whose remote port is one of `ports`.
fn own_tcp_sockets(ports: &[u16]) -> Vec<TcpSocket> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let table: Vec<(u64, u16)> = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    let local = port(cols.get(1)?)?;
                    let remote = port(cols.get(2)?)?;
                    let inode = cols.get(9)?.parse::<u64>().ok()?;
                    (ports.contains(&remote) && inode != 0).then_some((inode, local))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    socket_fds()
        .into_iter()
        .filter_map(|(fd, inode)| {
            let (_, local_port) = table.iter().find(|(i, _)| *i == inode)?;
            Some(TcpSocket {
                fd,
                inode,
                local_port: *local_port,
            })
        })
        .collect()
}

fn socket_fds() -> Vec<(RawFd, u64)> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
        let target = fs::read_link(e.path()).ok()?;
        let inode = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((fd, inode))
    })
    .collect()
}
