//! Command-line flags, parsed by hand (a handful of flags does not need a parser crate).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The text `--help` prints.
pub const HELP: &str = "\
failover_demo: watch mirrorpool keep a service writing while its primary database fails.

Starts a throw-away primary + mirror pair (testkit, in a temp dir, on free loopback ports),
runs writer and reader threads through a MirrorPool, injects a fault into the primary, and
shows the failover: a live progress line, the pool's own log lines, a timeline, a picture of
the acknowledged writes, and a check that no acknowledged write was lost.

USAGE:
    cargo run --release --example failover_demo --all-features -- [FLAGS]

FLAGS:
    --mysql               MariaDB pair instead of PostgreSQL (needs mariadb-server)
    --fault KIND          what happens to the primary after the warm-up:
                            kill     SIGKILL of the server (default)
                            hang     SIGSTOP: the server hangs (resumed before teardown)
                            cut      black hole: the network to the primary drops every
                                     packet, for the application and for the mirror
                            restart  immediate shutdown, restarted 1.5 s later: the old
                                     primary comes back writable next to the promoted mirror
    --async               asynchronous replication (default: synchronous; PostgreSQL
                          synchronous_commit, MariaDB semi-sync AFTER_SYNC). Async failovers
                          may lose acknowledged writes: they are reported, not failed on
    --duration SECS       watch at least this long after the fault (default 4; decimals
                          allowed); the demo also waits for the first write on the new
                          primary plus 1 s, up to 30 s after the fault
    --threads N           writer threads (default 8; 1 to 64)
    --metrics-addr ADDR   serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9000) while the
                          demo runs: curl http://ADDR/metrics
    -h, --help            this text

The log filter is RUST_LOG (default: mirrorpool=warn, which shows the failover).
Exit code: 0 on a clean failover; 1 if writers never moved or (with synchronous
replication) an acknowledged write is missing; 2 for a bad flag; 130 on Ctrl-C.";

/// Which database pair to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Postgres,
    Mariadb,
}

/// What happens to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Hang,
    Cut,
    Restart,
}

impl Fault {
    /// How the fault is described in the output.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL of the primary",
            Fault::Hang => "SIGSTOP of the primary (hung)",
            Fault::Cut => "primary black-holed (app and mirror)",
            Fault::Restart => "immediate shutdown of the primary",
        }
    }
}

/// The parsed flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub engine: EngineKind,
    pub fault: Fault,
    pub synchronous: bool,
    pub duration: Duration,
    pub threads: usize,
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            engine: EngineKind::Postgres,
            fault: Fault::Kill,
            synchronous: true,
            duration: Duration::from_secs(4),
            threads: 8,
            metrics_addr: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Args),
    Help,
}

/// A command line the demo cannot run.
#[derive(Debug, PartialEq, Eq)]
pub enum ArgError {
    Unknown(String),
    MissingValue(&'static str),
    BadValue {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Unknown(flag) => write!(f, "unknown flag {flag:?}"),
            ArgError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            ArgError::BadValue {
                flag,
                value,
                expected,
            } => write!(f, "{flag} {value:?}: expected {expected}"),
        }
    }
}

impl std::error::Error for ArgError {}

/// Parses the flags (without the program name). `--flag=value` works too.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, ArgError> {
    let mut parsed = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        // A value from `--flag=value` or the next argument.
        let mut value = |name: &'static str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(ArgError::MissingValue(name))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--mysql" => parsed.engine = EngineKind::Mariadb,
            "--async" => parsed.synchronous = false,
            "--fault" => {
                let v = value("--fault")?;
                parsed.fault = match v.as_str() {
                    "kill" => Fault::Kill,
                    "hang" => Fault::Hang,
                    "cut" => Fault::Cut,
                    "restart" => Fault::Restart,
                    _ => return Err(bad("--fault", v, "kill, hang, cut or restart")),
                };
            }
            "--duration" => {
                let v = value("--duration")?;
                parsed.duration = match v.parse::<f64>() {
                    Ok(s) if (0.5..=600.0).contains(&s) => Duration::from_secs_f64(s),
                    _ => return Err(bad("--duration", v, "seconds between 0.5 and 600")),
                };
            }
            "--threads" => {
                let v = value("--threads")?;
                parsed.threads = match v.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) => n,
                    _ => return Err(bad("--threads", v, "a number from 1 to 64")),
                };
            }
            "--metrics-addr" => {
                let v = value("--metrics-addr")?;
                parsed.metrics_addr = match v.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => return Err(bad("--metrics-addr", v, "IP:PORT, e.g. 127.0.0.1:9000")),
                };
            }
            _ => return Err(ArgError::Unknown(flag)),
        }
    }
    Ok(Command::Run(parsed))
}

fn bad(flag: &'static str, value: String, expected: &'static str) -> ArgError {
    ArgError::BadValue {
        flag,
        value,
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, ArgError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_every_flag() {
        assert_eq!(run(&[]), Ok(Command::Run(Args::default())));
        assert_eq!(run(&["--help"]), Ok(Command::Help));
        let Ok(Command::Run(a)) = run(&[
            "--mysql",
            "--fault",
            "hang",
            "--async",
            "--duration=2.5",
            "--threads",
            "3",
            "--metrics-addr",
            "127.0.0.1:9000",
        ]) else {
            panic!("expected a run");
        };
        assert_eq!(a.engine, EngineKind::Mariadb);
        assert_eq!(a.fault, Fault::Hang);
        assert!(!a.synchronous);
        assert_eq!(a.duration, Duration::from_millis(2500));
        assert_eq!(a.threads, 3);
        assert_eq!(a.metrics_addr, Some("127.0.0.1:9000".parse().unwrap()));
    }

    #[test]
    fn bad_flags_are_typed_errors() {
        assert_eq!(run(&["--nope"]), Err(ArgError::Unknown("--nope".into())));
        assert_eq!(run(&["--fault"]), Err(ArgError::MissingValue("--fault")));
        assert!(matches!(
            run(&["--fault", "melt"]),
            Err(ArgError::BadValue {
                flag: "--fault",
                ..
            })
        ));
        assert!(matches!(
            run(&["--threads", "0"]),
            Err(ArgError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["--duration", "x"]),
            Err(ArgError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["--metrics-addr", "9000"]),
            Err(ArgError::BadValue { .. })
        ));
    }
}
