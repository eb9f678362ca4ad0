//! PostgreSQL heartbeats, promotion, error classification and session reset.

use std::error::Error as StdError;
use std::thread;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;

use super::connection::PgConnection;

use super::manager::{MakeTls, PostgresManager};
use crate::backend::{Backend, BackendError, Capabilities, Fault, LagKind};
use crate::observation::{Observation, Replication, Role, Upstream};

/// One round trip that tells what a server is. Branches that only work on a primary
/// (`pg_current_wal_lsn()`) or on a replica are guarded by `CASE`, which PostgreSQL evaluates
/// lazily for volatile functions and sub-selects.
const PROBE_SQL: &str = "\
SELECT r.rec,
       current_setting('transaction_read_only') = 'on' AS read_only,
       CASE WHEN r.rec THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
       END AS timeline,
       CASE WHEN r.rec THEN NULL
            ELSE (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')
       END AS replicas,
       CASE WHEN r.rec THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
            ELSE (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) FROM pg_stat_replication)
       END::float8 AS lag_bytes,
       CASE WHEN r.rec THEN
                CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
                     ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END
            ELSE (SELECT extract(epoch FROM max(replay_lag)) FROM pg_stat_replication)
       END::float8 AS lag_secs,
       CASE WHEN r.rec THEN coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)
       END AS streaming,
       CASE WHEN r.rec THEN
                (SELECT extract(epoch FROM now() - last_msg_receipt_time) FROM pg_stat_wal_receiver)
       END::float8 AS silence_secs,
       CASE WHEN r.rec THEN
                (SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'wal_receiver_timeout')
       END AS receiver_timeout_secs
FROM (SELECT pg_is_in_recovery() AS rec) r";

/// Heartbeats, promotion, error classification and session reset for PostgreSQL.
///
/// A heartbeat is one status query (one round trip): in recovery or not, read-only or not
/// (`default_transaction_read_only` fences a primary), timeline, streaming replicas and their
/// replay lag (on a primary), replay lag and the state of the WAL receiver (on a replica).
#[derive(Clone, Copy, Debug, Default)]
pub struct PostgresBackend;

fn secs(v: Option<f64>) -> Option<Duration> {
    v.filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

impl PostgresBackend {
    fn observe(client: &mut Client) -> Result<Observation, postgres::Error> {
        let row = client.query_one(PROBE_SQL, &[])?;
        let in_recovery: bool = row.get("rec");
        let read_only: bool = row.get("read_only");
        let role = if in_recovery || read_only {
            Role::ReadOnly
        } else {
            Role::Writable
        };
        #[allow(clippy::needless_update)]
        let replication = Replication {
            lag_bytes: row
                .get::<_, Option<f64>>("lag_bytes")
                .filter(|b| b.is_finite())
                .map(|b| b.max(0.0) as u64),
            lag_time: secs(row.get("lag_secs")),
            replicas_attached: row
                .get::<_, Option<i64>>("replicas")
                .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            upstream: in_recovery.then(|| Upstream {
                streaming: row.get::<_, Option<bool>>("streaming"),
                silence: secs(row.get("silence_secs")),
                // 0 disables the receiver's timeout: then a live primary may be quiet forever.
                max_quiet: match secs(row.get("receiver_timeout_secs")) {
                    Some(t) if !t.is_zero() => Some(t),
                    _ => Some(Duration::MAX),
                },
            }),
            ..Replication::default()
        };
        let mut obs = Observation::with_role(role).with_replication(replication);
        if let Some(tli) = row.get::<_, Option<i64>>("timeline") {
            obs = obs.with_epoch(tli as u64);
        }
        Ok(obs)
    }

    fn promote_and_wait(client: &mut Client, timeout: Duration) -> Result<(), postgres::Error> {
        let deadline = Instant::now() + timeout;
        // `wait => false`: we poll ourselves, every 2 ms instead of pg_promote's 100 ms.
        match client.query_one("SELECT pg_promote(wait => false)", &[]) {
            Ok(_) => {}
            // "recovery is not in progress": another pool (or an operator) promoted it.
            Err(e) if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {}
            Err(e) => return Err(e),
        }
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            client.is_valid(remaining.max(Duration::from_millis(1)))?;
            let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
            if !in_recovery {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Surface a real server error with a clear message rather than a bare flag.
                client.batch_execute(
                    "DO $$BEGIN RAISE EXCEPTION 'mirrorpool: the promoted server was still in recovery at the promotion timeout'; END$$",
                )?;
                return Ok(());
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

    fn probe(
        &self,
        _manager: &PostgresManager<T>,
        conn: &mut PgConnection,
        _timeout: Duration,
    ) -> Result<Observation, BackendError> {
        // One round trip. A hung server is the monitor's to abandon after the timeout (the
        // prober thread is released when the server answers or the pool severs its socket).
        Ok(PostgresBackend::observe(conn)?)
    }

    fn promote(
        &self,
        _manager: &PostgresManager<T>,
        conn: &mut PgConnection,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        Ok(PostgresBackend::promote_and_wait(conn, timeout)?)
    }

    fn classify(&self, error: &postgres::Error) -> Fault {
        classify(error)
    }

    fn reset(
        &self,
        _manager: &PostgresManager<T>,
        conn: &mut PgConnection,
    ) -> Result<(), BackendError> {
        Ok(conn.batch_execute("DISCARD ALL")?)
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
