//! MariaDB as an [`Engine`] of the failover scenarios: testkit pairs, the MySQL backend, and
//! the SQL that differs from other engines.

use std::collections::HashSet;
use std::time::Duration;

use mirrorpool::backend::{Backend, Fault};
use mirrorpool::mysql::{MyConnection, MysqlBackend, MysqlManager};
use mirrorpool::testkit::{
    Grants, MyPair, MyPairBuilder, MyServer, MyTable, PauseGuard, TestkitError, APP_USER,
};
use mirrorpool::{Builder, Lag};
use mysql::prelude::Queryable;
use mysql::{Opts, OptsBuilder};

use super::scenarios::{Engine, Login, ServerControl, LONG};
use crate::common::wait_until;

/// The MariaDB engine.
pub struct My;

/// The load table every scenario uses.
pub fn table() -> MyTable {
    MyTable::new("t").expect("a valid table name")
}

/// Starts a pair, failing the test with the testkit's message (which names the package to
/// install) if MariaDB is missing.
pub fn start(builder: MyPairBuilder) -> MyPair {
    builder
        .start()
        .unwrap_or_else(|e| panic!("cannot start a MariaDB pair: {e}"))
}

/// A fresh connection to `url`, with socket timeouts.
fn connect(url: &str) -> mysql::Conn {
    let opts = OptsBuilder::from_opts(Opts::from_url(url).expect("a valid URL"))
        .read_timeout(Some(Duration::from_secs(10)))
        .write_timeout(Some(Duration::from_secs(10)));
    mysql::Conn::new(opts).expect("connect for verification")
}

impl ServerControl for MyServer {
    fn name(&self) -> &str {
        MyServer::name(self)
    }
    fn port(&self) -> u16 {
        MyServer::port(self)
    }
    fn kill(&self) -> Result<(), TestkitError> {
        MyServer::kill(self)
    }
    fn stop_immediate(&self) -> Result<(), TestkitError> {
        MyServer::stop_immediate(self)
    }
    fn pause_guard(&self) -> Result<PauseGuard<'_>, TestkitError> {
        MyServer::pause_guard(self)
    }
    fn start(&self) -> Result<(), TestkitError> {
        MyServer::start(self)
    }
    fn promote(&self) -> Result<(), TestkitError> {
        MyServer::promote(self)
    }
    fn is_replica(&self) -> bool {
        self.replica_status()
            .expect("ask whether the server replicates")
            .is_some()
    }
    fn pool_connections(&self) -> i64 {
        self.connection_count(Some(APP_USER))
            .expect("count connections")
    }
    fn rows(&self) -> HashSet<(i32, i64)> {
        table().rows(&mut connect(&self.url())).expect("read rows")
    }
}

impl Engine for My {
    type Manager = MysqlManager;
    type Server = MyServer;
    type Pair = MyPair;
    type Table = MyTable;

