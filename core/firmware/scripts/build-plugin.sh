#!/usr/bin/env bash
# build-plugin.sh OUT.so: compile the instruction-count TCG plugin
# (tools/insn_count.c) for the installed qemu-system-arm. The plugin API
# version QEMU accepts depends on its release (1 for QEMU 7.x), so each
# candidate is tried: QEMU refuses a wrong one at once, and keeps running
# (paused by -S, until the timeout) with a right one.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
for version in 1 2 3 4 5; do
    gcc -O2 -shared -fPIC -Wall -Wextra -Werror -DQEMU_PLUGIN_API_VERSION=$version \
        -o "$out" "$here/../tools/insn_count.c" || exit 1
    timeout 3 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic -monitor none -serial none -S \
        -plugin "$out,begin=0x2,end=0x4" </dev/null >/dev/null 2>"$out.log"
    if [ $? = 124 ]; then
        rm -f "$out.log"
        exit 0
    fi
done
echo "build-plugin.sh: qemu-system-arm accepted no plugin API version 1..5:" >&2
cat "$out.log" >&2
exit 1
