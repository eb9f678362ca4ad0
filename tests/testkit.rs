//! Tests of the test kit itself: PostgreSQL primary + mirror pairs and the
//! fault-injecting TCP proxy. Needs the PostgreSQL server binaries.
#![cfg(all(feature = "testkit", feature = "postgres"))]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::wait_until;
use mirrorpool::testkit::{
    Grants, PgPair, PgPairBuilder, PgServer, ProxyMode, TcpProxy, TestkitError, APP_USER,
};
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn start_pair(builder: PgPairBuilder) -> PgPair {
    init_logging();
    match builder.start() {
        Ok(pair) => pair,
        Err(e) => panic!("starting the PostgreSQL pair failed: {e}"),
    }
}

fn addr(server: &PgServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

fn process_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                == Some("T")
        })
        .unwrap_or(false)
}

/// Connects in a helper thread, so that a connect that hangs cannot hang the
/// test (`connect_timeout` only covers the TCP connect, not the handshake).
fn connect_in_thread(config: Config) -> Receiver<Result<Client, postgres::Error>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(config.connect(NoTls));
    });
    rx
}

fn all_pids(pair: &PgPair) -> Vec<u32> {
    let mut pids = Vec::new();
    for server in [pair.primary(), pair.mirror()] {
        pids.extend(server.pid());
        pids.extend(server.child_pids());
    }
    pids
}

fn via_proxy(server: &PgServer, proxy: &TcpProxy) -> Config {
    let mut config = server.app_config_on_port(proxy.port());
    config
        .application_name("via_proxy")
        .connect_timeout(Duration::from_secs(2));
    config
}

#[test]
fn handles_and_errors_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<PgPair>();
    assert_send_sync::<PgServer>();
    assert_send_sync::<TcpProxy>();
    assert_send_sync::<TestkitError>();
}

#[test]
fn pair_starts_and_mirror_streams_rows_written_on_the_primary() {
    let pair = start_pair(PgPair::builder());
    let (primary, mirror) = (pair.primary(), pair.mirror());
    assert_eq!(primary.host(), "127.0.0.1");
    assert_ne!(primary.port(), mirror.port());
    assert!(![primary.port(), mirror.port()].contains(&5432));
    pair.wait_for_mirror_streaming(Duration::from_secs(10))
        .unwrap();
    // A huge timeout is fine too (no `Instant` overflow panic).
    pair.wait_for_mirror_streaming(Duration::MAX).unwrap();

    primary
        .execute("CREATE TABLE replicated (id int); INSERT INTO replicated VALUES (42)")
        .unwrap();
    let seen = wait_until(Duration::from_secs(10), || {
        mirror
            .query_one_i64("SELECT count(*) FROM replicated WHERE id = 42")
            .map(|n| n == 1)
            .unwrap_or(false)
    });
    assert!(seen, "the row did not reach the mirror within 10 s");
}

#[test]
fn mirror_is_in_recovery_and_primary_is_not() {
    let pair = start_pair(PgPair::builder().setting("work_mem", "7MB"));
    let (primary, mirror) = (pair.primary(), pair.mirror());
    assert_eq!(
        primary.query_one_i64("SELECT pg_is_in_recovery()").unwrap(),
        0
    );
    assert_eq!(
        mirror.query_one_i64("SELECT pg_is_in_recovery()").unwrap(),
        1
    );
    // Asynchronous by default.
    assert_eq!(
        primary
            .query_one_i64("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'async'")
            .unwrap(),
        1
    );
    for server in [primary, mirror] {
        // The builder's extra setting reached both servers (7MB = 7168 kB).
        assert_eq!(
            server
                .query_one_i64("SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem'")
                .unwrap(),
            7168
        );
        assert_eq!(
            server
                .query_one_i64(
                    "SELECT (current_setting('listen_addresses') = '127.0.0.1' \
                     AND current_setting('unix_socket_directories') NOT LIKE '/var/run%')::int"
                )
                .unwrap(),
            1
        );
    }
}

#[test]
fn synchronous_pair_reports_sync_state_sync() {
    let pair = start_pair(PgPair::builder().synchronous(true));
    let primary = pair.primary();
    assert_eq!(
        primary
            .query_one_i64(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE application_name = 'mirror' AND sync_state = 'sync'"
            )
            .unwrap(),
        1
    );
    assert_eq!(
        primary
            .query_one_i64("SELECT (current_setting('synchronous_standby_names') = 'mirror')::int")
            .unwrap(),
        1
    );
}

