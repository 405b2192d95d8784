//! The `vast-processor` command line.

// The hot path allocates many short-lived strings per record (rows lifted out of wasm, Arrow
// scratch); mimalloc's thread-local free lists cut that cost well below glibc malloc's
// (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (not exported by libmimalloc-sys).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Return freed memory to the OS after 5 ms instead of mimalloc's 10: each flush frees
    // tens of MiB, and holding them 10 ms raised the peak RSS of `run`; 0 (at once) made
    // every batch and every Parquet page fault its memory back in (twice the page faults
    // of 5 ms, at the same peak RSS; BENCHMARKS.md). `MIMALLOC_PURGE_DELAY` in the
    // environment wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: options may be set at any time; this one only changes when pages are purged.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 5) };
    }
    // No transparent huge pages for this process: mimalloc asks for them on its arenas, and
    // as it returns freed memory to the OS and takes it back (every batch and Parquet page),
    // each re-fault zeroed a whole 2 MiB page instead of 4 KiB. Without them a `bench`
    // full-path run spent 0.28-0.33 s in the kernel instead of 0.57-0.81 s, at 136 instead
    // of 157 MiB peak RSS (BENCHMARKS.md). `MIMALLOC_ALLOW_THP=1` keeps them.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none_or(|v| v != "1") {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only affects later page faults.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    vast_processor::cli::main()
}
