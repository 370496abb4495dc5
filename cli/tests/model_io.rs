//! Reading, writing and matching on the bundled models and on bad input.

use std::path::{Path, PathBuf};

use prost::Message;
use tessera_cli::graph::GraphIndex;
use tessera_cli::model::{load, save};
use tessera_cli::proto::{tensor_proto::DataLocation, StringStringEntryProto, TensorProto};
use tessera_cli::rewrite::{parse_layers, rewrite, Policy};
use tessera_cli::sites::{find_sites, SiteKind};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn round_trip_keeps_every_field() {
    for name in ["bert_eager_opset17", "modernbert_attention_opset24"] {
        let path = models().join(format!("{name}.onnx"));
        let m = load(&path).unwrap();
        let dir = tmp(name);
        let out = dir.join("copy.onnx");
        save(&m, &out).unwrap();
        let again = load(&out).unwrap();
        assert_eq!(again.proto, m.proto, "{name}: decode(encode(m)) differs");
        // The onnx writer and prost emit fields in tag order, so the bytes match too.
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&path).unwrap(),
            "{name}: bytes differ"
        );
    }
}

#[test]
fn non_onnx_empty_and_truncated_files_are_refused_by_name() {
    let dir = tmp("bad");
    let text = dir.join("notes.onnx");
    std::fs::write(&text, "this is a text file, not a model\n").unwrap();
    let e = load(&text).unwrap_err().0;
    assert!(
        e.contains("notes.onnx") && e.contains("not an ONNX model"),
        "{e}"
    );

    let empty = dir.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let e = load(&empty).unwrap_err().0;
    assert!(e.contains("empty"), "{e}");

    let full = std::fs::read(models().join("bert_eager_opset17.onnx")).unwrap();
    for cut in [full.len() / 2, full.len() - 7, 100] {
        let t = dir.join("cut.onnx");
        std::fs::write(&t, &full[..cut]).unwrap();
        let e = load(&t).unwrap_err().0;
        assert!(
            e.contains("cut.onnx") && (e.contains("truncated")),
            "cut at {cut}: {e}"
        );
    }
}

fn external(name: &str, location: &str, offset: u64, length: u64) -> TensorProto {
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    TensorProto {
        name: Some(name.into()),
        dims: vec![(length / 4) as i64],
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", length.to_string()),
        ],
        ..Default::default()
    }
}

#[test]
fn external_data_outside_the_folder_or_past_its_end_is_refused() {
    let root = tmp("ext");
    let dir = root.join("model");
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    std::fs::write(root.join("secret.bin"), [0u8; 64]).unwrap();
    std::fs::write(dir.join("weights/w.bin"), [0u8; 64]).unwrap();
    let base = load(&models().join("bert_eager_opset17.onnx"))
        .unwrap()
        .proto;
    let write = |t: TensorProto| {
        let mut m = base.clone();
        m.graph.as_mut().unwrap().initializer.push(t);
        let p = dir.join("m.onnx");
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        p
    };
    let e = load(&write(external("x", "../secret.bin", 0, 64)))
        .unwrap_err()
        .0;
    assert!(
        e.contains("outside the model's folder") && e.contains("initializer 'x'"),
        "{e}"
    );
    let e = load(&write(external("x", "weights/../../secret.bin", 0, 64)))
        .unwrap_err()
        .0;
    assert!(e.contains("outside"), "{e}");
    let e = load(&write(external("x", "/etc/passwd", 0, 4)))
        .unwrap_err()
        .0;
    assert!(e.contains("absolute"), "{e}");
    let e = load(&write(external("x", "weights/w.bin", 32, 64)))
        .unwrap_err()
        .0;
    assert!(e.contains("past its end"), "{e}");
    let e = load(&write(external("x", "weights/missing.bin", 0, 4)))
        .unwrap_err()
        .0;
    assert!(e.contains("missing.bin"), "{e}");

    // A valid reference loads, and saving elsewhere copies the file with its path kept.
    let m = load(&write(external("x", "weights/w.bin", 16, 48))).unwrap();
    let out = root.join("elsewhere/out.onnx");
    save(&m, &out).unwrap();
    assert_eq!(
        std::fs::read(root.join("elsewhere/weights/w.bin"))
            .unwrap()
            .len(),
        64
    );
    let back = load(&out).unwrap();
    let t = back
        .graph()
        .initializer
        .iter()
        .find(|t| t.name() == "x")
        .unwrap();
    assert_eq!(
        tessera_cli::model::external_entry(t, "location"),
        Some("weights/w.bin")
    );
}

/// (model, sites, kinds, windowed sites); the Llama-style models are causal with 2 KV heads.
const EXPECTED: &[(&str, usize, SiteKind, usize)] = &[
    ("bert_eager_opset17", 2, SiteKind::DecomposedEager, 0),
    ("bert_sdpa_opset20", 2, SiteKind::DecomposedSplitScale, 0),
    ("bert_attention_opset24", 2, SiteKind::OnnxAttention, 0),
    ("modernbert_eager_opset17", 6, SiteKind::DecomposedEager, 4),
    (
        "modernbert_sdpa_opset20",
        6,
        SiteKind::DecomposedSplitScale,
        4,
    ),
    (
        "modernbert_attention_opset24",
        6,
        SiteKind::OnnxAttention,
        4,
    ),
    ("llama_eager_opset17", 2, SiteKind::DecomposedEager, 0),
    ("llama_sdpa_opset20", 2, SiteKind::DecomposedSplitScale, 0),
    ("llama_attention_opset24", 2, SiteKind::OnnxAttention, 0),
];

