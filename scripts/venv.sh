#!/usr/bin/env bash
# Creates the Python venv the tools and tests use (./.venv, or $TESSERA_VENV)
# if it is missing, installs python/requirements.txt into it, and prints what
# to use. It runs in its own process, so it never changes your shell's options
# (`source scripts/lib.sh` would turn on `set -euo pipefail` in your shell).
#   scripts/venv.sh            prints the venv's python
#   eval "$(scripts/venv.sh --env)"
#                              sets TESSERA_PYTHON (for tessera verify/bench) and
#                              ORT_DYLIB_PATH (for the Rust ort tests) in your shell
source "$(dirname "$0")/lib.sh"
need_venv >&2
case "${1:-}" in
--env)
    printf 'export TESSERA_PYTHON=%q\n' "$VENV/bin/python"
    printf 'export ORT_DYLIB_PATH=%q\n' "$ORT_DYLIB_PATH"
    ;;
"") echo "$VENV/bin/python" ;;
*)
    echo "usage: scripts/venv.sh [--env]" >&2
    exit 2
    ;;
esac
