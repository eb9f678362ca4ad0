//! Point-in-time snapshots of the pool, for operators and metrics.

use std::time::{Duration, Instant};

use crate::error::{Blocked, Cause, Refusal};
use crate::event::SwitchReason;
use crate::health::Health;
use crate::observation::{Identity, Observation, Privileges, Replication, Role};
use crate::side::Side;

/// A snapshot of the pool, as `MirrorPool::status()` returns it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The side `get()` serves from.
    pub active: Side,
    /// Why `get()` callers wait instead of being served, if they do.
    pub blocked: Option<Blocked>,
    /// The primary side.
    pub primary: SideStatus,
    /// The mirror side.
    pub mirror: SideStatus,
    /// How many times writers moved between sides.
    pub switches: u64,
    /// The last switch, if any.
    pub last_switch: Option<SwitchRecord>,
    /// Whether both sides currently claim to be writable primaries.
    pub split_brain: bool,
    /// A side the pool will not send writes to (a diverged old primary), if any.
    pub fenced: Option<Side>,
    /// Maximum pool connections per side (each side has one heartbeat connection besides).
    pub max_size: u32,
    /// Whether the monitor thread runs. `false` only if it stopped unexpectedly; then writers
    /// are blocked ([`Blocked::Unmonitored`]).
    pub monitor_running: bool,
    /// Panics the monitor caught and survived (in a user's event handler they are not
    /// counted here: those are logged only).
    pub monitor_panics: u64,
}

impl Status {
    pub(crate) fn new() -> Status {
        Status {
            active: Side::Primary,
            blocked: None,
            primary: SideStatus::new(Health::Unknown),
            mirror: SideStatus::new(Health::Unknown),
            switches: 0,
            last_switch: None,
            split_brain: false,
            fenced: None,
            max_size: 0,
            monitor_running: true,
            monitor_panics: 0,
        }
    }

    /// The status of one side.
    pub fn side(&self, side: Side) -> &SideStatus {
        match side {
            Side::Primary => &self.primary,
            Side::Mirror => &self.mirror,
        }
    }

    pub(crate) fn side_mut(&mut self, side: Side) -> &mut SideStatus {
        match side {
            Side::Primary => &mut self.primary,
            Side::Mirror => &mut self.mirror,
        }
    }

    /// Whether `get()` is being served right now.
    pub fn serving(&self) -> bool {
        self.blocked.is_none()
    }
}

/// One side's part of a [`Status`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SideStatus {
    /// Health from heartbeats.
    pub health: Health,
    /// Consecutive failed heartbeats.
    pub consecutive_failures: u32,
    /// Round trip of the last successful heartbeat (including a reconnect, if it needed one).
    pub last_rtt: Option<Duration>,
    /// When the last heartbeat finished.
    pub last_heartbeat: Option<Instant>,
    /// The last heartbeat error, cleared when a heartbeat succeeds (never contains secrets).
    pub last_error: Option<Cause>,
    /// The last error opening or validating a pool connection to this side.
    pub last_connect_error: Option<Cause>,
    /// The role the last successful heartbeat reported.
    pub role: Role,
    /// The epoch (PostgreSQL timeline) the last heartbeat reported, if known.
    pub epoch: Option<u64>,
    /// Replication facts from the last successful heartbeat, if the backend reports them.
    pub replication: Option<Replication>,
    /// Who the server is, if the backend reports it.
    pub identity: Option<Identity>,
    /// What the pool's role may do on this side, as the last heartbeat checked.
    pub privileges: Privileges,
    /// The side refuses new connections ("too many connections") while it answers on the
    /// connections the pool has: full, not down. Writers stay; connects are retried with
    /// backoff.
    pub saturated: bool,
    /// Configuration problems found on this side's heartbeats that will refuse failovers
    /// (a missing privilege, both sides being one server), each once.
    pub problems: Vec<Refusal>,
    /// Pool connections open or being opened (the heartbeat connection is not counted).
    pub connections: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections checked out by callers.
    pub in_use: u32,
    /// Connects in progress.
    pub pending: u32,
    /// Callers waiting for a connection of this side.
    pub waiters: u32,
    /// Checked-out connections of a drained generation, closed when returned.
    pub stale: u32,
    /// Connections opened since the pool started.
    pub created: u64,
    /// Connections closed since the pool started.
    pub closed: u64,
    /// Failed connects since the pool started.
    pub connect_failures: u64,
}

impl SideStatus {
    pub(crate) fn new(health: Health) -> SideStatus {
        SideStatus {
            health,
            consecutive_failures: 0,
            last_rtt: None,
            last_heartbeat: None,
            last_error: None,
            last_connect_error: None,
            role: Role::Unknown,
            epoch: None,
            replication: None,
            identity: None,
            privileges: Privileges::default(),
            problems: Vec::new(),
            saturated: false,
            connections: 0,
            idle: 0,
            in_use: 0,
            pending: 0,
            waiters: 0,
            stale: 0,
            created: 0,
            closed: 0,
            connect_failures: 0,
        }
    }

    pub(crate) fn observe(&mut self, obs: &Observation) {
        self.role = obs.role();
        self.epoch = obs.epoch();
        self.replication = obs.replication().copied();
        self.identity = obs.identity();
        self.privileges = obs.privileges();
    }
}

/// A record of one switch.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SwitchRecord {
    /// The side writers left.
    pub from: Side,
    /// The side writers moved to.
    pub to: Side,
    /// Why.
    pub reason: SwitchReason,
    /// When.
    pub at: Instant,
}
