//! Throw-away PostgreSQL primary + streaming-replication mirror pairs.
//!
//! A [`PgPair`] owns a temporary directory holding two data directories
//! (`primary/` and `mirror/`), their logs and their Unix sockets. The servers
//! listen on free loopback ports only. Dropping the pair — also while a test
//! panics — stops both servers and removes the directory.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ::postgres::types::Type;
use ::postgres::{Client, Config, NoTls, Row, SimpleQueryMessage};
use tempfile::TempDir;

use super::error::TestkitError;
use super::process::{self, PgBinaries, RunAs};

/// Name of the application role created on the primary (and replicated to the
/// mirror): a plain, password-authenticated LOGIN role, not a superuser. It may
/// create tables in schema `public` and read and write every table a superuser
/// creates there (default privileges), and holds the grants for replication
/// visibility and promotion only when the builder asks for them
/// ([`PgPairBuilder::grant_replication_status`], [`PgPairBuilder::grant_promote`]).
pub const APP_USER: &str = "mirrorpool";
/// Password of [`APP_USER`] and of every role made by [`PgPair::create_role`].
/// A fixed, public test password: the servers only listen on 127.0.0.1 and live
/// for the duration of a test.
pub const APP_PASSWORD: &str = "mirrorpool-testkit-secret";
/// The trust-authenticated bootstrap superuser, for administration only.
pub const SUPERUSER: &str = "postgres";
/// The `application_name` the mirror's WAL receiver uses; it is what
/// `pg_stat_replication.application_name` and `synchronous_standby_names`
/// refer to.
pub const MIRROR_APPLICATION_NAME: &str = "mirror";

/// The only address the servers listen on.
const HOST: &str = "127.0.0.1";
/// `application_name` of the test kit's own short-lived admin connections.
const ADMIN_APPLICATION_NAME: &str = "testkit-admin";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one admin helper call (connect + query).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-side `statement_timeout` of admin connections (below ADMIN_TIMEOUT).
const ADMIN_STATEMENT_TIMEOUT_MS: u64 = 25_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(120);
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGQUIT (immediate shutdown) gets before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long processes orphaned by a killed postmaster get to exit by
/// themselves before a restart SIGKILLs them.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How many fresh ports an initial start tries when the port got taken.
const PORT_ATTEMPTS: usize = 5;
/// Settings whose value the test kit must control.
const RESERVED_SETTINGS: [&str; 3] = ["port", "listen_addresses", "unix_socket_directories"];

/// What an application role may do beyond logging in and using the tables of
/// schema `public`: the grants mirrorpool's optional features need.
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

    /// `GRANT pg_monitor`: seeing `pg_stat_replication` and `pg_stat_wal_receiver`
    /// (for `verify_primary_failure` and the lag gate).
    pub fn replication_status(mut self, grant: bool) -> Grants {
        self.replication_status = grant;
        self
    }

    /// `GRANT EXECUTE ON FUNCTION pg_promote`: promoting the mirror (for
    /// `promote_on_failover`).
    pub fn promote(mut self, grant: bool) -> Grants {
        self.promote = grant;
        self
    }

    /// Whether `pg_monitor` is granted.
    pub fn has_replication_status(&self) -> bool {
        self.replication_status
    }

    /// Whether EXECUTE on `pg_promote` is granted.
    pub fn has_promote(&self) -> bool {
        self.promote
    }
}

/// Checks that `name` is a plain lower-case identifier (so it needs no quoting).
fn validate_role_name(name: &str) -> Result<(), TestkitError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok && name != SUPERUSER {
        Ok(())
    } else {
        Err(TestkitError::InvalidRoleName {
            name: name.to_owned(),
        })
    }
}

