//! Failover events and the trait that receives them.
//!
//! Every event is also logged through the `log` crate: switches, downs and refusals at `warn`,
//! split brain and configuration problems at `error`, recoveries and drains at `info`,
//! heartbeat failures at `debug`.

use std::fmt;
use std::time::Duration;

use crate::error::{Cause, Refusal};
use crate::side::Side;

/// Why the pool moved writers from one side to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SwitchReason {
    /// The active side went down.
    Failover,
    /// The cluster moved the writable role (e.g. an external promotion or switchover).
    RoleChange,
    /// Both sides claimed to be writable; writers moved to the newer primary.
    SplitBrain,
    /// The other side became a newer primary (higher epoch) while the active one was failing.
    NewerPrimary,
    /// The side writers had left because it was down came back writable before the
    /// replica they waited on could take writes.
    Recovered,
    /// Automatic failback to the recovered primary.
    Failback,
    /// `switch_over` was called.
    Manual,
}

impl fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchReason::Failover => "the active side is down",
            SwitchReason::RoleChange => "the cluster moved the writable role",
            SwitchReason::SplitBrain => "split brain: moving to the newer primary",
            SwitchReason::NewerPrimary => "the other side is a newer primary",
            SwitchReason::Recovered => {
                "the failed side came back writable before the replica was promoted"
            }
            SwitchReason::Failback => "automatic failback to the recovered primary",
            SwitchReason::Manual => "manual switch-over",
        })
    }
}

/// A side was marked down after `failure_threshold` failed heartbeats in a row.
#[derive(Debug, Clone)]
pub struct SideDownEvent {
    pub(crate) side: Side,
    pub(crate) failures: u32,
    pub(crate) failing_for: Duration,
    pub(crate) error: Option<Cause>,
}

impl SideDownEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// Consecutive failed heartbeats.
    pub fn failures(&self) -> u32 {
        self.failures
    }
    /// Time since the first of those failures.
    pub fn failing_for(&self) -> Duration {
        self.failing_for
    }
    /// The last heartbeat error (`None` for a timeout).
    pub fn error(&self) -> Option<&Cause> {
        self.error.as_ref()
    }
}

/// A side answered a heartbeat again (or for the first time).
#[derive(Debug, Clone)]
pub struct SideUpEvent {
    pub(crate) side: Side,
    pub(crate) was_down: bool,
}

impl SideUpEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// Whether the side had been marked down before.
    pub fn was_down(&self) -> bool {
        self.was_down
    }
}

/// Writers moved from one side to the other.
#[derive(Debug, Clone)]
pub struct SwitchEvent {
    pub(crate) from: Side,
    pub(crate) to: Side,
    pub(crate) reason: SwitchReason,
    pub(crate) failing_for: Option<Duration>,
}

impl SwitchEvent {
    /// The side writers left.
    pub fn from(&self) -> Side {
        self.from
    }
    /// The side writers moved to.
    pub fn to(&self) -> Side {
        self.to
    }
    /// Why.
    pub fn reason(&self) -> SwitchReason {
        self.reason
    }
    /// How long the old side had been failing heartbeats, if it was.
    pub fn failing_for(&self) -> Option<Duration> {
        self.failing_for
    }
}

/// Every stale connection of a demoted side is closed.
#[derive(Debug, Clone)]
pub struct DrainEvent {
    pub(crate) side: Side,
    pub(crate) closed: u64,
    pub(crate) duration: Duration,
}

impl DrainEvent {
    /// The drained side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// Connections closed by the drain (idle at once, checked out on return).
    pub fn closed(&self) -> u64 {
        self.closed
    }
    /// Time from the switch until the last stale connection was closed.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// A heartbeat failed or timed out.
#[derive(Debug, Clone)]
pub struct HeartbeatFailureEvent {
    pub(crate) side: Side,
    pub(crate) failures: u32,
    pub(crate) error: Option<Cause>,
}

impl HeartbeatFailureEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// Consecutive failures including this one.
    pub fn failures(&self) -> u32 {
        self.failures
    }
    /// The error; `None` when the heartbeat timed out.
    pub fn error(&self) -> Option<&Cause> {
        self.error.as_ref()
    }
    /// Whether the heartbeat timed out (no answer within `heartbeat_timeout`).
    pub fn timed_out(&self) -> bool {
        self.error.is_none()
    }
}

