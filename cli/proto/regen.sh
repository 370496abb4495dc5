#!/usr/bin/env bash
# Regenerates cli/src/proto/onnx.rs from cli/proto/onnx-ml.proto (copied from the
# onnx 1.23.2 wheel: onnx/onnx-ml.proto). The generated file is checked in so that
# building the CLI needs neither protoc nor prost-build. Run it after replacing the .proto.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/gen"
cat >"$work/Cargo.toml" <<'TOML'
[package]
name = "onnx-proto-gen"
version = "0.0.0"
edition = "2021"
[dependencies]
prost = "0.14"
[build-dependencies]
prost-build = "0.14"
protoc-bin-vendored = "3"
TOML
echo 'fn main() {}' >"$work/src/main.rs"
cat >"$work/build.rs" <<RS
fn main() {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path().unwrap());
    prost_build::Config::new()
        .out_dir("$work/gen")
        .compile_protos(&["$here/onnx-ml.proto"], &["$here"])
        .unwrap();
}
RS
cargo build --quiet --manifest-path "$work/Cargo.toml" --target-dir "$work/target"
cp "$work/gen/onnx.rs" "$here/../src/proto/onnx.rs"
echo "wrote cli/src/proto/onnx.rs"
