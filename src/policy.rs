//! The failover decision, as a pure state machine.
//!
//! Inputs are heartbeat outcomes, caller requests and the current instant; outputs are
//! [`Action`]s for the monitor to carry out. Nothing here does I/O, reads a clock or sleeps,
//! so every rule can be tested by feeding it a script of events (see `policy/tests.rs`).
//!
//! The rules, in the order [`Policy::decide`] applies them:
//! 1. Both sides writable: split brain. Writers go to the newer primary (higher epoch, or the
//!    side the pool promoted or followed); the other is fenced and reported.
//! 2. The active side can take writes (not down, not fenced, not a replica): serve it.
//! 3. Automatic failback (after a failover) to a primary healthy for `after`.
//! 4. Otherwise move writers to the other side if it is up and writable, unless its lag is
//!    over `max_failover_lag` or the last switch was within `min_switch_interval` (a move
//!    away from a read-only replica is never held back: nothing else can take writes).
//! 5. Otherwise, if the active side is down and the other is a live replica, move writers
//!    there at once (same gates as rule 4): the dead side is drained and new callers wait on
//!    the replica until it can take writes. Callers stuck in statements on the dead side are
//!    released (`Action::Sever`) only once writers can be served elsewhere or a promotion
//!    starts, since a side that is merely slow may still answer them.
//! 6. Then, with `promote_on_failover`, promote that replica once it confirms it lost its
//!    primary too; without it, wait for the cluster to promote it. If the old side returns
//!    writable before that, writers go back to it (rule 4, reason `Recovered`).
//! 7. Otherwise block writers and say why.
//!
//! Unknown is never the convenient answer: with a role-aware backend a side whose role no
//! heartbeat reported takes no writes; an upstream link the role could not see never
//! confirms a lost primary; a lag the backend did not report refuses a gated switch; two sides
//! that turn out to be one server are never switched between.
//!
//! Calling protocol (as quinn-proto's `Connection`): feed inputs (`on_*`, `manual_switch`),
//! each with the current instant and an output buffer; carry out every [`Action`] in order;
//! call [`Policy::on_timer`] no later than [`Policy::next_deadline`]. The runtime reads nothing
//! else back except [`Policy::may_connect`], which it asks before topping a side up.

use std::time::{Duration, Instant};

use crate::clock::after;
use crate::config::{Failback, FailoverConfig};
use crate::error::{Blocked, Refusal};
use crate::event::SwitchReason;
use crate::health::Health;
use crate::observation::{Access, Lag, Observation, Role, Upstream};
use crate::side::{PerSide, Side};

/// What the monitor must do.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// Start a heartbeat on this side.
    Probe(Side),
    /// The heartbeat in flight took longer than `heartbeat_timeout`: stop waiting for it (a
    /// late answer still counts, see [`Policy::on_late_answer`]).
    AbandonProbe(Side),
    /// The promotion in flight took longer than `promotion_timeout`: stop waiting for it.
    AbandonPromotion { side: Side, after: Duration },
    /// Promote this side to a writable primary.
    Promote(Side),
    /// Cut the connections to this side, also those in use: writers left it for a side that
    /// takes writes (or is being promoted), so callers stuck on it must be released now.
    /// Not done when writers merely wait on a replica: the old side may still come back.
    Sever(Side),
    /// Close this side's idle connections now and its checked-out ones when returned.
    Drain(Side),
    /// The side's health changed, or another heartbeat failed.
    Health {
        side: Side,
        health: Health,
        failures: u32,
        failing_for: Option<Duration>,
        was_down: bool,
        /// The failure was a heartbeat that got no answer in time (not an error).
        timed_out: bool,
    },
    /// Writers move from `from` to `to` (a `Route` follows in the same batch).
    Switch {
        from: Side,
        to: Side,
        reason: SwitchReason,
        failing_for: Option<Duration>,
    },
    /// Where `get()` is served from changed: the active side, and whether (and why) writers
    /// must wait.
    Route {
        active: Side,
        blocked: Option<Blocked>,
    },
    /// A switch (or, with `promotion`, the promotion of the side writers wait on) was refused
    /// (reported once per reason).
    Refused {
        to: Side,
        reason: Refusal,
        promotion: bool,
    },
    /// A configuration problem that will refuse failovers, found on `side`'s heartbeat
    /// (reported once each): a missing privilege, or both sides being one server.
    Misconfigured { side: Side, problem: Refusal },
    /// Both sides are writable; `fenced` gets no more writes.
    SplitBrain { writer: Side, fenced: Side },
    /// The side became saturated (refuses new connections but answers) or stopped being so.
    Saturation { side: Side, saturated: bool },
    /// A primary's commits stopped (or started again) waiting for a replica: reported when
    /// its heartbeat's `synchronous` flag changes between known values.
    Synchronous { side: Side, synchronous: bool },
    /// The fenced side or the split-brain state changed (for `status()`).
    Fencing {
        fenced: Option<Side>,
        split_brain: bool,
    },
}

