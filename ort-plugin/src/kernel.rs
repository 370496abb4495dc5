//! The CPU micro-kernel, chosen in one place: [`with_kernel!`] runs a body
//! with the kernel `tessera_core::kernel::detect` picks: the best this CPU
//! has, or the one `TESSERA_KERNEL` names. A name the CPU cannot run (or
//! no kernel's name) fails the op with a message naming `TESSERA_KERNEL`.

/// Run `$body` (which returns the plugin's `Result`) with `$k` bound to the
/// micro-kernel of this CPU.
macro_rules! with_kernel {
    ($k:ident => $body:expr) => {
        match tessera_core::kernel::detect() {
            Ok(det) => tessera_core::with_kernel!(det, $k => $body),
            Err(e) => Err($crate::error::Error::fail(e.to_string())),
        }
    };
}
pub(crate) use with_kernel;
