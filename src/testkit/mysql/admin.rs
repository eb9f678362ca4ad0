//! The admin SQL client of a MariaDB test server: short-lived `root`
//! connections over the server's Unix socket, on helper threads with
//! deadlines, so that a hung server can never hang a test.

use std::collections::BTreeMap;
use std::time::Duration;

use ::mysql::prelude::Queryable;
use ::mysql::{Conn, OptsBuilder, Row, Value};

use super::{conf, MyServer, DATABASE, REPLICATION_USER, SUPERUSER};
use crate::testkit::error::TestkitError;
use crate::testkit::roles::{Grants, APP_PASSWORD};
use crate::testkit::server::{self, Attempt};

/// Deadline of one admin helper call (connect + statements).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket read/write bound of admin connections (below ADMIN_TIMEOUT).
const ADMIN_SOCKET_TIMEOUT: Duration = Duration::from_secs(25);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a promotion waits for the mirror to apply what it received.
const PROMOTE_APPLY_TIMEOUT_SECS: u64 = 25;

/// SQL creating the login `name`@`%` (a validated identifier) with password
/// [`APP_PASSWORD`], every table right on database `mirrorpool`, and
/// `grants`. What 10.11 needs, checked there: `SHOW SLAVE STATUS` needs
/// `SLAVE MONITOR`; `STOP SLAVE` needs `REPLICATION SLAVE ADMIN`, `RESET
/// SLAVE ALL` needs `RELOAD`, and `SET GLOBAL read_only` needs `READ_ONLY
/// ADMIN` (no longer part of `SUPER` since 10.11).
pub(super) fn create_user_sql(name: &str, grants: Grants) -> String {
    let mut sql = format!(
        "CREATE USER '{name}'@'%' IDENTIFIED BY '{APP_PASSWORD}';\
         GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, \
             CREATE TEMPORARY TABLES, LOCK TABLES, CREATE VIEW, SHOW VIEW, TRIGGER \
             ON `{DATABASE}`.* TO '{name}'@'%';"
    );
    if grants.has_replication_status() {
        sql.push_str(&format!("GRANT SLAVE MONITOR ON *.* TO '{name}'@'%';"));
    }
    if grants.has_promote() {
        sql.push_str(&format!(
            "GRANT REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO '{name}'@'%';"
        ));
    }
    sql
}

/// The primary's set-up: the superuser and the replication login over TCP
/// from any loopback address (no password, like PostgreSQL's trusted
/// `127.0.0.0/8`; a [`TcpProxy`](crate::testkit::TcpProxy) connects from
/// 127.0.0.2), the database, the application login.
pub(super) fn primary_setup_sql(app_user: &str, grants: Grants) -> String {
    format!(
        "CREATE USER '{SUPERUSER}'@'127.%';\
         GRANT ALL PRIVILEGES ON *.* TO '{SUPERUSER}'@'127.%' WITH GRANT OPTION;\
         CREATE USER '{REPLICATION_USER}'@'127.%';\
         GRANT REPLICATION SLAVE ON *.* TO '{REPLICATION_USER}'@'127.%';\
         CREATE DATABASE `{DATABASE}`;{}",
        create_user_sql(app_user, grants)
    )
}

/// The mirror's replication set-up: GTID replication from `primary_port`,
/// heartbeats every 0.5 s, reconnect attempts every second.
pub(super) fn change_master_sql(primary_port: u16) -> String {
    format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {primary_port}, \
         MASTER_USER = '{REPLICATION_USER}', MASTER_USE_GTID = slave_pos, \
         MASTER_HEARTBEAT_PERIOD = 0.5, MASTER_CONNECT_RETRY = 1"
    )
}

/// A value as text (`None` for NULL).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

