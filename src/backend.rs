//! The backend trait: what the pool needs from a database beyond `r2d2::ManageConnection` —
//! heartbeats that report role and replication, promotion, error classification and session
//! reset.

use std::time::Duration;

use r2d2::ManageConnection;

use crate::observation::Observation;

/// What an error seen on a connection says about the server behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The connection is gone or the server is going away (closed socket, shutdown, crash).
    ConnectionLost,
    /// The server refused a write because it is (no longer) a writable primary.
    NotWritable,
    /// Anything else: a query error that says nothing about the server's health.
    Other,
}

/// Database-specific knowledge the pool uses: heartbeats, promotion, error classification and
/// session reset. Every method but [`probe`](Backend::probe) has a default.
///
/// The monitor calls `probe` and `promote` on a connection dedicated to heartbeats (never one
/// from the sub-pool), on a prober thread of its own; a call that does not return within its
/// timeout is abandoned and counted as failed, and its thread ends whenever the call returns.
/// Implementations should still bound every blocking call, so abandoned threads end soon.
///
/// Any `r2d2::ManageConnection` works with [`IsValid`], which reports up or down only.
pub trait Backend<M: ManageConnection>: Send + Sync + 'static {
    /// Runs one heartbeat on `conn` and reports what the side is.
    fn probe(
        &self,
        manager: &M,
        conn: &mut M::Connection,
        timeout: Duration,
    ) -> Result<Observation, M::Error>;

    /// Promotes the replica behind `conn` and returns once it accepts writes.
    ///
    /// Returns `None` when the backend cannot promote (the default).
    fn promote(
        &self,
        manager: &M,
        conn: &mut M::Connection,
        timeout: Duration,
    ) -> Option<Result<(), M::Error>> {
        let _ = (manager, conn, timeout);
        None
    }

    /// Says what an error a caller got on one of this backend's connections means for the
    /// server's health. Used by [`PooledConnection::report`](crate::PooledConnection::report).
    /// Default: [`Fault::Other`].
    fn classify(&self, error: &M::Error) -> Fault {
        let _ = error;
        Fault::Other
    }

    /// Clears session state (temporary tables, prepared statements, settings) of a returned
    /// connection before it is reused; an error closes the connection instead. Called in the
    /// returning thread when the builder's `reset_on_return` is on. Default: does nothing.
    fn reset(&self, manager: &M, conn: &mut M::Connection) -> Result<(), M::Error> {
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
/// side up with an unknown role.
#[derive(Clone, Copy, Debug, Default)]
pub struct IsValid;

impl<M: ManageConnection> Backend<M> for IsValid {
    fn probe(
        &self,
        manager: &M,
        conn: &mut M::Connection,
        _timeout: Duration,
    ) -> Result<Observation, M::Error> {
        manager.is_valid(conn).map(|()| Observation::up())
    }
}
