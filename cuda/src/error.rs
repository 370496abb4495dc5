//! The one error type of the crate: every failure names the call or the input
//! and the rule, in one line.

use core::fmt;

use tessera_core::Error;

/// Why a CUDA call or a launch was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum CudaError {
    /// The crate was built without the `cuda` feature: no kernels are embedded.
    NotBuilt,
    /// `libcuda` could not be opened (no NVIDIA driver on this machine).
    NoDriver {
        /// The library asked for.
        library: String,
        /// The loader's message.
        reason: String,
    },
    /// The driver library lacks an entry point (a driver too old).
    MissingSymbol {
        /// The library.
        library: String,
        /// The symbol.
        symbol: &'static str,
    },
    /// A driver call returned an error code.
    Driver {
        /// The driver function.
        call: &'static str,
        /// The `CUresult`.
        code: i32,
        /// `cuGetErrorName`, e.g. `CUDA_ERROR_INVALID_VALUE`.
        name: String,
        /// `cuGetErrorString`.
        message: String,
    },
    /// No CUDA context is current on the calling thread.
    NoContext,
    /// The GPU is older than sm_80 (no bf16 mma, no kernels for it).
    Arch {
        /// Compute capability major.
        major: i32,
        /// Compute capability minor.
        minor: i32,
    },
    /// A kernel parameter block differs between this crate and the module.
    AbiMismatch {
        /// Which parameter block.
        params: &'static str,
        /// Size on the host.
        host: usize,
        /// Size in the module.
        device: usize,
    },
    /// The shapes, mask or buffers break a rule of the spec.
    Spec(Error),
    /// A combination the CUDA kernels do not implement (the CPU path does).
    Unsupported(String),
    /// A device buffer or size breaks a rule of the CUDA path.
    Invalid {
        /// The input (ONNX name where there is one).
        input: &'static str,
        /// The rule it broke.
        rule: String,
    },
}

impl CudaError {
    pub(crate) fn invalid(input: &'static str, rule: impl Into<String>) -> Self {
        CudaError::Invalid {
            input,
            rule: rule.into(),
        }
    }
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NotBuilt => write!(f, "tessera-cuda was built without the `cuda` feature: no kernels embedded"),
            CudaError::NoDriver { library, reason } => {
                write!(f, "cannot load the CUDA driver {library}: {reason} (is an NVIDIA driver installed?)")
            }
            CudaError::MissingSymbol { library, symbol } => {
                write!(f, "{library} has no {symbol}: the NVIDIA driver is too old")
            }
            CudaError::Driver { call, code, name, message } => write!(f, "{call} failed: {name} ({code}): {message}"),
            CudaError::NoContext => write!(f, "no CUDA context is current on this thread"),
            CudaError::Arch { major, minor } => {
                write!(f, "GPU compute capability {major}.{minor} is below 8.0; the kernels need sm_80 or newer")
            }
            CudaError::AbiMismatch { params, host, device } => write!(
                f,
                "{params}: {host} bytes on the host but {device} in the kernel module; rebuild tessera-cuda"
            ),
            CudaError::Spec(e) => write!(f, "{e}"),
            CudaError::Unsupported(what) => write!(f, "not supported by the CUDA kernels: {what}"),
            CudaError::Invalid { input, rule } => write!(f, "{input}: {rule}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<Error> for CudaError {
    fn from(e: Error) -> Self {
        CudaError::Spec(e)
    }
}
