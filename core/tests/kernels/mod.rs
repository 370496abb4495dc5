//! Every micro-kernel this CPU has, for the property tests.
#![allow(dead_code)]

/// Run `$body` with `$k` bound to every micro-kernel this CPU has (or only
/// the one `TESSERA_KERNEL` names, when set). A kernel the CPU lacks is
/// printed as skipped, by name; never skipped silently.
#[allow(unused_macros)]
macro_rules! each_kernel {
    ($k:ident => $body:expr) => {
        for det in $crate::kernels::kernels() {
            tessera_core::with_kernel!(det, $k => $body);
        }
    };
}

/// The kernels [`each_kernel!`] runs. A missing one is reported once per
/// test binary, straight to stderr so that the harness's capture cannot
/// hide it.
pub fn kernels() -> Vec<tessera_core::kernel::Detected> {
    use std::io::Write;
    use tessera_core::kernel;
    if std::env::var("TESSERA_KERNEL").is_ok_and(|v| !v.trim().is_empty()) {
        return vec![kernel::detect().unwrap_or_else(|e| panic!("{e}"))];
    }
    static REPORTED: std::sync::Once = std::sync::Once::new();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for name in kernel::KERNELS {
        match kernel::by_name(name) {
            Ok(k) => out.push(k),
            Err(e) => skipped.push(format!("kernel {name}: skipped ({e})")),
        }
    }
    REPORTED.call_once(|| {
        for line in &skipped {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    });
    out
}
