//! The failover scenarios, written once for every engine.
//!
//! Each scenario is a function generic over an [`Engine`]: how to start a pair
//! of real servers, drive them ([`ServerControl`]: kill, stop, pause, start,
//! promote, count connections, read rows back), build a pool on them, and the
//! few facts that differ between engines (error texts, grant names, how to
//! make a replica lag). `tests/postgres_failover.rs` and
//! `tests/mysql_failover.rs` are thin lists of `#[test]`s calling these
//! scenarios by the same names, as crossbeam-channel tests every channel
//! flavour under the same names.
//!
//! Included with `#[path]` by the failover test files only (not through
//! `common/mod.rs`), so the other test binaries do not compile it. The
//! scenarios live in the tests rather than in the library's testkit because
//! they assert: a library path of the testkit must not panic.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use mirrorpool::backend::Fault;
use mirrorpool::event::SwitchReason;
use mirrorpool::testkit::{
    Grants, Ledger, Load, LoadTable, PauseGuard, ProxyMode, TcpProxy, TestkitError, APP_PASSWORD,
};
use mirrorpool::{Blocked, Failback};
use mirrorpool::{
    BuildError, Builder, GetError, Health, Lag, ManageConnection, MirrorPool, PooledConnection,
    Refusal, Role, Side, Status,
};

use crate::common::wait_until;

/// The bound of every wait for the pool or a server.
pub const LONG: Duration = Duration::from_secs(30);

/// The connection type of an engine's manager.
pub type Conn<E> = <<E as Engine>::Manager as ManageConnection>::Connection;
/// The error type of an engine's manager.
pub type ConnError<E> = <<E as Engine>::Manager as ManageConnection>::Error;

/// One server of a test pair, as the scenarios drive it. Implemented for the
/// testkit's server types by forwarding to their own methods.
pub trait ServerControl: Sync {
    /// `"primary"` or `"mirror"`.
    fn name(&self) -> &str;
    /// The server's port on 127.0.0.1.
    fn port(&self) -> u16;
    /// SIGKILL.
    fn kill(&self) -> Result<(), TestkitError>;
    /// A shutdown that skips the engine's clean-up (no checkpoint).
    fn stop_immediate(&self) -> Result<(), TestkitError>;
    /// SIGSTOP of every process of the server, undone when the guard drops.
    fn pause_guard(&self) -> Result<PauseGuard<'_>, TestkitError>;
    /// A restart on the same port and data.
    fn start(&self) -> Result<(), TestkitError>;
    /// Makes a replica a primary.
    fn promote(&self) -> Result<(), TestkitError>;
    /// Whether the server is still a replica (not promoted).
    fn is_replica(&self) -> bool;
    /// Connections held on the server by the application role's pools.
    fn pool_connections(&self) -> i64;
    /// The rows of the load table `t`, read as the superuser.
    fn rows(&self) -> HashSet<(i32, i64)>;
}

/// Who a manager logs in as.
#[derive(Clone, Copy, Debug)]
pub enum Login<'a> {
    /// The pair's application role.
    App,
    /// The application role with this (wrong) password.
    WrongPassword(&'a str),
}

/// What a scenario needs of a database engine.
pub trait Engine: Sync {
    /// The connection manager the pools use.
    type Manager: ManageConnection + Debug;
    /// One server of a pair.
    type Server: ServerControl;
    /// A primary + mirror pair.
    type Pair: Sync;
    /// The writer load's table `t`.
    type Table: LoadTable<Self::Manager> + Clone;

