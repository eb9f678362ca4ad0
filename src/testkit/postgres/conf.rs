//! Provisioning files of a PostgreSQL pair: `postgresql.conf` settings and
//! `pg_hba.conf`.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use super::HOST;
use crate::testkit::error::TestkitError;

/// Settings whose value the test kit must control.
const RESERVED_SETTINGS: [&str; 3] = ["port", "listen_addresses", "unix_socket_directories"];

/// Checks a `postgresql.conf` setting given to the builder.
pub(super) fn validate_setting(name: &str, value: &str) -> Result<(), TestkitError> {
    let invalid = |reason: &str| TestkitError::InvalidSetting {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(invalid(
            "names may only contain ASCII letters, digits, '_' and '.'",
        ));
    }
    if RESERVED_SETTINGS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(invalid("this setting is managed by the test kit"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            "values may not contain line breaks or NUL characters",
        ));
    }
    Ok(())
}

/// Quotes a `postgresql.conf` value.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Appends `settings` to the configuration file `path`.
pub(super) fn append_config(
    path: &Path,
    settings: &[(String, String)],
) -> Result<(), TestkitError> {
    let mut text = String::from("\n# added by the mirrorpool test kit\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = {}\n", conf_quote(value)));
    }
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| TestkitError::io(format!("opening {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| TestkitError::io(format!("writing {}", path.display()), e))
}

/// The primary's `postgresql.conf` additions (inherited by the mirror through
/// `pg_basebackup`) and its `pg_hba.conf`.
pub(super) fn write_primary_config(
    data_dir: &Path,
    socket_dir: &Path,
    extra: &[(String, String)],
) -> Result<(), TestkitError> {
    let mut settings: Vec<(String, String)> = [
        ("listen_addresses", HOST),
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_keep_size", "128MB"),
        ("hot_standby", "on"),
        ("fsync", "off"),
        ("shared_buffers", "16MB"),
        ("max_connections", "100"),
        ("wal_receiver_timeout", "2s"),
        ("wal_receiver_status_interval", "1s"),
        ("wal_sender_timeout", "5s"),
        ("wal_retrieve_retry_interval", "200ms"),
        ("logging_collector", "off"),
        ("log_destination", "stderr"),
        ("log_line_prefix", "%m [%p] %q%a "),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    settings.push((
        "unix_socket_directories".to_owned(),
        socket_dir.to_string_lossy().into_owned(),
    ));
    settings.extend(extra.iter().cloned());
    append_config(&data_dir.join("postgresql.conf"), &settings)?;

    // The superuser (administration, replication) is trusted; every other role
    // logs in with a password.
    let hba = "# written by the mirrorpool test kit\n\
               host replication all 127.0.0.0/8 trust\n\
               host all postgres 127.0.0.0/8 trust\n\
               host all all 127.0.0.0/8 scram-sha-256\n\
               local all all trust\n";
    let hba_path = data_dir.join("pg_hba.conf");
    fs::write(&hba_path, hba)
        .map_err(|e| TestkitError::io(format!("writing {}", hba_path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert!(validate_setting("work_mem", "8MB").is_ok());
        assert!(validate_setting("auto_explain.log_min_duration", "0").is_ok());
        for (name, value) in [
            ("", "x"),
            ("work mem", "x"),
            ("a=b", "x"),
            ("PORT", "1"),
            ("listen_addresses", "*"),
            ("work_mem", "1\n2"),
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
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
    }
}
