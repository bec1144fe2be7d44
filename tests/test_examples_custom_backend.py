"""examples/custom_backend.py: an SQLite remote tier that passes loadercache.testing.

The example is held to the kit a backend author would run: every test of
``RemoteTierContract``, over a database file of the test's own.  A failing
tier is a closed connection; healing it opens a new one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from loadercache import CacheMap
from loadercache.testing import RemoteTierContract

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_backend.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_backend", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


custom_backend = load_example()


class TestSQLiteCacheMap(RemoteTierContract):
    # Keys the example's JSON encoding refuses: a float, a bool, an object.
    unstorable_keys = (1.5, True, object())

    def run(self, test: Callable[[], Any]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            self.path = str(Path(directory) / "cache.db")
            super().run(test)

    async def setup_backend(self) -> None:
        self.store = custom_backend.SQLiteStore(self.path)
        await self.store.open()

    async def teardown_backend(self) -> None:
        await self.store.aclose()

    def make_cache_map(self) -> CacheMap[Any, Any]:
        cache_map: CacheMap[Any, Any] = self.store.cache_map("contract")
        return cache_map

    async def settle(self) -> None:
        await self.store.flush()

    async def fail_tier(self) -> None:
        await self.store.aclose()  # every statement now raises

    async def heal_tier(self) -> None:
        await self.store.open()


def test_the_script_shares_one_cache_between_two_processes() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "process 2 read ['user 1', 'user 2', 'user 3', 'user 4']" in done.stdout
    assert "queries: [[1, 2, 3], [4]]" in done.stdout
