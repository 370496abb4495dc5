//! Target features that stable Rust does not expose as `cfg(target_feature)`
//! (RISC-V `f`, Arm `mve.fp`), derived from the target triple and the
//! `-C target-cpu` / `-C target-feature` flags, as cfgs for the kernels:
//! - `tessera_rv32f`: RV32 with the F extension (`riscv32imafc-…`, `riscv32gc-…`
//!   or `-C target-feature=+f`); `kernel::Scalar` uses its `fmadd.s` block.
//! - `tessera_mve`: Armv8.1-M with Helium floating point (`-C
//!   target-cpu=cortex-m55`/`cortex-m85` or `-C target-feature=+mve.fp`);
//!   `kernel::Helium` exists.

use std::env;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(tessera_rv32f)");
    println!("cargo:rustc-check-cfg=cfg(tessera_mve)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    // `-C target-feature=+a,+b`, `-Ctarget-feature=…` and the split form.
    let features: Vec<&str> = flags
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let f = f.trim_start_matches("-C").trim_start_matches("codegen=");
            if let Some(v) = f.strip_prefix("target-feature=") {
                Some(v)
            } else if f.is_empty() && i + 1 < flags.len() {
                flags[i + 1].strip_prefix("target-feature=")
            } else {
                None
            }
        })
        .flat_map(|v| v.split(','))
        .collect();
    let cpu_is = |names: &[&str]| {
        flags.iter().any(|f| {
            names
                .iter()
                .any(|n| f.ends_with(&format!("target-cpu={n}")))
        })
    };
    if let Some(isa) = target.strip_prefix("riscv32") {
        let isa = isa.split('-').next().unwrap_or("");
        if isa.contains('f') || isa.contains('g') || features.contains(&"+f") {
            println!("cargo:rustc-cfg=tessera_rv32f");
        }
    }
    if target.starts_with("thumbv8m.main")
        && (cpu_is(&["cortex-m55", "cortex-m85"]) || features.contains(&"+mve.fp"))
    {
        println!("cargo:rustc-cfg=tessera_mve");
    }
}
