//! With feature `cuda`: compile every `kernels/*.cu` with nvcc into a fatbin
//! (the targets and options in `kernels/nvcc.flags`: SASS for sm_80 and sm_90
//! plus compute_90 PTX), embed them, and keep the `-Xptxas -v` resource report
//! (registers, shared memory, spills per kernel) in `OUT_DIR/ptxas-report.txt`,
//! in the build output, in `TESSERA_PTXAS_REPORT` when that is set, and in the
//! crate as `PTXAS_REPORT`. Without the feature nothing here runs nvcc.
//!
//! nvcc is found through `NVCC`, then `PATH`, then the `nvidia-cuda-nvcc` pip
//! wheel (`site-packages/nvidia/cu13/bin/nvcc`) of `VIRTUAL_ENV`, of the
//! workspace's `.venv`, and of `python3`'s own site-packages.
//!
//! nvcc takes minutes on a small machine, so the fatbins and the report are
//! also kept in `<target>/tessera-cuda-kernels/<hash>/`, keyed by a hash of
//! the kernel sources, the flags and `nvcc --version`: `cargo test`, `cargo
//! clippy` and other profiles reuse one compilation.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=TESSERA_PTXAS_REPORT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let generated = out.join("kernels.rs");
    if env::var_os("CARGO_FEATURE_EMULATE").is_some() {
        build_emulator(&manifest, &out);
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        let stub = "/// Empty: built without the `cuda` feature.\npub const FATBINS: &[(&str, &[u8])] = &[];\n\
                    /// Empty: built without the `cuda` feature.\npub const PTXAS_REPORT: &str = \"\";\n";
        fs::write(&generated, stub).expect("write kernels.rs");
        return;
    }

    let nvcc = find_nvcc(&manifest).unwrap_or_else(|tried| {
        panic!(
            "tessera-cuda: feature `cuda` needs nvcc; set NVCC, put nvcc on PATH, or `pip install \
             nvidia-cuda-nvcc==13.0.* nvidia-cuda-crt==13.0.* nvidia-cuda-runtime==13.0.* nvidia-nvvm==13.0.*` \
             into ./.venv. Looked in: {tried}"
        )
    });
    let kernels = manifest.join("kernels");
    let flags: Vec<String> = fs::read_to_string(kernels.join("nvcc.flags"))
        .expect("read kernels/nvcc.flags")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels)
        .expect("read kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();

    let key = cache_key(&nvcc, &flags, &[&kernels]);
    let cache = cache_dir(&out).map(|d| d.join(format!("{key:016x}")));
    let stems: Vec<String> = sources
        .iter()
        .map(|s| {
            s.file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 kernel name")
                .to_string()
        })
        .collect();
    let results: Vec<(String, String)> =
        match cache.as_ref().and_then(|c| from_cache(c, &stems, &out)) {
            Some(r) => r,
            None => {
                // One nvcc per source, in parallel; each returns (stem, ptxas report).
                let r: Vec<(String, String)> = std::thread::scope(|s| {
                    let jobs: Vec<_> = sources
                        .iter()
                        .map(|src| {
                            let (nvcc, flags, out) = (&nvcc, &flags, &out);
                            s.spawn(move || compile(nvcc, flags, src, out))
                        })
                        .collect();
                    jobs.into_iter()
                        .map(|j| j.join().expect("nvcc thread"))
                        .collect()
                });
                if let Some(c) = &cache {
                    to_cache(c, &r, &out);
                }
                r
            }
        };

    let mut report = String::new();
    let mut table = String::from(
        "/// Every kernel module: (name, fatbin).\npub const FATBINS: &[(&str, &[u8])] = &[\n",
    );
    for (stem, ptxas) in &results {
        report.push_str(&format!("== {stem}.cu\n{ptxas}"));
        table.push_str(&format!(
            "    (\"{stem}\", include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\"))),\n"
        ));
    }
    table.push_str("];\n/// The `-Xptxas -v` report of the embedded kernels.\n");
    table.push_str("pub const PTXAS_REPORT: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/ptxas-report.txt\"));\n");
    fs::write(out.join("ptxas-report.txt"), &report).expect("write ptxas report");
    if let Some(path) = env::var_os("TESSERA_PTXAS_REPORT") {
        fs::write(&path, &report).expect("write TESSERA_PTXAS_REPORT");
    }
    for line in report.lines() {
        println!("ptxas: {line}");
    }
    let spills: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("bytes spill") && !l.contains(" 0 bytes spill stores"))
        .collect();
    println!(
        "cargo:warning=tessera-cuda: {} kernel entries compiled, {} with spills; report in {}",
        report.matches("Compiling entry function").count(),
        spills.len(),
        out.join("ptxas-report.txt").display()
    );
    fs::write(&generated, table).expect("write kernels.rs");
}

