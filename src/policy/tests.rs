//! The failover policy, tested as a pure state machine: scripted worlds answer its probes, a
//! simulated clock drives its timers, and every action it emits is checked.

use super::*;
use crate::backend::{Capabilities, LagKind};
use crate::config::FailoverConfig as Config;
use crate::observation::{Identity, Privileges};
use crate::observation::{Replication, Upstream};
use proptest::prelude::*;

/// How a simulated server answers heartbeats.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Srv {
    Up(Role),
    Refuse,
    Hang,
    /// Answers every heartbeat, but only after this long.
    Slow(Role, Duration),
}

struct Sim {
    policy: Policy,
    start: Instant,
    now: Instant,
    world: PerSide<Srv>,
    epoch: PerSide<u64>,
    lag: PerSide<Option<u64>>,
    /// Replication position each side reports (written on a primary, replayed on a replica).
    position: PerSide<Option<u64>>,
    privileges: PerSide<Privileges>,
    /// Whether each side's commits wait for a replica (semi-sync), as it reports.
    sync: PerSide<Option<bool>>,
    /// Server instance each side reports (the same for both: one server configured twice).
    instance: PerSide<Option<u64>>,
    /// What the mirror says about its upstream; `None`: the backend does not report it.
    streaming: PerSide<Option<bool>>,
    /// (silence, max_quiet) the mirror reports while streaming.
    quiet: Option<(Duration, Option<Duration>)>,
    /// Probes in flight, answered at the next step.
    pending: Vec<Side>,
    /// Probes of slow servers: (side, answer due, abandoned).
    slow: Vec<(Side, Instant, bool)>,
    promotes: Vec<Side>,
    log: Vec<(Duration, Action)>,
    /// Health as of the action being checked, replayed from `Health` actions in order.
    seen: PerSide<Health>,
}

