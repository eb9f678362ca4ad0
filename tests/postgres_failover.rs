//! Failover against real PostgreSQL primary + mirror pairs started by the testkit, with writer
//! load running during every fault.
//!
//! The scenarios every engine shares are in `common/scenarios.rs`; this file lists them for
//! PostgreSQL (`tests/mysql_failover.rs` lists the same names for MariaDB), followed by the
//! scenarios only PostgreSQL has: what its heartbeats see of WAL receivers and timelines,
//! cluster identities, WAL positions, and how `pg_promote` ends.

use std::time::{Duration, Instant};

mod common;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scenarios.rs"]
mod scenarios;

use common::wait_until;
use mirrorpool::backend::{Access, Backend, Observation, Upstream};
use mirrorpool::postgres::{PostgresBackend, PostgresManager};
use mirrorpool::testkit::{Grants, PgPair, TcpProxy};
use mirrorpool::{BuildError, ManageConnection, Role};
use pg::Pg;
use postgres::NoTls;
use scenarios::{Engine, LONG};

#[test]
fn sigkill_of_the_primary_promotes_the_mirror_loses_no_acknowledged_write_and_fails_no_get() {
    scenarios::sigkill_of_the_primary_promotes_the_mirror_loses_no_acknowledged_write_and_fails_no_get(&Pg);
}

#[test]
fn immediate_shutdown_of_the_primary_fails_over() {
    scenarios::immediate_shutdown_of_the_primary_fails_over(&Pg);
}

#[test]
fn a_hung_primary_is_switched_away_from_and_fenced_when_it_resumes() {
    scenarios::a_hung_primary_is_switched_away_from_and_fenced_when_it_resumes(&Pg);
}

#[test]
fn a_black_holed_primary_is_not_promoted_over_while_the_mirror_still_streams_from_it() {
    scenarios::a_black_holed_primary_is_not_promoted_over_while_the_mirror_still_streams_from_it(
        &Pg,
    );
}

#[test]
fn an_isolated_primary_black_holed_for_everyone_is_switched_away_from_within_seconds() {
    scenarios::an_isolated_primary_black_holed_for_everyone_is_switched_away_from_within_seconds(
        &Pg,
    );
}

#[test]
fn a_cut_network_without_promotion_blocks_writers_with_a_clear_error_and_recovers() {
    scenarios::a_cut_network_without_promotion_blocks_writers_with_a_clear_error_and_recovers(&Pg);
}

#[test]
fn a_restarted_primary_is_served_again_when_nobody_promoted() {
    scenarios::a_restarted_primary_is_served_again_when_nobody_promoted(&Pg);
}

#[test]
fn an_external_promotion_is_followed_without_the_pool_promoting() {
    scenarios::an_external_promotion_is_followed_without_the_pool_promoting(&Pg);
}

#[test]
fn a_dead_mirror_with_a_healthy_primary_causes_no_switch() {
    scenarios::a_dead_mirror_with_a_healthy_primary_causes_no_switch(&Pg);
}

#[test]
fn with_both_down_get_names_both_sides_and_the_pool_recovers_when_one_returns() {
    scenarios::with_both_down_get_names_both_sides_and_the_pool_recovers_when_one_returns(&Pg);
}

#[test]
fn the_lag_gate_refuses_to_promote_a_mirror_that_is_far_behind_and_reopens_once_it_caught_up() {
    scenarios::the_lag_gate_refuses_to_promote_a_mirror_that_is_far_behind_and_reopens_once_it_caught_up(&Pg);
}

#[test]
fn after_a_promotion_a_restarted_old_primary_is_fenced_and_reported() {
    scenarios::after_a_promotion_a_restarted_old_primary_is_fenced_and_reported(&Pg);
}

#[test]
fn repeated_switches_under_load_leak_no_server_connections() {
    scenarios::repeated_switches_under_load_leak_no_server_connections(&Pg);
}

#[test]
fn wrong_credentials_and_unreachable_hosts_are_clear_errors_without_secrets() {
    scenarios::wrong_credentials_and_unreachable_hosts_are_clear_errors_without_secrets(&Pg);
}

#[test]
fn reset_on_return_discards_session_state() {
    scenarios::reset_on_return_discards_session_state(&Pg);
}

#[test]
fn status_reports_roles_epochs_and_replication() {
    scenarios::status_reports_roles_epochs_and_replication(&Pg);
}

#[test]
fn two_pools_on_one_cluster_promote_once_and_both_follow() {
    scenarios::two_pools_on_one_cluster_promote_once_and_both_follow(&Pg);
}

#[test]
fn a_connect_to_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout() {
    scenarios::a_connect_to_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout(&Pg);
}

#[test]
fn returning_a_connection_to_a_hung_server_with_reset_on_return_takes_at_most_the_reset_timeout() {
    scenarios::returning_a_connection_to_a_hung_server_with_reset_on_return_takes_at_most_the_reset_timeout(&Pg);
}

