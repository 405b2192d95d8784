//! The processor binary for the end-to-end tests: the same entry point as `vast-processor`
//! (`vast_processor::cli::main`), built in this package so its tests can locate it.

fn main() -> std::process::ExitCode {
    vast_processor::cli::main()
}
