//! Operating-system plumbing for the PostgreSQL part of the test kit:
//! locating the server binaries, running them as an unprivileged user,
//! running helper programs with deadlines, signals and `/proc` scans.

// `kill(2)`, `getpwnam_r(3)` and `setsockopt(2)` have no safe std wrapper;
// every unsafe block is commented. This keeps the module building in a crate
// that denies unsafe code.
#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::env;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::TestkitError;

/// Environment variable naming a directory that holds the PostgreSQL binaries.
pub(crate) const PG_BIN_ENV: &str = "MIRRORPOOL_PG_BIN";
/// Environment variable naming the OS user PostgreSQL runs as when we are root.
pub(crate) const USER_ENV: &str = "MIRRORPOOL_TESTKIT_USER";
/// Default OS user PostgreSQL runs as when we are root.
const DEFAULT_OS_USER: &str = "postgres";
/// Where Debian/Ubuntu install versioned PostgreSQL binaries.
pub(crate) const PG_LIB_ROOT: &str = "/usr/lib/postgresql";
/// The programs the test kit needs.
const REQUIRED_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];
/// Upper bound on the number of `/proc` entries looked at in one scan.
const MAX_PROC_ENTRIES: usize = 1 << 20;
/// Poll interval while waiting for a process.
const POLL: Duration = Duration::from_millis(10);

/// Absolute paths of the PostgreSQL programs the test kit runs.
#[derive(Debug, Clone)]
pub(crate) struct PgBinaries {
    pub(crate) initdb: PathBuf,
    pub(crate) pg_ctl: PathBuf,
    pub(crate) postgres: PathBuf,
    pub(crate) pg_basebackup: PathBuf,
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
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
            is_executable_file(&p).then_some(p)
        })
    }

    /// Each program from the first `PATH` entry that has it.
    fn on_path(path_var: &OsStr) -> Option<Self> {
        let dirs: Vec<PathBuf> = env::split_paths(path_var).collect();
        Self::from_lookup(|name| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| is_executable_file(p))
        })
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
            is_executable_file(&bin.join("initdb")).then_some((version, bin))
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
        return PgBinaries::in_dir(dir).ok_or_else(|| TestkitError::BinariesNotFound {
            searched: format!("the configured directory {}", dir.display()),
        });
    }
    if let Some(dir) = env_dir.filter(|d| !d.is_empty()) {
        let dir = Path::new(dir);
        return PgBinaries::in_dir(dir).ok_or_else(|| TestkitError::BinariesNotFound {
            searched: format!("{PG_BIN_ENV}={}", dir.display()),
        });
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
    Err(TestkitError::BinariesNotFound {
        searched: format!("{}/*/bin and PATH", lib_root.display()),
    })
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

/// The unprivileged identity PostgreSQL programs run as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when we are not root (programs run as ourselves); otherwise the
/// user named by `explicit`, else `MIRRORPOOL_TESTKIT_USER`, else `postgres`.
pub(crate) fn resolve_run_as(explicit: Option<&str>) -> Result<Option<RunAs>, TestkitError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = match explicit {
        Some(n) => n.to_owned(),
        None => env::var(USER_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_OS_USER.to_owned()),
    };
    lookup_user(&name)?
        .map(Some)
        .ok_or(TestkitError::UserNotFound { user: name })
}

/// Looks a user up in the system user database (`getpwnam_r`).
pub(crate) fn lookup_user(name: &str) -> Result<Option<RunAs>, TestkitError> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf_len: usize = 16 * 1024;
    for _ in 0..5 {
        let mut buf: Vec<libc::c_char> = vec![0; buf_len];
        // SAFETY: `passwd` is a plain C struct for which all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call and
        // `buf.len()` is the real size of `buf`.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE {
            buf_len = buf_len.saturating_mul(4);
            continue;
        }
        if rc != 0 {
            return Err(TestkitError::io(
                format!("looking up OS user `{name}`"),
                io::Error::from_raw_os_error(rc),
            ));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
    Err(TestkitError::io(
        format!("looking up OS user `{name}`"),
        io::Error::other("passwd entry too large"),
    ))
}

/// A command for a PostgreSQL program: no inherited `PG*` variables, C
/// locale (stable English messages), `HOME` and working directory set, stdin
/// closed, and — when we are root — the unprivileged uid/gid.
pub(crate) fn pg_command(program: &Path, run_as: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in env::vars_os() {
        if key.as_bytes().starts_with(b"PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("LANG", "C")
        .env("HOME", cwd)
        .current_dir(cwd)
        .stdin(Stdio::null());
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd
}

/// Opens (creating) a log file for appending.
pub(crate) fn open_log(path: &Path) -> Result<File, TestkitError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TestkitError::io(format!("opening log file {}", path.display()), e))
}

