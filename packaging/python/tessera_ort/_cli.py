"""The `tessera` command of the wheel: runs the Rust binary shipped in the
package. `verify` and `bench` find the ORT plugin through TESSERA_PLUGIN and
their Python through TESSERA_PYTHON; both default to this package's library
and this interpreter, so the installed command works from any directory."""

import os
import sys

from . import get_library_path


def main():
    exe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "tessera")
    if not os.access(exe, os.X_OK):
        sys.exit("tessera: %s is missing or not executable; reinstall tessera-ort" % exe)
    os.environ.setdefault("TESSERA_PLUGIN", get_library_path())
    os.environ.setdefault("TESSERA_PYTHON", sys.executable)
    os.execv(exe, ["tessera"] + sys.argv[1:])
