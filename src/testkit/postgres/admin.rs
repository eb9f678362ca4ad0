//! The admin SQL client of a PostgreSQL test server: short-lived superuser
//! connections on helper threads with deadlines, so that a hung server can
//! never hang a test.

use std::time::Duration;

use ::postgres::types::Type;
use ::postgres::{Client, NoTls, Row, SimpleQueryMessage};

use super::{PgServer, SUPERUSER};
use crate::testkit::error::TestkitError;
use crate::testkit::roles::{Grants, APP_PASSWORD};
use crate::testkit::server::{self, Attempt};

/// `application_name` of the test kit's own short-lived admin connections.
pub(super) const ADMIN_APPLICATION_NAME: &str = "testkit-admin";
/// Deadline of one admin helper call (connect + query).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-side `statement_timeout` of admin connections (below ADMIN_TIMEOUT).
const ADMIN_STATEMENT_TIMEOUT_MS: u64 = 25_000;
/// TCP connect bound of admin connections.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// SQL creating the login role `name` (a validated identifier) with password
/// [`APP_PASSWORD`], table rights in schema `public` and `grants`.
pub(super) fn create_role_sql(name: &str, grants: Grants) -> String {
    let mut sql = format!(
        "CREATE ROLE {name} LOGIN PASSWORD '{APP_PASSWORD}';\
         GRANT CREATE ON SCHEMA public TO {name};\
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {name};\
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {name};\
         ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} IN SCHEMA public \
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {name};\
         ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} IN SCHEMA public \
             GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {name};"
    );
    if grants.has_replication_status() {
        sql.push_str(&format!("GRANT pg_monitor TO {name};"));
    }
    if grants.has_promote() {
        sql.push_str(&format!(
            "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {name};"
        ));
    }
    sql
}

impl PgServer {
    /// One quick readiness check: connect and `SELECT 1`.
    pub(super) fn probe(&self) -> Result<(), TestkitError> {
        self.run_admin(
            "readiness probe",
            PROBE_CONNECT_TIMEOUT,
            PROBE_TIMEOUT,
            |c| c.simple_query("SELECT 1").map(|_| ()),
        )
    }

    /// Promotes the mirror to a primary (`SELECT pg_promote(true, 25)`) and
    /// waits until it has left recovery and accepts writes. The old primary
    /// is left alone (both are writable afterwards, as after a real failover
    /// without fencing).
    pub fn promote(&self) -> Result<(), TestkitError> {
        log::info!("testkit: promoting the {}", self.process.label());
        let promoted = self.run_admin("pg_promote", CONNECT_TIMEOUT, ADMIN_TIMEOUT, |c| {
            c.query_one("SELECT pg_promote(true, 25)", &[])?
                .try_get::<_, bool>(0)
        })?;
        if !promoted {
            return Err(TestkitError::UnexpectedResult {
                what: format!("pg_promote on the {}", self.name()),
                detail: "promotion did not complete within 25 s".to_owned(),
            });
        }
        self.wait_for_count(
            "the promoted server to leave recovery",
            "SELECT CASE WHEN pg_is_in_recovery() THEN 0 ELSE 1 END",
            ADMIN_TIMEOUT,
        )
    }

