"""Ships the top-level conf/ inside the package (dlexp/conf), so a non-editable install finds it.

Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "conf"
        dst = Path(self.build_lib) / "dlexp" / "conf"
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)


setup(cmdclass={"build_py": BuildPyWithConf})