fn cfg() -> Config {
    Config {
        heartbeat_interval: ms(100),
        heartbeat_timeout: ms(50),
        suspect_interval: ms(10),
        failure_threshold: 3,
        min_switch_interval: ms(1000),
        ..Config::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let start = Instant::now();
        Sim {
            policy: Policy::new(cfg, start),
            start,
            now: start,
            world: PerSide::new(Srv::Up(Role::Unknown), Srv::Up(Role::Unknown)),
            epoch: PerSide::new(1, 1),
            lag: PerSide::new(None, None),
            position: PerSide::new(None, None),
            privileges: PerSide::new(Privileges::default(), Privileges::default()),
            sync: PerSide::new(None, None),
            instance: PerSide::new(None, None),
            streaming: PerSide::new(None, None),
            quiet: None,
            pending: Vec::new(),
            slow: Vec::new(),
            promotes: Vec::new(),
            log: Vec::new(),
            seen: PerSide::new(Health::Unknown, Health::Unknown),
        }
    }

    /// A role-aware backend (as PostgreSQL's) on a primary + streaming replica.
    fn pg(mut cfg: Config) -> Sim {
        cfg.capabilities = Capabilities::NONE
            .with_roles()
            .with_promote()
            .with_upstream()
            .with_lag(LagKind::Bytes)
            .with_lag(LagKind::Time);
        let mut s = Sim::new(cfg);
        s.world = PerSide::new(Srv::Up(Role::Writable), Srv::Up(Role::ReadOnly));
        s.streaming[Side::Mirror] = Some(true);
        s
    }

    fn observation(&self, side: Side, role: Role) -> Observation {
        let r = Replication {
            lag_bytes: self.lag[side],
            position: self.position[side],
            synchronous: self.sync[side],
            upstream: self.streaming[side].map(|streaming| {
                let mut u = Upstream::new(streaming);
                if let Some((silence, max_quiet)) = self.quiet {
                    u.silence = Some(silence);
                    u.max_quiet = max_quiet;
                }
                u
            }),
            ..Replication::default()
        };
        let mut obs = Observation::with_role(role)
            .with_epoch(self.epoch[side])
            .with_replication(r)
            .with_privileges(self.privileges[side]);
        if let Some(instance) = self.instance[side] {
            obs = obs.with_identity(Identity {
                cluster: Some(1),
                instance,
            });
        }
        obs
    }

    fn record(&mut self, out: Vec<Action>) {
        let at = self.now - self.start;
        // The runtime carries actions out one by one; one input never moves writers twice.
        assert!(
            out.iter().filter(|a| is_switch(a)).count() <= 1,
            "two switches for one input: {out:?}\n{:#?}",
            self.log
        );
        for a in out {
            if let Action::Health { side, health, .. } = a {
                self.seen[side] = health;
            }
            self.check_invariants(&a);
            match &a {
                Action::Probe(side) => self.pending.push(*side),
                Action::AbandonProbe(side) => {
                    self.pending.retain(|s| s != side);
                    for p in self.slow.iter_mut().filter(|p| p.0 == *side) {
                        p.2 = true;
                    }
                }
                Action::Promote(side) => self.promotes.push(*side),
                _ => {}
            }
            self.log.push((at, a));
        }
    }

    /// Rules that must hold for every action in every world.
    fn check_invariants(&self, a: &Action) {
        match a {
            Action::Switch {
                from, to, reason, ..
            } => {
                assert_ne!(
                    self.seen[*to],
                    Health::Down,
                    "switched to a down side: {a:?}\n{:#?}",
                    self.log
                );
                // Manual switches and moves away from an older primary ignore the interval.
                let rate_limited = |r: &SwitchReason| {
                    !matches!(
                        r,
                        SwitchReason::Manual
                            | SwitchReason::SplitBrain
                            | SwitchReason::NewerPrimary
                    )
                };
                // So does leaving a read-only replica for a writable side: writers could not
                // be served where they were.
                let from_replica = self.policy.side(*from).role() == Role::ReadOnly;
                if rate_limited(reason) && !from_replica {
                    let last_auto = self.log.iter().rev().find_map(|(t, a)| match a {
                        Action::Switch { reason, .. } if rate_limited(reason) => Some(*t),
                        _ => None,
                    });
                    if let Some(t) = last_auto {
                        assert!(
                            self.now - self.start >= t + self.policy.cfg.min_switch_interval,
                            "two switches within min_switch_interval\n{:#?}",
                            self.log
                        );
                    }
                }
            }
            Action::Route {
                active,
                blocked: None,
            } => {
                assert_ne!(self.policy.fenced(), Some(*active), "serving a fenced side");
                assert_ne!(self.seen[*active], Health::Down);
            }
            Action::Sever(side) => {
                assert_ne!(
                    self.policy.active(),
                    *side,
                    "severed the side writers are on\n{:#?}",
                    self.log
                );
            }
            Action::Promote(side) => {
                assert_eq!(
                    self.seen[side.other()],
                    Health::Down,
                    "promoted while the other side was not down"
                );
            }
            _ => {}
        }
    }

    /// Answers probes and promotions in flight, then advances the clock by `dt`. Actions are
    /// checked after every single input, against the state that input left.
    fn step(&mut self, dt: Duration) {
        for side in std::mem::take(&mut self.promotes) {
            let mut out = Vec::new();
            if let Srv::Up(_) = self.world[side] {
                self.world[side] = Srv::Up(Role::Writable);
                self.epoch[side] += 1;
                self.streaming[side] = None;
                self.policy
                    .on_promotion_result(side, true, self.now, &mut out);
            } else {
                self.policy
                    .on_promotion_result(side, false, self.now, &mut out);
            }
            self.record(out);
        }
        for side in std::mem::take(&mut self.pending) {
            let mut out = Vec::new();
            match self.world[side] {
                Srv::Up(role) => {
                    let obs = self.observation(side, role);
                    self.policy
                        .on_probe_result(side, ProbeOutcome::Up(obs), self.now, &mut out)
                }
                Srv::Refuse => {
                    self.policy
                        .on_probe_result(side, ProbeOutcome::Failed, self.now, &mut out)
                }
                Srv::Hang => self.pending.push(side), // never answers
                Srv::Slow(_, d) => self.slow.push((side, self.now + d, false)),
            }
            self.record(out);
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.slow.drain(..).partition(|p| p.1 <= now);
        self.slow = later;
        for (side, _, abandoned) in due {
            let role = match self.world[side] {
                Srv::Slow(role, _) | Srv::Up(role) => role,
                _ => continue,
            };
            let mut out = Vec::new();
            if abandoned {
                self.policy.on_late_answer(side, self.now, &mut out);
            } else {
                let obs = self.observation(side, role);
                self.policy
                    .on_probe_result(side, ProbeOutcome::Up(obs), self.now, &mut out);
            }
            self.record(out);
        }
        self.now += dt;
        let mut out = Vec::new();
        self.policy.on_timer(self.now, &mut out);
        self.record(out);
    }

    fn run(&mut self, total: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.step(ms(1));
        }
    }

    fn switches(&self) -> Vec<(Side, Side, SwitchReason)> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Switch {
                    from, to, reason, ..
                } => Some((*from, *to, *reason)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|(_, a)| f(a)).count()
    }

    fn first_time(&self, f: impl Fn(&Action) -> bool) -> Option<Duration> {
        self.log.iter().find(|(_, a)| f(a)).map(|(t, _)| *t)
    }
}

fn is_switch(a: &Action) -> bool {
    matches!(a, Action::Switch { .. })
}

// ----- table tests -----

#[test]
fn probes_both_sides_at_start_and_then_every_interval() {
    let mut s = Sim::new(cfg());
    s.run(ms(1000));
    let probes = |side| s.count(|a| *a == Action::Probe(side));
    // 1 at start + one per 100 ms interval (plus the few ms of each round trip).
    assert!(
        (9..=11).contains(&probes(Side::Primary)),
        "{}",
        probes(Side::Primary)
    );
    assert!((9..=11).contains(&probes(Side::Mirror)));
    assert_eq!(s.policy.side(Side::Primary).health, Health::Up);
}

