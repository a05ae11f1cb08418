//! Scoped overrides of policy state, as tinygrad's `Context`: `Override::set` puts a value into a
//! slot and the guard puts the previous value back when it drops — at the end of the scope, or while
//! a panic unwinds through it — so overrides nest and never leak into the code that follows.
//!
//! A slot is a thread-local cell (a choice for the calling thread: `no_grad`, `cuda::with_gpu_math`,
//! BatchNorm's `with_simd`) or a process-wide atomic (`ops::conv2d::with_bf16_convs`).

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::LocalKey;

/// Where a policy value lives.
pub trait Slot: 'static {
    type Value: Copy;
    /// Stores `value` and returns the value it replaces.
    fn replace(&'static self, value: Self::Value) -> Self::Value;
}

impl<T: Copy + 'static> Slot for LocalKey<Cell<T>> {
    type Value = T;
    fn replace(&'static self, value: T) -> T {
        self.with(|cell| cell.replace(value))
    }
}

impl Slot for AtomicBool {
    type Value = bool;
    fn replace(&'static self, value: bool) -> bool {
        self.swap(value, Ordering::Relaxed)
    }
}

/// The override of one slot; dropping it restores the value the slot held before. Not `Send`: a
/// thread-local slot must be restored on the thread that set it.
#[must_use = "the override ends when the guard is dropped"]
pub struct Override<S: Slot> {
    slot: &'static S,
    previous: S::Value,
    _same_thread: PhantomData<*const ()>,
}

impl<S: Slot> Override<S> {
    /// Sets `slot` to `value` until the returned guard drops.
    pub fn set(slot: &'static S, value: S::Value) -> Self {
        Override { previous: slot.replace(value), slot, _same_thread: PhantomData }
    }
}

impl<S: Slot> Drop for Override<S> {
    fn drop(&mut self) {
        self.slot.replace(self.previous);
    }
}

/// Runs `f` with `slot` set to `value`; the previous value comes back afterwards, also when `f`
/// unwinds.
pub fn with<S: Slot, R>(slot: &'static S, value: S::Value, f: impl FnOnce() -> R) -> R {
    let _guard = Override::set(slot, value);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    thread_local! {
        static LEVEL: Cell<u32> = const { Cell::new(0) };
    }
    static FLAG: AtomicBool = AtomicBool::new(false);

    fn level() -> u32 {
        LEVEL.with(Cell::get)
    }

    #[test]
    fn a_guard_restores_on_drop_and_nests() {
        {
            let _outer = Override::set(&LEVEL, 1);
            assert_eq!(level(), 1);
            {
                let _inner = Override::set(&LEVEL, 2);
                assert_eq!(level(), 2);
            }
            assert_eq!(level(), 1);
            assert_eq!(with(&LEVEL, 3, level), 3);
            assert_eq!(level(), 1);
        }
        assert_eq!(level(), 0);
    }

    #[test]
    fn a_guard_restores_when_its_scope_panics() {
        let _outer = Override::set(&LEVEL, 5);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            with(&LEVEL, 6, || {
                let _inner = Override::set(&LEVEL, 7);
                assert_eq!(level(), 7);
                panic!("unwinding through two overrides");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(level(), 5);
    }

    #[test]
    fn a_process_wide_slot_restores_too() {
        // The only test that touches FLAG, so no other thread races it.
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let _on = Override::set(&FLAG, true);
            assert!(FLAG.load(Ordering::Relaxed));
            {
                let _off = Override::set(&FLAG, false);
                assert!(!FLAG.load(Ordering::Relaxed));
            }
            assert!(FLAG.load(Ordering::Relaxed));
            panic!("unwinding through the override");
        }));
        assert!(caught.is_err());
        assert!(!FLAG.load(Ordering::Relaxed));
    }

    #[test]
    fn thread_local_overrides_stay_on_their_thread() {
        let _guard = Override::set(&LEVEL, 9);
        assert_eq!(std::thread::spawn(level).join().unwrap(), 0);
        assert_eq!(level(), 9);
    }
}
