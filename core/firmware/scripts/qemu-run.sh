#!/usr/bin/env bash
# qemu-run.sh ELF [QEMU ARGS...]: boot a firmware image under QEMU with
# semihosting; the image's exit status becomes this script's (124 on timeout).
# The machine follows the target triple in the ELF's path, or $TESSERA_TARGET.
set -euo pipefail
elf=$1
shift
target=${TESSERA_TARGET:-$elf}
case "$target" in
# The Cortex-M55 image: thumbv8m.main built with -C target-cpu=cortex-m55
# into target/firmware-m55 (see scripts/test.d/30-embedded.sh).
*firmware-m55/thumbv8m.main-none-eabihf* | m55) qemu=(qemu-system-arm -machine mps3-an547 -cpu cortex-m55) ;;
*thumbv7em-none-eabihf*) qemu=(qemu-system-arm -machine mps2-an386 -cpu cortex-m4) ;;
*thumbv8m.main-none-eabihf*) qemu=(qemu-system-arm -machine mps2-an505 -cpu cortex-m33) ;;
*riscv32imac-unknown-none-elf* | *riscv32imafc-unknown-none-elf*) qemu=(qemu-system-riscv32 -machine virt -bios none) ;;
*)
    echo "qemu-run.sh: cannot tell the target of $elf (set TESSERA_TARGET)" >&2
    exit 2
    ;;
esac
exec timeout "${TESSERA_QEMU_TIMEOUT:-120}" "${qemu[@]}" -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native -kernel "$elf" "$@"
