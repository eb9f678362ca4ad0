//! The PostgreSQL connection manager.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::Socket;

use super::connection::PgConnection;
use super::socket::Registry;

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

/// An `r2d2::ManageConnection` for PostgreSQL with every blocking step bounded.
///
/// `new` fills in what the config leaves unset: `connect_timeout` 5 s, `tcp_user_timeout`
/// 5 s, keepalives after 5 s idle every 1 s, 3 probes, and `application_name=mirrorpool`.
/// Validation at checkout waits at most `validation_timeout` (default 1 s).
/// `Debug` never shows the password.
///
/// On Linux the manager also finds each connection's TCP socket at connect, so that
/// [`sever_all`](PostgresManager::sever_all) (called by the pool when it fails over away from
/// this side) can unblock callers waiting on a server that will never answer.
#[derive(Clone)]
pub struct PostgresManager<T> {
    config: postgres::Config,
    tls: T,
    validation_timeout: Duration,
    registry: Arc<Registry>,
}

impl<T> fmt::Debug for PostgresManager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres::Config's Debug redacts the password.
        f.debug_struct("PostgresManager")
            .field("config", &self.config)
            .field("validation_timeout", &self.validation_timeout)
            .finish_non_exhaustive()
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
            validation_timeout: Duration::from_secs(1),
            registry: Arc::new(Registry::default()),
        }
    }

    /// How long checkout validation waits for the server. Default: 1 s.
    pub fn validation_timeout(mut self, timeout: Duration) -> Self {
        self.validation_timeout = timeout;
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
}

impl<T: MakeTls> r2d2::ManageConnection for PostgresManager<T> {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        let mut client = self.config.connect(self.tls.clone())?;
        // Where the server saw us come from: finds our socket (see `socket`). NULL over a
        // Unix socket; an error here fails the connect like any first query would.
        let client_port: Option<i32> = client.query_one("SELECT inet_client_port()", &[])?.get(0);
        let port = client_port.and_then(|p| u16::try_from(p).ok());
        let handle = self.registry.claim(port, &self.ports());
        Ok(PgConnection::new(client, handle))
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.is_valid(self.validation_timeout)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.is_closed()
    }
}
