//! The admin server under hostile clients (real sockets on loopback): a request line sent
//! without an end, and a flood of half-open connections, cannot take its memory or stop it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vast_processor::admin::{AdminServer, AdminState};
use vast_processor::metrics::{Metrics, RunStats};
use vast_processor::sink::parquet::ParquetSink;

fn server(dir: &std::path::Path) -> AdminServer {
    AdminServer::start(
        "127.0.0.1:0",
        AdminState {
            metrics: Arc::new(Metrics::new([("raw-logs", "raw-logs")])),
            stats: Arc::new(RunStats::default()),
            sink: Arc::new(ParquetSink::new(dir)),
            group: "g".into(),
            live: vec![],
            control: None,
        },
    )
    .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `GET /` and then 600 x 1 MiB of 'A' without CRLF took the server from 34 MB to 1.17 GB
/// in 6.6 s. The head is bounded: the server answers or closes long before.
#[test]
fn an_endless_request_line_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut s = TcpStream::connect(srv.addr()).unwrap();
    s.write_all(b"GET /").unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let mut sent = 0usize;
    let started = Instant::now();
    while sent < 600 << 20 && started.elapsed() < Duration::from_secs(20) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 << 20,
        "the server kept reading: {sent} bytes accepted"
    );
    assert_eq!(
        get(srv.addr(), "/healthz")
            .as_deref()
            .map(|r| r.contains("200 OK")),
        Some(true)
    );
}

/// ~600 connections sending `GET /metr` and holding made the accept loop exit for good
/// (EMFILE); /healthz stayed refused. Half-open connections time out, the rest are closed
/// at the cap, and health answers while they hold and after they are gone.
#[test]
fn half_open_connections_neither_stop_nor_starve_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut held = Vec::new();
    for _ in 0..600 {
        if let Ok(mut s) = TcpStream::connect(srv.addr()) {
            let _ = s.write_all(b"GET /metr");
            held.push(s);
        }
    }
    // The head timeout frees the slots even while the clients hold on.
    let until = Instant::now() + Duration::from_secs(15);
    let mut ok = false;
    while Instant::now() < until && !ok {
        ok = get(srv.addr(), "/healthz").is_some_and(|r| r.contains("200 OK"));
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        ok,
        "/healthz did not answer while half-open connections held"
    );
    drop(held);
    let metrics = get(srv.addr(), "/metrics").unwrap_or_default();
    assert!(metrics.contains("vast_messages_in_total"), "{metrics}");
}
