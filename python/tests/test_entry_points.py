"""The library's exports: `RegisterCustomOps` (what ORT looks up when it
loads the library by path; every other test goes through it) and
`TesseraRegisterCustomOps`, the same function under a name no other library
exports, for `RegisterCustomOpsUsingFunction` when the library is linked
into the host. The onnxruntime 1.32 wheel does not expose
`register_custom_ops_using_function`, so the registration itself is tested
through the C API from Rust (`tests/tests/entry_points.rs`)."""

import subprocess

import pytest


def test_the_library_exports_exactly_the_two_entry_points(lib):
    nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True)
    if nm.returncode != 0:
        pytest.skip(f"nm unavailable: {nm.stderr.strip()}")
    functions = sorted(line.split()[-1] for line in nm.stdout.splitlines() if line.split()[1:2] == ["T"])
    assert functions == ["RegisterCustomOps", "TesseraRegisterCustomOps"], functions
