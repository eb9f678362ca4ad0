//! Throw-away MariaDB primary + GTID replica pairs.
//!
//! A [`MyPair`] owns a temporary directory holding two data directories
//! (`primary/` and `mirror/`, made by one `mariadb-install-db` run), their
//! option files, logs, Unix sockets and pid files. The servers listen on free
//! loopback ports only (never 3306: the machine's own instance is never
//! touched, and its option files are never read). Dropping the pair — also
//! while a test panics — kills both servers and removes the directory.
//!
//! Where things are: option files in `conf.rs`, the admin SQL client in
//! `admin.rs`, binary discovery in `binaries.rs`, the load table in
//! `load.rs`; the process lifecycle every engine shares is
//! `testkit/server.rs`.

mod admin;
mod binaries;
mod conf;
mod load;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use self::admin::{change_master_sql, create_user_sql, primary_setup_sql};
use self::binaries::MariadbBinaries;
use self::conf::ServerOptions;
use super::error::TestkitError;
use super::os::{self, RunAs};
use super::roles::{self, Grants, APP_PASSWORD, APP_USER};
use super::server::{self, PauseGuard, ProcessSpec, ServerProcess, KILL_WAIT};

pub use self::load::MyTable;

/// The administrative superuser, passwordless, for the test kit and tests
/// (over the Unix socket, or TCP from a loopback address).
pub const MY_SUPERUSER: &str = "root";
/// The database the application role works in.
pub const MY_DATABASE: &str = "mirrorpool";
const SUPERUSER: &str = MY_SUPERUSER;
const DATABASE: &str = MY_DATABASE;
/// The login the mirror replicates as (`REPLICATION SLAVE` only, no
/// password, from loopback addresses only).
const REPLICATION_USER: &str = "repl";

/// The only address the servers listen on.
const HOST: &str = "127.0.0.1";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SEMI_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// The replica's `slave_net_timeout`: it reconnects after this much silence.
const NET_TIMEOUT_SECS: u64 = 2;
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
const COPY_TIMEOUT: Duration = Duration::from_secs(60);

/// Consuming builder for a [`MyPair`]; obtain it with [`MyPair::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MyPairBuilder {
    app_grants: Grants,
    synchronous: bool,
    semi_sync_timeout: Duration,
    settings: Vec<(String, String)>,
    bin_dir: Option<PathBuf>,
    os_user: Option<String>,
    start_timeout: Duration,
}

impl Default for MyPairBuilder {
    fn default() -> Self {
        MyPairBuilder {
            app_grants: Grants::none(),
            synchronous: false,
            semi_sync_timeout: DEFAULT_SEMI_SYNC_TIMEOUT,
            settings: Vec::new(),
            bin_dir: None,
            os_user: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }
}

impl MyPairBuilder {
    /// A builder with every option at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lossless semi-synchronous replication: the primary gets
    /// `rpl_semi_sync_master_enabled = ON` with
    /// `rpl_semi_sync_master_wait_point = AFTER_SYNC` (a commit is
    /// acknowledged to its client only after the mirror has received it),
    /// the mirror `rpl_semi_sync_slave_enabled = ON`, and
    /// [`start`](Self::start) waits until the primary reports the mirror as a
    /// semi-synchronous client. Default: `false` (asynchronous).
    pub fn synchronous(mut self, synchronous: bool) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// `rpl_semi_sync_master_timeout`: how long a commit on the primary waits
    /// for the mirror before the primary falls back to asynchronous
    /// replication (then reported by `Rpl_semi_sync_master_status = OFF`).
    /// Only with [`synchronous`](Self::synchronous). Default: 10 s.
    pub fn semi_sync_timeout(mut self, timeout: Duration) -> Self {
        self.semi_sync_timeout = timeout;
        self
    }

    /// Grants [`APP_USER`] `SLAVE MONITOR`, so it sees the replication state
    /// (`SHOW SLAVE STATUS`): what mirrorpool's `verify_primary_failure` and
    /// lag gate need. Default: `false`.
    pub fn grant_replication_status(mut self, grant: bool) -> Self {
        self.app_grants = self.app_grants.replication_status(grant);
        self
    }

    /// Grants [`APP_USER`] `REPLICATION SLAVE ADMIN`, `RELOAD` and
    /// `READ_ONLY ADMIN`: what promoting needs (`STOP SLAVE`, `RESET SLAVE
    /// ALL`, `SET GLOBAL read_only = OFF`). Beware: `READ_ONLY ADMIN` also
    /// lets the role write on a `read_only` replica. Default: `false`.
    pub fn grant_promote(mut self, grant: bool) -> Self {
        self.app_grants = self.app_grants.promote(grant);
        self
    }

