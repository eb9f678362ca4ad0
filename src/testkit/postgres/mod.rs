//! Throw-away PostgreSQL primary + streaming-replication mirror pairs.
//!
//! A [`PgPair`] owns a temporary directory holding two data directories
//! (`primary/` and `mirror/`), their logs and their Unix sockets. The servers
//! listen on free loopback ports only. Dropping the pair — also while a test
//! panics — stops both servers and removes the directory.
//!
//! Where things are: provisioning files in `conf.rs`, the admin SQL client in
//! `admin.rs`, binary discovery in `binaries.rs`; the process lifecycle every
//! engine shares is `testkit/server.rs`.

mod admin;
mod binaries;
mod conf;
mod load;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::postgres::Config;
use tempfile::TempDir;

use self::admin::{create_role_sql, CONNECT_TIMEOUT};
use self::binaries::PgBinaries;
use super::error::TestkitError;
use super::os::{self, RunAs};
use super::roles::{self, Grants, APP_PASSWORD, APP_USER};
use super::server::{self, PauseGuard, ProcessSpec, ServerProcess, KILL_WAIT};

pub use self::load::PgTable;

/// The trust-authenticated bootstrap superuser, for administration only.
pub const SUPERUSER: &str = "postgres";
/// The `application_name` the mirror's WAL receiver uses; it is what
/// `pg_stat_replication.application_name` and `synchronous_standby_names`
/// refer to.
pub const MIRROR_APPLICATION_NAME: &str = "mirror";

