//! What differs between PostgreSQL and MariaDB, behind one small trait; the rest of the demo is
//! generic over it.

use std::collections::HashSet;
use std::error::Error;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::mysql::{MyConnection, MysqlManager};
use mirrorpool::postgres::{PgConnection, PostgresManager};
use mirrorpool::testkit::{
    Grants, LoadTable, MyPair, MyServer, MyTable, PgPair, PgServer, PgTable, TcpProxy, TestkitError,
};
use mirrorpool::{Builder, ManageConnection};
use mysql::prelude::Queryable;
use postgres::NoTls;

pub type DemoResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The table the writers insert `(writer, seq)` rows into.
pub const TABLE: &str = "demo";
/// What a reader asks: the newest row, an index-only lookup on both engines.
const READ_SQL: &str = "SELECT seq FROM demo ORDER BY writer DESC, seq DESC LIMIT 1";
/// How long setup steps may wait for replication.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the demo does to one server of a pair.
pub trait Server: Sync {
    fn kill(&self) -> Result<(), TestkitError>;
    fn pause(&self) -> Result<(), TestkitError>;
    fn resume(&self) -> Result<(), TestkitError>;
    fn stop_immediate(&self) -> Result<(), TestkitError>;
    fn start(&self) -> Result<(), TestkitError>;
}

macro_rules! server_impl {
    ($t:ty) => {
        impl Server for $t {
            fn kill(&self) -> Result<(), TestkitError> {
                <$t>::kill(self)
            }
            fn pause(&self) -> Result<(), TestkitError> {
                <$t>::pause(self)
            }
            fn resume(&self) -> Result<(), TestkitError> {
                <$t>::resume(self)
            }
            fn stop_immediate(&self) -> Result<(), TestkitError> {
                <$t>::stop_immediate(self)
            }
            fn start(&self) -> Result<(), TestkitError> {
                <$t>::start(self)
            }
        }
    };
}
server_impl!(PgServer);
server_impl!(MyServer);

/// Connection type and error of an engine's manager.
pub type Conn<E> = <<E as Engine>::Manager as ManageConnection>::Connection;
pub type ConnError<E> = <<E as Engine>::Manager as ManageConnection>::Error;

/// One database engine: a started testkit pair with the demo's table.
pub trait Engine: Sized + Send + Sync + 'static {
    type Manager: ManageConnection;
    type Table: LoadTable<Self::Manager> + Clone;

    /// "PostgreSQL" or "MariaDB".
    const NAME: &'static str;

    /// Starts a pair (synchronous or not) whose application role has `grants`, and creates
    /// the table.
    fn start(synchronous: bool, grants: Grants) -> DemoResult<Self>;
    /// How the replication was set up, for the output.
    fn replication(synchronous: bool) -> &'static str;
    /// The pair's temp dir: every server process runs inside it.
    fn dir(&self) -> &Path;
    fn primary(&self) -> &dyn Server;
    fn primary_port(&self) -> u16;
    fn mirror_port(&self) -> u16;
    fn table(&self) -> Self::Table;
    /// The engine's pool builder (with its role- and replication-aware backend).
    fn builder() -> Builder<Self::Manager>;
    /// Managers for the application role: the primary reached on `primary_port` (the server's
    /// own port, or a proxy in front of it), the mirror directly.
    fn managers(&self, primary_port: u16) -> DemoResult<(Self::Manager, Self::Manager)>;
    /// Makes the mirror replicate through `proxy` (in front of the primary) and waits until it
    /// streams through it (synchronously, if the pair is).
    fn replicate_through(&self, proxy: &TcpProxy) -> DemoResult<()>;
    /// Every `(writer, seq)` row on the mirror, read as the application role.
    fn rows_on_mirror(&self) -> DemoResult<HashSet<(i32, i64)>>;
    /// One read, as a reader thread does it.
    fn read(conn: &mut Conn<Self>) -> Result<(), ConnError<Self>>;
}