#[test]
fn killed_server_refuses_connections() {
    let pair = start_pair(PgPair::builder());
    let primary = pair.primary();
    let pid = primary.pid().expect("primary runs");
    let children = primary.child_pids();
    assert!(!children.is_empty());

    primary.kill().unwrap();
    assert!(!primary.is_running());
    assert_eq!(primary.pid(), None);
    assert!(!process_alive(pid));
    let refused = TcpStream::connect_timeout(&addr(primary), Duration::from_secs(2)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(primary.config().connect(NoTls).is_err());
    assert!(matches!(
        primary.kill(),
        Err(TestkitError::NotRunning { .. })
    ));
    assert!(matches!(
        primary.query_one_i64("SELECT 1"),
        Err(TestkitError::Postgres { .. })
    ));
    // The orphaned backends and auxiliary processes exit by themselves.
    assert!(
        wait_until(Duration::from_secs(10), || children
            .iter()
            .all(|&p| !process_alive(p))),
        "orphans of the killed postmaster are still alive"
    );
}

#[test]
fn paused_server_times_out_queries_and_answers_after_resume() {
    let pair = start_pair(PgPair::builder());
    let primary = pair.primary();
    let mut client = primary.config().connect(NoTls).unwrap();
    client.is_valid(Duration::from_secs(5)).unwrap();

    // The guard resumes the server before `client` is dropped even if an
    // assertion fails (dropping a client with an unanswered request blocks).
    let guard = primary.pause_guard().unwrap();
    assert!(primary.is_paused());
    assert!(primary.is_running());
    let pid = primary.pid().unwrap();
    assert!(process_stopped(pid));
    assert!(primary.child_pids().iter().all(|&p| process_stopped(p)));

    let started = Instant::now();
    let err = client.is_valid(Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        primary.query_one_i64("SELECT 1"),
        Err(TestkitError::Paused { .. })
    ));

    primary.resume().unwrap();
    assert!(!primary.is_paused());
    assert!(!process_stopped(pid));
    client.is_valid(Duration::from_secs(5)).unwrap();
    assert_eq!(primary.query_one_i64("SELECT 1").unwrap(), 1);
    drop(guard);
}

#[test]
fn server_restarts_on_the_same_port_after_kill_and_stop() {
    let pair = start_pair(PgPair::builder());
    let (primary, mirror) = (pair.primary(), pair.mirror());
    primary
        .execute("CREATE TABLE survivors (id int); INSERT INTO survivors VALUES (1)")
        .unwrap();

    let old_pid = primary.pid();
    let port = primary.port();
    primary.kill().unwrap();
    primary.start().unwrap();
    assert!(primary.is_running());
    assert_ne!(primary.pid(), old_pid);
    assert_eq!(primary.port(), port);
    assert_eq!(
        primary
            .query_one_i64("SELECT count(*) FROM survivors")
            .unwrap(),
        1
    );
    assert!(matches!(
        primary.start(),
        Err(TestkitError::AlreadyRunning { .. })
    ));

    mirror.stop_immediate().unwrap();
    assert!(!mirror.is_running());
    assert!(TcpStream::connect_timeout(&addr(mirror), Duration::from_secs(2)).is_err());
    mirror.start().unwrap();
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .unwrap();

    // A paused server can be killed too; its stopped children must not keep
    // the restart from working.
    mirror.pause().unwrap();
    mirror.kill().unwrap();
    assert!(!mirror.is_paused());
    mirror.start().unwrap();
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .unwrap();

    primary.execute("INSERT INTO survivors VALUES (2)").unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        mirror
            .query_one_i64("SELECT count(*) FROM survivors")
            .map(|n| n == 2)
            .unwrap_or(false)
    }));
}

#[test]
fn promote_makes_the_mirror_writable() {
    let pair = start_pair(PgPair::builder());
    let mirror = pair.mirror();
    match mirror.execute("CREATE TABLE before_promotion (id int)") {
        Err(TestkitError::Postgres { source, .. }) => {
            assert_eq!(source.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        }
        other => panic!("writing to the mirror should fail, got {other:?}"),
    }

    mirror.promote().unwrap();
    assert_eq!(
        mirror.query_one_i64("SELECT pg_is_in_recovery()").unwrap(),
        0
    );
    assert_eq!(
        mirror
            .execute(
                "CREATE TABLE after_promotion (id int); INSERT INTO after_promotion VALUES (1)"
            )
            .unwrap(),
        1
    );
    let mut app = mirror.app_config().connect(NoTls).unwrap();
    assert_eq!(
        app.execute("INSERT INTO after_promotion VALUES (2)", &[])
            .unwrap(),
        1
    );
}

#[test]
fn dropping_the_pair_stops_every_process_and_removes_the_directory() {
    let pair = start_pair(PgPair::builder());
    let dir = pair.dir().to_owned();
    assert!(dir.join("primary").is_dir() && dir.join("mirror").is_dir());
    let pids = all_pids(&pair);
    assert!(pids.len() >= 4, "{pids:?}");
    let mut client = pair.primary().config().connect(NoTls).unwrap();
    // Teardown must also cope with a paused server.
    pair.mirror().pause().unwrap();

    let started = Instant::now();
    drop(pair);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.exists(), "{} still exists", dir.display());
    let alive: Vec<u32> = pids.into_iter().filter(|&p| process_alive(p)).collect();
    assert!(alive.is_empty(), "still alive: {alive:?}");
    assert!(client.is_valid(Duration::from_secs(2)).is_err());
}

