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
    pub(crate) promotion: bool,
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
    /// Whether what was refused is promoting the side writers already wait on (rather than
    /// moving writers to it).
    pub fn promotion(&self) -> bool {
        self.promotion
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

/// A side's heartbeats can connect again, or cannot because the server refuses new
/// connections ("too many connections") while it still answers on the connections the pool
/// has: a full server, not a dead one. Writers stay; logged at `warn`.
#[derive(Debug, Clone)]
pub struct SaturationEvent {
    pub(crate) side: Side,
    pub(crate) saturated: bool,
}

impl SaturationEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// Whether it is saturated now (`false`: it accepts connections again).
    pub fn saturated(&self) -> bool {
        self.saturated
    }
}

/// A primary's commits stopped waiting for its replica (semi-synchronous replication fell
/// back to asynchronous, e.g. after `rpl_semi_sync_master_timeout`), or started again. While
/// they do not, a failover can lose acknowledged writes. Logged at `warn`.
#[derive(Debug, Clone)]
pub struct SynchronousEvent {
    pub(crate) side: Side,
    pub(crate) synchronous: bool,
}

impl SynchronousEvent {
    /// The primary's side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// Whether commits wait for the replica again (`false`: they stopped).
    pub fn synchronous(&self) -> bool {
        self.synchronous
    }
}

/// A pool connection was opened (r2d2's `AcquireEvent`).
#[derive(Debug, Clone)]
pub struct AcquireEvent {
    pub(crate) side: Side,
    pub(crate) connection_id: u64,
}

impl AcquireEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The connection's id (as `PooledConnection::id`).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
}

/// A pool connection was closed (r2d2's `ReleaseEvent`).
#[derive(Debug, Clone)]
pub struct ReleaseEvent {
    pub(crate) side: Side,
    pub(crate) connection_id: u64,
    pub(crate) age: Duration,
}

impl ReleaseEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The connection's id.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
    /// How long the connection existed (on the pool's coarse clock: to within a heartbeat
    /// interval).
    pub fn age(&self) -> Duration {
        self.age
    }
}

/// A connection was checked out (r2d2's `CheckoutEvent`).
#[derive(Debug, Clone)]
pub struct CheckoutEvent {
    pub(crate) side: Side,
    pub(crate) connection_id: u64,
    pub(crate) duration: Duration,
}

impl CheckoutEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The connection's id.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
    /// How long the caller waited for it; zero when an idle connection was at hand (that
    /// path reads no clock).
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// A connection was returned (r2d2's `CheckinEvent`).
#[derive(Debug, Clone)]
pub struct CheckinEvent {
    pub(crate) side: Side,
    pub(crate) connection_id: u64,
    pub(crate) duration: Duration,
}

impl CheckinEvent {
    /// The side.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The connection's id.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
    /// How long it was checked out.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// A `get()` timed out (r2d2's `TimeoutEvent`).
#[derive(Debug, Clone)]
pub struct TimeoutEvent {
    pub(crate) side: Option<Side>,
    pub(crate) timeout: Duration,
}

impl TimeoutEvent {
    /// The side the caller waited on; `None` when no side could serve writers.
    pub fn side(&self) -> Option<Side> {
        self.side
    }
    /// The timeout that passed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Every event the pool reports, for a handler that wants them all in one place
/// ([`HandleEvent::handle`]), e.g. to feed metrics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// See [`SideDownEvent`].
    SideDown(SideDownEvent),
    /// See [`SideUpEvent`].
    SideUp(SideUpEvent),
    /// See [`SwitchEvent`].
    Switch(SwitchEvent),
    /// See [`DrainEvent`].
    Drain(DrainEvent),
    /// See [`HeartbeatFailureEvent`].
    HeartbeatFailure(HeartbeatFailureEvent),
    /// See [`SwitchRefusedEvent`].
    SwitchRefused(SwitchRefusedEvent),
    /// See [`SplitBrainEvent`].
    SplitBrain(SplitBrainEvent),
    /// See [`PromotionEvent`].
    Promotion(PromotionEvent),
    /// See [`MisconfigurationEvent`].
    Misconfiguration(MisconfigurationEvent),
    /// See [`SaturationEvent`].
    Saturation(SaturationEvent),
    /// See [`SynchronousEvent`].
    Synchronous(SynchronousEvent),
    /// See [`AcquireEvent`].
    Acquire(AcquireEvent),
    /// See [`ReleaseEvent`].
    Release(ReleaseEvent),
    /// See [`CheckoutEvent`].
    Checkout(CheckoutEvent),
    /// See [`CheckinEvent`].
    Checkin(CheckinEvent),
    /// See [`TimeoutEvent`].
    Timeout(TimeoutEvent),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = |e: &Option<Cause>| e.as_ref().map(|c| format!(": {}", c.chain()));
        match self {
            Event::SideDown(e) => write!(
                f,
                "the {} is down after {} failed heartbeats ({:?}){}",
                e.side,
                e.failures,
                e.failing_for,
                chain(&e.error).unwrap_or_default()
            ),
            Event::SideUp(e) => write!(f, "the {} is up", e.side),
            Event::Switch(e) => write!(
                f,
                "writers moved from the {} to the {}: {}",
                e.from, e.to, e.reason
            ),
            Event::Drain(e) => write!(
                f,
                "drained the {}: {} connections closed in {:?}",
                e.side, e.closed, e.duration
            ),
            Event::HeartbeatFailure(e) => write!(
                f,
                "heartbeat of the {} failed ({} in a row){}",
                e.side,
                e.failures,
                chain(&e.error).unwrap_or_else(|| ": no answer in time".into())
            ),
            Event::SwitchRefused(e) if e.promotion => {
                write!(f, "not promoting the {}: {}", e.to, e.reason)
            }
            Event::SwitchRefused(e) => {
                write!(f, "not moving writers to the {}: {}", e.to, e.reason)
            }
            Event::SplitBrain(e) => write!(
                f,
                "split brain: writers on the {}, the {} is fenced",
                e.writer, e.fenced
            ),
            Event::Promotion(e) => match &e.error {
                None => write!(f, "promoted the {} in {:?}", e.side, e.duration),
                Some(c) => write!(
                    f,
                    "promoting the {} failed after {:?}: {}",
                    e.side,
                    e.duration,
                    c.chain()
                ),
            },
            Event::Misconfiguration(e) => {
                write!(f, "configuration problem on the {}: {}", e.side, e.problem)
            }
            Event::Saturation(e) if e.saturated => write!(
                f,
                "the {} refuses new connections but answers on open ones: saturated, not down",
                e.side
            ),
            Event::Saturation(e) => write!(f, "the {} accepts connections again", e.side),
            Event::Synchronous(e) if e.synchronous => {
                write!(f, "the {}'s commits wait for its replica again", e.side)
            }
            Event::Synchronous(e) => write!(
                f,
                "the {}'s commits no longer wait for its replica: a failover can now lose acknowledged writes",
                e.side
            ),
            Event::Acquire(e) => write!(f, "opened {} connection {}", e.side, e.connection_id),
            Event::Release(e) => write!(
                f,
                "closed {} connection {} after {:?}",
                e.side, e.connection_id, e.age
            ),
            Event::Checkout(e) => write!(
                f,
                "checked out {} connection {} after {:?}",
                e.side, e.connection_id, e.duration
            ),
            Event::Checkin(e) => write!(
                f,
                "returned {} connection {} after {:?}",
                e.side, e.connection_id, e.duration
            ),
            Event::Timeout(e) => match e.side {
                Some(side) => write!(f, "get() timed out after {:?} on the {side}", e.timeout),
                None => write!(
                    f,
                    "get() timed out after {:?}: no side could serve",
                    e.timeout
                ),
            },
        }
    }
}

