//! Metrics through the `metrics` facade (feature `metrics`): users plug in the exporter they
//! already run (Prometheus, StatsD, …). Names are Prometheus-style with a `mirrorpool_`
//! prefix, per-side series carry a `side` label and every series a `pool` label (the
//! builder's `name`).
//!
//! Nothing here runs on the uncontended checkout path: gauges and totals are published from
//! the pool's status on the monitor's upkeep (every heartbeat interval), failover counters
//! when the monitor acts, and the checkout-wait histogram and timeouts only on the slow path,
//! where a clock was read anyway.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `mirrorpool_up` (1 up, 0.5 suspect, 0 down, -1 unknown), `_writable`, `_saturated`, `_active`, `_connections`, `_connections_idle`, `_connections_in_use`, `_connections_pending`, `_waiters`, `_heartbeat_consecutive_failures`, `_replication_lag_bytes`, `_replication_lag_seconds`, `_replication_lag_transactions` (NaN when the last heartbeat did not report it, e.g. on a promoted mirror) | gauge | pool, side |
//! | `mirrorpool_blocked`, `mirrorpool_split_brain` | gauge | pool |
//! | `mirrorpool_checkouts_total`, `_connections_created_total`, `_connections_closed_total`, `_connect_failures_total` | counter | pool, side |
//! | `mirrorpool_switches_total` | counter | pool, from, to, reason |
//! | `mirrorpool_side_down_total`, `_heartbeat_failures_total`, `_drained_connections_total`, `_checkout_timeouts_total` | counter | pool, side |
//! | `mirrorpool_promotions_total` | counter | pool, side, result (`ok`, `error`) |
//! | `mirrorpool_refusals_total` | counter | pool, reason |
//! | `mirrorpool_heartbeat_rtt_seconds`, `_checkout_wait_seconds`, `_promotion_duration_seconds` | histogram | pool, side |

use std::time::Duration;

use crate::error::Refusal;
use crate::event::SwitchReason;
use crate::side::Side;
use crate::status::Status;

/// The label value of a switch reason.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn reason_label(r: SwitchReason) -> &'static str {
    match r {
        SwitchReason::Failover => "failover",
        SwitchReason::RoleChange => "role_change",
        SwitchReason::SplitBrain => "split_brain",
        SwitchReason::NewerPrimary => "newer_primary",
        SwitchReason::Recovered => "recovered",
        SwitchReason::Failback => "failback",
        SwitchReason::Manual => "manual",
    }
}

/// The label value of a refusal.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn refusal_label(r: &Refusal) -> &'static str {
    match r {
        Refusal::TargetDown => "target_down",
        Refusal::TargetReadOnly => "target_read_only",
        Refusal::TargetFenced => "target_fenced",
        Refusal::TargetRoleUnknown => "target_role_unknown",
        Refusal::LagTooHigh { .. } => "lag_too_high",
        Refusal::LagUnknown { .. } => "lag_unknown",
        Refusal::PrimaryStillStreaming => "primary_still_streaming",
        Refusal::CannotVerify => "cannot_verify",
        Refusal::MissingPrivilege { .. } => "missing_privilege",
        Refusal::SameServer => "same_server",
        Refusal::TooSoon => "too_soon",
    }
}

#[cfg(feature = "metrics")]
mod on {
    use super::*;
    use crate::health::Health;
    use crate::observation::Role;
    use metrics::{counter, gauge, histogram};

