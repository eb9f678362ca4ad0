//! Tests of the test kit's MariaDB pairs: a primary and a GTID replica started from the
//! system's MariaDB binaries (`apt-get install mariadb-server`), on their own ports, never
//! the machine's instance on 3306.
#![cfg(all(feature = "testkit", feature = "mysql"))]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::wait_until;
use mirrorpool::testkit::{
    Grants, MyPair, MyPairBuilder, MyServer, MyTable, ProxyMode, TcpProxy, TestkitError, APP_USER,
    MY_DATABASE,
};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};

fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn start_pair(builder: MyPairBuilder) -> MyPair {
    init_logging();
    match builder.start() {
        Ok(pair) => pair,
        Err(e) => panic!("starting the MariaDB pair failed: {e}"),
    }
}

fn addr(server: &MyServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

/// Connects to `url` with socket timeouts, so that a hung server cannot hang the test.
fn connect(url: &str) -> Result<Conn, mysql::Error> {
    let opts = OptsBuilder::from_opts(Opts::from_url(url).expect("a valid URL"))
        .tcp_connect_timeout(Some(Duration::from_secs(2)))
        .read_timeout(Some(Duration::from_secs(5)))
        .write_timeout(Some(Duration::from_secs(5)));
    Conn::new(opts)
}

/// The server error code of `e`, if it is one.
fn code(e: &mysql::Error) -> Option<u16> {
    match e {
        mysql::Error::MySqlError(e) => Some(e.code),
        _ => None,
    }
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

fn all_pids(pair: &MyPair) -> Vec<u32> {
    [pair.primary(), pair.mirror()]
        .into_iter()
        .filter_map(MyServer::pid)
        .collect()
}

/// Whether `sql`'s count on `server` reaches `n` within 10 s.
fn count_reaches(server: &MyServer, sql: &str, n: i64) -> bool {
    wait_until(Duration::from_secs(10), || {
        server.query_one_i64(sql).map(|c| c == n).unwrap_or(false)
    })
}

#[test]
fn handles_and_errors_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<MyPair>();
    assert_send_sync::<MyServer>();
    assert_send_sync::<TestkitError>();
}

#[test]
fn pair_starts_on_its_own_ports_and_the_mirror_replicates_rows_written_on_the_primary() {
    let pair = start_pair(MyPair::builder());
    let (primary, mirror) = (pair.primary(), pair.mirror());
    assert_eq!(primary.host(), "127.0.0.1");
    assert_ne!(primary.port(), mirror.port());
    for port in [primary.port(), mirror.port()] {
        assert!(![3306, 5432].contains(&port), "{port}");
    }
    pair.wait_for_mirror_streaming(Duration::from_secs(10))
        .unwrap();
    // A huge timeout is fine too (no `Instant` overflow panic).
    pair.wait_for_mirror_streaming(Duration::MAX).unwrap();

    let table = MyTable::new("replicated").unwrap();
    primary.execute(&table.create_sql()).unwrap();
    assert_eq!(
        primary
            .execute("INSERT INTO replicated VALUES (42, 1), (42, 2)")
            .unwrap(),
        2
    );
    assert!(
        count_reaches(
            mirror,
            "SELECT COUNT(*) FROM replicated WHERE writer = 42",
            2
        ),
        "the rows did not reach the mirror within 10 s"
    );
    pair.wait_for_mirror_caught_up(Duration::from_secs(10))
        .unwrap();
    let mut app = connect(&mirror.app_url()).unwrap();
    let expected = [(42, 1), (42, 2)].into_iter().collect();
    assert_eq!(table.rows(&mut app).unwrap(), expected);
}

#[test]
fn the_mirror_is_a_read_only_gtid_replica_with_quick_failure_detection_and_the_primary_is_not() {
    let pair = start_pair(MyPair::builder().setting("max_connections", "77"));
    let (primary, mirror) = (pair.primary(), pair.mirror());
    assert_eq!(primary.query_one_i64("SELECT @@read_only").unwrap(), 0);
    assert_eq!(mirror.query_one_i64("SELECT @@read_only").unwrap(), 1);
    assert_eq!(primary.replica_status().unwrap(), None);
    let status = mirror.replica_status().unwrap().expect("a replica");
    assert_eq!(status["Using_Gtid"], "Slave_Pos");
    assert_eq!(status["Master_Port"], primary.port().to_string());
    assert_eq!(status["Slave_IO_Running"], "Yes");
    assert_eq!(status["Slave_SQL_Running"], "Yes");
    let heartbeat = mirror
        .query_one_string(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'SLAVE_HEARTBEAT_PERIOD'",
        )
        .unwrap();
    assert_eq!(heartbeat.as_deref().map(str::parse::<f64>), Some(Ok(0.5)));
    assert_ne!(
        primary.query_one_i64("SELECT @@server_id").unwrap(),
        mirror.query_one_i64("SELECT @@server_id").unwrap()
    );
    for server in [primary, mirror] {
        for (sql, want) in [
            ("SELECT @@log_bin", 1),
            ("SELECT @@log_slave_updates", 1),
            ("SELECT @@gtid_strict_mode", 1),
            ("SELECT @@slave_net_timeout", 2),
        ] {
            assert_eq!(server.query_one_i64(sql).unwrap(), want, "{sql}");
        }
        assert_eq!(
            server.query_one_i64("SELECT @@port").unwrap(),
            i64::from(server.port())
        );
        // The builder's extra setting reached both servers.
        assert_eq!(
            server.query_one_i64("SELECT @@max_connections").unwrap(),
            77
        );
        assert_eq!(
            server.query_one_string("SELECT @@bind_address").unwrap(),
            Some("127.0.0.1".to_owned())
        );
        let socket = server.query_one_string("SELECT @@socket").unwrap().unwrap();
        assert!(
            socket.starts_with(&*pair.dir().to_string_lossy()),
            "{socket}"
        );
        for variable in ["@@datadir", "@@tmpdir"] {
            let dir = server
                .query_one_string(&format!("SELECT {variable}"))
                .unwrap()
                .unwrap();
            assert!(dir.starts_with(&*pair.dir().to_string_lossy()), "{dir}");
        }
    }
    // Asynchronous by default.
    assert_eq!(
        primary
            .query_one_i64("SELECT @@rpl_semi_sync_master_enabled")
            .unwrap(),
        0
    );
}

#[test]
fn a_synchronous_pair_is_lossless_semi_synchronous_replication() {
    let pair = start_pair(
        MyPair::builder()
            .synchronous(true)
            .semi_sync_timeout(Duration::from_secs(5)),
    );
    let (primary, mirror) = (pair.primary(), pair.mirror());
    let status = |name: &str| {
        primary
            .query_one_string(&format!(
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = '{name}'"
            ))
            .unwrap()
    };
    assert_eq!(status("RPL_SEMI_SYNC_MASTER_STATUS").as_deref(), Some("ON"));
    assert_eq!(status("RPL_SEMI_SYNC_MASTER_CLIENTS").as_deref(), Some("1"));
    assert_eq!(
        primary
            .query_one_string("SELECT @@rpl_semi_sync_master_wait_point")
            .unwrap()
            .as_deref(),
        Some("AFTER_SYNC")
    );
    assert_eq!(
        primary
            .query_one_i64("SELECT @@rpl_semi_sync_master_timeout")
            .unwrap(),
        5000
    );
    assert_eq!(
        mirror
            .query_one_i64("SELECT @@rpl_semi_sync_slave_enabled")
            .unwrap(),
        1
    );
    // A commit is acknowledged by the mirror.
    primary
        .execute("CREATE TABLE acked (id INT PRIMARY KEY); INSERT INTO acked VALUES (1)")
        .unwrap();
    assert!(
        status("RPL_SEMI_SYNC_MASTER_YES_TX")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 2
    );
}

#[test]
fn killed_server_refuses_connections() {
    let pair = start_pair(MyPair::builder());
    let primary = pair.primary();
    let pid = primary.pid().expect("primary runs");
    primary.kill().unwrap();
    assert!(!primary.is_running());
    assert_eq!(primary.pid(), None);
    assert!(!process_alive(pid));
    let refused = TcpStream::connect_timeout(&addr(primary), Duration::from_secs(2)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(connect(&primary.url()).is_err());
    assert!(matches!(
        primary.kill(),
        Err(TestkitError::NotRunning { .. })
    ));
    assert!(matches!(
        primary.query_one_i64("SELECT 1"),
        Err(TestkitError::Mysql { .. })
    ));
    // The mirror notices: its IO thread is no longer connected.
    assert!(wait_until(Duration::from_secs(10), || pair
        .mirror()
        .replica_status()
        .ok()
        .flatten()
        .is_some_and(|s| s["Slave_IO_Running"] != "Yes")));
}

#[test]
fn paused_server_times_out_queries_and_answers_after_resume() {
    let pair = start_pair(MyPair::builder());
    let primary = pair.primary();
    let opts = OptsBuilder::from_opts(Opts::from_url(&primary.url()).unwrap())
        .read_timeout(Some(Duration::from_millis(300)));
    let mut client = Conn::new(opts).unwrap();
    client.query_drop("SELECT 1").unwrap();

    let guard = primary.pause_guard().unwrap();
    assert!(primary.is_paused());
    assert!(primary.is_running());
    let pid = primary.pid().unwrap();
    assert!(process_stopped(pid));

    let started = Instant::now();
    assert!(client.query_drop("SELECT 1").is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        primary.query_one_i64("SELECT 1"),
        Err(TestkitError::Paused { .. })
    ));

    primary.resume().unwrap();
    assert!(!primary.is_paused());
    assert!(!process_stopped(pid));
    assert_eq!(primary.query_one_i64("SELECT 1").unwrap(), 1);
    let mut again = connect(&primary.url()).unwrap();
    again.query_drop("SELECT 1").unwrap();
    drop(guard);
}

#[test]
fn server_restarts_on_the_same_port_after_kill_and_stop() {
    let pair = start_pair(MyPair::builder());
    let (primary, mirror) = (pair.primary(), pair.mirror());
    primary
        .execute("CREATE TABLE survivors (id INT); INSERT INTO survivors VALUES (1)")
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
            .query_one_i64("SELECT COUNT(*) FROM survivors")
            .unwrap(),
        1
    );
    assert!(matches!(
        primary.start(),
        Err(TestkitError::AlreadyRunning { .. })
    ));
    // The mirror reconnects to the restarted primary by itself.
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .unwrap();

    mirror.stop_immediate().unwrap();
    assert!(!mirror.is_running());
    assert!(TcpStream::connect_timeout(&addr(mirror), Duration::from_secs(2)).is_err());
    mirror.start().unwrap();
    pair.wait_for_mirror_streaming(Duration::from_secs(30))
        .unwrap();

    // A paused server can be killed too.
    mirror.pause().unwrap();
    mirror.kill().unwrap();
    assert!(!mirror.is_paused());
    mirror.start().unwrap();
    if let Err(e) = pair.wait_for_mirror_streaming(Duration::from_secs(30)) {
        panic!("{e}\n--- mirror log ---\n{}", mirror.log_tail(40));
    }

    primary.execute("INSERT INTO survivors VALUES (2)").unwrap();
    assert!(count_reaches(mirror, "SELECT COUNT(*) FROM survivors", 2));
}