    /// Whether the engine's servers report epochs (PostgreSQL timelines).
    const EPOCHS: bool;
    /// What the server says to a wrong password.
    const WRONG_PASSWORD: &'static str;
    /// Words of which the error of a connection that the network cut contains one.
    const CONNECTION_LOST_WORDS: &'static [&'static str];
    /// The grant that lets a role see replication, as the pool names it.
    const REPLICATION_STATUS_GRANT: &'static str;
    /// The grant that lets a role promote, as the pool names it.
    const PROMOTE_GRANT: &'static str;

    /// A pair whose application role has exactly `grants`, with the empty
    /// load table `t` and a streaming mirror (synchronous if asked: every
    /// acknowledged commit is on the mirror). Panics with the testkit's message
    /// (naming what to install) if the pair cannot start.
    fn pair(&self, synchronous: bool, grants: Grants) -> Self::Pair;
    /// Like [`pair`](Self::pair) (asynchronous), but the mirror notices a
    /// silent primary only after a minute.
    fn pair_that_notices_a_lost_primary_late(&self, grants: Grants) -> Self::Pair;
    /// A pair (no table) whose primary accepts only a handful of application
    /// connections.
    fn pair_with_few_connections(&self) -> Self::Pair;
    /// The pair's primary.
    fn primary<'p>(&self, pair: &'p Self::Pair) -> &'p Self::Server;
    /// The pair's mirror.
    fn mirror<'p>(&self, pair: &'p Self::Pair) -> &'p Self::Server;
    /// Waits until the mirror streams from the primary.
    fn wait_for_mirror_streaming(&self, pair: &Self::Pair);
    /// Makes the mirror replicate through `port` (a proxy) instead.
    fn replicate_through(&self, pair: &Self::Pair, port: u16);
    /// The load table `t`.
    fn table(&self) -> Self::Table;

    /// The engine's pool builder (its backend installed), default options.
    fn builder(&self) -> Builder<Self::Manager>;
    /// A manager for `server` reached on `port` (its own, or a proxy's).
    fn manager(&self, server: &Self::Server, port: u16, login: Login<'_>) -> Self::Manager;
    /// `manager` with a bound on resetting a returned connection.
    fn with_reset_timeout(&self, manager: Self::Manager, timeout: Duration) -> Self::Manager;
    /// A manager for something on `port` that accepts and never answers.
    fn silent_manager(&self, port: u16, connect_timeout: Duration) -> Self::Manager;
    /// The error of a pool built from a primary connection string that does
    /// not parse and holds the password `s3cret`, and a text it must contain.
    fn bad_connection_string_error(&self) -> (String, &'static str);
    /// The backend's classification of `error`.
    fn classify(&self, error: &ConnError<Self>) -> Fault;
    /// Whether the pool can sever the connection's socket.
    fn severable(&self, conn: &Conn<Self>) -> bool;
    /// A trivial read (`SELECT 1`).
    fn select_one(&self, conn: &mut Conn<Self>) -> Result<(), ConnError<Self>>;
    /// Leaves session state behind: a temporary table and a session setting.
    fn dirty_session(&self, conn: &mut Conn<Self>);
    /// Asserts that the session state [`dirty_session`](Self::dirty_session)
    /// leaves is gone.
    fn assert_clean_session(&self, conn: &mut Conn<Self>);

    /// A `max_failover_lag` the engine measures, exceeded by
    /// [`write_many_rows`](Self::write_many_rows) while replay is paused.
    fn lag_limit(&self) -> Lag;
    /// Stops the mirror's replay (it keeps receiving).
    fn pause_replay(&self, pair: &Self::Pair);
    /// Restarts the mirror's replay.
    fn resume_replay(&self, pair: &Self::Pair);
    /// Writes far more than [`lag_limit`](Self::lag_limit) on the primary,
    /// as writer 1000.
    fn write_many_rows(&self, pair: &Self::Pair);
    /// How many times `server` was promoted since it was created.
    fn promotions(&self, server: &Self::Server) -> i64;
    /// Makes `server` refuse new connections of the application role for capacity ("too
    /// many connections") while the open ones keep working (`false`: accept them again).
    fn refuse_new_app_connections(&self, server: &Self::Server, refuse: bool);
    /// Ends the pool's heartbeat sessions on `server`; returns how many.
    fn end_heartbeat_sessions(&self, server: &Self::Server) -> i64;
    /// The application role's sessions on `server`.
    fn app_sessions(&self, server: &Self::Server) -> i64;
}

// ---------------------------------------------------------------------------------------------
// Building blocks.

/// The scenarios' pool options.
fn builder<E: Engine>(e: &E) -> Builder<E::Manager> {
    e.builder()
        .max_size(8)
        .min_idle(2)
        .mirror_min_idle(2)
        .connection_timeout(Duration::from_secs(20))
        .min_switch_interval(Duration::from_millis(500))
}

/// A pool on `pair` whose primary is reached on `primary_port`.
fn pool_on<E: Engine>(
    e: &E,
    pair: &E::Pair,
    primary_port: u16,
    b: Builder<E::Manager>,
) -> MirrorPool<E::Manager> {
    b.build(
        e.manager(e.primary(pair), primary_port, Login::App),
        e.manager(e.mirror(pair), e.mirror(pair).port(), Login::App),
    )
    .expect("valid configuration")
}

fn pool<E: Engine>(e: &E, pair: &E::Pair, b: Builder<E::Manager>) -> MirrorPool<E::Manager> {
    pool_on(e, pair, e.primary(pair).port(), b)
}

fn both_up<M: ManageConnection>(pool: &MirrorPool<M>) {
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.primary.health == Health::Up && s.mirror.health == Health::Up
        }),
        "both sides up: {:?}",
        pool.status()
    );
}

/// `n` writers inserting through `pool`, each pausing 2 ms after a statement.
fn writers<E: Engine>(e: &E, pool: &MirrorPool<E::Manager>, n: usize) -> Load {
    Load::builder()
        .writers(n)
        .pause(Duration::from_millis(2))
        .start(pool, e.table())
        .expect("start the writers")
}

/// Waits (bounded) until more than `n` writes were acknowledged by `side` since `since`
/// (any time if `None`); fails the test with the pool's status otherwise.
fn expect_acks<M: ManageConnection>(
    load: &Load,
    side: Side,
    since: Option<Instant>,
    n: usize,
    pool: &MirrorPool<M>,
) {
    assert!(
        load.wait_for_acks(side, since, n, LONG),
        "fewer than {n} writes acknowledged by the {side}: {:?}",
        pool.status()
    );
}

/// Writers left the lost primary for the (unpromoted) mirror and returned when it came back.
fn writers_left_and_came_back<M: ManageConnection>(pool: &MirrorPool<M>) {
    let status = pool.status();
    assert_eq!(status.active, Side::Primary, "{status:?}");
    assert_eq!(status.switches, 2, "{status:?}");
    let last = status.last_switch.as_ref().expect("a switch record");
    assert_eq!(
        (last.from, last.to, last.reason),
        (Side::Mirror, Side::Primary, SwitchReason::Recovered),
        "{status:?}"
    );
    assert_eq!(status.fenced, None, "{status:?}");
}