/// The pool refused to move writers to a side, or to promote the replica they already wait
/// on (for example while it still streams from the primary).
#[derive(Debug, Clone)]
pub struct SwitchRefusedEvent {
    pub(crate) to: Side,
    pub(crate) reason: Refusal,
}

impl SwitchRefusedEvent {
    /// The side writers would have moved to (or that would have been promoted).
    pub fn to(&self) -> Side {
        self.to
    }
    /// Why the switch was refused.
    pub fn reason(&self) -> &Refusal {
        &self.reason
    }
}

/// Both sides claim to be writable primaries.
#[derive(Debug, Clone)]
pub struct SplitBrainEvent {
    pub(crate) writer: Side,
    pub(crate) fenced: Side,
}

impl SplitBrainEvent {
    /// The side the pool serves writers from (the newer primary).
    pub fn writer(&self) -> Side {
        self.writer
    }
    /// The side the pool will not send writes to.
    pub fn fenced(&self) -> Side {
        self.fenced
    }
}

/// A promotion finished.
#[derive(Debug, Clone)]
pub struct PromotionEvent {
    pub(crate) side: Side,
    pub(crate) duration: Duration,
    pub(crate) error: Option<Cause>,
}

impl PromotionEvent {
    /// The promoted side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// How long the promotion took.
    pub fn duration(&self) -> Duration {
        self.duration
    }
    /// Why it failed, if it did (`None` on success; a timeout is reported as an error too).
    pub fn error(&self) -> Option<&Cause> {
        self.error.as_ref()
    }
}

/// The pool found, on a side's heartbeat, a configuration problem that will refuse
/// failovers: a privilege the configured features need is missing, or both sides are the
/// same server. Reported once per problem, as soon as it is seen (also logged at `error`).
#[derive(Debug, Clone)]
pub struct MisconfigurationEvent {
    pub(crate) side: Side,
    pub(crate) problem: Refusal,
}

impl MisconfigurationEvent {
    /// The side whose heartbeat showed it.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The problem, as the refusal it will cause.
    pub fn problem(&self) -> &Refusal {
        &self.problem
    }
}

/// Receives failover events, on the monitor thread. Every method defaults to doing nothing.
/// Keep handlers quick: the monitor waits for them. A handler that panics is logged at
/// `error` and the pool carries on.
pub trait HandleEvent: fmt::Debug + Send + Sync + 'static {
    /// A side was marked down.
    fn handle_side_down(&self, event: SideDownEvent) {
        let _ = event;
    }
    /// A side answered heartbeats again.
    fn handle_side_up(&self, event: SideUpEvent) {
        let _ = event;
    }
    /// Writers moved to the other side.
    fn handle_switch(&self, event: SwitchEvent) {
        let _ = event;
    }
    /// A demoted side's stale connections are all closed.
    fn handle_drain(&self, event: DrainEvent) {
        let _ = event;
    }
    /// A heartbeat failed.
    fn handle_heartbeat_failure(&self, event: HeartbeatFailureEvent) {
        let _ = event;
    }
    /// A switch was refused.
    fn handle_switch_refused(&self, event: SwitchRefusedEvent) {
        let _ = event;
    }
    /// Both sides claim to be writable.
    fn handle_split_brain(&self, event: SplitBrainEvent) {
        let _ = event;
    }
    /// A promotion finished.
    fn handle_promotion(&self, event: PromotionEvent) {
        let _ = event;
    }
    /// A configuration problem was found.
    fn handle_misconfiguration(&self, event: MisconfigurationEvent) {
        let _ = event;
    }
}

/// An event handler that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NopEventHandler;

impl HandleEvent for NopEventHandler {}
