"""Which implementation of the per-load methods this run uses.

``loadercache._speedups`` replaces ``DataLoader.load``, ``_enqueue``,
``_new_future`` and ``_settle`` with C.  The suite runs against whichever is
in use (C wherever the extension built); CI and ``tox`` run the whole suite
a second time as pure Python (``LOADERCACHE_NO_EXTENSIONS=1``, the ``-noext``
tox environments), and ``test_differential.py`` holds the C methods and the
Python ones to the same behaviour in one process.

``LOADERCACHE_REQUIRE_SPEEDUPS=1`` (set by CI) makes a missing extension a
failure instead of a skip.
"""

from __future__ import annotations

import os

import pytest

import loadercache
from loadercache import loader

REQUIRE = os.environ.get("LOADERCACHE_REQUIRE_SPEEDUPS") == "1"
FORCED_OFF = bool(os.environ.get("LOADERCACHE_NO_EXTENSIONS"))


def test_the_extension_is_in_use_where_it_can_build() -> None:
    if FORCED_OFF:
        assert not loadercache.SPEEDUPS
        pytest.skip("LOADERCACHE_NO_EXTENSIONS is set: running the pure Python")
    if not loadercache.SPEEDUPS:
        reason = (
            "loadercache._speedups is not built (no C compiler at install "
            "time?); the suite ran the pure Python"
        )
        if REQUIRE:
            pytest.fail(f"{reason} (LOADERCACHE_REQUIRE_SPEEDUPS=1)")
        pytest.skip(reason)
    from loadercache import _speedups

    # The C methods are the ones the class uses.
    for name in loader.PYTHON_METHODS:
        assert getattr(loader.DataLoader, name) is getattr(_speedups.LoaderCore, name)


def test_the_python_methods_are_kept_for_the_differential_test() -> None:
    assert sorted(loader.PYTHON_METHODS) == [
        "_enqueue",
        "_new_future",
        "_settle",
        "load",
    ]
    for method in loader.PYTHON_METHODS.values():
        assert method.__module__ == "loadercache.loader"
