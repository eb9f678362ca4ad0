//! Provisioning files of a MariaDB pair: each server's option file.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::HOST;
use crate::testkit::error::TestkitError;

/// Options whose value the test kit must control (compared with `-` read as
/// `_`, case-insensitively).
const RESERVED_SETTINGS: [&str; 14] = [
    "port",
    "socket",
    "datadir",
    "basedir",
    "bind_address",
    "pid_file",
    "server_id",
    "log_bin",
    "relay_log",
    "skip_networking",
    "user",
    "read_only",
    "log_error",
    "tmpdir",
];

/// The `read_only` lines the option file may hold; [`set_read_only`] swaps
/// one for the other.
const READ_ONLY_ON: &str = "read_only = ON";
const READ_ONLY_OFF: &str = "read_only = OFF";

/// Checks an option given to the builder.
pub(super) fn validate_setting(name: &str, value: &str) -> Result<(), TestkitError> {
    let invalid = |reason: &str| TestkitError::InvalidSetting {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(invalid(
            "names may only contain ASCII letters, digits, '_', '-' and '.'",
        ));
    }
    let normal = name.to_ascii_lowercase().replace('-', "_");
    let normal = normal.strip_prefix("loose_").unwrap_or(&normal);
    if RESERVED_SETTINGS.contains(&normal) {
        return Err(invalid("this setting is managed by the test kit"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            "values may not contain line breaks or NUL characters",
        ));
    }
    Ok(())
}

/// An option-file value: backslashes are escapes there.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\")
}

/// What one server's option file says.
#[derive(Debug, Clone)]
pub(super) struct ServerOptions {
    pub(super) server_id: u32,
    pub(super) port: u16,
    pub(super) data_dir: PathBuf,
    pub(super) socket: PathBuf,
    pub(super) pid_file: PathBuf,
    /// The server's own directory for temporary files (not `/tmp`, which
    /// concurrent servers would share).
    pub(super) tmp_dir: PathBuf,
    pub(super) read_only: bool,
    /// Semi-synchronous replication: the primary waits for the mirror's
    /// acknowledgement (after the binlog sync, before the commit), at most
    /// this long; the mirror acknowledges. `None`: asynchronous.
    pub(super) semi_sync_timeout: Option<Duration>,
    /// Whether this server is the primary (semi-sync's master side) or the
    /// mirror (its slave side).
    pub(super) primary: bool,
    /// The replica's `slave_net_timeout`, whole seconds.
    pub(super) net_timeout_secs: u64,
    /// The builder's own options, written last.
    pub(super) extra: Vec<(String, String)>,
}

impl ServerOptions {
    /// The option file's text.
    pub(super) fn render(&self) -> String {
        let mut lines: Vec<String> = vec![
            "# written by the mirrorpool test kit".to_owned(),
            "[mariadbd]".to_owned(),
            format!("datadir = {}", escape(&self.data_dir.to_string_lossy())),
            format!("socket = {}", escape(&self.socket.to_string_lossy())),
            format!("pid_file = {}", escape(&self.pid_file.to_string_lossy())),
            format!("tmpdir = {}", escape(&self.tmp_dir.to_string_lossy())),
            format!("port = {}", self.port),
            format!("bind_address = {HOST}"),
            "skip_name_resolve = ON".to_owned(),
            format!("server_id = {}", self.server_id),
            format!("report_host = {HOST}"),
            format!("report_port = {}", self.port),
            // Replication: row-based binlogs on both servers, so a promoted
            // mirror continues the same GTID positions.
            "log_bin = binlog".to_owned(),
            "relay_log = relay-bin".to_owned(),
            // After a crash the replica fetches again what its relay log
            // held, from its GTID position (kept in InnoDB, crash-safe).
            "relay_log_recovery = ON".to_owned(),
            "binlog_format = ROW".to_owned(),
            "log_slave_updates = ON".to_owned(),
            "gtid_strict_mode = ON".to_owned(),
            format!("slave_net_timeout = {}", self.net_timeout_secs),
            if self.read_only {
                READ_ONLY_ON.to_owned()
            } else {
                READ_ONLY_OFF.to_owned()
            },
            // Throw-away servers: small, and no fsync. A SIGKILL of the
            // server process loses nothing that was acknowledged, since the
            // log is written (not synced) at each commit.
            "innodb_buffer_pool_size = 32M".to_owned(),
            "innodb_log_file_size = 16M".to_owned(),
            "innodb_flush_log_at_trx_commit = 2".to_owned(),
            "innodb_flush_method = nosync".to_owned(),
            "innodb_doublewrite = 0".to_owned(),
            "sync_binlog = 0".to_owned(),
            // A shutdown skips InnoDB's flush (the next start recovers), like
            // PostgreSQL's immediate shutdown.
            "innodb_fast_shutdown = 2".to_owned(),
            "performance_schema = OFF".to_owned(),
            "max_connections = 100".to_owned(),
        ];
        if let Some(timeout) = self.semi_sync_timeout {
            if self.primary {
                lines.push("rpl_semi_sync_master_enabled = ON".to_owned());
                lines.push("rpl_semi_sync_master_wait_point = AFTER_SYNC".to_owned());
                lines.push(format!(
                    "rpl_semi_sync_master_timeout = {}",
                    timeout.as_millis().max(1)
                ));
            } else {
                lines.push("rpl_semi_sync_slave_enabled = ON".to_owned());
            }
        }
        for (name, value) in &self.extra {
            lines.push(format!("{name} = {}", escape(value)));
        }
        lines.push(String::new());
        lines.join("\n")
    }

