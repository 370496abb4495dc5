//! The plugin's error type and the conversions into it from the errors of
//! `tessera-core` (and, with feature `cuda`, `tessera-cuda`). Every error
//! becomes an `OrtStatus` at the FFI boundary; its message names the op,
//! the input and the rule it broke.

use core::fmt;

/// The kind of failure, mapped onto ORT's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: a shape, a type or an attribute broke a rule.
    InvalidArgument,
    /// A valid request this build does not implement.
    NotImplemented,
    /// Something inside the plugin or ORT failed (a caught panic, an API error).
    Fail,
}

/// An error with a one-line message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The message: `input: rule (what was found)`.
    pub message: String,
}

/// The plugin's result type.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// A bad-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidArgument,
            message: message.into(),
        }
    }

    /// A failure inside the plugin or ORT.
    pub fn fail(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Fail,
            message: message.into(),
        }
    }

    /// A valid request that is not implemented.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::NotImplemented,
            message: message.into(),
        }
    }

    /// The same error with `prefix: ` in front of the message.
    pub fn context(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<tessera_core::Error> for Error {
    fn from(e: tessera_core::Error) -> Self {
        Error::invalid(e.to_string())
    }
}

/// The plugin error for a `tessera-cuda` error: a broken rule is bad input,
/// anything else (no driver, a driver call, a module mismatch) a failure.
#[cfg(feature = "cuda")]
pub fn from_cuda(e: tessera_cuda::CudaError) -> Error {
    use tessera_cuda::CudaError;
    match e {
        CudaError::Invalid { .. } | CudaError::Spec(_) | CudaError::Unsupported(_) => {
            Error::invalid(e.to_string())
        }
        other => Error::fail(other.to_string()),
    }
}

/// `Err(Error::invalid(..))` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::invalid(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::*;
    use tessera_cuda::CudaError;

    #[test]
    fn cuda_errors_map_to_bad_input_or_failure() {
        let bad = from_cuda(CudaError::Unsupported("head dim 96".into()));
        assert_eq!(bad.kind, ErrorKind::InvalidArgument);
        assert!(bad.message.contains("head dim 96"), "{}", bad.message);
        let fail = from_cuda(CudaError::NoContext);
        assert_eq!(fail.kind, ErrorKind::Fail);
        assert!(fail.message.contains("no CUDA context"), "{}", fail.message);
    }
}
