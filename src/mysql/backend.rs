//! MySQL/MariaDB heartbeats, promotion, error classification and session reset.

use std::io;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Value;

use super::connection::{
    breaks_connection, driver_lost, lost_code, set_socket_timeouts, Flavor, MyConnection, Server,
};
use super::gtid::{DomainPos, GtidSet};
use super::manager::MysqlManager;
use super::status::{
    self, flag, get, name_value, received_mariadb, received_mysql, Link, Map, Snapshot, Visible,
};
use crate::backend::{Backend, BackendError, Capabilities, Fault, LagKind};
use crate::observation::Observation;

/// Codes that mean the account may not see something.
fn denied_code(code: u16) -> bool {
    matches!(code, 1044 | 1142 | 1143 | 1227)
}

/// What a `mysql::Error` means for the server's health.
pub(crate) fn classify(error: &mysql::Error) -> Fault {
    match error {
        mysql::Error::MySqlError(e) => match e.code {
            // ER_OPTION_PREVENTS_STATEMENT (--read-only), ER_READ_ONLY_MODE.
            1290 | 1836 => Fault::NotWritable,
            c if lost_code(c) => Fault::ConnectionLost,
            // ER_CON_COUNT_ERROR, ER_TOO_MANY_USER_CONNECTIONS: capacity, not failure.
            1040 | 1203 => Fault::TooManyConnections,
            _ => Fault::Other,
        },
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => Fault::ConnectionLost,
        mysql::Error::DriverError(d) if driver_lost(d) => Fault::ConnectionLost,
        mysql::Error::DriverError(_) => Fault::Other,
        // TLS errors (with the crate's TLS features) are connectivity errors.
        other if other.is_connectivity_error() => Fault::ConnectionLost,
        _ => Fault::Other,
    }
}

/// What promotion statements are called in errors and logs.
const PROMOTION: &str = "promotion";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(DAY)).unwrap_or(now)
}

fn timed_out(what: &str) -> mysql::Error {
    mysql::Error::IoError(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} did not finish within its timeout"),
    ))
}

fn is_timeout(e: &mysql::Error) -> bool {
    let io = match e {
        mysql::Error::IoError(io) => Some(io),
        mysql::Error::CodecError(c) => {
            std::error::Error::source(c).and_then(|s| s.downcast_ref::<io::Error>())
        }
        _ => None,
    };
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    })
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn to_map(row: &mysql::Row) -> Map {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c.name_str().into_owned(),
                row.as_ref(i).and_then(value_text),
            )
        })
        .collect()
}

/// The result sets of one (multi-statement) query: each set's rows, or the error that ended
/// the batch there (the server runs no statement after a failed one).
type Sets = Vec<Result<Vec<Map>, mysql::Error>>;

fn collect(
    conn: &mut mysql::Conn,
    fd: i32,
    sql: &str,
    deadline: Instant,
    what: &str,
) -> Result<Sets, mysql::Error> {
    let mut sets = Sets::new();
    let mut result = conn.query_iter(sql)?;
    loop {
        // Every read of the next set is bounded by what is left of the deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(what));
        }
        set_socket_timeouts(fd, Some(left), Some(left))?;
        let Some(set) = result.iter() else {
            break;
        };
        let mut rows = Vec::new();
        let mut error = None;
        for row in set {
            match row {
                Ok(r) => rows.push(to_map(&r)),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        sets.push(match error {
            None => Ok(rows),
            Some(e) if breaks_connection(&e) => return Err(e),
            Some(e) => Err(e),
        });
    }
    Ok(sets)
}

/// Runs `sql` with every socket read and write bounded by `deadline`, then restores the
/// connection's own timeouts. A connectivity error marks the connection broken.
fn query_sets(
    conn: &mut MyConnection,
    sql: &str,
    deadline: Instant,
    what: &str,
) -> Result<Sets, mysql::Error> {
    let fd = conn.fd();
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out(what));
    }
    conn.bound(left)?;
    let started = Instant::now();
    let out = collect(conn.conn_mut(), fd, sql, deadline, what);
    let level = if what == PROMOTION {
        log::Level::Debug
    } else {
        log::Level::Trace
    };
    log::log!(level, "{what}: `{sql}` took {:?}", started.elapsed());
    let out = out.map_err(|e| {
        // A socket timeout reads as "Resource temporarily unavailable": say what it was.
        if is_timeout(&e) {
            timed_out(what)
        } else {
            e
        }
    });
    if out.as_ref().err().is_some_and(breaks_connection) {
        conn.mark_broken();
    }
    conn.apply_timeouts()?;
    out
}

