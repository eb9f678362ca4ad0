//! PostgreSQL as an [`Engine`] of the failover scenarios: testkit pairs, the
//! PostgreSQL backend, and the SQL that differs from other engines.

use std::collections::HashSet;
use std::time::Duration;

use mirrorpool::backend::{Backend, Fault};
use mirrorpool::postgres::{PgConnection, PostgresBackend, PostgresManager};
use mirrorpool::testkit::{
    Grants, PauseGuard, PgPair, PgPairBuilder, PgServer, PgTable, TestkitError, APP_USER,
};
use mirrorpool::{Builder, Lag};
use postgres::NoTls;

use super::scenarios::{Engine, Login, ServerControl, LONG};

/// The PostgreSQL engine.
pub struct Pg;

/// The load table every scenario uses.
pub fn table() -> PgTable {
    PgTable::new("t").expect("a valid table name")
}

/// Starts a pair, failing the test with the testkit's message (which names the packages to
/// install) if PostgreSQL is missing.
pub fn start(builder: PgPairBuilder) -> PgPair {
    builder
        .start()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL pair: {e}"))
}

impl ServerControl for PgServer {
    fn name(&self) -> &str {
        PgServer::name(self)
    }
    fn port(&self) -> u16 {
        PgServer::port(self)
    }
    fn kill(&self) -> Result<(), TestkitError> {
        PgServer::kill(self)
    }
    fn stop_immediate(&self) -> Result<(), TestkitError> {
        PgServer::stop_immediate(self)
    }
    fn pause_guard(&self) -> Result<PauseGuard<'_>, TestkitError> {
        PgServer::pause_guard(self)
    }
    fn start(&self) -> Result<(), TestkitError> {
        PgServer::start(self)
    }
    fn promote(&self) -> Result<(), TestkitError> {
        PgServer::promote(self)
    }
    fn is_replica(&self) -> bool {
        self.query_one_i64("SELECT pg_is_in_recovery()::int")
            .expect("ask whether the server is in recovery")
            == 1
    }
    fn pool_connections(&self) -> i64 {
        self.connection_count(Some("mirrorpool"))
            .expect("count connections")
    }
    fn rows(&self) -> HashSet<(i32, i64)> {
        let mut c = self
            .config()
            .connect(NoTls)
            .expect("connect for verification");
        table().rows(&mut c).expect("read rows")
    }
}

impl Engine for Pg {
    type Manager = PostgresManager<NoTls>;
    type Server = PgServer;
    type Pair = PgPair;
    type Table = PgTable;

