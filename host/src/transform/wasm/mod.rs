//! The sandboxed transform runtime, narrowed the way Spin's core is:
//! - [`engine`]: the wasmtime `Engine` and `Linker` (one per process), the epoch ticker that
//!   enforces deadlines, the denied timers, the compile cache; it loads a component into a
//!   [`TransformModule`] and knows no domain types;
//! - [`host`]: the state of one store and the host imports a guest may call (`log`,
//!   `lookup`, `counter`), rate-limited;
//! - [`instance`]: one [`TransformInstance`] per worker and pipeline: instantiate, call,
//!   classify traps, isolate a poison message (the batch, then one at a time);
//! - [`abi_v2`] and [`abi_v1`]: the edge to each contract world (`vast:transform@0.2.0`,
//!   column-wise; `@0.1.0`, frozen in wit/compat), converting to and from `crate::model`.
//!
//! Guests get the WASI interfaces linked but no capability behind them: no preopened
//! directories, no environment, no sockets; stdout and stderr go to the log.

mod abi_v1;
mod abi_v2;
mod cache;
mod capture;
pub mod engine;
pub mod host;
pub mod instance;
mod limiter;

pub use cache::default_dir as default_cache_dir;
pub use engine::{TransformEngine, TransformModule};
pub use host::{InstanceSettings, Level, lineage};
pub use instance::{InstanceStats, MessageResult, Processed, RowSpan, TransformInstance};

/// Why a transform could not be loaded or could not process a message: which version
/// (the transform's name while it is being loaded) and what went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TransformError {
    /// `name@hash` of the transform; its name alone for load errors; empty for the engine.
    pub version: String,
    pub kind: ErrorKind,
}

/// What went wrong, in a [`TransformError`].
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// The wasm engine could not be set up.
    Engine(String),
    /// Not a valid WebAssembly component.
    Compile(String),
    /// A component of another world (wrong WIT world or extra imports).
    WrongWorld(String),
    /// `init` returned an error for the pipeline's config.
    InitRejected(String),
    /// A call ran past its CPU deadline.
    Deadline {
        deadline_ms: u64,
    },
    /// The guest tried to grow its memory past the limit.
    Memory {
        limit_mib: u64,
        asked_mib: u64,
    },
    StackOverflow,
    /// Any other trap (a panic, `unreachable`, a denied host call).
    Trap(String),
    /// The output breaks the contract (shape, counts, a column the host cannot store).
    Contract(String),
}

impl TransformError {
    pub fn new(version: impl Into<String>, kind: ErrorKind) -> Self {
        TransformError {
            version: version.into(),
            kind,
        }
    }

    fn describe(&self) -> String {
        let v = &self.version;
        match &self.kind {
            ErrorKind::Engine(r) => format!("cannot set up the wasm engine: {r}"),
            ErrorKind::Compile(r) => format!("`{v}` is not a valid WebAssembly component: {r}"),
            ErrorKind::WrongWorld(r) => format!(
                "`{v}` is not a vast:transform component (wrong WIT world or extra imports): {r}"
            ),
            ErrorKind::InitRejected(r) => {
                format!("transform {v} rejected its config in `init`: {r}")
            }
            ErrorKind::Deadline { deadline_ms } => format!(
                "transform {v} exceeded its CPU deadline of {deadline_ms} ms and was stopped"
            ),
            ErrorKind::Memory {
                limit_mib,
                asked_mib,
            } => format!(
                "transform {v} exceeded its memory limit of {limit_mib} MiB (it tried to grow to {asked_mib} MiB)"
            ),
            ErrorKind::StackOverflow => format!("transform {v} overflowed its stack"),
            ErrorKind::Trap(r) => format!("transform {v} trapped: {r}"),
            ErrorKind::Contract(r) => format!("transform {v} broke the contract: {r}"),
        }
    }

    /// True for failures of the guest's execution (as opposed to loading errors).
    pub fn is_trap(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Deadline { .. }
                | ErrorKind::Memory { .. }
                | ErrorKind::StackOverflow
                | ErrorKind::Trap(_)
        )
    }
}
