//! The MySQL/MariaDB connection manager.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::{Conn, Opts, OptsBuilder};
use parking_lot::Mutex;

use crate::sever::Registry;

use super::connection::{MyConnection, Server};

/// Default bounds applied when the given options leave them unset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const KEEPALIVE_TIME_MS: u32 = 5_000;
#[cfg(any(target_os = "linux", target_os = "macos"))]
const KEEPALIVE_INTERVAL_SECS: u32 = 1;
#[cfg(any(target_os = "linux", target_os = "macos"))]
const KEEPALIVE_COUNT: u32 = 3;
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT_MS: u32 = 5_000;
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(1);
const RESET_TIMEOUT: Duration = Duration::from_secs(1);

/// URL parameters of the `mysql` crate, the only ones an error message may name.
const KNOWN_PARAMETERS: &[&str] = &[
    "pool_min",
    "pool_max",
    "user",
    "host",
    "port",
    "socket",
    "server_key_path",
    "db_name",
    "prefer_socket",
    "enable_cleartext_plugin",
    "secure_auth",
    "tcp_keepalive_time_ms",
    "tcp_keepalive_probe_interval_secs",
    "tcp_keepalive_probe_count",
    "tcp_user_timeout_ms",
    "compress",
    "tcp_connect_timeout_ms",
    "stmt_cache_size",
    "reset_connection",
    "check_health",
    "max_allowed_packet",
    "cipher_suites",
    "cert_chain_path",
    "priv_key_path",
    "pkcs12_path",
    "root_cert_path",
    "danger_skip_domain_validation",
    "danger_accept_invalid_certs",
];

/// A MySQL URL that could not be read. Its message never quotes the URL or any part of it
/// that could hold a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid MySQL URL: {problem}")]
pub struct InvalidUrl {
    problem: String,
}

impl InvalidUrl {
    fn new(e: &mysql::UrlError) -> InvalidUrl {
        use mysql::UrlError as U;
        let name = |p: &str| {
            if KNOWN_PARAMETERS.contains(&p) {
                format!("parameter `{p}`")
            } else {
                "a parameter".to_owned()
            }
        };
        let problem = match e {
            // The `url` crate's messages are fixed texts ("invalid port number").
            U::ParseError(p) => format!("could not be parsed ({p})"),
            U::UnsupportedScheme(_) => "the scheme must be mysql://".to_owned(),
            U::FeatureRequired(feature, p) => {
                format!("{} needs the mysql crate's `{feature}` feature", name(p))
            }
            U::InvalidValue(p, _) => format!("{} has an invalid value", name(p)),
            U::UnknownParameter(_) => "it has an unknown query parameter".to_owned(),
            U::InvalidPoolConstraints { .. } => "pool_min is larger than pool_max".to_owned(),
            U::BadUrl => "it is incomplete (mysql://user:password@host:port/database)".to_owned(),
        };
        InvalidUrl { problem }
    }

    /// What is wrong, without the URL.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// When the replica last showed that it hears from its primary (see `status::signature`).
#[derive(Debug, Default)]
pub(crate) struct Silence {
    last: Mutex<Option<(String, Instant)>>,
}

impl Silence {
    /// How long `signature` has not changed, as of `now`; `None` without a signature. The
    /// first sighting counts as a change: silence is never overestimated.
    pub(crate) fn observe(&self, signature: Option<String>, now: Instant) -> Option<Duration> {
        let mut last = self.last.lock();
        let Some(sig) = signature else {
            *last = None;
            return None;
        };
        match &*last {
            Some((seen, since)) if *seen == sig => Some(now.saturating_duration_since(*since)),
            _ => {
                *last = Some((sig, now));
                Some(Duration::ZERO)
            }
        }
    }
}

/// An `r2d2::ManageConnection` for MySQL and MariaDB with every blocking step bounded.
///
/// The constructors fill in what the options leave unset:
///
/// | option | default | why |
/// |---|---|---|
/// | `tcp_connect_timeout` | 5 s | an unreachable host fails fast |
/// | `read_timeout` / `write_timeout` | 30 s | a statement on a hung server ends by itself; set them higher for longer statements |
/// | `tcp_keepalive_time_ms` / probe interval / count | 5 s / 1 s / 3 | an idle connection to a vanished host is noticed |
/// | `tcp_user_timeout_ms` (Linux) | 5 s | unacknowledged writes to a vanished host fail after 5 s, not minutes |
///
/// and always turn `prefer_socket` off: with it the `mysql` crate silently reconnects a TCP
/// connection to a loopback address over the server's Unix socket, so the pool would no
/// longer talk over the path it was given — a proxy in between, or a network failure, would
/// not affect it. (An explicit `socket` option is honoured.)
///
/// The start of a connection (TCP connect, TLS, authentication, the `init` statements and
/// one `SELECT @@version`) is bounded by the connect timeout per step, so a server that
/// accepts connections but never answers fails the connect after about that long. Checkout
/// validation (`COM_PING`) waits at most `validation_timeout` (1 s), a session reset at most
/// `reset_timeout` (1 s). `has_broken` makes no round trip: see
/// [`MyConnection`](super::MyConnection) for what it recognises.
///
/// `Debug` and every error leave the password out.
#[derive(Clone)]
pub struct MysqlManager {
    opts: Opts,
    /// `opts` with reads and writes bounded by the connect timeout, for the connect itself.
    connect_opts: Opts,
    validation_timeout: Duration,
    reset_timeout: Duration,
    pub(crate) silence: Arc<Silence>,
    /// Open connections' sockets, for `sever_all` (shared by clones of the manager).
    registry: Arc<Registry>,
}

impl fmt::Debug for MysqlManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not `Opts`' own Debug: it shows the password (and a PKCS #12 one in the TLS options).
        let o = &self.opts;
        f.debug_struct("MysqlManager")
            .field("host", &o.get_ip_or_hostname())
            .field("port", &o.get_tcp_port())
            .field("socket", &o.get_socket())
            .field("user", &o.get_user())
            .field("db_name", &o.get_db_name())
            .field("tls", &o.get_ssl_opts().is_some())
            .field("connect_timeout", &o.get_tcp_connect_timeout())
            .field("read_timeout", &o.get_read_timeout())
            .field("write_timeout", &o.get_write_timeout())
            .field("validation_timeout", &self.validation_timeout)
            .field("reset_timeout", &self.reset_timeout)
            .finish_non_exhaustive()
    }
}

