//! What a heartbeat's statements returned, read into an [`Observation`]: pure functions over
//! column-name → value maps, so they are tested on recorded server output.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use super::connection::{Flavor, Server};
use super::gtid::{DomainPos, GtidSet};
use crate::observation::{Access, Identity, Observation, Privileges, Replication, Role, Upstream};

/// One row: column name → value as text (`None` for SQL NULL).
pub(crate) type Map = BTreeMap<String, Option<String>>;

/// Something the heartbeat may not be allowed to see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Visible<T> {
    /// Seen.
    Seen(T),
    /// The server refused: the account lacks a privilege.
    Denied,
    /// Not seen for another reason (not asked, or another error).
    Unseen,
}

/// Everything one heartbeat read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The first statement's row: server variables, aliased (`read_only`, `gtid_slave_pos`...).
    pub(crate) vars: Map,
    /// `SHOW GLOBAL VARIABLES`: name → value.
    pub(crate) settings: Map,
    /// `SHOW GLOBAL STATUS`: name → value.
    pub(crate) status: Map,
    /// `SHOW GRANTS`, one line per grant; `None` if it failed.
    pub(crate) grants: Option<Vec<String>>,
    /// `SHOW ALL SLAVES STATUS` (MariaDB) / `SHOW REPLICA STATUS` (MySQL): one row per
    /// replication connection, none on a server that is no replica.
    pub(crate) replicas: Visible<Vec<Map>>,
    /// MySQL only: `performance_schema` rows per channel (`channel`, `heartbeats`,
    /// `heartbeat_interval`); `None` if not visible.
    pub(crate) links: Option<Vec<Map>>,
}

/// Folds `SHOW VARIABLES` / `SHOW STATUS` rows (`Variable_name`, `Value`) into one map.
pub(crate) fn name_value(rows: &[Map]) -> Map {
    rows.iter()
        .filter_map(|r| {
            let name = get(r, &["Variable_name"])?;
            Some((name.to_owned(), r.get("Value").cloned().flatten()))
        })
        .collect()
}

/// The first of `names` that the row has and that is not NULL.
pub(crate) fn get<'a>(row: &'a Map, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| row.get(*n).and_then(|v| v.as_deref()))
}

pub(crate) fn flag(value: Option<&str>) -> Option<bool> {
    match value?.trim().to_ascii_uppercase().as_str() {
        "1" | "ON" | "YES" | "TRUE" => Some(true),
        "0" | "OFF" | "NO" | "FALSE" => Some(false),
        _ => None,
    }
}

fn number(value: Option<&str>) -> Option<u64> {
    value?.trim().parse().ok()
}

/// Seconds (whole or fractional) as a duration; negative, NaN or huge values are unknown.
fn seconds(value: Option<&str>) -> Option<Duration> {
    let s: f64 = value?.trim().parse().ok()?;
    if s.is_finite() && s >= 0.0 {
        Duration::try_from_secs_f64(s).ok()
    } else {
        None
    }
}

/// One replication connection of a replica, under either flavour's column names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    /// MariaDB `Connection_name`, MySQL `Channel_Name`; "" for the default one.
    pub(crate) name: String,
    /// The IO (receiver) thread as printed: `Yes`, `Connecting`, `No`.
    pub(crate) io: Option<String>,
    /// The SQL (applier) thread runs.
    pub(crate) sql_running: Option<bool>,
    pub(crate) seconds_behind: Option<Duration>,
    /// Binary log file and position received up to, and applied up to.
    pub(crate) read: (Option<String>, Option<String>),
    pub(crate) exec: (Option<String>, Option<String>),
    /// MariaDB: `Using_Gtid` is not `No`.
    pub(crate) using_gtid: Option<bool>,
    /// MariaDB `Gtid_IO_Pos` / MySQL `Retrieved_Gtid_Set`: what the IO thread received.
    pub(crate) received: Option<String>,
    /// MariaDB: heartbeats received and the heartbeat period (seconds).
    pub(crate) heartbeats: Option<u64>,
    pub(crate) heartbeat_period: Option<Duration>,
}

