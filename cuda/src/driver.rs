//! The CUDA driver API, loaded at run time from `libcuda.so.1` with `dlopen`,
//! so nothing links CUDA at build time and the crate (and the ORT plugin that
//! uses it) loads on machines without a GPU. Every `CUresult` goes through
//! [`Driver::check`] and becomes a [`CudaError`] naming the call.

use core::ffi::{c_char, c_int, c_uint, c_void};
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use crate::error::CudaError;

/// `CUresult`.
pub type CuResult = c_int;
/// `CUcontext`.
pub type CuContext = *mut c_void;
/// `CUmodule`.
pub type CuModule = *mut c_void;
/// `CUfunction`.
pub type CuFunction = *mut c_void;
/// `CUdevice`.
pub type CuDevice = c_int;
/// `CUdeviceptr`.
pub type CuDevicePtr = u64;

/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`.
pub const ATTR_CC_MAJOR: c_int = 75;
/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR`.
pub const ATTR_CC_MINOR: c_int = 76;
/// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`.
pub const ATTR_SMEM_OPTIN: c_int = 97;
/// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const FUNC_MAX_DYNAMIC_SMEM: c_int = 8;

/// The library name a driver install provides.
pub const LIBCUDA: &str = "libcuda.so.1";

macro_rules! driver_api {
    ($($field:ident = $sym:literal : fn($($arg:ty),*);)*) => {
        /// The driver entry points this crate uses, resolved once.
        #[derive(Debug)]
        pub struct Driver {
            library: String,
            $(pub(crate) $field: unsafe extern "C" fn($($arg),*) -> CuResult,)*
            get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
            get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
        }

        impl Driver {
            fn resolve(library: &str, handle: *mut c_void) -> Result<Self, CudaError> {
                Ok(Self {
                    library: library.to_string(),
                    $($field: {
                        let p = symbol(library, handle, concat!($sym, "\0"))?;
                        // SAFETY: `p` is the non-null address of the driver's
                        // `$sym`, whose C signature is the one declared here
                        // (cuda.h, CUDA 11+ ABI).
                        unsafe { core::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CuResult>(p) }
                    },)*
                    get_error_name: {
                        let p = symbol(library, handle, "cuGetErrorName\0")?;
                        // SAFETY: cuGetErrorName(CUresult, const char**) -> CUresult.
                        unsafe { core::mem::transmute::<*mut c_void, unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>(p) }
                    },
                    get_error_string: {
                        let p = symbol(library, handle, "cuGetErrorString\0")?;
                        // SAFETY: cuGetErrorString(CUresult, const char**) -> CUresult.
                        unsafe { core::mem::transmute::<*mut c_void, unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>(p) }
                    },
                })
            }
        }
    };
}

driver_api! {
    init = "cuInit": fn(c_uint);
    driver_get_version = "cuDriverGetVersion": fn(*mut c_int);
    ctx_get_current = "cuCtxGetCurrent": fn(*mut CuContext);
    ctx_get_device = "cuCtxGetDevice": fn(*mut CuDevice);
    device_get_attribute = "cuDeviceGetAttribute": fn(*mut c_int, c_int, CuDevice);
    module_load_data = "cuModuleLoadData": fn(*mut CuModule, *const c_void);
    module_unload = "cuModuleUnload": fn(CuModule);
    module_get_function = "cuModuleGetFunction": fn(*mut CuFunction, CuModule, *const c_char);
    module_get_global = "cuModuleGetGlobal_v2": fn(*mut CuDevicePtr, *mut usize, CuModule, *const c_char);
    memcpy_dtoh = "cuMemcpyDtoH_v2": fn(*mut c_void, CuDevicePtr, usize);
    memcpy_dtod_async = "cuMemcpyDtoDAsync_v2": fn(CuDevicePtr, CuDevicePtr, usize, *mut c_void);
    memcpy_dtoh_async = "cuMemcpyDtoHAsync_v2": fn(*mut c_void, CuDevicePtr, usize, *mut c_void);
    memset_d8_async = "cuMemsetD8Async": fn(CuDevicePtr, u8, usize, *mut c_void);
    stream_synchronize = "cuStreamSynchronize": fn(*mut c_void);
    func_set_attribute = "cuFuncSetAttribute": fn(CuFunction, c_int, c_int);
    launch_kernel = "cuLaunchKernel": fn(
        CuFunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, *mut c_void, *mut *mut c_void, *mut *mut c_void
    );
}

