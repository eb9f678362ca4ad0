//! Tests on recorded server output: `testdata/mariadb_*.txt` were recorded from a MariaDB
//! 10.11.19 primary + GTID replica with the `mariadb` client (`\G` output, password hashes
//! replaced); `testdata/mysql8_*.txt` use the `SHOW REPLICA STATUS` columns of the MySQL 8.0
//! reference manual with values made up per scenario (MySQL cannot be installed here).

use std::time::Duration;

use mysql::{DriverError, MySqlError};

use super::backend::{classify, snapshot_for_test, Dialect};
use super::connection::{Flavor, Server};
use super::status::{self, Map, Snapshot, Visible};
use crate::backend::{Backend, Fault, LagKind};
use crate::observation::{Access, Observation, Role};

const MARIADB: &str = "10.11.19-MariaDB-0+deb12u1-log";
const MYSQL: &str = "8.0.36";

/// Rows of `mariadb`/`mysql` `\G` output. A line without `name: ` continues the value above
/// (GTID sets are printed over several lines); `NULL` is SQL NULL.
fn vertical(text: &str) -> Vec<Map> {
    let mut rows: Vec<Map> = Vec::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("***") {
            rows.push(Map::new());
            last = None;
            continue;
        }
        let Some(row) = rows.last_mut() else {
            continue;
        };
        let field = line
            .find(": ")
            .map(|i| (&line[..i], &line[i + 2..]))
            .or_else(|| line.trim_end().strip_suffix(':').map(|n| (n, "")));
        match (field, &last) {
            (Some((name, value)), _) if !name.contains(',') => {
                let name = name.trim().to_owned();
                let value = value.trim();
                row.insert(name.clone(), (value != "NULL").then(|| value.to_owned()));
                last = Some(name);
            }
            (_, Some(name)) => {
                if let Some(Some(v)) = row.get_mut(name) {
                    v.push('\n');
                    v.push_str(line.trim());
                }
            }
            _ => {}
        }
    }
    rows
}

/// A recorded section as the server would have answered it: rows, or `ERROR <code>`.
fn answer(text: &str) -> Result<Vec<Map>, mysql::Error> {
    match text.trim().strip_prefix("ERROR ") {
        Some(code) => Err(server_error(code.trim().parse().unwrap_or(0))),
        None => Ok(vertical(text)),
    }
}

fn server_error(code: u16) -> mysql::Error {
    mysql::Error::MySqlError(MySqlError {
        state: "42000".into(),
        message: "recorded error".into(),
        code,
    })
}

/// The result sets of a recorded heartbeat, in the order the probe asks for them. The server
/// runs nothing after a failed statement, so sets after an error are dropped.
fn recorded(text: &str) -> Vec<Result<Vec<Map>, mysql::Error>> {
    let mut sets = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- ") {
            if let Some(body) = current.take() {
                sets.push(answer(&body));
            }
            if ["vars", "settings", "status", "grants", "replicas", "links"].contains(&name) {
                current = Some(String::new());
            }
        } else if let Some(body) = &mut current {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some(body) = current {
        sets.push(answer(&body));
    }
    if let Some(i) = sets.iter().position(Result::is_err) {
        sets.truncate(i + 1);
    }
    sets
}

fn snap(version: &str, text: &str) -> (Server, Snapshot) {
    let server = Server::parse(version);
    (server, snapshot_for_test(server, recorded(text)).unwrap())
}

fn observe(version: &str, text: &str) -> Observation {
    let (server, s) = snap(version, text);
    status::observe(server, &s, Some(Duration::from_millis(700)))
}

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("testdata/", $name, ".txt"))
    };
}

