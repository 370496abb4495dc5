# Formatting and clippy for the whole workspace.
source "$(dirname "$0")/../lib.sh"
cd "$TESSERA_ROOT"
need_component stable-x86_64-unknown-linux-gnu rustfmt clippy 2>/dev/null || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