/// Receives the pool's events. Every method defaults to doing nothing but
/// [`handle`](HandleEvent::handle), which the pool calls for every event and which by default
/// passes it to the per-kind method: override `handle` to see everything in one place, or
/// the per-kind methods (r2d2's names for the per-connection ones).
///
/// Failover events come from the monitor thread, per-connection ones from the thread that
/// opened, checked out, returned or closed the connection. Keep handlers quick. A handler that
/// panics is logged at `error` and the pool carries on. Several handlers may be installed
/// (`Builder::event_handler` adds one each call); each gets every event.
///
/// Per-connection events cost a clock read per checkout and return, paid only when at least
/// one handler is installed.
pub trait HandleEvent: fmt::Debug + Send + Sync + 'static {
    /// Every event. Default: passes it to the per-kind method below.
    fn handle(&self, event: Event) {
        match event {
            Event::SideDown(e) => self.handle_side_down(e),
            Event::SideUp(e) => self.handle_side_up(e),
            Event::Switch(e) => self.handle_switch(e),
            Event::Drain(e) => self.handle_drain(e),
            Event::HeartbeatFailure(e) => self.handle_heartbeat_failure(e),
            Event::SwitchRefused(e) => self.handle_switch_refused(e),
            Event::SplitBrain(e) => self.handle_split_brain(e),
            Event::Promotion(e) => self.handle_promotion(e),
            Event::Misconfiguration(e) => self.handle_misconfiguration(e),
            Event::Saturation(e) => self.handle_saturation(e),
            Event::Synchronous(e) => self.handle_synchronous(e),
            Event::Acquire(e) => self.handle_acquire(e),
            Event::Release(e) => self.handle_release(e),
            Event::Checkout(e) => self.handle_checkout(e),
            Event::Checkin(e) => self.handle_checkin(e),
            Event::Timeout(e) => self.handle_timeout(e),
        }
    }
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
    /// A side became saturated (refuses new connections) or stopped being so.
    fn handle_saturation(&self, event: SaturationEvent) {
        let _ = event;
    }
    /// A primary's replication became asynchronous (or synchronous again).
    fn handle_synchronous(&self, event: SynchronousEvent) {
        let _ = event;
    }
    /// A pool connection was opened.
    fn handle_acquire(&self, event: AcquireEvent) {
        let _ = event;
    }
    /// A pool connection was closed.
    fn handle_release(&self, event: ReleaseEvent) {
        let _ = event;
    }
    /// A connection was checked out.
    fn handle_checkout(&self, event: CheckoutEvent) {
        let _ = event;
    }
    /// A connection was returned.
    fn handle_checkin(&self, event: CheckinEvent) {
        let _ = event;
    }
    /// A `get()` timed out.
    fn handle_timeout(&self, event: TimeoutEvent) {
        let _ = event;
    }
}

/// An event handler that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NopEventHandler;

impl HandleEvent for NopEventHandler {}