/// The outcome of one heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ProbeOutcome {
    Up(Observation),
    /// The side refuses new connections but answers (on a borrowed pool connection, giving
    /// this observation, or with a "too many connections" error): full, not down.
    Saturated(Option<Observation>),
    Failed,
    /// The heartbeat could not be run (no thread for it): counts like a timeout.
    NotRun,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Probe { started: Instant },
    Promote { started: Instant },
}

#[derive(Clone, Debug)]
pub(crate) struct SideState {
    pub health: Health,
    pub failures: u32,
    failing_since: Option<Instant>,
    up_since: Option<Instant>,
    pub observation: Option<Observation>,
    observed_at: Option<Instant>,
    /// The last position this side reported while it was a writable primary: what a replica
    /// must have replayed for a switch to lose nothing.
    last_written: Option<u64>,
    op: Option<Op>,
    last_done: Option<Instant>,
    last_started: Option<Instant>,
    requested: Option<Instant>,
    saturated: bool,
    /// Every failure in the current run of failures was a timeout (no error answer).
    timeouts_only: bool,
    /// Whether its commits waited for a replica, as last reported.
    last_sync: Option<bool>,
}

impl SideState {
    fn new() -> SideState {
        SideState {
            health: Health::Unknown,
            failures: 0,
            failing_since: None,
            up_since: None,
            observation: None,
            observed_at: None,
            last_written: None,
            op: None,
            last_done: None,
            last_started: None,
            requested: None,
            saturated: false,
            timeouts_only: true,
            last_sync: None,
        }
    }

    pub(crate) fn role(&self) -> Role {
        self.observation.map(|o| o.role()).unwrap_or_default()
    }
}

enum Verification {
    Verified,
    Stale,
    Streaming,
    CannotVerify,
    Denied(&'static str),
}

/// The failover state machine. See the module docs for its rules.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    cfg: FailoverConfig,
    started: Instant,
    sides: PerSide<SideState>,
    active: Side,
    blocked: Option<Blocked>,
    last_switch: Option<Instant>,
    /// The side writers last left because it went down, while they have not returned.
    left_down: Option<Side>,
    failed_over: bool,
    fenced: Option<Side>,
    pub(crate) split_brain: bool,
    last_refusal: Option<(Side, Refusal)>,
    promoting: Option<Side>,
    last_promote: Option<Instant>,
    /// Configuration problems already reported (each once).
    reported: Vec<(Side, Refusal)>,
    /// Both sides reported the same server instance.
    same_server: bool,
    /// The routing the runtime was last told (`Action::Route`).
    published: (Side, Option<Blocked>),
}

impl Policy {
    pub(crate) fn new(cfg: FailoverConfig, now: Instant) -> Policy {
        Policy {
            cfg,
            started: now,
            sides: PerSide::new(SideState::new(), SideState::new()),
            active: Side::Primary,
            blocked: None,
            last_switch: None,
            left_down: None,
            failed_over: false,
            fenced: None,
            split_brain: false,
            last_refusal: None,
            promoting: None,
            last_promote: None,
            reported: Vec::new(),
            same_server: false,
            published: (Side::Primary, None),
        }
    }

    // ----- read-only views (tests, and `may_connect` for the runtime) -----

    #[cfg(test)]
    pub(crate) fn active(&self) -> Side {
        self.active
    }

