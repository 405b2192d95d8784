//! The bench binary for the tests: the same entry point as `vast-processor-bench`
//! (`vast_processor_bench::main`), built in this package so its tests can locate it.

fn main() -> std::process::ExitCode {
    vast_processor_bench::main()
}
