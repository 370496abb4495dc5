//! The CPU micro-kernel, chosen in one place: [`with_kernel!`] runs a body
//! with the best kernel `tessera_core::kernel::detect` finds on this CPU.

/// Run `$body` with `$k` bound to the best micro-kernel of this CPU.
macro_rules! with_kernel {
    ($k:ident => $body:expr) => {
        match tessera_core::kernel::detect() {
            #[cfg(target_arch = "x86_64")]
            tessera_core::kernel::Detected::Avx2Fma($k) => $body,
            #[cfg(target_arch = "aarch64")]
            tessera_core::kernel::Detected::Neon($k) => $body,
            tessera_core::kernel::Detected::Portable($k) => $body,
        }
    };
}
pub(crate) use with_kernel;