    /// Writes the option file to `path`.
    pub(super) fn write(&self, path: &Path) -> Result<(), TestkitError> {
        fs::write(path, self.render())
            .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))
    }
}

/// Rewrites the `read_only` line of the option file at `path`, so that a
/// restart keeps what a promotion changed.
pub(super) fn set_read_only(path: &Path, read_only: bool) -> Result<(), TestkitError> {
    let text = fs::read_to_string(path)
        .map_err(|e| TestkitError::io(format!("reading {}", path.display()), e))?;
    let (from, to) = if read_only {
        (READ_ONLY_OFF, READ_ONLY_ON)
    } else {
        (READ_ONLY_ON, READ_ONLY_OFF)
    };
    let text: Vec<&str> = text
        .lines()
        .map(|l| if l == from { to } else { l })
        .collect();
    fs::write(path, text.join("\n") + "\n")
        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(primary: bool) -> ServerOptions {
        ServerOptions {
            server_id: if primary { 1 } else { 2 },
            port: 40000,
            data_dir: PathBuf::from("/tmp/x/primary"),
            socket: PathBuf::from("/tmp/x/primary.sock"),
            pid_file: PathBuf::from("/tmp/x/primary.pid"),
            tmp_dir: PathBuf::from("/tmp/x/primary-tmp"),
            read_only: !primary,
            semi_sync_timeout: Some(Duration::from_secs(10)),
            primary,
            net_timeout_secs: 2,
            extra: vec![("max_connections".into(), "6".into())],
        }
    }

    #[test]
    fn settings_are_validated() {
        assert!(validate_setting("max_connections", "6").is_ok());
        assert!(validate_setting("slave-net-timeout", "60").is_ok());
        for (name, value) in [
            ("", "x"),
            ("a b", "x"),
            ("a=b", "x"),
            ("PORT", "1"),
            ("bind-address", "0.0.0.0"),
            ("loose-server-id", "3"),
            ("read_only", "OFF"),
            ("max_connections", "1\n2"),
        ] {
            assert!(
                matches!(
                    validate_setting(name, value),
                    Err(TestkitError::InvalidSetting { .. })
                ),
                "{name:?} = {value:?}"
            );
        }
    }

    #[test]
    fn the_option_file_sets_up_gtid_replication_and_semi_sync_per_role() {
        let primary = options(true).render();
        for line in [
            "[mariadbd]",
            "port = 40000",
            "bind_address = 127.0.0.1",
            "server_id = 1",
            "tmpdir = /tmp/x/primary-tmp",
            "log_slave_updates = ON",
            "gtid_strict_mode = ON",
            "slave_net_timeout = 2",
            "read_only = OFF",
            "rpl_semi_sync_master_enabled = ON",
            "rpl_semi_sync_master_wait_point = AFTER_SYNC",
            "rpl_semi_sync_master_timeout = 10000",
        ] {
            assert!(primary.lines().any(|l| l == line), "{line}\n{primary}");
        }
        // The builder's own options come last, so they win.
        assert!(primary.trim_end().ends_with("max_connections = 6"));
        let mirror = options(false).render();
        assert!(mirror.contains("server_id = 2\n") && mirror.contains("read_only = ON\n"));
        assert!(mirror.contains("rpl_semi_sync_slave_enabled = ON"));
        assert!(!mirror.contains("rpl_semi_sync_master_enabled"));
    }

    #[test]
    fn promotion_flips_the_read_only_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mirror.cnf");
        options(false).write(&path).unwrap();
        set_read_only(&path, false).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("read_only = OFF\n") && !text.contains("read_only = ON"));
    }
}
