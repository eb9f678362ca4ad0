//! MySQL and MariaDB backend (feature `mysql`, on by default), built on the `mysql` crate.
//!
//! [`MysqlManager`]: an `r2d2::ManageConnection` whose every blocking step has a bound.

mod connection;
mod gtid;
mod manager;
mod status;

pub use connection::{Flavor, MyConnection, Server};
pub use manager::{InvalidUrl, MysqlManager};