#[test]
fn mariadb_primary_with_semi_sync() {
    let o = observe(MARIADB, fixture!("mariadb_primary_semisync"));
    assert_eq!(o.role(), Role::Writable);
    let r = o.replication().unwrap();
    // gtid_binlog_pos 0-1-14,3-1-2: what it wrote, summed over domains.
    assert_eq!(r.position, Some(16));
    assert_eq!(r.synchronous, Some(true));
    assert_eq!(r.replicas_attached, Some(1));
    assert_eq!(r.upstream, None);
    assert_eq!((r.lag_time, r.lag_transactions), (None, None));
    // ALL PRIVILEGES; the replica status was readable (and empty).
    assert_eq!(o.privileges().promote, Access::Granted);
    assert_eq!(o.privileges().replication_status, Access::Granted);
    let id = o.identity().unwrap();
    assert_eq!(id.cluster, None);
}

#[test]
fn mariadb_primary_fell_back_to_async() {
    let o = observe(MARIADB, fixture!("mariadb_primary_async_fallback"));
    let r = o.replication().unwrap();
    assert_eq!(o.role(), Role::Writable);
    assert_eq!(r.synchronous, Some(false));
    assert_eq!(r.replicas_attached, Some(0));
    assert_eq!(r.position, Some(15 + 2));
}

#[test]
fn mariadb_semi_sync_disabled_is_not_reported() {
    // The replica fixture has rpl_semi_sync_master_enabled OFF; as a primary (no replica
    // rows, no SQL threads) it would report nothing rather than "asynchronous".
    let text = fixture!("mariadb_replica_streaming")
        .replace("read_only: 1", "read_only: 0")
        .replace(
            "Slaves_running\n        Value: 1",
            "Slaves_running\n        Value: 0",
        );
    let text = &text[..text.find("-- replicas").unwrap()];
    let o = observe(MARIADB, &format!("{text}-- replicas\n"));
    assert_eq!(o.role(), Role::Writable);
    assert_eq!(o.replication().unwrap().synchronous, None);
    // Not a replica: the position is what it wrote.
    assert_eq!(o.replication().unwrap().position, Some(16));
}

#[test]
fn mariadb_replica_streaming() {
    let o = observe(MARIADB, fixture!("mariadb_replica_streaming"));
    assert_eq!(o.role(), Role::ReadOnly);
    let r = o.replication().unwrap();
    // gtid_slave_pos 0-1-14,3-1-2: what it applied.
    assert_eq!(r.position, Some(16));
    // Gtid_IO_Pos 3-1-2,0-1-14 (another order) against the same applied position.
    assert_eq!(r.lag_transactions, Some(0));
    assert_eq!(r.lag_time, Some(Duration::ZERO));
    let u = r.upstream.unwrap();
    assert_eq!(u.streaming, Some(true));
    assert_eq!(u.silence, Some(Duration::from_millis(700)));
    // slave_net_timeout 4 s, heartbeat period 1 s.
    assert_eq!(u.max_quiet, Some(Duration::from_secs(4)));
    assert_eq!(r.synchronous, None);
    assert_eq!(r.replicas_attached, None);
    // SLAVE MONITOR, REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN.
    assert_eq!(o.privileges().promote, Access::Granted);
    assert_eq!(o.privileges().replication_status, Access::Granted);
}

#[test]
fn mariadb_replica_sql_thread_stopped_with_received_transactions() {
    let o = observe(MARIADB, fixture!("mariadb_replica_sql_stopped"));
    assert_eq!(o.role(), Role::ReadOnly);
    let r = o.replication().unwrap();
    // Gtid_IO_Pos 3-1-4,0-1-18 against gtid_slave_pos 0-1-15,3-1-2: 3 + 2 received, not applied.
    assert_eq!(r.lag_transactions, Some(5));
    assert_eq!(r.position, Some(17));
    // Seconds_Behind_Master NULL and not caught up: unknown.
    assert_eq!(r.lag_time, None);
    assert_eq!(r.upstream.unwrap().streaming, Some(true));
}