#[test]
fn promote_makes_the_mirror_writable_also_after_a_restart() {
    let pair = start_pair(MyPair::builder());
    let (primary, mirror) = (pair.primary(), pair.mirror());
    primary
        .execute("CREATE TABLE before_promotion (id INT)")
        .unwrap();
    pair.wait_for_mirror_caught_up(Duration::from_secs(10))
        .unwrap();
    let mut app = connect(&mirror.app_url()).unwrap();
    let err = app
        .query_drop("INSERT INTO before_promotion VALUES (1)")
        .unwrap_err();
    assert_eq!(code(&err), Some(1290), "{err}"); // --read-only
    drop(app);
    assert!(matches!(
        primary.promote(),
        Err(TestkitError::UnexpectedResult { .. })
    ));

    mirror.promote().unwrap();
    assert_eq!(mirror.query_one_i64("SELECT @@read_only").unwrap(), 0);
    assert_eq!(mirror.replica_status().unwrap(), None);
    let mut app = connect(&mirror.app_url()).unwrap();
    app.query_drop("INSERT INTO before_promotion VALUES (1)")
        .unwrap();
    assert_eq!(app.affected_rows(), 1);
    drop(app);
    // The promotion survives a restart.
    mirror.kill().unwrap();
    mirror.start().unwrap();
    assert_eq!(mirror.query_one_i64("SELECT @@read_only").unwrap(), 0);
    assert_eq!(mirror.replica_status().unwrap(), None);
}

