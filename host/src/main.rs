//! The `vast-processor` command line.

fn main() -> std::process::ExitCode {
    vast_processor::cli::main()
}