#[test]
fn fails_over_once_the_threshold_is_reached_and_not_before() {
    for threshold in 1..=5 {
        let mut s = Sim::new(Config {
            failure_threshold: threshold,
            ..cfg()
        });
        s.run(ms(300));
        s.world[Side::Primary] = Srv::Refuse;
        let mut failures_at_switch = None;
        for _ in 0..2000 {
            s.step(ms(1));
            if s.policy.active() == Side::Mirror {
                failures_at_switch = Some(s.policy.side(Side::Primary).failures);
                break;
            }
        }
        assert_eq!(failures_at_switch, Some(threshold), "threshold {threshold}");
        assert_eq!(
            s.switches(),
            vec![(Side::Primary, Side::Mirror, SwitchReason::Failover)]
        );
        // The mirror takes writes as it is: callers stuck on the dead side are cut loose.
        assert_eq!(s.count(|a| *a == Action::Sever(Side::Primary)), 1);
    }
}

#[test]
fn suspect_sides_are_reprobed_quickly_so_refusals_switch_in_tens_of_ms() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    let t0 = s.now - s.start;
    s.run(ms(400));
    let t = s.first_time(is_switch).expect("switched");
    // First failure within one interval (100 ms), then two more 10 ms apart.
    assert!(
        t - t0 <= ms(100 + 2 * 10 + 5),
        "switch {:?} after the fault",
        t - t0
    );
}

#[test]
fn one_failed_heartbeat_below_the_threshold_never_switches() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    for _ in 0..20 {
        // Fail exactly one probe, then recover.
        s.world[Side::Primary] = Srv::Refuse;
        while s.policy.side(Side::Primary).failures == 0 {
            s.step(ms(1));
        }
        s.world[Side::Primary] = Srv::Up(Role::Unknown);
        s.run(ms(150));
    }
    assert_eq!(s.count(is_switch), 0);
    assert_eq!(s.policy.side(Side::Primary).health, Health::Up);
}

#[test]
fn never_switches_to_a_down_mirror_and_blocks_with_both_down() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    s.world[Side::Mirror] = Srv::Refuse;
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(500));
    assert_eq!(s.count(is_switch), 0);
    assert_eq!(s.policy.blocked(), Some(&Blocked::BothDown));
    // The mirror returns: writers move there.
    s.world[Side::Mirror] = Srv::Up(Role::Unknown);
    s.run(ms(300));
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(s.policy.blocked(), None);
}

#[test]
fn a_hung_primary_is_detected_by_timeouts() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Hang;
    let t0 = s.now - s.start;
    s.run(ms(1000));
    let t = s.first_time(is_switch).expect("switched") - t0;
    // ≤ interval + threshold × (timeout + suspect interval)
    assert!(t <= ms(100 + 3 * (50 + 10) + 5), "took {t:?}");
    assert!(s.count(|a| *a == Action::AbandonProbe(Side::Primary)) >= 3);
}

#[test]
fn min_switch_interval_holds_back_a_second_switch() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(300));
    assert_eq!(s.policy.active(), Side::Mirror);
    let switched_at = s.first_time(is_switch).unwrap();
    // The primary recovers and the mirror fails right away.
    s.world[Side::Primary] = Srv::Up(Role::Unknown);
    s.world[Side::Mirror] = Srv::Refuse;
    s.run(ms(1500));
    let times: Vec<_> = s
        .log
        .iter()
        .filter(|(_, a)| is_switch(a))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times.len(), 2);
    assert!(times[1] - switched_at >= ms(1000));
    assert!(
        s.count(|a| matches!(
            a,
            Action::Refused {
                reason: Refusal::TooSoon,
                ..
            }
        )) >= 1
    );
}

#[test]
fn manual_switch_ignores_the_interval_but_refuses_unsafe_targets() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    let mut out = Vec::new();
    assert_eq!(
        s.policy.manual_switch(Side::Mirror, s.now, &mut out),
        Ok(())
    );
    s.record(std::mem::take(&mut out));
    assert_eq!(
        s.policy.manual_switch(Side::Primary, s.now, &mut out),
        Ok(())
    );
    s.record(out);
    assert_eq!(s.count(is_switch), 2);
    s.world[Side::Mirror] = Srv::Refuse;
    s.run(ms(500));
    let mut out = Vec::new();
    assert_eq!(
        s.policy.manual_switch(Side::Mirror, s.now, &mut out),
        Err(Refusal::TargetDown)
    );
}

#[test]
fn automatic_failback_waits_for_a_healthy_primary_and_manual_never_fails_back() {
    for failback in [Failback::Manual, Failback::Automatic { after: ms(2000) }] {
        let mut s = Sim::new(Config { failback, ..cfg() });
        s.run(ms(300));
        s.world[Side::Primary] = Srv::Refuse;
        s.run(ms(500));
        s.world[Side::Primary] = Srv::Up(Role::Unknown);
        s.run(ms(1500));
        assert_eq!(s.policy.active(), Side::Mirror, "{failback:?}: too early");
        s.run(ms(1000));
        let expected = match failback {
            Failback::Manual => Side::Mirror,
            Failback::Automatic { .. } => Side::Primary,
        };
        assert_eq!(s.policy.active(), expected, "{failback:?}");
    }
}

