//! Bare-metal support for running tessera-core under QEMU: start-up code,
//! semihosting I/O and exit, a fault handler that exits non-zero, stack
//! painting and instruction-count markers. Targets:
//!
//! | target | QEMU | memory |
//! | --- | --- | --- |
//! | `thumbv7em-none-eabihf` | `qemu-system-arm -machine mps2-an386 -cpu cortex-m4` | FLASH 0x0000_0000, RAM 0x2000_0000 |
//! | `thumbv8m.main-none-eabihf` | `qemu-system-arm -machine mps2-an505 -cpu cortex-m33` | FLASH 0x1000_0000, RAM 0x3800_0000 |
//! | the same with `-C target-cpu=cortex-m55` | `qemu-system-arm -machine mps3-an547 -cpu cortex-m55` | ITCM 0x0000_0000, DDR 0x6000_0000 |
//! | `riscv32imac-unknown-none-elf`, `riscv32imafc-unknown-none-elf` | `qemu-system-riscv32 -machine virt -bios none` | RAM 0x8000_0000 |
//!
//! A binary defines `#[no_mangle] extern "C" fn tessera_main() -> i32`; its
//! return value becomes QEMU's exit status through semihosting.
#![no_std]

pub mod cases;
pub mod data;
pub mod host;
pub mod marks;
mod rt;
pub mod stack;

pub use host::{exit, print, print_u32, print_u64, Out};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // No formatting machinery here: the measured images must not pull in
    // core::fmt's float code through the panic path.
    print("PANIC");
    if let Some(loc) = info.location() {
        print(" at ");
        print(loc.file());
        print(":");
        print_u32(loc.line());
    }
    print("\n");
    exit(101)
}
