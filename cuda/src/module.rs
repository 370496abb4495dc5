//! The kernels of one CUDA context: every embedded fatbin loaded once, every
//! entry point and its geometry resolved once, and the launch call.

use core::ffi::{c_uint, c_void};
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use tessera_core::mask::MaskSpec;
use tessera_core::spec::AttentionSpec;
use tessera_core::IndexerSpec;

use crate::driver::{self, CuContext, CuFunction, CuModule, Driver};
use crate::error::CudaError;
use crate::params::KernelParams;
use crate::plan::{
    self, AttentionBuffers, DeviceMask, DevicePtr, Dtype, Fp8Format, Geometry, IndexerBuffers,
    KeyLists, Launch, MergeBuffers, SparseRules,
};

/// A CUDA stream (`CUstream` / `cudaStream_t`, e.g. from ORT's
/// `KernelContext_GetGPUComputeStream`); null is the legacy default stream.
#[derive(Clone, Copy, Debug)]
pub struct Stream(pub *mut c_void);

impl Stream {
    /// The legacy default stream.
    pub const DEFAULT: Stream = Stream(core::ptr::null_mut());
}

#[derive(Clone, Copy, Debug)]
struct Kernel {
    func: CuFunction,
    geometry: Geometry,
}

/// Every Tessera kernel, loaded into one CUDA context.
///
/// Load it once per context ([`Module::load`], or [`Module::for_current_context`]
/// which caches) and launch from any thread on which that context is current.
/// Dropping a `Module` does not unload it (the context may be gone by then);
/// [`Module::unload`] does, with the context current.
#[derive(Debug)]
pub struct Module {
    driver: &'static Driver,
    context: CuContext,
    modules: Vec<CuModule>,
    kernels: HashMap<&'static str, Kernel>,
    /// Compute capability of the context's device.
    pub arch: (i32, i32),
}

// SAFETY: CUmodule and CUfunction handles are plain driver handles that the
// CUDA driver API allows to be used from any thread (launches check that the
// owning context is current); the map is immutable after load.
unsafe impl Send for Module {}
// SAFETY: as above; no method mutates the Module.
unsafe impl Sync for Module {}

/// The compute capability of the current device: sm_80 or newer.
fn device_arch(driver: &Driver) -> Result<(i32, i32), CudaError> {
    let arch = (
        driver.device_attribute(driver::ATTR_CC_MAJOR)?,
        driver.device_attribute(driver::ATTR_CC_MINOR)?,
    );
    if arch.0 < 8 {
        return Err(CudaError::Arch {
            major: arch.0,
            minor: arch.1,
        });
    }
    Ok(arch)
}

impl Module {
    /// Load every embedded kernel into the context current on this thread,
    /// check the parameter-block ABI, read each kernel's geometry and allow
    /// the shared memory it needs.
    pub fn load(driver: &'static Driver) -> Result<Module, CudaError> {
        if crate::kernels::FATBINS.is_empty() {
            return Err(CudaError::NotBuilt);
        }
        let context = driver.current_context()?;
        let arch = device_arch(driver)?;
        let smem_optin = driver.device_attribute(driver::ATTR_SMEM_OPTIN)?;
        let mut module = Module {
            driver,
            context,
            modules: Vec::new(),
            kernels: HashMap::new(),
            arch,
        };
        let by_name = module.load_images()?;
        module.check_abi(&by_name)?;
        for (file, entry, geometry) in plan::all_kernels() {
            let m = *by_name.get(file).ok_or_else(|| {
                CudaError::Unsupported(format!("kernel module {file} is not embedded"))
            })?;
            let kernel = module.resolve(m, entry, geometry, smem_optin)?;
            module.kernels.insert(entry, kernel);
        }
        Ok(module)
    }

