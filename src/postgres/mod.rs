//! PostgreSQL backend (feature `postgres`, on by default), built on the `postgres` crate.
//!
//! - [`PostgresManager`]: an `r2d2::ManageConnection` whose every blocking step has a bound:
//!   `connect_timeout`, `tcp_user_timeout` and keepalives are set when the given
//!   `postgres::Config` leaves them unset; a connect ends within `connect_timeout` also when
//!   the server never answers its start-up message; checkout validation is
//!   `Client::is_valid(timeout)`; `has_broken` is `Client::is_closed()` (no round trip).
//! - [`PostgresBackend`]: heartbeats that ask, in one round trip, whether the server is in
//!   recovery, its timeline and WAL position, how far behind the replica is, whether it still
//!   streams from its primary, and what the role may see and do; promotion with
//!   `pg_promote()`; error classification (`25006` means not writable; `53300` too many
//!   connections; `57P01`/`57P02`/`57P03`, `08xxx`, I/O errors and closed connections mean the
//!   server is gone); `DISCARD ALL` as session reset, bounded by
//!   [`PostgresManager::reset_timeout`].
//!
//! ## Privileges
//! The pool's role needs nothing beyond what the application itself needs, plus one grant per
//! optional feature:
//!
//! | feature | grant |
//! |---|---|
//! | basic use: connections, heartbeats (role, timeline, WAL position, identity), following a promotion done by someone else | `LOGIN`, and `CONNECT` on the database (PUBLIC has it by default); nothing else |
//! | `verify_primary_failure` (default: on; it guards `promote_on_failover`) and the lag gate (`max_failover_lag`) | `GRANT pg_monitor TO app` (or `pg_read_all_stats`) |
//! | `promote_on_failover` | `GRANT EXECUTE ON FUNCTION pg_promote TO app`, and `pg_monitor` unless `verify_primary_failure(false)` |
//!
//! Without `pg_monitor` PostgreSQL shows the role only the process ids in
//! `pg_stat_replication` and `pg_stat_wal_receiver`: heartbeats then report the mirror's link
//! to its primary as unknown ([`Upstream::streaming`](crate::backend::Upstream) `None`, never "not
//! streaming") and the primary's replica count and replay lag as unknown. Every heartbeat
//! reports both privileges ([`Observation::privileges`](crate::backend::Observation::privileges)):
//! `Access::Denied` carries a text that names the missing grant.
//!
//! Identity ([`Observation::identity`](crate::backend::Observation::identity)): `cluster` is the
//! `system_identifier` from `pg_control_system()`, which PUBLIC may execute by default (`None`
//! if an administrator revoked that); `instance` hashes it with the postmaster's start time,
//! the server's address and its `port` setting, so it differs between the two servers of a
//! pair, is equal for one server reached through two addresses, and changes when a server
//! restarts.
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
//! The `postgres` crate has no read timeout, and its `connect_timeout` bounds only the TCP
//! connect: a server process that is stopped while its kernel still acknowledges traffic
//! (`SIGSTOP`, a proxy that swallows bytes) would hold a connect, a heartbeat or a query until
//! it resumes. So on Linux the manager finds each connection's TCP socket (at connect, by a
//! tag it sets on the socket; no query) and the backend severs it (`shutdown(2)`) when a call
//! outlives its bound:
//!
//! | call | bound |
//! |---|---|
//! | connect (start-up and authentication included) | `connect_timeout` per configured host (default 5 s) |
//! | checkout validation | [`PostgresManager::validation_timeout`] (default 1 s; the client's own timeout) |
//! | heartbeat | 5 × `heartbeat_timeout`, at least 1 s: the monitor stops waiting after one timeout, but a late answer still counts, so the call is not cut there |
//! | promotion | `promotion_timeout` + 1 s |
//! | session reset (`reset_on_return`, on the returning thread) | [`PostgresManager::reset_timeout`] (default 1 s); the connection is then closed |
//! | close | at once if an answer is still pending, else 1 s |
//!
//! Callers already blocked in a statement on such a server are released when the pool fails
//! over away from it: it shuts down the sockets of that side's connections (see
//! [`PostgresManager::sever_all`]), so those statements fail like any statement in flight at
//! a crash. Such a statement may still commit if the old server resumes (a "failed but
//! committed" write); the pool never retries writes.
//!
//! Limits: connections over a Unix-domain socket, and all connections on systems other than
//! Linux, are not severable, so these bounds (but validation's) do not apply to them. A
//! severed connect fails with the `postgres` crate's own error ("connection closed"); the
//! log says which deadline passed.

mod backend;
mod connection;
mod manager;

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