impl Link {
    pub(crate) fn from_row(row: &Map) -> Link {
        let text = |names: &[&str]| get(row, names).map(str::to_owned);
        Link {
            name: text(&["Connection_name", "Channel_Name", "Channel_name"]).unwrap_or_default(),
            io: text(&["Slave_IO_Running", "Replica_IO_Running"]),
            sql_running: flag(get(row, &["Slave_SQL_Running", "Replica_SQL_Running"])),
            seconds_behind: seconds(get(
                row,
                &["Seconds_Behind_Master", "Seconds_Behind_Source"],
            )),
            read: (
                text(&["Master_Log_File", "Source_Log_File"]),
                text(&["Read_Master_Log_Pos", "Read_Source_Log_Pos"]),
            ),
            exec: (
                text(&["Relay_Master_Log_File", "Relay_Source_Log_File"]),
                text(&["Exec_Master_Log_Pos", "Exec_Source_Log_Pos"]),
            ),
            using_gtid: get(row, &["Using_Gtid"]).map(|v| !v.trim().eq_ignore_ascii_case("no")),
            received: text(&["Gtid_IO_Pos", "Retrieved_Gtid_Set"]),
            heartbeats: number(get(row, &["Slave_received_heartbeats"])),
            heartbeat_period: seconds(get(row, &["Slave_heartbeat_period"])),
        }
    }

    /// Whether the IO thread is connected to its primary (`Some(false)` while it is
    /// `Connecting` or stopped), `None` for a state this code does not know.
    pub(crate) fn streaming(&self) -> Option<bool> {
        match self.io.as_deref().map(str::trim) {
            Some(s) if s.eq_ignore_ascii_case("yes") => Some(true),
            Some(s) if s.eq_ignore_ascii_case("no") || s.eq_ignore_ascii_case("connecting") => {
                Some(false)
            }
            _ => None,
        }
    }

    /// Whether replication is configured to run (the IO thread runs or tries to connect, or
    /// the SQL thread runs): such a server is a replica, whatever `read_only` says.
    fn running(&self) -> bool {
        let io = self.io.as_deref().map(str::trim).unwrap_or("");
        io.eq_ignore_ascii_case("yes")
            || io.eq_ignore_ascii_case("connecting")
            || self.sql_running == Some(true)
    }

    /// Whether everything received has been applied, by binary log coordinates.
    pub(crate) fn caught_up(&self) -> Option<bool> {
        match (&self.read, &self.exec) {
            ((Some(rf), Some(rp)), (Some(ef), Some(ep))) => Some(rf == ef && rp == ep),
            _ => None,
        }
    }
}

/// The replication connections a snapshot saw (empty if none or not visible).
pub(crate) fn links(snap: &Snapshot) -> Vec<Link> {
    match &snap.replicas {
        Visible::Seen(rows) => rows.iter().map(Link::from_row).collect(),
        _ => Vec::new(),
    }
}

/// What the IO threads of all connections received (MariaDB), merged per domain.
pub(crate) fn received_mariadb(links: &[Link]) -> Option<DomainPos> {
    let mut all = DomainPos::default();
    for l in links {
        all.merge(&DomainPos::parse(l.received.as_deref().unwrap_or(""))?);
    }
    Some(all)
}

/// What the receiver threads of all channels retrieved (MySQL).
pub(crate) fn received_mysql(links: &[Link]) -> Option<GtidSet> {
    let mut all = GtidSet::default();
    for l in links {
        all.union(&GtidSet::parse(l.received.as_deref().unwrap_or(""))?);
    }
    Some(all)
}

/// The combined link state: the default connection's if there is one, else the only one's,
/// else streaming if any streams, not streaming if none does, unknown otherwise.
fn streaming(links: &[Link]) -> Option<bool> {
    if let Some(default) = links.iter().find(|l| l.name.is_empty()) {
        return default.streaming();
    }
    let states: Vec<Option<bool>> = links.iter().map(Link::streaming).collect();
    if states.contains(&Some(true)) {
        Some(true)
    } else if !states.is_empty() && states.iter().all(|s| *s == Some(false)) {
        Some(false)
    } else {
        None
    }
}

