//! The application role of a test pair, for every engine: its name, its
//! password and its extra grants.

// Built for every engine; with none enabled, the checks are unused.
#![cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]

use super::error::TestkitError;

/// Name of the application role created on a pair's primary (and replicated
/// to the mirror): a plain, password-authenticated login role, not a
/// superuser. It may create tables and read and write every table in the
/// pair's database (PostgreSQL: schema `public` of database `postgres`,
/// including tables the superuser creates; MariaDB: database `mirrorpool`),
/// and holds the [`Grants`] the pair's builder asks for, nothing else.
pub const APP_USER: &str = "mirrorpool";
/// Password of [`APP_USER`] and of every role a pair's `create_role` makes.
/// A fixed, public test password: the servers only listen on 127.0.0.1 and
/// live for the duration of a test.
pub const APP_PASSWORD: &str = "mirrorpool-testkit-secret";

/// Whether `name` is a plain lower-case identifier, so it needs no quoting in
/// any engine.
fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks that a table name is a plain lower-case identifier.
pub(crate) fn validate_table_name(name: &str) -> Result<(), TestkitError> {
    if is_plain_identifier(name) {
        Ok(())
    } else {
        Err(TestkitError::InvalidTableName {
            name: name.to_owned(),
        })
    }
}

/// Checks that `name` is a plain lower-case identifier and not one of the
/// engine's `reserved` names.
pub(crate) fn validate_role_name(name: &str, reserved: &[&str]) -> Result<(), TestkitError> {
    if is_plain_identifier(name) && !reserved.contains(&name) {
        Ok(())
    } else {
        Err(TestkitError::InvalidRoleName {
            name: name.to_owned(),
        })
    }
}

/// What an application role may do beyond logging in and using the tables of
/// its database: the grants mirrorpool's optional features need. Each pair
/// translates them into its engine's privileges:
///
/// | grant | PostgreSQL | MariaDB 10.11 |
/// |---|---|---|
/// | [`replication_status`](Self::replication_status) | `pg_monitor` | `SLAVE MONITOR` |
/// | [`promote`](Self::promote) | `EXECUTE ON FUNCTION pg_promote` | `REPLICATION SLAVE ADMIN`, `RELOAD`, `READ_ONLY ADMIN` |
///
/// ```
/// # use mirrorpool::testkit::Grants;
/// let all = Grants::none().replication_status(true).promote(true);
/// assert!(all.has_replication_status() && all.has_promote());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Grants {
    replication_status: bool,
    promote: bool,
}

impl Grants {
    /// No extra grant: the least-privilege application role.
    pub fn none() -> Grants {
        Grants::default()
    }

    /// Every grant mirrorpool's features need.
    pub fn all() -> Grants {
        Grants {
            replication_status: true,
            promote: true,
        }
    }

    /// Seeing the replication state (PostgreSQL `pg_stat_replication` and
    /// `pg_stat_wal_receiver`, MariaDB `SHOW SLAVE STATUS`): what
    /// `verify_primary_failure` and the lag gate need.
    pub fn replication_status(mut self, grant: bool) -> Grants {
        self.replication_status = grant;
        self
    }

    /// Promoting the mirror: what `promote_on_failover` needs.
    pub fn promote(mut self, grant: bool) -> Grants {
        self.promote = grant;
        self
    }

    /// Whether seeing the replication state is granted.
    pub fn has_replication_status(&self) -> bool {
        self.replication_status
    }

    /// Whether promoting is granted.
    pub fn has_promote(&self) -> bool {
        self.promote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_must_be_plain_identifiers() {
        assert!(validate_role_name("app_2", &["postgres"]).is_ok());
        for bad in [
            "",
            "2app",
            "App",
            "a-b",
            "a;drop",
            "postgres",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    validate_role_name(bad, &["postgres"]),
                    Err(TestkitError::InvalidRoleName { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
