//! A counting global allocator, for measuring how much heap a piece of code keeps.
//!
//! Counting is off by default so that it does not slow down throughput measurements;
//! [`measure`] switches it on for the duration of one closure. Inside that window it
//! counts bytes requested and bytes returned (as the `Layout` sizes the program asked for,
//! without the allocator's own per-block overhead), so the difference is exactly how much
//! the live heap grew during the window, whoever allocated what was freed.

use std::alloc::{GlobalAlloc, Layout};

/// The allocator the `steadfast` binary uses, so figures are the product's.
use mimalloc::MiMalloc as System;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// mimalloc, counting while [`measure`] runs.
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static FREED: AtomicU64 = AtomicU64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn on_alloc(size: usize) {
    let allocated = ALLOCATED.fetch_add(size as u64, Relaxed) + size as u64;
    ALLOCATIONS.fetch_add(1, Relaxed);
    PEAK.fetch_max(allocated.saturating_sub(FREED.load(Relaxed)), Relaxed);
}

fn on_free(size: usize) {
    FREED.fetch_add(size as u64, Relaxed);
}

// SAFETY: every call is forwarded unchanged to mimalloc; the counters are side effects.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && ENABLED.load(Relaxed) {
            on_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && ENABLED.load(Relaxed) {
            on_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        if ENABLED.load(Relaxed) {
            on_free(layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && ENABLED.load(Relaxed) {
            on_free(layout.size());
            on_alloc(new_size);
        }
        p
    }
}

/// What the heap did while a closure ran.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct HeapDelta {
    /// Live heap bytes after minus before (negative if the closure freed more).
    pub live_bytes: i64,
    /// The highest the live heap rose above its starting point during the window.
    pub peak_bytes: u64,
    /// Allocation calls (a `realloc` counts as one).
    pub allocations: u64,
}

/// Runs `f` with counting on and reports how the live heap changed. Not reentrant, and
/// meant for a single-threaded program: allocations on other threads during the window
/// would be counted too.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, HeapDelta) {
    ALLOCATED.store(0, Relaxed);
    FREED.store(0, Relaxed);
    ALLOCATIONS.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    ENABLED.store(true, Relaxed);
    let value = f();
    ENABLED.store(false, Relaxed);
    let allocated = ALLOCATED.load(Relaxed);
    let freed = FREED.load(Relaxed);
    let delta = HeapDelta {
        live_bytes: allocated as i64 - freed as i64,
        peak_bytes: PEAK.load(Relaxed),
        allocations: ALLOCATIONS.load(Relaxed),
    };
    (value, delta)
}
