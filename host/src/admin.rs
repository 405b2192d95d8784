//! The admin HTTP server: `GET /metrics` (Prometheus text), `GET /healthz` (alive),
//! `GET /readyz` (joined the consumer group and the sink is reachable; 503 with the reason
//! otherwise). Binds to loopback unless configured otherwise.

use crate::metrics::Metrics;
use crate::pipeline::RunStats;
use crate::sink::Sink;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running admin server; stops when dropped.
pub struct AdminServer {
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
}

fn transforms_json(state: &AdminState) -> String {
    let list: Vec<serde_json::Value> = state
        .live
        .iter()
        .map(|l| {
            let cur = l.current();
            serde_json::json!({
                "pipeline": l.pipeline,
                "running_version": cur.module.version(),
                "generation": cur.generation,
                "previous_version": l.previous().map(|p| p.module.version().to_string()),
                "last_reload": l.last(),
                "accepted": l.accepted.load(Ordering::Relaxed),
                "rejected": l.rejected.load(Ordering::Relaxed),
                "rolled_back": l.rolled_back.load(Ordering::Relaxed),
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
            if !state.metrics.joined.load(Ordering::Relaxed) {
                return (
                    503,
                    format!(
                        "not ready: the consumer has not joined group `{}` yet\n",
                        state.group
                    ),
                    TEXT,
                );
            }
            match state.sink.check() {
                Ok(()) => (200, "ready\n".into(), TEXT),
                Err(e) => (503, format!("not ready: {e}\n"), TEXT),
            }
        }
        _ => (
            404,
            "not found: try /metrics, /healthz, /readyz or /transforms\n".into(),
            TEXT,
        ),
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
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                runtime.block_on(serve(std_listener, state, stop_rx));
            })
            .map_err(AdminError::Thread)?;
        tracing::info!(addr = %bound, "admin server listening (/metrics, /healthz, /readyz)");
        Ok(AdminServer {
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
            let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
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
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // The answer may wait on I/O (the sink check of /readyz): off the accept thread.
    let answered = tokio::task::spawn_blocking(move || respond(&state, &method, &path)).await;
    let (status, body, ctype) = answered.unwrap_or_else(|_| {
        (
            500,
            "internal error\n".to_string(),
            "text/plain; charset=utf-8",
        )
    });
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