/// What changes whenever the replica hears from its primary: positions received and
/// heartbeats counted. `None` unless a heartbeat counter is part of it, since an idle live
/// primary moves no position and only its heartbeats prove it alive.
pub(crate) fn signature(server: Server, snap: &Snapshot) -> Option<String> {
    let links = links(snap);
    if links.is_empty() {
        return None;
    }
    let mut sig = String::new();
    let mut push = |v: Option<&str>| {
        sig.push_str(v.unwrap_or("?"));
        sig.push('|');
    };
    for l in &links {
        push(Some(&l.name));
        push(l.read.0.as_deref());
        push(l.read.1.as_deref());
        push(l.received.as_deref());
    }
    match server.flavor() {
        Flavor::MariaDb => {
            for l in &links {
                push(Some(&l.heartbeats?.to_string()));
            }
        }
        Flavor::MySql => {
            let rows = snap.links.as_ref()?;
            if rows.is_empty() {
                return None;
            }
            for r in rows {
                push(get(r, &["channel"]));
                push(Some(&number(get(r, &["heartbeats"]))?.to_string()));
            }
        }
    }
    Some(sig)
}

/// The longest a live primary may leave this replica without a word: the replica's
/// `slave_net_timeout` (after which it reconnects), or the heartbeat period if longer;
/// unbounded when heartbeats are off (an idle primary then sends nothing at all).
fn max_quiet(server: Server, snap: &Snapshot, links: &[Link]) -> Option<Duration> {
    let net = seconds(get(&snap.vars, &["net_timeout"]))?;
    let periods: Vec<Option<Duration>> = match server.flavor() {
        Flavor::MariaDb => links.iter().map(|l| l.heartbeat_period).collect(),
        Flavor::MySql => snap
            .links
            .iter()
            .flatten()
            .map(|r| seconds(get(r, &["heartbeat_interval"])))
            .collect(),
    };
    if periods.iter().any(|p| p.is_some_and(|p| p.is_zero())) {
        return Some(Duration::MAX);
    }
    Some(periods.into_iter().flatten().fold(net, Duration::max))
}

fn status_number(snap: &Snapshot, name: &str) -> Option<u64> {
    number(get(&snap.status, &[name]))
}