#[test]
fn mariadb_replica_io_thread_connecting() {
    let o = observe(MARIADB, fixture!("mariadb_replica_connecting"));
    assert_eq!(o.role(), Role::ReadOnly);
    let r = o.replication().unwrap();
    assert_eq!(r.upstream.unwrap().streaming, Some(false));
    // Seconds_Behind_Master is NULL while reconnecting, but everything received is applied.
    assert_eq!(r.lag_time, Some(Duration::ZERO));
    assert_eq!(r.lag_transactions, Some(0));
    assert_eq!(r.position, Some(22));
}

#[test]
fn mariadb_replica_without_slave_monitor() {
    let o = observe(MARIADB, fixture!("mariadb_replica_denied"));
    // read_only and Slaves_running need no privilege.
    assert_eq!(o.role(), Role::ReadOnly);
    let r = o.replication().unwrap();
    // Could not see: unknown, never "not streaming".
    assert_eq!(r.upstream, None);
    assert_eq!((r.lag_time, r.lag_transactions), (None, None));
    // A replica (Slaves_running 1): the applied position, which any account may read.
    assert_eq!(r.position, Some(16));
    let p = o.privileges();
    assert!(
        matches!(p.replication_status, Access::Denied(t) if t.contains("GRANT SLAVE MONITOR ON *.*")),
        "{p:?}"
    );
    assert!(
        matches!(p.promote, Access::Denied(t) if t.starts_with("the account lacks SLAVE MONITOR")),
        "{p:?}"
    );
    // No silence without the replica's own counters.
    let (server, s) = snap(MARIADB, fixture!("mariadb_replica_denied"));
    assert_eq!(status::signature(server, &s), None);
}

#[test]
fn mariadb_signature_moves_with_heartbeats_and_positions() {
    let text = fixture!("mariadb_replica_streaming");
    let (server, s) = snap(MARIADB, text);
    let base = status::signature(server, &s).unwrap();
    let (_, s) = snap(
        MARIADB,
        &text.replace("received_heartbeats: 2", "received_heartbeats: 3"),
    );
    assert_ne!(status::signature(server, &s).unwrap(), base);
    let (_, s) = snap(
        MARIADB,
        &text.replace("Read_Master_Log_Pos: 3055", "Read_Master_Log_Pos: 3400"),
    );
    assert_ne!(status::signature(server, &s).unwrap(), base);
    // The applied position moving is not hearing from the primary.
    let (_, s) = snap(
        MARIADB,
        &text.replace("Exec_Master_Log_Pos: 3055", "Exec_Master_Log_Pos: 3000"),
    );
    assert_eq!(status::signature(server, &s).unwrap(), base);
    // No replica: nothing to track.
    let (server, s) = snap(MARIADB, fixture!("mariadb_primary_semisync"));
    assert_eq!(status::signature(server, &s), None);
}

#[test]
fn mariadb_heartbeats_off_means_no_bound_on_quiet() {
    let text = fixture!("mariadb_replica_streaming").replace(
        "Slave_heartbeat_period: 1.000",
        "Slave_heartbeat_period: 0.000",
    );
    let u = observe(MARIADB, &text)
        .replication()
        .unwrap()
        .upstream
        .unwrap();
    assert_eq!(u.max_quiet, Some(Duration::MAX));
    let text = fixture!("mariadb_replica_streaming").replace(
        "Slave_heartbeat_period: 1.000",
        "Slave_heartbeat_period: 9.500",
    );
    let u = observe(MARIADB, &text)
        .replication()
        .unwrap()
        .upstream
        .unwrap();
    assert_eq!(u.max_quiet, Some(Duration::from_millis(9500)));
}