#[test]
fn a_flapping_primary_does_not_ping_pong() {
    let mut s = Sim::new(Config {
        failback: Failback::Automatic { after: ms(500) },
        ..cfg()
    });
    s.run(ms(300));
    for _ in 0..30 {
        s.world[Side::Primary] = Srv::Refuse;
        s.run(ms(200));
        s.world[Side::Primary] = Srv::Up(Role::Unknown);
        s.run(ms(300));
    }
    assert_eq!(s.count(is_switch), 1, "{:?}", s.switches());
}

#[test]
fn follows_an_external_promotion_without_promoting_itself() {
    let mut s = Sim::pg(cfg());
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(500));
    // Writers left the dead primary for the replica and wait there; nothing is promoted.
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(
        s.switches(),
        vec![(Side::Primary, Side::Mirror, SwitchReason::Failover)]
    );
    assert_eq!(s.policy.blocked(), Some(&Blocked::NoWritableSide));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    // An orchestrator promotes the mirror: seen within the suspect interval.
    s.world[Side::Mirror] = Srv::Up(Role::Writable);
    let t0 = s.now - s.start;
    s.run(ms(100));
    let served = |a: &Action| {
        matches!(
            a,
            Action::Route {
                active: Side::Mirror,
                blocked: None
            }
        )
    };
    let t = s.first_time(served).expect("followed the promotion") - t0;
    assert!(t <= ms(20), "took {t:?}");
    assert_eq!(s.policy.blocked(), None);
    assert_eq!(s.policy.fenced(), Some(Side::Primary));
}

#[test]
fn a_dead_primary_is_left_at_once_and_writers_return_if_it_recovers_before_a_promotion() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        ..cfg()
    });
    s.run(ms(300));
    // The mirror has not noticed yet (still streaming): no promotion, but writers already
    // left the dead side, so no new callers queue on it.
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(100));
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    assert_ne!(s.policy.blocked(), None, "a replica takes no writes");
    // Statements in flight on the old side are left alone: it may only be slow.
    assert_eq!(s.count(|a| matches!(a, Action::Sever(_))), 0);
    // The primary comes back before the mirror confirmed the loss: writers return at once,
    // although min_switch_interval (1 s) has not passed.
    s.world[Side::Primary] = Srv::Up(Role::Writable);
    s.run(ms(50));
    assert_eq!(
        s.switches(),
        vec![
            (Side::Primary, Side::Mirror, SwitchReason::Failover),
            (Side::Mirror, Side::Primary, SwitchReason::Recovered)
        ]
    );
    assert_eq!(s.policy.blocked(), None);
    assert_eq!(s.policy.fenced(), None);
    // It dies again at once: the interval now holds writers back (no ping-pong).
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(300));
    assert_eq!(s.count(is_switch), 2);
    assert_eq!(
        s.policy.blocked(),
        Some(&Blocked::Refused(Refusal::TooSoon))
    );
}

#[test]
fn promotes_the_mirror_only_after_it_confirms_losing_the_primary() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        ..cfg()
    });
    s.run(ms(300));
    // A network cut between the application and a live primary: the mirror still streams.
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(1000));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    assert_eq!(
        s.policy.blocked(),
        Some(&Blocked::Refused(Refusal::PrimaryStillStreaming))
    );
    assert_eq!(
        s.count(|a| matches!(
            a,
            Action::Refused {
                reason: Refusal::PrimaryStillStreaming,
                ..
            }
        )),
        1,
        "a refusal is reported once"
    );
    // The primary really dies: the mirror's link drops, and it is promoted.
    assert_eq!(s.count(|a| matches!(a, Action::Sever(_))), 0);
    s.streaming[Side::Mirror] = Some(false);
    s.run(ms(200));
    assert_eq!(s.count(|a| *a == Action::Promote(Side::Mirror)), 1);
    // Only now, with the promotion under way, callers stuck on the old primary are released.
    let promoted = s.first_time(|a| *a == Action::Promote(Side::Mirror));
    assert_eq!(
        s.first_time(|a| *a == Action::Sever(Side::Primary)),
        promoted
    );
    assert_eq!(s.count(|a| matches!(a, Action::Sever(_))), 1);
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(
        s.policy.blocked(),
        None,
        "serving once the mirror is writable"
    );
    assert_eq!(s.policy.fenced(), Some(Side::Primary));
}

#[test]
fn without_verification_support_promotion_is_refused_unless_disabled() {
    for verify in [true, false] {
        let mut s = Sim::pg(Config {
            promote_on_failover: true,
            verify_primary_failure: verify,
            ..cfg()
        });
        s.streaming[Side::Mirror] = None;
        s.run(ms(300));
        s.world[Side::Primary] = Srv::Refuse;
        s.run(ms(500));
        let promoted = s.count(|a| matches!(a, Action::Promote(_))) > 0;
        assert_eq!(promoted, !verify);
        if verify {
            assert_eq!(
                s.policy.blocked(),
                Some(&Blocked::Refused(Refusal::CannotVerify))
            );
        }
    }
}