    /// Runs `sql` over a fresh superuser connection and returns the first
    /// column of its single row as `i64` (`int8`, `int4`, `int2`, `oid` and
    /// `bool` — as 0/1 — are accepted). The call has a 30 s deadline.
    pub fn query_one_i64(&self, sql: &str) -> Result<i64, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(
            &server::describe_sql(sql),
            CONNECT_TIMEOUT,
            ADMIN_TIMEOUT,
            move |c| {
                let row = c.query_one(owned.as_str(), &[])?;
                Ok(first_column_i64(&row))
            },
        )?
        .map_err(|detail| TestkitError::UnexpectedResult {
            what: format!("{} on the {}", server::describe_sql(sql), self.name()),
            detail,
        })
    }

    /// Runs `sql` (one or more `;`-separated statements, simple query
    /// protocol) over a fresh superuser connection and returns the number of
    /// rows the last statement affected. The call has a 30 s deadline.
    pub fn execute(&self, sql: &str) -> Result<u64, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(
            &server::describe_sql(sql),
            CONNECT_TIMEOUT,
            ADMIN_TIMEOUT,
            move |c| {
                let messages = c.simple_query(&owned)?;
                Ok(messages
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::CommandComplete(n) => Some(*n),
                        _ => None,
                    })
                    .last()
                    .unwrap_or(0))
            },
        )
    }

    /// Number of client backends in `pg_stat_activity`
    /// (`backend_type = 'client backend'`), optionally only those whose
    /// `application_name` is `LIKE` the given pattern. The test kit's own
    /// short-lived admin connections (application name `testkit-admin`,
    /// including the one asking) are never counted.
    pub fn connection_count(
        &self,
        application_name_like: Option<&str>,
    ) -> Result<i64, TestkitError> {
        let pattern = application_name_like.map(str::to_owned);
        self.run_admin(
            "connection count",
            CONNECT_TIMEOUT,
            ADMIN_TIMEOUT,
            move |c| {
                c.query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 AND application_name IS DISTINCT FROM $2::text \
                 AND ($1::text IS NULL OR application_name LIKE $1::text)",
                    &[&pattern, &ADMIN_APPLICATION_NAME],
                )?
                .try_get::<_, i64>(0)
            },
        )
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
            let result = self.run_admin(what, budget.min(CONNECT_TIMEOUT), budget, move |c| {
                Ok(first_column_i64(&c.query_one(owned.as_str(), &[])?))
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

    /// Runs `f` on a fresh superuser connection in a helper thread and waits
    /// at most `timeout` for it: the `postgres` crate's own timeouts cover
    /// only the TCP connect, so a hung server would otherwise block forever.
    fn run_admin<T, F>(
        &self,
        what: &str,
        connect_timeout: Duration,
        timeout: Duration,
        f: F,
    ) -> Result<T, TestkitError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, ::postgres::Error> + Send + 'static,
    {
        self.process.check_not_paused()?;
        let mut config = self.config();
        config
            .connect_timeout(connect_timeout)
            .application_name(ADMIN_APPLICATION_NAME)
            .options(&format!(
                "-c statement_timeout={ADMIN_STATEMENT_TIMEOUT_MS}"
            ));
        let context = format!("{what} on the {} (port {})", self.name(), self.port());
        let result = server::call_with_deadline(&context, timeout, move || {
            let mut client = config.connect(NoTls)?;
            let result = f(&mut client);
            drop(client);
            result
        })?;
        result.map_err(|source| TestkitError::Postgres { context, source })
    }
}

/// The first column of `row` as an `i64`, or what is wrong with it.
fn first_column_i64(row: &Row) -> Result<i64, String> {
    let Some(column) = row.columns().first() else {
        return Err("the query returned no columns".to_owned());
    };
    let ty = column.type_().clone();
    let value: Result<Option<i64>, ::postgres::Error> = if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(0)
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(0).map(|v| v.map(i64::from))
    } else if ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(0).map(|v| v.map(i64::from))
    } else if ty == Type::OID {
        row.try_get::<_, Option<u32>>(0).map(|v| v.map(i64::from))
    } else if ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(0).map(|v| v.map(i64::from))
    } else {
        return Err(format!("the first column has type {ty}, not an integer"));
    };
    match value {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err("the value is NULL".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_sql_grants_only_what_is_asked() {
        let none = create_role_sql("app", Grants::none());
        assert!(none.contains("CREATE ROLE app LOGIN PASSWORD"));
        assert!(!none.contains("SUPERUSER"));
        assert!(!none.contains("pg_monitor") && !none.contains("pg_promote"));
        let all = create_role_sql("app", Grants::all());
        assert!(all.contains("GRANT pg_monitor TO app"));
        assert!(all.contains("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app"));
    }
}