/// Polls `done` every 50 ms for at most `limit`.
fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> DemoResult<bool>,
) -> DemoResult<()> {
    let end = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub struct Postgres {
    pair: PgPair,
    table: PgTable,
    synchronous: bool,
}

impl Engine for Postgres {
    type Manager = PostgresManager<NoTls>;
    type Table = PgTable;
    const NAME: &'static str = "PostgreSQL";

    fn start(synchronous: bool, grants: Grants) -> DemoResult<Self> {
        let pair = PgPair::builder()
            .synchronous(synchronous)
            .app_grants(grants)
            .start()?;
        let table = PgTable::new(TABLE)?;
        pair.primary().execute(&table.create_sql())?;
        pair.wait_for_mirror_streaming(SETUP_TIMEOUT)?;
        Ok(Postgres {
            pair,
            table,
            synchronous,
        })
    }

    fn replication(synchronous: bool) -> &'static str {
        if synchronous {
            "synchronous streaming replication (synchronous_commit = on)"
        } else {
            "asynchronous streaming replication"
        }
    }

    fn dir(&self) -> &Path {
        self.pair.dir()
    }
    fn primary(&self) -> &dyn Server {
        self.pair.primary()
    }
    fn primary_port(&self) -> u16 {
        self.pair.primary().port()
    }
    fn mirror_port(&self) -> u16 {
        self.pair.mirror().port()
    }
    fn table(&self) -> PgTable {
        self.table.clone()
    }

    fn builder() -> Builder<Self::Manager> {
        mirrorpool::postgres::builder()
    }

    fn managers(&self, primary_port: u16) -> DemoResult<(Self::Manager, Self::Manager)> {
        Ok((
            PostgresManager::new(self.pair.primary().app_config_on_port(primary_port), NoTls),
            PostgresManager::new(self.pair.mirror().app_config(), NoTls),
        ))
    }

    fn replicate_through(&self, proxy: &TcpProxy) -> DemoResult<()> {
        // Test-harness plumbing, as the superuser: the WAL receiver restarts on the reload.
        let mirror = self.pair.mirror();
        mirror.execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user={} application_name={}'",
            proxy.port(),
            mirrorpool::testkit::SUPERUSER,
            mirrorpool::testkit::MIRROR_APPLICATION_NAME
        ))?;
        mirror.execute("SELECT pg_reload_conf()")?;
        wait_for(
            "the mirror to connect through the proxy",
            SETUP_TIMEOUT,
            || Ok(proxy.active_connections() > 0),
        )?;
        let state = if self.synchronous {
            "sync_state = 'sync'"
        } else {
            "state = 'streaming'"
        };
        wait_for(
            "the mirror to stream through the proxy",
            SETUP_TIMEOUT,
            || {
                let sql = format!("SELECT count(*) FROM pg_stat_replication WHERE {state}");
                Ok(self.pair.primary().query_one_i64(&sql)? > 0)
            },
        )
    }

    fn rows_on_mirror(&self) -> DemoResult<HashSet<(i32, i64)>> {
        let mut client = self.pair.mirror().app_config().connect(NoTls)?;
        Ok(self.table.rows(&mut client)?)
    }

    fn read(conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.client_mut().query_opt(READ_SQL, &[]).map(|_| ())
    }
}

pub struct Mariadb {
    pair: MyPair,
    table: MyTable,
    synchronous: bool,
}

impl Engine for Mariadb {
    type Manager = MysqlManager;
    type Table = MyTable;
    const NAME: &'static str = "MariaDB";

    fn start(synchronous: bool, grants: Grants) -> DemoResult<Self> {
        let pair = MyPair::builder()
            .synchronous(synchronous)
            .app_grants(grants)
            .start()?;
        let table = MyTable::new(TABLE)?;
        pair.primary().execute(&table.create_sql())?;
        pair.wait_for_mirror_streaming(SETUP_TIMEOUT)?;
        pair.wait_for_mirror_caught_up(SETUP_TIMEOUT)?;
        Ok(Mariadb {
            pair,
            table,
            synchronous,
        })
    }

    fn replication(synchronous: bool) -> &'static str {
        if synchronous {
            "semi-synchronous GTID replication (AFTER_SYNC)"
        } else {
            "asynchronous GTID replication"
        }
    }

    fn dir(&self) -> &Path {
        self.pair.dir()
    }
    fn primary(&self) -> &dyn Server {
        self.pair.primary()
    }
    fn primary_port(&self) -> u16 {
        self.pair.primary().port()
    }
    fn mirror_port(&self) -> u16 {
        self.pair.mirror().port()
    }
    fn table(&self) -> MyTable {
        self.table.clone()
    }

    fn builder() -> Builder<Self::Manager> {
        mirrorpool::mysql::builder()
    }

    fn managers(&self, primary_port: u16) -> DemoResult<(Self::Manager, Self::Manager)> {
        Ok((
            MysqlManager::from_url(&self.pair.primary().app_url_on_port(primary_port))?,
            MysqlManager::from_url(&self.pair.mirror().app_url())?,
        ))
    }

    fn replicate_through(&self, proxy: &TcpProxy) -> DemoResult<()> {
        // Test-harness plumbing, as root: the replica reconnects to the new port.
        self.pair.mirror().execute(&format!(
            "STOP SLAVE; CHANGE MASTER TO MASTER_PORT = {}; START SLAVE",
            proxy.port()
        ))?;
        wait_for(
            "the mirror to connect through the proxy",
            SETUP_TIMEOUT,
            || Ok(proxy.active_connections() > 0),
        )?;
        self.pair.wait_for_mirror_streaming(SETUP_TIMEOUT)?;
        self.pair.wait_for_mirror_caught_up(SETUP_TIMEOUT)?;
        if self.synchronous {
            wait_for(
                "semi-synchronous replication through the proxy",
                SETUP_TIMEOUT,
                || {
                    Ok(self.pair.primary().query_one_i64(
                        "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                             WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS') >= 1 \
                        AND (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                             WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS') = 'ON'",
                    )? == 1)
                },
            )?;
        }
        Ok(())
    }

    fn rows_on_mirror(&self) -> DemoResult<HashSet<(i32, i64)>> {
        let opts = mysql::Opts::from_url(&self.pair.mirror().app_url())?;
        let mut conn = mysql::Conn::new(opts)?;
        Ok(self.table.rows(&mut conn)?)
    }

    fn read(conn: &mut MyConnection) -> Result<(), mysql::Error> {
        conn.conn_mut().query_drop(READ_SQL)
    }
}