#[test]
fn the_lag_gate_refuses_a_mirror_that_is_too_far_behind() {
    for allow in [false, true] {
        let mut s = Sim::pg(Config {
            promote_on_failover: true,
            max_failover_lag: Some(Lag::Bytes(1000)),
            allow_data_loss: allow,
            ..cfg()
        });
        s.position[Side::Primary] = Some(10_000);
        s.position[Side::Mirror] = Some(5_000);
        s.run(ms(300));
        s.world[Side::Primary] = Srv::Refuse;
        s.streaming[Side::Mirror] = Some(false);
        s.run(ms(500));
        let promoted = s.count(|a| matches!(a, Action::Promote(_))) > 0;
        assert_eq!(promoted, allow, "allow_data_loss = {allow}");
        if !allow {
            assert_eq!(
                s.policy.blocked(),
                Some(&Blocked::Refused(Refusal::LagTooHigh {
                    lag: Lag::Bytes(5000),
                    limit: Lag::Bytes(1000)
                }))
            );
        }
    }
}

#[test]
fn the_lag_gate_reopens_once_the_mirror_has_replayed_what_the_dead_primary_wrote() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        max_failover_lag: Some(Lag::Bytes(1000)),
        ..cfg()
    });
    s.position[Side::Primary] = Some(7_400_000);
    s.position[Side::Mirror] = Some(100);
    // The dead primary's last report of its replica's lag must not be reused forever.
    s.lag[Side::Primary] = Some(7_399_900);
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.streaming[Side::Mirror] = Some(false);
    s.run(ms(1000));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    assert!(matches!(
        s.policy.blocked(),
        Some(Blocked::Refused(Refusal::LagTooHigh { .. }))
    ));
    // The mirror replays everything it received: the estimate is recomputed from its fresh
    // heartbeats, and the gate opens.
    s.position[Side::Mirror] = Some(7_400_000);
    s.lag[Side::Mirror] = Some(0);
    s.run(ms(500));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 1);
    assert_eq!(s.policy.active(), Side::Mirror);
}

#[test]
fn an_unknown_lag_refuses_a_gated_failover() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        max_failover_lag: Some(Lag::Time(ms(100))),
        ..cfg()
    });
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.streaming[Side::Mirror] = Some(false);
    s.run(ms(1000));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    assert_eq!(
        s.policy.blocked(),
        Some(&Blocked::Refused(Refusal::LagUnknown {
            limit: Lag::Time(ms(100))
        }))
    );
}

#[test]
fn a_side_of_unknown_role_never_takes_writers_with_a_role_aware_backend() {
    // The primary is dead from the start; the mirror answers every heartbeat only after it
    // was abandoned, so no heartbeat ever reports its role.
    let mut s = Sim::pg(cfg());
    s.world[Side::Primary] = Srv::Refuse;
    s.world[Side::Mirror] = Srv::Slow(Role::ReadOnly, ms(120));
    s.run(ms(2000));
    assert_eq!(
        s.policy.side(Side::Mirror).health,
        Health::Up,
        "late answers count"
    );
    assert_eq!(
        s.count(|a| matches!(
            a,
            Action::Route {
                active: Side::Mirror,
                blocked: None
            }
        )),
        0,
        "writers were served by a side of unknown role\n{:#?}",
        s.log
    );
    // Without roles (a plain manager) the same late answer is enough to serve writers there.
    let mut s = Sim::new(cfg());
    s.world[Side::Primary] = Srv::Refuse;
    s.world[Side::Mirror] = Srv::Slow(Role::Unknown, ms(120));
    s.run(ms(2000));
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(s.policy.blocked(), None);
}

#[test]
fn an_upstream_the_role_cannot_see_never_confirms_a_lost_primary() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        ..cfg()
    });
    s.streaming[Side::Mirror] = None;
    s.privileges[Side::Mirror].replication_status =
        Access::Denied("the role cannot see replication state");
    s.privileges[Side::Mirror].promote = Access::Granted;
    s.run(ms(300));
    // Reported at once, before any failure.
    assert_eq!(
        s.count(|a| matches!(
            a,
            Action::Misconfigured {
                side: Side::Mirror,
                problem: Refusal::MissingPrivilege { .. }
            }
        )),
        1
    );
    s.world[Side::Primary] = Srv::Hang;
    s.run(ms(3000));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    assert_eq!(
        s.policy.blocked(),
        Some(&Blocked::Refused(Refusal::MissingPrivilege {
            side: Side::Mirror,
            what: "the role cannot see replication state"
        }))
    );
}

#[test]
fn a_missing_promotion_privilege_is_reported_at_once_and_refuses_the_promotion() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        ..cfg()
    });
    s.privileges[Side::Mirror].promote = Access::Denied("the role lacks EXECUTE on pg_promote");
    s.run(ms(300));
    let first = s
        .first_time(|a| matches!(a, Action::Misconfigured { .. }))
        .expect("reported");
    assert!(
        first < ms(50),
        "reported on the first heartbeat, at {first:?}"
    );
    s.world[Side::Primary] = Srv::Refuse;
    s.streaming[Side::Mirror] = Some(false);
    s.run(ms(2000));
    assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
    assert_eq!(
        s.policy.blocked(),
        Some(&Blocked::Refused(Refusal::MissingPrivilege {
            side: Side::Mirror,
            what: "the role lacks EXECUTE on pg_promote"
        }))
    );
    assert_eq!(
        s.count(|a| matches!(a, Action::Misconfigured { .. })),
        1,
        "once"
    );
}