/// Current length of a file, 0 if it does not exist.
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `max_lines` lines of a file, read from byte `from` on (only the
/// last 64 KiB are read). Never fails: an unreadable file yields a note.
pub(crate) fn log_tail(path: &Path, from: u64, max_lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = from.max(len.saturating_sub(MAX_BYTES)).min(len);
        f.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        f.take(MAX_BYTES).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(max_lines);
            lines[skip..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// `now + timeout`, saturating instead of panicking for huge timeouts.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = deadline_after(timeout);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => {
                log::warn!("testkit: waiting for pid {} failed: {e}", child.id());
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// SIGKILLs `child` (after SIGCONT, in case it is stopped) and reaps it.
pub(crate) fn kill_and_reap(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = signal(child.id(), libc::SIGCONT);
    if let Err(e) = child.kill() {
        log::warn!("testkit: SIGKILL to pid {} failed: {e}", child.id());
    }
    wait_child(child, timeout)
}

/// Runs `cmd` to completion with its stdout/stderr appended to `log`,
/// killing it if it exceeds `timeout`.
pub(crate) fn run_with_timeout(
    mut cmd: Command,
    what: &str,
    log: &Path,
    timeout: Duration,
) -> Result<(), TestkitError> {
    let start_offset = file_len(log);
    let out = open_log(log)?;
    let err = out
        .try_clone()
        .map_err(|e| TestkitError::io(format!("duplicating handle of {}", log.display()), e))?;
    cmd.stdout(out).stderr(err);
    log::debug!("testkit: running {cmd:?}");
    let mut child = cmd
        .spawn()
        .map_err(|e| TestkitError::io(format!("spawning `{what}`"), e))?;
    match wait_child(&mut child, timeout) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(TestkitError::CommandFailed {
            command: what.to_owned(),
            status: status.to_string(),
            output: log_tail(log, start_offset, 30),
        }),
        None => {
            kill_and_reap(&mut child, Duration::from_secs(5));
            Err(TestkitError::CommandTimedOut {
                command: what.to_owned(),
                timeout,
                output: log_tail(log, start_offset, 30),
            })
        }
    }
}

/// Sends `sig` to `pid`. Refuses pids that would address process groups or
/// init (0, 1, negative after conversion).
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal pid"))?;
    // SAFETY: kill has no memory-safety preconditions; pid is a single process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `(state, ppid)` of a process from `/proc/<pid>/stat`.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub(crate) fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Whether `pid` is stopped by a signal.
pub(crate) fn is_stopped(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(('T', _)))
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .take(MAX_PROC_ENTRIES)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// All live descendants of `root` (children, grandchildren, ...).
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some((state, ppid)) = proc_stat(pid) {
            if state != 'Z' && state != 'X' {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c) {
                out.push(c);
                queue.push(c);
            }
        }
    }
    out
}

/// Live processes whose working directory is `dir` or below it. PostgreSQL
/// processes `chdir` into their data directory, so this finds every process
/// of a server — including backends orphaned by a SIGKILLed postmaster —
/// without any risk of matching an unrelated server.
pub(crate) fn pids_with_cwd_under(dir: &Path) -> Vec<u32> {
    let own = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != own)
        .filter(|&pid| {
            fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd| cwd.starts_with(dir))
                .unwrap_or(false)
        })
        .filter(|&pid| is_alive(pid))
        .collect()
}

/// Waits (bounded) until no process works in `dir`; after `grace`, SIGCONTs
/// and SIGKILLs the remaining ones and waits up to `kill_wait` more.
/// Returns the pids that are still alive at the end.
pub(crate) fn reap_processes_under(dir: &Path, grace: Duration, kill_wait: Duration) -> Vec<u32> {
    let deadline = deadline_after(grace);
    loop {
        let left = pids_with_cwd_under(dir);
        if left.is_empty() {
            return left;
        }
        if Instant::now() >= deadline {
            for &pid in &left {
                log::debug!(
                    "testkit: killing leftover process {pid} in {}",
                    dir.display()
                );
                let _ = signal(pid, libc::SIGCONT);
                let _ = signal(pid, libc::SIGKILL);
            }
            break;
        }
        thread::sleep(POLL);
    }
    let deadline = deadline_after(kill_wait);
    loop {
        let left = pids_with_cwd_under(dir);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unknown_user_is_not_found() {
        assert_eq!(lookup_user("no-such-user-mirrorpool-xyz").unwrap(), None);
        assert_eq!(lookup_user("bad\0name").unwrap(), None);
        assert_eq!(lookup_user("root").unwrap(), Some(RunAs { uid: 0, gid: 0 }));
    }

    #[test]
    fn signal_refuses_group_and_init_pids() {
        assert!(signal(0, 0).is_err());
        assert!(signal(1, 0).is_err());
        assert!(signal(u32::MAX, 0).is_err());
        assert!(signal(std::process::id(), 0).is_ok());
    }

    #[test]
    fn huge_timeouts_saturate_instead_of_panicking() {
        assert!(deadline_after(Duration::MAX) > Instant::now());
        assert!(deadline_after(Duration::ZERO) <= Instant::now());
    }

    #[test]
    fn log_tail_returns_last_lines_from_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log");
        fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&p, 0, 2), "c\nd");
        assert_eq!(log_tail(&p, 4, 10), "c\nd");
        assert!(log_tail(&tmp.path().join("missing"), 0, 2).contains("could not read"));
    }
}
