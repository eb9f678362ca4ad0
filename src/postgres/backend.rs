//! PostgreSQL heartbeats, promotion, error classification and session reset.

use std::error::Error as StdError;
use std::thread;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::PgLsn;
use postgres::{Client, Statement};

use super::connection::PgConnection;

use super::manager::{MakeTls, PostgresManager};
use crate::backend::{Backend, BackendError, Capabilities, Fault};
use crate::observation::{
    Access, Identity, LagKind, Observation, Privileges, Replication, Role, Upstream,
};

/// One round trip that tells what a server is. Branches that only work on a primary
/// (`pg_current_wal_lsn()`) or on a replica are guarded by `CASE`, which PostgreSQL evaluates
/// lazily for volatile functions and sub-selects.
///
/// Ages are taken against `clock_timestamp()`; a negative one (a message received after the
/// statement started) counts as zero, not as unknown.
///
/// Everything here is visible to a plain LOGIN role except the replication views' details:
/// without `pg_read_all_stats` (or `pg_monitor`, a member of it) `pg_stat_replication` and
/// `pg_stat_wal_receiver` show the process id of each WAL sender or receiver and NULL in every
/// other column. So a receiver row with a NULL `status` means "could not see" (`streaming`
/// NULL), no receiver row means "not streaming", and the primary's replica count is reported
/// only to a role that can see the senders' state.
const PROBE_SQL: &str = "\
SELECT r.rec,
       current_setting('transaction_read_only') = 'on' AS read_only,
       pg_has_role('pg_read_all_stats', 'USAGE') AS sees_replication,
       has_function_privilege('pg_promote(boolean,integer)', 'EXECUTE') AS may_promote,
       CASE WHEN r.rec THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS position,
       CASE WHEN r.rec THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
       END AS timeline,
       CASE WHEN r.rec OR NOT pg_has_role('pg_read_all_stats', 'USAGE') THEN NULL
            ELSE (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')
       END AS replicas,
       CASE WHEN r.rec THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
            ELSE (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) FROM pg_stat_replication)
       END::float8 AS lag_bytes,
       CASE WHEN r.rec THEN
                CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                     ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) END
            ELSE (SELECT extract(epoch FROM max(replay_lag)) FROM pg_stat_replication)
       END::float8 AS lag_secs,
       CASE WHEN r.rec THEN
                CASE WHEN w.pid IS NULL THEN false ELSE w.status = 'streaming' END
       END AS streaming,
       CASE WHEN r.rec THEN extract(epoch FROM clock_timestamp() - w.last_msg_receipt_time) END::float8
           AS silence_secs,
       CASE WHEN r.rec THEN
                (SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'wal_receiver_timeout')
       END AS receiver_timeout_secs
FROM (SELECT pg_is_in_recovery() AS rec) r
LEFT JOIN pg_stat_wal_receiver w ON r.rec";

/// Asked once per connection (a server restart ends its connections): what identifies the
/// server instance, and whether the role may read the cluster's system identifier.
/// `pg_control_system()` is executable by PUBLIC by default, but an administrator may revoke
/// it, and a query naming a function the role may not execute fails as a whole, even in a
/// branch that is not taken; so it is read by a second query, only when allowed.
const IDENTITY_SQL: &str = "\
SELECT has_function_privilege('pg_control_system()', 'EXECUTE') AS sysid_visible,
       pg_postmaster_start_time()::text AS started,
       coalesce(host(inet_server_addr()), '') AS addr,
       current_setting('port') AS port";
const SYSID_SQL: &str = "SELECT system_identifier FROM pg_control_system()";

/// Texts of [`Access::Denied`]: what is missing and how to grant it.
const PROMOTE_DENIED: &str =
    "the role lacks EXECUTE on pg_promote (GRANT EXECUTE ON FUNCTION pg_promote TO <role>)";
const REPLICATION_DENIED: &str =
    "the role cannot see replication state (GRANT pg_monitor TO <role>)";

/// A heartbeat that has not answered after this many timeouts (and at least
/// `MIN_PROBE_BOUND`) is severed. The monitor abandons it after one timeout and replaces its
/// thread after five, but a late answer until then still counts (a busy server is not a dead
/// one), so the call itself is not cut at its timeout.
const PROBE_BOUND_TIMEOUTS: u32 = 5;
const MIN_PROBE_BOUND: Duration = Duration::from_secs(1);
/// Slack past the promotion timeout before a promotion call that gets no answer is severed.
const PROMOTE_SLACK: Duration = Duration::from_secs(1);