    /// Sets both grants of [`APP_USER`] at once. Default: [`Grants::none`].
    pub fn app_grants(mut self, grants: Grants) -> Self {
        self.app_grants = grants;
        self
    }

    /// Adds a server option (as in an option file's `[mariadbd]` group) for
    /// both servers, written after the test kit's own, so it overrides them
    /// — e.g. `slave_net_timeout` (2 s by default), `max_connections`. The
    /// options the test kit must control (`port`, `socket`, `datadir`,
    /// `bind_address`, `server_id`, `log_bin`, `read_only`, ...) are
    /// rejected, and malformed names or values make [`start`](Self::start)
    /// fail with [`TestkitError::InvalidSetting`]. Default: none.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Directory holding `mariadbd` and `mariadb-install-db`. Default: the
    /// `MIRRORPOOL_MARIADB_BIN` environment variable if set, else each
    /// program from `PATH`, `/usr/sbin`, `/usr/bin`, `/usr/local/sbin`,
    /// `/usr/local/bin` or `/usr/local/mysql/bin`.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// OS user the servers run as when the test process runs as root.
    /// Ignored when not root. Default: the `MIRRORPOOL_TESTKIT_USER`
    /// environment variable if set, else `mysql`.
    pub fn os_user(mut self, user: &str) -> Self {
        self.os_user = Some(user.to_owned());
        self
    }

    /// Deadline for each server to accept connections after being started
    /// (also used for [`MyServer::start`] and for the initial waits for
    /// replication). Default: 30 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Creates the directory, runs `mariadb-install-db` once and copies its
    /// result for the mirror, starts the primary, creates the replication
    /// login, database `mirrorpool` and the [`APP_USER`] login with the
    /// requested grants, starts the mirror, points it at the primary (GTID,
    /// `MASTER_USE_GTID = slave_pos`) and waits until it replicates and has
    /// applied everything (and, if requested, is a semi-synchronous client).
    ///
    /// Everything created so far is torn down again if a step fails.
    pub fn start(self) -> Result<MyPair, TestkitError> {
        for (name, value) in &self.settings {
            conf::validate_setting(name, value)?;
        }
        let bins = binaries::locate_binaries_from_env(self.bin_dir.as_deref())?;
        let run_as = os::resolve_run_as(self.os_user.as_deref(), binaries::DEFAULT_OS_USER)?;

        let dir = tempfile::Builder::new()
            .prefix("mirrorpool-testkit-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the test kit's temporary directory", e))?;
        let root = dir
            .path()
            .canonicalize()
            .map_err(|e| TestkitError::io(format!("resolving {}", dir.path().display()), e))?;
        os::chown_to(&root, run_as)?;
        let ctx = Arc::new(Ctx {
            bins,
            run_as,
            root: root.clone(),
            start_timeout: self.start_timeout,
            settings: self.settings.clone(),
            semi_sync_timeout: self.synchronous.then_some(self.semi_sync_timeout),
        });
        log::info!("testkit: creating MariaDB pair in {}", root.display());

