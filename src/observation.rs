//! What one heartbeat learned about a side: its role, its replication state, who it is and
//! what the pool's role may do on it.
//!
//! Every fact is optional, and "could not see" (a view the role lacks the privilege for, a
//! backend that does not report it) is kept apart from "false": no safety rule reads an
//! unknown as the convenient answer.

use std::fmt;
use std::time::Duration;

/// Whether a side takes writes, as its heartbeat reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// Not known: the backend cannot tell (a plain `r2d2::ManageConnection`, where it counts
    /// as writable), or no heartbeat has reported it yet. With a role-aware backend an unknown
    /// role never takes writes.
    #[default]
    Unknown,
    /// A writable primary.
    Writable,
    /// A read-only replica (e.g. PostgreSQL in recovery).
    ReadOnly,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Unknown => "unknown role",
            Role::Writable => "writable primary",
            Role::ReadOnly => "read-only replica",
        })
    }
}

/// How far a replica is behind its primary, or a limit on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Lag {
    /// Bytes of write-ahead log (or binlog) the replica has not replayed.
    Bytes(u64),
    /// Time since the newest replayed transaction was committed on the primary.
    Time(Duration),
    /// Transactions the replica has not applied (MySQL/MariaDB GTIDs).
    Transactions(u64),
}

impl Lag {
    /// The kind of measure, without its value.
    pub fn kind(&self) -> LagKind {
        match self {
            Lag::Bytes(_) => LagKind::Bytes,
            Lag::Time(_) => LagKind::Time,
            Lag::Transactions(_) => LagKind::Transactions,
        }
    }
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lag::Bytes(b) => write!(f, "{b} bytes"),
            Lag::Time(d) => write!(f, "{d:?}"),
            Lag::Transactions(n) => write!(f, "{n} transactions"),
        }
    }
}

/// A kind of replication lag a backend can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LagKind {
    /// [`Lag::Bytes`].
    Bytes,
    /// [`Lag::Time`].
    Time,
    /// [`Lag::Transactions`].
    Transactions,
}

impl fmt::Display for LagKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LagKind::Bytes => "bytes",
            LagKind::Time => "time",
            LagKind::Transactions => "transactions",
        })
    }
}

/// What a replica knows about its link to the primary it replicates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Upstream {
    /// Whether the replica is currently streaming from its primary: `None` when the heartbeat
    /// could not see it (PostgreSQL shows `pg_stat_wal_receiver` only to roles with
    /// `pg_read_all_stats`). Unknown never confirms that the primary is lost.
    pub streaming: Option<bool>,
    /// Time since the replica last heard anything from its primary, if known.
    pub silence: Option<Duration>,
    /// The longest a live primary may stay quiet towards this replica (PostgreSQL: the
    /// replica's `wal_receiver_timeout`, after which it asks for a message or gives up). A
    /// silence shorter than this proves nothing; `None` if unknown.
    pub max_quiet: Option<Duration>,
}

impl Upstream {
    /// A link known to be streaming (`true`) or not (`false`), with nothing else known.
    pub fn new(streaming: bool) -> Upstream {
        Upstream {
            streaming: Some(streaming),
            ..Upstream::default()
        }
    }

    /// A link whose state the heartbeat could not see.
    pub fn unknown() -> Upstream {
        Upstream::default()
    }

    /// Sets how long the replica has heard nothing from its primary.
    pub fn with_silence(mut self, silence: Duration) -> Upstream {
        self.silence = Some(silence);
        self
    }

    /// Sets the replica's own bound on a live primary's quiet time.
    pub fn with_max_quiet(mut self, max_quiet: Duration) -> Upstream {
        self.max_quiet = Some(max_quiet);
        self
    }
}