#[cfg(unix)]
mod dl {
    use core::ffi::{c_char, c_int, c_void};
    pub const RTLD_NOW: c_int = 2;
    #[cfg_attr(target_os = "linux", link(name = "dl"))]
    extern "C" {
        pub fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        pub fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        pub fn dlerror() -> *mut c_char;
    }
}

/// The loader's last error message.
#[cfg(unix)]
fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments and returns null or a NUL-terminated
    // string that stays valid until the next dl* call on this thread; it is
    // copied before that.
    unsafe {
        let e = dl::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

#[cfg(unix)]
fn symbol(
    library: &str,
    handle: *mut c_void,
    name: &'static str,
) -> Result<*mut c_void, CudaError> {
    // SAFETY: `handle` came from a successful dlopen and is never closed;
    // `name` is NUL-terminated (every caller passes a literal ending in \0).
    let p = unsafe { dl::dlsym(handle, name.as_ptr().cast()) };
    if p.is_null() {
        return Err(CudaError::MissingSymbol {
            library: library.into(),
            symbol: name.trim_end_matches('\0'),
        });
    }
    Ok(p)
}

#[cfg(not(unix))]
fn symbol(
    library: &str,
    _handle: *mut c_void,
    name: &'static str,
) -> Result<*mut c_void, CudaError> {
    Err(CudaError::MissingSymbol {
        library: library.into(),
        symbol: name.trim_end_matches('\0'),
    })
}

static DRIVER: OnceLock<Result<Driver, CudaError>> = OnceLock::new();

impl Driver {
    /// The process-wide driver: `libcuda.so.1` opened and `cuInit(0)` called
    /// on first use; later calls return the same result. Fails cleanly (no
    /// panic, no abort) where there is no driver.
    pub fn get() -> Result<&'static Driver, CudaError> {
        DRIVER
            .get_or_init(|| {
                let d = Driver::load_from(LIBCUDA)?;
                // SAFETY: cuInit(0) has no preconditions and may be called
                // any number of times.
                d.check("cuInit", unsafe { (d.init)(0) })?;
                Ok(d)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Open `library` and resolve the entry points (no `cuInit`). The library
    /// handle is never closed: function pointers stay valid for the process.
    #[cfg(unix)]
    pub fn load_from(library: &str) -> Result<Driver, CudaError> {
        let name = CString::new(library).map_err(|_| CudaError::NoDriver {
            library: library.into(),
            reason: "name contains NUL".into(),
        })?;
        // SAFETY: `name` is a valid NUL-terminated string; dlopen runs the
        // library's initialisers, which for libcuda have no preconditions.
        let handle = unsafe { dl::dlopen(name.as_ptr(), dl::RTLD_NOW) };
        if handle.is_null() {
            return Err(CudaError::NoDriver {
                library: library.into(),
                reason: dl_error(),
            });
        }
        Driver::resolve(library, handle)
    }

    /// No dynamic loader on this platform.
    #[cfg(not(unix))]
    pub fn load_from(library: &str) -> Result<Driver, CudaError> {
        Err(CudaError::NoDriver {
            library: library.into(),
            reason: "only Linux drivers are supported".into(),
        })
    }

    /// The library this driver was loaded from.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// Turn a `CUresult` into `Ok` or an error naming `call`.
    pub fn check(&self, call: &'static str, code: CuResult) -> Result<(), CudaError> {
        if code == 0 {
            return Ok(());
        }
        let text = |f: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult| {
            let mut s: *const c_char = core::ptr::null();
            // SAFETY: the driver writes a pointer to a static NUL-terminated
            // string (or leaves null for an unknown code); it is checked for
            // null and copied.
            unsafe {
                if f(code, &mut s) == 0 && !s.is_null() {
                    CStr::from_ptr(s).to_string_lossy().into_owned()
                } else {
                    "unknown CUDA error".to_string()
                }
            }
        };
        Err(CudaError::Driver {
            call,
            code,
            name: text(self.get_error_name),
            message: text(self.get_error_string),
        })
    }

    /// The driver's CUDA version, e.g. 13000.
    pub fn version(&self) -> Result<i32, CudaError> {
        let mut v = 0;
        // SAFETY: writes one int.
        self.check("cuDriverGetVersion", unsafe {
            (self.driver_get_version)(&mut v)
        })?;
        Ok(v)
    }

    /// The context current on this thread.
    pub fn current_context(&self) -> Result<CuContext, CudaError> {
        let mut ctx: CuContext = core::ptr::null_mut();
        // SAFETY: writes one handle.
        self.check("cuCtxGetCurrent", unsafe {
            (self.ctx_get_current)(&mut ctx)
        })?;
        if ctx.is_null() {
            return Err(CudaError::NoContext);
        }
        Ok(ctx)
    }

    /// Copy `bytes` from device address `src` to `dst` on `stream`
    /// (asynchronous; e.g. to append new keys to a `present_key` buffer).
    ///
    /// # Safety
    /// Both ranges must be valid device memory of the current context for
    /// `bytes` bytes, and `stream` a stream of that context (or null).
    pub unsafe fn copy_async(
        &self,
        dst: u64,
        src: u64,
        bytes: usize,
        stream: *mut c_void,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees both ranges and the stream.
        self.check("cuMemcpyDtoDAsync", unsafe {
            (self.memcpy_dtod_async)(dst, src, bytes, stream)
        })
    }

    /// Set `bytes` bytes at device address `dst` to `value` on `stream`
    /// (asynchronous).
    ///
    /// # Safety
    /// The range must be valid device memory of the current context, and
    /// `stream` a stream of that context (or null).
    pub unsafe fn fill_async(
        &self,
        dst: u64,
        value: u8,
        bytes: usize,
        stream: *mut c_void,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees the range and the stream.
        self.check("cuMemsetD8Async", unsafe {
            (self.memset_d8_async)(dst, value, bytes, stream)
        })
    }

    /// Wait for everything queued on `stream`, then copy `dst.len()` bytes
    /// from device address `src` into `dst`.
    ///
    /// # Safety
    /// `src` must be valid device memory of the current context for
    /// `dst.len()` bytes, and `stream` a stream of that context (or null).
    pub unsafe fn read_after(
        &self,
        dst: &mut [u8],
        src: u64,
        stream: *mut c_void,
    ) -> Result<(), CudaError> {
        // SAFETY: `dst` is a live host buffer of that many bytes; the caller
        // guarantees `src` and the stream; the synchronise below completes
        // the copy before `dst` is released to the caller.
        self.check("cuMemcpyDtoHAsync", unsafe {
            (self.memcpy_dtoh_async)(dst.as_mut_ptr().cast(), src, dst.len(), stream)
        })?;
        // SAFETY: as above.
        self.check("cuStreamSynchronize", unsafe {
            (self.stream_synchronize)(stream)
        })
    }

    /// An attribute of the current context's device.
    pub fn device_attribute(&self, attribute: c_int) -> Result<i32, CudaError> {
        let (mut dev, mut v) = (0, 0);
        // SAFETY: each call writes one int.
        self.check("cuCtxGetDevice", unsafe { (self.ctx_get_device)(&mut dev) })?;
        // SAFETY: as above; `dev` is the current context's device.
        self.check("cuDeviceGetAttribute", unsafe {
            (self.device_get_attribute)(&mut v, attribute, dev)
        })?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clean_error_that_names_it() {
        let e = Driver::load_from("libtessera-no-such-driver.so.1").unwrap_err();
        match &e {
            CudaError::NoDriver { library, reason } => {
                assert_eq!(library, "libtessera-no-such-driver.so.1");
                assert!(!reason.is_empty());
            }
            other => panic!("expected NoDriver, got {other:?}"),
        }
        assert!(
            e.to_string().contains("libtessera-no-such-driver.so.1"),
            "{e}"
        );
    }

    #[test]
    fn a_library_without_the_driver_api_reports_the_missing_symbol() {
        // libc is always there and has no cuInit.
        let e = Driver::load_from("libc.so.6").unwrap_err();
        assert_eq!(
            e,
            CudaError::MissingSymbol {
                library: "libc.so.6".into(),
                symbol: "cuInit"
            }
        );
        assert!(e.to_string().contains("cuInit"));
    }

    #[test]
    fn the_process_driver_loads_or_says_why() {
        match Driver::get() {
            Ok(d) => assert!(d.version().unwrap() >= 11000),
            Err(CudaError::NoDriver { library, .. }) => assert_eq!(library, LIBCUDA),
            Err(CudaError::Driver { call, .. }) => assert_eq!(call, "cuInit"), // driver without a GPU
            Err(e) => panic!("unexpected error {e}"),
        }
        // The second call gives the same answer (loaded once).
        assert_eq!(Driver::get().is_ok(), Driver::get().is_ok());
    }
}