/// Whether the mirror's replication figures exceed `limit`.
fn lag_over(status: &Status, limit: Lag) -> bool {
    let Some(r) = status.mirror.replication else {
        return false;
    };
    match limit {
        Lag::Bytes(b) => r.lag_bytes.unwrap_or(0) > b,
        Lag::Transactions(n) => r.lag_transactions.unwrap_or(0) > n,
        Lag::Time(t) => r.lag_time.unwrap_or_default() > t,
        _ => false,
    }
}

/// Whether `problems` holds a missing privilege whose text mentions `grant`.
fn names_missing(problems: &[Refusal], grant: &str) -> bool {
    problems
        .iter()
        .any(|p| matches!(p, Refusal::MissingPrivilege { what, .. } if what.contains(grant)))
}

fn assert_no_get_failed(ledger: &Ledger) {
    assert!(
        ledger.get_errors.is_empty(),
        "get() failed: {:?}",
        ledger.get_error_messages()
    );
}

// ---------------------------------------------------------------------------------------------
// Failing over under writer load.

pub fn sigkill_of_the_primary_promotes_the_mirror_loses_no_acknowledged_write_and_fails_no_get<
    E: Engine,
>(
    e: &E,
) {
    let pair = e.pair(true, Grants::all());
    let pool = pool(e, &pair, builder(e).promote_on_failover(true));
    both_up(&pool);
    let load = writers(e, &pool, 8);
    expect_acks(&load, Side::Primary, None, 100, &pool);
    let killed_at = Instant::now();
    e.primary(&pair).kill().unwrap();
    expect_acks(&load, Side::Mirror, Some(killed_at), 100, &pool);
    let ledger = load.stop();

    assert_no_get_failed(&ledger);
    // Only statements in flight at the kill may fail (8 writers).
    assert!(
        ledger.failed.len() <= 16,
        "{} statements failed",
        ledger.failed.len()
    );
    let status = pool.status();
    assert_eq!(status.active, Side::Mirror);
    assert_eq!(status.mirror.role, Role::Writable);
    assert_eq!(status.primary.health, Health::Down);
    assert_eq!(status.fenced, Some(Side::Primary));
    // Synchronous replication: every acknowledged insert is on the new primary.
    let missing = ledger.lost_against(&e.mirror(&pair).rows());
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(ledger.acked.len() > 200);
    let first = ledger.first_ack_on(Side::Mirror, killed_at).unwrap();
    eprintln!(
        "kill -> first acknowledged write on the promoted mirror: {:?}",
        first - killed_at
    );
    assert!(first - killed_at < Duration::from_secs(10));
}

pub fn immediate_shutdown_of_the_primary_fails_over<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::all());
    let pool = pool(e, &pair, builder(e).promote_on_failover(true));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    let t = Instant::now();
    e.primary(&pair).stop_immediate().unwrap();
    expect_acks(&load, Side::Mirror, Some(t), 50, &pool);
    let ledger = load.stop();
    assert_no_get_failed(&ledger);
    assert_eq!(pool.status().switches, 1);
}

pub fn a_hung_primary_is_switched_away_from_and_fenced_when_it_resumes<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::all());
    let pool = pool(e, &pair, builder(e).promote_on_failover(true));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    let paused_at = Instant::now();
    let guard = e.primary(&pair).pause_guard().unwrap();
    // Detection needs failure_threshold × heartbeat_timeout; promotion waits until the mirror
    // itself lost the primary (its replication timeout, 2 s in the testkit).
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    let detected = paused_at.elapsed();
    // Writers leave the hung primary at once and wait on the mirror until it confirms the
    // loss (≈ 1.3 s later here), instead of queueing on the hung server meanwhile.
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.active == Side::Mirror
                && matches!(
                    s.blocked,
                    Some(Blocked::ConfirmingFailure(Side::Mirror))
                        | Some(Blocked::Refused(Refusal::PrimaryStillStreaming))
                )
        }),
        "writers did not wait on the mirror before its promotion: {:?}",
        pool.status()
    );
    expect_acks(&load, Side::Mirror, Some(paused_at), 20, &pool);
    let served = paused_at.elapsed();
    eprintln!("SIGSTOP -> primary down {detected:?}, -> writes on the mirror {served:?}");
    assert!(detected < Duration::from_secs(5));
    // The old primary resumes, writable: split brain, fenced.
    drop(guard);
    assert!(
        wait_until(LONG, || pool.status().split_brain),
        "{:?}",
        pool.status()
    );
    let status = pool.status();
    assert_eq!(status.active, Side::Mirror);
    assert_eq!(status.fenced, Some(Side::Primary));
    let resumed = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let ledger = load.stop();
    assert_no_get_failed(&ledger);
    assert_eq!(
        ledger
            .acked
            .iter()
            .filter(|a| a.side == Side::Primary && a.at > resumed + Duration::from_millis(100))
            .count(),
        0,
        "writes went to the fenced old primary after it resumed"
    );
}

pub fn a_black_holed_primary_is_not_promoted_over_while_the_mirror_still_streams_from_it<
    E: Engine,
