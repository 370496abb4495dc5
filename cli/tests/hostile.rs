//! Hostile models through the `tessera` binary: each ends in a clear error
//! (exit 2, a message naming the file and the rule), never a panic (exit
//! 101), a stack overflow (a signal) or unbounded memory; and a model with
//! more than 2 GB of external data works (inspect and rewrite), without
//! reading the data.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use tessera_cli::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation,
    tensor_shape_proto::dimension::Value as DimValue, tensor_shape_proto::Dimension, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn input(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimValue::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Run `tessera ARGS` and return (exit code, stderr); a signal is a failure.
fn tessera(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("tessera {args:?} died of a signal: {err}"));
    (code, err)
}

/// `inspect` and `rewrite` on `m` both fail with exit 2, without a panic,
/// and with every word of `rule` in the message.
fn refused(name: &str, m: &ModelProto, rule: &[&str]) {
    let dir = tmp(name);
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    refused_file(&path, rule);
    let _ = std::fs::remove_dir_all(&dir);
}

fn refused_file(path: &Path, rule: &[&str]) {
    let p = path.to_str().unwrap();
    let out = path.with_extension("out.onnx");
    for args in [
        vec!["inspect", p],
        vec!["rewrite", p, "-o", out.to_str().unwrap()],
    ] {
        let (code, err) = tessera(&args);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_eq!(code, 2, "{args:?}: exit {code}: {err}");
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{args:?}: the message names no file: {err}"
        );
        for w in rule {
            assert!(err.contains(w), "{args:?}: '{w}' missing from: {err}");
        }
    }
}

/// A control-flow node whose body holds the same node, `depth` deep.
fn nested(op: &str, attr: &[&str], depth: usize) -> ModelProto {
    let mut body = GraphProto {
        name: Some("leaf".into()),
        node: vec![node("Identity", "leaf", &["x"], "y")],
        output: vec![input("y", &[1])],
        ..Default::default()
    };
    for i in 0..depth {
        let mut n = node(op, &format!("{op}{i}"), &["c"], "y");
        // The first body attribute holds the deeper level, any other a
        // leaf (a copy at every level would grow as 2^depth).
        let leaf = GraphProto {
            name: Some("leaf".into()),
            output: vec![input("y", &[1])],
            ..Default::default()
        };
        let deeper = std::mem::take(&mut body);
        n.attribute = attr
            .iter()
            .enumerate()
            .map(|(j, a)| AttributeProto {
                name: Some(a.to_string()),
                r#type: Some(AttributeType::Graph as i32),
                g: Some(if j == 0 { deeper.clone() } else { leaf.clone() }),
                ..Default::default()
            })
            .collect();
        body = GraphProto {
            name: Some(format!("g{i}")),
            node: vec![n],
            output: vec![input("y", &[1])],
            ..Default::default()
        };
    }
    body.input = vec![input("x", &[1]), input("c", &[])];
    model(body)
}

#[test]
fn if_and_loop_bodies_nested_1000_deep_are_refused() {
    // Building and encoding 1000 levels recurses; give it room.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            refused(
                "if1000",
                &nested("If", &["then_branch", "else_branch"], 1000),
                &["not a valid ModelProto", "recursion limit"],
            );
            refused(
                "loop1000",
                &nested("Loop", &["body"], 1000),
                &["not a valid ModelProto", "recursion limit"],
            );
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn dims_of_2_pow_62_and_negative_dims_are_refused() {
    let g = |inp: ValueInfoProto, init: Vec<TensorProto>| GraphProto {
        node: vec![node("Identity", "id", &["x"], "y")],
        input: vec![inp],
        initializer: init,
        output: vec![input("y", &[1])],
        ..Default::default()
    };
    refused(
        "neg",
        &model(g(input("x", &[1, -3]), vec![])),
        &["graph input 'x'", "dim 1 is -3", ">= 0"],
    );
    refused(
        "huge",
        &model(g(input("x", &[1 << 62, 4]), vec![])),
        &["graph input 'x'", "2^63"],
    );
    let w = |dims: Vec<i64>| TensorProto {
        name: Some("w".into()),
        dims,
        data_type: Some(1),
        raw_data: Some(vec![0; 16]),
        ..Default::default()
    };
    refused(
        "huge_init",
        &model(g(input("x", &[1]), vec![w(vec![1 << 62])])),
        &["initializer 'w'", "raw_data holds 16 bytes"],
    );
    refused(
        "overflow_init",
        &model(g(input("x", &[1]), vec![w(vec![1 << 62, 1 << 62])])),
        &["initializer 'w'", "2^63"],
    );
    refused(
        "neg_init",
        &model(g(input("x", &[1]), vec![w(vec![-4])])),
        &["initializer 'w'", "dim 0 is -4"],
    );
}

