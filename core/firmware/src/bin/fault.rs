//! Takes a fault on purpose. The test script expects status 3 and a
//! "HardFault" line: proof that a fault exits QEMU instead of hanging CI.
#![no_std]
#![no_main]

#[no_mangle]
extern "C" fn tessera_main() -> i32 {
    tessera_firmware::print("about to fault\n");
    #[cfg(target_arch = "arm")]
    // SAFETY: deliberately executes a permanently undefined instruction; the
    // fault handler exits QEMU.
    unsafe {
        core::arch::asm!("udf #0")
    };
    #[cfg(target_arch = "riscv32")]
    // SAFETY: deliberately executes an illegal instruction; the trap handler
    // exits QEMU.
    unsafe {
        core::arch::asm!("unimp")
    };
    0
}
