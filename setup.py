"""Build: the Python package (kernels in hpo_engine/kernels/) and `csrc/*.cpp` as `hpo_engine._C`."""
import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

sources = sorted(glob.glob("csrc/*.cpp"))
ext_modules = [
    Pybind11Extension(
        "hpo_engine._C",
        sources,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
] if sources else []

setup(
    packages=find_packages(include=["hpo_engine", "hpo_engine.*"]),
    # the trained part of the embedded default SST model (a few MB; the base weights come from packages)
    package_data={"hpo_engine.sst": ["default/*.json", "default/*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