#[test]
fn a_cycle_and_inputs_naming_nothing_are_refused() {
    let cycle = GraphProto {
        node: vec![
            node("Add", "a", &["x", "c"], "b"),
            node("Relu", "r", &["b"], "c"),
        ],
        input: vec![input("x", &[1])],
        output: vec![input("c", &[1])],
        ..Default::default()
    };
    refused("cycle", &model(cycle), &["cycle", "node '"]);
    let dangling = GraphProto {
        node: vec![node("Add", "a", &["x", "ghost"], "y")],
        input: vec![input("x", &[1])],
        output: vec![input("y", &[1])],
        ..Default::default()
    };
    refused(
        "dangling",
        &model(dangling),
        &["node 'a' (Add)", "'ghost'", "not a graph input"],
    );
}

fn with_external(location: &str) -> ModelProto {
    let entry = |k: &str, v: &str| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    model(GraphProto {
        node: vec![node("Add", "a", &["x", "w"], "y")],
        input: vec![input("x", &[4])],
        output: vec![input("y", &[4])],
        initializer: vec![TensorProto {
            name: Some("w".into()),
            dims: vec![4],
            data_type: Some(1),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![entry("location", location), entry("length", "16")],
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[test]
fn external_data_escaping_the_folder_is_refused() {
    let dir = tmp("escape");
    let inner = dir.join("model");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(dir.join("secret.bin"), [0u8; 16]).unwrap();
    let secret = dir.join("secret.bin");
    for (name, loc, rule) in [
        (
            "dotdot",
            "../secret.bin".to_string(),
            "outside the model's folder",
        ),
        (
            "deep_dotdot",
            "a/../../secret.bin".to_string(),
            "outside the model's folder",
        ),
        (
            "absolute",
            secret.to_str().unwrap().to_string(),
            "is absolute",
        ),
        ("symlink", "link.bin".to_string(), "resolves outside"),
    ] {
        let path = inner.join(format!("{name}.onnx"));
        std::fs::write(&path, with_external(&loc).encode_to_vec()).unwrap();
        #[cfg(unix)]
        if name == "symlink" {
            let _ = std::fs::remove_file(inner.join("link.bin"));
            std::os::unix::fs::symlink(&secret, inner.join("link.bin")).unwrap();
        }
        refused_file(&path, &["initializer 'w'", rule]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bundled model plus one initializer whose 2.25 GB of external data is
/// a sparse file: inspect and rewrite work, the data is not read (the
/// rewrite writes next to it, so nothing is copied), and it is deleted.
#[test]
fn a_model_with_more_than_2_gb_of_external_data_works() {
    let dir = tmp("big");
    let big = dir.join("big.bin");
    let len: u64 = (2 << 30) + (1 << 28);
    std::fs::File::create(&big).unwrap().set_len(len).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/bert_eager_opset17.onnx");
    let mut m = ModelProto::decode(std::fs::read(src).unwrap().as_slice()).unwrap();
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    m.graph.as_mut().unwrap().initializer.push(TensorProto {
        name: Some("big_table".into()),
        dims: vec![(len / 4) as i64],
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            entry("location", "big.bin".into()),
            entry("offset", "0".into()),
            entry("length", len.to_string()),
        ],
        ..Default::default()
    });
    let path = dir.join("big.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let out = dir.join("big.rewritten.onnx");
    let (code, err) = tessera(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 0, "inspect: {err}");
    let (code, err) = tessera(&[
        "rewrite",
        path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "rewrite: {err}");
    let r = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let t = r
        .graph
        .unwrap()
        .initializer
        .into_iter()
        .find(|t| t.name() == "big_table")
        .expect("the big initializer is kept");
    assert!(t.external_data.iter().any(|e| e.value() == "big.bin"));
    assert!(
        r.opset_import.iter().any(|o| o.domain() == "ai.tessera"),
        "nothing was rewritten"
    );
    let (code, err) = tessera(&["inspect", out.to_str().unwrap()]);
    assert_eq!(code, 0, "inspect of the rewrite: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
