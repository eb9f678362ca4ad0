//! The monitor thread: the thin runtime around the failover [`Policy`].
//!
//! It owns the clock and the I/O the policy must not do: it feeds heartbeat results, caller
//! requests and timer ticks to the policy and carries out the actions it returns (start or
//! abandon probes, switch routing, drain, promote, emit events and logs). It also does the
//! sub-pools' upkeep (idle timeout, lifetime, `min_idle`).

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use r2d2::ManageConnection;

use crate::error::{Cause, Refusal};
use crate::event::{
    DrainEvent, HeartbeatFailureEvent, PromotionEvent, SideDownEvent, SideUpEvent, SplitBrainEvent,
    SwitchEvent, SwitchReason, SwitchRefusedEvent,
};
use crate::health::Health;
use crate::policy::{Action, Policy, ProbeOutcome};
use crate::pool::Shared;
use crate::prober::{Prober, Reply};
use crate::side::{PerSide, Side};
use crate::status::SwitchRecord;
use crate::subpool::close_in_background;

/// Requests to the monitor.
pub(crate) enum Command {
    /// Probe this side soon (a caller saw it fail).
    ProbeNow(Side),
    /// Move writers to this side (`switch_over`).
    Switch(Side, Sender<Result<(), Refusal>>),
    /// The last pool handle is gone.
    Shutdown,
}

/// A drain in progress: stale connections of `side` still checked out.
struct Drain {
    started: Instant,
    closed: u64,
}

struct Monitor<M: ManageConnection> {
    shared: Arc<Shared<M>>,
    policy: Policy,
    probers: PerSide<Prober<M>>,
    promote_started: PerSide<Option<Instant>>,
    drains: PerSide<Option<Drain>>,
    /// The last heartbeat failure of this side was a timeout (set by `Abandon`).
    timed_out: PerSide<bool>,
    next_upkeep: Instant,
}

pub(crate) fn spawn<M: ManageConnection>(
    shared: Arc<Shared<M>>,
    commands: Receiver<Command>,
    now: Instant,
) -> std::io::Result<JoinHandle<()>> {
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    let prober = |side: Side| {
        Prober::new(
            side,
            shared.sides[side].manager.clone(),
            shared.backend.clone(),
            shared.config.heartbeat_timeout,
            shared.config.promotion_timeout,
            reply_tx.clone(),
        )
    };
    let monitor = Monitor {
        policy: Policy::new(shared.config.clone(), now),
        probers: PerSide::new(prober(Side::Primary), prober(Side::Mirror)),
        promote_started: PerSide::default(),
        drains: PerSide::new(None, None),
        timed_out: PerSide::default(),
        next_upkeep: now,
        shared,
    };
    drop(reply_tx);
    thread::Builder::new()
        .name("mirrorpool-monitor".into())
        .spawn(move || monitor.run(commands, reply_rx))
}

impl<M: ManageConnection> Monitor<M> {
    fn run(mut self, commands: Receiver<Command>, replies: Receiver<Reply>) {
        let mut actions = Vec::new();
        loop {
            let now = Instant::now();
            self.shared.clock.advance(now);
            self.policy.on_timer(now, &mut actions);
            self.apply(&mut actions, now);
            if now >= self.next_upkeep {
                self.upkeep(now);
                self.next_upkeep = now + self.shared.config.heartbeat_interval;
            }
            let wake = self.policy.next_deadline(now).min(self.next_upkeep);
            let wait = wake.saturating_duration_since(Instant::now());
            select! {
                recv(commands) -> cmd => match cmd {
                    Ok(Command::ProbeNow(side)) => self.policy.on_probe_requested(side, Instant::now()),
                    Ok(Command::Switch(to, reply)) => {
                        let now = Instant::now();
                        let result = self.policy.manual_switch(to, now, &mut actions);
                        self.apply(&mut actions, now);
                        let _ = reply.send(result);
                    }
                    Ok(Command::Shutdown) | Err(_) => break,
                },
                recv(replies) -> reply => {
                    if let Ok(reply) = reply {
                        self.on_reply(reply, &mut actions);
                    }
                }
                default(wait) => {}
            }
        }
        self.shutdown();
    }