impl MysqlManager {
    /// A manager for `opts` (an `Opts` or an `OptsBuilder`), with default bounds where it has
    /// none.
    pub fn new(opts: impl Into<Opts>) -> MysqlManager {
        let opts: Opts = opts.into();
        let connect = opts.get_tcp_connect_timeout().unwrap_or(CONNECT_TIMEOUT);
        let read = opts.get_read_timeout().copied().unwrap_or(READ_TIMEOUT);
        let write = opts.get_write_timeout().copied().unwrap_or(WRITE_TIMEOUT);
        let mut b = OptsBuilder::from_opts(opts.clone())
            .prefer_socket(false)
            .tcp_connect_timeout(Some(connect))
            .read_timeout(Some(read))
            .write_timeout(Some(write));
        if opts.get_tcp_keepalive_time_ms().is_none() {
            b = b.tcp_keepalive_time_ms(Some(KEEPALIVE_TIME_MS));
        }
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            if opts.get_tcp_keepalive_probe_interval_secs().is_none() {
                b = b.tcp_keepalive_probe_interval_secs(Some(KEEPALIVE_INTERVAL_SECS));
            }
            if opts.get_tcp_keepalive_probe_count().is_none() {
                b = b.tcp_keepalive_probe_count(Some(KEEPALIVE_COUNT));
            }
        }
        #[cfg(target_os = "linux")]
        if opts.get_tcp_user_timeout_ms().is_none() {
            b = b.tcp_user_timeout_ms(Some(TCP_USER_TIMEOUT_MS));
        }
        let opts = Opts::from(b);
        let connect_opts = Opts::from(
            OptsBuilder::from_opts(opts.clone())
                .read_timeout(Some(read.min(connect)))
                .write_timeout(Some(write.min(connect))),
        );
        MysqlManager {
            opts,
            connect_opts,
            validation_timeout: VALIDATION_TIMEOUT,
            reset_timeout: RESET_TIMEOUT,
            silence: Arc::new(Silence::default()),
            registry: Arc::new(Registry::default()),
        }
    }

    /// A manager for a `mysql://user:password@host:port/database?param=value` URL (the
    /// `mysql` crate's URL parameters), with default bounds where it sets none. The error
    /// never quotes the URL.
    pub fn from_url(url: &str) -> Result<MysqlManager, InvalidUrl> {
        Opts::from_url(url)
            .map(MysqlManager::new)
            .map_err(|e| InvalidUrl::new(&e))
    }

    /// How long checkout validation (`COM_PING`) waits for the server. Default: 1 s.
    pub fn validation_timeout(mut self, timeout: Duration) -> Self {
        self.validation_timeout = timeout;
        self
    }

    /// How long a session reset on return (`COM_RESET_CONNECTION` and the `init` statements;
    /// see the builder's `reset_on_return`) waits for the server. Default: 1 s.
    pub fn reset_timeout(mut self, timeout: Duration) -> Self {
        self.reset_timeout = timeout;
        self
    }

    /// The connection options, with the defaults applied. (Its `Debug` shows the password.)
    pub fn opts(&self) -> &Opts {
        &self.opts
    }

    pub(crate) fn reset_timeout_value(&self) -> Duration {
        self.reset_timeout
    }
}

impl MysqlManager {
    /// Shuts down the socket of every open connection of this manager (checked out, idle or
    /// heartbeat): calls blocked on them fail at once. Returns how many. Called by the pool
    /// when writers leave this side for good (Linux; elsewhere it does nothing).
    pub fn sever_all(&self) -> usize {
        self.registry.sever_all()
    }
}

