//! The wasmtime engine of the process: its `Config` (component model, epoch interruption),
//! the `Linker` with WASI (no capabilities) and both contract worlds, the epoch ticker that
//! enforces deadlines ([`arm_deadline`]), the denied timers and the compile cache. It loads a
//! component into a [`TransformModule`]; it knows nothing of messages or rows.

use super::host::StoreState;
use super::{ErrorKind, TransformError, abi_v1, abi_v2, cache};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store};

/// How often the epoch ticker advances; deadlines are accurate to about this.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Arm `store`'s deadline: the next call traps after `deadline` (to about [`EPOCH_TICK`]).
pub(super) fn arm_deadline<T>(store: &mut Store<T>, deadline: Duration) {
    store.set_epoch_deadline(deadline_ticks(deadline) + 1);
}

/// `deadline` in epoch ticks.
pub(super) fn deadline_ticks(deadline: Duration) -> u64 {
    (deadline.as_millis() / EPOCH_TICK.as_millis()) as u64
}

fn engine_error(e: wasmtime::Error) -> TransformError {
    TransformError::new("", ErrorKind::Engine(format!("{e:#}")))
}

/// Owns the wasmtime engine shared by every transform of the process.
pub struct TransformEngine {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    cache_dir: Option<PathBuf>,
}

impl TransformEngine {
    /// Create the engine; `cache_dir` enables the compiled-component cache.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, TransformError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `perf` can name guest functions when asked to (see BENCHMARKS.md, "Profiling").
        if std::env::var_os("VAST_PROCESSOR_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        deny_timers(&mut linker).map_err(engine_error)?;
        abi_v2::Transform::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        abi_v1::Transform::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // Ends with the engine: the weak handle stops upgrading once it is dropped.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| {
                TransformError::new(
                    "",
                    ErrorKind::Engine(format!("cannot start the epoch thread: {e}")),
                )
            })?;
        Ok(TransformEngine {
            engine,
            linker: Arc::new(linker),
            cache_dir,
        })
    }

    /// Compile (or load from the cache) and link a component. `name` labels the transform
    /// in versions, logs and errors.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<TransformModule>, TransformError> {
        let hash = content_hash(bytes);
        let cached = self
            .cache_dir
            .as_deref()
            .and_then(|d| cache::load(d, &self.engine, &hash));
        let component = match cached {
            Some(c) => c,
            None => {
                if !bytes.starts_with(b"\0asm") {
                    return Err(TransformError::new(
                        name,
                        ErrorKind::Compile(
                            "the file does not start with the WebAssembly magic bytes".into(),
                        ),
                    ));
                }
                let c = Component::new(&self.engine, bytes)
                    .map_err(|e| TransformError::new(name, ErrorKind::Compile(format!("{e:#}"))))?;
                if let Some(d) = self.cache_dir.as_deref() {
                    cache::store(d, &self.engine, &hash, &c);
                }
                c
            }
        };
        let wrong_world =
            |e: wasmtime::Error| TransformError::new(name, ErrorKind::WrongWorld(format!("{e:#}")));
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        // The current contract first; a component built against 0.1.0 still runs.
        let pre = match abi_v2::TransformPre::new(pre.clone()) {
            Ok(p) => Pre::Columns(p),
            Err(current) => match abi_v1::TransformPre::new(pre) {
                Ok(p) => Pre::V1(p),
                Err(_) => return Err(wrong_world(current)),
            },
        };
        Ok(Arc::new(TransformModule {
            name: name.to_string(),
            version: format!("{name}@{}", &hash[..12]),
            content_hash: hash,
            pre,
            engine: self.engine.clone(),
        }))
    }
}

/// Sleeping (a WASI timer subscription) would block in a host call, where the epoch deadline
/// cannot interrupt it: a guest could hold a worker for as long as it likes. Transforms have
/// no reason to wait, so timer subscriptions trap with a clear message instead.
fn deny_timers(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    linker.allow_shadowing(true);
    let mut clocks = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clocks.func_wrap(
        "subscribe-duration",
        |_: wasmtime::StoreContextMut<'_, StoreState>,
         (_,): (u64,)|
         -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::Error::msg(
                "transforms cannot sleep or wait on timers (wasi:clocks subscribe-duration)",
            ))
        },
    )?;
    clocks.func_wrap(
        "subscribe-instant",
        |_: wasmtime::StoreContextMut<'_, StoreState>,
         (_,): (u64,)|
         -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(wasmtime::Error::msg(
                "transforms cannot sleep or wait on timers (wasi:clocks subscribe-instant)",
            ))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// SHA-256 of a component's bytes, hex: the identity of a version.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A compiled, linked transform, shared by every worker that runs it.
pub struct TransformModule {
    name: String,
    version: String,
    content_hash: String,
    pub(super) pre: Pre,
    pub(super) engine: Engine,
}

/// Which contract the component implements.
pub(super) enum Pre {
    /// `vast:transform@0.2.0`.
    Columns(abi_v2::TransformPre<StoreState>),
    /// `vast:transform@0.1.0`.
    V1(abi_v1::TransformPre<StoreState>),
}

impl TransformModule {
    /// The transform's name (bundled name or file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name@<first 12 hex of the content hash>`: names the exact code that produced a row.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the component bytes, hex.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }
}
