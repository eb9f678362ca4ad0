//! Finding the MariaDB server programs.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testkit::error::TestkitError;
use crate::testkit::os::{self, RunAs};

/// Environment variable naming a directory that holds `mariadbd` and
/// `mariadb-install-db`.
pub(crate) const MARIADB_BIN_ENV: &str = "MIRRORPOOL_MARIADB_BIN";
/// The OS user MariaDB runs as when we are root.
pub(crate) const DEFAULT_OS_USER: &str = "mysql";
/// Where distributions put the programs, beyond `PATH` (`mariadbd` is in
/// `/usr/sbin`, which an unprivileged `PATH` often lacks).
const SYSTEM_DIRS: [&str; 5] = [
    "/usr/sbin",
    "/usr/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/local/mysql/bin",
];
const SERVER: &str = "mariadbd";
const INSTALL_DB: &str = "mariadb-install-db";

/// Absolute paths of the MariaDB programs the test kit runs.
#[derive(Debug, Clone)]
pub(crate) struct MariadbBinaries {
    pub(crate) server: PathBuf,
    pub(crate) install_db: PathBuf,
}

impl MariadbBinaries {
    fn from_dirs(dirs: &[PathBuf]) -> Option<Self> {
        let find = |name: &str| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| os::is_executable_file(p))
        };
        Some(MariadbBinaries {
            server: find(SERVER)?,
            install_db: find(INSTALL_DB)?,
        })
    }
}

/// The error for programs not found in `searched`.
fn not_found(searched: String) -> TestkitError {
    TestkitError::BinariesNotFound {
        engine: "MariaDB".to_owned(),
        programs: format!("{SERVER}, {INSTALL_DB}"),
        searched,
        hint: format!(
            "install them with `apt-get install mariadb-server` or set {MARIADB_BIN_ENV} to the \
             directory that contains them"
        ),
    }
}

/// Finds the MariaDB programs.
///
/// Order: `explicit` (a builder option), else `env_dir` (the value of
/// `MIRRORPOOL_MARIADB_BIN`) — either must hold both programs — else each
/// program from the first of `PATH` (`path_var`) and `system_dirs` that has
/// it.
pub(crate) fn locate_binaries(
    explicit: Option<&Path>,
    env_dir: Option<&OsStr>,
    path_var: Option<&OsStr>,
    system_dirs: &[PathBuf],
) -> Result<MariadbBinaries, TestkitError> {
    if let Some(dir) = explicit {
        return MariadbBinaries::from_dirs(&[dir.to_owned()])
            .ok_or_else(|| not_found(format!("the configured directory {}", dir.display())));
    }
    if let Some(dir) = env_dir.filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return MariadbBinaries::from_dirs(std::slice::from_ref(&dir))
            .ok_or_else(|| not_found(format!("{MARIADB_BIN_ENV}={}", dir.display())));
    }
    let mut dirs: Vec<PathBuf> = path_var
        .map(|p| env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.extend(system_dirs.iter().cloned());
    MariadbBinaries::from_dirs(&dirs).ok_or_else(|| {
        let shown: Vec<String> = system_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        not_found(format!("PATH and {}", shown.join(", ")))
    })
}

/// [`locate_binaries`] with the real environment.
pub(crate) fn locate_binaries_from_env(
    explicit: Option<&Path>,
) -> Result<MariadbBinaries, TestkitError> {
    let env_dir = env::var_os(MARIADB_BIN_ENV);
    let path_var = env::var_os("PATH");
    let system: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    locate_binaries(explicit, env_dir.as_deref(), path_var.as_deref(), &system)
}

/// A command for a MariaDB program: [`os::command`] without inherited
/// `MYSQL*` and `MARIADB*` variables (`MYSQL_HOME`, `MYSQL_TCP_PORT`, ...,
/// which would redirect the programs).
pub(crate) fn mariadb_command(program: &Path, run_as: Option<RunAs>, cwd: &Path) -> Command {
    os::command(program, run_as, cwd, &["MYSQL", "MARIADB"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(dir: &Path, names: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for n in names {
            let p = dir.join(n);
            fs::write(&p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn missing_programs_are_an_error_that_says_what_to_install() {
        let tmp = tempfile::tempdir().unwrap();
        let err = locate_binaries(Some(tmp.path()), None, None, &[]).unwrap_err();
        assert!(matches!(err, TestkitError::BinariesNotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains("apt-get install mariadb-server"), "{msg}");
        assert!(msg.contains(MARIADB_BIN_ENV), "{msg}");
        assert!(msg.contains("MariaDB") && msg.contains("mariadbd"), "{msg}");
        let err = locate_binaries(None, None, Some(tmp.path().as_os_str()), &[]).unwrap_err();
        assert!(err.to_string().contains("apt-get install mariadb-server"));
    }

    #[test]
    fn the_env_dir_is_authoritative_and_programs_may_live_in_different_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let sbin = tmp.path().join("sbin");
        let bin = tmp.path().join("bin");
        fake_bin(&sbin, &[SERVER]);
        fake_bin(&bin, &[INSTALL_DB]);
        let found = locate_binaries(None, None, None, &[sbin.clone(), bin.clone()]).unwrap();
        assert_eq!(found.server, sbin.join(SERVER));
        assert_eq!(found.install_db, bin.join(INSTALL_DB));
        let path = env::join_paths([&bin]).unwrap();
        let found = locate_binaries(None, None, Some(&path), std::slice::from_ref(&sbin)).unwrap();
        assert_eq!(found.install_db, bin.join(INSTALL_DB));
        let err =
            locate_binaries(None, Some(sbin.as_os_str()), None, &[sbin.clone(), bin]).unwrap_err();
        assert!(err.to_string().contains(MARIADB_BIN_ENV), "{err}");
    }
}
