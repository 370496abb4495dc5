//! The ONNX reader on arbitrary bytes: `model::decode`, then on whatever
//! loads, `inspect` (sites, table, JSON) and `rewrite` under the default
//! policy. Invariants: no panic; a rewritten model encodes and decodes
//! again; rewriting it a second time rewrites nothing (the rewrite is
//! idempotent, as `cli/src/rewrite` promises).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tessera_cli::{inspect, model, rewrite};

fuzz_target!(|data: &[u8]| {
    // A folder that does not exist: external data must fail cleanly.
    let path = Path::new("/nonexistent-tessera-fuzz/model.onnx");
    let Ok(mut m) = model::decode(data, path) else {
        return;
    };
    let sites = inspect::sites(&m);
    let _ = inspect::table(&m, &sites);
    let _ = inspect::json(&m, &sites);
    let policy = rewrite::Policy::default();
    let Ok(report) = rewrite::rewrite(&mut m, &policy, None) else {
        return;
    };
    let bytes = m.proto.encode_to_vec();
    let mut again = model::decode(&bytes, path).expect("a rewritten model decodes again");
    if !report.rewritten.is_empty() {
        let second = rewrite::rewrite(&mut again, &policy, None).expect("second rewrite");
        assert!(
            second.rewritten.is_empty(),
            "rewriting a rewritten model changed it again"
        );
    }
});
