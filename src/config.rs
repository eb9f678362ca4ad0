//! Pool configuration and its consuming builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use r2d2::ManageConnection;

use crate::backend::{Backend, Capabilities, IsValid};
use crate::error::BuildError;
use crate::event::HandleEvent;
use crate::observation::Lag;

use crate::pool::MirrorPool;
pub use r2d2::CustomizeConnection;

/// When the pool moves writers back to the primary after a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failback {
    /// Stay on the mirror until [`MirrorPool::switch_over`] is called.
    Manual,
    /// Move back once the primary has been healthy for `after`.
    ///
    /// With a role-aware backend (PostgreSQL) the pool only ever serves writers from a
    /// writable side: it follows the cluster when an operator moves the primary role back, and
    /// never fails back to a diverged old primary.
    Automatic {
        /// How long the primary must have answered every heartbeat.
        after: Duration,
    },
}

/// The failover policy's own settings (the part of the configuration the policy reads).
#[derive(Clone, Debug)]
pub(crate) struct FailoverConfig {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub suspect_interval: Duration,
    pub failure_threshold: u32,
    pub min_switch_interval: Duration,
    pub failback: Failback,
    pub promote_on_failover: bool,
    pub promotion_timeout: Duration,
    pub verify_primary_failure: bool,
    pub primary_silence_bound: Duration,
    pub max_failover_lag: Option<Lag>,
    pub allow_data_loss: bool,
    /// What the backend reports: with `roles`, an unknown role never takes writes.
    pub capabilities: Capabilities,
}

impl Default for FailoverConfig {
    fn default() -> FailoverConfig {
        FailoverConfig {
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(200),
            suspect_interval: Duration::from_millis(5),
            failure_threshold: 3,
            min_switch_interval: Duration::from_secs(5),
            failback: Failback::Manual,
            promote_on_failover: false,
            promotion_timeout: Duration::from_secs(10),
            verify_primary_failure: true,
            primary_silence_bound: Duration::from_secs(5),
            max_failover_lag: None,
            allow_data_loss: false,
            capabilities: Capabilities::NONE,
        }
    }
}

/// Validated settings shared by the pool, its sub-pools and its monitor.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub max_size: u32,
    /// `None`: the default (2, at most `max_size`).
    pub min_idle: Option<u32>,
    pub mirror_min_idle: Option<u32>,
    pub connection_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub test_on_check_out: bool,
    pub validation_window: Duration,
    pub reset_on_return: bool,
    /// The `pool` label of metrics and the Prometheus rendering.
    pub name: String,
    pub leak_detection_threshold: Option<Duration>,
    pub slow_checkout_threshold: Option<Duration>,
    pub failover: FailoverConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_size: 10,
            min_idle: None,
            mirror_min_idle: None,
            connection_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            test_on_check_out: true,
            validation_window: Duration::from_millis(500),
            reset_on_return: false,
            name: "default".to_owned(),
            leak_detection_threshold: None,
            slow_checkout_threshold: None,
            failover: FailoverConfig::default(),
        }
    }
}

/// The default `min_idle` and `mirror_min_idle`, lowered to `max_size` when that is smaller.
const DEFAULT_MIN_IDLE: u32 = 2;

/// Bounds of the monitor's timings: below a millisecond the monitor would spin; above an hour a
/// failure would go unnoticed for longer than anyone would want.
const MIN_TIMING: Duration = Duration::from_millis(1);
const MAX_TIMING: Duration = Duration::from_secs(3600);

impl Config {
    /// `min_idle` of the primary side: the explicit value, or the default clamped to `max_size`.
    pub(crate) fn primary_min_idle(&self) -> u32 {
        self.min_idle.unwrap_or(DEFAULT_MIN_IDLE.min(self.max_size))
    }

    /// `min_idle` of the mirror side, likewise.
    pub(crate) fn mirror_min_idle(&self) -> u32 {
        self.mirror_min_idle
            .unwrap_or(DEFAULT_MIN_IDLE.min(self.max_size))
    }