/// Reads a heartbeat. `silence`: how long the replica's [`signature`] has not changed.
pub(crate) fn observe(server: Server, snap: &Snapshot, silence: Option<Duration>) -> Observation {
    let links = links(snap);
    let read_only = flag(get(&snap.vars, &["read_only"]));
    let super_read_only = flag(get(&snap.vars, &["super_read_only"]));
    // MariaDB counts running replica SQL threads in a status any account may read.
    let sql_threads = status_number(snap, "Slaves_running").unwrap_or(0);
    let replicating = links.iter().any(Link::running) || sql_threads > 0;
    let role = match read_only {
        _ if replicating || super_read_only == Some(true) => Role::ReadOnly,
        Some(true) => Role::ReadOnly,
        Some(false) => Role::Writable,
        None => Role::Unknown,
    };
    // A replica reports what it applied; a server that takes writes (even one with a stopped
    // replication configuration left behind) what it wrote.
    let is_replica = role != Role::Writable && (!links.is_empty() || sql_threads > 0);
    let mut repl = Replication::default();
    match server.flavor() {
        Flavor::MariaDb => {
            let name = if is_replica {
                "gtid_slave_pos"
            } else {
                "gtid_binlog_pos"
            };
            let pos = get(&snap.vars, &[name]).and_then(DomainPos::parse);
            repl.position = pos.filter(|p| !p.is_empty()).map(|p| p.sum());
            if !links.is_empty() && links.iter().all(|l| l.using_gtid != Some(false)) {
                let applied = get(&snap.vars, &["gtid_slave_pos"]).and_then(DomainPos::parse);
                if let (Some(received), Some(applied)) = (received_mariadb(&links), applied) {
                    repl.lag_transactions = Some(received.ahead_of(&applied));
                }
            }
            if !is_replica {
                repl.replicas_attached = status_number(snap, "Slaves_connected")
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        Flavor::MySql => {
            let executed = get(&snap.vars, &["gtid_executed"]).and_then(GtidSet::parse);
            if let Some(executed) = executed.filter(|e| !e.is_empty()) {
                repl.position = Some(executed.count());
                if !links.is_empty() {
                    repl.lag_transactions =
                        received_mysql(&links).map(|r| r.missing_from(&executed));
                }
            }
        }
    }
    if !links.is_empty() {
        // Whole seconds only, NULL while the IO thread is not connected: a replica that has
        // applied everything it received is 0 behind whatever it says.
        repl.lag_time = links
            .iter()
            .map(|l| match l.seconds_behind {
                Some(s) => Some(s),
                None if l.caught_up() == Some(true) || repl.lag_transactions == Some(0) => {
                    Some(Duration::ZERO)
                }
                None => None,
            })
            .try_fold(Duration::ZERO, |acc, l| l.map(|l| acc.max(l)));
        repl.upstream = Some(Upstream {
            streaming: streaming(&links),
            silence,
            max_quiet: max_quiet(server, snap, &links),
        });
    }
    if role == Role::Writable && !is_replica {
        repl.synchronous = semi_sync(snap);
    }
    let mut obs = Observation::with_role(role)
        .with_replication(repl)
        .with_privileges(privileges(server, snap));
    if let Some(id) = identity(server, &snap.vars) {
        obs = obs.with_identity(id);
    }
    obs
}

/// Whether a primary's commits wait for a replica: `Rpl_semi_sync_master_status` (or
/// MySQL's `..._source_status`) while semi-synchronous replication is enabled on it; `None`
/// when it is not enabled (asynchronous by configuration: nothing to watch) or not reported.
fn semi_sync(snap: &Snapshot) -> Option<bool> {
    let enabled = flag(get(
        &snap.settings,
        &[
            "rpl_semi_sync_master_enabled",
            "rpl_semi_sync_source_enabled",
        ],
    ))?;
    if !enabled {
        return None;
    }
    flag(get(
        &snap.status,
        &["Rpl_semi_sync_master_status", "Rpl_semi_sync_source_status"],
    ))
}

/// A number distinct per server instance (MySQL: `server_uuid`; MariaDB, which has none:
/// `server_id`, host name, port and data directory together).
fn identity(server: Server, vars: &Map) -> Option<Identity> {
    let mut h = DefaultHasher::new();
    match get(vars, &["server_uuid"]) {
        Some(uuid) if server.flavor() == Flavor::MySql => uuid.trim().hash(&mut h),
        _ => {
            let parts = ["server_id", "hostname", "port", "datadir"].map(|n| get(vars, &[n]));
            if parts.iter().all(Option::is_none) {
                return None;
            }
            parts.hash(&mut h);
        }
    }
    Some(Identity {
        cluster: None,
        instance: h.finish(),
    })
}

/// Global privileges as `SHOW GRANTS` lists them for the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grants {
    /// Normalised names (upper case, `_` as space) granted `ON *.*`.
    global: BTreeSet<String>,
    /// `ALL PRIVILEGES ON *.*`.
    all: bool,
    /// A role is granted: privileges may come through it that the list does not show.
    roles: bool,
}

fn normalise(privilege: &str) -> String {
    let p = privilege.trim().to_ascii_uppercase().replace('_', " ");
    match p.as_str() {
        // MariaDB's alias, printed as SLAVE MONITOR.
        "REPLICA MONITOR" => "SLAVE MONITOR".into(),
        // MariaDB 10.5+ prints REPLICATION CLIENT as BINLOG MONITOR.
        "BINLOG MONITOR" => "REPLICATION CLIENT".into(),
        _ => p,
    }
}

impl Grants {
    /// Reads `GRANT <privileges> ON <target> TO ...` and `GRANT <role> TO ...` lines. Lines are
    /// never echoed anywhere: MariaDB prints the password hash in them.
    pub(crate) fn parse(lines: &[String]) -> Grants {
        let mut g = Grants::default();
        for line in lines {
            let Some(rest) = line.trim().strip_prefix("GRANT ") else {
                continue;
            };
            let to = rest.find(" TO ").unwrap_or(rest.len());
            match rest[..to].find(" ON ") {
                Some(on) => {
                    if rest[on + 4..to].trim() != "*.*" {
                        continue;
                    }
                    for p in rest[..on].split(',').map(normalise) {
                        if p == "ALL" || p == "ALL PRIVILEGES" {
                            g.all = true;
                        } else {
                            g.global.insert(p);
                        }
                    }
                }
                // `GRANT PROXY ON ...` has an ON; no ON at all is a role grant.
                None if to < rest.len() => g.roles = true,
                None => {}
            }
        }
        g
    }

    fn has_any(&self, privileges: &[&str]) -> bool {
        self.all || privileges.iter().any(|p| self.global.contains(*p))
    }
}

/// One thing promotion needs: any of `any_of`, and what to say if none is held.
struct Need {
    any_of: &'static [&'static str],
    denied: &'static str,
}

