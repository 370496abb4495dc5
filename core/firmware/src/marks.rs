//! Marker functions for exact instruction counts.
//!
//! `tools/insn_count.c`, a QEMU TCG plugin, counts the instructions retired
//! from the first instruction of [`tessera_count_begin`] to the first
//! instruction of [`tessera_count_end`]: that is the measured call plus the
//! few instructions of the begin marker and the call sequence (reported as
//! the empty-call overhead by `measure`).

use core::sync::atomic::AtomicU32;

/// The last marker passed (1 = begin, 2 = end); the stores keep the two
/// markers distinct so that they are never merged.
pub static MARK: AtomicU32 = AtomicU32::new(0);

/// Start of a counted region.
#[inline(never)]
#[no_mangle]
pub extern "C" fn tessera_count_begin() {
    // SAFETY: a volatile store to a static atomic's own storage (so that it
    // cannot be optimised out), then an empty asm block that acts as a
    // compiler barrier for memory: no work moves across the marker.
    unsafe {
        MARK.as_ptr().write_volatile(1);
        core::arch::asm!("", options(nostack, preserves_flags));
    }
}

/// End of a counted region.
#[inline(never)]
#[no_mangle]
pub extern "C" fn tessera_count_end() {
    // SAFETY: as in tessera_count_begin.
    unsafe {
        core::arch::asm!("", options(nostack, preserves_flags));
        MARK.as_ptr().write_volatile(2);
    }
}

/// Run `f` between the two markers.
#[inline(always)]
pub fn counted<R>(f: impl FnOnce() -> R) -> R {
    tessera_count_begin();
    let r = f();
    tessera_count_end();
    r
}