>(
    e: &E,
) {
    let pair = e.pair(false, Grants::all());
    let proxy = TcpProxy::start(([127, 0, 0, 1], e.primary(&pair).port()).into()).unwrap();
    let pool = pool_on(e, &pair, proxy.port(), builder(e).promote_on_failover(true));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    let cut_at = Instant::now();
    proxy.set_mode(ProxyMode::BlackHole);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    eprintln!("black hole -> primary down in {:?}", cut_at.elapsed());
    assert!(cut_at.elapsed() < Duration::from_secs(5));
    // Only this application lost the primary: the mirror still streams, so no promotion.
    assert!(
        wait_until(LONG, || pool.status().blocked
            == Some(Blocked::Refused(Refusal::PrimaryStillStreaming))),
        "{:?}",
        pool.status()
    );
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(
        err.to_string()
            .contains("mirror still receives from the primary"),
        "{err}"
    );
    assert_eq!(pool.status().mirror.role, Role::ReadOnly);
    // Reads still work from the mirror.
    let mut reader = pool.get_from(Side::Mirror).unwrap();
    let n = e.table().read_rows(&mut reader).unwrap().len();
    assert!(n > 0);
    drop(reader);
    // The network heals: writers go back to the primary.
    proxy.set_mode(ProxyMode::Pass);
    let healed = Instant::now();
    expect_acks(&load, Side::Primary, Some(healed), 20, &pool);
    load.stop();
    writers_left_and_came_back(&pool);
    assert!(e.mirror(&pair).is_replica());
}

pub fn an_isolated_primary_black_holed_for_everyone_is_switched_away_from_within_seconds<
    E: Engine,
>(
    e: &E,
) {
    let pair = e.pair(false, Grants::all());
    // Route the mirror's replication through a second proxy, so one cut isolates the primary.
    let app_proxy = TcpProxy::start(([127, 0, 0, 1], e.primary(&pair).port()).into()).unwrap();
    let repl_proxy = TcpProxy::start(([127, 0, 0, 1], e.primary(&pair).port()).into()).unwrap();
    e.replicate_through(&pair, repl_proxy.port());
    assert!(wait_until(LONG, || repl_proxy.active_connections() > 0));
    e.wait_for_mirror_streaming(&pair);
    let pool = pool_on(
        e,
        &pair,
        app_proxy.port(),
        builder(e).promote_on_failover(true),
    );
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    let cut_at = Instant::now();
    app_proxy.set_mode(ProxyMode::BlackHole);
    repl_proxy.set_mode(ProxyMode::BlackHole);
    expect_acks(&load, Side::Mirror, Some(cut_at), 20, &pool);
    eprintln!(
        "isolation -> writes on the promoted mirror after {:?}",
        cut_at.elapsed()
    );
    let ledger = load.stop();
    assert_no_get_failed(&ledger);
    assert_eq!(pool.status().active, Side::Mirror);
}

pub fn a_cut_network_without_promotion_blocks_writers_with_a_clear_error_and_recovers<E: Engine>(
    e: &E,
) {
    let pair = e.pair(false, Grants::none());
    let proxy = TcpProxy::start(([127, 0, 0, 1], e.primary(&pair).port()).into()).unwrap();
    let pool = pool_on(
        e,
        &pair,
        proxy.port(),
        builder(e).connection_timeout(Duration::from_secs(1)),
    );
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    proxy.set_mode(ProxyMode::Drop);
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    let started = Instant::now();
    match pool.get_timeout(Duration::from_millis(500)) {
        Err(e @ GetError::Unavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no side accepts writes"), "{msg}");
            assert!(msg.contains("primary is down"), "{msg}");
            assert!(msg.contains("mirror is up"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Longer than the writers' 1 s timeout, so their own get() calls fail too.
    thread::sleep(Duration::from_millis(1500));
    proxy.set_mode(ProxyMode::Pass);
    let healed = Instant::now();
    expect_acks(&load, Side::Primary, Some(healed), 20, &pool); // writers resume when the network heals
    let ledger = load.stop();
    // Every error names what blocked the writer: the pool's state, or the cause on the primary
    // (a get() that started before the primary was marked down).
    assert!(!ledger.get_errors.is_empty());
    for msg in ledger.get_error_messages() {
        assert!(
            msg.contains("no side accepts writes")
                || (msg.contains("primary")
                    && E::CONNECTION_LOST_WORDS.iter().any(|w| msg.contains(w))),
            "unclear error: {msg}"
        );
    }
    writers_left_and_came_back(&pool);
}

pub fn a_restarted_primary_is_served_again_when_nobody_promoted<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::none());
    let pool = pool(e, &pair, builder(e));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    e.primary(&pair).kill().unwrap();
    assert!(wait_until(LONG, || pool.status().primary.health == Health::Down));
    let restarted = Instant::now();
    e.primary(&pair).start().unwrap();
    expect_acks(&load, Side::Primary, Some(restarted), 50, &pool);
    let ledger = load.stop();
    // Writers waited through the restart instead of failing.
    assert_no_get_failed(&ledger);
    writers_left_and_came_back(&pool);
}

pub fn an_external_promotion_is_followed_without_the_pool_promoting<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::none());
    let pool = pool(e, &pair, builder(e));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    expect_acks(&load, Side::Primary, None, 50, &pool);
    e.primary(&pair).kill().unwrap();
    assert!(wait_until(LONG, || pool.status().blocked
        == Some(Blocked::NoWritableSide)));
    e.mirror(&pair).promote().unwrap();
    let writable_at = Instant::now();
    expect_acks(&load, Side::Mirror, Some(writable_at), 20, &pool);
    let ledger = load.stop();
    let first = ledger
        .first_ack_on(Side::Mirror, writable_at - Duration::from_secs(1))
        .unwrap();
    eprintln!(
        "mirror writable -> first write {:?}",
        first.saturating_duration_since(writable_at)
    );
    assert_no_get_failed(&ledger);
    assert_eq!(pool.status().active, Side::Mirror);
}