    #[cfg(test)]
    pub(crate) fn blocked(&self) -> Option<&Blocked> {
        self.blocked.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn side(&self, side: Side) -> &SideState {
        &self.sides[side]
    }

    #[cfg(test)]
    pub(crate) fn fenced(&self) -> Option<Side> {
        self.fenced
    }

    /// Whether the runtime may open pool connections to `side` now (upkeep tops up
    /// `min_idle`): only while it answers heartbeats and is not fenced,
    /// so a dead side is not hammered with connects.
    pub(crate) fn may_connect(&self, side: Side) -> bool {
        // Not before the first heartbeat answered: its connection goes first, so the role
        // is known (and writers served) as soon as possible.
        self.sides[side].health == Health::Up && self.fenced != Some(side)
    }

    // ----- inputs -----

    /// Time passed: time out overdue operations, start due heartbeats, re-decide.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        for side in Side::BOTH {
            match self.sides[side].op {
                Some(Op::Probe { started })
                    if now >= after(started, self.cfg.heartbeat_timeout) =>
                {
                    out.push(Action::AbandonProbe(side));
                    self.record_failure(side, started, now, true, out);
                }
                Some(Op::Promote { started })
                    if now >= after(started, self.cfg.promotion_timeout) =>
                {
                    out.push(Action::AbandonPromotion {
                        side,
                        after: now.saturating_duration_since(started),
                    });
                    self.sides[side].op = None;
                    self.sides[side].requested = Some(now);
                }
                _ => {}
            }
            if let Some(due) = self.probe_due(side) {
                if now >= due {
                    let st = &mut self.sides[side];
                    st.op = Some(Op::Probe { started: now });
                    st.last_started = Some(now);
                    st.requested = None;
                    out.push(Action::Probe(side));
                }
            }
        }
        self.decide(now, out);
    }

    /// A heartbeat finished. Results for a heartbeat that was abandoned are ignored.
    pub(crate) fn on_probe_result(
        &mut self,
        side: Side,
        outcome: ProbeOutcome,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(Op::Probe { started }) = self.sides[side].op else {
            return;
        };
        let saturated = matches!(outcome, ProbeOutcome::Saturated(_));
        match outcome {
            ProbeOutcome::Up(obs) | ProbeOutcome::Saturated(Some(obs)) => {
                self.record_up(side, obs, now, out)
            }
            // Alive, but nothing new is known about it: its last observation stands.
            ProbeOutcome::Saturated(None) => {
                let st = &mut self.sides[side];
                st.op = None;
                st.last_done = Some(now);
                self.mark_up(side, now, out);
            }
            ProbeOutcome::Failed => self.record_failure(side, started, now, false, out),
            ProbeOutcome::NotRun => self.record_failure(side, started, now, true, out),
        }
        if self.sides[side].saturated != saturated {
            self.sides[side].saturated = saturated;
            out.push(Action::Saturation { side, saturated });
        }
        self.decide(now, out);
    }

    /// An abandoned heartbeat answered after all: the side is slow, not dead. Its failures
    /// are forgiven, so an overloaded server is not failed over from; a hung one never answers.
    /// The answer's content is not used: it may be older than what is known now, and with a
    /// role-aware backend the side takes no writes until a heartbeat reports its role.
    pub(crate) fn on_late_answer(&mut self, side: Side, now: Instant, out: &mut Vec<Action>) {
        let st = &mut self.sides[side];
        if st.health != Health::Suspect {
            return;
        }
        // The heartbeat in flight was queued behind the slow one: it starts only now.
        if let Some(Op::Probe { .. }) = st.op {
            st.op = Some(Op::Probe { started: now });
        }
        self.mark_up(side, now, out);
        self.decide(now, out);
    }

    /// Callers returned connections of `side` unbroken that they took after its latest
    /// heartbeat was sent: the side answers them. A side that is suspect only because its
    /// heartbeats timed out is up again, so a slow (CPU-starved) server whose callers are
    /// served never collects `failure_threshold` timeouts in a row. A hung or cut-off server
    /// completes no new work, so this never hides one; a heartbeat that got an error answer is
    /// never forgiven.
    pub(crate) fn on_progress(&mut self, side: Side, now: Instant, out: &mut Vec<Action>) {
        let st = &self.sides[side];
        // Only timeouts are forgiven: a heartbeat that got an error saw something wrong.
        if st.health == Health::Suspect && st.timeouts_only {
            self.mark_up(side, now, out);
            self.decide(now, out);
        }
    }

    /// A caller failed to connect to or validate on `side`: probe it soon.
    pub(crate) fn on_probe_requested(&mut self, side: Side, now: Instant) {
        let st = &mut self.sides[side];
        st.requested.get_or_insert(now);
    }

    /// A promotion finished (successfully or not). Either way the side is probed next, which
    /// shows whether it now takes writes (another pool may have promoted it meanwhile).
    /// Returns how long the promotion took, or `None` for a result of an abandoned one.
    pub(crate) fn on_promotion_result(
        &mut self,
        side: Side,
        ok: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Option<Duration> {
        let Some(Op::Promote { started }) = self.sides[side].op else {
            return None;
        };
        let st = &mut self.sides[side];
        st.op = None;
        st.requested = Some(now);
        // Whatever the result, no new promotion before a heartbeat interval (see
        // `try_promote`): after a success the next heartbeat (asked for now) shows the new
        // role well before that; after a failure it is the retry delay.
        let _ = ok;
        self.last_promote = Some(now);
        self.decide(now, out);
        Some(now.saturating_duration_since(started))
    }

    /// `switch_over(to)`: a planned switch. Ignores `min_switch_interval` (an operator asked)
    /// but never moves writers to a side that is down, fenced, read-only, of unknown role
    /// (role-aware backends), or the same server as the active side.
    pub(crate) fn manual_switch(
        &mut self,
        to: Side,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        if to != self.active {
            let st = &self.sides[to];
            if st.health != Health::Up {
                return Err(Refusal::TargetDown);
            }
            if self.fenced == Some(to) {
                return Err(Refusal::TargetFenced);
            }
            if self.same_server {
                return Err(Refusal::SameServer);
            }
            match self.known_writable(to) {
                Some(true) => {}
                Some(false) => return Err(Refusal::TargetReadOnly),
                None => return Err(Refusal::TargetRoleUnknown),
            }
            self.switch_to(to, SwitchReason::Manual, now, out);
            self.failed_over = false;
        }
        self.decide(now, out);
        Ok(())
    }

    /// When the monitor must call [`Policy::on_timer`] next.
    pub(crate) fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = after(now, self.cfg.heartbeat_interval);
        for side in Side::BOTH {
            let st = &self.sides[side];
            match st.op {
                Some(Op::Probe { started }) => {
                    next = next.min(after(started, self.cfg.heartbeat_timeout))
                }
                Some(Op::Promote { started }) => {
                    next = next.min(after(started, self.cfg.promotion_timeout))
                }
                None => {}
            }
            if let Some(due) = self.probe_due(side) {
                next = next.min(due);
            }
        }
        // Timers that only matter while in the future.
        let mut later = Vec::new();
        if let Some(last) = self.last_switch {
            later.push(after(last, self.cfg.min_switch_interval));
        }
        if let Some(last) = self.last_promote {
            later.push(after(last, self.cfg.heartbeat_interval));
        }
        if let (Failback::Automatic { after: wait }, Some(up)) =
            (self.cfg.failback, self.sides[Side::Primary].up_since)
        {
            later.push(after(up, wait));
        }
        for t in later {
            if t > now {
                next = next.min(t);
            }
        }
        next
    }

    // ----- bookkeeping -----

    fn probe_due(&self, side: Side) -> Option<Instant> {
        let st = &self.sides[side];
        if st.op.is_some() {
            return None;
        }
        let Some(done) = st.last_done else {
            return Some(self.started);
        };
        let mut due = after(done, self.probe_delay(side));
        if let Some(asked) = st.requested {
            // Caller requests speed probes up, but never beyond one per suspect interval.
            let earliest = st
                .last_started
                .map_or(asked, |s| after(s, self.cfg.suspect_interval).max(asked));
            due = due.min(earliest);
        }
        Some(due)
    }

    /// Healthy sides are probed every interval; suspect ones quickly, to confirm a failure
    /// fast; and while writers are blocked, every side that is not down quickly, so that a
    /// promotion (ours or an orchestrator's) is seen at once.
    fn probe_delay(&self, side: Side) -> Duration {
        match self.sides[side].health {
            Health::Suspect | Health::Unknown => self.cfg.suspect_interval,
            // The side writers left only to wait on a replica is re-checked quickly: if it
            // was merely slow, writers return as soon as it answers.
            Health::Down if self.left_down == Some(side) && self.blocked.is_some() => {
                self.cfg.suspect_interval
            }
            Health::Down => self.cfg.heartbeat_interval,
            // While writers wait, or the active side is failing, a fresh view of every live side
            // decides how soon writers move (and an orchestrator's promotion is seen at once).
            Health::Up
                if self.blocked.is_some() || self.sides[self.active].health != Health::Up =>
            {
                self.cfg.suspect_interval
            }
            Health::Up => self.cfg.heartbeat_interval,
        }
    }

    fn record_up(&mut self, side: Side, obs: Observation, now: Instant, out: &mut Vec<Action>) {
        if let Some(now_sync) = obs.replication().and_then(|r| r.synchronous) {
            // Compared with the last known value: an unknown in between says nothing.
            let before = self.sides[side].last_sync.replace(now_sync);
            if before.is_some_and(|b| b != now_sync) {
                out.push(Action::Synchronous {
                    side,
                    synchronous: now_sync,
                });
            }
        }
        let st = &mut self.sides[side];
        st.op = None;
        st.last_done = Some(now);
        st.observation = Some(obs);
        st.observed_at = Some(now);
        if obs.role() == Role::Writable {
            if let Some(pos) = obs.replication().and_then(|r| r.position) {
                st.last_written = Some(pos);
            }
        }
        self.mark_up(side, now, out);
        self.check_configuration(side, out);
    }

    /// Reports, once each, what a fresh heartbeat shows will refuse failovers later: so an
    /// operator hears of a missing grant at start-up, not during the outage.
    fn check_configuration(&mut self, side: Side, out: &mut Vec<Action>) {
        let Some(obs) = self.sides[side].observation else {
            return;
        };
        let mut problems = Vec::new();
        let privileges = obs.privileges();
        if self.cfg.promote_on_failover {
            if let Access::Denied(what) = privileges.promote {
                problems.push(Refusal::MissingPrivilege { side, what });
            }
            if self.cfg.verify_primary_failure {
                if let Access::Denied(what) = privileges.replication_status {
                    problems.push(Refusal::MissingPrivilege { side, what });
                }
            }
        }
        let identity = |s: Side| {
            self.sides[s]
                .observation
                .and_then(|o| o.identity())
                .map(|i| i.instance)
        };
        if let (Some(a), Some(b)) = (identity(side), identity(side.other())) {
            self.same_server = a == b;
            if self.same_server {
                problems.push(Refusal::SameServer);
            }
        }
        for problem in problems {
            let key = (side, problem);
            if !self.reported.contains(&key) {
                out.push(Action::Misconfigured {
                    side,
                    problem: key.1.clone(),
                });
                self.reported.push(key);
            }
        }
    }

    fn mark_up(&mut self, side: Side, now: Instant, out: &mut Vec<Action>) {
        let st = &mut self.sides[side];
        st.failures = 0;
        st.failing_since = None;
        if st.health != Health::Up {
            let was_down = st.health == Health::Down;
            st.health = Health::Up;
            st.up_since = Some(now);
            out.push(Action::Health {
                side,
                health: Health::Up,
                failures: 0,
                failing_for: None,
                was_down,
                timed_out: false,
            });
        }
    }

    fn record_failure(
        &mut self,
        side: Side,
        started: Instant,
        now: Instant,
        timed_out: bool,
        out: &mut Vec<Action>,
    ) {
        let threshold = self.cfg.failure_threshold;
        let st = &mut self.sides[side];
        st.op = None;
        st.last_done = Some(now);
        st.timeouts_only = timed_out && (st.failures == 0 || st.timeouts_only);
        st.failures = st.failures.saturating_add(1);
        let since = *st.failing_since.get_or_insert(started);
        st.up_since = None;
        let health = if st.failures >= threshold {
            Health::Down
        } else {
            Health::Suspect
        };
        // Every failure is reported (as a heartbeat failure); the health change only once.
        out.push(Action::Health {
            side,
            health,
            failures: st.failures,
            failing_for: Some(now.saturating_duration_since(since)),
            was_down: st.health == Health::Down,
            timed_out,
        });
        st.health = health;
    }

    fn switch_to(&mut self, to: Side, reason: SwitchReason, now: Instant, out: &mut Vec<Action>) {
        let from = self.active;
        let failing_for = self.sides[from]
            .failing_since
            .map(|t| now.saturating_duration_since(t));
        self.active = to;
        self.last_switch = Some(now);
        self.left_down = (reason == SwitchReason::Failover).then_some(from);
        self.failed_over = to == Side::Mirror && reason != SwitchReason::Manual;
        out.push(Action::Switch {
            from,
            to,
            reason,
            failing_for,
        });
        let cut = match reason {
            SwitchReason::SplitBrain | SwitchReason::NewerPrimary => true,
            // Waiting on a replica is not yet a failover: a slow primary may still answer.
            SwitchReason::Failover => self.role(to) != Role::ReadOnly,
            _ => false,
        };
        if cut {
            out.push(Action::Sever(from));
        }
        // Drained when writers leave for good. Not while they only wait on a replica: a
        // primary that was merely slow gets them back with its connections warm (they are
        // drained when the replica is promoted and the old side fenced). Nor when they return
        // from a replica they only waited on: it took no writes.
        let waiting = reason == SwitchReason::Failover && self.role(to) == Role::ReadOnly;
        if !waiting && reason != SwitchReason::Recovered {
            out.push(Action::Drain(from));
        }
    }

    // ----- the decision -----

    /// Re-evaluates where writers go. Called after every input.
    fn decide(&mut self, now: Instant, out: &mut Vec<Action>) {
        let fencing = (self.fenced, self.split_brain);
        self.check_split_brain(now, out);
        let blocked = self.choose(now, out);
        if !matches!(blocked, Some(Blocked::Refused(_))) {
            self.last_refusal = None;
        }
        self.blocked = blocked;
        if (self.fenced, self.split_brain) != fencing {
            out.push(Action::Fencing {
                fenced: self.fenced,
                split_brain: self.split_brain,
            });
        }
        let routing = (self.active, self.blocked.clone());
        if routing != self.published {
            out.push(Action::Route {
                active: routing.0,
                blocked: routing.1.clone(),
            });
            self.published = routing;
        }
    }

    fn role(&self, side: Side) -> Role {
        self.sides[side].role()
    }

    /// Whether `side`'s role takes writes: `None` when not known. A backend that reports no
    /// roles (up/down only) counts every side as writable.
    fn known_writable(&self, side: Side) -> Option<bool> {
        match self.role(side) {
            Role::Writable => Some(true),
            Role::ReadOnly => Some(false),
            Role::Unknown if !self.cfg.capabilities.roles => Some(true),
            Role::Unknown => None,
        }
    }

    fn check_split_brain(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (p, m) = (Side::Primary, Side::Mirror);
        let health = |s: Side| self.sides[s].health;
        let live = |s: Side| matches!(health(s), Health::Up | Health::Suspect);
        // One server configured twice is writable "on both sides" without any split brain.
        if !self.same_server
            && self.role(p) == Role::Writable
            && self.role(m) == Role::Writable
            && live(p)
            && live(m)
        {
            let epoch = |s: Side| self.sides[s].observation.and_then(|o| o.epoch());
            let writer = match (epoch(p), epoch(m)) {
                (Some(x), Some(y)) if x != y => {
                    if x > y {
                        p
                    } else {
                        m
                    }
                }
                _ if self.fenced == Some(self.active) => self.active.other(),
                _ => self.active,
            };
            let fenced = writer.other();
            self.fenced = Some(fenced);
            // Only two fresh answers prove two live primaries; a suspect side's claim may be
            // from before it died (then a newer primary simply supersedes it).
            let proven = health(p) == Health::Up && health(m) == Health::Up;
            if proven && !self.split_brain {
                self.split_brain = true;
                out.push(Action::SplitBrain { writer, fenced });
            }
            if self.active != writer {
                // Safety over rate limits: never keep writing to the older primary.
                let reason = if proven {
                    SwitchReason::SplitBrain
                } else {
                    SwitchReason::NewerPrimary
                };
                self.switch_to(writer, reason, now, out);
            }
            return;
        }
        self.split_brain = false;
        // A fenced old primary that came back as a replica is safe again.
        if let Some(f) = self.fenced {
            let st = &self.sides[f];
            if st.health == Health::Up && st.role() == Role::ReadOnly {
                self.fenced = None;
            }
        }
    }

    /// Whether writers can be served from `side` right now.
    fn takes_writes(&self, side: Side) -> bool {
        let st = &self.sides[side];
        st.health != Health::Down
            && self.fenced != Some(side)
            && match self.known_writable(side) {
                // A side being promoted must show it is writable first.
                Some(true) => self.promoting != Some(side) || st.role() == Role::Writable,
                Some(false) | None => false,
            }
    }

    /// Whether writers may move to `side`: it answered its last heartbeat, is not fenced and
    /// is not the active side's server under another name.
    fn may_move_to(&self, side: Side) -> bool {
        self.sides[side].health == Health::Up && self.fenced != Some(side) && !self.same_server
    }

    fn choose(&mut self, now: Instant, out: &mut Vec<Action>) -> Option<Blocked> {
        let a = self.active;
        let b = a.other();
        let a_down = self.sides[a].health == Health::Down;

        if self.takes_writes(a) {
            if self.promoting == Some(a) && self.role(a) == Role::Writable {
                self.promoting = None;
            }
            // Writers reached a primary after leaving a dead one that was a primary too (the
            // cluster promoted this side): the old one must never get writes again unless it
            // rejoins as a replica.
            if self.left_down == Some(b)
                && self.fenced != Some(b)
                && self.role(a) == Role::Writable
                && self.role(b) == Role::Writable
                && self.sides[b].health == Health::Down
            {
                self.fenced = Some(b);
                out.push(Action::Sever(b));
                out.push(Action::Drain(b));
            }
            if let Some(back) = self.failback_due(now) {
                self.switch_to(back, SwitchReason::Failback, now, out);
            }
            return None;
        }

        // Writers can't stay on `a`. Move to `b` if it takes writes as it is; or, when `a` is
        // down, also if `b` is a live replica: then new callers wait where the next primary
        // will be instead of queueing on a server that may never answer. A side whose role no
        // heartbeat reported yet is neither.
        let b_role = self.known_writable(b);
        let b_takes_writes = b_role == Some(true);
        if self.may_move_to(b) && b_role.is_some() && (b_takes_writes || a_down) {
            if a_down {
                if let Some(r) = self.lag_refusal(b) {
                    return self.refuse(b, r, false, out);
                }
            }
            let fenced_a = self.fenced == Some(a);
            // Holding writers on a read-only replica while a primary is up helps nobody.
            let replica_to_primary = self.role(a) == Role::ReadOnly && b_takes_writes;
            if !fenced_a && !replica_to_primary && !self.interval_passed(now) {
                return self.refuse(b, Refusal::TooSoon, false, out);
            }
            let reason = if a_down {
                SwitchReason::Failover
            } else if fenced_a {
                SwitchReason::SplitBrain
            } else if self.left_down == Some(b) && replica_to_primary {
                SwitchReason::Recovered
            } else {
                SwitchReason::RoleChange
            };
            // After a real promotion (the target is a known writable primary) the old primary
            // is fenced: it must never get writes again unless it rejoins as a replica.
            if a_down && self.role(b) == Role::Writable && self.role(a) == Role::Writable {
                self.fenced = Some(a);
            }
            self.switch_to(b, reason, now, out);
            if b_takes_writes {
                return None;
            }
        } else if a_down && self.same_server && self.sides[b].health == Health::Up {
            return self.refuse(b, Refusal::SameServer, false, out);
        }
        // Writers now wait on a replica (or could not move): promote it, or say why not.
        let a = self.active;
        let b = a.other();
        let a_down = self.sides[a].health == Health::Down;

        if self.cfg.promote_on_failover {
            for cand in [a, b] {
                if let Some(blocked) = self.try_promote(cand, now, out) {
                    return Some(blocked);
                }
            }
        }

        if a_down && self.sides[b].health == Health::Down {
            Some(Blocked::BothDown)
        } else if !a_down
            && self.sides[b].health != Health::Down
            && (self.known_writable(a).is_none() || self.known_writable(b).is_none())
        {
            // Not "no side accepts writes": a live side's role is not known yet (start-up, or
            // only late answers), so it may well take writes once a heartbeat says so.
            Some(Blocked::RolesUnknown)
        } else {
            Some(Blocked::NoWritableSide)
        }
    }

    /// Promotes `cand` if it is a live replica whose peer is down and the failure is verified.
    /// Returns what blocks writers meanwhile, or `None` if `cand` is no candidate.
    fn try_promote(&mut self, cand: Side, now: Instant, out: &mut Vec<Action>) -> Option<Blocked> {
        let peer = cand.other();
        let st = &self.sides[cand];
        if st.health != Health::Up
            || st.role() != Role::ReadOnly
            || self.fenced == Some(cand)
            || self.sides[peer].health != Health::Down
        {
            return None;
        }
        if self.same_server {
            return self.refuse(cand, Refusal::SameServer, true, out);
        }
        if let Access::Denied(what) = st.observation.map(|o| o.privileges().promote)? {
            return self.refuse(
                cand,
                Refusal::MissingPrivilege { side: cand, what },
                true,
                out,
            );
        }
        if let Some(r) = self.lag_refusal(cand) {
            return self.refuse(cand, r, true, out);
        }
        match self.verify_peer_lost(cand, peer) {
            Verification::Verified => {}
            Verification::Stale => {
                self.sides[cand].requested.get_or_insert(now);
                return Some(Blocked::ConfirmingFailure(cand));
            }
            Verification::Streaming => {
                return self.refuse(cand, Refusal::PrimaryStillStreaming, true, out)
            }
            Verification::CannotVerify => {
                return self.refuse(cand, Refusal::CannotVerify, true, out)
            }
            Verification::Denied(what) => {
                let r = Refusal::MissingPrivilege { side: cand, what };
                return self.refuse(cand, r, true, out);
            }
        }
        if cand != self.active {
            if !self.interval_passed(now) {
                return self.refuse(cand, Refusal::TooSoon, false, out);
            }
            self.switch_to(cand, SwitchReason::Failover, now, out);
        }
        // The old primary must never get writes again unless it rejoins as a replica.
        if self.fenced != Some(peer) {
            self.fenced = Some(peer);
            out.push(Action::Sever(peer));
            out.push(Action::Drain(peer));
        }
        self.promoting = Some(cand);
        let retry_ok = self
            .last_promote
            .is_none_or(|t| now >= after(t, self.cfg.heartbeat_interval));
        if self.sides[cand].op.is_none() && retry_ok {
            self.sides[cand].op = Some(Op::Promote { started: now });
            self.last_promote = Some(now);
            out.push(Action::Promote(cand));
        }
        Some(Blocked::Promoting(cand))
    }

    fn verify_peer_lost(&self, cand: Side, peer: Side) -> Verification {
        if !self.cfg.verify_primary_failure {
            return Verification::Verified;
        }
        let st = &self.sides[cand];
        // Only an observation made after the peer started failing says anything about it.
        let fresh = match (st.observed_at, self.sides[peer].failing_since) {
            (Some(seen), Some(failing)) => seen >= failing,
            _ => false,
        };
        if !fresh {
            return Verification::Stale;
        }
        let Some(obs) = st.observation else {
            return Verification::Stale;
        };
        let upstream = obs.replication().and_then(|r| r.upstream);
        let unseen = || match obs.privileges().replication_status {
            Access::Denied(what) => Verification::Denied(what),
            _ => Verification::CannotVerify,
        };
        match upstream {
            None => unseen(),
            Some(u) if u.streaming == Some(false) => Verification::Verified,
            // The link looks up (or could not be seen), but the replica has heard nothing
            // for longer than a live primary may stay quiet: lost.
            Some(u) if u.silence.is_some_and(|s| s > self.silence_bound(&u)) => {
                Verification::Verified
            }
            Some(u) if u.streaming.is_none() => unseen(),
            Some(_) => Verification::Streaming,
        }
    }

    /// How long the mirror must have heard nothing for its primary to count as lost: never less
    /// than the replica's own keep-alive bound, since a live idle primary may be that quiet.
    fn silence_bound(&self, u: &Upstream) -> Duration {
        match u.max_quiet {
            Some(q) => q.max(self.cfg.primary_silence_bound),
            None => self.cfg.primary_silence_bound,
        }
    }

    /// The lag gate for moving writers to (or promoting) `to` while the other side is down.
    /// Computed from fresh observations of `to`, never from the dead side's last report of
    /// its replica: for bytes, the dead side's last written position against what `to` has
    /// replayed now; for time and transactions, `to`'s own lag. Unknown refuses.
    fn lag_refusal(&self, to: Side) -> Option<Refusal> {
        let limit = self.cfg.max_failover_lag?;
        if self.cfg.allow_data_loss {
            return None;
        }
        let repl = self.sides[to]
            .observation
            .and_then(|o| o.replication().copied());
        let lag = match limit {
            Lag::Bytes(_) => {
                let written = self.sides[to.other()].last_written;
                let replayed = repl.and_then(|r| r.position);
                match (written, replayed) {
                    (Some(w), Some(r)) => Some(Lag::Bytes(w.saturating_sub(r))),
                    _ => None,
                }
            }
            Lag::Time(_) => repl.and_then(|r| r.lag_time).map(Lag::Time),
            // Positions count transactions for such a backend: the dead side's last written one
            // against what `to` has applied now; else `to`'s own unapplied transactions.
            Lag::Transactions(_) => {
                let written = self.sides[to.other()].last_written;
                match (written, repl.and_then(|r| r.position)) {
                    (Some(w), Some(r)) => Some(Lag::Transactions(w.saturating_sub(r))),
                    _ => repl.and_then(|r| r.lag_transactions).map(Lag::Transactions),
                }
            }
        };
        match lag {
            None => Some(Refusal::LagUnknown { limit }),
            Some(lag) if lag > limit => Some(Refusal::LagTooHigh { lag, limit }),
            Some(_) => None,
        }
    }

    fn interval_passed(&self, now: Instant) -> bool {
        self.last_switch
            .is_none_or(|t| now >= after(t, self.cfg.min_switch_interval))
    }

    fn failback_due(&self, now: Instant) -> Option<Side> {
        let Failback::Automatic { after: wait } = self.cfg.failback else {
            return None;
        };
        let p = &self.sides[Side::Primary];
        let due = self.active == Side::Mirror
            && self.failed_over
            && p.health == Health::Up
            && self.known_writable(Side::Primary) == Some(true)
            && self.fenced != Some(Side::Primary)
            && !self.same_server
            && p.up_since.is_some_and(|t| now >= after(t, wait))
            && self.interval_passed(now);
        due.then_some(Side::Primary)
    }

    fn refuse(
        &mut self,
        to: Side,
        reason: Refusal,
        promotion: bool,
        out: &mut Vec<Action>,
    ) -> Option<Blocked> {
        let key = (to, reason.clone());
        if self.last_refusal.as_ref() != Some(&key) {
            out.push(Action::Refused {
                to,
                reason: reason.clone(),
                promotion,
            });
            self.last_refusal = Some(key);
        }
        Some(Blocked::Refused(reason))
    }
}

#[cfg(test)]
mod tests;