    fn on_reply(&mut self, reply: Reply, actions: &mut Vec<Action>) {
        let now = Instant::now();
        match reply {
            Reply::Probe {
                side,
                seq,
                result,
                rtt,
            } => {
                if seq != self.probers[side].current() {
                    // From an abandoned probe: an answer, however late, shows the side lives.
                    if result.is_ok() {
                        log::debug!("late heartbeat answer from the {side} after {rtt:?}");
                        self.policy.on_late_answer(side, now, actions);
                        self.apply(actions, now);
                    }
                    return;
                }
                let outcome = {
                    let mut view = self.shared.view.lock();
                    let s = view.side_mut(side);
                    s.last_heartbeat = Some(now);
                    match result {
                        Ok(obs) => {
                            log::trace!("heartbeat {side}: up ({:?}) in {rtt:?}", obs.role());
                            s.last_rtt = Some(rtt);
                            s.observe(&obs);
                            ProbeOutcome::Up(obs)
                        }
                        Err(cause) => {
                            log::trace!("heartbeat {side}: failed: {}", cause.chain());
                            s.last_error = Some(cause);
                            ProbeOutcome::Failed
                        }
                    }
                };
                self.policy.on_probe_result(side, outcome, now, actions);
            }
            Reply::Promote { side, seq, result } => {
                if seq != self.probers[side].current() {
                    return;
                }
                let started = self.promote_started[side].take().unwrap_or(now);
                let duration = now.saturating_duration_since(started);
                let ok = result.is_ok();
                match &result {
                    Ok(()) => log::warn!("promoted the {side} to primary in {duration:?}"),
                    Err(e) => log::error!(
                        "promoting the {side} failed after {duration:?}: {}",
                        e.chain()
                    ),
                }
                self.shared.events.handle_promotion(PromotionEvent {
                    side,
                    duration,
                    error: result.err(),
                });
                self.policy.on_promotion_result(side, ok, now, actions);
            }
        }
        self.apply(actions, now);
    }

    fn apply(&mut self, actions: &mut Vec<Action>, now: Instant) {
        for action in actions.drain(..) {
            match action {
                Action::Probe(side) => self.probers[side].probe(),
                Action::Abandon(side) => {
                    log::debug!("abandoning a hung heartbeat or promotion on the {side}");
                    self.probers[side].abandon();
                    if self.promote_started[side].is_none() {
                        self.timed_out[side] = true;
                        let timeout = self.shared.config.heartbeat_timeout;
                        let mut view = self.shared.view.lock();
                        let s = view.side_mut(side);
                        s.last_error = Some(Cause::new(format!(
                            "no heartbeat answer within {timeout:?}"
                        )));
                    }
                    if let Some(started) = self.promote_started[side].take() {
                        let duration = now.saturating_duration_since(started);
                        log::error!("promoting the {side} timed out after {duration:?}");
                        self.shared.events.handle_promotion(PromotionEvent {
                            side,
                            duration,
                            error: Some(Cause::new("promotion timed out")),
                        });
                    }
                }
                Action::Sever(side) => {
                    // Callers blocked on the abandoned side would otherwise wait for it
                    // (planned switches let statements in flight finish: no sever).
                    let n = self.shared.backend.sever(&self.shared.sides[side].manager);
                    if n > 0 {
                        log::warn!("severed {n} connections to the {side}");
                    }
                }
                Action::Promote(side) => {
                    log::warn!("promoting the {side} to primary");
                    self.promote_started[side] = Some(now);
                    self.probers[side].promote();
                }
                Action::Health {
                    side,
                    health,
                    failures,
                    failing_for,
                    was_down,
                } => self.on_health(side, health, failures, failing_for, was_down),
                Action::Switch {
                    from,
                    to,
                    reason,
                    failing_for,
                } => self.on_switch(from, to, reason, failing_for, now),
                Action::Route { active, blocked } => {
                    match &blocked {
                        Some(b) => log::warn!("writers wait: {b}"),
                        None => log::info!("serving writers from the {active}"),
                    }
                    self.shared.set_routing(active, blocked);
                }
                Action::Refused { to, reason } => {
                    if self.policy.active() == to {
                        // Writers already wait on `to`; what was refused is promoting it.
                        log::warn!("not promoting the {to}: {reason}");
                    } else {
                        log::warn!("not switching to the {to}: {reason}");
                    }
                    self.shared
                        .events
                        .handle_switch_refused(SwitchRefusedEvent { to, reason });
                }
                Action::SplitBrain { writer, fenced } => {
                    log::error!(
                        "split brain: both sides are writable primaries; serving writers from the {writer}, fencing the {fenced}"
                    );
                    self.shared
                        .events
                        .handle_split_brain(SplitBrainEvent { writer, fenced });
                }
            }
        }
        let mut view = self.shared.view.lock();
        view.split_brain = self.policy.split_brain();
        view.fenced = self.policy.fenced();
    }

