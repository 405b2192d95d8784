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

/// A running admin server; stops when dropped.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the admin server is not on an IP address")]
    NotIp,
    #[error("cannot start the admin thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl AdminServer {
    /// Bind `addr` and serve in a background thread.
    pub fn start(addr: &str, state: AdminState) -> Result<AdminServer, AdminError> {
        let server = tiny_http::Server::http(addr).map_err(|source| AdminError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let bound = server.server_addr().to_ip().ok_or(AdminError::NotIp)?;
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    let (status, body, ctype) = respond(&state, req.method().as_str(), req.url());
                    let header = tiny_http::Header::from_bytes("Content-Type", ctype)
                        .expect("static header is valid");
                    let resp = tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header);
                    let _ = req.respond(resp);
                }
            })
            .map_err(AdminError::Thread)?;
        tracing::info!(addr = %bound, "admin server listening (/metrics, /healthz, /readyz)");
        Ok(AdminServer {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