const MARIADB_PROMOTE: &[Need] = &[
    Need {
        any_of: &["SLAVE MONITOR", "SUPER"],
        denied: "the account lacks SLAVE MONITOR, which promotion needs to read the received position (GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO <user>)",
    },
    Need {
        any_of: &["REPLICATION SLAVE ADMIN", "SUPER"],
        denied: "the account lacks REPLICATION SLAVE ADMIN, which promotion needs for STOP SLAVE (GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO <user>)",
    },
    Need {
        any_of: &["RELOAD"],
        denied: "the account lacks RELOAD, which promotion needs for RESET SLAVE ALL (GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO <user>)",
    },
    Need {
        any_of: &["READ ONLY ADMIN"],
        denied: "the account lacks READ_ONLY ADMIN, which promotion needs to turn read_only off; SUPER does not include it from MariaDB 10.11 (GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN, RELOAD, READ_ONLY ADMIN ON *.* TO <user>)",
    },
];

const MYSQL_PROMOTE: &[Need] = &[
    Need {
        any_of: &["REPLICATION CLIENT", "SUPER"],
        denied: "the account lacks REPLICATION CLIENT, which promotion needs to read the received position (GRANT REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN, RELOAD, SYSTEM_VARIABLES_ADMIN ON *.* TO <user>)",
    },
    Need {
        any_of: &["REPLICATION SLAVE ADMIN", "SUPER"],
        denied: "the account lacks REPLICATION_SLAVE_ADMIN, which promotion needs for STOP REPLICA (GRANT REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN, RELOAD, SYSTEM_VARIABLES_ADMIN ON *.* TO <user>)",
    },
    Need {
        any_of: &["RELOAD"],
        denied: "the account lacks RELOAD, which promotion needs for RESET REPLICA ALL (GRANT REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN, RELOAD, SYSTEM_VARIABLES_ADMIN ON *.* TO <user>)",
    },
    Need {
        any_of: &["SYSTEM VARIABLES ADMIN", "SUPER"],
        denied: "the account lacks SYSTEM_VARIABLES_ADMIN, which promotion needs to turn read_only off (GRANT REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN, RELOAD, SYSTEM_VARIABLES_ADMIN ON *.* TO <user>)",
    },
];

const MARIADB_MONITOR_DENIED: &str =
    "the account cannot see replication (GRANT SLAVE MONITOR ON *.* TO <user>)";
const MARIADB_OLD_MONITOR_DENIED: &str =
    "the account cannot see replication (GRANT REPLICATION CLIENT ON *.* TO <user>)";
const MYSQL_MONITOR_DENIED: &str =
    "the account cannot see replication (GRANT REPLICATION CLIENT ON *.* TO <user>)";

/// What the account may do. Seeing replication is tested by doing (the status statement
/// worked or was refused); promotion is read from `SHOW GRANTS` for the server versions whose
/// needs are known (MariaDB 10.11+, MySQL 8+). Whatever cannot be told for sure — privileges
/// that may come through a role, older versions, no grants read — is `Unchecked`.
pub(crate) fn privileges(server: Server, snap: &Snapshot) -> Privileges {
    let replication_status = match snap.replicas {
        Visible::Seen(_) => Access::Granted,
        Visible::Denied => Access::Denied(match server.flavor() {
            Flavor::MariaDb if server.at_least(10, 5, 9) => MARIADB_MONITOR_DENIED,
            Flavor::MariaDb => MARIADB_OLD_MONITOR_DENIED,
            Flavor::MySql => MYSQL_MONITOR_DENIED,
        }),
        Visible::Unseen => Access::Unchecked,
    };
    let needs = match server.flavor() {
        Flavor::MariaDb if server.at_least(10, 11, 0) => Some(MARIADB_PROMOTE),
        Flavor::MySql if server.at_least(8, 0, 0) => Some(MYSQL_PROMOTE),
        _ => None,
    };
    let promote = match (needs, &snap.grants) {
        (Some(needs), Some(lines)) => {
            let grants = Grants::parse(lines);
            match needs.iter().find(|n| !grants.has_any(n.any_of)) {
                None => Access::Granted,
                Some(_) if grants.roles => Access::Unchecked,
                Some(n) => Access::Denied(n.denied),
            }
        }
        _ => Access::Unchecked,
    };
    Privileges {
        promote,
        replication_status,
    }
}