#[test]
fn dropping_the_pair_stops_every_process_and_removes_the_directory() {
    let pair = start_pair(MyPair::builder());
    let dir = pair.dir().to_owned();
    assert!(dir.join("primary").is_dir() && dir.join("mirror").is_dir());
    let pids = all_pids(&pair);
    assert_eq!(pids.len(), 2, "{pids:?}");
    let mut client = connect(&pair.primary().url()).unwrap();
    // Teardown must also cope with a paused server.
    pair.mirror().pause().unwrap();

    let started = Instant::now();
    drop(pair);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.exists(), "{} still exists", dir.display());
    let alive: Vec<u32> = pids.into_iter().filter(|&p| process_alive(p)).collect();
    assert!(alive.is_empty(), "still alive: {alive:?}");
    assert!(client.query_drop("SELECT 1").is_err());
}

#[test]
fn pair_is_torn_down_when_a_test_panics() {
    init_logging();
    let (tx, rx) = mpsc::channel::<(PathBuf, Vec<u32>)>();
    let result = std::panic::catch_unwind(move || {
        let pair = start_pair(MyPair::builder());
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
fn the_proxy_forwards_mariadb_traffic_over_tcp_and_connection_counts_see_it() {
    let pair = start_pair(MyPair::builder());
    let primary = pair.primary();
    let proxy = TcpProxy::start(addr(primary)).unwrap();
    let mut client = connect(&primary.app_url_on_port(proxy.port())).unwrap();
    let user: Option<String> = client.query_first("SELECT CURRENT_USER()").unwrap();
    assert_eq!(user.as_deref(), Some(&*format!("{APP_USER}@%")));
    // prefer_socket=false: the connection stays on TCP, through the proxy.
    assert_eq!(proxy.active_connections(), 1);
    assert_eq!(primary.connection_count(Some(APP_USER)).unwrap(), 1);
    assert_eq!(primary.connection_count(Some("mirror%")).unwrap(), 1);
    assert_eq!(primary.connection_count(Some("other")).unwrap(), 0);
    // Without a pattern: this client only (the binlog sender and the test kit's own admin
    // connections are not counted).
    assert_eq!(primary.connection_count(None).unwrap(), 1);

    {
        // Restores Pass before `client` is used again, even on a failed assert.
        let _hole = proxy.mode_guard(ProxyMode::BlackHole);
        let opts = OptsBuilder::from_opts(Opts::from_url(&primary.app_url()).unwrap())
            .read_timeout(Some(Duration::from_millis(300)));
        let mut direct = Conn::new(opts).unwrap();
        direct.query_drop("SELECT 1").unwrap(); // the server itself is fine
    }
    client.query_drop("SELECT 1").unwrap();
    proxy.set_mode(ProxyMode::Drop);
    assert!(client.query_drop("SELECT 1").is_err());
    assert!(wait_until(Duration::from_secs(5), || primary
        .connection_count(Some(APP_USER))
        .map(|n| n == 0)
        .unwrap_or(false)));
}

#[test]
fn app_role_password_works_and_a_wrong_one_fails() {
    let pair = start_pair(MyPair::builder());
    for server in [pair.primary(), pair.mirror()] {
        let mut client = connect(&server.app_url()).unwrap();
        let db: Option<String> = client.query_first("SELECT DATABASE()").unwrap();
        assert_eq!(db.as_deref(), Some(MY_DATABASE));
        let wrong = server
            .app_url()
            .replace("mirrorpool-testkit-secret", "not-the-password");
        let err = connect(&wrong).unwrap_err();
        assert_eq!(code(&err), Some(1045), "{err}"); // access denied
    }
}

/// The grants `user` holds, as `SHOW GRANTS` lists them.
fn grants_of(server: &MyServer, user: &str) -> String {
    let mut c = connect(&server.url()).unwrap();
    let rows: Vec<String> = c.query(format!("SHOW GRANTS FOR '{user}'@'%'")).unwrap();
    rows.join("\n")
}

#[test]
fn the_app_role_is_a_plain_login_with_only_the_grants_asked_for() {
    let pair = start_pair(MyPair::builder());
    let (primary, mirror) = (pair.primary(), pair.mirror());
    let grants = grants_of(primary, APP_USER);
    assert!(
        !grants.contains("*.*") || grants.contains("GRANT USAGE ON *.*"),
        "{grants}"
    );
    assert!(
        !grants.contains("SUPER") && !grants.contains("SLAVE"),
        "{grants}"
    );
    let mut app = connect(&primary.app_url()).unwrap();
    // It creates its own tables and uses those the superuser creates.
    app.query_drop("CREATE TABLE mine (x INT); INSERT INTO mine VALUES (1)")
        .unwrap();
    primary
        .execute("CREATE TABLE theirs (id INT AUTO_INCREMENT PRIMARY KEY, x INT)")
        .unwrap();
    app.query_drop("INSERT INTO theirs (x) VALUES (1)").unwrap();
    // Administration stays with the superuser; replication is invisible.
    let err = app.query_drop("CREATE USER intruder").unwrap_err();
    assert_eq!(code(&err), Some(1227), "{err}");
    let mut on_mirror = connect(&mirror.app_url()).unwrap();
    let err = on_mirror.query_drop("SHOW SLAVE STATUS").unwrap_err();
    assert_eq!(code(&err), Some(1227), "{err}");

    // Further roles, replicated to the mirror before create_role returns.
    pair.create_role("watcher", Grants::none().replication_status(true))
        .unwrap();
    assert!(grants_of(mirror, "watcher").contains("GRANT SLAVE MONITOR ON *.*"));
    let mut watcher = connect(&mirror.role_url("watcher")).unwrap();
    watcher.query_drop("SHOW SLAVE STATUS").unwrap();
    let n: Option<i64> = watcher.query_first("SELECT COUNT(*) FROM theirs").unwrap();
    assert_eq!(n, Some(1));
    let wrong = mirror
        .role_url("watcher")
        .replace("mirrorpool-testkit-secret", "not-the-password");
    assert!(connect(&wrong).is_err());
    assert!(matches!(
        pair.create_role("Robert'); DROP TABLE mine; --", Grants::all()),
        Err(TestkitError::InvalidRoleName { .. })
    ));
    assert!(matches!(
        pair.create_role("root", Grants::none()),
        Err(TestkitError::InvalidRoleName { .. })
    ));
}

#[test]
fn the_promotion_grant_is_exactly_what_mariadb_needs_to_promote() {
    let pair = start_pair(MyPair::builder());
    pair.create_role("plain", Grants::none()).unwrap();
    pair.create_role("promoter", Grants::none().promote(true))
        .unwrap();
    let mirror = pair.mirror();
    let mut plain = connect(&mirror.role_url("plain")).unwrap();
    for sql in [
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL read_only = OFF",
    ] {
        let err = plain.query_drop(sql).unwrap_err();
        assert_eq!(code(&err), Some(1227), "{sql}: {err}");
    }
    let mut promoter = connect(&mirror.role_url("promoter")).unwrap();
    for sql in [
        "STOP SLAVE",
        "RESET SLAVE ALL",
        "SET GLOBAL read_only = OFF",
    ] {
        promoter
            .query_drop(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(mirror.query_one_i64("SELECT @@read_only").unwrap(), 0);
    assert_eq!(mirror.replica_status().unwrap(), None);
}

#[test]
fn missing_binaries_produce_an_install_hint() {
    init_logging();
    let empty =
        std::env::temp_dir().join(format!("mirrorpool-no-mariadb-bin-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let result = MyPair::builder().bin_dir(&empty).start();
    let _ = std::fs::remove_dir(&empty);
    let err = result.unwrap_err();
    assert!(
        matches!(err, TestkitError::BinariesNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("apt-get install mariadb-server"), "{msg}");
    assert!(msg.contains("MIRRORPOOL_MARIADB_BIN"), "{msg}");
}

#[test]
fn invalid_settings_and_unknown_os_users_are_rejected() {
    init_logging();
    for (name, value) in [
        ("port", "3306"),
        ("socket", "/run/mysqld/mysqld.sock"),
        ("max_connections", "10\nport = 3306"),
    ] {
        let err = MyPair::builder().setting(name, value).start().unwrap_err();
        assert!(
            matches!(err, TestkitError::InvalidSetting { .. }),
            "{name}: {err:?}"
        );
    }
    let running_as_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if running_as_root {
        let err = MyPair::builder()
            .os_user("no-such-user-mirrorpool")
            .start()
            .unwrap_err();
        assert!(matches!(err, TestkitError::UserNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-user-mirrorpool"));
    }
}
