"""The optional C extension and the pure Python it translates behave alike.

``loadercache._speedups`` replaces ``DataLoader.load``, ``_enqueue`` and
``_settle`` with C.  The rest of the suite runs against whichever is in use
(C wherever the extension built); this module checks which one that is, and
runs the loader's behaviour suites once more with the other one, the pure
Python, in a subprocess (``LOADERCACHE_NO_EXTENSIONS=1`` is read at import).

``LOADERCACHE_REQUIRE_SPEEDUPS=1`` (set by CI) makes a missing extension a
failure instead of a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import loadercache

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("LOADERCACHE_REQUIRE_SPEEDUPS") == "1"
FORCED_OFF = bool(os.environ.get("LOADERCACHE_NO_EXTENSIONS"))

# The suites that exercise load(), batching and settling, with every backend.
SUITES = [
    "tests/test_loader.py",
    "tests/test_cache_protocol.py",
    "tests/test_stateful.py",
    "tests/backends/test_local.py",
    "tests/test_registry.py",
]


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
    from loadercache import _speedups, loader

    # The C methods are the ones the class uses.
    assert loader.DataLoader.load is _speedups.LoaderCore.load
    assert loader.DataLoader._settle is _speedups.LoaderCore._settle


def test_the_pure_python_passes_the_behaviour_suites() -> None:
    if not loadercache.SPEEDUPS:
        pytest.skip("this run is the pure Python already")
    env = {**os.environ, "LOADERCACHE_NO_EXTENSIONS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