    const EPOCHS: bool = false;
    const WRONG_PASSWORD: &'static str = "Access denied";
    const CONNECTION_LOST_WORDS: &'static [&'static str] = &["reset", "refused"];
    const REPLICATION_STATUS_GRANT: &'static str = "SLAVE MONITOR";
    const PROMOTE_GRANT: &'static str = "REPLICATION SLAVE ADMIN";

    fn pair(&self, synchronous: bool, grants: Grants) -> MyPair {
        // MariaDB counts sessions against a login's connection limit only if a limit was set
        // when they opened: a high one from the start lets a scenario lower it later.
        let pair = start(
            MyPair::builder()
                .synchronous(synchronous)
                .app_grants(grants)
                .setting("max_user_connections", "1000"),
        );
        pair.primary()
            .execute(&table().create_sql())
            .expect("create table");
        pair.wait_for_mirror_streaming(LONG)
            .expect("mirror streams");
        pair.wait_for_mirror_caught_up(LONG)
            .expect("the table reaches the mirror");
        pair
    }

    fn pair_that_notices_a_lost_primary_late(&self, grants: Grants) -> MyPair {
        start(
            MyPair::builder()
                .app_grants(grants)
                .setting("slave_net_timeout", "60"),
        )
    }

    fn pair_with_few_connections(&self) -> MyPair {
        // 10 is MariaDB's minimum; the mirror's binlog connection counts too, and root has a
        // reserved extra one.
        start(MyPair::builder().setting("max_connections", "10"))
    }

    fn primary<'p>(&self, pair: &'p MyPair) -> &'p MyServer {
        pair.primary()
    }

    fn mirror<'p>(&self, pair: &'p MyPair) -> &'p MyServer {
        pair.mirror()
    }

    fn wait_for_mirror_streaming(&self, pair: &MyPair) {
        pair.wait_for_mirror_streaming(LONG).unwrap();
    }

    fn replicate_through(&self, pair: &MyPair, port: u16) {
        pair.mirror()
            .execute(&format!(
                "STOP SLAVE; CHANGE MASTER TO MASTER_PORT = {port}; START SLAVE"
            ))
            .unwrap();
    }

    fn table(&self) -> MyTable {
        table()
    }

    fn builder(&self) -> Builder<MysqlManager> {
        mirrorpool::mysql::builder()
    }

    fn manager(&self, server: &MyServer, port: u16, login: Login<'_>) -> MysqlManager {
        let url = server.app_url_on_port(port);
        match login {
            Login::App => MysqlManager::from_url(&url).expect("a valid URL"),
            Login::WrongPassword(password) => MysqlManager::new(
                OptsBuilder::from_opts(Opts::from_url(&url).expect("a valid URL"))
                    .pass(Some(password)),
            ),
        }
    }

    fn with_reset_timeout(&self, manager: MysqlManager, timeout: Duration) -> MysqlManager {
        manager.reset_timeout(timeout)
    }

    fn silent_manager(&self, port: u16, connect_timeout: Duration) -> MysqlManager {
        MysqlManager::new(
            OptsBuilder::new()
                .ip_or_hostname(Some("127.0.0.1"))
                .tcp_port(port)
                .user(Some("app"))
                .pass(Some("secret"))
                .db_name(Some("app"))
                .tcp_connect_timeout(Some(connect_timeout)),
        )
    }

    fn bad_connection_string_error(&self) -> (String, &'static str) {
        let e = mirrorpool::mysql::pool("mysql://app:s3cret@x:notaport/db", "mysql://y/db")
            .unwrap_err();
        (e.to_string(), "primary URL")
    }

    fn classify(&self, error: &mysql::Error) -> Fault {
        Backend::<MysqlManager>::classify(&MysqlBackend, error)
    }

    fn severable(&self, conn: &MyConnection) -> bool {
        conn.severable()
    }

    fn select_one(&self, conn: &mut MyConnection) -> Result<(), mysql::Error> {
        conn.conn_mut().query_drop("SELECT 1")
    }

    fn dirty_session(&self, conn: &mut MyConnection) {
        conn.conn_mut()
            .query_drop("CREATE TEMPORARY TABLE scratch (x INT); SET @dirty = 'dirty'")
            .unwrap();
    }

    fn assert_clean_session(&self, conn: &mut MyConnection) {
        let err = conn
            .conn_mut()
            .query_drop("SELECT * FROM scratch")
            .expect_err("temp table leaked to the next borrower");
        assert!(
            matches!(&err, mysql::Error::MySqlError(e) if e.code == 1146),
            "{err}"
        );
        let dirty: Option<Option<String>> = conn.conn_mut().query_first("SELECT @dirty").unwrap();
        assert_eq!(
            dirty,
            Some(None),
            "a user variable leaked to the next borrower"
        );
    }

    fn lag_limit(&self) -> Lag {
        Lag::Transactions(100)
    }

    fn pause_replay(&self, pair: &MyPair) {
        pair.mirror().execute("STOP SLAVE SQL_THREAD").unwrap();
    }

    fn resume_replay(&self, pair: &MyPair) {
        pair.mirror().execute("START SLAVE SQL_THREAD").unwrap();
    }

    fn write_many_rows(&self, pair: &MyPair) {
        // One transaction per row: the lag is measured in transactions.
        let sql: String = (1..=500)
            .map(|seq| format!("INSERT INTO t VALUES (1000, {seq});"))
            .collect();
        pair.primary().execute(&sql).unwrap();
    }

    fn promotions(&self, server: &MyServer) -> i64 {
        // MariaDB keeps no promotion count (PostgreSQL's is the timeline): a server promoted
        // once is no replica any more and writable. Promoting again would change nothing (the
        // statements are idempotent), so 1 is all that can be told apart.
        let promoted = !ServerControl::is_replica(server)
            && server
                .query_one_i64("SELECT @@read_only")
                .expect("read_only")
                == 0;
        i64::from(promoted)
    }

    fn refuse_new_app_connections(&self, server: &MyServer, refuse: bool) {
        // Below the sessions open (all counted, see `pair`), every new one is refused with
        // 1203 (too many connections of the user). A login's own MAX_USER_CONNECTIONS would
        // answer 1226, which is no capacity error for the backend.
        let limit = if refuse { 1 } else { 1000 };
        server
            .execute(&format!("SET GLOBAL max_user_connections = {limit}"))
            .expect("limit");
    }

    fn end_heartbeat_sessions(&self, server: &MyServer) -> i64 {
        // MariaDB shows no idle session's last statement: the general log tells which session
        // runs the heartbeat's statement.
        server
            .execute("SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = ON")
            .expect("general log on");
        let heartbeat_threads = || {
            server
                .query_one_string(
                    "SELECT GROUP_CONCAT(DISTINCT thread_id) FROM mysql.general_log \
                     WHERE user_host LIKE 'mirrorpool[%' \
                     AND argument LIKE '%@@gtid_binlog_pos AS gtid_binlog_pos%'",
                )
                .expect("read the general log")
                .unwrap_or_default()
        };
        let mut ids = String::new();
        wait_until(Duration::from_secs(5), || {
            ids = heartbeat_threads();
            !ids.is_empty()
        });
        server
            .execute("SET GLOBAL general_log = OFF; TRUNCATE mysql.general_log")
            .expect("general log off");
        let mut ended = 0;
        for id in ids.split(',').filter(|s| !s.is_empty()) {
            if server.execute(&format!("KILL {id}")).is_ok() {
                ended += 1;
            }
        }
        ended
    }

    fn app_sessions(&self, server: &MyServer) -> i64 {
        server
            .query_one_i64(&format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{APP_USER}'"
            ))
            .unwrap_or(-1)
    }
}
