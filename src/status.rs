//! Point-in-time snapshots of the pool, for operators and metrics.

use std::fmt;
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
    /// Connections handed out since the pool started (including those taken back because
    /// they failed validation).
    pub checkouts: u64,
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
            checkouts: 0,
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

/// A readable multi-line report, e.g. for a log line or an admin endpoint:
///
/// ```text
/// writers: primary (serving); switches: 1, last: mirror -> primary (manual switch-over)
///   primary: up, writable primary, epoch 2, rtt 1.2ms, connections 4 (idle 2, in use 2, pending 0), waiters 0
///   mirror:  up, read-only replica, streaming, lag 0 bytes / 0ns, connections 2 (idle 2, in use 0, pending 0), waiters 0
/// ```
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "writers: {}", self.active)?;
        match &self.blocked {
            None => f.write_str(" (serving)")?,
            Some(b) => write!(f, " (waiting: {b})")?,
        }
        write!(f, "; switches: {}", self.switches)?;
        if let Some(last) = &self.last_switch {
            write!(f, ", last: {} -> {} ({})", last.from, last.to, last.reason)?;
        }
        if self.split_brain {
            f.write_str("; SPLIT BRAIN")?;
        }
        if let Some(side) = self.fenced {
            write!(f, "; fenced: {side}")?;
        }
        if !self.monitor_running {
            f.write_str("; MONITOR STOPPED")?;
        }
        for side in Side::BOTH {
            let s = self.side(side);
            write!(f, "\n  {:<8} {}", format!("{side}:"), s.health)?;
            if s.saturated {
                f.write_str(" (saturated)")?;
            }
            write!(f, ", {}", s.role)?;
            if let Some(e) = s.epoch {
                write!(f, ", epoch {e}")?;
            }
            if let Some(r) = &s.replication {
                if let Some(u) = r.upstream {
                    f.write_str(match u.streaming {
                        Some(true) => ", streaming",
                        Some(false) => ", not streaming",
                        None => ", link unknown",
                    })?;
                }
                let lags: Vec<String> = [
                    r.lag_bytes.map(|b| format!("{b} bytes")),
                    r.lag_time.map(|t| format!("{t:?}")),
                    r.lag_transactions.map(|n| format!("{n} transactions")),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !lags.is_empty() {
                    write!(f, ", lag {}", lags.join(" / "))?;
                }
                match r.synchronous {
                    Some(true) => f.write_str(", synchronous")?,
                    Some(false) => f.write_str(", asynchronous")?,
                    None => {}
                }
            }
            if let Some(rtt) = s.last_rtt {
                write!(f, ", rtt {rtt:?}")?;
            }
            write!(
                f,
                ", connections {} (idle {}, in use {}, pending {}), waiters {}",
                s.connections, s.idle, s.in_use, s.pending, s.waiters
            )?;
            if s.stale > 0 {
                write!(f, ", stale {}", s.stale)?;
            }
            if let Some(e) = &s.last_error {
                write!(f, "; last error: {}", e.chain())?;
            }
            for p in &s.problems {
                write!(f, "; PROBLEM: {p}")?;
            }
        }
        Ok(())
    }
}