/// The first column of `row` as an `i64`, or what is wrong with it.
fn first_column_i64(row: Option<Row>) -> Result<i64, String> {
    let Some(row) = row else {
        return Err("the query returned no row".to_owned());
    };
    match row.as_ref(0) {
        None => Err("the query returned no columns".to_owned()),
        Some(Value::NULL) => Err("the value is NULL".to_owned()),
        Some(v) => ::mysql::from_value_opt::<i64>(v.clone()).map_err(|e| e.to_string()),
    }
}

/// `SHOW SLAVE STATUS` as column → value (NULL as the empty string), `None`
/// if the server is no replica.
fn slave_status(conn: &mut Conn) -> Result<Option<BTreeMap<String, String>>, ::mysql::Error> {
    let Some(row) = conn.query_first::<Row, _>("SHOW SLAVE STATUS")? else {
        return Ok(None);
    };
    let columns = row.columns_ref();
    Ok(Some(
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let v = row.as_ref(i).and_then(text).unwrap_or_default();
                (c.name_str().into_owned(), v)
            })
            .collect(),
    ))
}

impl MyServer {
    /// One quick readiness check: connect and `SELECT 1`.
    pub(super) fn probe(&self) -> Result<(), TestkitError> {
        self.run_admin("readiness probe", PROBE_TIMEOUT, |c| {
            c.query_drop("SELECT 1")
        })
    }

    /// Promotes the mirror to a primary, as an orchestrator would: stops
    /// receiving (`STOP SLAVE IO_THREAD`), waits until everything received
    /// is applied (`MASTER_GTID_WAIT` on the received position, at most
    /// 25 s), then `STOP SLAVE`, `RESET SLAVE ALL`, `SET GLOBAL read_only =
    /// OFF`; the option file is changed too, so a restart keeps it a
    /// primary. The old primary is left alone (both are writable afterwards,
    /// as after a real failover without fencing). Errors with
    /// [`TestkitError::UnexpectedResult`] if the server is not a replica or
    /// did not apply what it received in time.
    pub fn promote(&self) -> Result<(), TestkitError> {
        log::info!("testkit: promoting the {}", self.process.label());
        let applied = self.run_admin("promotion", ADMIN_TIMEOUT, |c| {
            if slave_status(c)?.is_none() {
                return Ok(Err(
                    "it is not a replica (SHOW SLAVE STATUS is empty)".to_owned()
                ));
            }
            c.query_drop("STOP SLAVE IO_THREAD")?;
            let received = slave_status(c)?
                .and_then(|s| s.get("Gtid_IO_Pos").cloned())
                .unwrap_or_default();
            if !received.is_empty() {
                let waited = c.exec_first::<Row, _, _>(
                    "SELECT MASTER_GTID_WAIT(?, ?)",
                    (received.as_str(), PROMOTE_APPLY_TIMEOUT_SECS),
                )?;
                if first_column_i64(waited) != Ok(0) {
                    return Ok(Err(format!(
                        "it did not apply the received transactions ({received}) within \
                         {PROMOTE_APPLY_TIMEOUT_SECS} s"
                    )));
                }
            }
            c.query_drop("STOP SLAVE")?;
            c.query_drop("RESET SLAVE ALL")?;
            c.query_drop("SET GLOBAL read_only = OFF")?;
            Ok(Ok(()))
        })?;
        applied.map_err(|detail| TestkitError::UnexpectedResult {
            what: format!("promoting the {}", self.process.label()),
            detail,
        })?;
        conf::set_read_only(&self.option_file, false)?;
        let read_only = self.query_one_i64("SELECT @@read_only")?;
        if read_only != 0 {
            return Err(TestkitError::UnexpectedResult {
                what: format!("promoting the {}", self.process.label()),
                detail: "read_only is still on".to_owned(),
            });
        }
        Ok(())
    }