/// SQL creating the login role `name` (a validated identifier) with password
/// [`APP_PASSWORD`], table rights in schema `public` and `grants`.
fn create_role_sql(name: &str, grants: Grants) -> String {
    let mut sql = format!(
        "CREATE ROLE {name} LOGIN PASSWORD '{APP_PASSWORD}';\
         GRANT CREATE ON SCHEMA public TO {name};\
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {name};\
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {name};\
         ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} IN SCHEMA public \
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO {name};\
         ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER} IN SCHEMA public \
             GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {name};"
    );
    if grants.replication_status {
        sql.push_str(&format!("GRANT pg_monitor TO {name};"));
    }
    if grants.promote {
        sql.push_str(&format!(
            "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {name};"
        ));
    }
    sql
}

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
        self.app_grants.replication_status = grant;
        self
    }

    /// Grants [`APP_USER`] EXECUTE on `pg_promote`: what mirrorpool's
    /// `promote_on_failover` needs. Default: `false`.
    pub fn grant_promote(mut self, grant: bool) -> Self {
        self.app_grants.promote = grant;
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
            validate_setting(name, value)?;
        }
        let bins = process::locate_binaries_from_env(self.pg_bin_dir.as_deref())?;
        let run_as = process::resolve_run_as(self.os_user.as_deref())?;

        let dir = tempfile::Builder::new()
            .prefix("mirrorpool-testkit-")
            .tempdir()
            .map_err(|e| TestkitError::io("creating the test kit's temporary directory", e))?;
        let root = dir
            .path()
            .canonicalize()
            .map_err(|e| TestkitError::io(format!("resolving {}", dir.path().display()), e))?;
        if let Some(r) = run_as {
            std::os::unix::fs::chown(&root, Some(r.uid), Some(r.gid)).map_err(|e| {
                TestkitError::io(format!("handing {} to uid {}", root.display(), r.uid), e)
            })?;
        }
        let ctx = Arc::new(Ctx {
            bins,
            run_as,
            root: root.clone(),
            start_timeout: self.start_timeout,
        });
        log::info!("testkit: creating PostgreSQL pair in {}", root.display());

        let primary_dir = root.join("primary");
        let mut initdb = process::pg_command(&ctx.bins.initdb, run_as, &root);
        initdb.arg("-D").arg(&primary_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        process::run_with_timeout(initdb, "initdb", &root.join("initdb.log"), INITDB_TIMEOUT)?;
        write_primary_config(&primary_dir, &root, &self.settings)?;

        let primary = PgServer::launch("primary", primary_dir, &ctx)?;
        primary.execute(&create_role_sql(APP_USER, self.app_grants))?;

        let mirror_dir = root.join("mirror");
        let mut basebackup = process::pg_command(&ctx.bins.pg_basebackup, run_as, &root);
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
        process::run_with_timeout(
            basebackup,
            "pg_basebackup",
            &root.join("pg_basebackup.log"),
            BASEBACKUP_TIMEOUT,
        )?;
        append_config(
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

fn validate_setting(name: &str, value: &str) -> Result<(), TestkitError> {
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

fn append_config(path: &Path, settings: &[(String, String)]) -> Result<(), TestkitError> {
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

fn write_primary_config(
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

/// A free loopback port (never 5432). The port is released again before it
/// is returned, so a start can still lose a race for it; callers retry.
fn free_port() -> Result<u16, TestkitError> {
    for _ in 0..10 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestkitError::io("binding 127.0.0.1:0 to pick a port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestkitError::io("reading the picked port", e))?
            .port();
        if port != 5432 {
            return Ok(port);
        }
    }
    Err(TestkitError::io(
        "picking a free port",
        std::io::Error::other("no port other than 5432 offered"),
    ))
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
        validate_role_name(name)?;
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
        self.mirror.shutdown_for_drop();
        self.primary.shutdown_for_drop();
        let root = self.primary.ctx.root.clone();
        let left = process::reap_processes_under(&root, Duration::from_millis(500), KILL_WAIT);
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

#[derive(Default)]
struct ServerState {
    /// The postmaster, while started by us and not yet reaped.
    child: Option<Child>,
    /// Processes SIGSTOPped by [`PgServer::pause`].
    paused: Vec<u32>,
}

/// One PostgreSQL server of a [`PgPair`].
///
/// All methods take `&self` and the type is `Sync`, so a test can, for
/// example, kill or pause a server from another thread while a pool uses it.
pub struct PgServer {
    name: &'static str,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    ctx: Arc<Ctx>,
    state: Mutex<ServerState>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("pid", &self.pid())
            .finish()
    }
}

impl PgServer {
    /// Starts a new server on a free port, retrying with another port if the
    /// picked one got taken in the meantime.
    fn launch(
        name: &'static str,
        data_dir: PathBuf,
        ctx: &Arc<Ctx>,
    ) -> Result<PgServer, TestkitError> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let server = PgServer {
                name,
                port: free_port()?,
                data_dir: data_dir.clone(),
                log_path: ctx.root.join(format!("{name}.log")),
                ctx: Arc::clone(ctx),
                state: Mutex::new(ServerState::default()),
            };
            match server.start() {
                Ok(()) => return Ok(server),
                Err(e) if is_port_conflict(&e) => {
                    log::info!("testkit: port {} was taken, retrying: {e}", server.port);
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| TestkitError::StartFailed {
            server: name.to_owned(),
            reason: "no start attempt was made".to_owned(),
            log_tail: String::new(),
        }))
    }

    /// `"primary"` or `"mirror"`.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The TCP port the server listens on (fixed for the server's lifetime,
    /// also across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file (its stderr; kept until the pair is dropped).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `max_lines` lines of the server log (for failure messages).
    pub fn log_tail(&self, max_lines: usize) -> String {
        process::log_tail(&self.log_path, 0, max_lines)
    }

    /// Connection settings for the trust-authenticated superuser
    /// [`SUPERUSER`]: host 127.0.0.1, this port, database `postgres`,
    /// `connect_timeout` 5 s (which bounds only the TCP connect, not the
    /// start-up handshake).
    pub fn config(&self) -> Config {
        self.config_on_port(self.port)
    }

    /// Connection settings for the password-authenticated, least-privilege
    /// role [`APP_USER`] (password [`APP_PASSWORD`], SCRAM-SHA-256), otherwise
    /// like [`config`](Self::config).
    pub fn app_config(&self) -> Config {
        self.app_config_on_port(self.port)
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
        self.role_config_on_port(role, self.port)
    }

    /// Like [`role_config`](Self::role_config) but for another port on
    /// 127.0.0.1, e.g. a [`TcpProxy`](super::TcpProxy) in front of this server.
    pub fn role_config_on_port(&self, role: &str, port: u16) -> Config {
        let mut config = self.config_on_port(port);
        config.user(role).password(APP_PASSWORD);
        config
    }

    fn lock_state(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reaps the postmaster if it exited; returns whether it still runs.
    fn child_alive(state: &mut ServerState) -> bool {
        let alive = match state.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        };
        if !alive {
            state.child = None;
        }
        alive
    }

    /// Takes the postmaster's `Child` out of `state`, or errors if it is not running.
    fn take_running_child(&self, state: &mut ServerState) -> Result<Child, TestkitError> {
        if !Self::child_alive(state) {
            return Err(self.not_running());
        }
        state.child.take().ok_or_else(|| self.not_running())
    }

    fn not_running(&self) -> TestkitError {
        TestkitError::NotRunning {
            server: self.name.to_owned(),
        }
    }

    /// The postmaster's pid while it runs (also while paused).
    pub fn pid(&self) -> Option<u32> {
        let mut state = self.lock_state();
        if Self::child_alive(&mut state) {
            state.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// Whether the postmaster process runs (a paused server counts as
    /// running).
    pub fn is_running(&self) -> bool {
        let mut state = self.lock_state();
        Self::child_alive(&mut state)
    }

    /// Whether the server is currently paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        !self.lock_state().paused.is_empty()
    }

    /// Pids of the postmaster's live child processes (backends, WAL sender or
    /// receiver, checkpointer, ...). Empty when the server is not running.
    pub fn child_pids(&self) -> Vec<u32> {
        self.pid().map(process::descendants).unwrap_or_default()
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
        let mut state = self.lock_state();
        let mut child = self.take_running_child(&mut state)?;
        let pid = child.id();
        log::info!("testkit: SIGKILL {} postmaster {pid}", self.name);
        if let Err(e) = child.kill() {
            state.child = Some(child);
            return Err(TestkitError::io(format!("SIGKILL to postmaster {pid}"), e));
        }
        for p in state.paused.drain(..) {
            if p != pid {
                let _ = process::signal(p, libc::SIGCONT);
            }
        }
        if process::wait_child(&mut child, KILL_WAIT).is_none() {
            state.child = Some(child);
            return Err(TestkitError::Timeout {
                what: format!("the SIGKILLed {} postmaster {pid} to exit", self.name),
                timeout: KILL_WAIT,
                last_error: None,
            });
        }
        Ok(())
    }

    /// Stops the server with `pg_ctl stop -m immediate` (no checkpoint; the
    /// next start does crash recovery), resuming it first if paused. Waits at
    /// most 30 s for `pg_ctl`, then falls back to SIGQUIT and finally SIGKILL.
    ///
    /// Errors with [`TestkitError::NotRunning`] if the server is not running.
    pub fn stop_immediate(&self) -> Result<(), TestkitError> {
        let mut state = self.lock_state();
        let mut child = self.take_running_child(&mut state)?;
        Self::resume_locked(&mut state);
        let pid = child.id();
        log::info!("testkit: immediate shutdown of {} ({pid})", self.name);
        let mut cmd = process::pg_command(&self.ctx.bins.pg_ctl, self.ctx.run_as, &self.ctx.root);
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "20"]);
        if let Err(e) =
            process::run_with_timeout(cmd, "pg_ctl stop", &self.log_path, PG_CTL_TIMEOUT)
        {
            log::warn!("testkit: {e}; sending SIGQUIT to {pid}");
            let _ = process::signal(pid, libc::SIGQUIT);
        }
        if process::wait_child(&mut child, SHUTDOWN_GRACE).is_none()
            && process::kill_and_reap(&mut child, KILL_WAIT).is_none()
        {
            state.child = Some(child);
            return Err(TestkitError::Timeout {
                what: format!("{} postmaster {pid} to exit", self.name),
                timeout: SHUTDOWN_GRACE + KILL_WAIT,
                last_error: None,
            });
        }
        drop(state);
        process::reap_processes_under(&self.data_dir, SHUTDOWN_GRACE, KILL_WAIT);
        Ok(())
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
        let mut state = self.lock_state();
        if !Self::child_alive(&mut state) {
            return Err(self.not_running());
        }
        if !state.paused.is_empty() {
            return Ok(());
        }
        let Some(pid) = state.child.as_ref().map(Child::id) else {
            return Err(self.not_running());
        };
        log::info!("testkit: pausing {} ({pid})", self.name);
        process::signal(pid, libc::SIGSTOP)
            .map_err(|e| TestkitError::io(format!("SIGSTOP to postmaster {pid}"), e))?;
        state.paused.push(pid);
        // Once the postmaster is stopped it cannot fork; then stop the
        // children, rescanning until no new one shows up.
        let deadline = Instant::now() + Duration::from_secs(2);
        while process::is_alive(pid) && !process::is_stopped(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..20 {
            let fresh: Vec<u32> = process::descendants(pid)
                .into_iter()
                .filter(|p| !state.paused.contains(p))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for p in fresh {
                if process::signal(p, libc::SIGSTOP).is_ok() {
                    state.paused.push(p);
                }
            }
        }
        // Signal delivery is asynchronous: wait until every process has
        // actually stopped (or exited), so the server is hung on return.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && state
                .paused
                .iter()
                .any(|&p| process::is_alive(p) && !process::is_stopped(p))
        {
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Like [`pause`](Self::pause), but returns a guard that resumes the
    /// server when dropped — declare it after the clients that talk to the
    /// paused server, so that it is dropped (and the server resumed) before
    /// them, also during a panic unwind.
    pub fn pause_guard(&self) -> Result<PauseGuard<'_>, TestkitError> {
        self.pause()?;
        Ok(PauseGuard { server: self })
    }

    fn resume_locked(state: &mut ServerState) {
        // Children first, the postmaster (first entry) last.
        for &p in state.paused.iter().rev() {
            let _ = process::signal(p, libc::SIGCONT);
        }
        state.paused.clear();
    }

    /// SIGCONTs every process [`pause`](Self::pause) stopped. A no-op if the
    /// server is not paused.
    pub fn resume(&self) -> Result<(), TestkitError> {
        let mut state = self.lock_state();
        if !state.paused.is_empty() {
            log::info!("testkit: resuming {}", self.name);
        }
        Self::resume_locked(&mut state);
        Ok(())
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
        let offset = {
            let mut state = self.lock_state();
            if Self::child_alive(&mut state) {
                return Err(TestkitError::AlreadyRunning {
                    server: self.name.to_owned(),
                });
            }
            state.paused.clear();
            let left = process::reap_processes_under(&self.data_dir, ORPHAN_GRACE, KILL_WAIT);
            if !left.is_empty() {
                return Err(TestkitError::StartFailed {
                    server: self.name.to_owned(),
                    reason: format!("processes {left:?} of the previous instance do not exit"),
                    log_tail: self.log_tail(20),
                });
            }
            let offset = process::file_len(&self.log_path);
            let out = process::open_log(&self.log_path)?;
            let err = out.try_clone().map_err(|e| {
                TestkitError::io(
                    format!("duplicating handle of {}", self.log_path.display()),
                    e,
                )
            })?;
            let mut cmd =
                process::pg_command(&self.ctx.bins.postgres, self.ctx.run_as, &self.data_dir);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(out)
                .stderr(err);
            let child = cmd.spawn().map_err(|e| {
                TestkitError::io(format!("spawning postgres for the {}", self.name), e)
            })?;
            log::info!(
                "testkit: started {} postmaster {} on port {}",
                self.name,
                child.id(),
                self.port
            );
            state.child = Some(child);
            offset
        };
        self.wait_until_ready(offset)
    }

    fn wait_until_ready(&self, log_offset: u64) -> Result<(), TestkitError> {
        let timeout = self.ctx.start_timeout;
        let deadline = process::deadline_after(timeout);
        let failed = |reason: String| TestkitError::StartFailed {
            server: self.name.to_owned(),
            reason,
            log_tail: process::log_tail(&self.log_path, log_offset, 30),
        };
        loop {
            {
                let mut state = self.lock_state();
                let Some(child) = state.child.as_mut() else {
                    return Err(failed("it was stopped while starting".to_owned()));
                };
                match child.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        state.child = None;
                        return Err(failed(format!("postgres exited ({status})")));
                    }
                    Err(e) => return Err(TestkitError::io("waiting for postgres", e)),
                }
            }
            let last_error = match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let mut state = self.lock_state();
                if let Some(mut child) = state.child.take() {
                    process::kill_and_reap(&mut child, KILL_WAIT);
                }
                return Err(failed(format!(
                    "it did not accept connections within {timeout:?} (last error: {last_error})"
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// One quick readiness check: connect and `SELECT 1`.
    fn probe(&self) -> Result<(), TestkitError> {
        self.run_admin(
            "readiness probe",
            PROBE_CONNECT_TIMEOUT,
            PROBE_TIMEOUT,
            |c| c.simple_query("SELECT 1").map(|_| ()),
        )
    }

    /// Promotes the mirror to a primary (`SELECT pg_promote(true, 25)`) and
    /// waits until it has left recovery and accepts writes. The old primary
    /// is left alone (both are writable afterwards, as after a real failover
    /// without fencing).
    pub fn promote(&self) -> Result<(), TestkitError> {
        log::info!("testkit: promoting {}", self.name);
        let promoted = self.run_admin("pg_promote", CONNECT_TIMEOUT, ADMIN_TIMEOUT, |c| {
            c.query_one("SELECT pg_promote(true, 25)", &[])?
                .try_get::<_, bool>(0)
        })?;
        if !promoted {
            return Err(TestkitError::UnexpectedResult {
                what: format!("pg_promote on the {}", self.name),
                detail: "promotion did not complete within 25 s".to_owned(),
            });
        }
        self.wait_for_count(
            "the promoted server to leave recovery",
            "SELECT CASE WHEN pg_is_in_recovery() THEN 0 ELSE 1 END",
            ADMIN_TIMEOUT,
        )
    }

    /// Runs `sql` over a fresh superuser connection and returns the first
    /// column of its single row as `i64` (`int8`, `int4`, `int2`, `oid` and
    /// `bool` — as 0/1 — are accepted). The call has a 30 s deadline.
    pub fn query_one_i64(&self, sql: &str) -> Result<i64, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(
            &describe_sql(sql),
            CONNECT_TIMEOUT,
            ADMIN_TIMEOUT,
            move |c| {
                let row = c.query_one(owned.as_str(), &[])?;
                Ok(first_column_i64(&row))
            },
        )?
        .map_err(|detail| TestkitError::UnexpectedResult {
            what: format!("{} on the {}", describe_sql(sql), self.name),
            detail,
        })
    }

    /// Runs `sql` (one or more `;`-separated statements, simple query
    /// protocol) over a fresh superuser connection and returns the number of
    /// rows the last statement affected. The call has a 30 s deadline.
    pub fn execute(&self, sql: &str) -> Result<u64, TestkitError> {
        let owned = sql.to_owned();
        self.run_admin(
            &describe_sql(sql),
            CONNECT_TIMEOUT,
            ADMIN_TIMEOUT,
            move |c| {
                let messages = c.simple_query(&owned)?;
                Ok(messages
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::CommandComplete(n) => Some(*n),
                        _ => None,
                    })
                    .last()
                    .unwrap_or(0))
            },
        )
    }

    /// Number of client backends in `pg_stat_activity`
    /// (`backend_type = 'client backend'`), optionally only those whose
    /// `application_name` is `LIKE` the given pattern. The test kit's own
    /// short-lived admin connections (application name `testkit-admin`,
    /// including the one asking) are never counted.
    pub fn connection_count(
        &self,
        application_name_like: Option<&str>,
    ) -> Result<i64, TestkitError> {
        let pattern = application_name_like.map(str::to_owned);
        self.run_admin(
            "connection count",
            CONNECT_TIMEOUT,
            ADMIN_TIMEOUT,
            move |c| {
                c.query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 AND application_name IS DISTINCT FROM $2::text \
                 AND ($1::text IS NULL OR application_name LIKE $1::text)",
                    &[&pattern, &ADMIN_APPLICATION_NAME],
                )?
                .try_get::<_, i64>(0)
            },
        )
    }

    /// Polls `sql` (returning a count) until it is at least 1.
    fn wait_for_count(&self, what: &str, sql: &str, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = process::deadline_after(timeout);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = remaining.clamp(Duration::from_millis(200), Duration::from_secs(5));
            let owned = sql.to_owned();
            let result = self.run_admin(what, attempt.min(CONNECT_TIMEOUT), attempt, move |c| {
                Ok(first_column_i64(&c.query_one(owned.as_str(), &[])?))
            });
            let last_error = match result {
                Ok(Ok(n)) if n >= 1 => return Ok(()),
                Ok(Ok(n)) => format!("count was {n}"),
                Ok(Err(detail)) => detail,
                Err(e @ TestkitError::Paused { .. }) => return Err(e),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout {
                    what: format!("{what} ({} port {})", self.name, self.port),
                    timeout,
                    last_error: Some(last_error),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs `f` on a fresh superuser connection in a helper thread and waits
    /// at most `timeout` for it: the `postgres` crate's own timeouts cover
    /// only the TCP connect, so a hung server would otherwise block forever.
    /// On timeout the helper thread is abandoned; it ends when the server
    /// answers or dies (at the latest when the pair is dropped).
    fn run_admin<T, F>(
        &self,
        what: &str,
        connect_timeout: Duration,
        timeout: Duration,
        f: F,
    ) -> Result<T, TestkitError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, ::postgres::Error> + Send + 'static,
    {
        if self.is_paused() {
            return Err(TestkitError::Paused {
                server: self.name.to_owned(),
            });
        }
        let mut config = self.config();
        config
            .connect_timeout(connect_timeout)
            .application_name(ADMIN_APPLICATION_NAME)
            .options(&format!(
                "-c statement_timeout={ADMIN_STATEMENT_TIMEOUT_MS}"
            ));
        let (tx, rx) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("mirrorpool-testkit-admin".to_owned())
            .spawn(move || match config.connect(NoTls) {
                Ok(mut client) => {
                    let result = f(&mut client);
                    let _ = tx.send(result);
                    drop(client);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| TestkitError::io("spawning an admin thread", e))?;
        let context = || format!("{what} on the {} (port {})", self.name, self.port);
        match rx.recv_timeout(timeout) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(TestkitError::Postgres {
                context: context(),
                source,
            }),
            Err(RecvTimeoutError::Timeout) => Err(TestkitError::Timeout {
                what: context(),
                timeout,
                last_error: None,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(TestkitError::UnexpectedResult {
                what: context(),
                detail: "the admin thread ended without a result".to_owned(),
            }),
        }
    }

    /// Teardown for `Drop`: resume, immediate shutdown (SIGQUIT), SIGKILL
    /// fallback, then kill anything still working in the data directory.
    /// Bounded and panic-free.
    fn shutdown_for_drop(&self) {
        let mut state = self.lock_state();
        Self::resume_locked(&mut state);
        if let Some(mut child) = state.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let pid = child.id();
                log::debug!("testkit: stopping {} ({pid})", self.name);
                let _ = process::signal(pid, libc::SIGQUIT);
                if process::wait_child(&mut child, SHUTDOWN_GRACE).is_none() {
                    log::warn!("testkit: {} ({pid}) ignored SIGQUIT, killing it", self.name);
                    if process::kill_and_reap(&mut child, KILL_WAIT).is_none() {
                        log::warn!("testkit: {} ({pid}) survived SIGKILL", self.name);
                    }
                }
            }
        }
        drop(state);
        let left = process::reap_processes_under(&self.data_dir, Duration::from_secs(2), KILL_WAIT);
        if !left.is_empty() {
            log::warn!(
                "testkit: {} processes {left:?} survived teardown",
                self.name
            );
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shutdown_for_drop();
    }
}

/// Resumes a server paused by [`PgServer::pause_guard`] when dropped.
#[derive(Debug)]
#[must_use = "the server is resumed as soon as the guard is dropped"]
pub struct PauseGuard<'a> {
    server: &'a PgServer,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        let _ = self.server.resume();
    }
}

/// The SQL text for messages, shortened to 200 characters.
fn describe_sql(sql: &str) -> String {
    let mut short: String = sql.chars().take(200).collect();
    if short.len() < sql.len() {
        short.push_str("...");
    }
    format!("`{short}`")
}

fn is_port_conflict(e: &TestkitError) -> bool {
    matches!(e, TestkitError::StartFailed { log_tail, .. }
        if log_tail.contains("already in use")
            || log_tail.contains("could not create any TCP/IP sockets"))
}

fn first_column_i64(row: &Row) -> Result<i64, String> {
    let Some(column) = row.columns().first() else {
        return Err("the query returned no columns".to_owned());
    };
    let ty = column.type_().clone();
    let value: Result<Option<i64>, ::postgres::Error> = if ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(0)
    } else if ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(0).map(|v| v.map(i64::from))
    } else if ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(0).map(|v| v.map(i64::from))
    } else if ty == Type::OID {
        row.try_get::<_, Option<u32>>(0).map(|v| v.map(i64::from))
    } else if ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(0).map(|v| v.map(i64::from))
    } else {
        return Err(format!("the first column has type {ty}, not an integer"));
    };
    match value {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err("the value is NULL".to_owned()),
        Err(e) => Err(e.to_string()),
    }
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
    fn long_sql_is_shortened_in_messages() {
        assert_eq!(describe_sql("SELECT 1"), "`SELECT 1`");
        let long = "é".repeat(300);
        let d = describe_sql(&long);
        assert_eq!(d.chars().count(), 200 + 5);
        assert!(d.ends_with("...`"));
    }

    #[test]
    fn role_names_must_be_plain_identifiers() {
        assert!(validate_role_name("app_2").is_ok());
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
                    validate_role_name(bad),
                    Err(TestkitError::InvalidRoleName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn role_sql_grants_only_what_is_asked() {
        let none = create_role_sql("app", Grants::none());
        assert!(none.contains("CREATE ROLE app LOGIN PASSWORD"));
        assert!(!none.contains("SUPERUSER"));
        assert!(!none.contains("pg_monitor") && !none.contains("pg_promote"));
        let all = create_role_sql("app", Grants::all());
        assert!(all.contains("GRANT pg_monitor TO app"));
        assert!(all.contains("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app"));
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
    }

    #[test]
    fn free_port_is_loopback_and_not_5432() {
        let port = free_port().unwrap();
        assert_ne!(port, 5432);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }
}
