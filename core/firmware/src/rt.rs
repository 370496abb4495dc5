//! Start-up and faults, in assembly where Rust may not run yet.
//!
//! Reset: zero `.bss`, copy `.data` (Arm: from FLASH to RAM), enable the FPU
//! (Arm: CPACR CP10/CP11; RISC-V: `mstatus.FS`), then `tessera_start`, which calls the binary's
//! `tessera_main` and exits through semihosting with its status. Any fault
//! (Arm: every exception vector; RISC-V: `mtvec`) prints where it happened
//! and exits with status 3, so a fault never hangs CI.

use crate::host::{exit, print, print_u32};

extern "C" {
    fn tessera_main() -> i32;
}

/// Called by the reset code once memory is set up.
#[no_mangle]
extern "C" fn tessera_start() -> ! {
    // SAFETY: every binary of this crate defines `tessera_main` with this
    // signature; it runs once, single-threaded, with no interrupts enabled.
    let code = unsafe { tessera_main() };
    exit(code)
}

#[cfg(target_arch = "arm")]
core::arch::global_asm!(
    ".section .vector_table, \"a\"",
    ".word __stack_top",
    ".word tessera_reset",
    ".rept 14",
    ".word tessera_fault",
    ".endr",
    "",
    ".section .text.tessera_reset, \"ax\"",
    ".syntax unified",
    ".thumb",
    ".global tessera_reset",
    ".type tessera_reset, %function",
    ".thumb_func",
    "tessera_reset:",
    "    ldr r0, =__sbss",
    "    ldr r1, =__ebss",
    "    movs r2, #0",
    "1:  cmp r0, r1",
    "    bhs 2f",
    "    str r2, [r0], #4",
    "    b 1b",
    "2:  ldr r0, =__sdata",
    "    ldr r1, =__edata",
    "    ldr r2, =__sidata",
    "3:  cmp r0, r1",
    "    bhs 4f",
    "    ldr r3, [r2], #4",
    "    str r3, [r0], #4",
    "    b 3b",
    "4:  ldr r0, =0xE000ED88",
    "    ldr r1, [r0]",
    "    orr r1, r1, #0xF00000",
    "    str r1, [r0]",
    "    dsb",
    "    isb",
    "    bl tessera_start",
    "    b .",
    ".ltorg",
    "",
    ".section .text.tessera_fault, \"ax\"",
    ".global tessera_fault",
    ".type tessera_fault, %function",
    ".thumb_func",
    "tessera_fault:",
    "    mrs r0, msp",
    "    mrs r1, ipsr",
    "    b tessera_fault_report",
);

/// Report an Arm exception: `frame` is the stacked `r0-r3, r12, lr, pc, xpsr`.
#[cfg(target_arch = "arm")]
#[no_mangle]
unsafe extern "C" fn tessera_fault_report(frame: *const u32, ipsr: u32) -> ! {
    // SAFETY: on exception entry the core pushed 8 words at MSP.
    let pc = unsafe { frame.add(6).read_volatile() };
    print("HardFault: exception ");
    print_u32(ipsr & 0x1ff);
    print(" at pc 0x");
    print_hex(pc);
    print("\n");
    exit(3)
}

#[cfg(target_arch = "riscv32")]
core::arch::global_asm!(
    ".section .text.tessera_reset, \"ax\"",
    ".global tessera_reset",
    "tessera_reset:",
    "    la sp, __stack_top",
    "    la t0, tessera_trap",
    "    csrw mtvec, t0",
    // mstatus.FS = Initial: with the F extension every FP instruction traps
    // as illegal until this is set; without it the field is read-only zero
    // and the write does nothing.
    "    li t0, 0x2000",
    "    csrs mstatus, t0",
    "    la t0, __sbss",
    "    la t1, __ebss",
    "1:  bgeu t0, t1, 2f",
    "    sw zero, 0(t0)",
    "    addi t0, t0, 4",
    "    j 1b",
    "2:  call tessera_start",
    "3:  j 3b",
    "",
    ".section .text.tessera_trap, \"ax\"",
    ".balign 4",
    "tessera_trap:",
    "    csrr a0, mcause",
    "    csrr a1, mepc",
    "    j tessera_trap_report",
    "",
    // The semihosting sequence must not be compressed and must sit in one
    // page, so QEMU can recognise it.
    ".section .text.tessera_semihost, \"ax\"",
    ".global tessera_semihost",
    ".balign 16",
    "tessera_semihost:",
    "    .option push",
    "    .option norvc",
    "    slli zero, zero, 0x1f",
    "    ebreak",
    "    srai zero, zero, 0x7",
    "    .option pop",
    "    ret",
);

/// Report a RISC-V trap (machine mode).
#[cfg(target_arch = "riscv32")]
#[no_mangle]
extern "C" fn tessera_trap_report(mcause: u32, mepc: u32) -> ! {
    print("HardFault (trap): mcause ");
    print_u32(mcause);
    print(" at pc 0x");
    print_hex(mepc);
    print("\n");
    exit(3)
}

fn print_hex(x: u32) {
    let mut buf = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        let nib = (x >> (28 - 4 * i)) & 0xf;
        *b = if nib < 10 {
            b'0' + nib as u8
        } else {
            b'a' + nib as u8 - 10
        };
    }
    crate::host::write(&buf);
}