/// Heartbeats, promotion, error classification and session reset for PostgreSQL.
///
/// A heartbeat is one status query (one round trip on a statement prepared once per
/// connection; the first on a connection also asks who the server is): in recovery or not,
/// read-only or not (`default_transaction_read_only` fences a primary), timeline, WAL position,
/// streaming replicas and their replay lag (on a primary), replay lag and the state of the WAL
/// receiver (on a replica), and whether the role may see replication state and promote.
///
/// Every call is bounded in time on a severable connection (see
/// [`PgConnection::severable`]): a heartbeat is severed after five heartbeat timeouts (at
/// least 1 s) without an answer, a promotion one second past its timeout.
#[derive(Clone, Copy, Debug, Default)]
pub struct PostgresBackend;

/// Seconds as a duration; a negative age (a clock step, or a message received after the
/// statement started) is zero.
fn secs(v: Option<f64>) -> Option<Duration> {
    v.filter(|s| s.is_finite())
        .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
}

/// FNV-1a, 64 bits: a hash that is the same in every process and Rust version.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl PostgresBackend {
    /// Who the server is: its cluster's system identifier (if the role may read it) and a
    /// hash of that, the postmaster's start time, and the server's address and port.
    fn identify(client: &mut Client) -> Result<Identity, postgres::Error> {
        let row = client.query_one(IDENTITY_SQL, &[])?;
        let cluster = if row.try_get::<_, bool>("sysid_visible")? {
            let id: i64 = client.query_one(SYSID_SQL, &[])?.try_get(0)?;
            Some(id as u64)
        } else {
            None
        };
        let started: String = row.try_get("started")?;
        let addr: String = row.try_get("addr")?;
        let port: String = row.try_get("port")?;
        let sysid = cluster.unwrap_or(0).to_be_bytes();
        Ok(Identity {
            cluster,
            instance: fnv1a(&[&sysid, started.as_bytes(), addr.as_bytes(), port.as_bytes()]),
        })
    }

    /// The heartbeat query on a statement prepared once per connection: the query is long
    /// (three replication views, `pg_settings`), and planning it afresh took several times
    /// longer than running it (one more round trip, and ms of server CPU on every heartbeat,
    /// every 5 ms on each side during a failover). A session that lost its prepared statements
    /// (`DISCARD ALL` or `DEALLOCATE` on a pool connection a heartbeat borrowed) prepares it
    /// again.
    fn observe_prepared(
        client: &mut Client,
        prepared: Option<Statement>,
    ) -> Result<(Statement, Observation), postgres::Error> {
        if let Some(statement) = prepared {
            match PostgresBackend::observe(client, &statement) {
                Ok(obs) => return Ok((statement, obs)),
                Err(e) if e.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) => {}
                Err(e) => return Err(e),
            }
        }
        let statement = client.prepare(PROBE_SQL)?;
        let obs = PostgresBackend::observe(client, &statement)?;
        Ok((statement, obs))
    }

    fn observe(client: &mut Client, statement: &Statement) -> Result<Observation, postgres::Error> {
        let row = client.query_one(statement, &[])?;
        let in_recovery: bool = row.try_get("rec")?;
        let read_only: bool = row.try_get("read_only")?;
        let role = if in_recovery || read_only {
            Role::ReadOnly
        } else {
            Role::Writable
        };
        let sees_replication: bool = row.try_get("sees_replication")?;
        let may_promote: bool = row.try_get("may_promote")?;
        let streaming: Option<bool> = row.try_get("streaming")?;
        let silence = secs(row.try_get("silence_secs")?);
        let receiver_timeout = secs(row.try_get("receiver_timeout_secs")?);
        #[allow(clippy::needless_update)]
        let replication = Replication {
            lag_bytes: row
                .try_get::<_, Option<f64>>("lag_bytes")?
                .filter(|b| b.is_finite())
                .map(|b| b.max(0.0) as u64),
            lag_time: secs(row.try_get("lag_secs")?),
            replicas_attached: row
                .try_get::<_, Option<i64>>("replicas")?
                .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            upstream: in_recovery.then_some(Upstream {
                streaming,
                silence,
                // 0 disables the receiver's timeout: then a live primary may be quiet forever.
                max_quiet: match receiver_timeout {
                    Some(t) if !t.is_zero() => Some(t),
                    _ => Some(Duration::MAX),
                },
            }),
            position: row.try_get::<_, Option<PgLsn>>("position")?.map(u64::from),
            ..Replication::default()
        };
        let privileges = Privileges {
            promote: if may_promote {
                Access::Granted
            } else {
                Access::Denied(PROMOTE_DENIED)
            },
            replication_status: if sees_replication {
                Access::Granted
            } else {
                Access::Denied(REPLICATION_DENIED)
            },
            ..Privileges::default()
        };
        let mut obs = Observation::with_role(role)
            .with_replication(replication)
            .with_privileges(privileges);
        if let Some(tli) = row.try_get::<_, Option<i64>>("timeline")? {
            obs = obs.with_epoch(tli as u64);
        }
        Ok(obs)
    }

    /// Promotes and polls until the server left recovery. `Ok(Err(..))`: still in recovery at
    /// the timeout.
    fn promote_and_wait(
        client: &mut Client,
        timeout: Duration,
    ) -> Result<Result<(), String>, postgres::Error> {
        let started = Instant::now();
        // `wait => false`: we poll ourselves, every 2 ms instead of pg_promote's 100 ms.
        match client.query_one("SELECT pg_promote(wait => false)", &[]) {
            Ok(_) => {}
            // "recovery is not in progress": another pool (or an operator) promoted it.
            Err(e) if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {}
            Err(e) => return Err(e),
        }
        loop {
            // Bounded by the caller's watch on the socket.
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])?
                .try_get(0)?;
            if !in_recovery {
                return Ok(Ok(()));
            }
            if started.elapsed() >= timeout {
                return Ok(Err(format!(
                    "the promoted server was still in recovery at the promotion timeout ({timeout:?})"
                )));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl<T: MakeTls> Backend<PostgresManager<T>> for PostgresBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_roles()
            .with_promote()
            .with_upstream()
            .with_lag(LagKind::Bytes)
            .with_lag(LagKind::Time)
    }

    /// One round trip (more on a connection's first heartbeat: it asks who the server is and
    /// prepares the heartbeat query). `timeout` is not a hard cut: the monitor stops waiting
    /// after it, but a slow server's late answer still clears its failures; the call is
    /// severed after five timeouts (at least 1 s), when the monitor gives up on its thread.
    fn probe(
        &self,
        _manager: &PostgresManager<T>,
        conn: &mut PgConnection,
        timeout: Duration,
    ) -> Result<Observation, BackendError> {
        let bound = timeout
            .checked_mul(PROBE_BOUND_TIMEOUTS)
            .unwrap_or(Duration::MAX)
            .max(MIN_PROBE_BOUND);
        let known = conn.identity;
        let prepared = conn.probe_statement.take();
        let (identity, statement, obs) = conn.bounded(Some(bound), "a heartbeat", |c| {
            let identity = match known {
                Some(i) => i,
                None => PostgresBackend::identify(c)?,
            };
            let (statement, obs) = PostgresBackend::observe_prepared(c, prepared)?;
            Ok((identity, statement, obs))
        })?;
        conn.identity = Some(identity);
        conn.probe_statement = Some(statement);
        Ok(obs.with_identity(identity))
    }

    fn promote(
        &self,
        _manager: &PostgresManager<T>,
        conn: &mut PgConnection,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let bound = timeout.saturating_add(PROMOTE_SLACK);
        conn.bounded(Some(bound), "a promotion", |c| {
            PostgresBackend::promote_and_wait(c, timeout)
        })?
        .map_err(BackendError::from)
    }

    fn classify(&self, error: &postgres::Error) -> Fault {
        classify(error)
    }

    /// `DISCARD ALL`, severed after the manager's
    /// [`reset_timeout`](PostgresManager::reset_timeout) (default 1 s) on a severable
    /// connection; unbounded otherwise (Unix-domain sockets, systems other than Linux).
    fn reset(
        &self,
        manager: &PostgresManager<T>,
        conn: &mut PgConnection,
    ) -> Result<(), BackendError> {
        // DISCARD ALL deallocates the heartbeat's prepared statement too.
        conn.probe_statement = None;
        Ok(
            conn.bounded(Some(manager.reset_timeout), "a session reset", |c| {
                c.batch_execute("DISCARD ALL")
            })?,
        )
    }

    fn sever(&self, manager: &PostgresManager<T>) -> usize {
        manager.sever_all()
    }
}

/// What a `postgres::Error` means for the server's health.
pub(crate) fn classify(error: &postgres::Error) -> Fault {
    if error.is_closed() {
        return Fault::ConnectionLost;
    }
    if let Some(code) = error.code() {
        return if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            Fault::NotWritable
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            Fault::TooManyConnections
        } else if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || code.code().starts_with("08")
        {
            Fault::ConnectionLost
        } else {
            Fault::Other
        };
    }
    // No server error: look for an I/O error in the cause chain (a reset or closed socket).
    let mut next: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = next {
        if e.is::<std::io::Error>() {
            return Fault::ConnectionLost;
        }
        next = e.source();
    }
    Fault::Other
}
