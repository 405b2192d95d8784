//! Per-instance resource limits.

use serde::Deserialize;
use std::time::Duration;

/// Limits applied to every instance of a pipeline's transform.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per instance, in MiB.
    pub memory_mib: u64,
    /// CPU deadline for one `process` (or `init`) call, in milliseconds.
    pub deadline_ms: u64,
    /// Most rows one message may produce; more is a failure of that message.
    pub max_rows_per_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            deadline_ms: 2_000,
            max_rows_per_message: 10_000,
        }
    }
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize).saturating_mul(1024 * 1024)
    }

    /// The CPU deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// A `ResourceLimiter` that caps linear memory and remembers the last refused growth, so a
/// trap that follows can be reported as "memory limit exceeded" rather than a bare abort.
pub struct MemoryLimiter {
    pub max_bytes: usize,
    pub refused: Option<usize>,
    pub high_water: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.high_water = self.high_water.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
