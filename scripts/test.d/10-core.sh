# tessera-core: unit and property tests against the f64 reference, the no_std
# builds for Cortex-M and RISC-V, an aarch64 build of the NEON kernel, and Miri
# on the portable path.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
cargo test -p tessera-core --all-targets
cargo test -p tessera-core --doc
need_target thumbv7em-none-eabihf riscv32imac-unknown-none-elf
cargo build -p tessera-core --target thumbv7em-none-eabihf --release
cargo build -p tessera-core --target riscv32imac-unknown-none-elf --release
# The NEON kernel only compiles on aarch64: build it (it is not run here).
need_target aarch64-unknown-linux-gnu
cargo build -p tessera-core --features std --target aarch64-unknown-linux-gnu
if need_component nightly miri rust-src; then
    cargo +nightly miri test -p tessera-core-miri
else
    echo "miri: nightly toolchain unavailable" >&2
    exit 1
fi
