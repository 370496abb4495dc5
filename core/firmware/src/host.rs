//! Semihosting: console output and exit with a status code, on Arm
//! (`bkpt 0xab`) and RISC-V (the `slli; ebreak; srai` sequence). QEMU must run
//! with `-semihosting-config enable=on,target=native`.

use core::sync::atomic::{AtomicUsize, Ordering};

const SYS_OPEN: usize = 0x01;
const SYS_WRITE: usize = 0x05;
const SYS_EXIT_EXTENDED: usize = 0x20;
const ADP_STOPPED_APPLICATION_EXIT: usize = 0x2_0026;
/// `SYS_OPEN` mode 4 is "w"; with the name ":tt" it is the console.
const MODE_WRITE: usize = 4;

/// One semihosting call: operation `op` with parameter `arg` (usually the
/// address of a parameter block).
///
/// # Safety
/// `arg` must be what operation `op` expects (for a parameter block: a valid
/// pointer to initialised words that live across the call).
#[inline(always)]
unsafe fn call(op: usize, arg: usize) -> usize {
    #[cfg(target_arch = "arm")]
    {
        let ret: usize;
        // SAFETY: the debugger (QEMU) services the breakpoint; the caller
        // guarantees the parameter block. The asm may read memory.
        unsafe {
            core::arch::asm!("bkpt #0xab", inout("r0") op => ret, in("r1") arg, options(nostack))
        };
        ret
    }
    #[cfg(target_arch = "riscv32")]
    {
        extern "C" {
            fn tessera_semihost(op: usize, arg: usize) -> usize;
        }
        // SAFETY: tessera_semihost (rt.rs) is the aligned trap sequence; the
        // caller guarantees the parameter block.
        unsafe { tessera_semihost(op, arg) }
    }
}

/// The console handle, opened on first use (`usize::MAX` = not yet).
static CONSOLE: AtomicUsize = AtomicUsize::new(usize::MAX);

fn console() -> usize {
    let h = CONSOLE.load(Ordering::Relaxed);
    if h != usize::MAX {
        return h;
    }
    let name = b":tt\0";
    let block = [name.as_ptr() as usize, MODE_WRITE, 3];
    // SAFETY: SYS_OPEN reads a 3-word block: name pointer, mode, name length.
    let h = unsafe { call(SYS_OPEN, block.as_ptr() as usize) };
    CONSOLE.store(h, Ordering::Relaxed);
    h
}

/// Write raw bytes to the host console.
pub fn write(bytes: &[u8]) {
    let block = [console(), bytes.as_ptr() as usize, bytes.len()];
    // SAFETY: SYS_WRITE reads a 3-word block: handle, buffer pointer, length;
    // the buffer outlives the call.
    unsafe { call(SYS_WRITE, block.as_ptr() as usize) };
}

/// Write a string to the host console.
pub fn print(s: &str) {
    write(s.as_bytes());
}

/// Write an unsigned decimal number without `core::fmt`, in 32-bit
/// arithmetic (no 64-bit division routine is linked: the panic and fault
/// paths of the measured image use this one).
pub fn print_u32(mut x: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    write(&buf[i..]);
}

/// Write an unsigned decimal number without `core::fmt`.
pub fn print_u64(mut x: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (x % 10) as u8;
        x /= 10;
        if x == 0 {
            break;
        }
    }
    write(&buf[i..]);
}

/// Stop QEMU with exit status `code` (`SYS_EXIT_EXTENDED`, which QEMU passes
/// through as the process status).
pub fn exit(code: i32) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, code as usize];
    // SAFETY: SYS_EXIT_EXTENDED reads a 2-word block: reason, sub-code.
    unsafe { call(SYS_EXIT_EXTENDED, block.as_ptr() as usize) };
    loop {
        core::hint::spin_loop();
    }
}

/// `core::fmt` sink for the host console (conformance output only; the
/// measured images do not use it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Out;

impl core::fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        print(s);
        Ok(())
    }
}
