# Shared helpers for Tessera's scripts. Source it; every helper installs what
# is missing and is a no-op when it is already there, so the scripts work on a
# fresh machine with or without CI set.
# Scripts run in strict mode. An interactive shell that sources this file
# (e.g. `source scripts/lib.sh; need_venv`) keeps its own options: strict
# mode there would close the terminal on the next failing command.
# scripts/venv.sh is the way to get the venv without sourcing anything.
if [[ $- != *i* ]]; then
    set -euo pipefail
fi

TESSERA_ROOT=${TESSERA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${TESSERA_VENV:-$TESSERA_ROOT/.venv}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log() { printf '\n== %s\n' "$*" >&2; }

# Python packages pinned in one place (python/requirements.txt) go into a local
# venv. Extra arguments are additional pip requirements.
need_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --upgrade pip
    fi
    local stamp="$VENV/.req-$(cat "$TESSERA_ROOT/python/requirements.txt" "$@" 2>/dev/null | sha1sum | cut -c1-12)"
    if [ ! -e "$stamp" ]; then
        log "installing Python requirements"
        "$VENV/bin/pip" install --quiet -r "$TESSERA_ROOT/python/requirements.txt" "$@"
        touch "$stamp"
    fi
    export ORT_DYLIB_PATH
    ORT_DYLIB_PATH=$(ort_dylib)
}

# A venv of its own holding exactly the pinned packages given, for tools that
# must not share the test venv (build tools, onnxruntime-genai): made anew
# whenever the pins change. need_pinned_venv DIR PIN...
need_pinned_venv() {
    local dir=$1
    shift
    local stamp="$dir/.req-$(echo "$*" | sha1sum | cut -c1-12)"
    [ -e "$stamp" ] && return 0
    log "venv $dir: $*"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$stamp"
}

# Full path of the onnxruntime shared library inside the venv.
ort_dylib() {
    ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1
}

# rustup targets and components.
need_target() {
    local installed
    installed=$(rustup target list --installed)
    for t in "$@"; do
        grep -qx "$t" <<<"$installed" || { log "rustup target add $t"; rustup target add "$t"; }
    done
}

need_component() { # need_component TOOLCHAIN COMPONENT...
    local tc=$1
    shift
    rustup toolchain list | grep -q "^$tc" || { log "installing toolchain $tc"; rustup toolchain install "$tc" --profile minimal; }
    for c in "$@"; do
        rustup component list --toolchain "$tc" --installed | grep -q "^$c" || { log "rustup component add $c ($tc)"; rustup component add --toolchain "$tc" "$c"; }
    done
}

# Debian packages; apt-get update runs once per script run.
need_apt() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ -z "${TESSERA_APT_UPDATED:-}" ]; then
        log "apt-get update"
        $sudo apt-get update -qq
        export TESSERA_APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
