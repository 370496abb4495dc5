"""The tessera-ort wheel's two build rules that pyproject.toml cannot state:
its version is the workspace's (../Cargo.toml), and it is a platform wheel
for any Python 3 (py3-none-<platform>): it holds native code, but nothing
that links libpython."""

import os
import re

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


def workspace_version():
    with open(os.path.join(HERE, "..", "Cargo.toml")) as f:
        section = re.search(r"^\[workspace\.package\](.*?)^\[", f.read(), re.S | re.M).group(1)
    return re.search(r'^version\s*=\s*"([^"]+)"', section, re.M).group(1)


class NativeDistribution(Distribution):
    """Holds native files (not extension modules): installed to platlib."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(version=workspace_version(), distclass=NativeDistribution, cmdclass={"bdist_wheel": PlatformWheel})
