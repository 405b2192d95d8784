//! The admin HTTP server: `GET /metrics` (Prometheus text), `GET /healthz` (alive: never
//! waits on I/O), `GET /readyz` (ready from live signals computed in the background: group
//! membership, a reachable broker, sink writes succeeding and the sink's check, partitions
//! with lag making progress; 503 with the reason otherwise, also the `vast_ready` metric).
//! `GET /transforms` shows each pipeline's deployment state; `POST /transforms/...` changes
//! it ([`control`]). Binds to loopback unless configured otherwise.

pub mod control;

use crate::metrics::{Metrics, Readiness};
use crate::pipeline::RunStats;
use crate::sink::Sink;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running admin server; stops when dropped.
pub struct AdminServer {
    stop_checks: Arc<std::sync::atomic::AtomicBool>,
    checks: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

/// What the endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub stats: Arc<RunStats>,
    pub sink: Arc<dyn Sink>,
    pub group: String,
    /// The pipelines' live transforms (for /transforms and the reload counters).
    pub live: Vec<Arc<crate::transform::reload::LiveTransform>>,
    /// The write endpoints; `None` serves reads only.
    pub control: Option<Arc<control::Control>>,
}

fn transforms_json(state: &AdminState) -> String {
    let list: Vec<serde_json::Value> = state
        .live
        .iter()
        .map(|l| {
            let cur = l.current();
            serde_json::json!({
                "pipeline": l.pipeline,
                "running_version": cur.label(),
                "running_module": cur.module.version(),
                "generation": cur.generation,
                "previous_version": l.previous().map(|p| p.label().to_string()),
                "last_reload": l.last(),
                "accepted": l.accepted.load(Ordering::Relaxed),
                "rejected": l.rejected.load(Ordering::Relaxed),
                "rolled_back": l.rolled_back.load(Ordering::Relaxed),
                "refused_file": l.refused_file(),
                "refused_versions": l.state().map(|s| s.record().refused),
                "file": l.file(),
                "pinned": l.is_pinned(),
                "checking": l.checking(),
                "probation": l.probation(),
                "kept_versions": l.state().map(|s| s.record().accepted),
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
}

fn reload_metrics(state: &AdminState) -> String {
    use std::fmt::Write;
    let mut o = String::from(
        "# HELP vast_reloads_total Hot-reload candidates, by result.\n# TYPE vast_reloads_total counter\n",
    );
    for l in &state.live {
        for (result, c) in [
            ("accepted", &l.accepted),
            ("rejected", &l.rejected),
            ("rolled_back", &l.rolled_back),
        ] {
            let _ = writeln!(
                o,
                "vast_reloads_total{{pipeline=\"{}\",result=\"{result}\"}} {}",
                l.pipeline,
                c.load(Ordering::Relaxed)
            );
        }
    }
    o
}

/// The answer to a request: status and body.
pub fn respond(state: &AdminState, method: &str, path: &str) -> (u16, String, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        // POST is answered by the write endpoints ([`control`]).
        return (405, "method not allowed\n".into(), TEXT);
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => (
            200,
            state.metrics.render(&state.stats) + &reload_metrics(state),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/transforms" => (200, transforms_json(state), "application/json"),
        "/healthz" => (200, "ok\n".into(), TEXT),
        "/readyz" => {
            // Computed in the background (`readiness`): answering never waits on I/O.
            let r = state
                .metrics
                .readiness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let status = if r.reason == "ok" { 200 } else { 503 };
            (status, format!("{}\n", r.detail), TEXT)
        }
        _ => (
            404,
            "not found: try /metrics, /healthz, /readyz or /transforms\n".into(),
            TEXT,
        ),
    }
}

/// How long a partition with lag may go without a commit before the processor is not ready
/// (a flush takes well under a second; a stuck partition held lag 100/100 with /readyz 200).
pub const STUCK_AFTER: Duration = Duration::from_secs(60);
/// How often readiness is computed, and how often the sink's own check (a probe file, a VAST
/// HEAD) runs within it: the other signals are in memory.
const READINESS_EVERY: Duration = Duration::from_millis(500);
const SINK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Readiness from live signals, first problem first: group membership, a reachable broker,
/// the last sink write, the sink's own check (which may wait on I/O: this runs in the
/// background), and every partition with lag making progress.
pub fn readiness(state: &AdminState) -> Readiness {
    readiness_with(state, &state.sink.check().map_err(|e| e.to_string()))
}

/// [`readiness`] with the sink check's last result given.
fn readiness_with(state: &AdminState, sink_check: &Result<(), String>) -> Readiness {
    let not = |reason, detail: String| Readiness {
        reason,
        detail: format!("not ready: {detail}"),
    };
    let m = &state.metrics;
    if !m.joined.load(Ordering::Relaxed) {
        return not(
            "not_joined",
            format!("the consumer has not joined group `{}` yet", state.group),
        );
    }
    if !m.broker_up.load(Ordering::Relaxed) {
        return not("broker_down", "no Kafka broker is reachable".into());
    }
    let failing = m
        .sink_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(e) = failing {
        return not("sink_failing", e);
    }
    if let Err(e) = sink_check {
        return not("sink_unreachable", e.clone());
    }
    let now = (crate::model::now_micros() / 1000) as u64;
    let positions = m.partitions.lock().unwrap_or_else(|p| p.into_inner());
    for ((topic, partition), p) in positions.iter() {
        let still = now.saturating_sub(p.progressed_ms);
        if p.lag > 0 && p.progressed_ms > 0 && still > STUCK_AFTER.as_millis() as u64 {
            return not(
                "partition_stuck",
                format!(
                    "partition {topic}/{partition} has lag {} and no commit for {} s",
                    p.lag,
                    still / 1000
                ),
            );
        }
    }
    Readiness {
        reason: "ok",
        detail: "ready".into(),
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot bind the admin server to {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Most connections served at once; more are closed at accept (a flood of half-open
/// connections used to cost a thread and two descriptors each, until the process ran out).
const MAX_CONNECTIONS: usize = 128;
/// The request head (request line and headers) must fit this buffer (hyper's smallest):
/// a request line sent without an end used to be buffered without limit.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// The head must arrive within this; a connection is closed after this long in all.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

impl AdminServer {
    /// Bind `addr` and serve on a thread of its own (a one-thread tokio runtime, with answers
    /// computed on a small blocking pool), so the admin server can never take the pipeline's
    /// threads or memory: bounded heads, head and connection timeouts, a connection cap, and
    /// accept errors (EMFILE) waited out instead of ending the server.
    pub fn start(addr: &str, state: AdminState) -> Result<AdminServer, AdminError> {
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let bound = std_listener
            .local_addr()
            .map_err(|source| AdminError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        std_listener
            .set_nonblocking(true)
            .map_err(AdminError::Thread)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(4)
            .thread_name("admin-answer")
            .build()
            .map_err(AdminError::Thread)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::new(state);
        *state
            .metrics
            .readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = readiness(&state);
        let stop_checks = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checks = {
            let (state, stop) = (state.clone(), stop_checks.clone());
            std::thread::Builder::new()
                .name("readiness".into())
                .spawn(move || {
                    let mut checked: Option<(std::time::Instant, Result<(), String>)> = None;
                    while !stop.load(Ordering::Relaxed) {
                        if checked
                            .as_ref()
                            .is_none_or(|(at, _)| at.elapsed() >= SINK_CHECK_EVERY)
                        {
                            let r = state.sink.check().map_err(|e| e.to_string());
                            checked = Some((std::time::Instant::now(), r));
                        }
                        let sink = &checked.as_ref().expect("just set").1;
                        let r = readiness_with(&state, sink);
                        *state
                            .metrics
                            .readiness
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = r;
                        std::thread::sleep(READINESS_EVERY);
                    }
                })
                .map_err(AdminError::Thread)?
        };
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                runtime.block_on(serve(std_listener, state, stop_rx));
            })
            .map_err(AdminError::Thread)?;
        tracing::info!(addr = %bound, "admin server listening (/metrics, /healthz, /readyz)");
        Ok(AdminServer {
            stop_checks,
            checks: Some(checks),
            stop: Some(stop_tx),
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin server cannot listen");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept: wait and
                // go on; the server must outlive any burst of clients.
                tracing::warn!(error = %e, "admin server: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // At the cap: close at once rather than queue.
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| answer(state.clone(), req, loopback));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

async fn answer(
    state: Arc<AdminState>,
    req: hyper::Request<hyper::body::Incoming>,
    loopback: bool,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (status, body, ctype) = if method == "POST" {
        write(state, req, loopback, path).await
    } else {
        // The answer may wait on I/O (the sink check of /readyz): off the accept thread.
        spawn_answer(move || respond(&state, &method, &path)).await
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

type Answer = (u16, String, &'static str);

async fn spawn_answer(f: impl FnOnce() -> Answer + Send + 'static) -> Answer {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| {
        (
            500,
            "internal error\n".to_string(),
            "text/plain; charset=utf-8",
        )
    })
}

/// A write: authorized before its body is read, the body bounded by the largest component a
/// pipeline accepts, the work done off the accept thread.
async fn write(
    state: Arc<AdminState>,
    req: hyper::Request<hyper::body::Incoming>,
    loopback: bool,
    path: String,
) -> Answer {
    use http_body_util::BodyExt;
    let Some(control) = state.control.clone() else {
        return (
            405,
            "this admin server is read-only\n".into(),
            "text/plain; charset=utf-8",
        );
    };
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Err(refused) = control::authorize(&control, authorization.as_deref(), loopback) {
        return refused;
    }
    let limit = state
        .live
        .iter()
        .map(|l| l.current().settings.limits.max_component_bytes())
        .max()
        .unwrap_or(0) as usize;
    let body = match http_body_util::Limited::new(req.into_body(), limit.max(1))
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return (
                413,
                format!("{{\"error\":\"the body is over {limit} bytes or was cut off: {e}\"}}\n"),
                "application/json",
            );
        }
    };
    spawn_answer(move || {
        let req = control::WriteRequest {
            path: &path,
            body: &body,
        };
        control::write(&state, &control, &req)
    })
    .await
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_checks.store(true, Ordering::Relaxed);
        // The readiness thread may be inside a sink check: it is not waited for.
        drop(self.checks.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PartitionPosition;

    fn state(dir: &std::path::Path) -> AdminState {
        AdminState {
            metrics: Arc::new(Metrics::new([("raw-logs", "raw-logs")])),
            stats: Arc::new(RunStats::default()),
            sink: Arc::new(crate::sink::parquet::ParquetSink::new(dir)),
            group: "g".into(),
            live: vec![],
            control: None,
        }
    }

    /// /readyz said 200 for 30 s after the broker was killed (the joined flag was never
    /// reset), on a sink that failed, and while a partition was stuck with lag.
    #[test]
    fn readiness_follows_membership_broker_sink_and_progress() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        assert_eq!(readiness(&s).reason, "not_joined");
        s.metrics.joined.store(true, Ordering::Relaxed);
        assert_eq!(readiness(&s).reason, "ok");
        s.metrics.broker_up.store(false, Ordering::Relaxed);
        assert_eq!(readiness(&s).reason, "broker_down");
        s.metrics.broker_up.store(true, Ordering::Relaxed);
        *s.metrics.sink_error.lock().unwrap() = Some("the sink failed: disk full".into());
        let r = readiness(&s);
        assert_eq!(
            (r.reason, r.detail.contains("disk full")),
            ("sink_failing", true)
        );
        *s.metrics.sink_error.lock().unwrap() = None;
        let old =
            (crate::model::now_micros() / 1000) as u64 - STUCK_AFTER.as_millis() as u64 - 1000;
        s.metrics.partitions.lock().unwrap().insert(
            ("raw-logs".into(), 3),
            PartitionPosition {
                committed: 0,
                high_watermark: 100,
                lag: 100,
                progressed_ms: old,
            },
        );
        let r = readiness(&s);
        assert_eq!(r.reason, "partition_stuck");
        assert!(r.detail.contains("raw-logs/3 has lag 100"), "{}", r.detail);
        s.metrics.partitions.lock().unwrap().clear();
        assert_eq!(readiness(&s).reason, "ok");
        assert!(
            s.metrics
                .render(&s.stats)
                .contains("vast_ready{reason=\"starting\"} 0")
        );
    }
}
