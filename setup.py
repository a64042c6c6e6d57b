"""Build script: pure Python for now; the extension build is added in csrc/."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["vpengine", "vpengine.*"]) + ["vpengine.kernels"],
    package_dir={"vpengine.kernels": "kernels"},
)
