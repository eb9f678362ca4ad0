//! # mirrorpool
//!
//! A synchronous, r2d2-style connection pool over a **primary** database and its **mirror**
//! (a replica kept up to date by the database's own replication) that fails over by itself.
//!
//! A monitor thread runs heartbeats on both sides. When the primary is dead, hung or
//! unreachable for `failure_threshold` heartbeats in a row, the pool moves writers to the
//! mirror (optionally promoting it), drains the demoted side's connections, and keeps
//! serving: callers blocked in [`MirrorPool::get`] during the switch are served by the new
//! side instead of getting an error.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # #[cfg(feature = "postgres")] {
//! use mirrorpool::postgres::PostgresManager;
//! use mirrorpool::MirrorPool;
//!
//! let pool = mirrorpool::postgres::builder()
//!     .max_size(16)
//!     .promote_on_failover(true)
//!     .build(
//!         PostgresManager::new("host=10.0.0.1 user=app dbname=app".parse()?, postgres::NoTls),
//!         PostgresManager::new("host=10.0.0.2 user=app dbname=app".parse()?, postgres::NoTls),
//!     )?;
//! let mut conn = pool.get()?;
//! conn.execute("INSERT INTO t VALUES (1)", &[])?;
//! println!("{:?}", pool.status());
//! # }
//! # Ok(())
//! # }
//! ```
//!
//! Where things live:
//! - the failover decision: `policy.rs`, a pure state machine (observations and the time in,
//!   actions out; no I/O, no clock, no sleep), tested by a simulator in `policy/tests.rs`;
//! - the runtime that carries the actions out: `monitor.rs` (one thread), `prober.rs`
//!   (heartbeats and promotions on their own threads), `report.rs` (logs and events, isolated
//!   from panicking handlers);
//! - connections: `subpool.rs` (one side's pool), `pool.rs` (the handle and the guard),
//!   `shared.rs` (routing, the one truth of where writers go);
//! - each database in its own folder (`postgres/`), behind the [`backend::Backend`] trait;
//! - the public types: [`backend`] for implementors, [`event`] for handlers.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(rust_2018_idioms)]

pub mod backend;
mod clock;
mod close;
mod config;
mod error;
pub mod event;
mod extensions;
mod health;
mod leaks;
mod metrics;
mod monitor;
mod observation;
mod policy;
mod pool;
mod prober;
mod report;
mod sever;
mod shared;
mod side;
mod status;
mod subpool;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;

#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use config::{Builder, CustomizeConnection, Failback};
pub use error::{Blocked, BuildError, GetError, Refusal, SideReport, SwitchError};
pub use event::{HandleEvent, NopEventHandler};
pub use extensions::Extensions;
pub use health::Health;
pub use observation::{Lag, Role};
pub use pool::{MirrorPool, PooledConnection};
pub use side::Side;
pub use status::{SideStatus, Status, SwitchRecord};

/// Errors kept with their whole cause chain (see [`backend`] for implementors).
pub use error::Cause;

/// Re-exported so users need not depend on r2d2 to write a manager.
pub use r2d2::ManageConnection;
