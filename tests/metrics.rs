//! The `metrics` feature: what an exporter sees (here the Prometheus exporter's recorder,
//! installed for this test binary alone).

mod common;

use std::time::Duration;

use common::{wait_until, Manager, Mode, Server};
use metrics_exporter_prometheus::PrometheusBuilder;
use mirrorpool::{MirrorPool, Side};

#[test]
fn an_exporter_sees_gauges_counters_and_failover_series_with_side_and_pool_labels() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    let (p, m) = (Server::new("primary"), Server::new("mirror"));
    let pool = MirrorPool::builder()
        .name("orders")
        .max_size(2)
        .min_idle(1)
        .mirror_min_idle(1)
        .heartbeat_interval(Duration::from_millis(20))
        .heartbeat_timeout(Duration::from_millis(50))
        .suspect_interval(Duration::from_millis(5))
        .min_switch_interval(Duration::ZERO)
        .backend(common::ScriptedBackend)
        .build(Manager(p.clone()), Manager(m.clone()))
        .unwrap();
    drop(pool.get().unwrap());
    p.set_mode(Mode::Refuse);
    assert!(wait_until(Duration::from_secs(10), || pool.active() == Side::Mirror));
    for series in [
        r#"mirrorpool_connections{pool="orders",side="primary"}"#,
        r#"mirrorpool_up{pool="orders",side="mirror"} 1"#,
        r#"mirrorpool_checkouts_total{pool="orders",side="primary"}"#,
        r#"mirrorpool_switches_total{pool="orders",from="primary",to="mirror",reason="failover"} 1"#,
        r#"mirrorpool_side_down_total{pool="orders",side="primary"} 1"#,
        r#"mirrorpool_heartbeat_failures_total{pool="orders",side="primary"}"#,
        r#"mirrorpool_heartbeat_rtt_seconds"#,
    ] {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let text = handle.render();
                text.lines().any(|l| l.starts_with(series))
            }),
            "{series} missing from:\n{}",
            handle.render()
        );
    }
}
