//! The admin API's write endpoints: `POST /transforms/<pipeline>/<action>` with `deploy`
//! (the body is the component), `rollback`, `pin?version=V`, `unpin` and `unban?hash=H`.
//! They change what runs, so they need the token (`admin.token` or
//! `VAST_PROCESSOR_ADMIN_TOKEN`) when one is set, and are closed without one unless the
//! admin address is loopback. Answers are JSON: `{"pipeline", "result", "detail",
//! "running_version"}`.

use super::AdminState;
use crate::transform::reload::{Decision, LiveTransform};
use crate::transform::wasm::TransformEngine;
use std::sync::Arc;

/// What the write endpoints need besides the live transforms.
pub struct Control {
    /// Compiles deployed and pinned components.
    pub engine: Arc<TransformEngine>,
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never appears in logs.
        f.debug_struct("Control")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A write request (authorized) as the endpoints see it.
pub struct WriteRequest<'a> {
    /// Path and query.
    pub path: &'a str,
    pub body: &'a [u8],
}

const JSON: &str = "application/json";

fn answer(status: u16, value: serde_json::Value) -> (u16, String, &'static str) {
    (status, value.to_string() + "\n", JSON)
}

fn error(status: u16, message: impl Into<String>) -> (u16, String, &'static str) {
    answer(status, serde_json::json!({ "error": message.into() }))
}

/// Compare without an early exit, so the time taken says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a write may go ahead: `Err` is the answer refusing it.
pub fn authorize(
    control: &Control,
    authorization: Option<&str>,
    loopback: bool,
) -> Result<(), (u16, String, &'static str)> {
    match &control.token {
        Some(token) => {
            let given = authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            if same_secret(given.trim().as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(error(
                    403,
                    "forbidden: write endpoints need `Authorization: Bearer <admin token>`",
                ))
            }
        }
        None if loopback => Ok(()),
        None => Err(error(
            403,
            "forbidden: the admin address is not loopback, so write endpoints need admin.token (or VAST_PROCESSOR_ADMIN_TOKEN)",
        )),
    }
}

/// `%xx` escapes and `+` decoded (query values such as `raw-logs%40abc`).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

fn decision_json(d: &Decision) -> (&'static str, String) {
    match d {
        Decision::Accepted => ("accepted", String::new()),
        Decision::Rejected(why) => ("rejected", why.clone()),
        Decision::Unchanged => (
            "unchanged",
            "the content last evaluated; nothing to decide".into(),
        ),
        Decision::Pinned => ("pinned", "a version is pinned by hand".into()),
        Decision::NotReady(why) => ("not_ready", why.clone()),
    }
}

fn done(live: &LiveTransform, result: &str, detail: String) -> (u16, String, &'static str) {
    answer(
        200,
        serde_json::json!({
            "pipeline": live.pipeline,
            "result": result,
            "detail": detail,
            "running_version": live.current().label(),
        }),
    )
}

