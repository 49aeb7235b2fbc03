# Metadata lives in pyproject.toml. This file maps the top-level source folders of the design
# layout into the package: kernels/ is importable as fedbrb_fast.kernels, and csrc/ ships as
# fedbrb_fast.csrc so the CUDA sources can be compiled from an installed copy.
from setuptools import find_packages, setup

MAPPED = {"fedbrb_fast.kernels": "kernels", "fedbrb_fast.csrc": "csrc"}

packages = find_packages(include=["fedbrb_fast", "fedbrb_fast.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(
    packages=packages,
    package_dir=MAPPED,
    package_data={"fedbrb_fast": ["configs/*.toml"], "fedbrb_fast.csrc": ["*.cu", "*.cuh", "*.h", "*.cpp"]},
)