    fn validate(&self) -> Result<(), BuildError> {
        if self.max_size == 0 {
            return Err(BuildError::config("max_size", "must be at least 1"));
        }
        for (option, value) in [
            ("min_idle", self.min_idle),
            ("mirror_min_idle", self.mirror_min_idle),
        ] {
            if let Some(v) = value.filter(|v| *v > self.max_size) {
                return Err(BuildError::config(
                    option,
                    format!("({v}) must not exceed max_size ({})", self.max_size),
                ));
            }
        }
        let f = &self.failover;
        for (option, value) in [
            ("heartbeat_interval", f.heartbeat_interval),
            ("heartbeat_timeout", f.heartbeat_timeout),
            ("suspect_interval", f.suspect_interval),
            ("promotion_timeout", f.promotion_timeout),
        ] {
            if !(MIN_TIMING..=MAX_TIMING).contains(&value) {
                return Err(BuildError::config(
                    option,
                    format!("({value:?}) must be between {MIN_TIMING:?} and {MAX_TIMING:?}"),
                ));
            }
        }
        // Any positive value is fine for these: the largest ones mean "never" (no arithmetic
        // on instants can overflow; see `clock::after`).
        for (option, value) in [
            ("connection_timeout", self.connection_timeout),
            ("primary_silence_bound", f.primary_silence_bound),
            ("validation_window", self.validation_window),
        ] {
            if value.is_zero() {
                return Err(BuildError::config(option, "must be greater than zero"));
            }
        }
        for (option, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(BuildError::config(
                    option,
                    "must be greater than zero (use None to disable it)",
                ));
            }
        }
        if let Failback::Automatic { after } = f.failback {
            if after.is_zero() {
                return Err(BuildError::config(
                    "failback",
                    "Automatic { after } must be greater than zero",
                ));
            }
        }
        if f.failure_threshold == 0 {
            return Err(BuildError::config(
                "failure_threshold",
                "must be at least 1",
            ));
        }
        let caps = f.capabilities;
        if let Some(limit) = f.max_failover_lag {
            if !caps.measures(limit.kind()) {
                return Err(BuildError::config(
                    "max_failover_lag",
                    format!(
                        "({limit}) is a {} limit, which this backend cannot measure, so the gate could never close",
                        limit.kind()
                    ),
                ));
            }
        }
        if f.promote_on_failover && !caps.promote {
            return Err(BuildError::config(
                "promote_on_failover",
                "is on, but this backend cannot promote a replica",
            ));
        }
        Ok(())
    }
}

/// A consuming builder for [`MirrorPool`]. Every option states its default.
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<M: ManageConnection> {
    config: Config,
    event_handlers: Vec<Arc<dyn HandleEvent>>,
    backend: Arc<dyn Backend<M>>,
    customizer: Option<Customizer<M>>,
}

/// A shared connection customizer.
pub(crate) type Customizer<M> = Arc<
    dyn CustomizeConnection<<M as ManageConnection>::Connection, <M as ManageConnection>::Error>,
>;

impl<M: ManageConnection> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("event_handlers", &self.event_handlers)
            .finish_non_exhaustive()
    }
}

impl<M: ManageConnection> Default for Builder<M> {
    fn default() -> Self {
        Builder::new()
    }
}

impl<M: ManageConnection> Builder<M> {
    /// A builder with every option at its default.
    pub fn new() -> Builder<M> {
        Builder {
            config: Config::default(),
            event_handlers: Vec::new(),
            backend: Arc::new(IsValid),
            customizer: None,
        }
    }

    /// Maximum number of pool connections per side (open or being opened). Default: 10.
    /// Must be ≥ 1. Each side also has one heartbeat connection of the monitor's, outside
    /// this limit: budget `max_size + 1` connections per side on each server.
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Idle connections the primary side keeps open. Default: 2, or `max_size` if that is
    /// smaller. An explicit value must be ≤ `max_size`.
    pub fn min_idle(mut self, min_idle: u32) -> Self {
        self.config.min_idle = Some(min_idle);
        self
    }

    /// Idle connections the mirror side keeps open, so a switch needs no new connect.
    /// Default: 2, or `max_size` if that is smaller. An explicit value must be ≤ `max_size`.
    pub fn mirror_min_idle(mut self, min_idle: u32) -> Self {
        self.config.mirror_min_idle = Some(min_idle);
        self
    }

