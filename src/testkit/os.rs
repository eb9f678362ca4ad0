//! Engine-neutral operating-system plumbing: running programs as an
//! unprivileged user and with deadlines, signals, `/proc` scans, reaping,
//! log files and free loopback ports. Nothing here knows a database engine.

// `kill(2)` and `getpwnam_r(3)` have no safe std wrapper; every unsafe block
// is commented. This keeps the module building in a crate that denies unsafe
// code.
#![allow(unsafe_code)]
// Built for every engine; with only some engines enabled, parts are unused.
#![cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]

use std::collections::{HashMap, HashSet};
use std::env;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::TestkitError;

/// Environment variable naming the OS user the servers run as when we are root.
pub(crate) const USER_ENV: &str = "MIRRORPOOL_TESTKIT_USER";
/// Upper bound on the number of `/proc` entries looked at in one scan.
const MAX_PROC_ENTRIES: usize = 1 << 20;
/// Poll interval while waiting for a process.
const POLL: Duration = Duration::from_millis(10);
/// Ports a picked port must never be: the default ports of the machine's own
/// PostgreSQL and MySQL/MariaDB instances.
const RESERVED_PORTS: [u16; 2] = [5432, 3306];

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The unprivileged identity server programs run as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when we are not root (programs run as ourselves); otherwise the
/// user named by `explicit`, else `MIRRORPOOL_TESTKIT_USER`, else
/// `default_user` (the engine's customary account: `postgres`, `mysql`).
pub(crate) fn resolve_run_as(
    explicit: Option<&str>,
    default_user: &str,
) -> Result<Option<RunAs>, TestkitError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = match explicit {
        Some(n) => n.to_owned(),
        None => env::var(USER_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default_user.to_owned()),
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

/// A command for a server program: no inherited variables whose name starts
/// with one of `strip_env_prefixes` (the engine's client settings, which
/// would redirect its tools), C locale (stable English messages), `HOME` and
/// working directory set to `cwd`, stdin closed, and — when we are root — the
/// unprivileged uid/gid.
pub(crate) fn command(
    program: &Path,
    run_as: Option<RunAs>,
    cwd: &Path,
    strip_env_prefixes: &[&str],
) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in env::vars_os() {
        let key_text = key.to_string_lossy();
        if strip_env_prefixes.iter().any(|p| key_text.starts_with(p)) {
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

/// Hands `path` to the unprivileged user, if there is one.
pub(crate) fn chown_to(path: &Path, run_as: Option<RunAs>) -> Result<(), TestkitError> {
    match run_as {
        None => Ok(()),
        Some(r) => std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid)).map_err(|e| {
            TestkitError::io(format!("handing {} to uid {}", path.display(), r.uid), e)
        }),
    }
}

/// Opens (creating) a log file for appending.
pub(crate) fn open_log(path: &Path) -> Result<File, TestkitError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TestkitError::io(format!("opening log file {}", path.display()), e))
}

/// `(stdout, stderr)` handles both appending to the log file `path`.
pub(crate) fn log_handles(path: &Path) -> Result<(File, File), TestkitError> {
    let out = open_log(path)?;
    let err = out
        .try_clone()
        .map_err(|e| TestkitError::io(format!("duplicating handle of {}", path.display()), e))?;
    Ok((out, err))
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

/// What a failed program's log says: its last `max_lines` lines from byte
/// `from` on, preceded by up to 10 earlier lines that report an error (a
/// program may bury its error under a page of advice, as
/// `mariadb-install-db` does).
pub(crate) fn log_excerpt(path: &Path, from: u64, max_lines: usize) -> String {
    let everything = log_tail(path, from, usize::MAX);
    let lines: Vec<&str> = everything.lines().collect();
    let tail_start = lines.len().saturating_sub(max_lines);
    let errors: Vec<&str> = lines[..tail_start]
        .iter()
        .copied()
        .filter(|l| l.contains("ERROR") || l.contains("FATAL") || l.contains("error:"))
        .collect();
    let errors = &errors[errors.len().saturating_sub(10)..];
    let tail = lines[tail_start..].join("\n");
    if errors.is_empty() {
        tail
    } else {
        format!("{}\n[...]\n{tail}", errors.join("\n"))
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
    let (out, err) = log_handles(log)?;
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
            output: log_excerpt(log, start_offset, 30),
        }),
        None => {
            kill_and_reap(&mut child, Duration::from_secs(5));
            Err(TestkitError::CommandTimedOut {
                command: what.to_owned(),
                timeout,
                output: log_excerpt(log, start_offset, 30),
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

/// Live processes whose working directory is `dir` or below it. Database
/// servers `chdir` into their data directory, so this finds every process of
/// a server — including PostgreSQL backends orphaned by a SIGKILLed
/// postmaster — without any risk of matching an unrelated server.
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

/// A free loopback port, never one of the default PostgreSQL and MySQL ports
/// (5432, 3306), so a test server can never be mistaken for — or collide
/// with — the machine's own instance. The port is released again before it is
/// returned, so a start can still lose a race for it; callers retry.
pub(crate) fn free_loopback_port() -> Result<u16, TestkitError> {
    for _ in 0..10 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestkitError::io("binding 127.0.0.1:0 to pick a port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestkitError::io("reading the picked port", e))?
            .port();
        if !RESERVED_PORTS.contains(&port) {
            return Ok(port);
        }
    }
    Err(TestkitError::io(
        "picking a free port",
        io::Error::other("only reserved ports (5432, 3306) were offered"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_excerpt_keeps_errors_buried_above_the_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log");
        fs::write(
            &p,
            "start\n[ERROR] the cause\nadvice 1\nadvice 2\nadvice 3\n",
        )
        .unwrap();
        assert_eq!(
            log_excerpt(&p, 0, 2),
            "[ERROR] the cause\n[...]\nadvice 2\nadvice 3"
        );
        assert_eq!(log_excerpt(&p, 0, 10), log_tail(&p, 0, 10));
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

    #[test]
    fn free_port_is_loopback_and_never_a_default_database_port() {
        for _ in 0..20 {
            let port = free_loopback_port().unwrap();
            assert!(!RESERVED_PORTS.contains(&port));
            assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
        }
    }

    #[test]
    fn commands_drop_the_engine_client_variables() {
        let tmp = tempfile::tempdir().unwrap();
        std::env::set_var("MIRRORPOOL_TESTKIT_OS_PROBE", "1");
        let cmd = command(
            Path::new("/bin/true"),
            None,
            tmp.path(),
            &["MIRRORPOOL_TESTKIT_OS_"],
        );
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_owned())
            .collect();
        assert!(removed.iter().any(|k| k == "MIRRORPOOL_TESTKIT_OS_PROBE"));
        assert_eq!(cmd.get_current_dir(), Some(tmp.path()));
    }

    #[test]
    fn timed_out_commands_are_killed_and_report_their_output() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("cmd.log");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo started; sleep 30"]);
        let started = Instant::now();
        let err = run_with_timeout(cmd, "sleeper", &log, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        match err {
            TestkitError::CommandTimedOut { output, .. } => assert!(output.contains("started")),
            other => panic!("expected CommandTimedOut, got {other:?}"),
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo broken; exit 3"]);
        let err = run_with_timeout(cmd, "failer", &log, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&err, TestkitError::CommandFailed { output, .. } if output.contains("broken")),
            "{err:?}"
        );
    }
}