/// Runs statements that return nothing of interest; the first error is the result.
fn exec(conn: &mut MyConnection, sql: &str, deadline: Instant) -> Result<(), mysql::Error> {
    for set in query_sets(conn, sql, deadline, PROMOTION)? {
        set?;
    }
    Ok(())
}

/// One value of a one-row, one-column query (`None` for NULL or no row).
fn scalar(
    conn: &mut MyConnection,
    sql: &str,
    deadline: Instant,
) -> Result<Option<String>, mysql::Error> {
    let mut sets = query_sets(conn, sql, deadline, PROMOTION)?.into_iter();
    let rows = sets.next().unwrap_or(Ok(Vec::new()))?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_values().next().flatten()))
}

/// The SQL this backend sends to one server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dialect(pub(crate) Server);

impl Dialect {
    fn mariadb(&self) -> bool {
        self.0.flavor() == Flavor::MariaDb
    }

    /// MySQL 8.0.22 renamed SLAVE to REPLICA in statements and status columns.
    fn replica_word(&self) -> &'static str {
        if !self.mariadb() && self.0.at_least(8, 0, 22) {
            "REPLICA"
        } else {
            "SLAVE"
        }
    }

    pub(crate) fn replica_status(&self) -> String {
        if self.mariadb() {
            "SHOW ALL SLAVES STATUS".into()
        } else {
            format!("SHOW {} STATUS", self.replica_word())
        }
    }

    fn read_only_vars(&self) -> &'static str {
        if self.mariadb() {
            "@@read_only AS read_only"
        } else {
            "@@read_only AS read_only, @@super_read_only AS super_read_only"
        }
    }

    /// The heartbeat: one round trip of five (MySQL: six) statements. The statements that
    /// need privileges come last, so a refusal there leaves the rest already read.
    pub(crate) fn probe(&self) -> String {
        if self.mariadb() {
            format!(
                "SELECT {}, @@gtid_binlog_pos AS gtid_binlog_pos, \
                 @@gtid_slave_pos AS gtid_slave_pos, @@slave_net_timeout AS net_timeout, \
                 @@server_id AS server_id, @@hostname AS hostname, @@port AS port, \
                 @@datadir AS datadir; \
                 SHOW GLOBAL VARIABLES WHERE Variable_name IN ('rpl_semi_sync_master_enabled'); \
                 SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Rpl_semi_sync_master_status', 'Slaves_running', 'Slaves_connected'); \
                 SHOW GRANTS; {}",
                self.read_only_vars(),
                self.replica_status()
            )
        } else {
            let net = if self.0.at_least(8, 0, 26) {
                "@@replica_net_timeout"
            } else {
                "@@slave_net_timeout"
            };
            format!(
                "SELECT {}, @@gtid_executed AS gtid_executed, {net} AS net_timeout, \
                 @@server_uuid AS server_uuid, @@server_id AS server_id, \
                 @@hostname AS hostname, @@port AS port; \
                 SHOW GLOBAL VARIABLES WHERE Variable_name IN \
                 ('rpl_semi_sync_master_enabled', 'rpl_semi_sync_source_enabled'); \
                 SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Rpl_semi_sync_master_status', 'Rpl_semi_sync_source_status'); \
                 SHOW GRANTS; {}; \
                 SELECT s.CHANNEL_NAME AS channel, s.COUNT_RECEIVED_HEARTBEATS AS heartbeats, \
                 c.HEARTBEAT_INTERVAL AS heartbeat_interval \
                 FROM performance_schema.replication_connection_status s \
                 JOIN performance_schema.replication_connection_configuration c \
                 ON c.CHANNEL_NAME = s.CHANNEL_NAME",
                self.read_only_vars(),
                self.replica_status()
            )
        }
    }

    fn replica_state(&self) -> String {
        let applied = if self.mariadb() {
            "@@gtid_slave_pos AS gtid_slave_pos"
        } else {
            "@@gtid_executed AS gtid_executed"
        };
        format!(
            "SELECT {}, {applied}; {}",
            self.read_only_vars(),
            self.replica_status()
        )
    }

    fn stop_io(&self) -> String {
        if self.mariadb() {
            "STOP ALL SLAVES IO_THREAD".into()
        } else {
            format!("STOP {} IO_THREAD", self.replica_word())
        }
    }

    fn stop(&self) -> String {
        if self.mariadb() {
            "STOP ALL SLAVES".into()
        } else {
            format!("STOP {}", self.replica_word())
        }
    }

    fn start_io(&self) -> String {
        if self.mariadb() {
            "START ALL SLAVES IO_THREAD".into()
        } else {
            format!("START {} IO_THREAD", self.replica_word())
        }
    }

    fn start(&self) -> String {
        if self.mariadb() {
            "START ALL SLAVES".into()
        } else {
            format!("START {}", self.replica_word())
        }
    }

    /// MariaDB resets one connection at a time; MySQL's statement resets every channel.
    fn reset_all(&self, links: &[Link]) -> Result<Vec<String>, String> {
        if self.mariadb() {
            links
                .iter()
                .map(|l| Ok(format!("RESET SLAVE {} ALL", literal(&l.name)?)))
                .collect()
        } else {
            Ok(vec![format!("RESET {} ALL", self.replica_word())])
        }
    }

    /// Waits until everything the IO threads received is applied, for at most `secs`: on the
    /// received GTID position where replication uses GTIDs, else on each connection's
    /// received binary log coordinates.
    fn wait(&self, links: &[Link], secs: f64) -> Result<Vec<(String, WaitKind)>, String> {
        if self.mariadb() {
            if links.iter().all(|l| l.using_gtid != Some(false)) {
                let pos = received_mariadb(links)
                    .ok_or("could not read the received GTID position (Gtid_IO_Pos)")?;
                if pos.is_empty() {
                    // Nothing received: nothing to wait for.
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT MASTER_GTID_WAIT({}, {secs:.3})",
                    literal(&pos.to_string())?
                );
                return Ok(vec![(sql, WaitKind::Gtid)]);
            }
        } else if let Some(set) = received_mysql(links).filter(|s| !s.is_empty()) {
            let sql = format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {secs:.3})",
                literal(&set.to_string())?
            );
            return Ok(vec![(sql, WaitKind::Gtid)]);
        }
        let function = if self.mariadb() || !self.0.at_least(8, 0, 26) {
            "MASTER_POS_WAIT"
        } else {
            "SOURCE_POS_WAIT"
        };
        links
            .iter()
            .filter_map(|l| match &l.read {
                (Some(file), Some(pos)) if !file.is_empty() => Some((file, pos, &l.name)),
                _ => None,
            })
            .map(|(file, pos, name)| {
                let pos: u64 = pos
                    .trim()
                    .parse()
                    .map_err(|_| "could not read the received binary log position".to_owned())?;
                Ok((
                    format!(
                        "SELECT {function}({}, {pos}, {secs:.3}, {})",
                        literal(file)?,
                        literal(name)?
                    ),
                    WaitKind::Position,
                ))
            })
            .collect()
    }
}

