//! Global allocator for the fuzz test binaries: records the largest single allocation (so a run can
//! flag inputs that make a parser allocate far beyond their size) and refuses absurd ones outright
//! to keep the machine alive. Each binary installs it with
//! `#[global_allocator] static GLOBAL: common::alloc_guard::TrackingAlloc = common::alloc_guard::TrackingAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TrackingAlloc;

/// Largest single allocation since the last `reset`.
pub static LARGEST_ALLOC: AtomicUsize = AtomicUsize::new(0);
/// Refused outright (the allocation fails and the process aborts).
pub const HARD_LIMIT: usize = 3 << 30;
/// Flagged as a finding: fuzz inputs are a few KB, no legitimate allocation comes near this.
pub const SOFT_LIMIT: usize = 256 << 20;

fn note(size: usize) -> bool {
    LARGEST_ALLOC.fetch_max(size, Ordering::Relaxed);
    size <= HARD_LIMIT
}

// SAFETY: every method forwards to the system allocator with the caller's layout and pointer
// unchanged, or returns null (a refusal GlobalAlloc allows), so System's guarantees carry over.
unsafe impl GlobalAlloc for TrackingAlloc {
    /// # Safety
    /// `l` has a non-zero size (GlobalAlloc::alloc's contract).
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !note(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout, which GlobalAlloc::alloc's contract makes valid.
        unsafe { System.alloc(l) }
    }
    /// # Safety
    /// As for `alloc`.
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !note(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in alloc.
        unsafe { System.alloc_zeroed(l) }
    }
    /// # Safety
    /// `p` was allocated by this allocator with layout `l` (GlobalAlloc::dealloc's contract).
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from this allocator, i.e. from System, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    /// # Safety
    /// `p` was allocated by this allocator with layout `l`, and `new` is a valid size for its alignment.
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !note(new) {
            return std::ptr::null_mut();
        }
        // SAFETY: `p` came from System with layout `l`; `new` is the caller's valid new size.
        unsafe { System.realloc(p, l, new) }
    }
}
