//! The writer load's table on PostgreSQL.

use std::collections::HashSet;

use ::postgres::Client;

use crate::postgres::{MakeTls, PgConnection, PostgresManager};
use crate::testkit::error::TestkitError;
use crate::testkit::load::LoadTable;
use crate::testkit::roles;

/// A `(writer int, seq bigint)` table for [`Load`](crate::testkit::Load) on
/// PostgreSQL, in the default schema.
///
/// ```
/// # use mirrorpool::testkit::PgTable;
/// let t = PgTable::new("t").unwrap();
/// assert!(t.create_sql().starts_with("CREATE TABLE t "));
/// assert!(PgTable::new("t; DROP TABLE x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTable {
    name: String,
    insert: String,
    select: String,
}

impl PgTable {
    /// The table `name`, which must be a plain lower-case identifier (else
    /// [`TestkitError::InvalidTableName`]).
    pub fn new(name: &str) -> Result<PgTable, TestkitError> {
        roles::validate_table_name(name)?;
        Ok(PgTable {
            name: name.to_owned(),
            insert: format!("INSERT INTO {name} (writer, seq) VALUES ($1, $2)"),
            select: format!("SELECT writer, seq FROM {name}"),
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `CREATE TABLE <name> (writer int NOT NULL, seq bigint NOT NULL,
    /// PRIMARY KEY (writer, seq))`.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE TABLE {} (writer int NOT NULL, seq bigint NOT NULL, \
             PRIMARY KEY (writer, seq))",
            self.name
        )
    }

    /// Inserts `(writer, seq)` with `client`.
    pub fn insert(
        &self,
        client: &mut Client,
        writer: i32,
        seq: i64,
    ) -> Result<(), ::postgres::Error> {
        client
            .execute(self.insert.as_str(), &[&writer, &seq])
            .map(|_| ())
    }

    /// Every row of the table, read with `client`.
    pub fn rows(&self, client: &mut Client) -> Result<HashSet<(i32, i64)>, ::postgres::Error> {
        client
            .query(self.select.as_str(), &[])?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

impl<T: MakeTls> LoadTable<PostgresManager<T>> for PgTable {
    fn insert(
        &self,
        conn: &mut PgConnection,
        writer: i32,
        seq: i64,
    ) -> Result<(), ::postgres::Error> {
        PgTable::insert(self, conn.client_mut(), writer, seq)
    }

    fn read_rows(&self, conn: &mut PgConnection) -> Result<Vec<(i32, i64)>, ::postgres::Error> {
        Ok(self.rows(conn.client_mut())?.into_iter().collect())
    }
}
