//! Finding the PostgreSQL server programs.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testkit::error::TestkitError;
use crate::testkit::os::{self, RunAs};

/// Environment variable naming a directory that holds the PostgreSQL binaries.
pub(crate) const PG_BIN_ENV: &str = "MIRRORPOOL_PG_BIN";
/// Where Debian/Ubuntu install versioned PostgreSQL binaries.
pub(crate) const PG_LIB_ROOT: &str = "/usr/lib/postgresql";
/// The OS user PostgreSQL runs as when we are root (it refuses to run as root).
pub(crate) const DEFAULT_OS_USER: &str = "postgres";
/// The programs the test kit needs.
const REQUIRED_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];

/// Absolute paths of the PostgreSQL programs the test kit runs.
#[derive(Debug, Clone)]
pub(crate) struct PgBinaries {
    pub(crate) initdb: PathBuf,
    pub(crate) pg_ctl: PathBuf,
    pub(crate) postgres: PathBuf,
    pub(crate) pg_basebackup: PathBuf,
}

impl PgBinaries {
    fn from_lookup(mut find: impl FnMut(&str) -> Option<PathBuf>) -> Option<Self> {
        Some(PgBinaries {
            initdb: find(REQUIRED_BINARIES[0])?,
            pg_ctl: find(REQUIRED_BINARIES[1])?,
            postgres: find(REQUIRED_BINARIES[2])?,
            pg_basebackup: find(REQUIRED_BINARIES[3])?,
        })
    }

    /// All four programs from one directory.
    fn in_dir(dir: &Path) -> Option<Self> {
        Self::from_lookup(|name| {
            let p = dir.join(name);
            os::is_executable_file(&p).then_some(p)
        })
    }

    /// Each program from the first `PATH` entry that has it.
    fn on_path(path_var: &OsStr) -> Option<Self> {
        let dirs: Vec<PathBuf> = env::split_paths(path_var).collect();
        Self::from_lookup(|name| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| os::is_executable_file(p))
        })
    }
}

/// The error for programs not found in `searched`.
fn not_found(searched: String) -> TestkitError {
    TestkitError::BinariesNotFound {
        engine: "PostgreSQL".to_owned(),
        programs: REQUIRED_BINARIES.join(", "),
        searched,
        hint: format!(
            "install them with `apt-get install postgresql` or set {PG_BIN_ENV} to the \
             directory that contains them"
        ),
    }
}

/// Parses a directory name such as `15` or `9.6` into comparable components.
fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    let s = name.to_str()?;
    let parts: Option<Vec<u32>> = s.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|v| !v.is_empty())
}

/// The `<lib_root>/<version>/bin` directories that contain `initdb`, highest
/// version first.
fn versioned_bin_dirs(lib_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(lib_root) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .take(10_000)
        .filter_map(|e| {
            let version = parse_version(&e.file_name())?;
            let bin = e.path().join("bin");
            os::is_executable_file(&bin.join("initdb")).then_some((version, bin))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Finds the PostgreSQL binaries.
///
/// Order: `explicit` (a builder option), else `env_dir` (the value of
/// `MIRRORPOOL_PG_BIN`), else the highest-versioned `<lib_root>/*/bin` with
/// all programs, else `path_var` (the value of `PATH`). An explicit or
/// environment directory is authoritative: if it lacks the programs, that is
/// an error rather than a reason to look elsewhere.
pub(crate) fn locate_binaries(
    explicit: Option<&Path>,
    env_dir: Option<&OsStr>,
    lib_root: &Path,
    path_var: Option<&OsStr>,
) -> Result<PgBinaries, TestkitError> {
    if let Some(dir) = explicit {
        return PgBinaries::in_dir(dir)
            .ok_or_else(|| not_found(format!("the configured directory {}", dir.display())));
    }
    if let Some(dir) = env_dir.filter(|d| !d.is_empty()) {
        let dir = Path::new(dir);
        return PgBinaries::in_dir(dir)
            .ok_or_else(|| not_found(format!("{PG_BIN_ENV}={}", dir.display())));
    }
    if let Some(found) = versioned_bin_dirs(lib_root)
        .iter()
        .find_map(|d| PgBinaries::in_dir(d))
    {
        return Ok(found);
    }
    if let Some(found) = path_var.and_then(PgBinaries::on_path) {
        return Ok(found);
    }
    Err(not_found(format!("{}/*/bin and PATH", lib_root.display())))
}

/// [`locate_binaries`] with the real environment.
pub(crate) fn locate_binaries_from_env(
    explicit: Option<&Path>,
) -> Result<PgBinaries, TestkitError> {
    let env_dir = env::var_os(PG_BIN_ENV);
    let path_var = env::var_os("PATH");
    locate_binaries(
        explicit,
        env_dir.as_deref(),
        Path::new(PG_LIB_ROOT),
        path_var.as_deref(),
    )
}

/// A command for a PostgreSQL program: [`os::command`] without inherited
/// `PG*` variables (they would redirect the client tools).
pub(crate) fn pg_command(program: &Path, run_as: Option<RunAs>, cwd: &Path) -> Command {
    os::command(program, run_as, cwd, &["PG"])
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn empty_explicit_dir_is_an_error_that_says_what_to_install() {
        let tmp = tempfile::tempdir().unwrap();
        let err = locate_binaries(Some(tmp.path()), None, tmp.path(), None).unwrap_err();
        assert!(matches!(err, TestkitError::BinariesNotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
        assert!(msg.contains(PG_BIN_ENV), "{msg}");
    }

    #[test]
    fn env_dir_is_authoritative() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        fake_bin(&lib.join("15/bin"), &REQUIRED_BINARIES);
        let empty = tmp.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let err = locate_binaries(None, Some(empty.as_os_str()), &lib, None).unwrap_err();
        assert!(err.to_string().contains(PG_BIN_ENV), "{err}");
    }

    #[test]
    fn highest_complete_version_wins_and_path_is_the_fallback() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        fake_bin(&lib.join("9.6/bin"), &REQUIRED_BINARIES);
        fake_bin(&lib.join("15/bin"), &REQUIRED_BINARIES);
        fake_bin(&lib.join("16/bin"), &["initdb"]); // incomplete
        fake_bin(&lib.join("notaversion/bin"), &REQUIRED_BINARIES);
        let found = locate_binaries(None, None, &lib, None).unwrap();
        assert_eq!(found.initdb, lib.join("15/bin/initdb"));

        let nolib = tmp.path().join("nolib");
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        fake_bin(&a, &["initdb", "pg_ctl", "postgres"]);
        fake_bin(&b, &["pg_basebackup", "initdb"]);
        let path = env::join_paths([&a, &b]).unwrap();
        let found = locate_binaries(None, None, &nolib, Some(&path)).unwrap();
        assert_eq!(found.initdb, a.join("initdb"));
        assert_eq!(found.pg_basebackup, b.join("pg_basebackup"));
        assert!(locate_binaries(None, None, &nolib, Some(a.as_os_str())).is_err());
    }
}
