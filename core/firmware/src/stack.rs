//! Stack high-water mark by painting.
//!
//! [`high_water`] fills every free word below the current stack pointer with
//! [`PAINT`] (in `asm!`: Rust code may not write below its own stack
//! pointer), runs the closure through a non-inlined call, then scans up from
//! the bottom of the stack for the first word that changed. The distance from
//! the painted stack pointer to that word is the closure's stack use,
//! including the one small frame of the call shim.

use core::ptr::addr_of;

/// The paint pattern.
pub const PAINT: u32 = 0xC0FF_EE5A;

extern "C" {
    /// Lowest address of the stack region (linker script).
    static __stack_bottom: u32;
}

#[inline(never)]
fn call<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Run `f` and return its result and the bytes of stack it used.
#[inline(never)]
pub fn high_water<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let bottom = addr_of!(__stack_bottom) as usize;
    let sp: usize;
    #[cfg(target_arch = "arm")]
    // SAFETY: writes only the words in [bottom, sp), which lie below the
    // stack pointer and so belong to no live frame; no interrupts run.
    unsafe {
        core::arch::asm!(
            "mov {sp}, sp",
            "1:",
            "cmp {p}, {sp}",
            "bhs 2f",
            "str {pat}, [{p}], #4",
            "b 1b",
            "2:",
            sp = out(reg) sp,
            p = inout(reg) bottom => _,
            pat = in(reg) PAINT,
            options(nostack),
        );
    }
    #[cfg(target_arch = "riscv32")]
    // SAFETY: as above.
    unsafe {
        core::arch::asm!(
            "mv {sp}, sp",
            "1:",
            "bgeu {p}, {sp}, 2f",
            "sw {pat}, 0({p})",
            "addi {p}, {p}, 4",
            "j 1b",
            "2:",
            sp = out(reg) sp,
            p = inout(reg) bottom => _,
            pat = in(reg) PAINT,
            options(nostack),
        );
    }
    let r = call(f);
    let mut lowest = bottom;
    // SAFETY: [bottom, sp) is the stack region, readable RAM; volatile reads
    // because the words were written behind the compiler's back.
    while lowest < sp && unsafe { (lowest as *const u32).read_volatile() } == PAINT {
        lowest += 4;
    }
    (r, sp - lowest)
}