#[test]
fn roles() {
    let text = fixture!("mariadb_replica_streaming");
    // A running replica is read-only even with read_only off.
    let o = observe(MARIADB, &text.replace("read_only: 1", "read_only: 0"));
    assert_eq!(o.role(), Role::ReadOnly);
    // A stopped replica with read_only off takes writes (an operator promoted it).
    let stopped = text
        .replace("read_only: 1", "read_only: 0")
        .replace(
            "Slaves_running\n        Value: 1",
            "Slaves_running\n        Value: 0",
        )
        .replace("Slave_IO_Running: Yes", "Slave_IO_Running: No")
        .replace("Slave_SQL_Running: Yes", "Slave_SQL_Running: No");
    let o = observe(
        MARIADB,
        &stopped.replace(
            "gtid_binlog_pos: 0-1-14,3-1-2",
            "gtid_binlog_pos: 0-2-20,3-1-2",
        ),
    );
    assert_eq!(o.role(), Role::Writable);
    // It reports what it wrote since, not the stale applied position.
    assert_eq!(o.replication().unwrap().position, Some(22));
    assert_eq!(
        o.replication().unwrap().upstream.unwrap().streaming,
        Some(false)
    );
    // read_only unreadable: unknown, never writable.
    let o = observe(MARIADB, &stopped.replace("read_only: 0", "read_only: NULL"));
    assert_eq!(o.role(), Role::Unknown);
}

#[test]
fn identities_differ_per_server_and_repeat_per_server() {
    let a = observe(MARIADB, fixture!("mariadb_primary_semisync")).identity();
    let a2 = observe(MARIADB, fixture!("mariadb_primary_async_fallback")).identity();
    let b = observe(MARIADB, fixture!("mariadb_replica_streaming")).identity();
    assert_eq!(a, a2);
    assert_ne!(a, b);
    let m1 = observe(MYSQL, fixture!("mysql8_primary_semisync")).identity();
    let m2 = observe(MYSQL, fixture!("mysql8_replica_streaming")).identity();
    assert!(m1.is_some() && m2.is_some());
    assert_ne!(m1, m2);
}

#[test]
fn mysql8_replica_streaming() {
    let o = observe(MYSQL, fixture!("mysql8_replica_streaming"));
    assert_eq!(o.role(), Role::ReadOnly);
    let r = o.replication().unwrap();
    // gtid_executed: 5 + 3 transactions; Retrieved_Gtid_Set all executed.
    assert_eq!(r.position, Some(8));
    assert_eq!(r.lag_transactions, Some(0));
    assert_eq!(r.lag_time, Some(Duration::ZERO));
    let u = r.upstream.unwrap();
    assert_eq!(u.streaming, Some(true));
    // replica_net_timeout 60 s, heartbeat interval 30 s.
    assert_eq!(u.max_quiet, Some(Duration::from_secs(60)));
    // REPLICATION CLIENT, RELOAD, REPLICATION_SLAVE_ADMIN,SYSTEM_VARIABLES_ADMIN.
    assert_eq!(o.privileges().promote, Access::Granted);
    assert_eq!(o.privileges().replication_status, Access::Granted);
    let (server, s) = snap(MYSQL, fixture!("mysql8_replica_streaming"));
    assert!(status::signature(server, &s).is_some());
}

#[test]
fn mysql8_replica_connecting_with_received_transactions() {
    let o = observe(MYSQL, fixture!("mysql8_replica_connecting"));
    let r = o.replication().unwrap();
    let u = r.upstream.unwrap();
    assert_eq!(u.streaming, Some(false));
    // Retrieved 1-9, executed 1-5.
    assert_eq!(r.lag_transactions, Some(4));
    assert_eq!(r.position, Some(5));
    // Seconds_Behind_Source NULL and not caught up.
    assert_eq!(r.lag_time, None);
    // Heartbeat interval 0: a live source may be silent indefinitely.
    assert_eq!(u.max_quiet, Some(Duration::MAX));
    // Privileges may come through the role `promoter`: not guessed.
    assert_eq!(o.privileges().promote, Access::Unchecked);
}

#[test]
fn mysql8_replica_without_replication_client() {
    let o = observe(MYSQL, fixture!("mysql8_replica_denied"));
    // super_read_only: read-only without seeing replication.
    assert_eq!(o.role(), Role::ReadOnly);
    let r = o.replication().unwrap();
    assert_eq!(r.upstream, None);
    assert_eq!(r.position, Some(5));
    let p = o.privileges();
    assert!(
        matches!(p.replication_status, Access::Denied(t) if t.contains("GRANT REPLICATION CLIENT ON *.*")),
        "{p:?}"
    );
    assert!(
        matches!(p.promote, Access::Denied(t) if t.starts_with("the account lacks REPLICATION CLIENT")),
        "{p:?}"
    );
    let (server, s) = snap(MYSQL, fixture!("mysql8_replica_denied"));
    assert_eq!(status::signature(server, &s), None);
}