#[test]
fn one_server_configured_as_both_sides_is_reported_not_taken_for_split_brain() {
    let mut s = Sim::pg(cfg());
    s.world = PerSide::new(Srv::Up(Role::Writable), Srv::Up(Role::Writable));
    s.instance = PerSide::new(Some(42), Some(42));
    s.run(ms(500));
    assert_eq!(s.count(|a| matches!(a, Action::SplitBrain { .. })), 0);
    assert!(
        s.count(|a| matches!(
            a,
            Action::Misconfigured {
                problem: Refusal::SameServer,
                ..
            }
        )) >= 1
    );
    assert_eq!(s.policy.fenced(), None);
    // Its failure is no reason to switch to itself.
    s.world = PerSide::new(Srv::Refuse, Srv::Up(Role::Writable));
    s.run(ms(1000));
    assert_eq!(s.count(is_switch), 0);
    let mut out = Vec::new();
    s.world = PerSide::new(Srv::Up(Role::Writable), Srv::Up(Role::Writable));
    s.run(ms(300));
    assert_eq!(
        s.policy.manual_switch(Side::Mirror, s.now, &mut out),
        Err(Refusal::SameServer)
    );
}

#[test]
fn an_old_primary_returning_writable_is_fenced_and_reported_as_split_brain() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        failback: Failback::Automatic { after: ms(100) },
        ..cfg()
    });
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.streaming[Side::Mirror] = Some(false);
    s.run(ms(500));
    assert_eq!(s.policy.active(), Side::Mirror);
    // The old primary restarts as a writable primary on the old timeline.
    s.world[Side::Primary] = Srv::Up(Role::Writable);
    s.run(ms(3000));
    assert_eq!(
        s.policy.active(),
        Side::Mirror,
        "never fails back to a diverged primary"
    );
    assert!(s.policy.split_brain);
    assert_eq!(s.policy.fenced(), Some(Side::Primary));
    assert_eq!(
        s.count(|a| matches!(
            a,
            Action::SplitBrain {
                writer: Side::Mirror,
                fenced: Side::Primary
            }
        )),
        1
    );
    // It is rebuilt as a replica: no longer fenced, no longer split brain.
    s.world[Side::Primary] = Srv::Up(Role::ReadOnly);
    s.run(ms(300));
    assert!(!s.policy.split_brain);
    assert_eq!(s.policy.fenced(), None);
    assert_eq!(s.policy.active(), Side::Mirror);
}

#[test]
fn with_two_writable_sides_the_higher_epoch_wins() {
    let mut s = Sim::pg(cfg());
    s.run(ms(300));
    // Another application promoted the mirror while this one still reaches the primary.
    s.world[Side::Mirror] = Srv::Up(Role::Writable);
    s.epoch[Side::Mirror] = 2;
    s.run(ms(300));
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(s.policy.fenced(), Some(Side::Primary));
    assert_eq!(
        s.switches(),
        vec![(Side::Primary, Side::Mirror, SwitchReason::SplitBrain)]
    );
}

#[test]
fn a_failed_promotion_is_retried_and_another_pools_promotion_is_followed() {
    let mut s = Sim::pg(Config {
        promote_on_failover: true,
        ..cfg()
    });
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    s.streaming[Side::Mirror] = Some(false);
    // The promotion's connection fails the first time.
    while s.promotes.is_empty() {
        s.step(ms(1));
    }
    let mut out = Vec::new();
    s.promotes.clear();
    s.policy
        .on_promotion_result(Side::Mirror, false, s.now, &mut out);
    s.record(out);
    s.run(ms(50));
    assert_eq!(
        s.count(|a| matches!(a, Action::Promote(_))),
        1,
        "retry waits an interval"
    );
    // Meanwhile another pool promoted it.
    s.world[Side::Mirror] = Srv::Up(Role::Writable);
    s.run(ms(200));
    assert_eq!(s.policy.blocked(), None);
    assert_eq!(s.policy.active(), Side::Mirror);
}

#[test]
fn a_role_swap_by_the_cluster_is_followed() {
    let mut s = Sim::pg(cfg());
    s.run(ms(300));
    // Planned switchover by an operator: primary becomes a replica, mirror the primary.
    s.world[Side::Primary] = Srv::Up(Role::ReadOnly);
    s.world[Side::Mirror] = Srv::Up(Role::Writable);
    s.epoch[Side::Mirror] = 2;
    s.run(ms(300));
    assert_eq!(s.policy.active(), Side::Mirror);
    assert_eq!(s.policy.blocked(), None);
}

#[test]
fn a_slow_primary_whose_late_answers_arrive_is_not_failed_over_from() {
    let mut s = Sim::new(cfg());
    s.run(ms(300));
    // Every heartbeat takes 80 ms, longer than the 50 ms timeout, but does answer.
    s.world[Side::Primary] = Srv::Slow(Role::Unknown, ms(80));
    s.run(ms(3000));
    assert_eq!(s.count(is_switch), 0, "{:?}", s.switches());
    assert_ne!(s.policy.side(Side::Primary).health, Health::Down);
    assert!(s.count(|a| *a == Action::AbandonProbe(Side::Primary)) > 5);
}

