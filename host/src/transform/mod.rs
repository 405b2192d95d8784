//! Transforms: what runs for each pipeline.
//! - [`wasm`]: the sandboxed runtime (engine, host imports, instances, contract worlds);
//! - [`loader`]: a pipeline's transform resolved (bundled or a `.wasm` file) and compiled,
//!   with its instance settings;
//! - [`reload`]: the live version of each pipeline (swapped at batch boundaries), the checks
//!   a candidate goes through, and the watcher that drives them;
//! - [`enrichment`]: the lookup tables a transform reads through the `lookup` import.

pub mod enrichment;
pub mod loader;
pub mod reload;
pub mod wasm;