    pub(crate) fn publish(pool: &str, s: &Status) {
        let pool = pool.to_owned();
        gauge!("mirrorpool_blocked", "pool" => pool.clone())
            .set(f64::from(u8::from(s.blocked.is_some())));
        gauge!("mirrorpool_split_brain", "pool" => pool.clone())
            .set(f64::from(u8::from(s.split_brain)));
        for side in Side::BOTH {
            let d = s.side(side);
            let l = [("pool", pool.clone()), ("side", side.as_str().to_owned())];
            let g = |name: &'static str, v: f64| gauge!(name, &l).set(v);
            g("mirrorpool_active", f64::from(u8::from(s.active == side)));
            g(
                "mirrorpool_up",
                match d.health {
                    Health::Up => 1.0,
                    Health::Suspect => 0.5,
                    Health::Down => 0.0,
                    Health::Unknown => -1.0,
                },
            );
            g(
                "mirrorpool_writable",
                match d.role {
                    Role::Writable => 1.0,
                    Role::ReadOnly => 0.0,
                    Role::Unknown => -1.0,
                },
            );
            g("mirrorpool_saturated", f64::from(u8::from(d.saturated)));
            g("mirrorpool_connections", f64::from(d.connections));
            g("mirrorpool_connections_idle", f64::from(d.idle));
            g("mirrorpool_connections_in_use", f64::from(d.in_use));
            g("mirrorpool_connections_pending", f64::from(d.pending));
            g("mirrorpool_waiters", f64::from(d.waiters));
            g(
                "mirrorpool_heartbeat_consecutive_failures",
                f64::from(d.consecutive_failures),
            );
            // A lag the last heartbeat did not report (a promoted mirror has no upstream; a
            // role may not see it) is NaN, not the last value seen nor a reassuring zero.
            let r = d.replication.as_ref();
            let known = |v: Option<f64>| v.unwrap_or(f64::NAN);
            g(
                "mirrorpool_replication_lag_bytes",
                known(r.and_then(|r| r.lag_bytes).map(|b| b as f64)),
            );
            g(
                "mirrorpool_replication_lag_seconds",
                known(r.and_then(|r| r.lag_time).map(|t| t.as_secs_f64())),
            );
            g(
                "mirrorpool_replication_lag_transactions",
                known(r.and_then(|r| r.lag_transactions).map(|n| n as f64)),
            );
            let c = |name: &'static str, v: u64| counter!(name, &l).absolute(v);
            c("mirrorpool_checkouts_total", d.checkouts);
            c("mirrorpool_connections_created_total", d.created);
            c("mirrorpool_connections_closed_total", d.closed);
            c("mirrorpool_connect_failures_total", d.connect_failures);
        }
    }

    pub(crate) fn switch(pool: &str, from: Side, to: Side, reason: SwitchReason) {
        counter!("mirrorpool_switches_total", "pool" => pool.to_owned(), "from" => from.as_str(), "to" => to.as_str(), "reason" => reason_label(reason)).increment(1);
    }

    pub(crate) fn side_counter(pool: &str, name: &'static str, side: Side, n: u64) {
        counter!(name, "pool" => pool.to_owned(), "side" => side.as_str()).increment(n);
    }

    pub(crate) fn promotion(pool: &str, side: Side, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        counter!("mirrorpool_promotions_total", "pool" => pool.to_owned(), "side" => side.as_str(), "result" => result).increment(1);
        histogram!("mirrorpool_promotion_duration_seconds", "pool" => pool.to_owned(), "side" => side.as_str()).record(took.as_secs_f64());
    }

    pub(crate) fn refusal(pool: &str, reason: &Refusal) {
        counter!("mirrorpool_refusals_total", "pool" => pool.to_owned(), "reason" => refusal_label(reason)).increment(1);
    }

    pub(crate) fn seconds(pool: &str, name: &'static str, side: Side, d: Duration) {
        histogram!(name, "pool" => pool.to_owned(), "side" => side.as_str())
            .record(d.as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    //! Without the feature every call is empty and compiles away.
    use super::*;

    pub(crate) fn publish(_pool: &str, _s: &Status) {}
    pub(crate) fn switch(_pool: &str, _from: Side, _to: Side, _reason: SwitchReason) {}
    pub(crate) fn side_counter(_pool: &str, _name: &'static str, _side: Side, _n: u64) {}
    pub(crate) fn promotion(_pool: &str, _side: Side, _ok: bool, _took: Duration) {}
    pub(crate) fn refusal(_pool: &str, _reason: &Refusal) {}
    pub(crate) fn seconds(_pool: &str, _name: &'static str, _side: Side, _d: Duration) {}
}

pub(crate) use on::{promotion, publish, refusal, seconds, side_counter, switch};