#[test]
fn silence_shorter_than_the_replicas_own_keepalive_bound_proves_nothing() {
    for (max_quiet, silence, expect_promote) in [
        // A live idle primary may be quiet for the receiver's whole timeout.
        (Some(ms(60_000)), ms(10_000), false),
        (Some(ms(2_000)), ms(10_000), true),
        (None, ms(10_000), true),
        (None, ms(1_000), false),
    ] {
        let mut s = Sim::pg(Config {
            promote_on_failover: true,
            primary_silence_bound: ms(5_000),
            ..cfg()
        });
        s.run(ms(300));
        s.world[Side::Primary] = Srv::Refuse;
        s.quiet = Some((silence, max_quiet));
        s.run(ms(500));
        let promoted = s.count(|a| matches!(a, Action::Promote(_))) > 0;
        assert_eq!(
            promoted, expect_promote,
            "max_quiet {max_quiet:?}, silence {silence:?}"
        );
    }
}

#[test]
fn an_external_promotion_is_seen_quickly_even_before_the_primary_is_down() {
    let mut s = Sim::pg(Config {
        failure_threshold: 1_000,
        ..cfg()
    });
    s.run(ms(300));
    // The primary fails (but is far from the threshold); an orchestrator promotes the mirror.
    s.world[Side::Primary] = Srv::Refuse;
    s.run(ms(150));
    s.world[Side::Mirror] = Srv::Up(Role::Writable);
    s.epoch[Side::Mirror] = 2;
    let t0 = s.now - s.start;
    s.run(ms(200));
    let t = s.first_time(is_switch).expect("moved to the newer primary") - t0;
    assert!(t <= ms(20), "took {t:?}");
    assert_eq!(
        s.switches(),
        vec![(Side::Primary, Side::Mirror, SwitchReason::NewerPrimary)]
    );
    assert!(
        !s.policy.split_brain,
        "a failing old primary is no split brain"
    );
}

// ----- property tests -----

fn srv() -> impl Strategy<Value = Srv> + Clone {
    prop_oneof![
        4 => Just(Srv::Up(Role::Unknown)),
        2 => Just(Srv::Refuse),
        1 => Just(Srv::Hang),
        1 => (1u64..200).prop_map(|d| Srv::Slow(Role::Unknown, ms(d))),
    ]
}

fn pg_srv() -> impl Strategy<Value = Srv> + Clone {
    prop_oneof![
        3 => Just(Srv::Up(Role::Writable)),
        3 => Just(Srv::Up(Role::ReadOnly)),
        2 => Just(Srv::Refuse),
        1 => Just(Srv::Hang),
    ]
}

type Schedule = Vec<(u64, Srv, Srv)>;

fn schedule(s: impl Strategy<Value = Srv> + Clone) -> impl Strategy<Value = Schedule> {
    prop::collection::vec((1u64..400, s.clone(), s), 1..25)
}

