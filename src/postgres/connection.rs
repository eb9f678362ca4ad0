//! A pooled PostgreSQL connection: a `postgres::Client` plus what lets the pool sever it.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use postgres::{Client, Statement};

use crate::observation::Identity;
use crate::sever::{SocketHandle, Watch};

/// How long closing a connection may take before its socket is severed. A close does not wait
/// for the server unless an earlier request is still unanswered; then the server did not answer
/// in time and is not waited for long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A `postgres::Client` managed by [`PostgresManager`](super::PostgresManager). Derefs to the
/// client, so `conn.execute(..)` works on a pooled connection as on a `Client`; use
/// [`client_mut`](PgConnection::client_mut) (or `&mut **conn`) where a `&mut Client` is needed.
pub struct PgConnection {
    // Field order matters: the client is dropped (closed) before `close_watch`, which bounds
    // that close.
    client: Client,
    close_watch: Option<Watch>,
    socket: Option<Arc<SocketHandle>>,
    /// A call of the manager or backend on this connection did not complete (timed out or
    /// failed): its answer may still be pending, so a close would wait for it.
    unsettled: bool,
    /// Who the server is (asked once per connection, on its first heartbeat).
    pub(super) identity: Option<Identity>,
    /// The heartbeat query, prepared on this connection by its first heartbeat.
    pub(super) probe_statement: Option<Statement>,
}

impl PgConnection {
    pub(crate) fn new(client: Client, socket: Option<Arc<SocketHandle>>) -> PgConnection {
        PgConnection {
            client,
            close_watch: None,
            socket,
            unsettled: false,
            identity: None,
            probe_statement: None,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, mutably.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Whether the pool can sever this connection's socket (found at connect; Linux, TCP).
    /// Only a severable connection has its heartbeats, resets and close bounded in time.
    pub fn severable(&self) -> bool {
        self.socket.is_some()
    }

    /// Runs `call` on the client with a deadline: past `bound` the socket is severed, so the
    /// call fails instead of waiting for a server that does not answer (`None`: the call has a
    /// bound of its own). Unbounded if the connection is not [`severable`](Self::severable).
    pub(super) fn bounded<T>(
        &mut self,
        bound: Option<Duration>,
        what: &'static str,
        call: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let watch = match (bound, &self.socket) {
            (Some(bound), Some(s)) => s.watch(bound, what),
            _ => None,
        };
        self.unsettled = true;
        let result = call(&mut self.client);
        drop(watch);
        if result.is_ok() {
            self.unsettled = false;
        }
        result
    }
}

impl Deref for PgConnection {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.client.is_closed())
            .field("severable", &self.severable())
            .finish()
    }
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        if let Some(s) = self.socket.take() {
            if self.unsettled {
                // A request is still unanswered: closing would wait for that answer.
                s.sever();
            } else {
                self.close_watch = s.watch(CLOSE_TIMEOUT, "closing a PostgreSQL connection");
            }
            // Before the client closes the socket (right after this function).
            s.forget();
        }
    }
}