/// How a wait function says it timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitKind {
    /// `MASTER_GTID_WAIT`: 0 done, -1 timed out; `WAIT_FOR_EXECUTED_GTID_SET`: 0 / 1.
    Gtid,
    /// `MASTER_POS_WAIT` / `SOURCE_POS_WAIT`: events waited for, -1 timed out, NULL when
    /// the SQL thread is not running.
    Position,
}

/// A string literal for a value the server gave us (a GTID position, a log file or
/// connection name). Values with quotes or backslashes are refused rather than escaped.
fn literal(value: &str) -> Result<String, String> {
    if value
        .chars()
        .any(|c| c == '\'' || c == '\\' || c.is_control())
    {
        Err("a replication name or position has characters this backend does not quote".into())
    } else {
        Ok(format!("'{value}'"))
    }
}

/// Reads a heartbeat's result sets into a snapshot.
fn snapshot(server: Server, sets: Sets) -> Result<Snapshot, mysql::Error> {
    let short = || {
        mysql::Error::IoError(io::Error::new(
            io::ErrorKind::InvalidData,
            "the heartbeat returned fewer results than it asked for",
        ))
    };
    let mut sets = sets.into_iter();
    let vars = sets
        .next()
        .ok_or_else(short)??
        .into_iter()
        .next()
        .ok_or_else(short)?;
    let settings = name_value(&sets.next().ok_or_else(short)??);
    let status = name_value(&sets.next().ok_or_else(short)??);
    let grants = match sets.next() {
        Some(Ok(rows)) => Some(
            rows.into_iter()
                .filter_map(|r| r.into_values().next().flatten())
                .collect(),
        ),
        _ => None,
    };
    let replicas = match sets.next() {
        Some(Ok(rows)) => Visible::Seen(rows),
        Some(Err(mysql::Error::MySqlError(e))) if denied_code(e.code) => Visible::Denied,
        _ => Visible::Unseen,
    };
    let links = match (server.flavor(), sets.next()) {
        (Flavor::MySql, Some(Ok(rows))) => Some(rows),
        _ => None,
    };
    Ok(Snapshot {
        vars,
        settings,
        status,
        grants,
        replicas,
        links,
    })
}