pub fn a_dead_mirror_with_a_healthy_primary_causes_no_switch<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::all());
    let pool = pool(e, &pair, builder(e).promote_on_failover(true));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    e.mirror(&pair).kill().unwrap();
    assert!(wait_until(LONG, || pool.status().mirror.health == Health::Down));
    let t = Instant::now();
    expect_acks(&load, Side::Primary, Some(t), 50, &pool);
    let ledger = load.stop();
    assert!(ledger.get_errors.is_empty());
    let s = pool.status();
    assert_eq!(s.switches, 0);
    assert_eq!(s.active, Side::Primary);
    assert!(s.mirror.last_error.is_some());
    // The primary sees its replica gone.
    assert!(
        wait_until(LONG, || pool
            .status()
            .primary
            .replication
            .and_then(|r| r.replicas_attached)
            == Some(0)),
        "{:?}",
        pool.status().primary
    );
}

pub fn with_both_down_get_names_both_sides_and_the_pool_recovers_when_one_returns<E: Engine>(
    e: &E,
) {
    let pair = e.pair(false, Grants::none());
    let pool = pool(e, &pair, builder(e));
    both_up(&pool);
    let load = writers(e, &pool, 4);
    e.mirror(&pair).kill().unwrap();
    e.primary(&pair).kill().unwrap();
    assert!(wait_until(LONG, || pool.status().blocked == Some(Blocked::BothDown)));
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("both sides are down"), "{msg}");
    assert!(
        msg.contains("primary is down (last error:") && msg.contains("mirror is down (last error:"),
        "{msg}"
    );
    e.primary(&pair).start().unwrap();
    let back = Instant::now();
    expect_acks(&load, Side::Primary, Some(back), 20, &pool); // recovers when the primary returns
    let ledger = load.stop();
    assert!(
        ledger
            .get_error_messages()
            .iter()
            .all(|e| e.contains("no side")),
        "{:?}",
        ledger.get_error_messages()
    );
}

pub fn the_lag_gate_refuses_to_promote_a_mirror_that_is_far_behind_and_reopens_once_it_caught_up<
    E: Engine,
>(
    e: &E,
) {
    let pair = e.pair(false, Grants::all());
    let limit = e.lag_limit();
    let pool = pool(
        e,
        &pair,
        builder(e)
            .promote_on_failover(true)
            .max_failover_lag(Some(limit)),
    );
    both_up(&pool);
    // Stop replay on the mirror and write a lot on the primary.
    e.pause_replay(&pair);
    e.write_many_rows(&pair);
    assert!(
        wait_until(LONG, || lag_over(&pool.status(), limit)),
        "{:?}",
        pool.status().mirror
    );
    e.primary(&pair).kill().unwrap();
    assert!(
        wait_until(LONG, || matches!(
            pool.status().blocked,
            Some(Blocked::Refused(Refusal::LagTooHigh { .. }))
        )),
        "{:?}",
        pool.status()
    );
    let err = pool.get_timeout(Duration::from_millis(300)).unwrap_err();
    assert!(
        err.to_string().contains("exceeds max_failover_lag"),
        "{err}"
    );
    assert!(e.mirror(&pair).is_replica(), "mirror promoted");
    // Once the mirror has applied what it received, the gate opens and the pool promotes it.
    e.resume_replay(&pair);
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.active == Side::Mirror && s.mirror.role == Role::Writable && s.blocked.is_none()
        }),
        "{:?}",
        pool.status()
    );
    assert!(!e.mirror(&pair).is_replica());
    let rows = e.mirror(&pair).rows();
    assert!(
        rows.contains(&(1000, 1)),
        "the lagging rows were not applied"
    );
}

pub fn after_a_promotion_a_restarted_old_primary_is_fenced_and_reported<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::all());
    let pool = pool(
        e,
        &pair,
        builder(e)
            .promote_on_failover(true)
            .failback(Failback::Automatic {
                after: Duration::from_millis(200),
            }),
    );
    both_up(&pool);
    e.primary(&pair).kill().unwrap();
    assert!(
        wait_until(LONG, || pool.status().mirror.role == Role::Writable),
        "{:?}",
        pool.status()
    );
    let before = e.mirror(&pair).rows().len();
    e.primary(&pair).start().unwrap();
    assert!(
        wait_until(LONG, || pool.status().split_brain),
        "{:?}",
        pool.status()
    );
    let status = pool.status();
    assert_eq!(status.active, Side::Mirror);
    assert_eq!(status.fenced, Some(Side::Primary));
    if E::EPOCHS {
        assert!(status.mirror.epoch > status.primary.epoch, "{status:?}");
    } else {
        assert_eq!((status.mirror.epoch, status.primary.epoch), (None, None));
    }
    // Writes go to the new primary only, even with automatic failback configured.
    let table = e.table();
    for i in 0..50 {
        let mut c = pool.get().unwrap();
        assert_eq!(PooledConnection::side(&c), Side::Mirror);
        table.insert(&mut c, 500, i64::from(i)).unwrap();
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(pool.active(), Side::Mirror);
    let writer_500 = |rows: HashSet<(i32, i64)>| rows.iter().filter(|r| r.0 == 500).count();
    assert_eq!(writer_500(e.primary(&pair).rows()), 0);
    assert_eq!(e.mirror(&pair).rows().len(), before + 50);
}