#[test]
fn bundled_models_have_the_expected_sites() {
    for &(name, count, kind, windowed) in EXPECTED {
        let llama = name.starts_with("llama");
        let m = load(&models().join(format!("{name}.onnx"))).unwrap();
        let sites = find_sites(&GraphIndex::new(m.graph()));
        assert_eq!(sites.len(), count, "{name}");
        for s in &sites {
            assert_eq!(s.kind, kind, "{name} site {}", s.layer);
            assert_eq!(
                (s.q_heads, s.kv_heads, s.head_dim, s.mask.causal),
                (Some(4), Some(if llama { 2 } else { 4 }), Some(32), llama),
                "{name} site {}",
                s.layer
            );
            assert!(
                (s.scale.unwrap() - 1.0 / 32f64.sqrt()).abs() < 1e-6,
                "{name}"
            );
            assert!(s.exact.is_ok(), "{name}: {:?}", s.exact);
            assert!(
                s.mask.padding.is_some(),
                "{name} site {}: {}",
                s.layer,
                s.mask.describe()
            );
            // ModernBERT: global layers 0 and 3, |i - j| <= 64 elsewhere.
            let expect_window = windowed > 0 && s.layer % 3 != 0;
            assert_eq!(
                s.mask.window,
                expect_window.then_some((64, 64)),
                "{name} site {}",
                s.layer
            );
        }
        assert_eq!(
            sites.iter().filter(|s| s.mask.window.is_some()).count(),
            windowed,
            "{name}"
        );
    }
}

#[test]
fn rewrite_swaps_every_site_and_twice_is_a_no_op() {
    for &(name, count, _, _) in EXPECTED {
        let mut m = load(&models().join(format!("{name}.onnx"))).unwrap();
        let before = m.clone();
        let r = rewrite(&mut m, &Policy::Exact, None).unwrap();
        assert_eq!(r.rewritten.len(), count, "{name}");
        let g = GraphIndex::new(m.graph());
        let sites = find_sites(&g);
        assert!(sites.iter().all(|s| s.kind == SiteKind::Tessera), "{name}");
        assert_eq!(
            m.graph().initializer,
            before.graph().initializer,
            "{name}: initializers changed"
        );
        assert_eq!(m.opset("ai.tessera"), Some(1));
        assert_eq!(m.opset(""), before.opset(""));
        let once = m.proto.clone();
        let r2 = rewrite(&mut m, &Policy::Exact, None).unwrap();
        assert!(
            r2.rewritten.is_empty() && m.proto == once,
            "{name}: second rewrite changed the model"
        );
    }
}

#[test]
fn layers_and_policies_parse_and_select() {
    assert_eq!(
        parse_layers("0,2,4-6").unwrap(),
        [0, 2, 4, 5, 6].into_iter().collect()
    );
    assert!(parse_layers("3-1").is_err() && parse_layers("x").is_err());
    assert_eq!(
        Policy::parse("window=64,64,global-every=3,globals=2").unwrap(),
        Policy::Window {
            left: 64,
            right: 64,
            global_every: 3,
            globals: 2
        }
    );
    for p in [
        "exact",
        "window=64,64",
        "window=64,0,global-every=3,globals=2",
        "topk=8",
        "topk=8,window=16,globals=4",
    ] {
        assert_eq!(
            Policy::parse(p).unwrap().to_string(),
            p,
            "Display spells --policy"
        );
    }
    assert!(
        Policy::parse("window=64").is_err()
            && Policy::parse("window=-5,0").is_err()
            && Policy::parse("fast").is_err()
    );
    let mut m = load(&models().join("bert_sdpa_opset20.onnx")).unwrap();
    let r = rewrite(&mut m, &Policy::Exact, Some(&parse_layers("1").unwrap())).unwrap();
    assert_eq!((r.rewritten.len(), r.kept.len()), (1, 1));
    let kinds: Vec<SiteKind> = find_sites(&GraphIndex::new(m.graph()))
        .iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(kinds, [SiteKind::DecomposedSplitScale, SiteKind::Tessera]);
}

#[test]
fn the_report_names_each_site_its_op_and_why_others_were_kept() {
    // The dynamo eager export (opset 20): Kᵀ through 3-D, scale after the MatMul.
    let mut m = load(&models().join("bert_eager_opset20.onnx")).unwrap();
    let r = rewrite(&mut m, &Policy::Exact, None).unwrap();
    assert_eq!(r.policy, Policy::Exact);
    let anchors: Vec<&str> = r.rewritten.iter().map(|w| w.site.anchor.as_str()).collect();
    assert_eq!(anchors, ["node_softmax", "node_softmax_1"]);
    for (i, w) in r.rewritten.iter().enumerate() {
        assert_eq!(w.site.layer, i);
        assert_eq!((w.kind, w.op), (SiteKind::DecomposedEager, "Attention"));
        assert!(w.replaced >= 4, "{w:?}");
        assert!(w.note.starts_with("exact"), "{w:?}");
    }
    assert!(r.kept.is_empty() && r.pruned > 0);

    let mut m = load(&models().join("bert_eager_opset17.onnx")).unwrap();
    let topk = Policy::parse("topk=8").unwrap();
    let r = rewrite(&mut m, &topk, None).unwrap();
    assert!(r.rewritten.is_empty());
    assert_eq!(r.kept.len(), 2);
    assert!(r.kept.iter().all(|k| k.why.contains("bidirectional")));

    let mut m = load(&models().join("llama_sdpa_opset20.onnx")).unwrap();
    let r = rewrite(&mut m, &topk, None).unwrap();
    assert_eq!(r.rewritten.len(), 2);
    assert!(r.rewritten.iter().all(|w| w.op == "TopKAttention"));
}