/// Carry out a write request (authorized with [`authorize`]).
pub fn write(
    state: &AdminState,
    control: &Control,
    req: &WriteRequest,
) -> (u16, String, &'static str) {
    let (path, q) = req.path.split_once('?').unwrap_or((req.path, ""));
    let Some(rest) = path.strip_prefix("/transforms/") else {
        return error(
            404,
            "not found: POST /transforms/<pipeline>/{deploy,rollback,pin,unpin,unban}",
        );
    };
    let Some((pipeline, action)) = rest.rsplit_once('/') else {
        return error(
            404,
            "not found: POST /transforms/<pipeline>/{deploy,rollback,pin,unpin,unban}",
        );
    };
    let pipeline = decode(pipeline);
    let Some(live) = state.live.iter().find(|l| l.pipeline == pipeline) else {
        let names: Vec<&str> = state.live.iter().map(|l| l.pipeline.as_str()).collect();
        return error(
            404,
            format!("no pipeline `{pipeline}` (pipelines: {})", names.join(", ")),
        );
    };
    let engine = &control.engine;
    // A pin lifted or a ban lifted: the file as it is now is judged at once.
    let then = |live: &LiveTransform| {
        crate::transform::reload::reevaluate(live, engine).map(|d| {
            let (result, detail) = decision_json(&d);
            serde_json::json!({ "result": result, "detail": detail })
        })
    };
    match action {
        "deploy" => match crate::transform::reload::deploy(live, req.body, engine) {
            Ok(d) => {
                let (result, detail) = decision_json(&d);
                let detail = if detail.is_empty() {
                    live.last().detail
                } else {
                    detail
                };
                let mut v = serde_json::json!({
                    "pipeline": live.pipeline,
                    "result": result,
                    "detail": detail,
                    "running_version": live.current().label(),
                    "content_hash": crate::transform::wasm::engine::content_hash(req.body),
                });
                if let Some(o) = live.last().output_diff.filter(|_| d == Decision::Accepted) {
                    v["output_diff"] = serde_json::to_value(o).unwrap_or_default();
                }
                answer(200, v)
            }
            Err(e) => error(409, e),
        },
        "rollback" => match live.roll_back_by_hand(engine) {
            Ok(detail) => done(live, "rolled_back", detail),
            Err(e) => error(409, e),
        },
        "pin" => {
            let Some(version) = query(q, "version").filter(|v| !v.is_empty()) else {
                return error(
                    400,
                    "pin needs ?version=<version label, name@hash or hash prefix>",
                );
            };
            match live.pin(&version, engine) {
                Ok(detail) => done(live, "pinned", detail),
                Err(e) => error(409, e),
            }
        }
        "unpin" => match live.unpin() {
            Ok(detail) => {
                let (status, body, ctype) = done(live, "unpinned", detail);
                with_then(status, body, ctype, then(live))
            }
            Err(e) => error(409, e),
        },
        "unban" => {
            let Some(hash) = query(q, "hash").filter(|v| !v.is_empty()) else {
                return error(
                    400,
                    "unban needs ?hash=<content hash or its first 6+ characters>",
                );
            };
            match live.unban(&hash) {
                Ok(detail) => {
                    let (status, body, ctype) = done(live, "unbanned", detail);
                    with_then(status, body, ctype, then(live))
                }
                Err(e) => error(409, e),
            }
        }
        other => error(
            404,
            format!("no action `{other}`: deploy, rollback, pin, unpin or unban"),
        ),
    }
}

/// Add what became of the file re-evaluated after the change (`then`) to an answer.
fn with_then(
    status: u16,
    body: String,
    ctype: &'static str,
    then: Option<serde_json::Value>,
) -> (u16, String, &'static str) {
    match (serde_json::from_str::<serde_json::Value>(&body), then) {
        (Ok(mut v), Some(t)) => {
            v["then"] = t;
            (status, v.to_string() + "\n", ctype)
        }
        _ => (status, body, ctype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_queries() {
        assert_eq!(decode("raw-logs%40abc"), "raw-logs@abc");
        assert_eq!(decode("a+b%2"), "a b%2");
        assert_eq!(
            query("x=1&version=a%40b", "version").as_deref(),
            Some("a@b")
        );
        assert_eq!(query("x=1", "version"), None);
    }

    #[test]
    fn writes_need_the_token_or_loopback() {
        let engine = Arc::new(TransformEngine::new(None).unwrap());
        let open = Control {
            engine: engine.clone(),
            token: None,
        };
        assert!(authorize(&open, None, true).is_ok());
        assert_eq!(authorize(&open, None, false).unwrap_err().0, 403);
        let locked = Control {
            engine,
            token: Some("s3cret".into()),
        };
        assert_eq!(authorize(&locked, None, true).unwrap_err().0, 403);
        assert_eq!(
            authorize(&locked, Some("Bearer nope"), false)
                .unwrap_err()
                .0,
            403
        );
        assert!(authorize(&locked, Some("Bearer s3cret"), false).is_ok());
        assert!(!format!("{locked:?}").contains("s3cret"));
    }
}