pub fn repeated_switches_under_load_leak_no_server_connections<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::none());
    // Role-blind backend so switches can go both ways on a healthy pair (reads only).
    let max = 4u32;
    // Generous heartbeat bounds: this test is about connection accounting, and a starved
    // machine must not turn it into a failover test.
    let (primary, mirror) = (e.primary(&pair), e.mirror(&pair));
    let pool = MirrorPool::builder()
        .max_size(max)
        .min_idle(2)
        .mirror_min_idle(2)
        .heartbeat_timeout(Duration::from_secs(2))
        .failure_threshold(10)
        .build(
            e.manager(primary, primary.port(), Login::App),
            e.manager(mirror, mirror.port(), Login::App),
        )
        .unwrap();
    both_up(&pool);
    let stop = Arc::new(AtomicBool::new(false));
    thread::scope(|scope| {
        for _ in 0..6 {
            let (pool, stop) = (pool.clone(), stop.clone());
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                    let mut c = pool.get().expect("get during switches");
                    e.select_one(&mut c).expect("read");
                    n += 1;
                }
            });
        }
        let limit = i64::from(max) + 1; // the pool's connections plus its heartbeat connection
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for i in 0..10 {
                let to = if i % 2 == 0 {
                    Side::Mirror
                } else {
                    Side::Primary
                };
                pool.switch_over(to).unwrap();
                thread::sleep(Duration::from_millis(150));
                for server in [primary, mirror] {
                    // Drained connections close in the background: allow them a moment to go.
                    let mut n = 0;
                    assert!(
                        wait_until(Duration::from_secs(5), || {
                            n = server.pool_connections();
                            n <= limit
                        }),
                        "{} has {n} pool connections, limit {limit}",
                        server.name()
                    );
                }
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    });
    drop(pool);
    for server in [primary, mirror] {
        assert!(
            wait_until(LONG, || server.pool_connections() == 0),
            "{} still has connections after the pool was dropped",
            server.name()
        );
    }
}