    const EPOCHS: bool = true;
    const WRONG_PASSWORD: &'static str = "password authentication failed";
    const CONNECTION_LOST_WORDS: &'static [&'static str] = &["reset", "refused"];
    const REPLICATION_STATUS_GRANT: &'static str = "pg_monitor";
    const PROMOTE_GRANT: &'static str = "pg_promote";

    fn pair(&self, synchronous: bool, grants: Grants) -> PgPair {
        let pair = start(
            PgPair::builder()
                .synchronous(synchronous)
                .app_grants(grants),
        );
        pair.primary()
            .execute(&table().create_sql())
            .expect("create table");
        pair.wait_for_mirror_streaming(LONG)
            .expect("mirror streams");
        pair
    }

    fn pair_that_notices_a_lost_primary_late(&self, grants: Grants) -> PgPair {
        start(
            PgPair::builder()
                .app_grants(grants)
                .setting("wal_receiver_timeout", "60s"),
        )
    }

    fn pair_with_few_connections(&self) -> PgPair {
        start(
            PgPair::builder()
                .setting("max_connections", "6")
                .setting("superuser_reserved_connections", "3"),
        )
    }

    fn primary<'p>(&self, pair: &'p PgPair) -> &'p PgServer {
        pair.primary()
    }

    fn mirror<'p>(&self, pair: &'p PgPair) -> &'p PgServer {
        pair.mirror()
    }

    fn wait_for_mirror_streaming(&self, pair: &PgPair) {
        pair.wait_for_mirror_streaming(LONG).unwrap();
    }

    fn replicate_through(&self, pair: &PgPair, port: u16) {
        pair.mirror()
            .execute(&format!(
                "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name=mirror'"
            ))
            .unwrap();
        pair.mirror().execute("SELECT pg_reload_conf()").unwrap();
    }

    fn table(&self) -> PgTable {
        table()
    }

    fn builder(&self) -> Builder<PostgresManager<NoTls>> {
        mirrorpool::postgres::builder()
    }

    fn manager(&self, server: &PgServer, port: u16, login: Login<'_>) -> PostgresManager<NoTls> {
        let config = match login {
            Login::App => server.app_config_on_port(port),
            Login::WrongPassword(password) => {
                let mut c = server.app_config_on_port(port);
                c.password(password);
                c
            }
        };
        PostgresManager::new(config, NoTls)
    }

    fn with_reset_timeout(
        &self,
        manager: PostgresManager<NoTls>,
        timeout: Duration,
    ) -> PostgresManager<NoTls> {
        manager.reset_timeout(timeout)
    }

    fn silent_manager(&self, port: u16, connect_timeout: Duration) -> PostgresManager<NoTls> {
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("app")
            .password("secret")
            .dbname("app")
            .connect_timeout(connect_timeout);
        PostgresManager::new(config, NoTls)
    }

    fn bad_connection_string_error(&self) -> (String, &'static str) {
        let e = mirrorpool::postgres::pool("host=x port=notaport password=s3cret", "host=y", NoTls)
            .unwrap_err();
        (e.to_string(), "primary connection string")
    }

    fn classify(&self, error: &postgres::Error) -> Fault {
        Backend::<PostgresManager<NoTls>>::classify(&PostgresBackend, error)
    }

    fn severable(&self, conn: &PgConnection) -> bool {
        conn.severable()
    }

    fn select_one(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.query_one("SELECT 1", &[]).map(|_| ())
    }

    fn dirty_session(&self, conn: &mut PgConnection) {
        conn.batch_execute("CREATE TEMP TABLE scratch (x int); SET application_name = 'dirty'")
            .unwrap();
    }

    fn assert_clean_session(&self, conn: &mut PgConnection) {
        let temp: i64 = conn
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(temp, 0, "temp table leaked to the next borrower");
        let name: String = conn.query_one("SHOW application_name", &[]).unwrap().get(0);
        assert_eq!(name, "mirrorpool");
    }

    fn lag_limit(&self) -> Lag {
        Lag::Bytes(64 * 1024)
    }

    fn pause_replay(&self, pair: &PgPair) {
        pair.mirror()
            .execute("SELECT pg_wal_replay_pause()")
            .unwrap();
    }

    fn resume_replay(&self, pair: &PgPair) {
        pair.mirror()
            .execute("SELECT pg_wal_replay_resume()")
            .unwrap();
    }

    fn write_many_rows(&self, pair: &PgPair) {
        pair.primary()
            .execute("INSERT INTO t SELECT 1000, g FROM generate_series(1, 50000) g")
            .unwrap();
    }

    fn promotions(&self, server: &PgServer) -> i64 {
        // Each promotion starts a new timeline; a new cluster is on timeline 1.
        let timeline = server
            .query_one_i64(
                "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
            )
            .unwrap();
        timeline - 1
    }

    fn refuse_new_app_connections(&self, server: &PgServer, refuse: bool) {
        // PostgreSQL answers 53300 (too many connections) to a role over its limit.
        let limit = if refuse { 0 } else { -1 };
        server
            .execute(&format!("ALTER ROLE {APP_USER} CONNECTION LIMIT {limit}"))
            .expect("limit");
    }

    fn end_heartbeat_sessions(&self, server: &PgServer) -> i64 {
        server
            .query_one_i64(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = '{APP_USER}' AND query LIKE '%AS sees_replication%' \
                 AND pid <> pg_backend_pid()"
            ))
            .expect("terminate the heartbeat session")
    }

    fn app_sessions(&self, server: &PgServer) -> i64 {
        server
            .query_one_i64(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
            ))
            .unwrap_or(-1)
    }
}
