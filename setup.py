"""hpc-gateway: a REST gateway between cloud orchestrators and HPC clusters reachable over SSH."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithSpec(build_py):
    """Ships openapi/openapi.yaml inside the package, so an installed gateway finds its contract."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "hpc" / "api" / "openapi.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "openapi" / "openapi.yaml", target)


def requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="hpc-gateway",
    version="1.0.0",
    description=__doc__,
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    package_dir={"": "src"},
    packages=find_packages("src", exclude=["tests", "tests.*"]),
    # The Alembic revisions are modules (found above); their template and README are data.
    package_data={"hpc.store.migrations": ["script.py.mako", "README.md"]},
    install_requires=requirements(),
    cmdclass={"build_py": BuildWithSpec},
    entry_points={"console_scripts": ["hpc-gateway=hpc.cli:main"]},
)
