//! The memory limiter of a store: caps linear memory and tables.

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
