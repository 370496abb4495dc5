//! `TesseraRegisterCustomOps`: the library's second entry point, for a
//! host that links the library in and registers it with the C API's
//! `RegisterCustomOpsUsingFunction` (the Python wheel does not expose that
//! call, so the test drives it through the `ort` crate).
//!
//! ORT resolves the name with `dlsym` over the whole process, so the test
//! first shows the name is not found, then loads the library with
//! `RTLD_GLOBAL` (what linking it in does) and runs `ai.tessera.Attention`
//! registered that way against the f64 oracle and against a session that
//! loaded the library by path. Its own test binary, so no other test has
//! loaded the library into the process before.

#[path = "shared/mod.rs"]
mod shared;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;

use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::Tensor;
use ort::AsPointer;
use tessera_tests::onnx::{self, elem, Attr, Node};
use tessera_tests::oracle::Problem;
use tessera_tests::{plugin_path, Rng};

use shared::{env, session};

/// The entry point under test.
const ENTRY: &CStr = c"TesseraRegisterCustomOps";

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
}

/// `dlfcn.h` (glibc).
const RTLD_NOW: c_int = 0x2;
const RTLD_GLOBAL: c_int = 0x100;

/// `RegisterCustomOpsUsingFunction(options, name)`; the error as text.
fn register_by_name(builder: &mut SessionBuilder, name: &CStr) -> Result<(), String> {
    let api = ort::api();
    // SAFETY: the builder's options pointer is valid while `builder` lives;
    // `name` is NUL-terminated.
    let status = unsafe { (api.RegisterCustomOpsUsingFunction)(builder.ptr_mut(), name.as_ptr()) };
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status from ORT carries a NUL-terminated message;
    // it is released once, after the message is copied.
    unsafe {
        let msg = CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        Err(msg)
    }
}

#[test]
fn tessera_register_custom_ops_registers_through_register_custom_ops_using_function() {
    let Some(env) = env() else { return };
    let (b, h, s, d) = (1usize, 2usize, 7usize, 8usize);
    let p = Problem {
        batch: b,
        q_heads: h,
        kv_heads: h,
        q_len: s,
        kv_new: s,
        head_dim: d,
        v_head_dim: d,
        causal: true,
        left: -1,
        right: -1,
        ..Problem::default()
    };
    let node = Node {
        op_type: "Attention".into(),
        domain: "ai.tessera".into(),
        inputs: vec!["Q".into(), "K".into(), "V".into()],
        outputs: vec!["Y".into()],
        attrs: vec![("is_causal".into(), Attr::Int(1))],
    };
    let model = onnx::model(
        &node,
        &[("Q", elem::FLOAT), ("K", elem::FLOAT), ("V", elem::FLOAT)],
        &[("Y", elem::FLOAT)],
        &[("", 21), ("ai.tessera", 1)],
    );

    // Not in the process yet: ORT cannot find the name.
    let mut builder = Session::builder(env).unwrap();
    let e = register_by_name(&mut builder, ENTRY).unwrap_err();
    assert!(e.contains("TesseraRegisterCustomOps"), "{e}");

    let path = CString::new(plugin_path().as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the library stays loaded for the
    // rest of the process (never closed), as a linked-in library would.
    let handle = unsafe { dlopen(path.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
    assert!(!handle.is_null(), "dlopen {:?} failed", plugin_path());

    let mut builder = Session::builder(env).unwrap();
    register_by_name(&mut builder, ENTRY).unwrap();
    let mut by_name = builder.commit_from_memory(&model).unwrap();
    let mut by_path = session(env, &model, 1).unwrap();

    let mut rng = Rng::new(12);
    let (q, k, v) = (
        rng.vec(b * h * s * d),
        rng.vec(b * h * s * d),
        rng.vec(b * h * s * d),
    );
    let shape = vec![b as i64, h as i64, s as i64, d as i64];
    let run = |sess: &mut Session| -> Vec<f32> {
        let out = sess
            .run(ort::inputs![
                "Q" => Tensor::from_array((shape.clone(), q.clone())).unwrap(),
                "K" => Tensor::from_array((shape.clone(), k.clone())).unwrap(),
                "V" => Tensor::from_array((shape.clone(), v.clone())).unwrap(),
            ])
            .unwrap();
        out["Y"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    let y = run(&mut by_name);
    let (want, _) = p.attention(&q, &k, &v);
    assert_eq!(y.len(), want.len());
    for (i, (g, w)) in y.iter().zip(&want).enumerate() {
        assert!((*g as f64 - w).abs() < 1e-5, "Y[{i}] = {g}, want {w}");
    }
    assert_eq!(y, run(&mut by_path), "same library, same bits");
}