#[test]
fn mysql8_primary_with_semi_sync() {
    let o = observe(MYSQL, fixture!("mysql8_primary_semisync"));
    assert_eq!(o.role(), Role::Writable);
    let r = o.replication().unwrap();
    assert_eq!(r.position, Some(9));
    assert_eq!(r.synchronous, Some(true));
    assert_eq!(r.upstream, None);
    let p = o.privileges();
    assert!(
        matches!(p.promote, Access::Denied(t) if t.starts_with("the account lacks SYSTEM_VARIABLES_ADMIN")),
        "{p:?}"
    );
    let off = fixture!("mysql8_primary_semisync").replace(
        "Rpl_semi_sync_source_status\n        Value: ON",
        "Rpl_semi_sync_source_status\n        Value: OFF",
    );
    assert_eq!(
        observe(MYSQL, &off).replication().unwrap().synchronous,
        Some(false)
    );
}

#[test]
fn mysql8_performance_schema_refused_means_no_silence() {
    let text = fixture!("mysql8_replica_streaming");
    let cut = text.find("-- links").unwrap();
    let refused = format!("{}-- links\nERROR 1142\n", &text[..cut]);
    let (server, s) = snap(MYSQL, &refused);
    assert_eq!(s.links, None);
    assert_eq!(status::signature(server, &s), None);
    let u = status::observe(server, &s, None)
        .replication()
        .unwrap()
        .upstream
        .unwrap();
    assert_eq!(u.silence, None);
    assert_eq!(u.streaming, Some(true));
}

#[test]
fn grants_through_roles_and_public() {
    let (server, mut s) = snap(MARIADB, fixture!("mariadb_replica_denied"));
    let promote = |s: &Snapshot| status::privileges(server, s).promote;
    // Recorded: a role granted but not active shows only as a role grant.
    s.grants = Some(vec![
        "GRANT `promoter` TO `ru`@`127.0.0.1`".into(),
        "GRANT USAGE ON *.* TO `ru`@`127.0.0.1` IDENTIFIED BY PASSWORD '*<hash>'".into(),
    ]);
    assert_eq!(promote(&s), Access::Unchecked);
    // Recorded: a default role's grants and PUBLIC's are listed.
    s.grants = Some(vec![
        "GRANT USAGE ON *.* TO `rd`@`127.0.0.1` IDENTIFIED BY PASSWORD '*<hash>'".into(),
        "GRANT RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR ON *.* TO `promoter`".into(),
        "GRANT SLAVE MONITOR ON *.* TO PUBLIC".into(),
        "SET DEFAULT ROLE `promoter` FOR `rd`@`127.0.0.1`".into(),
    ]);
    assert_eq!(promote(&s), Access::Granted);
    // SUPER alone: MariaDB 10.11 needs READ_ONLY ADMIN and RELOAD besides.
    s.grants = Some(vec![
        "GRANT SUPER ON *.* TO `su`@`127.0.0.1` IDENTIFIED BY PASSWORD '*<hash>'".into(),
    ]);
    assert!(matches!(promote(&s), Access::Denied(t) if t.starts_with("the account lacks RELOAD")));
    s.grants = Some(vec!["GRANT SUPER, RELOAD ON *.* TO `su`@`127.0.0.1`".into()]);
    assert!(
        matches!(promote(&s), Access::Denied(t) if t.starts_with("the account lacks READ_ONLY ADMIN"))
    );
    // Privileges on one database are not global.
    s.grants = Some(vec![
        "GRANT RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR ON `t`.* TO `x`@`%`"
            .into(),
    ]);
    assert!(matches!(promote(&s), Access::Denied(_)));
    // SHOW GRANTS failed: unknown.
    s.grants = None;
    assert_eq!(promote(&s), Access::Unchecked);
    // Older servers: not guessed.
    let old = Server::parse("10.6.16-MariaDB");
    s.grants = Some(vec!["GRANT USAGE ON *.* TO `x`@`%`".into()]);
    assert_eq!(status::privileges(old, &s).promote, Access::Unchecked);
    assert_eq!(
        status::privileges(Server::parse("5.7.44"), &s).promote,
        Access::Unchecked
    );
}

