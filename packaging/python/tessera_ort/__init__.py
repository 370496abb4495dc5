"""Tessera's ONNX Runtime custom ops (domain ``ai.tessera``), packaged.

    import onnxruntime as ort, tessera_ort
    so = ort.SessionOptions()
    tessera_ort.register(so)            # or so.register_custom_ops_library(tessera_ort.get_library_path())
    sess = ort.InferenceSession("model.tessera.onnx", so)

The wheel also installs the ``tessera`` graph tool (``tessera rewrite``,
``verify``, ``bench``) on the PATH. ``python -m tessera_ort`` prints the
library's path, for hosts in other languages (C, C#, Java, Rust, Triton,
onnxruntime-genai).

The library works with any ONNX Runtime >= 1.17 (onnxruntime, onnxruntime-gpu,
...); it does not link libonnxruntime itself, so onnxruntime is an optional
dependency (``pip install tessera-ort[ort]``).
"""

import ctypes
import os

__all__ = ["get_library_path", "register", "TesseraLoadError"]

_LIBRARY = "libtessera_ort.so"
_ENTRY_POINT = "RegisterCustomOps"

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    try:
        __version__ = _version("tessera-ort")
    except PackageNotFoundError:  # imported from a source checkout
        __version__ = "0+unknown"
except ImportError:  # Python < 3.8 has no importlib.metadata
    __version__ = "0+unknown"


class TesseraLoadError(RuntimeError):
    """The custom-op library cannot be loaded or registered."""


def get_library_path():
    """Absolute path of the bundled ``libtessera_ort.so``.

    Raises ``TesseraLoadError`` when the file is missing from the installed
    package (a broken install).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY)
    if not os.path.isfile(path):
        raise TesseraLoadError(
            "tessera_ort: %s is missing from the installed package (%s); reinstall tessera-ort"
            % (_LIBRARY, os.path.dirname(path))
        )
    return path


def _check_loadable(path):
    """Fail early, naming the path, when ``path`` is not a loadable library
    that exports ``RegisterCustomOps``; ORT's own message would not name it."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            "tessera_ort.register: library_path must be a str or os.PathLike, got %s"
            % type(path).__name__
        )
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.isfile(path):
        raise TesseraLoadError("tessera_ort: no custom-op library at %r (not a file)" % path)
    try:
        lib = ctypes.CDLL(os.path.abspath(path))
    except OSError as err:
        raise TesseraLoadError("tessera_ort: cannot load %r: %s" % (path, err)) from None
    if not hasattr(lib, _ENTRY_POINT):
        raise TesseraLoadError(
            "tessera_ort: %r loads but does not export %s; it is not an ONNX Runtime custom-op library"
            % (path, _ENTRY_POINT)
        )
    return os.path.abspath(path)


def register(session_options, library_path=None):
    """Register the ``ai.tessera`` ops on an ``onnxruntime.SessionOptions``.

    Same as ``session_options.register_custom_ops_library(get_library_path())``,
    with clear errors: ``TypeError`` for anything that is not a SessionOptions,
    ``TesseraLoadError`` for a library that cannot be loaded or registered.
    ``library_path`` overrides the bundled library (e.g. a CUDA build).
    Returns ``session_options``, so calls can be chained.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            "tessera_ort.register needs onnxruntime (pip install onnxruntime, or tessera-ort[ort]): %s" % err
        ) from None
    if not isinstance(session_options, onnxruntime.SessionOptions):
        raise TypeError(
            "tessera_ort.register expects an onnxruntime.SessionOptions, got %s"
            % type(session_options).__name__
        )
    path = _check_loadable(get_library_path() if library_path is None else library_path)
    try:
        session_options.register_custom_ops_library(path)
    except Exception as err:  # ORT raises its own pybind11 Fail/RuntimeError
        raise TesseraLoadError(
            "tessera_ort: ONNX Runtime %s refused %r: %s" % (onnxruntime.__version__, path, err)
        ) from err
    return session_options
