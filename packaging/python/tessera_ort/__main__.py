"""``python -m tessera_ort``: print the custom-op library's path (for C, C#,
Java, Rust, Triton or onnxruntime-genai configs)."""

import sys

from . import TesseraLoadError, __version__, get_library_path


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m tessera_ort [--version]\nPrints the path of libtessera_ort.so.")
        return 0
    if argv and argv[0] == "--version":
        print(__version__)
        return 0
    try:
        print(get_library_path())
    except TesseraLoadError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


sys.exit(main(sys.argv[1:]))
