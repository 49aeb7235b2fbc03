# Metadata lives in pyproject.toml; this file exists for tools that still call setup.py directly.
from setuptools import setup

setup()
