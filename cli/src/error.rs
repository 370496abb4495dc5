//! One error type for the tool: a message that names the file, node or
//! input and the rule it broke.

use std::fmt;

/// A failure with a complete, user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The tool's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Return early with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::Error(format!($($t)*))) };
}