/// Feature `emulate`: the kernels as host C++ (`emu/launch.cpp`) in a static
/// library `tessera_emu`, linked into the crate.
fn build_emulator(manifest: &Path, out: &Path) {
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-env-changed=CXX");
    let cxx = env::var("CXX").unwrap_or_else(|_| "c++".into());
    let flags: Vec<String> = [
        "-std=c++20",
        "-O2",
        "-fPIC",
        "-Wall",
        "-Wno-unknown-pragmas",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let obj = out.join("tessera_emu.o");
    let key = cache_key(
        Path::new(&cxx),
        &flags,
        &[&manifest.join("kernels"), &manifest.join("emu")],
    );
    let cached = cache_dir(out).map(|d| d.join(format!("emu-{key:016x}.o")));
    if cached.as_ref().is_none_or(|c| fs::copy(c, &obj).is_err()) {
        let status = Command::new(&cxx)
            .args(&flags)
            .args(["-c", "-o"])
            .arg(&obj)
            .arg(manifest.join("emu/launch.cpp"))
            .status()
            .unwrap_or_else(|e| {
                panic!("tessera-cuda: feature `emulate` needs a C++20 compiler ({cxx}): {e}")
            });
        assert!(
            status.success(),
            "tessera-cuda: {cxx} failed on emu/launch.cpp"
        );
        if let Some(c) = &cached {
            let tmp = c.with_extension("tmp");
            if c.parent().is_some_and(|d| fs::create_dir_all(d).is_ok())
                && fs::copy(&obj, &tmp).is_ok()
            {
                let _ = fs::rename(&tmp, c);
            }
        }
    }
    let lib = out.join("libtessera_emu.a");
    let _ = fs::remove_file(&lib);
    let status = Command::new("ar")
        .arg("crs")
        .arg(&lib)
        .arg(&obj)
        .status()
        .expect("tessera-cuda: run ar");
    assert!(status.success(), "tessera-cuda: ar failed");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=tessera_emu");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

/// FNV-1a over the sources in `dirs` (names and bytes), the flags and the
/// compiler's path and version: the identity of a compilation.
fn cache_key(tool: &Path, flags: &[String], dirs: &[&Path]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    };
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| fs::read_dir(d).expect("read a source folder"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        eat(f
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default());
        eat(&fs::read(&f).unwrap_or_default());
    }
    for f in flags {
        eat(f.as_bytes());
    }
    eat(tool.as_os_str().as_encoded_bytes());
    if let Ok(o) = Command::new(tool).arg("--version").output() {
        eat(&o.stdout);
    }
    h
}

/// `<target>/tessera-cuda-kernels`, from `OUT_DIR` = `<target>/[<triple>/]<profile>/build/<pkg>/out`.
fn cache_dir(out: &Path) -> Option<PathBuf> {
    let build = out
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))?;
    Some(build.parent()?.parent()?.join("tessera-cuda-kernels"))
}

fn from_cache(dir: &Path, stems: &[String], out: &Path) -> Option<Vec<(String, String)>> {
    stems
        .iter()
        .map(|stem| {
            let report = fs::read_to_string(dir.join(format!("{stem}.ptxas"))).ok()?;
            fs::copy(
                dir.join(format!("{stem}.fatbin")),
                out.join(format!("{stem}.fatbin")),
            )
            .ok()?;
            Some((stem.clone(), report))
        })
        .collect()
}

fn to_cache(dir: &Path, results: &[(String, String)], out: &Path) {
    // Best effort: a failed cache write only costs a later recompilation.
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    for (stem, report) in results {
        let tmp = dir.join(format!("{stem}.fatbin.tmp"));
        if fs::copy(out.join(format!("{stem}.fatbin")), &tmp).is_ok()
            && fs::rename(&tmp, dir.join(format!("{stem}.fatbin"))).is_ok()
        {
            let _ = fs::write(dir.join(format!("{stem}.ptxas")), report);
        }
    }
}

/// Compile `src` to `OUT_DIR/<stem>.fatbin`; returns the ptxas lines.
fn compile(nvcc: &Path, flags: &[String], src: &Path, out: &Path) -> (String, String) {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 kernel name")
        .to_string();
    let fatbin = out.join(format!("{stem}.fatbin"));
    let result = Command::new(nvcc)
        .args(flags)
        .arg("-fatbin")
        .arg("-o")
        .arg(&fatbin)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("tessera-cuda: cannot run {}: {e}", nvcc.display()));
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    if !result.status.success() {
        panic!(
            "tessera-cuda: nvcc failed on {} ({}):\n{stderr}",
            src.display(),
            result.status
        );
    }
    let ptxas = stderr
        .lines()
        .filter(|l| {
            l.starts_with("ptxas") || l.trim_start().starts_with(|c: char| c.is_ascii_digit())
        })
        .filter(|l| !l.contains("Compile time"))
        .map(|l| format!("{l}\n"))
        .collect();
    (stem, ptxas)
}

/// nvcc from `NVCC`, `PATH` or a pip wheel; on failure, the places tried.
fn find_nvcc(manifest: &Path) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(format!("NVCC={}", p.display()));
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
        tried.push("PATH".into());
    }
    let mut site_dirs = Vec::new();
    let mut venvs: Vec<PathBuf> = env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(root) = manifest.parent() {
        venvs.push(root.join(".venv"));
    }
    for venv in venvs {
        if let Ok(entries) = fs::read_dir(venv.join("lib")) {
            for e in entries.flatten() {
                site_dirs.push(e.path().join("site-packages"));
            }
        }
    }
    if let Ok(o) = Command::new("python3")
        .args([
            "-c",
            "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))",
        ])
        .output()
    {
        site_dirs.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from),
        );
    }
    for dir in site_dirs {
        let p = dir.join("nvidia/cu13/bin/nvcc");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(tried.join(", "))
}