/// Where a promotion got to, so a failed one can put replication back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Untouched,
    /// The IO threads are stopped; whether the SQL threads were running then.
    IoStopped {
        sql_running: bool,
    },
    Stopped,
    Reset,
}

/// What promotion reads of the replica.
struct ReplicaState {
    read_only: bool,
    links: Vec<Link>,
    /// `@@gtid_slave_pos` (MariaDB) / `@@gtid_executed` (MySQL).
    vars: Map,
}

impl ReplicaState {
    /// Whether every transaction received has been applied (`false` if unknown).
    fn all_applied(&self, server: Server) -> bool {
        if self.links.iter().all(|l| l.caught_up() == Some(true)) {
            return true;
        }
        match server.flavor() {
            Flavor::MariaDb => {
                let applied = get(&self.vars, &["gtid_slave_pos"]).and_then(DomainPos::parse);
                match (received_mariadb(&self.links), applied) {
                    (Some(r), Some(a)) => {
                        self.links.iter().all(|l| l.using_gtid != Some(false))
                            && r.ahead_of(&a) == 0
                    }
                    _ => false,
                }
            }
            Flavor::MySql => {
                let executed = get(&self.vars, &["gtid_executed"]).and_then(GtidSet::parse);
                match (received_mysql(&self.links), executed) {
                    (Some(r), Some(e)) => !e.is_empty() && r.missing_from(&e) == 0,
                    _ => false,
                }
            }
        }
    }
}

/// The replica's `read_only`, applied position and replication connections.
fn replica_state(
    conn: &mut MyConnection,
    d: Dialect,
    deadline: Instant,
) -> Result<ReplicaState, BackendError> {
    let mut sets = query_sets(conn, &d.replica_state(), deadline, PROMOTION)?.into_iter();
    let vars = sets.next().unwrap_or(Ok(Vec::new()))?;
    let vars = vars.into_iter().next().unwrap_or_default();
    let read_only = flag(get(&vars, &["read_only"])) != Some(false)
        || flag(get(&vars, &["super_read_only"])) == Some(true);
    let rows = sets.next().unwrap_or(Ok(Vec::new()))?;
    Ok(ReplicaState {
        read_only,
        links: rows.iter().map(Link::from_row).collect(),
        vars,
    })
}

fn promote(conn: &mut MyConnection, timeout: Duration) -> Result<(), BackendError> {
    let deadline = deadline_after(timeout);
    let d = Dialect(conn.server());
    let state = replica_state(conn, d, deadline)?;
    if state.links.is_empty() && !state.read_only {
        // Another pool (or an operator) promoted it already.
        return Ok(());
    }
    if state.links.iter().any(|l| l.sql_running != Some(true)) && !state.all_applied(d.0) {
        return Err(
            "the replica's SQL thread is stopped with transactions received but not \
                    applied; not promoted (start its SQL thread first, not its IO thread: with \
                    GTIDs MariaDB discards the relay log when both threads were stopped)"
                .into(),
        );
    }
    if !state.links.is_empty() {
        let mut stage = Stage::Untouched;
        let result = stop_replication(conn, d, deadline, &mut stage);
        // Not promoted: let the replica follow its primary again (best effort, bounded). But
        // never start an IO thread while the SQL thread is stopped: MariaDB (GTID mode) then
        // discards the relay log and fetches again from what was applied, and with the
        // primary gone what was received but not applied would be lost.
        let restart = match stage {
            Stage::IoStopped { sql_running: true } => Some(d.start_io()),
            // Everything received was applied before the threads were stopped.
            Stage::Stopped => Some(d.start()),
            _ => None,
        };
        if let (Err(_), Some(restart)) = (&result, restart) {
            let _ = exec(conn, &restart, deadline_after(Duration::from_secs(1)));
        }
        result?;
    }
    exec(conn, "SET GLOBAL read_only = OFF", deadline)?;
    if replica_state(conn, d, deadline)?.read_only {
        return Err(
            "the promoted server still reports read_only after SET GLOBAL read_only = OFF".into(),
        );
    }
    Ok(())
}