    /// Runs `sql` over a fresh `root` connection and returns the first
    /// column of its first row as `i64` (integers, and text that parses as
    /// one, e.g. a status variable). The call has a 30 s deadline.
    pub fn query_one_i64(&self, sql: &str) -> Result<i64, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(&server::describe_sql(sql), ADMIN_TIMEOUT, move |c| {
            Ok(first_column_i64(c.query_first::<Row, _>(owned)?))
        })?
        .map_err(|detail| TestkitError::UnexpectedResult {
            what: format!("{} on the {}", server::describe_sql(sql), self.name()),
            detail,
        })
    }

    /// Runs `sql` over a fresh `root` connection and returns the first
    /// column of its first row as text (`None` for NULL or no row), e.g.
    /// `SELECT @@gtid_binlog_pos`. The call has a 30 s deadline.
    pub fn query_one_string(&self, sql: &str) -> Result<Option<String>, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(&server::describe_sql(sql), ADMIN_TIMEOUT, move |c| {
            Ok(c.query_first::<Row, _>(owned)?
                .and_then(|row| row.as_ref(0).and_then(text)))
        })
    }

    /// Runs `sql` (one or more `;`-separated statements) over a fresh `root`
    /// connection (in database `mirrorpool` once it exists) and returns the number of rows the
    /// last statement affected. The call has a 30 s deadline.
    pub fn execute(&self, sql: &str) -> Result<u64, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(&server::describe_sql(sql), ADMIN_TIMEOUT, move |c| {
            let mut result = c.query_iter(owned)?;
            let mut affected = 0;
            while let Some(set) = result.iter() {
                affected = set.affected_rows();
                for row in set {
                    row?;
                }
            }
            Ok(affected)
        })
    }

    /// `SHOW SLAVE STATUS` as column → value (NULL as the empty string),
    /// `None` if the server is no replica.
    pub fn replica_status(&self) -> Result<Option<BTreeMap<String, String>>, TestkitError> {
        self.run_admin("SHOW SLAVE STATUS", ADMIN_TIMEOUT, slave_status)
    }

    /// Number of client connections in `information_schema.PROCESSLIST`,
    /// optionally only those whose user is `LIKE` the given pattern. Server
    /// threads, replication threads (the mirror's and the primary's binlog
    /// senders) and the test kit's own admin connections (`root` over the
    /// Unix socket, including the one asking) are never counted.
    pub fn connection_count(&self, user_like: Option<&str>) -> Result<i64, TestkitError> {
        let pattern = user_like.map(str::to_owned);
        self.run_admin("connection count", ADMIN_TIMEOUT, move |c| {
            Ok(first_column_i64(c.exec_first::<Row, _, _>(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() \
                 AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user') \
                 AND NOT (USER = 'root' AND HOST = 'localhost') \
                 AND COMMAND NOT IN ('Binlog Dump', 'Daemon', 'Slave_IO', 'Slave_SQL', \
                                     'Slave_worker') \
                 AND (? IS NULL OR USER LIKE ?)",
                (pattern.clone(), pattern),
            )?))
        })?
        .map_err(|detail| TestkitError::UnexpectedResult {
            what: format!("the connection count on the {}", self.name()),
            detail,
        })
    }

    /// Polls `sql` (returning a count) until it is at least 1.
    pub(super) fn wait_for_count(
        &self,
        what: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), TestkitError> {
        let described = format!("{what} ({} port {})", self.name(), self.port());
        server::poll_until(&described, timeout, |budget| {
            let owned = sql.to_owned();
            let result = self.run_admin(what, budget, move |c| {
                Ok(first_column_i64(c.query_first::<Row, _>(owned)?))
            });
            match result {
                Ok(Ok(n)) if n >= 1 => Attempt::Done,
                Ok(Ok(n)) => Attempt::NotYet(format!("count was {n}")),
                Ok(Err(detail)) => Attempt::NotYet(detail),
                Err(e @ TestkitError::Paused { .. }) => Attempt::Fail(e),
                Err(e) => Attempt::NotYet(e.to_string()),
            }
        })
    }

    /// Polls until the replication threads run and the IO thread is
    /// connected (`Slave_IO_Running: Yes`, `Slave_SQL_Running: Yes`).
    pub(super) fn wait_for_replicating(&self, timeout: Duration) -> Result<(), TestkitError> {
        let described = format!("the {} to replicate (port {})", self.name(), self.port());
        server::poll_until(&described, timeout, |budget| {
            match self.run_admin("SHOW SLAVE STATUS", budget, slave_status) {
                Ok(Some(s)) => {
                    let io = s.get("Slave_IO_Running").map(String::as_str);
                    let sql = s.get("Slave_SQL_Running").map(String::as_str);
                    if io == Some("Yes") && sql == Some("Yes") {
                        Attempt::Done
                    } else {
                        Attempt::NotYet(format!(
                            "Slave_IO_Running: {io:?}, Slave_SQL_Running: {sql:?}, \
                             Last_IO_Error: {:?}, Last_SQL_Error: {:?}",
                            s.get("Last_IO_Error"),
                            s.get("Last_SQL_Error")
                        ))
                    }
                }
                Ok(None) => Attempt::NotYet("it is not a replica".to_owned()),
                Err(e @ TestkitError::Paused { .. }) => Attempt::Fail(e),
                Err(e) => Attempt::NotYet(e.to_string()),
            }
        })
    }

    /// Runs `f` on a fresh `root` connection over the Unix socket in a helper
    /// thread and waits at most `timeout` for it.
    fn run_admin<T, F>(&self, what: &str, timeout: Duration, f: F) -> Result<T, TestkitError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, ::mysql::Error> + Send + 'static,
    {
        self.process.check_not_paused()?;
        let socket_timeout = timeout.min(ADMIN_SOCKET_TIMEOUT);
        let opts = OptsBuilder::new()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some(SUPERUSER))
            .read_timeout(Some(socket_timeout))
            .write_timeout(Some(socket_timeout));
        let context = format!("{what} on the {} (port {})", self.name(), self.port());
        let result = server::call_with_deadline(&context, timeout, move || {
            let mut conn = Conn::new(opts)?;
            // The database exists once the primary is set up (and on the
            // mirror once that reached it); until then, none is selected.
            let _ = conn.select_db(DATABASE);
            f(&mut conn)
        })?;
        result.map_err(|source| TestkitError::Mysql { context, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_sql_grants_only_what_is_asked() {
        let none = create_user_sql("app", Grants::none());
        assert!(none.contains("CREATE USER 'app'@'%' IDENTIFIED BY"));
        assert!(none.contains("ON `mirrorpool`.* TO 'app'@'%'"));
        assert!(!none.contains("*.*") && !none.contains("SUPER"));
        let monitor = create_user_sql("app", Grants::none().replication_status(true));
        assert!(monitor.contains("GRANT SLAVE MONITOR ON *.* TO 'app'@'%'"));
        assert!(!monitor.contains("READ_ONLY ADMIN"));
        let promote = create_user_sql("app", Grants::none().promote(true));
        assert!(promote.contains(
            "GRANT REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO 'app'@'%'"
        ));
        assert!(!promote.contains("SLAVE MONITOR"));
    }

    #[test]
    fn replication_is_set_up_with_gtids_from_the_primary_port() {
        let sql = change_master_sql(40001);
        assert!(sql.contains("MASTER_PORT = 40001"));
        assert!(sql.contains("MASTER_USE_GTID = slave_pos"));
        assert!(sql.contains("MASTER_HEARTBEAT_PERIOD = 0.5"));
        let setup = primary_setup_sql("app", Grants::none());
        assert!(setup.contains("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.%'"));
        assert!(setup.contains("CREATE DATABASE `mirrorpool`"));
    }

    #[test]
    fn values_read_as_integers_and_text() {
        assert_eq!(text(&Value::NULL), None);
        assert_eq!(text(&Value::Bytes(b"0-1-6".to_vec())), Some("0-1-6".into()));
        assert_eq!(text(&Value::Int(-3)), Some("-3".into()));
        assert_eq!(
            first_column_i64(None),
            Err("the query returned no row".into())
        );
    }
}
