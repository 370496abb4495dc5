//! Feature `emulate`: run a validated [`Launch`] on the CPU emulator
//! (`cuda/emu`), where the same kernel sources are compiled as host C++.
//! "Device" pointers are then host addresses. For tests: the emulator runs
//! every GPU thread as a fiber, so it is slow (about a CTA per millisecond
//! per warp-instruction batch); keep problems small.

use core::ffi::{c_char, c_int, c_void};
use std::ffi::CString;

use crate::error::CudaError;
use crate::params::KernelParams;
use crate::plan::{Geometry, Launch};

extern "C" {
    fn tessera_emu_geometry(name: *const c_char, out: *mut c_int) -> c_int;
    fn tessera_emu_abi(symbol: *const c_char) -> c_int;
    fn tessera_emu_launch(
        name: *const c_char,
        params: *const c_void,
        gx: u32,
        gy: u32,
        gz: u32,
    ) -> c_int;
}

/// The geometry the emulated kernel `entry` exports.
pub fn geometry(entry: &str) -> Option<Geometry> {
    let name = CString::new(entry).ok()?;
    let mut g = [0 as c_int; 4];
    // SAFETY: `name` is NUL-terminated and `g` holds the 4 ints written.
    let rc = unsafe { tessera_emu_geometry(name.as_ptr(), g.as_mut_ptr()) };
    (rc == 0).then(|| Geometry {
        threads: g[0] as u32,
        tile_a: g[1] as u32,
        tile_b: g[2] as u32,
        smem: g[3] as u32,
    })
}

/// Run `plan` to completion on the emulator.
///
/// # Safety
/// Every address in `plan.params` must be a host pointer to memory that is
/// valid (and, for outputs, writable) for the extents the parameters
/// describe, as a GPU launch would require of device memory.
pub unsafe fn launch<P: KernelParams>(plan: &Launch<P>) -> Result<(), CudaError> {
    let symbol = CString::new(P::ABI_SYMBOL).expect("symbol names have no NUL");
    // SAFETY: `symbol` is NUL-terminated.
    let abi = unsafe { tessera_emu_abi(symbol.as_ptr()) };
    if abi as usize != core::mem::size_of::<P>() {
        return Err(CudaError::AbiMismatch {
            params: P::C_NAME,
            host: core::mem::size_of::<P>(),
            device: abi as usize,
        });
    }
    let g = geometry(plan.kernel).ok_or_else(|| {
        CudaError::Unsupported(format!("kernel {} is not in the emulator", plan.kernel))
    })?;
    let grid = (plan.grid)(&plan.params, &g);
    if grid.contains(&0) {
        return Ok(());
    }
    let name = CString::new(plan.kernel).expect("kernel names have no NUL");
    // SAFETY: the params block is a live value of the kernel's parameter
    // type (sizes checked above); the caller guarantees its pointers.
    let rc = unsafe {
        tessera_emu_launch(
            name.as_ptr(),
            (&plan.params as *const P).cast(),
            grid[0] as u32,
            grid[1] as u32,
            grid[2] as u32,
        )
    };
    if rc != 0 {
        return Err(CudaError::Unsupported(format!(
            "kernel {} is not in the emulator",
            plan.kernel
        )));
    }
    Ok(())
}

/// The emulator as a [`Device`](crate::dsa::Device): launches run at once,
/// "device" addresses are host addresses.
#[derive(Debug)]
pub struct Emulator {
    _private: (),
}

impl Emulator {
    /// An emulator device.
    ///
    /// # Safety
    /// Every address later passed to it (in launches, fills and reads) must
    /// be a host pointer to memory valid for the extents involved, as the
    /// GPU would require of device memory.
    pub unsafe fn new() -> Self {
        Emulator { _private: () }
    }
}

impl crate::dsa::Device for Emulator {
    fn launch<P: KernelParams>(&self, plan: &Launch<P>) -> Result<(), CudaError> {
        // SAFETY: the constructor's contract covers every address.
        unsafe { launch(plan) }
    }

    fn fill(&self, dst: crate::DevicePtr, value: u8, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: the constructor's contract: `dst` is writable for `bytes`.
        unsafe { core::ptr::write_bytes(dst.0 as *mut u8, value, bytes) };
        Ok(())
    }

    fn read_i64(&self, src: crate::DevicePtr, out: &mut [i64]) -> Result<(), CudaError> {
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: the constructor's contract: `src` holds `out.len()`
            // i64 (read unaligned: scratch offsets are not checked here).
            *o = unsafe { core::ptr::read_unaligned((src.0 as *const i64).add(i)) };
        }
        Ok(())
    }
}
