//! Error types.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::observation::Lag;
use crate::side::Side;

/// An error's message and the chain of its causes, captured so that it can be shared with
/// every waiter and kept for status reports. `source()` walks the same chain as the original.
#[derive(Clone, PartialEq, Eq)]
pub struct Cause {
    message: String,
    source: Option<Box<Cause>>,
}

impl Cause {
    /// Captures `error` and its whole `source()` chain.
    pub(crate) fn capture(error: &(dyn StdError + 'static)) -> Cause {
        let mut messages = vec![error.to_string()];
        let mut next = error.source();
        // Bounded: a cyclic or absurdly deep chain must not loop forever.
        while let Some(e) = next {
            if messages.len() >= 16 {
                break;
            }
            messages.push(e.to_string());
            next = e.source();
        }
        let mut cause: Option<Box<Cause>> = None;
        for message in messages.into_iter().rev() {
            cause = Some(Box::new(Cause {
                message,
                source: cause,
            }));
        }
        match cause {
            Some(c) => *c,
            None => Cause::new(String::new()),
        }
    }

    /// A cause with a message only.
    pub(crate) fn new(message: impl Into<String>) -> Cause {
        Cause {
            message: message.into(),
            source: None,
        }
    }

    /// The top-level message, without its causes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The whole chain in one line: `message: cause: cause`, skipping repeated text.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = self.source.as_deref();
        while let Some(c) = next {
            if !out.contains(c.message.as_str()) {
                out.push_str(": ");
                out.push_str(&c.message);
            }
            next = c.source.as_deref();
        }
        out
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.chain())
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

/// Why the pool would not, or could not yet, move writers to a side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The target side is down (or has not answered a heartbeat yet).
    TargetDown,
    /// The target is a read-only replica and the pool does not promote (or cannot).
    TargetReadOnly,
    /// The target is a fenced old primary: it diverged and must not receive writes.
    TargetFenced,
    /// The target's role is not known yet (its heartbeat has not reported it); a role-aware
    /// pool never sends writes to a side it has not seen take them.
    TargetRoleUnknown,
    /// The mirror is further behind than `max_failover_lag`; switching could lose writes.
    LagTooHigh {
        /// The estimated loss: the primary's last known position against what the mirror has
        /// replayed now, or the mirror's own lag.
        lag: Lag,
        /// The configured limit.
        limit: Lag,
    },
    /// `max_failover_lag` is set, but no fresh heartbeat reported that kind of lag, so the
    /// switch cannot be shown to be within it.
    LagUnknown {
        /// The configured limit.
        limit: Lag,
    },
    /// The mirror still receives from the primary: the primary is alive and only this
    /// application lost it (a network cut). Promoting would create a second primary.
    PrimaryStillStreaming,
    /// The mirror's link to the primary could not be seen, so a primary failure cannot be
    /// verified before promoting (see `verify_primary_failure`).
    CannotVerify,
    /// The pool's database role lacks a privilege the configured features need; the text
    /// says which (e.g. "the role lacks EXECUTE on pg_promote").
    MissingPrivilege {
        /// The side the privilege is missing on.
        side: Side,
        /// What is missing, as the backend put it.
        what: &'static str,
    },
    /// Both sides are the same server (the mirror is configured with the primary's address).
    SameServer,
    /// The last switch was too recent (`min_switch_interval`).
    TooSoon,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TargetDown => f.write_str("the target side is down"),
            Refusal::TargetReadOnly => f.write_str(
                "the target side is a read-only replica and promotion is off or unsupported",
            ),
            Refusal::TargetFenced => {
                f.write_str("the target side is a fenced old primary that may have diverged")
            }
            Refusal::TargetRoleUnknown => {
                f.write_str("the target side's role is not known yet (no heartbeat reported it)")
            }
            Refusal::LagTooHigh { lag, limit } => write!(
                f,
                "the mirror's replication lag ({lag}) exceeds max_failover_lag ({limit}); switching could lose acknowledged writes"
            ),
            Refusal::LagUnknown { limit } => write!(
                f,
                "the mirror's replication lag is unknown, so it cannot be shown to be within max_failover_lag ({limit})"
            ),
            Refusal::PrimaryStillStreaming => f.write_str(
                "the mirror still receives from the primary, so the primary is alive and only this application lost it; not promoting",
            ),
            Refusal::CannotVerify => f.write_str(
                "the mirror's replication link cannot be seen, so the primary failure cannot be verified",
            ),
            Refusal::MissingPrivilege { side, what } => {
                write!(f, "missing privilege on the {side}: {what}")
            }
            Refusal::SameServer => f.write_str(
                "the primary and the mirror are the same server (check the mirror's address)",
            ),
            Refusal::TooSoon => f.write_str("the last switch was less than min_switch_interval ago"),
        }
    }
}