    fn on_health(
        &mut self,
        side: Side,
        health: Health,
        failures: u32,
        failing_for: Option<Duration>,
        was_down: bool,
    ) {
        let cause = {
            let mut view = self.shared.view.lock();
            let s = view.side_mut(side);
            s.health = health;
            s.consecutive_failures = failures;
            if health == Health::Up {
                s.last_error = None;
            }
            s.last_error.clone()
        };
        match health {
            Health::Up => {
                log::info!("the {side} is up");
                self.shared.sides[side].reset_backoff();
                self.shared
                    .events
                    .handle_side_up(SideUpEvent { side, was_down });
            }
            Health::Suspect | Health::Down => {
                let timed_out = std::mem::take(&mut self.timed_out[side]);
                log::debug!(
                    "heartbeat {side} failed ({failures} in a row){}",
                    cause
                        .as_ref()
                        .map(|c| format!(": {}", c.chain()))
                        .unwrap_or_default()
                );
                self.shared
                    .events
                    .handle_heartbeat_failure(HeartbeatFailureEvent {
                        side,
                        failures,
                        error: if timed_out { None } else { cause.clone() },
                    });
                if health == Health::Down && !was_down {
                    log::warn!(
                        "the {side} is down after {failures} failed heartbeats{}",
                        cause
                            .as_ref()
                            .map(|c| format!(": {}", c.chain()))
                            .unwrap_or_default()
                    );
                    self.shared.events.handle_side_down(SideDownEvent {
                        side,
                        failures,
                        failing_for: failing_for.unwrap_or_default(),
                        error: cause,
                    });
                }
            }
            Health::Unknown => {}
        }
    }

    /// Moves writers, releases callers stuck on a failed side, reports, then drains.
    fn on_switch(
        &mut self,
        from: Side,
        to: Side,
        reason: SwitchReason,
        failing_for: Option<Duration>,
        now: Instant,
    ) {
        log::warn!(
            "switching writers from the {from} to the {to}: {reason}{}",
            failing_for
                .map(|d| format!(" (failing for {d:?})"))
                .unwrap_or_default()
        );
        self.shared.set_routing(to, self.policy.blocked().cloned());
        {
            let mut view = self.shared.view.lock();
            view.switches = self.policy.switches();
            view.last_switch = Some(SwitchRecord {
                from,
                to,
                reason,
                at: now,
            });
        }
        self.shared.events.handle_switch(SwitchEvent {
            from,
            to,
            reason,
            failing_for,
        });
        // A replica that writers only waited on took no writes: its connections stay warm.
        if reason != SwitchReason::Recovered {
            self.start_drain(from, now);
        }
    }

    fn start_drain(&mut self, side: Side, now: Instant) {
        let idle = self.shared.sides[side].drain();
        // Idle ones close now, checked-out ones when returned.
        let closed = idle.len() as u64 + u64::from(self.shared.sides[side].counts().stale_out);
        close_in_background(idle);
        self.drains[side] = Some(Drain {
            started: now,
            closed,
        });
        self.finish_drains(now);
    }

    fn finish_drains(&mut self, now: Instant) {
        for side in Side::BOTH {
            let Some(drain) = &self.drains[side] else {
                continue;
            };
            let counts = self.shared.sides[side].counts();
            if counts.stale_out == 0 {
                let event = DrainEvent {
                    side,
                    closed: drain.closed,
                    duration: now.saturating_duration_since(drain.started),
                };
                log::info!(
                    "drained the {side}: stale connections closed in {:?}",
                    event.duration
                );
                self.shared.events.handle_drain(event);
                self.drains[side] = None;
            }
        }
    }

    /// Idle timeout, lifetime, `min_idle`, and drain completion. A side is only topped up
    /// while it answers heartbeats, so a dead side is not hammered with connects.
    fn upkeep(&mut self, now: Instant) {
        for side in Side::BOTH {
            let healthy = matches!(self.policy.side(side).health, Health::Up | Health::Unknown)
                && self.policy.fenced() != Some(side);
            let closed = self.shared.sides[side].maintain(healthy);
            close_in_background(closed);
        }
        self.finish_drains(now);
    }

    fn shutdown(self) {
        for side in Side::BOTH {
            close_in_background(self.shared.sides[side].close());
        }
        // Dropping the probers ends their threads once any call in flight returns.
        drop(self.probers);
        log::debug!("mirrorpool monitor stopped");
    }
}
