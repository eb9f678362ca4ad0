//! The error type shared by every part of the test kit.

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

/// Everything that can go wrong while starting, driving or tearing down test
/// infrastructure.
///
/// Messages are meant to be read by a human looking at a failed test: where a
/// server or helper program is involved they carry the last lines of its log.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestkitError {
    /// A database engine's server programs could not be found.
    BinariesNotFound {
        /// The engine: `PostgreSQL` or `MariaDB`.
        engine: String,
        /// The programs looked for, e.g. `initdb, pg_ctl, postgres, pg_basebackup`.
        programs: String,
        /// Where the binaries were looked for.
        searched: String,
        /// What to install (`apt-get install …`) or which environment
        /// variable names their directory.
        hint: String,
    },
    /// The unprivileged OS user the servers should run as when the test runs
    /// as root (PostgreSQL refuses to run as root; the test kit runs MariaDB
    /// the same way) does not exist.
    UserNotFound {
        /// The user name that was looked up.
        user: String,
    },
    /// An operating-system level operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper program (`initdb`, `pg_basebackup`, `pg_ctl`,
    /// `mariadb-install-db`) exited unsuccessfully.
    CommandFailed {
        /// The program that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        output: String,
    },
    /// A helper program did not finish within its deadline and was killed.
    CommandTimedOut {
        /// The program that hung.
        command: String,
        /// The deadline it exceeded.
        timeout: Duration,
        /// The last lines of its output.
        output: String,
    },
    /// A server exited during start-up or did not accept connections in time.
    StartFailed {
        /// Which server (the engine and `primary` or `mirror`, e.g.
        /// `PostgreSQL primary`).
        server: String,
        /// Why the start is considered failed.
        reason: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// Waiting for a condition exceeded its deadline.
    Timeout {
        /// What was being waited for.
        what: String,
        /// The deadline that was exceeded.
        timeout: Duration,
        /// The last error observed while waiting, if any.
        last_error: Option<String>,
    },
    /// The operation needs a running server, but the server is not running.
    NotRunning {
        /// Which server (e.g. `PostgreSQL primary`).
        server: String,
    },
    /// The server cannot be started because it is already running.
    AlreadyRunning {
        /// Which server (e.g. `PostgreSQL primary`).
        server: String,
    },
    /// The server is paused (SIGSTOPped) by the test kit, so it cannot answer;
    /// call `resume` first.
    Paused {
        /// Which server (e.g. `PostgreSQL primary`).
        server: String,
    },
    /// A server setting given to a pair builder (`postgresql.conf`, MariaDB
    /// option file) is malformed or reserved by the test kit.
    InvalidSetting {
        /// The setting name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A role name given to the test kit is not a plain identifier.
    InvalidRoleName {
        /// The name.
        name: String,
    },
    /// A table name given to the test kit is not a plain identifier.
    InvalidTableName {
        /// The name.
        name: String,
    },
    /// A query returned something other than what the helper expects.
    UnexpectedResult {
        /// Which helper or query.
        what: String,
        /// What was returned instead.
        detail: String,
    },
    /// A PostgreSQL client operation failed.
    #[cfg(feature = "postgres")]
    Postgres {
        /// What was being done.
        context: String,
        /// The underlying client error.
        source: ::postgres::Error,
    },
    /// A MySQL/MariaDB client operation failed.
    #[cfg(feature = "mysql")]
    Mysql {
        /// What was being done.
        context: String,
        /// The underlying client error.
        source: ::mysql::Error,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}

fn tail_suffix(label: &str, text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- {label} ---\n{}", text.trim_end())
    }
}

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestkitError::BinariesNotFound {
                engine,
                programs,
                searched,
                hint,
            } => write!(
                f,
                "{engine} server binaries ({programs}) not found (searched {searched}): {hint}"
            ),
            TestkitError::UserNotFound { user } => write!(
                f,
                "OS user `{user}` does not exist; the test kit does not run database servers as \
                 root (PostgreSQL refuses to), so it runs them as an unprivileged user: create it \
                 (e.g. `useradd --system {user}`) or set MIRRORPOOL_TESTKIT_USER to an existing one"
            ),
            TestkitError::Io { context, source } => write!(f, "{context}: {source}"),
            TestkitError::CommandFailed {
                command,
                status,
                output,
            } => write!(
                f,
                "`{command}` failed ({status}){}",
                tail_suffix("output", output)
            ),
            TestkitError::CommandTimedOut {
                command,
                timeout,
                output,
            } => write!(
                f,
                "`{command}` did not finish within {timeout:?} and was killed{}",
                tail_suffix("output", output)
            ),
            TestkitError::StartFailed {
                server,
                reason,
                log_tail,
            } => write!(
                f,
                "{server} failed to start: {reason}{}",
                tail_suffix("server log", log_tail)
            ),
            TestkitError::Timeout {
                what,
                timeout,
                last_error,
            } => {
                write!(f, "timed out after {timeout:?} waiting for {what}")?;
                if let Some(e) = last_error {
                    write!(f, " (last error: {e})")?;
                }
                Ok(())
            }
            TestkitError::NotRunning { server } => {
                write!(f, "{server} is not running")
            }
            TestkitError::AlreadyRunning { server } => {
                write!(f, "{server} is already running")
            }
            TestkitError::Paused { server } => write!(
                f,
                "{server} is paused (SIGSTOP); resume it before querying it"
            ),
            TestkitError::InvalidSetting { name, reason } => {
                write!(f, "invalid server setting `{name}`: {reason}")
            }
            TestkitError::InvalidRoleName { name } => write!(
                f,
                "invalid role name `{name}`: use lower-case ASCII letters, digits and '_' \
                 (not starting with a digit, at most 63 characters)"
            ),
            TestkitError::InvalidTableName { name } => write!(
                f,
                "invalid table name `{name}`: use lower-case ASCII letters, digits and '_' \
                 (not starting with a digit, at most 63 characters)"
            ),
            TestkitError::UnexpectedResult { what, detail } => {
                write!(f, "unexpected result from {what}: {detail}")
            }
            #[cfg(feature = "postgres")]
            TestkitError::Postgres { context, source } => write!(f, "{context}: {source}"),
            #[cfg(feature = "mysql")]
            TestkitError::Mysql { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl Error for TestkitError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TestkitError::Io { source, .. } => Some(source),
            #[cfg(feature = "postgres")]
            TestkitError::Postgres { source, .. } => Some(source),
            #[cfg(feature = "mysql")]
            TestkitError::Mysql { source, .. } => Some(source),
            _ => None,
        }
    }
}