#[test]
fn pair_is_torn_down_when_a_test_panics() {
    init_logging();
    let (tx, rx) = mpsc::channel::<(PathBuf, Vec<u32>)>();
    let result = std::panic::catch_unwind(move || {
        let pair = start_pair(PgPair::builder());
        pair.primary().pause().unwrap();
        tx.send((pair.dir().to_owned(), all_pids(&pair))).unwrap();
        panic!("simulated test failure");
    });
    assert!(result.is_err());
    let (dir, pids) = rx.try_recv().expect("the pair was started");
    assert!(!dir.exists(), "{} still exists", dir.display());
    let alive: Vec<u32> = pids.into_iter().filter(|&p| process_alive(p)).collect();
    assert!(alive.is_empty(), "still alive: {alive:?}");
}

#[test]
fn proxy_pass_forwards_a_real_postgres_query() {
    let pair = start_pair(PgPair::builder());
    let primary = pair.primary();
    let proxy = TcpProxy::start(addr(primary)).unwrap();
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert_eq!(
        proxy.addr(),
        SocketAddr::from(([127, 0, 0, 1], proxy.port()))
    );
    assert_ne!(proxy.port(), primary.port());

    let mut client = via_proxy(primary, &proxy).connect(NoTls).unwrap();
    let row = client
        .query_one("SELECT 40 + 2, current_user", &[])
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), APP_USER);
    assert_eq!(proxy.active_connections(), 1);
    assert_eq!(primary.connection_count(Some("via_proxy")).unwrap(), 1);
    assert_eq!(primary.connection_count(Some("via%")).unwrap(), 1);
    assert_eq!(primary.connection_count(Some("other")).unwrap(), 0);
    // Without a pattern: this client only (the mirror's WAL sender is not a
    // client backend and the test kit's own admin connections are excluded).
    assert_eq!(primary.connection_count(None).unwrap(), 1);

    drop(client);
    assert!(wait_until(Duration::from_secs(5), || proxy
        .active_connections()
        == 0));
    assert!(wait_until(Duration::from_secs(5), || primary
        .connection_count(Some("via_proxy"))
        .map(|n| n == 0)
        .unwrap_or(false)));
}

