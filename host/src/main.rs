//! The `vast-processor` command line.

// The hot path allocates many short-lived strings per record (rows lifted out of wasm, Arrow
// scratch); mimalloc's thread-local free lists cut that cost well below glibc malloc's
// (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vast_processor::cli::tune_process();
    vast_processor::cli::main()
}