fn failback() -> impl Strategy<Value = Failback> {
    prop_oneof![
        Just(Failback::Manual),
        (1u64..2000).prop_map(|a| Failback::Automatic { after: ms(a) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// In any world, with any settings: no switch to a down side, no two automatic switches
    /// within the interval, never serving a fenced or down side, never promoting while the
    /// other side is not down (all checked per action by `check_invariants`).
    #[test]
    fn invariants_hold_in_any_world(
        plan in schedule(srv()),
        threshold in 1u32..5,
        min_interval in 0u64..1500,
        failback in failback(),
    ) {
        let mut s = Sim::new(Config {
            failure_threshold: threshold,
            min_switch_interval: ms(min_interval),
            failback,
            ..cfg()
        });
        for (dur, p, m) in plan {
            s.world = PerSide::new(p, m);
            s.run(ms(dur));
        }
    }

    #[test]
    fn invariants_hold_in_any_replicated_world(
        plan in schedule(pg_srv()),
        promote in any::<bool>(),
        streaming in prop::option::of(any::<bool>()),
        failback in failback(),
    ) {
        let mut s = Sim::pg(Config {
            promote_on_failover: promote,
            failback,
            ..cfg()
        });
        s.streaming[Side::Mirror] = streaming;
        for (dur, p, m) in plan {
            s.world = PerSide::new(p, m);
            s.run(ms(dur));
        }
        // Never writes to two primaries: whenever writers are served, they go to one side
        // that is not fenced (checked per action); and a promotion never happened while the
        // mirror still streamed from a live primary.
        if streaming == Some(true) {
            prop_assert_eq!(s.count(|a| matches!(a, Action::Promote(_))), 0);
        }
    }

    /// Failures that never reach the threshold in a row never cause a switch.
    #[test]
    fn failures_below_the_threshold_never_switch(
        threshold in 2u32..6,
        bursts in prop::collection::vec(1u32..6, 1..15),
    ) {
        let mut s = Sim::new(Config { failure_threshold: threshold, ..cfg() });
        s.run(ms(300));
        for burst in bursts {
            let n = burst.min(threshold - 1);
            s.world[Side::Primary] = Srv::Refuse;
            let target = s.policy.side(Side::Primary).failures + n;
            let mut guard = 0;
            while s.policy.side(Side::Primary).failures < target && guard < 10_000 {
                s.step(ms(1));
                guard += 1;
            }
            s.world[Side::Primary] = Srv::Up(Role::Unknown);
            s.run(ms(200));
        }
        prop_assert_eq!(s.count(is_switch), 0);
    }
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::MAX),
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        (0u64..10_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No duration, however extreme, makes the policy's instant arithmetic panic (the
    /// builder bounds the monitor's timings; the rest may be anything, `MAX` meaning never).
    #[test]
    fn extreme_durations_never_panic(
        min_switch in any_duration(),
        failback in any_duration(),
        silence in any_duration(),
        promotion in any_duration(),
        timing in prop_oneof![Just(ms(1)), Just(Duration::from_secs(3600))],
    ) {
        let mut s = Sim::pg(Config {
            heartbeat_interval: timing,
            heartbeat_timeout: timing,
            suspect_interval: timing,
            min_switch_interval: min_switch,
            failback: Failback::Automatic { after: failback.max(ms(1)) },
            primary_silence_bound: silence.max(ms(1)),
            promotion_timeout: promotion.max(ms(1)),
            promote_on_failover: true,
            ..cfg()
        });
        s.run(ms(50));
        s.world[Side::Primary] = Srv::Refuse;
        s.streaming[Side::Mirror] = Some(false);
        s.run(ms(50));
        let _ = s.policy.next_deadline(s.now);
    }
}

#[test]
fn a_side_serving_callers_is_not_failed_by_heartbeats_that_time_out() {
    for served in [true, false] {
        let mut s = Sim::pg(cfg());
        s.run(ms(300));
        // The primary's heartbeats get no answer in time (a CPU-starved host, or a hung one).
        s.world[Side::Primary] = Srv::Hang;
        for _ in 0..1500 {
            if served {
                // Callers keep returning its connections unbroken: it answers them.
                let mut out = Vec::new();
                s.policy.on_progress(Side::Primary, s.now, &mut out);
                s.record(out);
            }
            s.step(ms(1));
        }
        let downs = s.count(|a| {
            matches!(
                a,
                Action::Health {
                    side: Side::Primary,
                    health: Health::Down,
                    ..
                }
            )
        });
        assert_eq!(downs > 0, !served, "served = {served}\n{:#?}", s.log);
        assert_eq!(s.count(is_switch) > 0, !served);
    }
}

#[test]
fn progress_does_not_forgive_heartbeats_that_got_an_error() {
    let mut s = Sim::pg(cfg());
    s.run(ms(300));
    s.world[Side::Primary] = Srv::Refuse;
    for _ in 0..500 {
        let mut out = Vec::new();
        s.policy.on_progress(Side::Primary, s.now, &mut out);
        s.record(out);
        s.step(ms(1));
    }
    assert_eq!(s.policy.side(Side::Primary).health, Health::Down);
}

#[test]
fn a_primary_falling_back_to_asynchronous_replication_is_reported_once_each_way() {
    let mut s = Sim::pg(cfg());
    s.sync[Side::Primary] = Some(true);
    s.run(ms(500));
    s.sync[Side::Primary] = Some(false);
    s.run(ms(500));
    s.sync[Side::Primary] = None; // unknown says nothing
    s.run(ms(500));
    s.sync[Side::Primary] = Some(true);
    s.run(ms(500));
    let changes: Vec<bool> = s
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Synchronous {
                side: Side::Primary,
                synchronous,
            } => Some(*synchronous),
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![false, true]);
}

#[test]
fn writers_wait_for_the_first_heartbeats_as_roles_unknown_not_as_no_writable_side() {
    let mut s = Sim::pg(cfg());
    // Both sides are read-only replicas: once their heartbeats answered, nobody takes writes.
    s.world[Side::Primary] = Srv::Up(Role::ReadOnly);
    s.run(ms(1));
    let routes = |s: &Sim| -> Vec<Option<Blocked>> {
        s.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Route { blocked, .. } => Some(blocked.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        routes(&s).first(),
        Some(&Some(Blocked::RolesUnknown)),
        "{:#?}",
        s.log
    );
    s.run(ms(500));
    assert_eq!(s.policy.blocked(), Some(&Blocked::NoWritableSide));
    // While a live side's role stays unknown (it answers only after its heartbeats were
    // abandoned), it may be the one that takes writes: still unknown, not "no writable side".
    let mut s = Sim::pg(cfg());
    s.world[Side::Primary] = Srv::Up(Role::ReadOnly);
    s.world[Side::Mirror] = Srv::Slow(Role::Writable, ms(120));
    s.run(ms(2000));
    assert_eq!(s.policy.blocked(), Some(&Blocked::RolesUnknown));
    // A primary that says it takes writes is served at once after the start.
    let mut s = Sim::pg(cfg());
    s.run(ms(500));
    assert_eq!(
        routes(&s),
        vec![Some(Blocked::RolesUnknown), None],
        "{:#?}",
        s.log
    );
}