/// The only address the servers listen on.
const HOST: &str = "127.0.0.1";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(120);
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Consuming builder for a [`PgPair`]; obtain it with [`PgPair::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PgPairBuilder {
    app_grants: Grants,
    synchronous: bool,
    settings: Vec<(String, String)>,
    pg_bin_dir: Option<PathBuf>,
    os_user: Option<String>,
    start_timeout: Duration,
}

impl Default for PgPairBuilder {
    fn default() -> Self {
        PgPairBuilder {
            app_grants: Grants::none(),
            synchronous: false,
            settings: Vec::new(),
            pg_bin_dir: None,
            os_user: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }
}

impl PgPairBuilder {
    /// A builder with every option at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the mirror a synchronous standby: after the mirror streams, the
    /// primary gets `synchronous_standby_names = 'mirror'` and
    /// `synchronous_commit = on` (via `ALTER SYSTEM` + reload), and
    /// [`start`](Self::start) waits until `pg_stat_replication` reports
    /// `sync_state = 'sync'`. Commits on the primary then block while the
    /// mirror is down. Default: `false` (asynchronous streaming).
    pub fn synchronous(mut self, synchronous: bool) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Grants [`APP_USER`] `pg_monitor`, so it sees the replication state
    /// (`pg_stat_replication`, `pg_stat_wal_receiver`): what mirrorpool's
    /// `verify_primary_failure` and lag gate need. Default: `false`.
    pub fn grant_replication_status(mut self, grant: bool) -> Self {
        self.app_grants = self.app_grants.replication_status(grant);
        self
    }

    /// Grants [`APP_USER`] EXECUTE on `pg_promote`: what mirrorpool's
    /// `promote_on_failover` needs. Default: `false`.
    pub fn grant_promote(mut self, grant: bool) -> Self {
        self.app_grants = self.app_grants.promote(grant);
        self
    }

    /// Sets both grants of [`APP_USER`] at once. Default: [`Grants::none`].
    pub fn app_grants(mut self, grants: Grants) -> Self {
        self.app_grants = grants;
        self
    }

    /// Adds a `postgresql.conf` setting for both servers (the mirror inherits
    /// the primary's configuration). The value is quoted for you. It is
    /// written after the test kit's own settings, so it overrides them,
    /// except for `port`, `listen_addresses` and `unix_socket_directories`,
    /// which are rejected. Malformed names or values make
    /// [`start`](Self::start) fail with [`TestkitError::InvalidSetting`].
    /// Default: no extra settings.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Directory holding `initdb`, `pg_ctl`, `postgres` and `pg_basebackup`.
    /// Default: the `MIRRORPOOL_PG_BIN` environment variable if set, else the
    /// highest-versioned `/usr/lib/postgresql/*/bin` that has them, else
    /// `PATH`.
    pub fn pg_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pg_bin_dir = Some(dir.into());
        self
    }

    /// OS user the PostgreSQL programs run as when the test process runs as
    /// root (PostgreSQL refuses to run as root). Ignored when not root.
    /// Default: the `MIRRORPOOL_TESTKIT_USER` environment variable if set,
    /// else `postgres`.
    pub fn os_user(mut self, user: &str) -> Self {
        self.os_user = Some(user.to_owned());
        self
    }

    /// Deadline for each server to accept connections after being started
    /// (also used for [`PgServer::start`] and for the initial wait for
    /// streaming replication). Default: 30 s.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Creates the directory, runs `initdb`, starts the primary, creates the
    /// [`APP_USER`] role with the requested grants, clones the mirror with `pg_basebackup`, starts it
    /// and waits until it streams (and, if requested, is synchronous).
    ///
    /// Everything created so far is torn down again if a step fails.
    pub fn start(self) -> Result<PgPair, TestkitError> {
        for (name, value) in &self.settings {
            conf::validate_setting(name, value)?;
        }
        let bins = binaries::locate_binaries_from_env(self.pg_bin_dir.as_deref())?;
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
        });
        log::info!("testkit: creating PostgreSQL pair in {}", root.display());

        let primary_dir = root.join("primary");
        let mut initdb = binaries::pg_command(&ctx.bins.initdb, run_as, &root);
        initdb.arg("-D").arg(&primary_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        os::run_with_timeout(initdb, "initdb", &root.join("initdb.log"), INITDB_TIMEOUT)?;
        conf::write_primary_config(&primary_dir, &root, &self.settings)?;

        let primary = PgServer::launch("primary", primary_dir, &ctx)?;
        primary.execute(&create_role_sql(APP_USER, self.app_grants))?;

        let mirror_dir = root.join("mirror");
        let mut basebackup = binaries::pg_command(&ctx.bins.pg_basebackup, run_as, &root);
        basebackup
            .args([
                "-h",
                HOST,
                "-p",
                &primary.port().to_string(),
                "-U",
                SUPERUSER,
            ])
            .arg("-D")
            .arg(&mirror_dir)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync", "-w"]);
        os::run_with_timeout(
            basebackup,
            "pg_basebackup",
            &root.join("pg_basebackup.log"),
            BASEBACKUP_TIMEOUT,
        )?;
        conf::append_config(
            &mirror_dir.join("postgresql.auto.conf"),
            &[(
                "primary_conninfo".to_owned(),
                format!(
                    "host={HOST} port={} user={SUPERUSER} application_name={MIRROR_APPLICATION_NAME}",
                    primary.port()
                ),
            )],
        )?;
        let mirror = PgServer::launch("mirror", mirror_dir, &ctx)?;

        let pair = PgPair {
            primary,
            mirror,
            dir: Some(dir),
        };
        pair.wait_for_mirror_streaming(self.start_timeout)?;
        if self.synchronous {
            pair.primary.execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{MIRROR_APPLICATION_NAME}'"
            ))?;
            pair.primary
                .execute("ALTER SYSTEM SET synchronous_commit = 'on'")?;
            pair.primary.execute("SELECT pg_reload_conf()")?;
            pair.primary.wait_for_count(
                "the mirror to become a synchronous standby",
                &format!(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = '{MIRROR_APPLICATION_NAME}' AND sync_state = 'sync'"
                ),
                self.start_timeout,
            )?;
        }
        log::info!(
            "testkit: pair ready (primary port {}, mirror port {})",
            pair.primary.port(),
            pair.mirror.port()
        );
        Ok(pair)
    }
}

/// A primary PostgreSQL server and a mirror streaming from it.
///
/// Owns its temporary directory. Dropping it (also during a panic unwind)
/// resumes paused processes, stops both servers with an immediate shutdown
/// (SIGKILL if that takes longer than 5 s), kills anything else still working
/// in the directory and removes the directory. Drop never panics.
pub struct PgPair {
    primary: PgServer,
    mirror: PgServer,
    dir: Option<TempDir>,
}

impl PgPair {
    /// A builder with default options.
    pub fn builder() -> PgPairBuilder {
        PgPairBuilder::new()
    }

    /// Starts a pair with default options (asynchronous mirror).
    pub fn start() -> Result<PgPair, TestkitError> {
        PgPairBuilder::new().start()
    }

    /// The primary server.
    pub fn primary(&self) -> &PgServer {
        &self.primary
    }

    /// The mirror (streaming standby) server.
    pub fn mirror(&self) -> &PgServer {
        &self.mirror
    }

    /// The temporary directory holding the data directories and logs
    /// (removed when the pair is dropped).
    pub fn dir(&self) -> &Path {
        &self.primary.ctx.root
    }

    /// Creates another password-authenticated LOGIN role (password
    /// [`APP_PASSWORD`]) with the same table rights as [`APP_USER`] and the
    /// given `grants`, on the primary, and waits (at most the builder's start
    /// timeout) until the mirror has replayed it. Connect as it with
    /// [`PgServer::role_config`]. `name` must be a lower-case identifier.
    pub fn create_role(&self, name: &str, grants: Grants) -> Result<(), TestkitError> {
        roles::validate_role_name(name, &[SUPERUSER])?;
        self.primary.execute(&create_role_sql(name, grants))?;
        self.mirror.wait_for_count(
            &format!("the role {name} to reach the mirror"),
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'"),
            self.primary.ctx.start_timeout,
        )
    }

    /// Waits until `pg_stat_replication` on the primary shows the mirror in
    /// state `streaming`, polling every 100 ms for at most `timeout`.
    pub fn wait_for_mirror_streaming(&self, timeout: Duration) -> Result<(), TestkitError> {
        self.primary.wait_for_count(
            "the mirror to stream from the primary",
            &format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE application_name = '{MIRROR_APPLICATION_NAME}' AND state = 'streaming'"
            ),
            timeout,
        )
    }
}

impl fmt::Debug for PgPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPair")
            .field("dir", &self.dir())
            .field("primary", &self.primary)
            .field("mirror", &self.mirror)
            .finish()
    }
}

impl Drop for PgPair {
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
    bins: PgBinaries,
    run_as: Option<RunAs>,
    root: PathBuf,
    start_timeout: Duration,
}

/// One PostgreSQL server of a [`PgPair`].
///
/// All methods take `&self` and the type is `Sync`, so a test can, for
/// example, kill or pause a server from another thread while a pool uses it.
pub struct PgServer {
    process: ServerProcess,
    ctx: Arc<Ctx>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("name", &self.name())
            .field("port", &self.port())
            .field("data_dir", &self.data_dir())
            .field("pid", &self.pid())
            .finish()
    }
}

/// Whether a failed start was caused by the port being taken meanwhile.
fn is_port_conflict(e: &TestkitError) -> bool {
    matches!(e, TestkitError::StartFailed { log_tail, .. }
        if log_tail.contains("already in use")
            || log_tail.contains("could not create any TCP/IP sockets"))
}

impl PgServer {
    /// Starts a new server on a free port, retrying with another port if the
    /// picked one got taken in the meantime.
    fn launch(
        name: &'static str,
        data_dir: PathBuf,
        ctx: &Arc<Ctx>,
    ) -> Result<PgServer, TestkitError> {
        server::launch_on_free_port(
            &format!("PostgreSQL {name}"),
            |port| {
                let server = PgServer {
                    process: ServerProcess::new(ProcessSpec {
                        engine: "PostgreSQL",
                        name,
                        port,
                        data_dir: data_dir.clone(),
                        log_path: ctx.root.join(format!("{name}.log")),
                        start_timeout: ctx.start_timeout,
                        // An immediate shutdown.
                        teardown_signal: libc::SIGQUIT,
                    }),
                    ctx: Arc::clone(ctx),
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

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.process.data_dir()
    }

    /// The server's log file (its stderr; kept until the pair is dropped).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The last `max_lines` lines of the server log (for failure messages).
    pub fn log_tail(&self, max_lines: usize) -> String {
        self.process.log_tail(max_lines)
    }

    /// Connection settings for the trust-authenticated superuser
    /// [`SUPERUSER`]: host 127.0.0.1, this port, database `postgres`,
    /// `connect_timeout` 5 s (which bounds only the TCP connect, not the
    /// start-up handshake).
    pub fn config(&self) -> Config {
        self.config_on_port(self.port())
    }

    /// Connection settings for the password-authenticated, least-privilege
    /// role [`APP_USER`] (password [`APP_PASSWORD`], SCRAM-SHA-256), otherwise
    /// like [`config`](Self::config).
    pub fn app_config(&self) -> Config {
        self.app_config_on_port(self.port())
    }

    /// Like [`config`](Self::config) but for another port on 127.0.0.1, e.g.
    /// a [`TcpProxy`](super::TcpProxy) in front of this server. (Calling
    /// `port()` on a `postgres::Config` that already has a port *adds* a
    /// second one instead of replacing it.)
    pub fn config_on_port(&self, port: u16) -> Config {
        let mut config = Config::new();
        config
            .host(HOST)
            .port(port)
            .user(SUPERUSER)
            .dbname("postgres")
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    /// Like [`app_config`](Self::app_config) but for another port on
    /// 127.0.0.1, e.g. a [`TcpProxy`](super::TcpProxy) in front of this
    /// server.
    pub fn app_config_on_port(&self, port: u16) -> Config {
        let mut config = self.config_on_port(port);
        config.user(APP_USER).password(APP_PASSWORD);
        config
    }

    /// Connection settings for a role made by [`PgPair::create_role`] (password
    /// [`APP_PASSWORD`]), otherwise like [`config`](Self::config).
    pub fn role_config(&self, role: &str) -> Config {
        self.role_config_on_port(role, self.port())
    }

    /// Like [`role_config`](Self::role_config) but for another port on
    /// 127.0.0.1, e.g. a [`TcpProxy`](super::TcpProxy) in front of this server.
    pub fn role_config_on_port(&self, role: &str, port: u16) -> Config {
        let mut config = self.config_on_port(port);
        config.user(role).password(APP_PASSWORD);
        config
    }

    /// The postmaster's pid while it runs (also while paused).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the postmaster process runs (a paused server counts as
    /// running).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Whether the server is currently paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.process.is_paused()
    }

    /// Pids of the postmaster's live child processes (backends, WAL sender or
    /// receiver, checkpointer, ...). Empty when the server is not running.
    pub fn child_pids(&self) -> Vec<u32> {
        self.process.child_pids()
    }

    /// SIGKILLs the postmaster, like a crash of the server machine's
    /// PostgreSQL, and reaps it. The listening socket closes at once, so new
    /// connections are refused. The orphaned child processes notice the
    /// postmaster's death and exit by themselves within milliseconds (a
    /// paused server's children are sent SIGCONT so that they can); idle
    /// client connections first receive `FATAL 57P01: terminating connection
    /// due to unexpected postmaster exit`, so the next query on them fails
    /// with that database error rather than an I/O error.
    ///
    /// Errors with [`TestkitError::NotRunning`] if the server is not running.
    pub fn kill(&self) -> Result<(), TestkitError> {
        self.process.kill()
    }

    /// Stops the server with `pg_ctl stop -m immediate` (no checkpoint; the
    /// next start does crash recovery), resuming it first if paused. Waits at
    /// most 30 s for `pg_ctl`, then falls back to SIGQUIT and finally SIGKILL.
    ///
    /// Errors with [`TestkitError::NotRunning`] if the server is not running.
    pub fn stop_immediate(&self) -> Result<(), TestkitError> {
        self.process.stop(
            |_pid| {
                let mut cmd =
                    binaries::pg_command(&self.ctx.bins.pg_ctl, self.ctx.run_as, &self.ctx.root);
                cmd.arg("stop").arg("-D").arg(self.data_dir()).args([
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "20",
                ]);
                os::run_with_timeout(cmd, "pg_ctl stop", self.log_path(), PG_CTL_TIMEOUT)
            },
            libc::SIGQUIT,
        )
    }

    /// SIGSTOPs the postmaster and all its child processes, simulating a hung
    /// server: TCP connects still complete (the kernel answers them), but
    /// nothing is ever answered. Idempotent. The admin helpers of this type
    /// fail with [`TestkitError::Paused`] while paused.
    ///
    /// Beware: dropping a `postgres::Client` that has an unanswered request
    /// (e.g. after `is_valid` timed out) blocks until the server answers, so
    /// resume (or kill) the server before dropping such clients — see
    /// [`pause_guard`](Self::pause_guard).
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

    /// SIGCONTs every process [`pause`](Self::pause) stopped. A no-op if the
    /// server is not paused.
    pub fn resume(&self) -> Result<(), TestkitError> {
        self.process.resume()
    }

    /// (Re)starts the server on the same port and data directory after
    /// [`kill`](Self::kill) or [`stop_immediate`](Self::stop_immediate), and
    /// waits until it accepts connections (at most the builder's start
    /// timeout, 30 s by default). Processes left over from a killed instance
    /// get 10 s to exit by themselves and are then SIGKILLed, since
    /// PostgreSQL refuses to start while they hold its shared memory.
    ///
    /// A restarted mirror resumes streaming by itself; a restarted former
    /// primary comes back as a primary. Errors with
    /// [`TestkitError::AlreadyRunning`] if the server runs.
    pub fn start(&self) -> Result<(), TestkitError> {
        let mut cmd =
            binaries::pg_command(&self.ctx.bins.postgres, self.ctx.run_as, self.data_dir());
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port().to_string());
        self.process.start(cmd, || self.probe())
    }
}
