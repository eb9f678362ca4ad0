//! The monitor thread: the thin runtime around the failover [`Policy`].
//!
//! It owns the clock and the I/O the policy must not do: it feeds heartbeat results, caller
//! requests and timer ticks to the policy and carries out the actions it returns (start or
//! abandon probes, route, drain, sever, promote, report). It decides nothing itself. It also
//! does the sub-pools' upkeep (idle timeout, lifetime, `min_idle`), topping a side up only
//! where [`Policy::may_connect`] allows.
//!
//! It never dies of a panic: each step runs under `catch_unwind` (a panic is logged at
//! `error` and counted in `status()`), and if the thread ends for any other reason than the
//! pool's shutdown, a guard blocks writers with [`Blocked::Unmonitored`] rather than keep
//! serving a side nobody watches.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use r2d2::ManageConnection;

use crate::clock::after;
use crate::error::{Blocked, Cause, Refusal};
use crate::event::{
    DrainEvent, HeartbeatFailureEvent, MisconfigurationEvent, PromotionEvent, SaturationEvent,
    SideDownEvent, SideUpEvent, SplitBrainEvent, SwitchEvent, SwitchRefusedEvent, SynchronousEvent,
};
use crate::health::Health;
use crate::metrics;
use crate::policy::{Action, Policy, ProbeOutcome};
use crate::prober::{Prober, Reply};
use crate::report::catch;
use crate::shared::Shared;
use crate::side::{PerSide, Side};
use crate::status::SwitchRecord;

/// Requests to the monitor.
pub(crate) enum Command {
    /// Probe this side soon (a caller saw it fail).
    ProbeNow(Side),
    /// Move writers to this side (`switch_over`).
    Switch(Side, Sender<Result<(), Refusal>>),
    /// The pool is closing (`close()` or the last handle dropped).
    Shutdown,
}

/// After this many panics in a row the monitor gives up and blocks writers (see the module
/// docs); a one-off panic is survived.
const MAX_PANICS_IN_A_ROW: u32 = 20;

/// A drain in progress: stale connections of `side` still checked out.
struct Drain {
    started: Instant,
    closed: u64,
}

struct Monitor<M: ManageConnection> {
    shared: Arc<Shared<M>>,
    policy: Policy,
    probers: PerSide<Prober<M>>,
    drains: PerSide<Option<Drain>>,
    next_upkeep: Instant,
    actions: Vec<Action>,
    /// Each side's count of connections returned unbroken, as last seen.
    returned: PerSide<u64>,
}

enum Step {
    Continue,
    Stop,
}

pub(crate) fn spawn<M: ManageConnection>(
    shared: Arc<Shared<M>>,
    commands: Receiver<Command>,
    now: Instant,
) -> std::io::Result<JoinHandle<()>> {
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    let prober = |side: Side| Prober::new(side, shared.clone(), reply_tx.clone());
    let monitor = Monitor {
        policy: Policy::new(shared.config.failover.clone(), now),
        probers: PerSide::new(prober(Side::Primary), prober(Side::Mirror)),
        drains: PerSide::new(None, None),
        next_upkeep: now,
        actions: Vec::new(),
        returned: PerSide::new(0, 0),
        shared,
    };
    drop(reply_tx);
    thread::Builder::new()
        .name("mirrorpool-monitor".into())
        .spawn(move || monitor.run(commands, reply_rx))
}

/// Blocks writers if the monitor thread ends without a shutdown (see the module docs).
struct Watchdog<M: ManageConnection> {
    shared: Arc<Shared<M>>,
    clean: bool,
}

impl<M: ManageConnection> Drop for Watchdog<M> {
    fn drop(&mut self) {
        if self.clean {
            return;
        }
        log::error!("the mirrorpool monitor stopped unexpectedly: blocking writers");
        let active = self.shared.routing.read().active;
        self.shared.view.lock().monitor_running = false;
        self.shared.set_routing(active, Some(Blocked::Unmonitored));
    }
}

