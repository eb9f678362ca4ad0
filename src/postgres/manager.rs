//! The PostgreSQL connection manager.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::Host;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;

use super::connection::PgConnection;
use crate::sever::{ConnectHook, ConnectWatch, Registry};

/// TLS connectors the manager accepts: `postgres::NoTls`, `postgres_native_tls` and
/// `postgres_openssl` connectors, or any other `MakeTlsConnect<Socket>` that is `Clone` and
/// thread-safe.
pub trait MakeTls:
    MakeTlsConnect<Socket, TlsConnect = Self::Connect, Stream = Self::TlsStream>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The connector's per-connection TLS handshake.
    type Connect: TlsConnect<Socket, Future = Self::ConnectFuture> + Send;
    /// The encrypted stream.
    type TlsStream: Send;
    /// The handshake future.
    type ConnectFuture: Send;
}

impl<T> MakeTls for T
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Connect = T::TlsConnect;
    type TlsStream = T::Stream;
    type ConnectFuture = <T::TlsConnect as TlsConnect<Socket>>::Future;
}

/// Default bounds applied when the given `postgres::Config` leaves them unset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVES_RETRIES: u32 = 3;
/// The `postgres` crate's own keepalive idle default; replaced by ours.
const LIBRARY_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(1);
const RESET_TIMEOUT: Duration = Duration::from_secs(1);

/// An `r2d2::ManageConnection` for PostgreSQL with every blocking step bounded.
///
/// `new` fills in what the config leaves unset: `connect_timeout` 5 s, `tcp_user_timeout`
/// 5 s, keepalives after 5 s idle every 1 s, 3 probes, and `application_name=mirrorpool`.
/// `Debug` never shows the password.
///
/// # Bounds
/// - **Connect:** a connect ends within `connect_timeout` (per configured host, like libpq)
///   whatever the server does. The `postgres` crate applies `connect_timeout` to the TCP
///   connect only, so a server that accepts the connection but never answers the start-up
///   message (a stopped process, a black-holed proxy, something else listening on the port)
///   would hold it forever; the manager severs such a connect's socket at the deadline
///   (Linux, TCP; see the module docs of `sever.rs` for how the socket is found). The connect
///   then fails with the `postgres` crate's "connection closed" or I/O error.
/// - **Validation** at checkout waits at most
///   [`validation_timeout`](PostgresManager::validation_timeout) (default 1 s).
/// - **Session reset** (`DISCARD ALL`, the pool's `reset_on_return`) is severed after
///   [`reset_timeout`](PostgresManager::reset_timeout) (default 1 s): the connection is then
///   closed instead of returned.
/// - **Close:** closing a connection whose last validation, heartbeat or reset did not
///   complete severs it at once (a close would wait for the pending answer); any other close
///   is severed after 1 s.
///
/// On Linux the manager also finds each connection's TCP socket at connect, so that
/// [`sever_all`](PostgresManager::sever_all) (called by the pool when it fails over away from
/// this side) can unblock callers waiting on a server that will never answer. Connections over
/// a Unix-domain socket, and all connections on other systems, have none of these bounds but
/// the validation timeout.
#[derive(Clone)]
pub struct PostgresManager<T> {
    config: postgres::Config,
    tls: T,
    validation_timeout: Duration,
    pub(super) reset_timeout: Duration,
    registry: Arc<Registry>,
}

impl<T> fmt::Debug for PostgresManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres::Config's Debug redacts the password.
        f.debug_struct("PostgresManager")
            .field("config", &self.config)
            .field("validation_timeout", &self.validation_timeout)
            .field("reset_timeout", &self.reset_timeout)
            .finish_non_exhaustive()
    }
}

/// The caller's TLS connector, with a hook that finds the socket of each attempt right after
/// its TCP connect (the only point where the `postgres` crate calls back into us before the
/// start-up exchange). The connector itself is used unchanged.
struct Hooked<T> {
    tls: T,
    hook: ConnectHook,
}

impl<T: MakeTlsConnect<Socket>> MakeTlsConnect<Socket> for Hooked<T> {
    type Stream = T::Stream;
    type TlsConnect = T::TlsConnect;
    type Error = T::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<T::TlsConnect, T::Error> {
        self.hook.connected();
        self.tls.make_tls_connect(domain)
    }
}