        for name in ["primary", "mirror"] {
            let tmp = root.join(format!("{name}-tmp"));
            std::fs::create_dir(&tmp)
                .map_err(|e| TestkitError::io(format!("creating {}", tmp.display()), e))?;
            os::chown_to(&tmp, run_as)?;
        }
        // One installation, copied: the system tables are the same on both.
        let primary_dir = root.join("primary");
        let mut install = ctx.options("primary", 0);
        // No network while bootstrapping; a complete shutdown at its end,
        // since the copy must start without crash recovery.
        install.extra.extend([
            ("skip_networking".to_owned(), "ON".to_owned()),
            ("innodb_fast_shutdown".to_owned(), "0".to_owned()),
        ]);
        let install_cnf = root.join("install.cnf");
        install.write(&install_cnf)?;
        let mut cmd = binaries::mariadb_command(&ctx.bins.install_db, run_as, &root);
        cmd.arg(format!("--defaults-file={}", install_cnf.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        os::run_with_timeout(
            cmd,
            "mariadb-install-db",
            &root.join("install.log"),
            INSTALL_TIMEOUT,
        )?;
        let mirror_dir = root.join("mirror");
        let mut copy = os::command(Path::new("cp"), run_as, &root, &[]);
        copy.arg("-a").arg(&primary_dir).arg(&mirror_dir);
        os::run_with_timeout(copy, "cp -a", &root.join("install.log"), COPY_TIMEOUT)?;

        let primary = MyServer::launch("primary", &ctx)?;
        primary.execute(&primary_setup_sql(APP_USER, self.app_grants))?;
        let mirror = MyServer::launch("mirror", &ctx)?;
        mirror.execute(&format!(
            "{}; START SLAVE",
            change_master_sql(primary.port())
        ))?;

        let pair = MyPair {
            primary,
            mirror,
            dir: Some(dir),
        };
        pair.wait_for_mirror_streaming(self.start_timeout)?;
        pair.wait_for_mirror_caught_up(self.start_timeout)?;
        if self.synchronous {
            pair.primary.wait_for_count(
                "the mirror to become a semi-synchronous replica",
                "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                         WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS') >= 1 \
                    AND (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                         WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS') = 'ON'",
                self.start_timeout,
            )?;
        }
        log::info!(
            "testkit: MariaDB pair ready (primary port {}, mirror port {})",
            pair.primary.port(),
            pair.mirror.port()
        );
        Ok(pair)
    }
}

/// A MariaDB primary and a GTID replica ("mirror") of it.
///
/// Owns its temporary directory. Dropping it (also during a panic unwind)
/// resumes paused servers, kills both, kills anything else still working in
/// the directory and removes the directory. Drop never panics.
pub struct MyPair {
    primary: MyServer,
    mirror: MyServer,
    dir: Option<TempDir>,
}

impl MyPair {
    /// A builder with default options.
    pub fn builder() -> MyPairBuilder {
        MyPairBuilder::new()
    }

    /// Starts a pair with default options (asynchronous replica).
    pub fn start() -> Result<MyPair, TestkitError> {
        MyPairBuilder::new().start()
    }

    /// The primary server.
    pub fn primary(&self) -> &MyServer {
        &self.primary
    }

    /// The mirror (replica) server.
    pub fn mirror(&self) -> &MyServer {
        &self.mirror
    }

    /// The temporary directory holding the data directories, option files,
    /// sockets and logs (removed when the pair is dropped).
    pub fn dir(&self) -> &Path {
        &self.primary.ctx.root
    }

    /// Creates another password-authenticated login (password
    /// [`APP_PASSWORD`]) with the same table rights as [`APP_USER`] and the
    /// given `grants`, on the primary, and waits (at most the builder's start
    /// timeout) until the mirror has applied it. Connect as it with
    /// [`MyServer::role_url`]. `name` must be a lower-case identifier.
    pub fn create_role(&self, name: &str, grants: Grants) -> Result<(), TestkitError> {
        roles::validate_role_name(name, &[SUPERUSER, REPLICATION_USER, "mariadb.sys"])?;
        self.primary.execute(&create_user_sql(name, grants))?;
        self.wait_for_mirror_caught_up(self.primary.ctx.start_timeout)
    }

    /// Waits until the mirror's replication threads run with the IO thread
    /// connected, and the primary has a binlog sender for it, polling every
    /// 100 ms for at most `timeout`.
    pub fn wait_for_mirror_streaming(&self, timeout: Duration) -> Result<(), TestkitError> {
        self.mirror.wait_for_replicating(timeout)?;
        self.primary.wait_for_count(
            "a binlog sender for the mirror",
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE COMMAND LIKE 'Binlog Dump%'",
            timeout,
        )
    }

    /// Waits until the mirror has applied everything the primary had
    /// written when this was called (`MASTER_GTID_WAIT` on the primary's
    /// `@@gtid_binlog_pos`), at most `timeout`.
    pub fn wait_for_mirror_caught_up(&self, timeout: Duration) -> Result<(), TestkitError> {
        let position = self
            .primary
            .query_one_string("SELECT @@gtid_binlog_pos")?
            .unwrap_or_default();
        if position.is_empty() {
            return Ok(());
        }
        let what = format!("the mirror to apply the primary's transactions up to {position}");
        server::poll_until(&what, timeout, |budget| {
            let secs = budget.as_secs_f64().clamp(0.1, 5.0);
            match self
                .mirror
                .query_one_i64(&format!("SELECT MASTER_GTID_WAIT('{position}', {secs:.1})"))
            {
                Ok(0) => server::Attempt::Done,
                Ok(n) => server::Attempt::NotYet(format!("MASTER_GTID_WAIT returned {n}")),
                Err(e @ TestkitError::Paused { .. }) => server::Attempt::Fail(e),
                Err(e) => server::Attempt::NotYet(e.to_string()),
            }
        })
    }
}

impl fmt::Debug for MyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MyPair")
            .field("dir", &self.dir())
            .field("primary", &self.primary)
            .field("mirror", &self.mirror)
            .finish()
    }
}

