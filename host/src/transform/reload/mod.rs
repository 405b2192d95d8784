//! Hot reload. This module is the swap cell: [`LiveTransform`], the running version of each
//! pipeline's transform, swapped atomically and picked up by the workers at batch
//! boundaries, with its probation. [`policy`] decides (the shadow check a candidate must
//! pass, when a new version is rolled back); [`watch`] drives it from file changes.

mod policy;
mod watch;

pub use policy::{shadow_check, should_roll_back};
pub use watch::{
    Debouncer, Watched, apply_config_change, enrichment_files, reload_file, swap_pipeline, watch,
};

use crate::config::ReloadConfig;
use crate::model::Message;
use crate::transform::wasm::{InstanceSettings, MessageResult, TransformModule};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// One version of a pipeline's transform.
pub struct Version {
    pub module: Arc<TransformModule>,
    pub settings: InstanceSettings,
    pub generation: u64,
}

/// Outcome of the last reload attempt, for `/transforms`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LastReload {
    pub result: String,
    pub detail: String,
    pub at_unix_ms: u128,
}

#[derive(Default)]
struct Probation {
    batches_left: u64,
    messages: u64,
    failures: u64,
}

/// The most bytes of recent messages a pipeline keeps for shadow checks (whatever
/// `reload.shadow_messages` says): 200 records of 500 KB would be 100 MB outside every
/// bound. A message bigger than this is not sampled.
pub const SHADOW_BYTES: usize = 8 << 20;

/// The live transform of one pipeline, shared by every worker.
pub struct LiveTransform {
    pub pipeline: String,
    current: RwLock<Arc<Version>>,
    previous: Mutex<Option<Arc<Version>>>,
    generation: AtomicU64,
    probation: Mutex<Probation>,
    /// Content hash of a version that was rolled back: kept out until the file changes.
    banned: Mutex<Option<String>>,
    /// Content hash of the last file content evaluated: the same bytes are not judged twice.
    last_seen: Mutex<Option<String>>,
    /// The shadow sample: the latest messages, at most `shadow_messages` and
    /// [`SHADOW_BYTES`] (their footprint, the second field).
    recent: Mutex<(VecDeque<Message>, usize)>,
    last: Mutex<LastReload>,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub rolled_back: AtomicU64,
    config: ReloadConfig,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// A candidate that was refused, with why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

impl LiveTransform {
    /// The live transform starting at `module` with `settings`.
    pub fn new(
        pipeline: &str,
        module: Arc<TransformModule>,
        settings: InstanceSettings,
        config: ReloadConfig,
    ) -> Self {
        LiveTransform {
            pipeline: pipeline.into(),
            current: RwLock::new(Arc::new(Version {
                module,
                settings,
                generation: 0,
            })),
            previous: Mutex::new(None),
            generation: AtomicU64::new(0),
            probation: Mutex::new(Probation::default()),
            banned: Mutex::new(None),
            last_seen: Mutex::new(None),
            recent: Mutex::new((VecDeque::new(), 0)),
            last: Mutex::new(LastReload {
                result: "initial".into(),
                detail: String::new(),
                at_unix_ms: now_ms(),
            }),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            rolled_back: AtomicU64::new(0),
            config,
        }
    }