impl r2d2::ManageConnection for MysqlManager {
    type Connection = MyConnection;
    type Error = mysql::Error;

    fn connect(&self) -> Result<MyConnection, mysql::Error> {
        let mut conn = Conn::new(self.connect_opts.clone())?;
        let version: Option<String> = {
            use mysql::prelude::Queryable;
            conn.query_first("SELECT @@version")?
        };
        let server = Server::parse(version.as_deref().unwrap_or(""));
        let mut conn = MyConnection::new(
            conn,
            server,
            self.opts.get_read_timeout().copied(),
            self.opts.get_write_timeout().copied(),
        );
        conn.apply_timeouts()?;
        conn.register(&self.registry);
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut MyConnection) -> Result<(), mysql::Error> {
        conn.bounded(self.validation_timeout, |c| c.ping())
    }

    fn has_broken(&self, conn: &mut MyConnection) -> bool {
        conn.is_broken() || conn.out_of_step()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_is_unset() {
        let m = MysqlManager::from_url("mysql://app:s3cr3t-pw@127.0.0.1:3307/app").unwrap();
        let o = m.opts();
        assert_eq!(o.get_tcp_connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(o.get_read_timeout(), Some(&READ_TIMEOUT));
        assert_eq!(o.get_write_timeout(), Some(&WRITE_TIMEOUT));
        assert_eq!(o.get_tcp_keepalive_time_ms(), Some(KEEPALIVE_TIME_MS));
        #[cfg(target_os = "linux")]
        assert_eq!(o.get_tcp_user_timeout_ms(), Some(TCP_USER_TIMEOUT_MS));
        assert!(!o.get_prefer_socket());
        assert_eq!(m.connect_opts.get_read_timeout(), Some(&CONNECT_TIMEOUT));

        let m = MysqlManager::new(
            OptsBuilder::new()
                .ip_or_hostname(Some("db"))
                .prefer_socket(true)
                .tcp_connect_timeout(Some(Duration::from_secs(2)))
                .read_timeout(Some(Duration::from_secs(600)))
                .tcp_keepalive_time_ms(Some(60_000)),
        );
        let o = m.opts();
        assert_eq!(o.get_read_timeout(), Some(&Duration::from_secs(600)));
        assert_eq!(o.get_tcp_keepalive_time_ms(), Some(60_000));
        assert!(!o.get_prefer_socket());
        // The connect itself is bounded by the connect timeout, not the long read timeout.
        assert_eq!(
            m.connect_opts.get_read_timeout(),
            Some(&Duration::from_secs(2))
        );
        assert_eq!(
            m.connect_opts.get_write_timeout(),
            Some(&Duration::from_secs(2))
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let m = MysqlManager::from_url("mysql://app:s3cr3t-pw@127.0.0.1:3307/app").unwrap();
        let text = format!("{m:?} {m:#?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("127.0.0.1") && text.contains("app"), "{text}");
    }

    #[test]
    fn url_errors_never_echo_the_url() {
        let bad = [
            "mysql://app:s3cr3t-pw@127.0.0.1:notaport/app",
            "postgres://app:s3cr3t-pw@127.0.0.1/app",
            "mysql://app:s3cr3t-pw@127.0.0.1/app?s3cr3t-pw=1",
            "mysql://app:s3cr3t-pw@127.0.0.1/app?port=s3cr3t-pw",
            "mysql://app:s3cr3t-pw@127.0.0.1/app?tcp_connect_timeout_ms=s3cr3t",
            "mysql://app:s3cr3t-pw@127.0.0.1/app?pool_min=9&pool_max=1",
            "s3cr3t-pw",
            "mysql:s3cr3t-pw",
        ];
        for url in bad {
            let e = MysqlManager::from_url(url).expect_err(url);
            let text = format!("{e} {e:?}");
            assert!(!text.contains("s3cr3t"), "{url}: {text}");
        }
        let e = MysqlManager::from_url("mysql://a:b@h/d?tcp_connect_timeout_ms=x").unwrap_err();
        assert_eq!(
            e.problem(),
            "parameter `tcp_connect_timeout_ms` has an invalid value"
        );
    }

    #[test]
    fn silence_grows_only_while_nothing_changes() {
        let s = Silence::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(s.observe(Some("a".into()), at(0)), Some(Duration::ZERO));
        assert_eq!(
            s.observe(Some("a".into()), at(300)),
            Some(Duration::from_millis(300))
        );
        assert_eq!(s.observe(Some("b".into()), at(400)), Some(Duration::ZERO));
        assert_eq!(
            s.observe(Some("b".into()), at(1400)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(s.observe(None, at(1500)), None);
        assert_eq!(s.observe(Some("b".into()), at(1600)), Some(Duration::ZERO));
        // A clock that goes backwards (another thread's older instant) is no panic.
        assert_eq!(s.observe(Some("b".into()), at(1000)), Some(Duration::ZERO));
    }
}
