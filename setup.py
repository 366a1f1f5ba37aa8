"""Builds the native parts with the package: the cffi module (cffi_modules)
and the restorer blob (after build_ext, into the package or, for an
editable install, into the source tree)."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build as native  # noqa: E402  (build.py next to this file)


class BuildExtWithRestorer(build_ext):
    def run(self):
        super().run()
        if self.inplace or getattr(self, "editable_mode", False):
            target = Path(__file__).resolve().parent / "umig" / "_native"
        else:
            target = Path(self.build_lib) / "umig" / "_native"
        native.build_restorer(target)


setup(cffi_modules=["build.py:ffibuilder"], cmdclass={"build_ext": BuildExtWithRestorer})