    /// The generation of the running version (cheap: workers compare it before each batch).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The running version.
    pub fn current(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version before the last swap.
    pub fn previous(&self) -> Option<Arc<Version>> {
        self.previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last reload attempt.
    pub fn last(&self) -> LastReload {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_last(&self, result: &str, detail: String) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = LastReload {
            result: result.into(),
            detail,
            at_unix_ms: now_ms(),
        };
    }

    /// Keep the tail of a processed batch for shadow checks.
    pub fn remember(&self, batch: &[Message]) {
        let n = self.config.shadow_messages;
        if n == 0 {
            return;
        }
        let mut guard = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let (r, bytes) = &mut *guard;
        for m in &batch[batch.len().saturating_sub(n)..] {
            let size = m.footprint();
            if size > SHADOW_BYTES {
                continue;
            }
            while r.len() == n || *bytes + size > SHADOW_BYTES {
                let Some(old) = r.pop_front() else { break };
                *bytes -= old.footprint();
            }
            *bytes += size;
            r.push_back(m.clone());
        }
    }

    /// Messages and bytes in the shadow sample.
    pub fn sample_size(&self) -> (usize, usize) {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        (r.0.len(), r.1)
    }

    /// Record a batch's results under `generation`; after a swap, roll back if the new
    /// version's error rate over the probation exceeds the threshold.
    pub fn observe<R>(&self, generation: u64, results: &[MessageResult<R>]) {
        if generation != self.generation() {
            return;
        }
        let failures = results
            .iter()
            .filter(|r| matches!(r, MessageResult::Fail(_) | MessageResult::Error(_)))
            .count() as u64;
        let verdict = {
            let mut p = self.probation.lock().unwrap_or_else(|e| e.into_inner());
            if p.batches_left == 0 {
                return;
            }
            p.batches_left -= 1;
            p.messages += results.len() as u64;
            p.failures += failures;
            should_roll_back(
                p.messages,
                p.failures,
                p.batches_left,
                self.config.rollback_error_rate,
            )
        };
        if verdict {
            self.roll_back();
        }
    }

    fn roll_back(&self) {
        let Some(prev) = self
            .previous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let bad = self.current();
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(bad.module.content_hash().to_string());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Version {
            module: prev.module.clone(),
            settings: prev.settings.clone(),
            generation,
        });
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation::default();
        self.rolled_back.fetch_add(1, Ordering::Relaxed);
        tracing::error!(pipeline = %self.pipeline, bad = bad.module.version(), restored = prev.module.version(), "new transform version failed too often after the swap: rolled back");
        self.set_last(
            "rolled_back",
            format!(
                "{} failed too often after the swap; {} restored",
                bad.module.version(),
                prev.module.version()
            ),
        );
    }

    /// Check a candidate and, if it passes, make it the running version (workers pick it up
    /// at their next batch boundary).
    pub fn try_swap(
        &self,
        module: Arc<TransformModule>,
        settings: InstanceSettings,
    ) -> Result<(), Rejected> {
        let cur = self.current();
        if cur.module.content_hash() == module.content_hash()
            && cur.settings.config == settings.config
            && cur.settings.limits == settings.limits
            && cur.settings.enrichment == settings.enrichment
        {
            return Ok(());
        }
        let banned = self
            .banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if banned.as_deref() == Some(module.content_hash())
            && cur.settings.config == settings.config
        {
            return Err(self.reject(format!(
                "{} was rolled back; it stays out until the file changes",
                module.version()
            )));
        }
        let sample: Vec<Message> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .iter()
            .cloned()
            .collect();
        if let Err(why) = shadow_check(
            &cur,
            &module,
            &settings,
            &sample,
            self.config.shadow_max_new_failures,
        ) {
            return Err(self.reject(why));
        }
        *self.banned.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let generation = self.generation() + 1;
        let version = module.version().to_string();
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(cur.clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Version {
            module,
            settings,
            generation,
        });
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Probation {
            batches_left: self.config.probation_batches,
            ..Default::default()
        };
        self.generation.store(generation, Ordering::Release);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pipeline = %self.pipeline, from = cur.module.version(), to = %version, shadow = sample.len(), "transform swapped");
        self.set_last(
            "accepted",
            format!(
                "{} -> {version} (shadow-checked on {} messages)",
                cur.module.version(),
                sample.len()
            ),
        );
        Ok(())
    }

    /// Count and report a refused candidate.
    pub fn reject(&self, why: String) -> Rejected {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(pipeline = %self.pipeline, reason = %why, "transform candidate rejected; the running version keeps going");
        self.set_last("rejected", why.clone());
        Rejected(why)
    }
}