#[test]
fn proxy_black_hole_makes_is_valid_time_out_while_the_server_is_healthy() {
    let pair = start_pair(PgPair::builder());
    let primary = pair.primary();
    let proxy = TcpProxy::start(addr(primary)).unwrap();
    let mut client = via_proxy(primary, &proxy).connect(NoTls).unwrap();
    client.is_valid(Duration::from_secs(5)).unwrap();

    let pending_connect;
    {
        // Restores Pass before `client` is dropped, even on a failed assert.
        let _hole = proxy.mode_guard(ProxyMode::BlackHole);
        let started = Instant::now();
        let err = client.is_valid(Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The server itself is fine.
        assert_eq!(primary.query_one_i64("SELECT 1").unwrap(), 1);
        // New connections are accepted but never answered.
        pending_connect = connect_in_thread(via_proxy(primary, &proxy));
        assert!(matches!(
            pending_connect.recv_timeout(Duration::from_secs(1)),
            Err(RecvTimeoutError::Timeout)
        ));
        assert_eq!(proxy.active_connections(), 2);
    }
    // Back in Pass mode the held-back bytes are delivered.
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut late = pending_connect
        .recv_timeout(Duration::from_secs(10))
        .expect("the held-back connect completes")
        .unwrap();
    late.is_valid(Duration::from_secs(5)).unwrap();
    client.is_valid(Duration::from_secs(5)).unwrap();
}

#[test]
fn proxy_drop_fails_queries_fast_and_refuses_new_connections() {
    let pair = start_pair(PgPair::builder());
    let primary = pair.primary();
    let proxy = TcpProxy::start(addr(primary)).unwrap();
    let mut client = via_proxy(primary, &proxy).connect(NoTls).unwrap();
    client.is_valid(Duration::from_secs(5)).unwrap();

    proxy.set_mode(ProxyMode::Drop);
    let started = Instant::now();
    assert!(client.simple_query("SELECT 1").is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(client.is_closed());

    let started = Instant::now();
    let refused = connect_in_thread(via_proxy(primary, &proxy))
        .recv_timeout(Duration::from_secs(5))
        .expect("a connect through a dropping proxy returns quickly");
    assert!(refused.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .active_connections()
        == 0));
    // The upstream side was closed too.
    assert!(wait_until(Duration::from_secs(5), || primary
        .connection_count(Some("via_proxy"))
        .map(|n| n == 0)
        .unwrap_or(false)));

    proxy.set_mode(ProxyMode::Pass);
    let mut again = via_proxy(primary, &proxy).connect(NoTls).unwrap();
    again.is_valid(Duration::from_secs(5)).unwrap();
}

#[test]
fn app_role_password_works_and_a_wrong_one_fails() {
    let pair = start_pair(PgPair::builder());
    for server in [pair.primary(), pair.mirror()] {
        let mut client = server.app_config().connect(NoTls).unwrap();
        let user: String = client.query_one("SELECT current_user", &[]).unwrap().get(0);
        assert_eq!(user, APP_USER);

        let mut wrong = server.app_config();
        wrong.password("not-the-password");
        let Err(err) = wrong.connect(NoTls) else {
            panic!("a wrong password must be rejected");
        };
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    }
}

/// (superuser, sees replication state, may promote) for the connected role.
fn role_powers(client: &mut Client) -> (bool, bool, bool) {
    let row = client
        .query_one(
            "SELECT rolsuper, pg_has_role('pg_read_all_stats', 'USAGE'), \
             has_function_privilege('pg_promote(boolean,integer)', 'EXECUTE') \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn the_app_role_is_a_plain_login_role_with_only_the_grants_asked_for() {
    let pair = start_pair(PgPair::builder().grant_promote(true));
    let mut app = pair.primary().app_config().connect(NoTls).unwrap();
    assert_eq!(role_powers(&mut app), (false, false, true));
    // It creates its own tables and uses those the superuser creates.
    app.batch_execute("CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)")
        .unwrap();
    pair.primary()
        .execute("CREATE TABLE theirs (id serial, x int)")
        .unwrap();
    app.execute("INSERT INTO theirs (x) VALUES (1)", &[])
        .unwrap();
    // Administration stays with the superuser.
    let err = app.batch_execute("CREATE ROLE intruder").unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");

    // Further roles, replicated to the mirror before create_role returns.
    pair.create_role("watcher", Grants::none().replication_status(true))
        .unwrap();
    let mut watcher = pair.mirror().role_config("watcher").connect(NoTls).unwrap();
    assert_eq!(role_powers(&mut watcher), (false, true, false));
    let n: i64 = watcher
        .query_one("SELECT count(*) FROM theirs", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let mut wrong = pair.primary().role_config("watcher");
    wrong.password("not-the-password");
    assert!(wrong.connect(NoTls).is_err());
    assert!(matches!(
        pair.create_role("Robert'); DROP TABLE mine; --", Grants::all()),
        Err(TestkitError::InvalidRoleName { .. })
    ));
}

#[test]
fn missing_binaries_produce_an_install_hint() {
    init_logging();
    let empty = std::env::temp_dir().join(format!("mirrorpool-no-pg-bin-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let result = PgPair::builder().pg_bin_dir(&empty).start();
    let _ = std::fs::remove_dir(&empty);
    let err = result.unwrap_err();
    assert!(
        matches!(err, TestkitError::BinariesNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("apt-get install postgresql"), "{msg}");
    assert!(msg.contains("MIRRORPOOL_PG_BIN"), "{msg}");
}

#[test]
fn invalid_settings_and_unknown_os_users_are_rejected() {
    init_logging();
    let err = PgPair::builder()
        .setting("port", "5432")
        .start()
        .unwrap_err();
    assert!(
        matches!(err, TestkitError::InvalidSetting { .. }),
        "{err:?}"
    );
    let err = PgPair::builder()
        .setting("work_mem", "1MB\nfsync = on")
        .start()
        .unwrap_err();
    assert!(
        matches!(err, TestkitError::InvalidSetting { .. }),
        "{err:?}"
    );

    let running_as_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if running_as_root {
        let err = PgPair::builder()
            .os_user("no-such-user-mirrorpool")
            .start()
            .unwrap_err();
        assert!(matches!(err, TestkitError::UserNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-user-mirrorpool"));
    }
}
