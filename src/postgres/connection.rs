//! A pooled PostgreSQL connection: a `postgres::Client` plus what lets the pool sever it.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use postgres::Client;

use super::socket::SocketHandle;

/// A `postgres::Client` managed by [`PostgresManager`](super::PostgresManager). Derefs to the
/// client, so `conn.execute(..)` works on a pooled connection as on a `Client`; use
/// [`client_mut`](PgConnection::client_mut) (or `&mut **conn`) where a `&mut Client` is needed.
pub struct PgConnection {
    client: Client,
    socket: Option<Arc<SocketHandle>>,
}

impl PgConnection {
    pub(crate) fn new(client: Client, socket: Option<Arc<SocketHandle>>) -> PgConnection {
        PgConnection { client, socket }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, mutably.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Whether the pool can sever this connection's socket on failover (found at connect).
    pub fn severable(&self) -> bool {
        self.socket.is_some()
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
        // Before the client (dropped after this) closes the socket.
        if let Some(s) = &self.socket {
            s.forget();
        }
    }
}
