//! Test infrastructure: throw-away primary + mirror pairs of real database
//! servers, a fault-injecting TCP proxy, a writer load with a ledger of
//! acknowledged writes, and a recording event handler.
//!
//! Enabled by the `testkit` feature. The pairs additionally need their
//! engine's feature and server binaries:
//! - [`PgPair`] (feature `postgres`): PostgreSQL's `initdb`, `pg_ctl`,
//!   `postgres`, `pg_basebackup` (`apt-get install postgresql`);
//! - [`MyPair`] (feature `mysql`): MariaDB's `mariadbd` and
//!   `mariadb-install-db` (`apt-get install mariadb-server`).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mirrorpool::testkit::{PgPair, ProxyMode, TcpProxy};
//! use std::net::SocketAddr;
//!
//! let pair = PgPair::builder().synchronous(true).start()?;
//! let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], pair.primary().port())))?;
//! let mut client = pair.primary().app_config_on_port(proxy.port()).connect(postgres::NoTls)?;
//! client.simple_query("SELECT 1")?;
//! proxy.set_mode(ProxyMode::Drop); // the next query fails fast
//! pair.primary().kill()?; // SIGKILL the postmaster
//! pair.mirror().promote()?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```
//!
//! Running as root: PostgreSQL refuses to run as root, so the servers then
//! run as an unprivileged OS user: `postgres` for PostgreSQL, `mysql` for
//! MariaDB (or `MIRRORPOOL_TESTKIT_USER` for both).
//!
//! Where things are: `os.rs` (processes, signals, `/proc`, ports — no
//! engine), `server.rs` (one server process's lifecycle: start with a
//! readiness check, kill, stop, pause/resume, restart, teardown), `load.rs`
//! and `events.rs` (what a failover test measures), `proxy.rs`, `roles.rs`
//! (the application role and its [`Grants`]), and one folder per engine
//! (`postgres/`, `mysql/`: the pair, its configuration files, its admin
//! client and its binary discovery).

mod error;
mod events;
mod load;
mod os;
mod proxy;
mod roles;
mod server;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;

pub use self::error::TestkitError;
pub use self::events::EventLog;
pub use self::load::{Ack, FailedGet, FailedWrite, Ledger, Load, LoadBuilder, LoadTable};
pub use self::proxy::{ProxyMode, ProxyModeGuard, TcpProxy};
pub use self::roles::{Grants, APP_PASSWORD, APP_USER};
pub use self::server::PauseGuard;

#[cfg(feature = "postgres")]
pub use self::postgres::{
    PgPair, PgPairBuilder, PgServer, PgTable, MIRROR_APPLICATION_NAME, SUPERUSER,
};

#[cfg(feature = "mysql")]
pub use self::mysql::{MyPair, MyPairBuilder, MyServer, MyTable, MY_DATABASE, MY_SUPERUSER};