/// Why `get()` could not be served by the pool's active side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocked {
    /// Both sides are down.
    BothDown,
    /// No side takes writes (the primary is down or read-only and the mirror is a replica).
    NoWritableSide,
    /// No side is known to take writes, and a side that is not down has not had its role
    /// reported by a heartbeat yet (the pool was just built, or that side answers only after
    /// its heartbeats time out): writers wait until one says it takes writes.
    RolesUnknown,
    /// The pool is promoting this side and waits until it accepts writes.
    Promoting(Side),
    /// Writers wait on this replica until it confirms that it lost its primary too (see
    /// `verify_primary_failure`); then the pool promotes it.
    ConfirmingFailure(Side),
    /// A switch away from a failed side, or the promotion of the replica writers wait on,
    /// was refused.
    Refused(Refusal),
    /// The monitor thread stopped (it panicked repeatedly, or the operating system ended it):
    /// nobody watches the sides, so the pool serves nobody rather than pretend.
    Unmonitored,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::BothDown => f.write_str("both sides are down"),
            Blocked::NoWritableSide => f.write_str("no side accepts writes"),
            Blocked::RolesUnknown => {
                f.write_str("no heartbeat has reported which side takes writes yet")
            }
            Blocked::Promoting(side) => write!(f, "promoting the {side}"),
            Blocked::ConfirmingFailure(side) => write!(
                f,
                "waiting for the {side} to confirm it lost the {} before promoting it",
                side.other()
            ),
            Blocked::Refused(Refusal::MissingPrivilege { side, what }) => {
                write!(
                    f,
                    "cannot fail over: missing privilege on the {side}: {what}"
                )
            }
            Blocked::Refused(r) => write!(f, "failover refused: {r}"),
            Blocked::Unmonitored => f.write_str(
                "the pool's monitor thread stopped, so no side is known to be safe to serve",
            ),
        }
    }
}

/// The last error seen on one side, for error messages that name both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SideReport {
    /// The side.
    pub side: Side,
    /// Its health when the error was built.
    pub health: crate::Health,
    /// Its last heartbeat error, if any.
    pub last_error: Option<Cause>,
    /// Its last error opening or validating a pool connection, if any.
    pub connect_error: Option<Cause>,
}

impl fmt::Display for SideReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {}", self.side, self.health)?;
        match (&self.last_error, &self.connect_error) {
            (Some(h), Some(c)) if h != c => {
                write!(
                    f,
                    " (last error: {}; last connect error: {})",
                    h.chain(),
                    c.chain()
                )
            }
            (Some(e), _) | (None, Some(e)) => write!(f, " (last error: {})", e.chain()),
            (None, None) => Ok(()),
        }
    }
}

/// Why building a pool failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A builder option has an invalid value (or one the backend cannot honour).
    #[error("invalid configuration: {option} {problem}")]
    InvalidConfig {
        /// The option's name.
        option: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The operating system refused to start the monitor thread.
    #[error("could not start the monitor thread")]
    Spawn(#[source] std::io::Error),
    /// `build_checked`: a side did not answer its first heartbeat in time.
    #[error("the {side} is unreachable{}", cause_suffix(.cause))]
    Unreachable {
        /// The side.
        side: Side,
        /// Its last error (`None`: no answer within the timeout).
        #[source]
        cause: Option<Cause>,
    },
    /// `build_checked`: the pool's role lacks a privilege the configured features need.
    #[error("missing privilege on the {side}: {what}")]
    MissingPrivilege {
        /// The side.
        side: Side,
        /// What is missing, as the backend put it.
        what: &'static str,
    },
    /// `build_checked`: the mirror is not a replica of the primary (or the primary is not a
    /// writable primary).
    #[error("the mirror is not a replica of the primary: {problem}")]
    NotAMirror {
        /// What the heartbeats showed.
        problem: String,
    },
    /// `build_checked`: both sides are the same server.
    #[error("the primary and the mirror are the same server (check the mirror's address)")]
    SameServer,
}

impl BuildError {
    pub(crate) fn config(option: &'static str, problem: impl Into<String>) -> BuildError {
        BuildError::InvalidConfig {
            option,
            problem: problem.into(),
        }
    }
}

/// Why `get()`, `get_timeout()` or `get_from()` returned no connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No connection became available on `side` before the deadline.
    #[error("timed out after {waited:?} waiting for a connection to the {side}{}", cause_suffix(.cause))]
    Timeout {
        /// The side the caller waited on.
        side: Side,
        /// How long the caller waited.
        waited: Duration,
        /// The last error seen while connecting to or validating on that side.
        #[source]
        cause: Option<Cause>,
    },
    /// No side could serve writers before the deadline; names both sides and their last
    /// errors.
    #[error("no side could serve after {waited:?}: {blocked}; {primary}; {mirror}")]
    Unavailable {
        /// How long the caller waited.
        waited: Duration,
        /// What kept the pool from serving.
        blocked: Blocked,
        /// The primary's state and last error.
        primary: Box<SideReport>,
        /// The mirror's state and last error.
        mirror: Box<SideReport>,
    },
    /// A side asked for explicitly is down.
    #[error("the {side} is down{}", cause_suffix(.cause))]
    SideDown {
        /// The side.
        side: Side,
        /// Its last error.
        #[source]
        cause: Option<Cause>,
    },
    /// The pool has been closed.
    #[error("the pool is closed")]
    Closed,
}

impl GetError {
    /// Whether the caller gave up waiting (`Timeout` or `Unavailable`).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            GetError::Timeout { .. } | GetError::Unavailable { .. }
        )
    }

    /// Whether the pool is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, GetError::Closed)
    }
}

/// Why `switch_over()` did not move writers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// The switch was refused.
    #[error("switch to the {to} refused: {reason}")]
    Refused {
        /// The side asked for.
        to: Side,
        /// Why.
        reason: Refusal,
    },
    /// The pool has been closed.
    #[error("the pool is closed")]
    Closed,
}

fn cause_suffix(cause: &Option<Cause>) -> String {
    match cause {
        Some(c) => format!(": {}", c.chain()),
        None => String::new(),
    }
}