#[test]
fn heartbeat_result_sets_map_to_visibility() {
    let server = Server::parse(MARIADB);
    let text = fixture!("mariadb_replica_streaming");
    let mut sets = recorded(text);
    // Another error than a refusal: unseen, not denied.
    sets[4] = Err(server_error(1064));
    let s = snapshot_for_test(server, sets).unwrap();
    assert_eq!(s.replicas, Visible::Unseen);
    assert_eq!(
        status::privileges(server, &s).replication_status,
        Access::Unchecked
    );
    // SHOW GRANTS failed, so nothing after it ran.
    let mut sets = recorded(text);
    sets.truncate(3);
    sets.push(Err(server_error(1141)));
    let s = snapshot_for_test(server, sets).unwrap();
    assert_eq!(
        (s.grants.clone(), s.replicas.clone()),
        (None, Visible::Unseen)
    );
    // Too few results, or a failed first statement: the heartbeat failed.
    let mut sets = recorded(text);
    sets.truncate(2);
    assert!(snapshot_for_test(server, sets).is_err());
    let mut sets = recorded(text);
    sets[0] = Err(server_error(1193));
    assert!(snapshot_for_test(server, sets).is_err());
}

#[test]
fn dialects() {
    let maria = Dialect(Server::parse(MARIADB));
    let probe = maria.probe();
    assert!(probe.contains("@@gtid_slave_pos") && probe.ends_with("SHOW ALL SLAVES STATUS"));
    assert!(!probe.contains("super_read_only"));
    let my = Dialect(Server::parse(MYSQL));
    let probe = my.probe();
    assert!(probe.contains("SHOW REPLICA STATUS;") && probe.contains("@@replica_net_timeout"));
    assert!(probe.contains("@@super_read_only") && probe.contains("performance_schema"));
    let old = Dialect(Server::parse("8.0.21"));
    let probe = old.probe();
    assert!(probe.contains("SHOW SLAVE STATUS;") && probe.contains("@@slave_net_timeout"));
    // Statements are separated so that the privileged ones come last.
    assert!(probe.find("SHOW GRANTS").unwrap() < probe.find("SHOW SLAVE STATUS").unwrap());
}

#[test]
fn promotion_statements() {
    let maria = Dialect(Server::parse(MARIADB));
    let rows = recorded(fixture!("mariadb_replica_sql_stopped"));
    let links: Vec<status::Link> = rows[4]
        .as_ref()
        .unwrap()
        .iter()
        .map(status::Link::from_row)
        .collect();
    let waits = maria.wait_for_test(&links, 1.5).unwrap();
    assert_eq!(
        waits,
        vec!["SELECT MASTER_GTID_WAIT('0-1-18,3-1-4', 1.500)".to_owned()]
    );
    assert_eq!(
        maria.reset_for_test(&links).unwrap(),
        vec!["RESET SLAVE '' ALL".to_owned()]
    );
    // Without GTIDs: the received binary log coordinates, per connection.
    let mut no_gtid = links.clone();
    no_gtid[0].using_gtid = Some(false);
    assert_eq!(
        maria.wait_for_test(&no_gtid, 2.0).unwrap(),
        vec!["SELECT MASTER_POS_WAIT('bin.000001', 4237, 2.000, '')".to_owned()]
    );
    // Names the backend would have to escape are refused.
    let mut odd = links.clone();
    odd[0].name = "x' OR '1".into();
    assert!(maria.reset_for_test(&odd).is_err());

    let my = Dialect(Server::parse(MYSQL));
    let rows = recorded(fixture!("mysql8_replica_connecting"));
    let links: Vec<status::Link> = rows[4]
        .as_ref()
        .unwrap()
        .iter()
        .map(status::Link::from_row)
        .collect();
    assert_eq!(
        my.wait_for_test(&links, 0.25).unwrap(),
        vec![
            "SELECT WAIT_FOR_EXECUTED_GTID_SET('3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9', 0.250)"
                .to_owned()
        ]
    );
    assert_eq!(
        my.reset_for_test(&links).unwrap(),
        vec!["RESET REPLICA ALL".to_owned()]
    );
    let mut no_gtid = links.clone();
    no_gtid[0].received = Some(String::new());
    assert_eq!(
        my.wait_for_test(&no_gtid, 1.0).unwrap(),
        vec!["SELECT SOURCE_POS_WAIT('source-bin.000002', 2307, 1.000, '')".to_owned()]
    );
}

