//! MySQL and MariaDB backend (feature `mysql`, on by default), built on the `mysql` crate.
//!
//! - [`MysqlManager`]: an `r2d2::ManageConnection` whose every blocking step has a bound:
//!   connect, read and write timeouts, keepalives and `tcp_user_timeout` are set when the
//!   options leave them unset (5 s, 30 s, 30 s, 5 s/1 s/3, 5 s); the connect itself is bounded
//!   by the connect timeout per step; checkout validation is `COM_PING` bounded by
//!   `validation_timeout` (1 s); `has_broken` makes no round trip (a failed call of the pool's,
//!   a socket the server closed or wrote to unasked, or — Linux — a statement abandoned on a
//!   timeout before the server answered it).
//! - [`MysqlBackend`]: heartbeats that read, in one round trip, whether the server takes
//!   writes, its GTID positions, its replication connections and whether they still hear from
//!   their primary, semi-synchronous replication, and what the account may do; promotion;
//!   error classification (1290/1836 mean not writable; 1053, 1927, 2006, 2013, 4031, I/O,
//!   codec and driver connection errors mean the connection or server is gone; 1040/1203 mean
//!   too many connections); `COM_RESET_CONNECTION` as session reset, bounded by
//!   `reset_timeout` (1 s).
//!
//! The flavour (MariaDB or MySQL) and version are read at connect (`SELECT @@version`), and
//! each server gets its own SQL: MariaDB `SHOW ALL SLAVES STATUS`, `@@read_only`,
//! `@@gtid_binlog_pos`/`@@gtid_slave_pos`, `MASTER_GTID_WAIT`, `STOP ALL SLAVES`,
//! `RESET SLAVE '…' ALL`; MySQL 8 `SHOW REPLICA STATUS`, `@@super_read_only`,
//! `@@gtid_executed`, `WAIT_FOR_EXECUTED_GTID_SET`, `STOP REPLICA`, `RESET REPLICA ALL`
//! (the `SLAVE` spellings before MySQL 8.0.22).
//!
//! ## What the heartbeats report
//! - **Role**: read-only if `read_only` (or `super_read_only`) is on, or replication runs
//!   (an IO thread running or connecting, a SQL thread running — MariaDB also counts
//!   `Slaves_running`, which any account may read); else writable.
//! - **Upstream** (on a replica): streaming while the IO thread is `Yes` (`Connecting` and `No`
//!   are not streaming); the silence is how long neither the received position nor the
//!   received heartbeat counter has moved, as seen by this manager's heartbeats (MariaDB
//!   10.11 has no "time since the last event" column); a live primary may be quiet for up to
//!   the replica's `slave_net_timeout` (or its heartbeat period, if longer; unbounded with
//!   heartbeats off). A replica status the account may not read is "could not see", never
//!   "lost".
//! - **Lag**: time from `Seconds_Behind_Master` (whole seconds; NULL, e.g. while the IO
//!   thread reconnects, is unknown unless everything received has been applied, which is 0);
//!   transactions received but not applied from the GTID positions (MariaDB: `Gtid_IO_Pos`
//!   against `@@gtid_slave_pos`, per domain; MySQL: `Retrieved_Gtid_Set` not in
//!   `@@gtid_executed`). Bytes are not measured: a `max_failover_lag` in bytes is a build
//!   error.
//! - **Position** (for the lag gate): MariaDB the sum of the GTID sequence numbers of
//!   `@@gtid_binlog_pos` on a primary and `@@gtid_slave_pos` on a replica; MySQL the number
//!   of transactions in `@@gtid_executed`. Run MariaDB replicas with `log_slave_updates` and
//!   `gtid_strict_mode` so that a promoted replica continues the same positions.
//! - **Synchronous** (on a primary): `Rpl_semi_sync_master_status` (MySQL:
//!   `Rpl_semi_sync_source_status`) while semi-synchronous replication is enabled on it, so the
//!   pool reports when the primary silently falls back to asynchronous replication after
//!   `rpl_semi_sync_master_timeout`; nothing when it is not enabled.
//! - **Identity**: MySQL's `server_uuid`; MariaDB's `server_id`, host name, port and data
//!   directory together. There is no cluster identity.
//!
//! ## Grants
//! Connecting and writing need only what the application needs. For the features:
//!
//! | feature | MariaDB 10.11+ | MySQL 8 |
//! |---|---|---|
//! | roles, positions, semi-sync, identity | nothing | nothing |
//! | seeing replication (lag, upstream; `verify_primary_failure`) | `SLAVE MONITOR` (or `SUPER`) | `REPLICATION CLIENT` |
//! | `promote_on_failover` | `SLAVE MONITOR`, `REPLICATION SLAVE ADMIN` (or `SUPER`), `RELOAD` (for `RESET SLAVE ALL`), `READ_ONLY ADMIN` (`SUPER` no longer includes it) | `REPLICATION CLIENT`, `REPLICATION_SLAVE_ADMIN`, `RELOAD`, `SYSTEM_VARIABLES_ADMIN` (or `SUPER`) |
//! | silence on MySQL (optional) | — | `SELECT` on `performance_schema.replication_connection_status` and `…_configuration` |
//!
//! ```sql
//! -- MariaDB 10.11, on the primary (the grants replicate):
//! GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO 'app'@'%';
//! -- MySQL 8:
//! GRANT REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN, RELOAD, SYSTEM_VARIABLES_ADMIN ON *.* TO 'app'@'%';
//! ```
//!
//! The heartbeat checks them on every side: seeing replication by doing it (the status
//! statement works or is refused), promotion from `SHOW GRANTS` (MariaDB 10.11+ and MySQL 8;
//! other versions, and privileges that may come through a role, are reported unchecked
//! rather than guessed). A missing grant is reported at start-up in `status()`, as an event
//! and in the log, and `build_checked` fails with it.
//!
//! ## Promotion
//! Only after the pool decided to promote (see `promote_on_failover`), bounded by
//! `promotion_timeout`:
//! 1. a server that is no replica and takes writes counts as promoted (another pool did it);
//! 2. a replica whose SQL thread is stopped with transactions received but not applied is
//!    refused, untouched: it cannot apply them, and with GTIDs MariaDB discards the relay log
//!    when an IO thread starts while both threads are stopped;
//! 3. `STOP ALL SLAVES IO_THREAD` (MySQL: `STOP REPLICA IO_THREAD`), so that nothing more
//!    arrives that the reset would discard;
//! 4. `MASTER_GTID_WAIT` on the position the IO threads received (MySQL:
//!    `WAIT_FOR_EXECUTED_GTID_SET` on `Retrieved_Gtid_Set`; without GTIDs `MASTER_POS_WAIT` /
//!    `SOURCE_POS_WAIT` on the received binary log coordinates), for what is left of the
//!    timeout;
//! 5. `STOP ALL SLAVES`, `RESET SLAVE '…' ALL` per connection (MySQL: `STOP REPLICA`, `RESET
//!    REPLICA ALL`), `SET GLOBAL read_only = OFF` (which also clears MySQL's
//!    `super_read_only`), and a check that `read_only` is off.
//!
//! A replica that has not applied everything in time is not promoted; its IO threads are
//! started again if its SQL threads run (the pool retries the promotion on later heartbeats).
//!
//! ## TLS
//! Through the `mysql` crate's own TLS features: enable `mysql/native-tls` or
//! `mysql/rustls-tls` in your `Cargo.toml` (Cargo unifies the features) and pass
//! `SslOpts` with `OptsBuilder::ssl_opts`, or the crate's URL parameters (`root_cert_path`,
//! …). TLS is then required for every connection of that manager.
//!
//! ```text
//! let opts = mysql::OptsBuilder::new()
//!     .ip_or_hostname(Some("db1"))
//!     .user(Some("app"))
//!     .pass(Some(password))
//!     .ssl_opts(mysql::SslOpts::default().with_root_cert_path(Some("/etc/ssl/db-ca.pem".into())));
//! let primary = mirrorpool::mysql::MysqlManager::new(opts);
//! ```
//!
//! ## A hung server
//! Every socket read and write of a connection is bounded by its read and write timeouts
//! (30 s by default), so a statement on a server that stopped answering (`SIGSTOP`, a
//! black-holed network) fails by itself after that long, and an unacknowledged write to a
//! vanished host after `tcp_user_timeout` (5 s). The pool's own calls are bounded more
//! tightly: connects by the connect timeout per step, validation by `validation_timeout`,
//! heartbeats by the heartbeat timeout (the socket timeout is set to what is left of it before
//! each result), promotion by `promotion_timeout`, resets by `reset_timeout`. A statement cut
//! short by a timeout leaves its connection out of step with the server: report the error
//! (`PooledConnection::report`), which closes the connection. Such a statement may still
//! commit when the server resumes; the pool never retries writes.
//!
//! Host names are resolved without a bound of the pool's (the system resolver's own
//! timeouts apply), and the connect timeout applies to each address a name resolves to.