impl Status {
    /// The snapshot in the Prometheus text exposition format (version 0.0.4), for users
    /// without the `metrics` stack: serve it on a `/metrics` endpoint. Metric names start with
    /// `mirrorpool_`; per-side series carry a `side` label, and `pool` (the given name, e.g.
    /// "orders") tells several pools apart.
    pub fn to_prometheus(&self, pool: &str) -> String {
        let pool = escape_label(pool);
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            out.push_str(&format!(
                "# HELP mirrorpool_{name} {help}\n# TYPE mirrorpool_{name} {kind}\n"
            ));
            for (labels, v) in samples {
                out.push_str(&format!(
                    "mirrorpool_{name}{{pool=\"{pool}\"{labels}}} {v}\n"
                ));
            }
        };
        let per_side = |f: &dyn Fn(&SideStatus) -> Option<f64>| -> Vec<(String, f64)> {
            Side::BOTH
                .iter()
                .filter_map(|side| f(self.side(*side)).map(|v| (format!(",side=\"{side}\""), v)))
                .collect()
        };
        let active = |side: Side| f64::from(u8::from(self.active == side));
        family(
            "active",
            "gauge",
            "1 for the side writers are served from.",
            Side::BOTH
                .iter()
                .map(|s| (format!(",side=\"{s}\""), active(*s)))
                .collect(),
        );
        family(
            "blocked",
            "gauge",
            "1 while writers wait instead of being served.",
            vec![(String::new(), f64::from(u8::from(self.blocked.is_some())))],
        );
        family(
            "switches_total",
            "counter",
            "Times writers moved between sides.",
            vec![(String::new(), self.switches as f64)],
        );
        family(
            "split_brain",
            "gauge",
            "1 while both sides claim to be writable primaries.",
            vec![(String::new(), f64::from(u8::from(self.split_brain)))],
        );
        family(
            "up",
            "gauge",
            "Side health: 1 up, 0.5 suspect, 0 down, -1 unknown.",
            per_side(&|s| Some(health_value(s.health))),
        );
        family(
            "saturated",
            "gauge",
            "1 while the side refuses new connections but answers on open ones.",
            per_side(&|s| Some(f64::from(u8::from(s.saturated)))),
        );
        family(
            "writable",
            "gauge",
            "1 writable primary, 0 read-only replica, -1 unknown.",
            per_side(&|s| {
                Some(match s.role {
                    Role::Writable => 1.0,
                    Role::ReadOnly => 0.0,
                    Role::Unknown => -1.0,
                })
            }),
        );
        family(
            "heartbeat_rtt_seconds",
            "gauge",
            "Round trip of the last successful heartbeat.",
            per_side(&|s| s.last_rtt.map(|d| d.as_secs_f64())),
        );
        family(
            "heartbeat_consecutive_failures",
            "gauge",
            "Failed heartbeats in a row.",
            per_side(&|s| Some(f64::from(s.consecutive_failures))),
        );
        family(
            "replication_lag_bytes",
            "gauge",
            "Replication lag in bytes, where the backend reports it.",
            per_side(&|s| s.replication.and_then(|r| r.lag_bytes).map(|b| b as f64)),
        );
        family(
            "replication_lag_seconds",
            "gauge",
            "Replication lag in time, where the backend reports it.",
            per_side(&|s| {
                s.replication
                    .and_then(|r| r.lag_time)
                    .map(|d| d.as_secs_f64())
            }),
        );
        family(
            "replication_lag_transactions",
            "gauge",
            "Transactions not yet applied, where the backend reports it.",
            per_side(&|s| {
                s.replication
                    .and_then(|r| r.lag_transactions)
                    .map(|n| n as f64)
            }),
        );
        for (name, help, get) in [
            (
                "connections",
                "Pool connections open or being opened.",
                (|s: &SideStatus| s.connections) as fn(&SideStatus) -> u32,
            ),
            ("connections_idle", "Idle pool connections.", |s| s.idle),
            ("connections_in_use", "Connections checked out.", |s| {
                s.in_use
            }),
            ("connections_pending", "Connects in progress.", |s| {
                s.pending
            }),
            ("waiters", "Callers waiting for a connection.", |s| {
                s.waiters
            }),
        ] {
            family(name, "gauge", help, per_side(&|s| Some(f64::from(get(s)))));
        }
        for (name, help, get) in [
            (
                "connections_created_total",
                "Pool connections opened.",
                (|s: &SideStatus| s.created) as fn(&SideStatus) -> u64,
            ),
            (
                "connections_closed_total",
                "Pool connections closed.",
                |s| s.closed,
            ),
            ("connect_failures_total", "Failed connects.", |s| {
                s.connect_failures
            }),
            ("checkouts_total", "Connections handed out.", |s| {
                s.checkouts
            }),
        ] {
            family(name, "counter", help, per_side(&|s| Some(get(s) as f64)));
        }
        out
    }
}

fn health_value(h: Health) -> f64 {
    match h {
        Health::Up => 1.0,
        Health::Suspect => 0.5,
        Health::Down => 0.0,
        Health::Unknown => -1.0,
    }
}

/// A label value as the text format needs it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::Upstream;

    fn sample() -> Status {
        let mut s = Status::new();
        s.max_size = 4;
        s.primary.health = Health::Up;
        s.primary.role = Role::Writable;
        s.primary.connections = 3;
        s.primary.idle = 1;
        s.primary.in_use = 2;
        s.primary.checkouts = 17;
        s.primary.last_rtt = Some(Duration::from_millis(2));
        s.mirror.health = Health::Down;
        s.mirror.role = Role::ReadOnly;
        s.mirror.replication = Some(Replication {
            lag_bytes: Some(42),
            upstream: Some(Upstream::new(false)),
            ..Replication::default()
        });
        s.mirror.problems.push(Refusal::CannotVerify);
        s.blocked = Some(Blocked::BothDown);
        s
    }

    #[test]
    fn display_names_routing_both_sides_and_problems() {
        let text = sample().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("writers: primary (waiting: both sides are down)"));
        assert!(lines[1].contains("primary: up, writable primary"), "{text}");
        assert!(lines[1].contains("connections 3 (idle 1, in use 2, pending 0)"));
        assert!(lines[2].contains("mirror:  down, read-only replica, not streaming, lag 42 bytes"));
        assert!(lines[2].contains("PROBLEM: the mirror's replication link cannot be seen"));
    }

    #[test]
    fn prometheus_text_has_typed_families_and_labelled_samples() {
        let text = sample().to_prometheus("orders \"eu\"");
        assert!(text.contains("# TYPE mirrorpool_checkouts_total counter\n"));
        assert!(text.contains(
            "mirrorpool_checkouts_total{pool=\"orders \\\"eu\\\"\",side=\"primary\"} 17\n"
        ));
        assert!(text.contains("mirrorpool_up{pool=\"orders \\\"eu\\\"\",side=\"mirror\"} 0\n"));
        assert!(text.contains("mirrorpool_blocked{pool=\"orders \\\"eu\\\"\"} 1\n"));
        assert!(text.contains(
            "mirrorpool_replication_lag_bytes{pool=\"orders \\\"eu\\\"\",side=\"mirror\"} 42\n"
        ));
        // A figure nobody reported is absent, not zero.
        assert!(!text.contains("replication_lag_seconds{"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