#[test]
fn classification() {
    use Fault::*;
    for (code, fault) in [
        (1290, NotWritable),
        (1836, NotWritable),
        (1053, ConnectionLost),
        (1927, ConnectionLost),
        (2006, ConnectionLost),
        (2013, ConnectionLost),
        (4031, ConnectionLost),
        (1040, TooManyConnections),
        (1203, TooManyConnections),
        (1062, Other),
        (1792, Other),
        (1227, Other),
    ] {
        assert_eq!(classify(&server_error(code)), fault, "{code}");
    }
    let io = |kind| mysql::Error::IoError(std::io::Error::new(kind, "x"));
    assert_eq!(
        classify(&io(std::io::ErrorKind::BrokenPipe)),
        ConnectionLost
    );
    assert_eq!(
        classify(&io(std::io::ErrorKind::ConnectionReset)),
        ConnectionLost
    );
    assert_eq!(
        classify(&io(std::io::ErrorKind::WouldBlock)),
        ConnectionLost
    );
    assert_eq!(
        classify(&DriverError::ConnectTimeout.into()),
        ConnectionLost
    );
    assert_eq!(
        classify(&DriverError::PacketOutOfSync.into()),
        ConnectionLost
    );
    assert_eq!(classify(&DriverError::Timeout.into()), ConnectionLost);
    assert_eq!(classify(&DriverError::MixedParams.into()), Other);
    assert_eq!(
        classify(&DriverError::MismatchedStmtParams(1, 2).into()),
        Other
    );
    let url = mysql::Opts::from_url("nope").unwrap_err();
    assert_eq!(classify(&url.into()), Other);
}

#[test]
fn capabilities() {
    let c =
        <super::MysqlBackend as Backend<super::MysqlManager>>::capabilities(&super::MysqlBackend);
    assert!(c.roles && c.promote && c.upstream);
    assert!(c.measures(LagKind::Time) && c.measures(LagKind::Transactions));
    assert!(!c.measures(LagKind::Bytes));
}

#[test]
fn a_missing_bytes_lag_limit_is_a_build_error() {
    let manager = super::MysqlManager::from_url("mysql://app:s3cr3t-pw@127.0.0.1:1/app").unwrap();
    let err = super::builder()
        .max_failover_lag(Some(crate::Lag::Bytes(1)))
        .build(manager.clone(), manager)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("bytes"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn url_errors_name_the_side() {
    let e = super::managers("mysql://a:s3cr3t@h:notaport/d", "mysql://a:b@h/d")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("primary URL") && !e.contains("s3cr3t"), "{e}");
    let e = super::pool("mysql://a:b@h/d", "s3cr3t")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("mirror URL") && !e.contains("s3cr3t"), "{e}");
}

#[test]
fn flavors_display() {
    assert_eq!(Flavor::MariaDb.to_string(), "MariaDB");
    assert_eq!(Server::parse(MYSQL).to_string(), "MySQL 8.0.36");
}
