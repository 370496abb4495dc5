//! Host side of the firmware tests.
//!
//! 1. Picks the memory map (`memory.x`) and linker script for the target.
//! 2. Generates the conformance cases: random inputs (never zeros), and the
//!    expected outputs of each case from tessera-core's f64
//!    [`reference::attention`], written as Rust statics to
//!    `$OUT_DIR/cases.rs`, which `src/cases.rs` includes. Every float is
//!    emitted through `from_bits`, so the firmware sees exactly the host's
//!    values.

use std::fmt::Write as _;
use std::{env, fs, path::PathBuf};

use tessera_core::{f16, reference, AttentionSpec, MaskSpec, Tensor};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = env::var("TARGET").unwrap();
    // The Cortex-M55 shares the M33's triple; `-C target-cpu=cortex-m55`
    // tells them apart (scripts/test.d/30-embedded.sh builds it into its own
    // target directory).
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let m55 =
        env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("target-cpu=cortex-m55"));
    let board = if m55 {
        "thumbv8.1m-cortex-m55"
    } else {
        target.as_str()
    };
    let (script, memory) = match board {
        // mps3-an547 (Cortex-M55, SSE-300): code in the 512 KiB ITCM at 0
        // (where QEMU's boot vector table is), data in DDR at 0x6000_0000
        // (the measure image needs 2 MiB).
        "thumbv8.1m-cortex-m55" => (
            "cortex-m.ld",
            "FLASH : ORIGIN = 0x00000000, LENGTH = 512K\n RAM : ORIGIN = 0x60000000, LENGTH = 16M",
        ),
        // mps2-an386 (Cortex-M4): 4 MiB FLASH at 0, 4 MiB SRAM at 0x2000_0000.
        "thumbv7em-none-eabihf" => (
            "cortex-m.ld",
            "FLASH : ORIGIN = 0x00000000, LENGTH = 4M\n RAM : ORIGIN = 0x20000000, LENGTH = 4M",
        ),
        // mps2-an505 (Cortex-M33), Secure aliases: SSRAM1 4 MiB at
        // 0x1000_0000, SSRAM2+3 at 0x3800_0000.
        "thumbv8m.main-none-eabihf" => (
            "cortex-m.ld",
            "FLASH : ORIGIN = 0x10000000, LENGTH = 4M\n RAM : ORIGIN = 0x38000000, LENGTH = 4M",
        ),
        // virt with -bios none: RAM at 0x8000_0000 (128 MiB by default).
        "riscv32imac-unknown-none-elf" | "riscv32imafc-unknown-none-elf" => {
            ("riscv.ld", "RAM : ORIGIN = 0x80000000, LENGTH = 32M")
        }
        _ => ("", ""),
    };
    if !script.is_empty() {
        fs::write(out.join("memory.x"), format!("MEMORY\n{{\n {memory}\n}}\n")).unwrap();
        let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        fs::copy(manifest.join("link").join(script), out.join("link.x")).unwrap();
        println!("cargo:rustc-link-search={}", out.display());
        println!("cargo:rustc-link-arg-bins=-Tlink.x");
        println!("cargo:rerun-if-changed=link/{script}");
    }
    // The M55 build has tessera-core's Helium kernel.
    println!("cargo:rustc-check-cfg=cfg(m55)");
    if m55 {
        println!("cargo:rustc-cfg=m55");
        println!("cargo:rustc-env=TARGET_NAME={target} (cortex-m55)");
    } else {
        println!("cargo:rustc-env=TARGET_NAME={target}");
    }
    // Every target but RV32IMAC has an FPU (stable Rust has no
    // `target_feature = "f"` on RISC-V).
    println!("cargo:rustc-check-cfg=cfg(hard_float)");
    if target != "riscv32imac-unknown-none-elf" {
        println!("cargo:rustc-cfg=hard_float");
    }
    println!("cargo:rerun-if-changed=build.rs");
    fs::write(out.join("cases.rs"), cases()).unwrap();
}

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[-amp, amp)`, never exactly 0.
    fn value(&mut self, amp: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        let x = (2.0 * u - 1.0) * amp;
        if x == 0.0 {
            amp / 7.0
        } else {
            x
        }
    }
    fn fill(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.value(amp)).collect()
    }
}

/// What a case needs beyond its spec and mask.
struct Extra {
    name: &'static str,
    half: bool,
    amp: f32,
    split: Option<usize>,
}

impl Extra {
    /// f32 inputs of amplitude 1, not split.
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            half: false,
            amp: 1.0,
            split: None,
        }
    }
}

/// One conformance case: its extras, spec, mask, and the mask's source text
/// as the firmware writes it.
type CaseDef<'m> = (Extra, AttentionSpec, MaskSpec<'m>, &'static str);

/// The host data some masks borrow; emitted as statics of the same names.
struct MaskData {
    seg_q: Vec<i32>,
    seg_kv: Vec<i32>,
    kv_lens: [usize; 2],
}

impl MaskData {
    fn new() -> Self {
        Self {
            seg_q: (0..2 * 30)
                .map(|i| [0, 0, 1, 1, 1, 2][(i % 30) / 5])
                .collect(),
            seg_kv: (0..2 * 30)
                .map(|j| [0, 0, 1, 1, 1, 2][(j % 30) / 5] + (j / 30) as i32 * 7 % 2)
                .collect(),
            kv_lens: [20, 7],
        }
    }

    /// `SEG_Q`, `SEG_KV` and `KV_LENS`.
    fn write(&self, src: &mut String) {
        let (seg_q, seg_kv, kv_lens) = (&self.seg_q, &self.seg_kv, self.kv_lens);
        writeln!(
            src,
            "pub static SEG_Q: [i32; {}] = {:?};",
            seg_q.len(),
            seg_q
        )
        .unwrap();
        writeln!(
            src,
            "pub static SEG_KV: [i32; {}] = {:?};",
            seg_kv.len(),
            seg_kv
        )
        .unwrap();
        writeln!(src, "pub static KV_LENS: [usize; 2] = {kv_lens:?};").unwrap();
    }
}

/// The cases, in the order the firmware runs them.
fn case_list(data: &MaskData) -> Vec<CaseDef<'_>> {
    let sp = |b, hq, hk, sq, skv, d, dv| AttentionSpec::bhsd(b, hq, hk, sq, skv, d, dv);
    let none = MaskSpec::NONE;
    vec![
        (
            Extra::new("dense"),
            sp(1, 2, 2, 13, 21, 8, 8),
            none,
            "MaskSpec::NONE",
        ),
        (
            Extra::new("D=7, Dv=5 (k % 4 = 3 in the register block)"),
            sp(1, 2, 2, 9, 13, 7, 5),
            none.causal(4),
            "MaskSpec::NONE.causal(4)",
        ),
        (
            Extra::new("causal, rows 0..3 fully masked"),
            sp(1, 2, 2, 19, 19, 16, 16),
            none.causal(-3),
            "MaskSpec::NONE.causal(-3)",
        ),
        (
            Extra::new("causal decode chunk (offset 15)"),
            sp(1, 1, 1, 9, 24, 8, 8),
            none.causal(15),
            "MaskSpec::NONE.causal(15)",
        ),
        (
            Extra::new("window(5,3) + 3 globals"),
            sp(2, 2, 2, 40, 40, 8, 8),
            none.window(5, 3).globals(3),
            "MaskSpec::NONE.window(5, 3).globals(3)",
        ),
        (
            Extra::new("causal window(7,0) + 2 sinks"),
            sp(1, 1, 1, 50, 50, 8, 4),
            none.causal(0).window(7, 0).globals(2),
            "MaskSpec::NONE.causal(0).window(7, 0).globals(2)",
        ),
        (
            Extra::new("GQA 6:2, Dv != D"),
            sp(1, 6, 2, 17, 23, 8, 12),
            none.causal(6),
            "MaskSpec::NONE.causal(6)",
        ),
        (
            Extra::new("segment ids, causal"),
            sp(2, 1, 1, 30, 30, 8, 8),
            none.causal(0).segments(&data.seg_q, &data.seg_kv),
            "MaskSpec::NONE.causal(0).segments(&SEG_Q, &SEG_KV)",
        ),
        (
            Extra {
                half: true,
                ..Extra::new("f16 input, window(6,6)")
            },
            sp(1, 2, 2, 15, 26, 16, 8),
            none.window(6, 6),
            "MaskSpec::NONE.window(6, 6)",
        ),
        (
            Extra {
                split: Some(13),
                ..Extra::new("merge of split keys 0..13 | 13..31")
            },
            sp(1, 2, 1, 14, 31, 8, 8),
            none.causal(17),
            "MaskSpec::NONE.causal(17)",
        ),
        (
            Extra {
                amp: 3.0,
                ..Extra::new("BSHD, scale 0.7, softcap 5")
            },
            AttentionSpec::bshd(1, 2, 2, 11, 18, 8, 8)
                .with_scale(0.7)
                .with_softcap(5.0),
            none.window(4, -1),
            "MaskSpec::NONE.window(4, -1)",
        ),
        (
            Extra::new("kv_lens [20, 7], external-cache offset"),
            sp(2, 1, 1, 5, 20, 8, 8),
            none.causal(0).kv_lens(&data.kv_lens, true),
            "MaskSpec::NONE.causal(0).kv_lens(&KV_LENS, true)",
        ),
    ]
}

/// The generated source: the mask statics, one `CASE_n` static per case,
/// `CASES`, and the largest sizes the firmware must provide buffers for.
fn cases() -> String {
    let mut src = String::new();
    let mut rng = Rng(0x7e55_e7a0_0c0f_fee5);
    let mut max = (0usize, 0usize, 0usize, 0usize); // d, dv, y, lse
    let data = MaskData::new();
    let list = case_list(&data);
    data.write(&mut src);
    for (n, (extra, spec, mask, mask_src)) in list.iter().enumerate() {
        let r = Expected::compute(&mut rng, extra, spec, mask);
        max = (
            max.0.max(spec.head_dim),
            max.1.max(spec.v_head_dim),
            max.2.max(r.y.len()),
            max.3.max(r.lse.len()),
        );
        write_case(&mut src, n, extra, spec, mask_src, &r);
    }
    let names: Vec<String> = (0..list.len()).map(|n| format!("&CASE_{n}")).collect();
    writeln!(
        src,
        "pub static CASES: [&Case; {}] = [{}];",
        names.len(),
        names.join(", ")
    )
    .unwrap();
    writeln!(src, "pub const MAX_HEAD_DIM: usize = {};", max.0).unwrap();
    writeln!(src, "pub const MAX_V_HEAD_DIM: usize = {};", max.1).unwrap();
    writeln!(src, "pub const MAX_Y: usize = {};", max.2).unwrap();
    writeln!(src, "pub const MAX_ROWS: usize = {};", max.3).unwrap();
    src
}

/// A case's random inputs (as source) and its f64 reference outputs.
struct Expected {
    /// The `Input::F32` or `Input::F16` expression.
    input: String,
    y: Vec<f64>,
    lse: Vec<f64>,
    /// max |v| of the f32 values drawn for V.
    v_amp: f32,
}

impl Expected {
    /// Draws Q, K and V (in that order, from `rng`) and runs the reference,
    /// on the f16 roundings of the inputs when the case is half.
    fn compute(rng: &mut Rng, extra: &Extra, spec: &AttentionSpec, mask: &MaskSpec<'_>) -> Self {
        let (lq, lk, lv) = (
            spec.required_len(Tensor::Q).unwrap(),
            spec.required_len(Tensor::K).unwrap(),
            spec.required_len(Tensor::V).unwrap(),
        );
        let (q, k, v) = (
            rng.fill(lq, extra.amp),
            rng.fill(lk, extra.amp),
            rng.fill(lv, extra.amp),
        );
        let rows = spec.batch * spec.q_heads * spec.q_len;
        let mut y = vec![0.0f64; rows * spec.v_head_dim];
        let mut lse = vec![0.0f64; rows];
        let input = if extra.half {
            let h = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
            let (q, k, v) = (h(&q), h(&k), h(&v));
            reference::attention(spec, mask, &q, &k, &v, &mut y, &mut lse);
            format!(
                "Input::F16 {{ q: &[{}], k: &[{}], v: &[{}] }}",
                f16s(&q),
                f16s(&k),
                f16s(&v)
            )
        } else {
            reference::attention(spec, mask, &q, &k, &v, &mut y, &mut lse);
            format!(
                "Input::F32 {{ q: &[{}], k: &[{}], v: &[{}] }}",
                f32s(&q),
                f32s(&k),
                f32s(&v)
            )
        };
        let v_amp = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        Self {
            input,
            y,
            lse,
            v_amp,
        }
    }
}

/// `static CASE_n: Case = ...;`, every float through `from_bits`.
fn write_case(
    src: &mut String,
    n: usize,
    extra: &Extra,
    spec: &AttentionSpec,
    mask_src: &str,
    r: &Expected,
) {
    let y32: Vec<f32> = r.y.iter().map(|&x| x as f32).collect();
    let lse32: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
    let s = |st: tessera_core::Strides| {
        format!(
            "Strides {{ batch: {}, head: {}, seq: {} }}",
            st.batch, st.head, st.seq
        )
    };
    writeln!(
        src,
        "static CASE_{n}: Case = Case {{\n    name: {:?},\n    spec: AttentionSpec {{ batch: {}, q_heads: {}, kv_heads: {}, q_len: {}, kv_len: {}, head_dim: {}, v_head_dim: {}, scale: f32::from_bits({:#x}), softcap: f32::from_bits({:#x}), q: {}, k: {}, v: {}, out: {} }},\n    mask: {mask_src},\n    input: {},\n    y: &[{}],\n    lse: &[{}],\n    v_amp: f32::from_bits({:#x}),\n    split: {:?},\n}};",
        extra.name,
        spec.batch,
        spec.q_heads,
        spec.kv_heads,
        spec.q_len,
        spec.kv_len,
        spec.head_dim,
        spec.v_head_dim,
        spec.scale.to_bits(),
        spec.softcap.to_bits(),
        s(spec.q),
        s(spec.k),
        s(spec.v),
        s(spec.out),
        r.input,
        f32s(&y32),
        f32s(&lse32),
        r.v_amp.to_bits(),
        extra.split,
    )
    .unwrap();
}

fn f32s(x: &[f32]) -> String {
    x.iter()
        .map(|v| format!("f32::from_bits({:#x})", v.to_bits()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn f16s(x: &[f16]) -> String {
    x.iter()
        .map(|v| format!("f16::from_bits({:#x})", v.to_bits()))
        .collect::<Vec<_>>()
        .join(", ")
}
