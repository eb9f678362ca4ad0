//! Test infrastructure: throw-away PostgreSQL primary + mirror pairs and a
//! fault-injecting TCP proxy.
//!
//! Enabled by the `testkit` feature; the PostgreSQL part additionally needs
//! the `postgres` feature and the PostgreSQL server binaries (`initdb`,
//! `pg_ctl`, `postgres`, `pg_basebackup`, e.g. `apt-get install postgresql`).
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
//! run as the OS user `postgres` (or `MIRRORPOOL_TESTKIT_USER`).

mod error;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod process;
mod proxy;

pub use self::error::TestkitError;
#[cfg(feature = "postgres")]
pub use self::postgres::{
    Grants, PauseGuard, PgPair, PgPairBuilder, PgServer, APP_PASSWORD, APP_USER,
    MIRROR_APPLICATION_NAME, SUPERUSER,
};
pub use self::proxy::{ProxyMode, ProxyModeGuard, TcpProxy};
