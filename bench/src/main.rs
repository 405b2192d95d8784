//! `vast-processor-bench`: throughput of the bundled transforms, from the sandbox alone to
//! the full path through a broker (see BENCHMARKS.md). Its own binary, so the product carries
//! none of it; it links the same library and sets up the process the same way.

// The same allocator and process settings as the product binary, so the figures are the
// product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vast_processor::cli::tune_process();
    vast_processor_bench::main()
}