#[test]
fn too_many_connections_is_classified_as_capacity_not_failure() {
    scenarios::too_many_connections_is_classified_as_capacity_not_failure(&Pg);
}

#[test]
fn a_role_that_cannot_see_replication_never_promotes_over_a_hung_primary_and_names_the_grant() {
    scenarios::a_role_that_cannot_see_replication_never_promotes_over_a_hung_primary_and_names_the_grant(&Pg);
}

#[test]
fn a_role_without_the_promotion_grant_is_reported_at_start_and_named_when_writers_wait() {
    scenarios::a_role_without_the_promotion_grant_is_reported_at_start_and_named_when_writers_wait(
        &Pg,
    );
}

#[test]
fn build_checked_names_wrong_credentials_unreachable_sides_one_server_twice_and_missing_grants() {
    scenarios::build_checked_names_wrong_credentials_unreachable_sides_one_server_twice_and_missing_grants(&Pg);
}

#[test]
fn a_primary_at_its_connection_limit_is_saturated_not_down_and_writers_stay() {
    scenarios::a_primary_at_its_connection_limit_is_saturated_not_down_and_writers_stay(&Pg);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only.

fn pair(synchronous: bool, grants: Grants) -> PgPair {
    Pg.pair(synchronous, grants)
}

#[test]
fn a_promotion_that_does_not_finish_in_time_fails_with_a_plain_error() {
    let pair = pair(false, Grants::all());
    // Stop the mirror's startup process: pg_promote() is accepted, recovery never ends.
    let startup: Vec<u32> = pair
        .mirror()
        .child_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("startup"))
        })
        .collect();
    assert_eq!(startup.len(), 1, "{startup:?}");
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &startup[0].to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let manager = PostgresManager::new(pair.mirror().app_config(), NoTls);
    let mut conn = manager.connect().unwrap();
    let started = Instant::now();
    let result = PostgresBackend.promote(&manager, &mut conn, Duration::from_millis(300));
    let took = started.elapsed();
    signal("-CONT");
    let err = result.unwrap_err().to_string();
    assert!(
        err.starts_with("the promoted server was still in recovery at the promotion timeout"),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// What a heartbeat reports, as a least-privilege role and with each grant.

fn observe(config: postgres::Config) -> Observation {
    let manager = PostgresManager::new(config, NoTls);
    let mut conn = manager.connect().expect("connect");
    PostgresBackend
        .probe(&manager, &mut conn, Duration::from_secs(5))
        .expect("heartbeat")
}

fn upstream(obs: &Observation) -> Upstream {
    obs.replication()
        .and_then(|r| r.upstream)
        .expect("a replica reports its upstream")
}

#[test]
fn heartbeats_say_what_the_role_cannot_see_instead_of_reporting_it_as_false() {
    let pair = pair(false, Grants::none());
    pair.create_role("monitor", Grants::none().replication_status(true))
        .unwrap();
    pair.create_role("promoter", Grants::none().promote(true))
        .unwrap();
    let (primary, mirror) = (pair.primary(), pair.mirror());

    // No pg_monitor: the WAL receiver's state is unknown, not "stopped".
    let m = observe(mirror.app_config());
    assert_eq!(m.role(), Role::ReadOnly);
    assert_eq!(upstream(&m).streaming, None, "{m:?}");
    assert_eq!(upstream(&m).silence, None, "{m:?}");
    let denied = |a: Access, what: &str| matches!(a, Access::Denied(t) if t.contains(what));
    assert!(
        denied(m.privileges().replication_status, "GRANT pg_monitor"),
        "{m:?}"
    );
    assert!(denied(m.privileges().promote, "pg_promote"), "{m:?}");
    let p = observe(primary.app_config());
    let r = p.replication().copied().unwrap_or_default();
    assert_eq!(r.replicas_attached, None, "{p:?}");
    assert_eq!(r.lag_bytes, None, "{p:?}");

    // With pg_monitor: streaming, and the primary sees its replica.
    let m = observe(mirror.role_config("monitor"));
    assert_eq!(upstream(&m).streaming, Some(true), "{m:?}");
    assert!(upstream(&m).silence.is_some(), "{m:?}");
    assert_eq!(m.privileges().replication_status, Access::Granted);
    assert!(denied(m.privileges().promote, "pg_promote"), "{m:?}");
    let p = observe(primary.role_config("monitor"));
    assert_eq!(
        p.replication().and_then(|r| r.replicas_attached),
        Some(1),
        "{p:?}"
    );

    // With EXECUTE on pg_promote only.
    let m = observe(mirror.role_config("promoter"));
    assert_eq!(m.privileges().promote, Access::Granted);
    assert!(denied(m.privileges().replication_status, "pg_monitor"));
    assert_eq!(upstream(&m).streaming, None);

    // A receiver that is not running is "not streaming" for every role: no row is visible.
    pair.primary().kill().unwrap();
    assert!(
        wait_until(LONG, || upstream(&observe(mirror.app_config())).streaming
            == Some(false)),
        "the mirror still reports a receiver"
    );
}

#[test]
fn a_heartbeat_connection_keeps_its_prepared_query_across_a_promotion_and_prepares_it_again_when_the_session_lost_it(
) {
    let pair = pair(false, Grants::all());
    let manager = PostgresManager::new(pair.mirror().app_config(), NoTls);
    let mut conn = manager.connect().unwrap();
    let probe = |conn: &mut _| {
        PostgresBackend
            .probe(&manager, conn, Duration::from_secs(5))
            .expect("heartbeat")
    };
    assert_eq!(probe(&mut conn).role(), Role::ReadOnly);
    assert_eq!(probe(&mut conn).role(), Role::ReadOnly);
    // The session loses its prepared statements: by the application, or by the pool's reset.
    conn.client_mut().batch_execute("DEALLOCATE ALL").unwrap();
    assert_eq!(probe(&mut conn).role(), Role::ReadOnly);
    PostgresBackend.reset(&manager, &mut conn).unwrap();
    assert_eq!(probe(&mut conn).role(), Role::ReadOnly);
    // The statement prepared on a replica reports the promoted server as a primary.
    PostgresBackend
        .promote(&manager, &mut conn, Duration::from_secs(10))
        .unwrap();
    let promoted = probe(&mut conn);
    assert_eq!(promoted.role(), Role::Writable, "{promoted:?}");
    assert_eq!(promoted.epoch(), Some(2), "{promoted:?}");
}

#[test]
fn heartbeats_tell_the_servers_of_a_pair_apart_and_recognise_one_server_reached_twice() {
    let pair = pair(false, Grants::none());
    let proxy = TcpProxy::start(([127, 0, 0, 1], pair.primary().port()).into()).unwrap();
    let direct = observe(pair.primary().app_config())
        .identity()
        .expect("identity");
    let proxied = observe(pair.primary().app_config_on_port(proxy.port()))
        .identity()
        .expect("identity");
    let mirror = observe(pair.mirror().app_config())
        .identity()
        .expect("identity");
    assert_eq!(direct, proxied, "one server reached twice");
    assert_ne!(direct.instance, mirror.instance, "two servers");
    // A replica belongs to its primary's cluster (pg_control_system() is readable by default).
    assert!(direct.cluster.is_some());
    assert_eq!(direct.cluster, mirror.cluster);
    // An unrelated cluster differs.
    let other = self::pair(false, Grants::none());
    let stranger = observe(other.primary().app_config())
        .identity()
        .expect("identity");
    assert_ne!(stranger.cluster, direct.cluster);
    assert_ne!(stranger.instance, direct.instance);
}

#[test]
fn the_reported_wal_position_grows_with_writes_and_the_mirror_replays_up_to_it() {
    let pair = pair(false, Grants::none());
    let position = |config| {
        observe(config)
            .replication()
            .and_then(|r| r.position)
            .expect("a position")
    };
    let before = position(pair.primary().app_config());
    let mut app = pair.primary().app_config().connect(NoTls).unwrap();
    app.execute(
        "INSERT INTO t SELECT 1, g FROM generate_series(1, 1000) g",
        &[],
    )
    .unwrap();
    let after = position(pair.primary().app_config());
    assert!(after > before + 1000, "{before} -> {after}");
    assert!(
        wait_until(LONG, || position(pair.mirror().app_config()) >= after),
        "the mirror did not replay up to {after}"
    );
}

#[test]
fn build_checked_rejects_a_primary_or_a_replica_of_another_cluster_as_the_mirror() {
    let pair = pair(false, Grants::none());
    let checked = |p: postgres::Config, m: postgres::Config| {
        Pg.builder()
            .connection_timeout(Duration::from_secs(10))
            .build_checked(
                PostgresManager::new(p, NoTls),
                PostgresManager::new(m, NoTls),
            )
            .map(|_| ())
    };
    let primary = pair.primary();
    // Another cluster's primary as the mirror.
    let stranger = self::pair(false, Grants::none());
    match checked(primary.app_config(), stranger.primary().app_config()) {
        Err(BuildError::NotAMirror { .. }) => {}
        other => panic!("expected NotAMirror, got {other:?}"),
    }
    // Another cluster's replica as the mirror.
    match checked(primary.app_config(), stranger.mirror().app_config()) {
        Err(BuildError::NotAMirror { problem }) => {
            assert!(problem.contains("another cluster"), "{problem}")
        }
        other => panic!("expected NotAMirror, got {other:?}"),
    }
}