impl<M: ManageConnection> Monitor<M> {
    fn run(mut self, commands: Receiver<Command>, replies: Receiver<Reply>) {
        let mut watchdog = Watchdog {
            shared: self.shared.clone(),
            clean: false,
        };
        let mut panics_in_a_row = 0;
        loop {
            match catch(|| self.step(&commands, &replies)) {
                Ok(Step::Continue) => panics_in_a_row = 0,
                Ok(Step::Stop) => break,
                Err(msg) => {
                    panics_in_a_row += 1;
                    self.actions.clear();
                    log::error!("the mirrorpool monitor caught a panic and carries on: {msg}");
                    self.shared.view.lock().monitor_panics += 1;
                    if panics_in_a_row >= MAX_PANICS_IN_A_ROW {
                        log::error!(
                            "the mirrorpool monitor panicked {panics_in_a_row} times in a row; giving up"
                        );
                        return; // the watchdog blocks writers
                    }
                    // No hot loop on a panic that repeats.
                    thread::sleep(self.shared.config.failover.suspect_interval);
                }
            }
        }
        watchdog.clean = true;
        self.shutdown();
    }

    /// One turn: tick the policy, do upkeep, then wait for a command, a reply or the next
    /// deadline.
    fn step(&mut self, commands: &Receiver<Command>, replies: &Receiver<Reply>) -> Step {
        let now = Instant::now();
        self.shared.clock.advance(now);
        for side in Side::BOTH {
            let returned = self.shared.sides[side].returned();
            if returned != self.returned[side] {
                self.returned[side] = returned;
                self.policy.on_progress(side, now, &mut self.actions);
            }
        }
        self.policy.on_timer(now, &mut self.actions);
        self.apply(now);
        if now >= self.next_upkeep {
            self.upkeep(now);
            self.next_upkeep = after(now, self.shared.config.failover.heartbeat_interval);
        }
        let wake = self.policy.next_deadline(now).min(self.next_upkeep);
        let wait = wake.saturating_duration_since(Instant::now());
        select! {
            recv(commands) -> cmd => match cmd {
                Ok(Command::ProbeNow(side)) => self.policy.on_probe_requested(side, Instant::now()),
                Ok(Command::Switch(to, reply)) => {
                    let now = Instant::now();
                    let result = self.policy.manual_switch(to, now, &mut self.actions);
                    self.apply(now);
                    let _ = reply.send(result);
                }
                Ok(Command::Shutdown) | Err(_) => return Step::Stop,
            },
            recv(replies) -> reply => {
                if let Ok(reply) = reply {
                    self.on_reply(reply);
                }
            }
            default(wait) => {}
        }
        Step::Continue
    }

    fn on_reply(&mut self, reply: Reply) {
        let now = Instant::now();
        match reply {
            Reply::Probe {
                side,
                seq,
                result,
                saturated,
                not_run,
                rtt,
            } => {
                if seq != self.probers[side].current() {
                    // From an abandoned probe: an answer, however late, shows the side lives.
                    if result.is_ok() {
                        log::debug!("late heartbeat answer from the {side} after {rtt:?}");
                        self.policy.on_late_answer(side, now, &mut self.actions);
                    }
                } else {
                    let outcome = {
                        let mut view = self.shared.view.lock();
                        let s = view.side_mut(side);
                        s.last_heartbeat = Some(now);
                        match result {
                            Ok(obs) => {
                                let obs = *obs;
                                log::trace!("heartbeat {side}: up ({}) in {rtt:?}", obs.role());
                                let name = &self.shared.config.name;
                                metrics::seconds(
                                    name,
                                    "mirrorpool_heartbeat_rtt_seconds",
                                    side,
                                    rtt,
                                );
                                s.last_rtt = Some(rtt);
                                s.observe(&obs);
                                if saturated {
                                    ProbeOutcome::Saturated(Some(obs))
                                } else {
                                    ProbeOutcome::Up(obs)
                                }
                            }
                            Err(cause) if saturated => {
                                log::trace!("heartbeat {side}: saturated: {}", cause.chain());
                                s.last_error = Some(cause);
                                ProbeOutcome::Saturated(None)
                            }
                            Err(cause) => {
                                log::trace!("heartbeat {side}: failed: {}", cause.chain());
                                s.last_error = Some(cause);
                                if not_run {
                                    ProbeOutcome::NotRun
                                } else {
                                    ProbeOutcome::Failed
                                }
                            }
                        }
                    };
                    self.policy
                        .on_probe_result(side, outcome, now, &mut self.actions);
                }
            }
            Reply::Promote { side, seq, result } => {
                if seq == self.probers[side].current() {
                    let ok = result.is_ok();
                    let took = self
                        .policy
                        .on_promotion_result(side, ok, now, &mut self.actions);
                    if let Some(duration) = took {
                        metrics::promotion(&self.shared.config.name, side, ok, duration);
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
                    }
                }
            }
        }
        self.apply(now);
    }

