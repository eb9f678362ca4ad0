//! PostgreSQL backend (feature `postgres`, on by default), built on the `postgres` crate.
//!
//! - [`PostgresManager`]: an `r2d2::ManageConnection` whose every blocking step has a bound:
//!   `connect_timeout`, `tcp_user_timeout` and keepalives are set when the given
//!   `postgres::Config` leaves them unset; checkout validation is `Client::is_valid(timeout)`;
//!   `has_broken` is `Client::is_closed()` (no round trip).
//! - [`PostgresBackend`]: heartbeats that ask, in one round trip, whether the server is in
//!   recovery, its timeline, how far behind the replica is and whether it still streams from
//!   its primary; promotion with `pg_promote()`; error classification (`25006` means not
//!   writable; `57P01`/`57P02`/`57P03`, `08xxx`, I/O errors and closed connections mean the
//!   server is gone); `DISCARD ALL` as session reset.
//!
//! The heartbeat role needs to see `pg_stat_replication` and `pg_stat_wal_receiver` (grant it
//! `pg_monitor`) and, for `promote_on_failover`, to run `pg_promote()` (a superuser, or
//! `GRANT EXECUTE ON FUNCTION pg_promote TO ...`).
//!
//! ## TLS
//! The manager is generic over the `postgres` crate's TLS connectors: pass `postgres::NoTls`,
//! or a `postgres_native_tls::MakeTlsConnector` / `postgres_openssl::MakeTlsConnector` from
//! those crates (certificate verification is the connector's job; `sslmode=require` in the
//! config makes TLS mandatory):
//!
//! ```text
//! let connector = native_tls::TlsConnector::builder().build()?;
//! let tls = postgres_native_tls::MakeTlsConnector::new(connector);
//! let pool = mirrorpool::postgres::pool(
//!     "host=db1 user=app sslmode=require",
//!     "host=db2 user=app sslmode=require",
//!     tls,
//! )?;
//! ```
//!
//! ## A hung server
//! `connect_timeout` bounds only the TCP connect and the `postgres` crate has no read
//! timeout, so a server process that is stopped while its kernel still acknowledges traffic
//! (`SIGSTOP`, a proxy that swallows bytes) can hold a connect or a query until it resumes.
//! The pool never waits for those itself: connects run on their own threads and callers stop
//! waiting at their deadline, and heartbeats run on prober threads that the monitor abandons
//! after `heartbeat_timeout` (at most `max_size` connects and four abandoned heartbeats per
//! side). Callers already blocked in a statement on such a server are released when the pool
//! fails over away from it: it shuts down the sockets of that side's connections (see
//! [`PostgresManager::sever_all`]), so those statements fail like any statement in flight at
//! a crash. Such a statement may still commit if the old server resumes (a "failed but
//! committed" write); the pool never retries writes.

mod backend;
mod connection;
mod manager;
mod socket;

pub use backend::PostgresBackend;
pub use connection::PgConnection;
pub use manager::{MakeTls, PostgresManager};

use crate::config::Builder;
use crate::error::BuildError;
use crate::pool::MirrorPool;

/// A mirror pool of PostgreSQL connections.
pub type PostgresPool<T = postgres::NoTls> = MirrorPool<PostgresManager<T>>;

/// A builder preset with [`PostgresBackend`]; every other option at its default.
pub fn builder<T: MakeTls>() -> Builder<PostgresManager<T>> {
    Builder::new().backend(PostgresBackend)
}

/// A pool with default settings from two connection strings (`key=value` or URL form).
///
/// Parse errors name the side; they never echo the string (it may hold a password).
pub fn pool<T: MakeTls>(
    primary: &str,
    mirror: &str,
    tls: T,
) -> Result<PostgresPool<T>, BuildError> {
    let (p, m) = managers(primary, mirror, tls)?;
    builder().build(p, m)
}

/// Managers for both sides from two connection strings, for use with [`builder`].
pub fn managers<T: MakeTls>(
    primary: &str,
    mirror: &str,
    tls: T,
) -> Result<(PostgresManager<T>, PostgresManager<T>), BuildError> {
    let parse = |s: &str, option: &'static str| {
        s.parse::<postgres::Config>()
            .map_err(|e| BuildError::config(option, format!("could not be parsed: {e}")))
    };
    Ok((
        PostgresManager::new(parse(primary, "primary connection string")?, tls.clone()),
        PostgresManager::new(parse(mirror, "mirror connection string")?, tls),
    ))
}
