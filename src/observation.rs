//! What one heartbeat learned about a side: its role and its replication state.

use std::fmt;
use std::time::Duration;

/// Whether a side takes writes, as its heartbeat reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// The backend cannot tell (a plain `r2d2::ManageConnection`); treated as writable.
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

/// How far a replica is behind its primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lag {
    /// Bytes of write-ahead log (or binlog) not yet replayed.
    Bytes(u64),
    /// Time since the newest replayed transaction was committed on the primary.
    Time(Duration),
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lag::Bytes(b) => write!(f, "{b} bytes"),
            Lag::Time(d) => write!(f, "{d:?}"),
        }
    }
}

/// What a replica knows about its link to the primary it replicates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Upstream {
    /// Whether the replica is currently streaming from its primary.
    pub streaming: bool,
    /// Time since the replica last heard anything from its primary, if known.
    pub silence: Option<Duration>,
    /// The longest a live primary may stay quiet towards this replica (PostgreSQL: the
    /// replica's `wal_receiver_timeout`, after which it asks for a message or gives up). A
    /// silence shorter than this proves nothing; `None` if unknown.
    pub max_quiet: Option<Duration>,
}

impl Upstream {
    /// A link in the given state, with nothing else known.
    pub fn new(streaming: bool) -> Upstream {
        Upstream {
            streaming,
            ..Upstream::default()
        }
    }
}

/// Replication facts reported by one heartbeat. Every field is optional: a backend fills
/// what it can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Replication {
    /// Replay lag in bytes: on a replica its own, on a primary that of its attached replica.
    pub lag_bytes: Option<u64>,
    /// Replay lag in time: on a replica its own, on a primary that of its attached replica.
    pub lag_time: Option<Duration>,
    /// On a primary: how many replicas are attached and streaming.
    pub replicas_attached: Option<u32>,
    /// On a replica: the state of its link to the primary.
    pub upstream: Option<Upstream>,
}

impl Replication {
    /// Whether `lag` exceeds `limit`, where the needed figure is known; unknown is not exceeding.
    pub fn exceeds(&self, limit: Lag) -> Option<Lag> {
        match limit {
            Lag::Bytes(max) => self.lag_bytes.filter(|b| *b > max).map(Lag::Bytes),
            Lag::Time(max) => self.lag_time.filter(|t| *t > max).map(Lag::Time),
        }
    }
}

/// The result of one successful heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Observation {
    role: Role,
    epoch: Option<u64>,
    replication: Option<Replication>,
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
    pub fn epoch(mut self, epoch: u64) -> Observation {
        self.epoch = Some(epoch);
        self
    }

    /// Sets the replication facts.
    pub fn replication(mut self, replication: Replication) -> Observation {
        self.replication = Some(replication);
        self
    }

    /// The reported role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The reported epoch, if the backend knows one.
    pub fn epoch_value(&self) -> Option<u64> {
        self.epoch
    }

    /// The reported replication facts, if the backend knows any.
    pub fn replication_state(&self) -> Option<&Replication> {
        self.replication.as_ref()
    }
}