    /// Carries out the policy's actions, in order.
    fn apply(&mut self, now: Instant) {
        let actions = std::mem::take(&mut self.actions);
        for action in actions {
            self.carry_out(action, now);
        }
    }

    fn carry_out(&mut self, action: Action, now: Instant) {
        let shared = &self.shared;
        match action {
            Action::Probe(side) => {
                // Callers' work counts as the side answering only if begun from now on.
                shared.sides[side].mark_progress();
                self.probers[side].probe();
            }
            Action::AbandonProbe(side) => {
                log::debug!("abandoning a heartbeat of the {side} that got no answer in time");
                self.probers[side].abandon();
                let timeout = shared.config.failover.heartbeat_timeout;
                shared.view.lock().side_mut(side).last_error = Some(Cause::new(format!(
                    "no heartbeat answer within {timeout:?}"
                )));
            }
            Action::AbandonPromotion { side, after } => {
                self.probers[side].abandon();
                metrics::promotion(&shared.config.name, side, false, after);
                log::error!("promoting the {side} timed out after {after:?}");
                shared.events.handle_promotion(PromotionEvent {
                    side,
                    duration: after,
                    error: Some(Cause::new("promotion timed out")),
                });
            }
            Action::Promote(side) => {
                log::warn!("promoting the {side} to primary");
                self.probers[side].promote();
            }
            Action::Sever(side) => {
                // Callers blocked on the abandoned side would otherwise wait for it.
                match catch(|| shared.backend.sever(&shared.sides[side].manager)) {
                    Ok(0) => {}
                    Ok(n) => log::warn!("severed {n} connections to the {side}"),
                    Err(msg) => log::error!("the backend panicked severing the {side}: {msg}"),
                }
            }
            Action::Drain(side) => self.start_drain(side, now),
            Action::Health {
                side,
                health,
                failures,
                failing_for,
                was_down,
                timed_out,
            } => self.on_health(side, health, failures, failing_for, was_down, timed_out),
            Action::Switch {
                from,
                to,
                reason,
                failing_for,
            } => {
                metrics::switch(&shared.config.name, from, to, reason);
                log::warn!(
                    "switching writers from the {from} to the {to}: {reason}{}",
                    failing_for
                        .map(|d| format!(" (failing for {d:?})"))
                        .unwrap_or_default()
                );
                {
                    let mut view = shared.view.lock();
                    view.switches += 1;
                    view.last_switch = Some(SwitchRecord {
                        from,
                        to,
                        reason,
                        at: now,
                    });
                }
                shared.events.handle_switch(SwitchEvent {
                    from,
                    to,
                    reason,
                    failing_for,
                });
            }
            Action::Route { active, blocked } => {
                match &blocked {
                    // Waiting for the first heartbeats is how every pool starts.
                    Some(b @ Blocked::RolesUnknown) => log::info!("writers wait: {b}"),
                    Some(b) => log::warn!("writers wait: {b}"),
                    None => log::info!("serving writers from the {active}"),
                }
                shared.set_routing(active, blocked);
            }
            Action::Refused {
                to,
                reason,
                promotion,
            } => {
                metrics::refusal(&shared.config.name, &reason);
                if promotion {
                    log::warn!("not promoting the {to}: {reason}");
                } else {
                    log::warn!("not switching to the {to}: {reason}");
                }
                shared.events.handle_switch_refused(SwitchRefusedEvent {
                    to,
                    reason,
                    promotion,
                });
            }
            Action::Misconfigured { side, problem } => {
                log::error!("configuration problem found on the {side}: {problem}");
                shared
                    .view
                    .lock()
                    .side_mut(side)
                    .problems
                    .push(problem.clone());
                shared
                    .events
                    .handle_misconfiguration(MisconfigurationEvent { side, problem });
            }
            Action::SplitBrain { writer, fenced } => {
                log::error!(
                    "split brain: both sides are writable primaries; serving writers from the {writer}, fencing the {fenced}"
                );
                shared
                    .events
                    .handle_split_brain(SplitBrainEvent { writer, fenced });
            }
            Action::Saturation { side, saturated } => {
                if saturated {
                    log::warn!(
                        "the {side} refuses new connections but answers on open ones: saturated, not down; writers stay"
                    );
                } else {
                    log::info!("the {side} accepts connections again");
                }
                shared.view.lock().side_mut(side).saturated = saturated;
                shared
                    .events
                    .handle_saturation(SaturationEvent { side, saturated });
            }
            Action::Synchronous { side, synchronous } => {
                if synchronous {
                    log::info!("the {side}'s commits wait for its replica again");
                } else {
                    log::warn!(
                        "the {side}'s commits no longer wait for its replica (replication fell back to asynchronous): a failover can now lose acknowledged writes"
                    );
                }
                shared
                    .events
                    .handle_synchronous(SynchronousEvent { side, synchronous });
            }
            Action::Fencing {
                fenced,
                split_brain,
            } => {
                let mut view = shared.view.lock();
                view.fenced = fenced;
                view.split_brain = split_brain;
            }
        }
    }

