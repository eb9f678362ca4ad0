//! Failover against real MariaDB primary + GTID replica pairs started by the testkit, with
//! writer load running during every fault: the scenarios of `common/scenarios.rs` under the
//! same names as in `tests/postgres_failover.rs`, on MariaDB with the MySQL backend.

mod common;
#[path = "common/my.rs"]
mod my;
#[path = "common/scenarios.rs"]
mod scenarios;

use my::My;

#[test]
fn sigkill_of_the_primary_promotes_the_mirror_loses_no_acknowledged_write_and_fails_no_get() {
    scenarios::sigkill_of_the_primary_promotes_the_mirror_loses_no_acknowledged_write_and_fails_no_get(&My);
}

#[test]
fn immediate_shutdown_of_the_primary_fails_over() {
    scenarios::immediate_shutdown_of_the_primary_fails_over(&My);
}

#[test]
fn a_hung_primary_is_switched_away_from_and_fenced_when_it_resumes() {
    scenarios::a_hung_primary_is_switched_away_from_and_fenced_when_it_resumes(&My);
}

#[test]
fn a_black_holed_primary_is_not_promoted_over_while_the_mirror_still_streams_from_it() {
    scenarios::a_black_holed_primary_is_not_promoted_over_while_the_mirror_still_streams_from_it(
        &My,
    );
}

#[test]
fn an_isolated_primary_black_holed_for_everyone_is_switched_away_from_within_seconds() {
    scenarios::an_isolated_primary_black_holed_for_everyone_is_switched_away_from_within_seconds(
        &My,
    );
}

#[test]
fn a_cut_network_without_promotion_blocks_writers_with_a_clear_error_and_recovers() {
    scenarios::a_cut_network_without_promotion_blocks_writers_with_a_clear_error_and_recovers(&My);
}

#[test]
fn a_restarted_primary_is_served_again_when_nobody_promoted() {
    scenarios::a_restarted_primary_is_served_again_when_nobody_promoted(&My);
}

#[test]
fn an_external_promotion_is_followed_without_the_pool_promoting() {
    scenarios::an_external_promotion_is_followed_without_the_pool_promoting(&My);
}

#[test]
fn a_dead_mirror_with_a_healthy_primary_causes_no_switch() {
    scenarios::a_dead_mirror_with_a_healthy_primary_causes_no_switch(&My);
}

#[test]
fn with_both_down_get_names_both_sides_and_the_pool_recovers_when_one_returns() {
    scenarios::with_both_down_get_names_both_sides_and_the_pool_recovers_when_one_returns(&My);
}

#[test]
fn the_lag_gate_refuses_to_promote_a_mirror_that_is_far_behind_and_reopens_once_it_caught_up() {
    scenarios::the_lag_gate_refuses_to_promote_a_mirror_that_is_far_behind_and_reopens_once_it_caught_up(&My);
}

#[test]
fn after_a_promotion_a_restarted_old_primary_is_fenced_and_reported() {
    scenarios::after_a_promotion_a_restarted_old_primary_is_fenced_and_reported(&My);
}

#[test]
fn repeated_switches_under_load_leak_no_server_connections() {
    scenarios::repeated_switches_under_load_leak_no_server_connections(&My);
}

#[test]
fn wrong_credentials_and_unreachable_hosts_are_clear_errors_without_secrets() {
    scenarios::wrong_credentials_and_unreachable_hosts_are_clear_errors_without_secrets(&My);
}

#[test]
fn reset_on_return_discards_session_state() {
    scenarios::reset_on_return_discards_session_state(&My);
}

#[test]
fn status_reports_roles_epochs_and_replication() {
    scenarios::status_reports_roles_epochs_and_replication(&My);
}

#[test]
fn two_pools_on_one_cluster_promote_once_and_both_follow() {
    scenarios::two_pools_on_one_cluster_promote_once_and_both_follow(&My);
}

#[test]
fn a_connect_to_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout() {
    scenarios::a_connect_to_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout(&My);
}

#[test]
fn returning_a_connection_to_a_hung_server_with_reset_on_return_takes_at_most_the_reset_timeout() {
    scenarios::returning_a_connection_to_a_hung_server_with_reset_on_return_takes_at_most_the_reset_timeout(&My);
}

#[test]
fn too_many_connections_is_classified_as_capacity_not_failure() {
    scenarios::too_many_connections_is_classified_as_capacity_not_failure(&My);
}

#[test]
fn a_role_that_cannot_see_replication_never_promotes_over_a_hung_primary_and_names_the_grant() {
    scenarios::a_role_that_cannot_see_replication_never_promotes_over_a_hung_primary_and_names_the_grant(&My);
}

#[test]
fn a_role_without_the_promotion_grant_is_reported_at_start_and_named_when_writers_wait() {
    scenarios::a_role_without_the_promotion_grant_is_reported_at_start_and_named_when_writers_wait(
        &My,
    );
}

#[test]
fn build_checked_names_wrong_credentials_unreachable_sides_one_server_twice_and_missing_grants() {
    scenarios::build_checked_names_wrong_credentials_unreachable_sides_one_server_twice_and_missing_grants(&My);
}

#[test]
fn a_primary_at_its_connection_limit_is_saturated_not_down_and_writers_stay() {
    scenarios::a_primary_at_its_connection_limit_is_saturated_not_down_and_writers_stay(&My);
}