mod backend;
mod connection;
mod gtid;
mod manager;
mod status;

#[cfg(test)]
mod tests;

pub use backend::MysqlBackend;
pub use connection::{Flavor, MyConnection, Server};
pub use manager::{InvalidUrl, MysqlManager};

use crate::config::Builder;
use crate::error::BuildError;
use crate::pool::MirrorPool;

/// A mirror pool of MySQL/MariaDB connections.
pub type MysqlPool = MirrorPool<MysqlManager>;

/// A builder preset with [`MysqlBackend`]; every other option at its default.
pub fn builder() -> Builder<MysqlManager> {
    Builder::new().backend(MysqlBackend)
}

/// A pool with default settings from two `mysql://` URLs.
///
/// Parse errors name the side; they never echo the URL (it may hold a password).
pub fn pool(primary_url: &str, mirror_url: &str) -> Result<MysqlPool, BuildError> {
    let (p, m) = managers(primary_url, mirror_url)?;
    builder().build(p, m)
}

/// Managers for both sides from two `mysql://` URLs, for use with [`builder`].
pub fn managers(
    primary_url: &str,
    mirror_url: &str,
) -> Result<(MysqlManager, MysqlManager), BuildError> {
    let parse = |url: &str, option: &'static str| {
        MysqlManager::from_url(url)
            .map_err(|e| BuildError::config(option, format!("is invalid: {}", e.problem())))
    };
    Ok((
        parse(primary_url, "primary URL")?,
        parse(mirror_url, "mirror URL")?,
    ))
}