impl Drop for MyPair {
    fn drop(&mut self) {
        self.mirror.process.shutdown();
        self.primary.process.shutdown();
        let root = self.primary.ctx.root.clone();
        let left = os::reap_processes_under(&root, Duration::from_millis(500), KILL_WAIT);
        if !left.is_empty() {
            log::warn!(
                "testkit: processes {left:?} still run in {} after teardown",
                root.display()
            );
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                log::warn!("testkit: could not remove {}: {e}", root.display());
            }
        }
    }
}

/// What both servers of a pair share.
struct Ctx {
    bins: MariadbBinaries,
    run_as: Option<RunAs>,
    root: PathBuf,
    start_timeout: Duration,
    settings: Vec<(String, String)>,
    semi_sync_timeout: Option<Duration>,
}

impl Ctx {
    /// The option file of server `name` on `port`.
    fn options(&self, name: &'static str, port: u16) -> ServerOptions {
        let primary = name == "primary";
        ServerOptions {
            server_id: if primary { 1 } else { 2 },
            port,
            data_dir: self.root.join(name),
            socket: self.root.join(format!("{name}.sock")),
            pid_file: self.root.join(format!("{name}.pid")),
            tmp_dir: self.root.join(format!("{name}-tmp")),
            read_only: !primary,
            semi_sync_timeout: self.semi_sync_timeout,
            primary,
            net_timeout_secs: NET_TIMEOUT_SECS,
            extra: self.settings.clone(),
        }
    }
}

/// Whether a failed start was caused by the port being taken meanwhile.
fn is_port_conflict(e: &TestkitError) -> bool {
    matches!(e, TestkitError::StartFailed { log_tail, .. }
        if log_tail.contains("Address already in use")
            || log_tail.contains("Bind on TCP/IP port"))
}

/// One MariaDB server of a [`MyPair`].
///
/// All methods take `&self` and the type is `Sync`, so a test can, for
/// example, kill or pause a server from another thread while a pool uses it.
pub struct MyServer {
    process: ServerProcess,
    ctx: Arc<Ctx>,
    option_file: PathBuf,
    socket: PathBuf,
}

impl fmt::Debug for MyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MyServer")
            .field("name", &self.name())
            .field("port", &self.port())
            .field("data_dir", &self.data_dir())
            .field("pid", &self.pid())
            .finish()
    }
}

impl MyServer {
    /// Writes the option file and starts a new server on a free port,
    /// retrying with another port if the picked one got taken meanwhile.
    fn launch(name: &'static str, ctx: &Arc<Ctx>) -> Result<MyServer, TestkitError> {
        server::launch_on_free_port(
            &format!("MariaDB {name}"),
            |port| {
                let options = ctx.options(name, port);
                let option_file = ctx.root.join(format!("{name}.cnf"));
                options.write(&option_file)?;
                let server = MyServer {
                    process: ServerProcess::new(ProcessSpec {
                        engine: "MariaDB",
                        name,
                        port,
                        data_dir: options.data_dir.clone(),
                        log_path: ctx.root.join(format!("{name}.log")),
                        start_timeout: ctx.start_timeout,
                        // The data is thrown away: no need to wait for a shutdown.
                        teardown_signal: libc::SIGKILL,
                    }),
                    ctx: Arc::clone(ctx),
                    option_file,
                    socket: options.socket,
                };
                server.start()?;
                Ok(server)
            },
            is_port_conflict,
        )
    }