    /// How long `get()` waits for a connection. Default: 30 s. Must be > 0; `Duration::MAX`
    /// waits without a deadline.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.config.connection_timeout = timeout;
        self
    }

    /// Idle connections unused for this long are closed (checked every heartbeat interval),
    /// but never below `min_idle`: the pool keeps `min_idle` connections open however long
    /// they idle (HikariCP's rule; r2d2 closes them and reopens). Default: 10 min; `None`
    /// disables. Must be > 0.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Connections older than this are closed when idle or returned. Default: 30 min;
    /// `None` disables. Must be > 0.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// Whether a connection is validated (`ManageConnection::is_valid`) at checkout when it
    /// was not used within `validation_window`. Default: true.
    pub fn test_on_check_out(mut self, test: bool) -> Self {
        self.config.test_on_check_out = test;
        self
    }

    /// A connection returned this recently is handed out without validation; the heartbeat
    /// covers the rest (HikariCP uses the same 500 ms). Measured on the pool's coarse clock,
    /// which the monitor advances every `heartbeat_interval`; a connection idle for the whole
    /// window is always validated. Default: 500 ms. Must be > 0.
    pub fn validation_window(mut self, window: Duration) -> Self {
        self.config.validation_window = window;
        self
    }

    /// Time between two heartbeats of a healthy side. Default: 250 ms. Must be between 1 ms
    /// and 1 h.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.failover.heartbeat_interval = interval;
        self
    }

    /// A heartbeat (including opening its connection) that takes longer fails. Default: 200 ms.
    /// Must be between 1 ms and 1 h.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.config.failover.heartbeat_timeout = timeout;
        self
    }

    /// Time between heartbeats while a side is suspect, or while the pool waits for a side to
    /// become writable; also the least time between two probes asked for by callers.
    /// Default: 5 ms. Must be between 1 ms and 1 h.
    pub fn suspect_interval(mut self, interval: Duration) -> Self {
        self.config.failover.suspect_interval = interval;
        self
    }

    /// Consecutive failed heartbeats that mark a side down. Default: 3. Must be ≥ 1.
    pub fn failure_threshold(mut self, threshold: u32) -> Self {
        self.config.failover.failure_threshold = threshold;
        self
    }

    /// Least time between two automatic switches, so a flapping side cannot cause ping-pong.
    /// Default: 5 s (zero allowed).
    pub fn min_switch_interval(mut self, interval: Duration) -> Self {
        self.config.failover.min_switch_interval = interval;
        self
    }

    /// When to move back to the primary after a failover. Default: [`Failback::Manual`].
    pub fn failback(mut self, failback: Failback) -> Self {
        self.config.failover.failback = failback;
        self
    }

    /// Whether the pool promotes a read-only mirror when the primary fails (the backend must
    /// support it). Default: false: the pool follows the cluster and serves writers from
    /// whichever side reports writable.
    pub fn promote_on_failover(mut self, promote: bool) -> Self {
        self.config.failover.promote_on_failover = promote;
        self
    }

    /// How long a promotion may take before it counts as failed. Default: 10 s. Must be between
    /// 1 ms and 1 h.
    pub fn promotion_timeout(mut self, timeout: Duration) -> Self {
        self.config.failover.promotion_timeout = timeout;
        self
    }

    /// Before promoting, confirm through the mirror that it lost the primary too (its
    /// replication link is down or silent for `primary_silence_bound`), so that a network cut
    /// between this application and a live primary never creates a second primary.
    /// Default: true.
    pub fn verify_primary_failure(mut self, verify: bool) -> Self {
        self.config.failover.verify_primary_failure = verify;
        self
    }

    /// With `verify_primary_failure`: how long the mirror must have heard nothing from the
    /// primary while its link still looks up. Default: 5 s. Must be > 0. Keep it above the
    /// mirror's own keep-alive period (PostgreSQL: half of `wal_receiver_timeout`).
    pub fn primary_silence_bound(mut self, bound: Duration) -> Self {
        self.config.failover.primary_silence_bound = bound;
        self
    }

    /// The pool does not fail over to a mirror that would lose more than this: for
    /// [`Lag::Bytes`] and [`Lag::Transactions`] the primary's last reported position against
    /// what the mirror has applied now (so the gate reopens once the mirror catches up after
    /// its primary died; for transactions, without the primary's position, the mirror's own
    /// count of unapplied transactions); for [`Lag::Time`] the mirror's own fresh report. An unknown lag
    /// refuses too. The backend must measure that kind ([`Capabilities`]), or `build` fails.
    /// Default: `None` (no limit).
    pub fn max_failover_lag(mut self, limit: Option<Lag>) -> Self {
        self.config.failover.max_failover_lag = limit;
        self
    }

    /// Fail over even when the lag exceeds `max_failover_lag`, accepting lost writes.
    /// Default: false.
    pub fn allow_data_loss(mut self, allow: bool) -> Self {
        self.config.failover.allow_data_loss = allow;
        self
    }

    /// Adds a handler for the pool's events (failover and per-connection ones). May be called
    /// several times: every handler gets every event (unlike r2d2, where a second call
    /// replaces the first). Default: none (failover events are logged through the `log`
    /// crate either way). A handler that panics is logged at `error` and does not harm the
    /// pool.
    pub fn event_handler(mut self, handler: Box<dyn HandleEvent>) -> Self {
        self.event_handlers.push(Arc::from(handler));
        self
    }

    /// Per-connection set-up and tear-down: r2d2's own trait, so an existing customizer plugs
    /// in. `on_acquire` runs right after a pool connection is opened (on the connecting
    /// thread; an error discards the connection and counts as a failed connect), e.g. for
    /// `SET search_path` or `statement_timeout`; `on_release` gets every pool connection the
    /// pool closes (on a background thread). Heartbeat connections are not customized.
    /// Default: none. A customizer that panics counts as failing.
    pub fn connection_customizer(
        mut self,
        customizer: Box<dyn CustomizeConnection<M::Connection, M::Error>>,
    ) -> Self {
        self.customizer = Some(Arc::from(customizer));
        self
    }

    /// Database-specific heartbeats, promotion, error classification and session reset.
    /// Default: [`IsValid`], which knows up/down only.
    pub fn backend<B: Backend<M>>(mut self, backend: B) -> Self {
        self.config.failover.capabilities = backend.capabilities();
        self.backend = Arc::new(backend);
        self
    }

    /// A name for the pool, used as the `pool` label of its metrics (feature `metrics`), so
    /// several pools in one process stay apart. Default: "default".
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// A connection checked out for longer than this is logged once at `warn`, with the
    /// backtrace of where it was taken (captured at every checkout while this is on, so keep it
    /// off in hot paths unless you are hunting a leak). Default: `None` (off).
    pub fn leak_detection_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.config.leak_detection_threshold = threshold;
        self
    }

    /// A `get()` that waited longer than this for its connection is logged at `warn` (the wait
    /// is measured only when the caller had to wait, so it costs nothing otherwise). Expect such
    /// lines during a failover. Default: `None` (off).
    pub fn slow_checkout_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.config.slow_checkout_threshold = threshold;
        self
    }

    /// Whether a returned connection's session is reset ([`Backend::reset`]; PostgreSQL:
    /// `DISCARD ALL`) before reuse, so temporary tables, prepared statements and `SET`s do not
    /// leak to the next borrower. Costs a round trip per return. Default: false.
    pub fn reset_on_return(mut self, reset: bool) -> Self {
        self.config.reset_on_return = reset;
        self
    }

    /// Builds the pool and starts its monitor. Does not wait for connections or heartbeats:
    /// the mirror may be down when the pool starts, and the first `get()` connects. Fails
    /// only on invalid configuration, or if the operating system refuses a thread. To fail
    /// fast at start-up on wrong credentials, unreachable hosts, missing privileges or a
    /// mirror that is not one, use [`build_checked`](Self::build_checked).
    pub fn build(self, primary: M, mirror: M) -> Result<MirrorPool<M>, BuildError> {
        self.config.validate()?;
        MirrorPool::start(
            self.config,
            primary,
            mirror,
            self.backend,
            self.event_handlers,
            self.customizer,
        )
    }

    /// Builds the pool, then waits (up to `connection_timeout`) for the first heartbeat of
    /// each side and checks what it showed: both sides reachable (the connect error
    /// otherwise, e.g. wrong credentials), not the same server twice, and, with a role-aware
    /// backend, the primary writable, the mirror a replica of it, and the privileges the
    /// configured features need. This is what r2d2's `build` gives its users (it waits for
    /// `min_idle`); use it at service start-up. The pool is dropped on error.
    pub fn build_checked(self, primary: M, mirror: M) -> Result<MirrorPool<M>, BuildError> {
        let timeout = self.config.connection_timeout;
        let pool = self.build(primary, mirror)?;
        pool.check(timeout)?;
        Ok(pool)
    }
}
