"""Build the optional C extension, loadercache._speedups.

Everything else about the package is in pyproject.toml.  The extension is
optional: without a C compiler, on an interpreter other than CPython, or with
LOADERCACHE_NO_EXTENSIONS=1, the same code runs as pure Python.
"""

import os
import platform

from setuptools import Extension, setup

ext_modules = []
if platform.python_implementation() == "CPython" and not os.environ.get(
    "LOADERCACHE_NO_EXTENSIONS"
):
    ext_modules.append(
        Extension(
            "loadercache._speedups",
            sources=["loadercache/_speedups.c"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