/// Replication facts reported by one heartbeat. Every field is optional: a backend fills
/// what it can tell (start from `Replication::default()` and set fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Replication {
    /// Replay lag in bytes: on a replica its own, on a primary that of its attached replica.
    pub lag_bytes: Option<u64>,
    /// Replay lag in time: on a replica its own, on a primary that of its attached replica.
    pub lag_time: Option<Duration>,
    /// Transactions not yet applied: on a replica its own, on a primary that of its replica.
    pub lag_transactions: Option<u64>,
    /// On a primary: how many replicas are attached and streaming.
    pub replicas_attached: Option<u32>,
    /// On a replica: the state of its link to the primary.
    pub upstream: Option<Upstream>,
    /// A position in the replication stream that only grows: in bytes for a backend that
    /// measures [`LagKind::Bytes`] (PostgreSQL: the LSN), in transactions for one that measures
    /// [`LagKind::Transactions`] (MySQL/MariaDB: the sum of the GTID sequence numbers). On a
    /// primary: how far it has written. On a replica: how far it has applied. The lag gate
    /// compares the primary's last known position with what the replica has applied *now*, so
    /// it reopens once a replica has caught up after its primary died.
    pub position: Option<u64>,
    /// On a primary: whether commits currently wait for a replica to confirm them
    /// (MySQL/MariaDB semi-synchronous replication: `Rpl_semi_sync_master_status`). `false`
    /// means a failover from now on can lose acknowledged writes. `None`: not reported.
    pub synchronous: Option<bool>,
}

/// Whether the heartbeat's role holds a privilege a feature needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Access {
    /// Not checked (the backend cannot tell, or the feature is off).
    #[default]
    Unchecked,
    /// The role has it.
    Granted,
    /// The role lacks it; the text says what is missing and how to grant it, e.g.
    /// "the role lacks EXECUTE on pg_promote".
    Denied(&'static str),
}

/// What the pool's role may do on a side, as far as the heartbeat checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Privileges {
    /// Promoting the side (for `promote_on_failover`).
    pub promote: Access,
    /// Seeing the replication state (for `verify_primary_failure` and the lag gate).
    pub replication_status: Access,
}

impl Privileges {
    /// The first privilege denied, with its text.
    pub fn first_denied(&self) -> Option<&'static str> {
        [self.promote, self.replication_status]
            .into_iter()
            .find_map(|a| match a {
                Access::Denied(what) => Some(what),
                _ => None,
            })
    }
}

/// Who a server is, so the pool can tell two servers apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Shared by a primary and its physical replicas, different for unrelated clusters
    /// (PostgreSQL's `system_identifier`); `None` if the backend has no such notion.
    pub cluster: Option<u64>,
    /// Different for every server instance (PostgreSQL: a hash of `system_identifier`,
    /// postmaster start time and port; MySQL: of `server_uuid`). Two sides reporting the same
    /// instance are one server configured twice.
    pub instance: u64,
}

/// The result of one successful heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Observation {
    role: Role,
    epoch: Option<u64>,
    replication: Option<Replication>,
    identity: Option<Identity>,
    privileges: Privileges,
}

impl Observation {
    /// An observation with nothing known but that the side answered.
    pub fn up() -> Observation {
        Observation::default()
    }

    /// An observation of a side with the given role.
    pub fn with_role(role: Role) -> Observation {
        Observation {
            role,
            ..Observation::default()
        }
    }

    /// Sets the side's epoch: a number that grows with every promotion in the cluster
    /// (PostgreSQL's timeline). When both sides claim to be writable, the higher epoch wins.
    pub fn with_epoch(mut self, epoch: u64) -> Observation {
        self.epoch = Some(epoch);
        self
    }

    /// Sets the replication facts.
    pub fn with_replication(mut self, replication: Replication) -> Observation {
        self.replication = Some(replication);
        self
    }

    /// Sets who the server is.
    pub fn with_identity(mut self, identity: Identity) -> Observation {
        self.identity = Some(identity);
        self
    }

    /// Sets what the pool's role may do on the server.
    pub fn with_privileges(mut self, privileges: Privileges) -> Observation {
        self.privileges = privileges;
        self
    }

    /// The reported role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The reported epoch, if the backend knows one.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The reported replication facts, if the backend knows any.
    pub fn replication(&self) -> Option<&Replication> {
        self.replication.as_ref()
    }

    /// Who the server is, if the backend reports it.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// What the pool's role may do on the server.
    pub fn privileges(&self) -> Privileges {
        self.privileges
    }
}