    /// `"primary"` or `"mirror"`.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// The TCP port the server listens on (fixed for the server's lifetime,
    /// also across restarts).
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The address the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The server's Unix socket (the test kit's admin connections use it).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.process.data_dir()
    }

    /// The server's option file (`--defaults-file`).
    pub fn option_file(&self) -> &Path {
        &self.option_file
    }

    /// The server's log file (its stderr; kept until the pair is dropped).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The last `max_lines` lines of the server log (for failure messages).
    pub fn log_tail(&self, max_lines: usize) -> String {
        self.process.log_tail(max_lines)
    }

    /// URL of the passwordless superuser [`MY_SUPERUSER`] over TCP:
    /// `mysql://root@127.0.0.1:<port>/mirrorpool?prefer_socket=false`.
    /// (`prefer_socket=false` keeps the `mysql` crate from switching to the
    /// Unix socket, which would bypass a [`TcpProxy`](super::TcpProxy).)
    pub fn url(&self) -> String {
        self.url_on_port(self.port())
    }

    /// Like [`url`](Self::url) but for another port on 127.0.0.1, e.g. a
    /// [`TcpProxy`](super::TcpProxy) in front of this server.
    pub fn url_on_port(&self, port: u16) -> String {
        format!("mysql://{SUPERUSER}@{HOST}:{port}/{DATABASE}?prefer_socket=false")
    }

    /// URL of the password-authenticated, least-privilege login
    /// [`APP_USER`] (password [`APP_PASSWORD`]), otherwise like
    /// [`url`](Self::url).
    pub fn app_url(&self) -> String {
        self.app_url_on_port(self.port())
    }

    /// Like [`app_url`](Self::app_url) but for another port on 127.0.0.1,
    /// e.g. a [`TcpProxy`](super::TcpProxy) in front of this server.
    pub fn app_url_on_port(&self, port: u16) -> String {
        self.role_url_on_port(APP_USER, port)
    }

    /// URL of a login made by [`MyPair::create_role`] (password
    /// [`APP_PASSWORD`]), otherwise like [`url`](Self::url).
    pub fn role_url(&self, role: &str) -> String {
        self.role_url_on_port(role, self.port())
    }

    /// Like [`role_url`](Self::role_url) but for another port on 127.0.0.1.
    pub fn role_url_on_port(&self, role: &str, port: u16) -> String {
        format!("mysql://{role}:{APP_PASSWORD}@{HOST}:{port}/{DATABASE}?prefer_socket=false")
    }

    /// The server process's pid while it runs (also while paused).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server process runs (a paused server counts as running).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Whether the server is currently paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.process.is_paused()
    }

    /// SIGKILLs `mariadbd`, like a crash, and reaps it. The listening socket
    /// closes at once, so new connections are refused, and open connections
    /// see a reset. Errors with [`TestkitError::NotRunning`] if the server
    /// is not running.
    pub fn kill(&self) -> Result<(), TestkitError> {
        self.process.kill()
    }

    /// Stops the server with SIGTERM, resuming it first if paused: open
    /// connections are closed, and since the test servers run with
    /// `innodb_fast_shutdown = 2` InnoDB skips its flush (the next start
    /// recovers), like PostgreSQL's immediate shutdown. Falls back to
    /// SIGKILL after 5 s. Errors with [`TestkitError::NotRunning`] if the
    /// server is not running.
    pub fn stop_immediate(&self) -> Result<(), TestkitError> {
        self.process.stop(
            |pid| {
                os::signal(pid, libc::SIGTERM)
                    .map_err(|e| TestkitError::io(format!("SIGTERM to mariadbd {pid}"), e))
            },
            libc::SIGKILL,
        )
    }

    /// SIGSTOPs `mariadbd`, simulating a hung server: TCP connects still
    /// complete (the kernel answers them), but nothing is ever answered.
    /// Idempotent. The admin helpers of this type fail with
    /// [`TestkitError::Paused`] while paused.
    pub fn pause(&self) -> Result<(), TestkitError> {
        self.process.pause()
    }

    /// Like [`pause`](Self::pause), but returns a guard that resumes the
    /// server when dropped — declare it after the clients that talk to the
    /// paused server, so that it is dropped (and the server resumed) before
    /// them, also during a panic unwind.
    pub fn pause_guard(&self) -> Result<PauseGuard<'_>, TestkitError> {
        self.process.pause_guard()
    }

    /// SIGCONTs the server. A no-op if it is not paused.
    pub fn resume(&self) -> Result<(), TestkitError> {
        self.process.resume()
    }

    /// (Re)starts the server on the same port, data directory and option
    /// file after [`kill`](Self::kill) or
    /// [`stop_immediate`](Self::stop_immediate), and waits until it accepts
    /// connections (at most the builder's start timeout, 30 s by default).
    ///
    /// A restarted mirror resumes replicating by itself; a restarted former
    /// primary comes back as a primary (writable). Errors with
    /// [`TestkitError::AlreadyRunning`] if the server runs.
    pub fn start(&self) -> Result<(), TestkitError> {
        let mut cmd =
            binaries::mariadb_command(&self.ctx.bins.server, self.ctx.run_as, self.data_dir());
        cmd.arg(format!("--defaults-file={}", self.option_file.display()));
        self.process.start(cmd, || self.probe())
    }
}