pub fn wrong_credentials_and_unreachable_hosts_are_clear_errors_without_secrets<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::none());
    let (primary, mirror) = (e.primary(&pair), e.mirror(&pair));
    let pool = e
        .builder()
        .connection_timeout(Duration::from_millis(800))
        .build(
            e.manager(
                primary,
                primary.port(),
                Login::WrongPassword("not-the-password"),
            ),
            // Nothing listens on the mirror's port once it is killed.
            e.manager(mirror, mirror.port(), Login::App),
        )
        .unwrap();
    mirror.kill().unwrap();
    let err = pool.get().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(E::WRONG_PASSWORD), "{msg}");
    assert!(!msg.contains("not-the-password"));
    let debug = format!(
        "{err:?} {:?} {:?}",
        pool.status(),
        pool.manager(Side::Primary)
    );
    assert!(!debug.contains("not-the-password"), "{debug}");
    assert!(!debug.contains(APP_PASSWORD), "{debug}");
    assert!(wait_until(LONG, || pool.status().mirror.health == Health::Down));
    let mirror_err = pool.status().mirror.last_error.unwrap().chain();
    assert!(mirror_err.contains("refused"), "{mirror_err}");
    // A connection string that does not parse names the side and does not echo the string.
    let (text, names) = e.bad_connection_string_error();
    assert!(text.contains(names), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

pub fn reset_on_return_discards_session_state<E: Engine>(e: &E) {
    let pair = e.pair(false, Grants::none());
    let pool = pool(
        e,
        &pair,
        builder(e)
            .max_size(1)
            .min_idle(1)
            .mirror_min_idle(1)
            .reset_on_return(true),
    );
    {
        let mut c = pool.get().unwrap();
        e.dirty_session(&mut c);
    }
    let mut c = pool.get().unwrap();
    e.assert_clean_session(&mut c);
}

pub fn status_reports_roles_epochs_and_replication<E: Engine>(e: &E) {
    let pair = e.pair(true, Grants::none().replication_status(true));
    let pool = pool(e, &pair, builder(e));
    both_up(&pool);
    assert!(
        wait_until(LONG, || {
            let s = pool.status();
            s.primary.replication.and_then(|r| r.replicas_attached) == Some(1)
                && s.mirror
                    .replication
                    .and_then(|r| r.upstream)
                    .is_some_and(|u| u.streaming == Some(true))
        }),
        "{:?}",
        pool.status()
    );
    let s = pool.status();
    assert_eq!(s.primary.role, Role::Writable);
    assert_eq!(s.mirror.role, Role::ReadOnly);
    assert_eq!(s.primary.epoch, E::EPOCHS.then_some(1));
    assert!(s.primary.last_rtt.is_some());
    // The backend classifies a write on the replica as "not writable".
    let mut c = pool.get_from(Side::Mirror).unwrap();
    let err = e.table().insert(&mut c, 1, 1).unwrap_err();
    assert_eq!(PooledConnection::report(&mut c, &err), Fault::NotWritable);
}

pub fn two_pools_on_one_cluster_promote_once_and_both_follow<E: Engine>(e: &E) {
    let pair = e.pair(true, Grants::all());
    let a = pool(e, &pair, builder(e).promote_on_failover(true));
    let b = pool(e, &pair, builder(e).promote_on_failover(true));
    both_up(&a);
    both_up(&b);
    let (wa, wb) = (writers(e, &a, 3), writers(e, &b, 3));
    expect_acks(&wa, Side::Primary, None, 20, &a);
    let killed = Instant::now();
    e.primary(&pair).kill().unwrap();
    assert!(
        wait_until(LONG, || wa.acked_since(Side::Mirror, killed) > 20
            && wb.acked_since(Side::Mirror, killed) > 20),
        "{:?}\n{:?}",
        a.status(),
        b.status()
    );
    let (la, lb) = (wa.stop(), wb.stop());
    assert!(
        la.get_errors.is_empty() && lb.get_errors.is_empty(),
        "{:?} {:?}\n{:?}\n{:?}",
        la.get_error_messages(),
        lb.get_error_messages(),
        a.status(),
        b.status()
    );
    // One promotion (PostgreSQL: the mirror moved from timeline 1 to 2, not further).
    assert_eq!(e.promotions(e.mirror(&pair)), 1);
    for p in [&a, &b] {
        let s = p.status();
        assert_eq!(s.active, Side::Mirror);
        assert_eq!(s.mirror.epoch, E::EPOCHS.then_some(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded calls: connects, resets and promotions never wait forever on a silent server.

pub fn a_connect_to_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout<
    E: Engine,
>(
    e: &E,
) {
    let _ = env_logger::builder().is_test(true).try_init();
    // A black-holed proxy accepts connections and never answers (its target is never reached).
    let closed_port = {
        let nobody = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        nobody.local_addr().unwrap().port()
    };
    let silent = TcpProxy::start(([127, 0, 0, 1], closed_port).into()).unwrap();
    silent.set_mode(ProxyMode::BlackHole);
    let timeout = Duration::from_millis(500);
    let manager = e.silent_manager(silent.port(), timeout);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        let result = manager.connect().map(|_| ()).map_err(|e| e.to_string());
        let _ = tx.send((result, started.elapsed()));
    });
    let (result, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the connect returned");
    assert!(result.is_err(), "{result:?}");
    eprintln!("connect to a silent server failed after {took:?}: {result:?}");
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_millis(1500), "{took:?}");
}

pub fn returning_a_connection_to_a_hung_server_with_reset_on_return_takes_at_most_the_reset_timeout<
    E: Engine,
>(
    e: &E,
) where
    E::Manager: 'static,
{
    let _ = env_logger::builder().is_test(true).try_init();
    let pair = e.pair(false, Grants::none());
    let reset_timeout = Duration::from_millis(300);
    let (primary, mirror) = (e.primary(&pair), e.mirror(&pair));
    let pool = builder(e)
        .max_size(2)
        .min_idle(1)
        .mirror_min_idle(1)
        .reset_on_return(true)
        // This test is about the returning thread, not about failing over.
        .failure_threshold(1000)
        .build(
            e.with_reset_timeout(
                e.manager(primary, primary.port(), Login::App),
                reset_timeout,
            ),
            e.manager(mirror, mirror.port(), Login::App),
        )
        .expect("valid configuration");
    let conn = pool.get().unwrap();
    assert_eq!(PooledConnection::side(&conn), Side::Primary);
    assert!(e.severable(&conn));
    let guard = primary.pause_guard().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let started = Instant::now();
        drop(conn);
        let _ = tx.send(started.elapsed());
    });
    let took = rx.recv_timeout(Duration::from_secs(10));
    drop(guard);
    let took = took.expect("the returning thread was released");
    eprintln!("returning a connection to a hung server took {took:?}");
    assert!(took >= reset_timeout, "{took:?}");
    assert!(
        took < reset_timeout + Duration::from_millis(1200),
        "{took:?}"
    );
}

pub fn too_many_connections_is_classified_as_capacity_not_failure<E: Engine>(e: &E) {
    let pair = e.pair_with_few_connections();
    let primary = e.primary(&pair);
    let manager = e.manager(primary, primary.port(), Login::App);
    let mut held = Vec::new();
    let err = loop {
        match manager.connect() {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() < 10, "the connection limit was not enforced");
    };
    assert_eq!(e.classify(&err), Fault::TooManyConnections, "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Least privilege: what the pool does and says when the role lacks a grant.

pub fn a_role_that_cannot_see_replication_never_promotes_over_a_hung_primary_and_names_the_grant<
    E: Engine,
>(
    e: &E,
) {
    // The mirror keeps its replication connection (hidden from the role) for the whole test:
    // it would give up on the stopped primary only after a minute. Only promotion is granted.
    let pair = e.pair_that_notices_a_lost_primary_late(Grants::none().promote(true));
    let pool = pool(e, &pair, builder(e).promote_on_failover(true));
    both_up(&pool);
    let guard = e.primary(&pair).pause_guard().unwrap();
    let paused = Instant::now();
    let refused_for_the_grant = |s: &Status| {
        matches!(&s.blocked, Some(Blocked::Refused(Refusal::MissingPrivilege { side: Side::Mirror, what }))
            if what.contains(E::REPLICATION_STATUS_GRANT))
    };
    assert!(
        wait_until(LONG, || refused_for_the_grant(&pool.status())),
        "{:?}",
        pool.status()
    );
    let err = pool
        .get_timeout(Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("GRANT {}", E::REPLICATION_STATUS_GRANT)),
        "{err}"
    );
    // Still refused seconds later, and the mirror was never promoted.
    while paused.elapsed() < Duration::from_secs(6) {
        let s = pool.status();
        assert_ne!(s.mirror.role, Role::Writable, "{s:?}");
        assert!(!matches!(s.blocked, Some(Blocked::Promoting(_))), "{s:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(refused_for_the_grant(&pool.status()), "{:?}", pool.status());
    assert!(e.mirror(&pair).is_replica(), "the mirror was promoted");
    drop(guard);
}

pub fn a_role_without_the_promotion_grant_is_reported_at_start_and_named_when_writers_wait<
    E: Engine,
>(
    e: &E,
) {
    let pair = e.pair(false, Grants::none().replication_status(true));
    let built = Instant::now();
    let pool = pool(e, &pair, builder(e).promote_on_failover(true));
    assert!(
        wait_until(Duration::from_secs(2), || names_missing(
            &pool.status().mirror.problems,
            E::PROMOTE_GRANT
        )),
        "{:?}",
        pool.status()
    );
    eprintln!(
        "missing promotion grant reported {:?} after build",
        built.elapsed()
    );
    both_up(&pool);
    e.primary(&pair).kill().unwrap();
    assert!(
        wait_until(LONG, || matches!(
            &pool.status().blocked,
            Some(Blocked::Refused(Refusal::MissingPrivilege { side: Side::Mirror, what }))
                if what.contains(E::PROMOTE_GRANT)
        )),
        "{:?}",
        pool.status()
    );
    let err = pool
        .get_timeout(Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(err.contains(E::PROMOTE_GRANT), "{err}");
    assert!(e.mirror(&pair).is_replica());
}

pub fn build_checked_names_wrong_credentials_unreachable_sides_one_server_twice_and_missing_grants<
    E: Engine,
>(
    e: &E,
) {
    let pair = e.pair(false, Grants::none());
    let (primary, mirror) = (e.primary(&pair), e.mirror(&pair));
    let checked = |b: Builder<E::Manager>, p: E::Manager, m: E::Manager| {
        b.connection_timeout(Duration::from_secs(10))
            .build_checked(p, m)
            .map(|_| ())
    };
    let app = |server: &E::Server, port: u16| e.manager(server, port, Login::App);

    // The healthy pair passes (no feature that needs a grant is on).
    checked(
        builder(e),
        app(primary, primary.port()),
        app(mirror, mirror.port()),
    )
    .expect("a healthy pair");

    let wrong = e.manager(
        primary,
        primary.port(),
        Login::WrongPassword("not-the-password"),
    );
    match checked(builder(e), wrong, app(mirror, mirror.port())) {
        Err(
            err @ BuildError::Unreachable {
                side: Side::Primary,
                ..
            },
        ) => {
            let chain = format!("{err} {:?}", std::error::Error::source(&err));
            assert!(chain.contains(E::WRONG_PASSWORD), "{chain}");
            assert!(!chain.contains("not-the-password"), "{chain}");
        }
        other => panic!("expected Unreachable(primary), got {other:?}"),
    }

    let nobody = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let closed_port = nobody.local_addr().unwrap().port();
    drop(nobody);
    match checked(
        builder(e),
        app(primary, primary.port()),
        app(mirror, closed_port),
    ) {
        Err(BuildError::Unreachable {
            side: Side::Mirror, ..
        }) => {}
        other => panic!("expected Unreachable(mirror), got {other:?}"),
    }

    // The primary twice, once through a proxy: one server.
    let proxy = TcpProxy::start(([127, 0, 0, 1], primary.port()).into()).unwrap();
    match checked(
        builder(e),
        app(primary, primary.port()),
        app(primary, proxy.port()),
    ) {
        Err(BuildError::SameServer) => {}
        other => panic!("expected SameServer, got {other:?}"),
    }

    // Promotion configured for a role without the grants it needs.
    match checked(
        builder(e).promote_on_failover(true),
        app(primary, primary.port()),
        app(mirror, mirror.port()),
    ) {
        Err(err @ BuildError::MissingPrivilege { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains(E::PROMOTE_GRANT) || msg.contains(E::REPLICATION_STATUS_GRANT),
                "{msg}"
            );
        }
        other => panic!("expected MissingPrivilege, got {other:?}"),
    }
}

pub fn a_primary_at_its_connection_limit_is_saturated_not_down_and_writers_stay<E: Engine>(e: &E) {
    let _ = env_logger::builder().is_test(true).try_init();
    let pair = e.pair(false, Grants::none());
    let pool = pool(e, &pair, builder(e).max_size(4).min_idle(4));
    both_up(&pool);
    assert!(wait_until(LONG, || pool.status().primary.idle >= 4));
    let load = writers(e, &pool, 2);
    expect_acks(&load, Side::Primary, None, 5, &pool);
    // The role may open no new connection; the ones open work on. Then the heartbeat loses its
    // session and cannot open another.
    let primary = e.primary(&pair);
    e.refuse_new_app_connections(primary, true);
    let ended = e.end_heartbeat_sessions(primary);
    assert!(
        ended >= 1,
        "found the heartbeat session among {} sessions of the application role",
        e.app_sessions(primary)
    );
    assert!(
        wait_until(LONG, || pool.status().primary.saturated),
        "{:?}",
        pool.status()
    );
    let since = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let status = pool.status();
    assert_eq!(status.active, Side::Primary, "{status:?}");
    assert_eq!(status.primary.health, Health::Up, "{status:?}");
    assert_eq!(status.switches, 0, "a full primary is not failed over from");
    expect_acks(&load, Side::Primary, Some(since), 20, &pool);
    e.refuse_new_app_connections(primary, false);
    assert!(wait_until(LONG, || !pool.status().primary.saturated));
    let ledger = load.stop();
    assert_no_get_failed(&ledger);
}