/// Stops the IO threads (so nothing more arrives), waits until everything received is
/// applied, then stops and removes replication.
fn stop_replication(
    conn: &mut MyConnection,
    d: Dialect,
    deadline: Instant,
    stage: &mut Stage,
) -> Result<(), BackendError> {
    exec(conn, &d.stop_io(), deadline)?;
    *stage = Stage::IoStopped { sql_running: false };
    let links = replica_state(conn, d, deadline)?.links;
    *stage = Stage::IoStopped {
        sql_running: links.iter().all(|l| l.sql_running == Some(true)),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    // The server's wait ends a little before our read of its answer times out.
    let secs = left
        .saturating_sub(Duration::from_millis(50))
        .as_secs_f64()
        .max(0.001);
    for (sql, kind) in d.wait(&links, secs)? {
        let answer = scalar(conn, &sql, deadline)?;
        let ok = match (kind, answer.as_deref().map(str::trim)) {
            (WaitKind::Gtid, Some("0")) => true,
            (WaitKind::Position, Some(n)) => n.parse::<i64>().is_ok_and(|n| n >= 0),
            _ => false,
        };
        if !ok {
            let sql_running = links.iter().all(|l| l.sql_running == Some(true));
            return Err(format!(
                "the replica had not applied everything it received within the promotion timeout \
                 ({}); not promoted",
                if sql_running {
                    "its SQL thread is running"
                } else {
                    "its SQL thread is stopped; its IO thread is left stopped so that the relay log is kept"
                }
            )
            .into());
        }
    }
    exec(conn, &d.stop(), deadline)?;
    *stage = Stage::Stopped;
    for sql in d.reset_all(&links)? {
        match exec(conn, &sql, deadline) {
            // ER_MASTER_NOT_FOUND (MariaDB): another pool removed this connection already.
            Err(mysql::Error::MySqlError(e)) if e.code == 1617 => {}
            other => other?,
        }
    }
    *stage = Stage::Reset;
    Ok(())
}

/// Heartbeats, promotion, error classification and session reset for MySQL and MariaDB.
///
/// A heartbeat is one round trip (a multi-statement query, in the dialect of the server the
/// connection found at connect): `read_only` (and MySQL's `super_read_only`), GTID positions,
/// `slave_net_timeout`, who the server is, semi-synchronous replication state, `SHOW
/// GRANTS`, and the replica status (`SHOW ALL SLAVES STATUS` on MariaDB, `SHOW REPLICA
/// STATUS` on MySQL 8.0.22+); on MySQL also the receiver's heartbeat counters from
/// `performance_schema`. See the [module documentation](super) for what each feature needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct MysqlBackend;

impl Backend<MysqlManager> for MysqlBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_roles()
            .with_promote()
            .with_upstream()
            .with_lag(LagKind::Time)
            .with_lag(LagKind::Transactions)
    }

    fn probe(
        &self,
        manager: &MysqlManager,
        conn: &mut MyConnection,
        timeout: Duration,
    ) -> Result<Observation, BackendError> {
        let deadline = deadline_after(timeout);
        let server = conn.server();
        let sets = query_sets(conn, &Dialect(server).probe(), deadline, "the heartbeat")?;
        let snap = snapshot(server, sets)?;
        let silence = manager
            .silence
            .observe(status::signature(server, &snap), Instant::now());
        Ok(status::observe(server, &snap, silence))
    }

    fn promote(
        &self,
        _manager: &MysqlManager,
        conn: &mut MyConnection,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        promote(conn, timeout)
    }

    fn classify(&self, error: &mysql::Error) -> Fault {
        classify(error)
    }

    fn reset(&self, manager: &MysqlManager, conn: &mut MyConnection) -> Result<(), BackendError> {
        Ok(conn.bounded(manager.reset_timeout_value(), |c| c.reset())?)
    }

    fn sever(&self, manager: &MysqlManager) -> usize {
        manager.sever_all()
    }
}

#[cfg(test)]
pub(crate) fn snapshot_for_test(server: Server, sets: Sets) -> Result<Snapshot, mysql::Error> {
    snapshot(server, sets)
}

#[cfg(test)]
impl Dialect {
    pub(crate) fn wait_for_test(&self, links: &[Link], secs: f64) -> Result<Vec<String>, String> {
        Ok(self
            .wait(links, secs)?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    pub(crate) fn reset_for_test(&self, links: &[Link]) -> Result<Vec<String>, String> {
        self.reset_all(links)
    }
}