    /// Loads every embedded fatbin; returns the modules by file name.
    fn load_images(&mut self) -> Result<HashMap<&'static str, CuModule>, CudaError> {
        let driver = self.driver;
        let mut by_name = HashMap::new();
        for &(name, image) in crate::kernels::FATBINS {
            // The driver reads the image through a pointer; give it an
            // 8-byte-aligned copy (include_bytes! guarantees no alignment).
            let words: Vec<u64> = image
                .chunks(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    u64::from_ne_bytes(b)
                })
                .collect();
            let mut m: CuModule = core::ptr::null_mut();
            // SAFETY: `words` holds the whole fatbin image and outlives the
            // call (the driver copies what it keeps).
            driver.check("cuModuleLoadData", unsafe {
                (driver.module_load_data)(&mut m, words.as_ptr().cast())
            })?;
            self.modules.push(m);
            by_name.insert(name, m);
        }
        Ok(by_name)
    }

    /// Every parameter block has the size its module was compiled with.
    fn check_abi(&self, by_name: &HashMap<&'static str, CuModule>) -> Result<(), CudaError> {
        use crate::params::*;
        use core::mem::size_of;
        let blocks = [
            ("flash", size_of::<FlashParams>(), FlashParams::ABI_SYMBOL),
            (
                "indexer",
                size_of::<IndexerParams>(),
                IndexerParams::ABI_SYMBOL,
            ),
            (
                "indexer",
                size_of::<QuantizeParams>(),
                QuantizeParams::ABI_SYMBOL,
            ),
            (
                "sparse",
                size_of::<IndexCheckParams>(),
                IndexCheckParams::ABI_SYMBOL,
            ),
            ("topk", size_of::<TopkParams>(), TopkParams::ABI_SYMBOL),
            (
                "sparse",
                size_of::<SparseParams>(),
                SparseParams::ABI_SYMBOL,
            ),
            ("merge", size_of::<MergeParams>(), MergeParams::ABI_SYMBOL),
        ];
        for (name, host, symbol) in blocks {
            let [device] = self.read_global::<1>(by_name[name], symbol)?;
            if device as usize != host {
                return Err(CudaError::AbiMismatch {
                    params: name,
                    host,
                    device: device as usize,
                });
            }
        }
        Ok(())
    }

    /// Looks `entry` up in module `m`, reads its geometry symbol and raises
    /// its dynamic shared memory limit where it needs more than 48 KiB.
    fn resolve(
        &self,
        m: CuModule,
        entry: &'static str,
        geometry: &str,
        smem_optin: i32,
    ) -> Result<Kernel, CudaError> {
        let driver = self.driver;
        let cname = CString::new(entry).expect("kernel names have no NUL");
        let mut func: CuFunction = core::ptr::null_mut();
        // SAFETY: `m` is a loaded module and `cname` a NUL-terminated name.
        driver.check("cuModuleGetFunction", unsafe {
            (driver.module_get_function)(&mut func, m, cname.as_ptr())
        })?;
        let [threads, tile_a, tile_b, smem] = self.read_global::<4>(m, geometry)?;
        let geometry = Geometry {
            threads: threads as u32,
            tile_a: tile_a as u32,
            tile_b: tile_b as u32,
            smem: smem as u32,
        };
        if smem > 48 * 1024 {
            if smem > smem_optin {
                return Err(CudaError::Unsupported(format!(
                    "{entry} needs {smem} bytes of shared memory; this GPU allows {smem_optin}"
                )));
            }
            // SAFETY: `func` is a valid function of a loaded module.
            driver.check("cuFuncSetAttribute", unsafe {
                (driver.func_set_attribute)(func, driver::FUNC_MAX_DYNAMIC_SMEM, smem)
            })?;
        }
        Ok(Kernel { func, geometry })
    }

    /// The module of the context current on this thread, loaded on first
    /// use and shared afterwards (one load per context, for the process).
    pub fn for_current_context() -> Result<Arc<Module>, CudaError> {
        static CACHE: Mutex<Vec<(usize, Arc<Module>)>> = Mutex::new(Vec::new());
        let driver = Driver::get()?;
        let ctx = driver.current_context()? as usize;
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = cache.iter().find(|(c, _)| *c == ctx) {
            return Ok(m.clone());
        }
        let m = Arc::new(Module::load(driver)?);
        cache.push((ctx, m.clone()));
        Ok(m)
    }

    /// Unload from the context (which must be current).
    pub fn unload(mut self) -> Result<(), CudaError> {
        for m in self.modules.drain(..) {
            // SAFETY: `m` was loaded by this Module and is unloaded once.
            let code = unsafe { (self.driver.module_unload)(m) };
            self.driver.check("cuModuleUnload", code)?;
        }
        Ok(())
    }

    /// `N` ints of a `__constant__` array of module `m`.
    fn read_global<const N: usize>(
        &self,
        m: CuModule,
        symbol: &str,
    ) -> Result<[i32; N], CudaError> {
        let name = CString::new(symbol).expect("symbol names have no NUL");
        let (mut ptr, mut bytes) = (0u64, 0usize);
        // SAFETY: `m` is loaded; the driver writes one address and one size.
        self.driver.check("cuModuleGetGlobal", unsafe {
            (self.driver.module_get_global)(&mut ptr, &mut bytes, m, name.as_ptr())
        })?;
        if bytes != 4 * N {
            return Err(CudaError::Unsupported(format!(
                "{symbol} holds {bytes} bytes, expected {}",
                4 * N
            )));
        }
        let mut out = [0i32; N];
        // SAFETY: `out` has exactly `bytes` bytes and `ptr` is a device
        // symbol of that size.
        self.driver.check("cuMemcpyDtoH", unsafe {
            (self.driver.memcpy_dtoh)(out.as_mut_ptr().cast(), ptr, bytes)
        })?;
        Ok(out)
    }

    /// The geometry of an entry point.
    pub fn geometry(&self, entry: &str) -> Option<Geometry> {
        self.kernels.get(entry).map(|k| k.geometry)
    }

    /// Launch a validated plan on `stream`, asynchronously.
    pub fn launch<P: KernelParams>(
        &self,
        plan: &Launch<P>,
        stream: Stream,
    ) -> Result<(), CudaError> {
        let kernel = self.kernels.get(plan.kernel).ok_or_else(|| {
            CudaError::Unsupported(format!("kernel {} is not in the module", plan.kernel))
        })?;
        let grid = (plan.grid)(&plan.params, &kernel.geometry);
        if grid.contains(&0) {
            return Ok(()); // nothing to compute
        }
        let limits = [i32::MAX as u64, 65535, 65535];
        if let Some(i) = (0..3).find(|&i| grid[i] > limits[i]) {
            return Err(CudaError::invalid(
                P::C_NAME,
                format!("grid {:?} exceeds the CUDA limit on axis {i}", grid),
            ));
        }
        if self.driver.current_context()? != self.context {
            return Err(CudaError::invalid(
                "stream",
                "the current CUDA context is not the one this module was loaded into",
            ));
        }
        let mut params = plan.params;
        let mut args: [*mut c_void; 1] = [(&mut params as *mut P).cast()];
        let g = kernel.geometry;
        // SAFETY: `func` belongs to the current context; `args` holds one
        // pointer to a parameter block whose layout is the kernel's single
        // argument (checked against the module's ABI constant at load); the
        // driver copies the arguments before returning.
        let code = unsafe {
            (self.driver.launch_kernel)(
                kernel.func,
                grid[0] as c_uint,
                grid[1] as c_uint,
                grid[2] as c_uint,
                g.threads,
                1,
                1,
                g.smem,
                stream.0,
                args.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        };
        self.driver
            .check("cuLaunchKernel", code)
            .map_err(|e| match e {
                CudaError::Driver {
                    code,
                    name,
                    message,
                    ..
                } => CudaError::Driver {
                    call: "cuLaunchKernel",
                    code,
                    name,
                    message: format!("{message} (kernel {})", plan.kernel),
                },
                e => e,
            })
    }

    /// Flash attention; see [`plan::attention`] for the rules.
    pub fn attention(
        &self,
        stream: Stream,
        spec: &AttentionSpec,
        mask: &MaskSpec<'_>,
        device_mask: &DeviceMask,
        dtype: Dtype,
        bufs: &AttentionBuffers,
    ) -> Result<(), CudaError> {
        self.launch(
            &plan::attention(spec, mask, device_mask, dtype, bufs)?,
            stream,
        )
    }

    /// FP8 indexer scores; see [`plan::indexer_fp8`].
    pub fn indexer(
        &self,
        stream: Stream,
        spec: &IndexerSpec,
        mask: &MaskSpec<'_>,
        device_mask: &DeviceMask,
        format: Fp8Format,
        bufs: &IndexerBuffers,
    ) -> Result<(), CudaError> {
        self.launch(
            &plan::indexer_fp8(spec, mask, device_mask, format, bufs)?,
            stream,
        )
    }

    /// Top-k per row; see [`plan::top_k`].
    pub fn top_k(
        &self,
        stream: Stream,
        rows: usize,
        row_len: usize,
        k: usize,
        scores: DevicePtr,
        indices: DevicePtr,
    ) -> Result<(), CudaError> {
        self.launch(&plan::top_k(rows, row_len, k, scores, indices)?, stream)
    }

    /// Sparse gather attention; see [`plan::sparse_attention`].
    pub fn sparse_attention(
        &self,
        stream: Stream,
        spec: &AttentionSpec,
        dtype: Dtype,
        lists: &KeyLists,
        rules: &SparseRules,
        bufs: &AttentionBuffers,
    ) -> Result<(), CudaError> {
        self.launch(
            &plan::sparse_attention(spec, dtype, lists, rules, bufs)?,
            stream,
        )
    }

    /// The driver this module was loaded with.
    pub fn driver(&self) -> &'static Driver {
        self.driver
    }

    /// LSE merge; see [`plan::merge`].
    pub fn merge(
        &self,
        stream: Stream,
        rows: usize,
        dv: usize,
        dtype: Dtype,
        bufs: &MergeBuffers,
    ) -> Result<(), CudaError> {
        self.launch(&plan::merge(rows, dv, dtype, bufs)?, stream)
    }
}

/// The name of a kernel entry in a ptxas report line, if it is one.
pub fn reported_entry(line: &str) -> Option<&str> {
    let rest = line.split("Compiling entry function '").nth(1)?;
    rest.split('\'').next()
}
