//! The writer load's table on MariaDB.

use std::collections::HashSet;

use ::mysql::prelude::Queryable;
use ::mysql::Row;

use crate::mysql::{MyConnection, MysqlManager};
use crate::testkit::error::TestkitError;
use crate::testkit::load::LoadTable;
use crate::testkit::roles;

/// A `(writer INT, seq BIGINT)` InnoDB table for
/// [`Load`](crate::testkit::Load) on MariaDB, in the connection's database.
///
/// ```
/// # use mirrorpool::testkit::MyTable;
/// let t = MyTable::new("t").unwrap();
/// assert!(t.create_sql().starts_with("CREATE TABLE t "));
/// assert!(MyTable::new("t; DROP TABLE x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyTable {
    name: String,
    insert: String,
    select: String,
}

impl MyTable {
    /// The table `name`, which must be a plain lower-case identifier (else
    /// [`TestkitError::InvalidTableName`]).
    pub fn new(name: &str) -> Result<MyTable, TestkitError> {
        roles::validate_table_name(name)?;
        Ok(MyTable {
            name: name.to_owned(),
            insert: format!("INSERT INTO {name} (writer, seq) VALUES (?, ?)"),
            select: format!("SELECT writer, seq FROM {name}"),
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `CREATE TABLE <name> (writer INT NOT NULL, seq BIGINT NOT NULL,
    /// PRIMARY KEY (writer, seq)) ENGINE = InnoDB`.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE TABLE {} (writer INT NOT NULL, seq BIGINT NOT NULL, \
             PRIMARY KEY (writer, seq)) ENGINE = InnoDB",
            self.name
        )
    }

    /// Inserts `(writer, seq)` (autocommit) with `conn`.
    pub fn insert(
        &self,
        conn: &mut impl Queryable,
        writer: i32,
        seq: i64,
    ) -> Result<(), ::mysql::Error> {
        conn.exec_drop(self.insert.as_str(), (writer, seq))
    }

    /// Every row of the table, read with `conn`.
    pub fn rows(&self, conn: &mut impl Queryable) -> Result<HashSet<(i32, i64)>, ::mysql::Error> {
        let mut rows = HashSet::new();
        for row in conn.query_iter(self.select.as_str())? {
            let row: Row = row?;
            let (writer, seq) = ::mysql::from_row_opt::<(i32, i64)>(row)?;
            rows.insert((writer, seq));
        }
        Ok(rows)
    }
}

impl LoadTable<MysqlManager> for MyTable {
    fn insert(&self, conn: &mut MyConnection, writer: i32, seq: i64) -> Result<(), ::mysql::Error> {
        MyTable::insert(self, conn.conn_mut(), writer, seq)
    }

    fn read_rows(&self, conn: &mut MyConnection) -> Result<Vec<(i32, i64)>, ::mysql::Error> {
        Ok(self.rows(conn.conn_mut())?.into_iter().collect())
    }
}
