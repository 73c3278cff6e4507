"""Build hook: a wheel (and so ``pip install .``) carries the bundled model and the sample data.

``models/`` and ``assets/`` stay at the repository root, where the README, CI and the recipes
expect them. At build time they are copied as package data under ``lmstudio_lite/bundled/``,
where ``paths.bundled_models_dir`` and ``paths.bundled_assets_dir`` look first. Everything else
about the package is declared in pyproject.toml.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("models", "assets")


class BuildPyWithBundled(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout itself
        for name in BUNDLED:
            self.copy_tree(name, os.path.join(self.build_lib, "lmstudio_lite", "bundled", name))


setup(cmdclass={"build_py": BuildPyWithBundled})