impl<T: MakeTls> PostgresManager<T> {
    /// A manager for `config`, with default bounds where it has none.
    pub fn new(mut config: postgres::Config, tls: T) -> PostgresManager<T> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_keepalives() {
            if config.get_keepalives_idle() == LIBRARY_KEEPALIVES_IDLE {
                config.keepalives_idle(KEEPALIVES_IDLE);
            }
            if config.get_keepalives_interval().is_none() {
                config.keepalives_interval(KEEPALIVES_INTERVAL);
            }
            if config.get_keepalives_retries().is_none() {
                config.keepalives_retries(KEEPALIVES_RETRIES);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("mirrorpool");
        }
        PostgresManager {
            config,
            tls,
            validation_timeout: VALIDATION_TIMEOUT,
            reset_timeout: RESET_TIMEOUT,
            registry: Arc::new(Registry::default()),
        }
    }

    /// How long checkout validation waits for the server. Default: 1 s.
    pub fn validation_timeout(mut self, timeout: Duration) -> Self {
        self.validation_timeout = timeout;
        self
    }

    /// How long a session reset (`DISCARD ALL`, see the pool's `reset_on_return`) may take
    /// before its connection is severed and closed instead of returned. The reset runs on the
    /// thread that returns the connection, so this bounds that drop. Default: 1 s.
    pub fn reset_timeout(mut self, timeout: Duration) -> Self {
        self.reset_timeout = timeout;
        self
    }

    /// The connection config, with the defaults applied.
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// Shuts down the socket of every open connection of this manager (checked out, idle or
    /// heartbeat): calls blocked on them fail at once with an I/O error. Returns how many.
    pub fn sever_all(&self) -> usize {
        self.registry.sever_all()
    }

    fn ports(&self) -> Vec<u16> {
        let ports = self.config.get_ports();
        if ports.is_empty() {
            vec![5432]
        } else {
            ports.to_vec()
        }
    }

    /// The addresses a connect may go to, if the config names every TCP host by address;
    /// empty (any address) if one is a name.
    fn addrs(&self) -> Vec<IpAddr> {
        let hosts = self.config.get_hosts();
        let hostaddrs = self.config.get_hostaddrs();
        let mut addrs = Vec::new();
        for i in 0..hosts.len().max(hostaddrs.len()) {
            match (hostaddrs.get(i), hosts.get(i)) {
                (Some(a), _) => addrs.push(*a),
                (None, Some(Host::Tcp(h))) => match h.parse::<IpAddr>() {
                    Ok(a) => addrs.push(a),
                    Err(_) => return Vec::new(),
                },
                _ => {}
            }
        }
        addrs
    }

    /// The whole connect's bound: `connect_timeout` per configured host.
    fn connect_bound(&self) -> Duration {
        let hosts = self
            .config
            .get_hosts()
            .len()
            .max(self.config.get_hostaddrs().len())
            .max(1);
        let per_host = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        per_host
            .checked_mul(u32::try_from(hosts).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
    }

    /// The servers, for log lines (no credentials).
    fn describe(&self) -> String {
        let ports = self.ports();
        let hosts = self.config.get_hosts();
        let names: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match h {
                    Host::Tcp(h) => format!("{h}:{port}"),
                    #[cfg(unix)]
                    Host::Unix(p) => format!("{}:{port}", p.display()),
                }
            })
            .collect();
        format!("the PostgreSQL server at {}", names.join(","))
    }
}

impl<T: MakeTls> r2d2::ManageConnection for PostgresManager<T> {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        let user_timeout = self
            .config
            .get_tcp_user_timeout()
            .copied()
            .unwrap_or(Duration::ZERO);
        let watch = ConnectWatch::start(
            self.ports(),
            self.addrs(),
            user_timeout,
            self.connect_bound(),
            self.describe(),
        );
        let connected = match watch.user_timeout() {
            Some(tagged) => {
                let mut config = self.config.clone();
                config.tcp_user_timeout(tagged);
                config.connect(Hooked {
                    tls: self.tls.clone(),
                    hook: watch.hook(),
                })
            }
            None => self.config.connect(self.tls.clone()),
        };
        match connected {
            Ok(client) => {
                let handle = watch.finish(user_timeout);
                if let Some(h) = &handle {
                    self.registry.add(h);
                }
                Ok(PgConnection::new(client, handle))
            }
            Err(e) => {
                if watch.expired() {
                    log::debug!(
                        "a connect to {} was aborted at its deadline",
                        self.describe()
                    );
                }
                Err(e)
            }
        }
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        let timeout = self.validation_timeout;
        conn.bounded(None, "validation", |c| c.is_valid(timeout))
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.is_closed()
    }
}
