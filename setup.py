"""Build the optional C extension, loadercache._speedups.

Everything else about the package is in pyproject.toml.  The extension is
optional: without a C compiler, on an interpreter other than CPython or a
free-threaded CPython, or with LOADERCACHE_NO_EXTENSIONS=1, the same code runs
as pure Python.
"""

import os
import platform
import sysconfig

from setuptools import Extension, setup

ext_modules = []
# Not for a free-threaded CPython (3.13t and later): the extension is written
# for the GIL, and the pure Python runs there instead.
free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
if (
    platform.python_implementation() == "CPython"
    and not free_threaded
    and not os.environ.get("LOADERCACHE_NO_EXTENSIONS")
):
    ext_modules.append(
        Extension(
            "loadercache._speedups",
            sources=["src/loadercache/_speedups.c"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
