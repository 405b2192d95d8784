//! The guest's global allocator: talc, plus a bump arena for the duration of a batch.
//!
//! A batch allocates a few dozen short strings per message (parsed fields, output columns,
//! tags) that all die together once the host has read the outcomes; with a general allocator
//! each one costs an allocation and a free (the free comes from `cabi_post_process` after the
//! host lifted the results), about a third of the guest's time for the bundled transforms.
//! While [`scoped`] runs, allocations are bumped out of a few large chunks and frees of them
//! are no-ops; the next [`scoped`] call (by then the host has lifted and post-returned the
//! previous results) rewinds the arena. Everything else, and everything outside a scope,
//! goes to talc.
//!
//! The price: nothing allocated inside a scope may be kept past the next batch (no caches in
//! statics filled during `process`). The bundled transforms keep no such state.
//!
//! A message's own temporaries (a gunzipped payload and the request decoded from it) can go
//! to [`scratch`], one chunk rewound per message, so they do not pile up in the arena until
//! the batch ends.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// Chunks are never more than this many; past it, allocations fall back to talc.
const MAX_CHUNKS: usize = 32;
const FIRST_CHUNK: usize = 256 * 1024;
/// Chunks double up to this size and stay there: doubling without a cap reserved up to twice
/// what a large batch needed, which pushed a 10,000-message raw-host-logs batch past the
/// default 64 MiB memory limit.
const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Larger allocations (decompression state and buffers, big vectors) go to talc even inside
/// a scope: they are few, often per-message temporaries, and would bloat the arena.
const MAX_ARENA_ALLOC: usize = 2048;
/// The scratch chunk: one message's temporaries (a gunzipped payload, the request decoded
/// from it) fit many times over; larger ones go to talc.
const SCRATCH_CHUNK: usize = 256 * 1024;

struct Arena {
    active: bool,
    /// (start, length) of every chunk held, in the order they are filled.
    chunks: [(usize, usize); MAX_CHUNKS],
    n: usize,
    /// The chunk being filled.
    cur: usize,
    /// Offset of the next free byte in the current chunk.
    top: usize,
    /// Start of the most recent allocation (it can grow in place).
    last: usize,
    /// Inside [`scratch`]: allocations come from the scratch chunk.
    in_scratch: bool,
    /// The scratch chunk (start, length), made on first use and kept.
    scratch: (usize, usize),
    /// Offset of the next free byte in the scratch chunk.
    scratch_top: usize,
    /// Start of the most recent scratch allocation (it can grow in place).
    scratch_last: usize,
}

/// The allocator installed by the SDK's `talc` feature.
pub struct GuestAllocator {
    talc: talc::wasm::WasmDynamicTalc,
    arena: UnsafeCell<Arena>,
}

// SAFETY: this allocator is only compiled for wasm without the atomics feature, where there
// is exactly one thread.
unsafe impl Sync for GuestAllocator {}

