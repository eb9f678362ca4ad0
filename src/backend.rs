//! The backend trait: what the pool needs from a database beyond `r2d2::ManageConnection` —
//! heartbeats that report role and replication, promotion, error classification and session
//! reset — and the types a backend implementor uses.

use std::time::Duration;

use r2d2::ManageConnection;

pub use crate::observation::{
    Access, Identity, Lag, LagKind, Observation, Privileges, Replication, Role, Upstream,
};

/// The error type of backend calls: any error, boxed. The pool keeps its message and its whole
/// `source()` chain.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What an error seen on a connection says about the server behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The connection is gone or the server is going away (closed socket, shutdown, crash).
    ConnectionLost,
    /// The server refused a write because it is (no longer) a writable primary.
    NotWritable,
    /// The server is up but refuses new connections because it has too many
    /// (PostgreSQL 53300, MySQL 1040): capacity, not a failure to fail over from.
    TooManyConnections,
    /// Anything else: a query error that says nothing about the server's health.
    Other,
}

/// What a backend can report and do. The pool checks the configuration against it at
/// `build()`: a lag limit of a kind the backend cannot measure is an error there, not a gate
/// that silently never closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Heartbeats report the role ([`Role::Writable`] / [`Role::ReadOnly`]). Then writers are
    /// served only by a side whose *known* role takes writes.
    pub roles: bool,
    /// [`Backend::promote`] is implemented.
    pub promote: bool,
    /// Replicas report their upstream link ([`Upstream`]), so a primary failure can be
    /// verified before promoting.
    pub upstream: bool,
    /// Lag kinds the heartbeats report.
    pub lag_bytes: bool,
    /// See `lag_bytes`.
    pub lag_time: bool,
    /// See `lag_bytes`.
    pub lag_transactions: bool,
}

impl Capabilities {
    /// Nothing: up/down only ([`IsValid`]).
    pub const NONE: Capabilities = Capabilities {
        roles: false,
        promote: false,
        upstream: false,
        lag_bytes: false,
        lag_time: false,
        lag_transactions: false,
    };

    /// Heartbeats report roles.
    pub const fn with_roles(mut self) -> Self {
        self.roles = true;
        self
    }

    /// The backend can promote.
    pub const fn with_promote(mut self) -> Self {
        self.promote = true;
        self
    }

    /// Replicas report their upstream link.
    pub const fn with_upstream(mut self) -> Self {
        self.upstream = true;
        self
    }

    /// Heartbeats report this lag kind.
    pub const fn with_lag(mut self, kind: LagKind) -> Self {
        match kind {
            LagKind::Bytes => self.lag_bytes = true,
            LagKind::Time => self.lag_time = true,
            LagKind::Transactions => self.lag_transactions = true,
        }
        self
    }

    /// Whether heartbeats report this lag kind.
    pub fn measures(&self, kind: LagKind) -> bool {
        match kind {
            LagKind::Bytes => self.lag_bytes,
            LagKind::Time => self.lag_time,
            LagKind::Transactions => self.lag_transactions,
        }
    }
}

/// Database-specific knowledge the pool uses: heartbeats, promotion, error classification and
/// session reset. Every method but [`probe`](Backend::probe) has a default.
///
/// The monitor calls `probe` and `promote` on a connection dedicated to heartbeats (never one
/// from the sub-pool), on a prober thread of its own; a call that does not return within its
/// timeout is abandoned and counted as failed, and its thread ends whenever the call returns.
/// Implementations must still bound every blocking call (connects included), so abandoned
/// threads end soon after the pool is dropped.
///
/// A panic in any method is caught and treated as an error of that call.
///
/// Any `r2d2::ManageConnection` works with [`IsValid`], which reports up or down only.
pub trait Backend<M: ManageConnection>: Send + Sync + 'static {
    /// What this backend reports and can do. Default: [`Capabilities::NONE`].
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    /// Runs one heartbeat on `conn` and reports what the side is. Should answer within
    /// `timeout` (the monitor abandons it after that anyway).
    fn probe(
        &self,
        manager: &M,
        conn: &mut M::Connection,
        timeout: Duration,
    ) -> Result<Observation, BackendError>;

    /// Promotes the replica behind `conn` and returns once it accepts writes, or fails after
    /// `timeout`. Default: an error saying the backend cannot promote.
    fn promote(
        &self,
        manager: &M,
        conn: &mut M::Connection,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let _ = (manager, conn, timeout);
        Err("this backend cannot promote a replica".into())
    }

    /// Says what an error a caller got on one of this backend's connections (or a failed
    /// connect) means for the server's health. Used by
    /// [`PooledConnection::report`](crate::PooledConnection::report). Default: [`Fault::Other`].
    fn classify(&self, error: &M::Error) -> Fault {
        let _ = error;
        Fault::Other
    }

    /// Clears session state (temporary tables, prepared statements, settings) of a returned
    /// connection before it is reused; an error closes the connection instead. Called on the
    /// returning thread when the builder's `reset_on_return` is on, so it must be bounded in
    /// time (the PostgreSQL backend severs a reset that takes longer than its timeout).
    /// Default: does nothing.
    fn reset(&self, manager: &M, conn: &mut M::Connection) -> Result<(), BackendError> {
        let _ = (manager, conn);
        Ok(())
    }

    /// Aborts every open connection of `manager`, so callers blocked on a server that will not
    /// answer (hung, black-holed) get an error instead of waiting for it. Called by the monitor
    /// when writers leave a failed side for one that takes writes, or when the pool promotes
    /// the replica they wait on or fences the old side; never on planned switches, and not
    /// while writers merely wait on a replica (the failed side may only have been slow).
    /// Returns how many connections it aborted. Default: does nothing.
    fn sever(&self, manager: &M) -> usize {
        let _ = manager;
        0
    }
}

/// The backend for any `r2d2::ManageConnection`: heartbeats run `is_valid` and report the
/// side up with an unknown role (which, for this backend, counts as writable).
#[derive(Clone, Copy, Debug, Default)]
pub struct IsValid;

impl<M: ManageConnection> Backend<M> for IsValid {
    fn probe(
        &self,
        manager: &M,
        conn: &mut M::Connection,
        _timeout: Duration,
    ) -> Result<Observation, BackendError> {
        manager
            .is_valid(conn)
            .map(|()| Observation::up())
            .map_err(|e| Box::new(crate::error::Cause::capture(&e)) as BackendError)
    }
}