    fn on_health(
        &mut self,
        side: Side,
        health: Health,
        failures: u32,
        failing_for: Option<Duration>,
        was_down: bool,
        timed_out: bool,
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
        let suffix = cause
            .as_ref()
            .map(|c| format!(": {}", c.chain()))
            .unwrap_or_default();
        match health {
            Health::Up => {
                log::info!("the {side} is up");
                self.shared.sides[side].reset_backoff();
                self.shared
                    .events
                    .handle_side_up(SideUpEvent { side, was_down });
            }
            Health::Suspect | Health::Down => {
                let name = &self.shared.config.name;
                metrics::side_counter(name, "mirrorpool_heartbeat_failures_total", side, 1);
                log::debug!("heartbeat {side} failed ({failures} in a row){suffix}");
                self.shared
                    .events
                    .handle_heartbeat_failure(HeartbeatFailureEvent {
                        side,
                        failures,
                        error: if timed_out { None } else { cause.clone() },
                    });
                if health == Health::Down && !was_down {
                    metrics::side_counter(name, "mirrorpool_side_down_total", side, 1);
                    log::warn!("the {side} is down after {failures} failed heartbeats{suffix}");
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

    fn start_drain(&mut self, side: Side, now: Instant) {
        let sub = &self.shared.sides[side];
        let idle = sub.drain();
        // Idle ones close now, checked-out ones when returned.
        let closed = idle.len() as u64 + u64::from(sub.counts().stale_out);
        sub.close_later(idle);
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
            if self.shared.sides[side].counts().stale_out == 0 {
                let event = DrainEvent {
                    side,
                    closed: drain.closed,
                    duration: now.saturating_duration_since(drain.started),
                };
                log::info!(
                    "drained the {side}: stale connections closed in {:?}",
                    event.duration
                );
                let name = &self.shared.config.name;
                metrics::side_counter(
                    name,
                    "mirrorpool_drained_connections_total",
                    side,
                    event.closed,
                );
                self.shared.events.handle_drain(event);
                self.drains[side] = None;
            }
        }
    }

    /// Idle timeout, lifetime, `min_idle`, drain completion, and metrics.
    fn upkeep(&mut self, now: Instant) {
        if cfg!(feature = "metrics") {
            metrics::publish(&self.shared.config.name, &self.shared.status());
        }
        for side in Side::BOTH {
            let sub = &self.shared.sides[side];
            let closed = sub.maintain(self.policy.may_connect(side));
            sub.close_later(closed);
            if let Some(leaks) = &sub.leaks {
                leaks.report(side, now);
            }
        }
        self.finish_drains(now);
    }

    fn shutdown(self) {
        for side in Side::BOTH {
            let sub = &self.shared.sides[side];
            sub.close_later(sub.close());
        }
        // Dropping the probers ends their threads once any call in flight returns.
        drop(self.probers);
        log::debug!("mirrorpool monitor stopped");
    }
}