impl GuestAllocator {
    pub const fn new() -> Self {
        GuestAllocator {
            talc: talc::wasm::new_wasm_dynamic_allocator(),
            arena: UnsafeCell::new(Arena {
                active: false,
                chunks: [(0, 0); MAX_CHUNKS],
                n: 0,
                cur: 0,
                top: 0,
                last: 0,
                in_scratch: false,
                scratch: (0, 0),
                scratch_top: 0,
                scratch_last: 0,
            }),
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn arena(&self) -> &mut Arena {
        // SAFETY: single-threaded (see the Sync impl), and no caller holds the reference
        // across another call into the allocator.
        unsafe { &mut *self.arena.get() }
    }

    fn in_scratch(&self, ptr: *mut u8) -> bool {
        let (start, len) = self.arena().scratch;
        let p = ptr as usize;
        p >= start && p < start + len
    }

    /// Bump `layout` out of the scratch chunk, or null when it does not fit.
    fn bump_scratch(&self, layout: Layout) -> *mut u8 {
        let a = self.arena();
        if a.scratch.1 == 0 {
            // SAFETY: a non-zero size and a valid alignment.
            let chunk = unsafe {
                self.talc
                    .alloc(Layout::from_size_align_unchecked(SCRATCH_CHUNK, 16))
            };
            if chunk.is_null() {
                return chunk;
            }
            a.scratch = (chunk as usize, SCRATCH_CHUNK);
        }
        let (start, len) = a.scratch;
        let begin = (start + a.scratch_top + layout.align() - 1) & !(layout.align() - 1);
        if begin + layout.size() > start + len {
            return core::ptr::null_mut();
        }
        a.scratch_top = begin + layout.size() - start;
        a.scratch_last = begin;
        begin as *mut u8
    }

    fn in_arena(&self, ptr: *mut u8) -> bool {
        let a = self.arena();
        let p = ptr as usize;
        // Most frees (the host's post-return drops every output string) hit the chunk filled
        // last: look there before walking the list.
        let within = |&(start, len): &(usize, usize)| p >= start && p < start + len;
        (a.cur < a.n && within(&a.chunks[a.cur])) || a.chunks[..a.n].iter().any(within)
    }

    unsafe fn bump(&self, layout: Layout) -> *mut u8 {
        let a = self.arena();
        // Alignments are powers of two: a mask, not `next_multiple_of`, whose remainder is an
        // integer division (tens of cycles, on every allocation).
        let mask = layout.align() - 1;
        loop {
            if a.cur < a.n {
                let (start, len) = a.chunks[a.cur];
                let begin = (start + a.top + mask) & !mask;
                if begin + layout.size() <= start + len {
                    a.top = begin + layout.size() - start;
                    a.last = begin;
                    return begin as *mut u8;
                }
                // This chunk is full: move on to the next one kept from earlier batches.
                if a.cur + 1 < a.n {
                    a.cur += 1;
                    a.top = 0;
                    continue;
                }
            }
            if a.n == MAX_CHUNKS {
                return unsafe { self.talc.alloc(layout) };
            }
            let size = match a.n {
                0 => FIRST_CHUNK,
                n => (a.chunks[n - 1].1 * 2).min(MAX_CHUNK),
            };
            // SAFETY: a non-zero size and a valid alignment.
            let chunk = unsafe { self.talc.alloc(Layout::from_size_align_unchecked(size, 16)) };
            if chunk.is_null() {
                // Near the memory limit a whole chunk may not fit where this allocation does.
                return unsafe { self.talc.alloc(layout) };
            }
            a.chunks[a.n] = (chunk as usize, size);
            a.cur = a.n;
            a.n += 1;
            a.top = 0;
        }
    }

    /// Rewind the arena (called between batches). Every chunk is kept for the next batch:
    /// a wasm memory never shrinks, so handing chunks back to talc only let talc's own
    /// allocations (the output columns) split the freed space, and the next large batch took
    /// new memory for its chunks. With otel-metrics in the arena that grew its memory by
    /// 5 MB after each small batch between large ones (the equivalence test); kept, no
    /// bundled transform's high-water mark moved.
    fn reset(&self) {
        let a = self.arena();
        a.cur = 0;
        a.top = 0;
        a.last = 0;
    }
}

impl Default for GuestAllocator {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for GuestAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.arena().in_scratch {
            let p = self.bump_scratch(layout);
            if !p.is_null() {
                return p;
            }
        }
        if self.arena().active && layout.size() <= MAX_ARENA_ALLOC {
            unsafe { self.bump(layout) }
        } else {
            unsafe { self.talc.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The arena first: it holds most frees (the host's post-return of every output string).
        if !self.in_arena(ptr) && !self.in_scratch(ptr) {
            unsafe { self.talc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.in_scratch(ptr) {
            // The latest scratch allocation grows in place (a payload being inflated).
            let a = self.arena();
            let (start, len) = a.scratch;
            if a.in_scratch
                && ptr as usize == a.scratch_last
                && a.scratch_last + new_size <= start + len
            {
                a.scratch_top = a.scratch_last + new_size - start;
                return ptr;
            }
        } else if !self.in_arena(ptr) {
            if !self.arena().active {
                return unsafe { self.talc.realloc(ptr, layout, new_size) };
            }
        } else {
            // The latest allocation grows (or shrinks) in place when its chunk has room.
            let a = self.arena();
            let (start, len) = a.chunks[a.cur];
            if a.active
                && ptr as usize == a.last
                && new_size <= MAX_ARENA_ALLOC
                && a.last + new_size <= start + len
            {
                a.top = a.last + new_size - start;
                return ptr;
            }
        }
        // SAFETY: the new layout keeps the alignment and has a non-zero size.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: GuestAllocator = GuestAllocator::new();

/// Run `f` with arena allocation on (see the module docs), rewinding the previous batch's
/// arena first.
pub fn scoped<R>(f: impl FnOnce() -> R) -> R {
    ALLOCATOR.reset();
    ALLOCATOR.arena().active = true;
    let out = f();
    ALLOCATOR.arena().active = false;
    out
}

/// Run `f` with arena allocation off, for state that must outlive the batch although it is
/// created lazily during one (the gzip decompressor kept per thread).
pub fn outside<R>(f: impl FnOnce() -> R) -> R {
    let a = ALLOCATOR.arena();
    let was = (
        core::mem::replace(&mut a.active, false),
        core::mem::replace(&mut a.in_scratch, false),
    );
    let out = f();
    let a = ALLOCATOR.arena();
    (a.active, a.in_scratch) = was;
    out
}

/// Run `f` with its allocations taken from a scratch chunk that the next `scratch` call
/// rewinds: for one message's temporaries (a gunzipped payload, the request decoded from
/// it), which then cost neither talc's bookkeeping nor room in the batch's arena.
///
/// What `f` returns may be read until the next `scratch` call, but nothing allocated inside
/// may be kept beyond it: copy out (clone) whatever a row or an error keeps. Allocations
/// made after `f` returns, even from its results, come from the usual places; a scratch
/// vector grown after `f` returns moves out of the scratch chunk, as a `realloc` copies.
/// A call inside another runs in the outer one's scratch (it does not rewind).
pub fn scratch<R>(f: impl FnOnce() -> R) -> R {
    let a = ALLOCATOR.arena();
    if a.in_scratch {
        return f();
    }
    a.scratch_top = 0;
    a.scratch_last = 0;
    a.in_scratch = true;
    let out = f();
    ALLOCATOR.arena().in_scratch = false;
    out
}
