//! The `metrics` feature: what an exporter sees, scraped the way Prometheus does, over HTTP
//! from the Prometheus exporter's own listener (the process's only recorder).

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{wait_until, Manager, Mode, Server};
use metrics_exporter_prometheus::PrometheusBuilder;
use mirrorpool::{MirrorPool, Side};

/// A free loopback port: bind port 0, note the port, let it go.
fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("the bound address")
}

/// One `GET /metrics` over HTTP/1.1, every step bounded by a timeout; the body on a 200.
fn get_metrics(addr: SocketAddr) -> io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no end of headers in {response:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("unexpected status {status:?}")));
    }
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Ok(if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    })
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut body: &str) -> io::Result<String> {
    let bad = || io::Error::other("malformed chunked body");
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(bad)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or_else(bad)?);
        body = rest.get(size + 2..).ok_or_else(bad)?;
    }
}

/// Scrapes until the listener answers (it starts on the exporter's own thread), for at most
/// `limit`.
fn scrape(addr: SocketAddr, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match get_metrics(addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() >= deadline => panic!("GET http://{addr}/metrics: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn a_prometheus_scrape_shows_gauges_counters_and_failover_series_with_side_and_pool_labels() {
    let addr = free_loopback_addr();
    // `install` runs the HTTP listener on a thread and runtime of its own: no tokio runtime
    // is needed here.
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("the only recorder of this process, listening on a free port");
    let (p, m) = (Server::new("primary"), Server::new("mirror"));
    m.set_lag_bytes(Some(42));
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
        r#"mirrorpool_replication_lag_bytes{pool="orders",side="mirror"} 42"#,
    ] {
        let mut body = String::new();
        assert!(
            wait_until(Duration::from_secs(5), || {
                body = scrape(addr, Duration::from_secs(5));
                body.lines().any(|l| l.starts_with(series))
            }),
            "{series} missing from the scrape of http://{addr}/metrics:\n{body}"
        );
    }
    // A lag the heartbeats stop reporting (as after a promotion) is not left at its last value.
    m.set_lag_bytes(None);
    let series = r#"mirrorpool_replication_lag_bytes{pool="orders",side="mirror"} NaN"#;
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            body = scrape(addr, Duration::from_secs(5));
            body.lines().any(|l| l.starts_with(series))
        }),
        "{series} missing from the scrape of http://{addr}/metrics:\n{body}"
    );
}

#[test]
fn a_chunked_body_is_reassembled() {
    assert_eq!(
        dechunk("5\r\nhello\r\n7;x=1\r\n world\n\r\n0\r\n\r\n").unwrap(),
        "hello world\n"
    );
    assert!(dechunk("zz\r\nhello").is_err());
}
