"""The in-process cache maps: DictCacheMap, LRUCacheMap, TTLCacheMap.

What every backend must do is in tests/test_loader.py, run against each of
them through the ``cache_map_factory`` fixture; this module covers what only
the bounded maps do: evict, expire, and keep in-flight loads safe meanwhile.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any, Callable, List

import pytest

from loadercache import CacheMap, DataLoader
from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap

from ..helpers import Gate, within


class FakeTimer:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_loader(cache_map: Any) -> tuple[DataLoader[Any, Any], Gate]:
    gate = Gate()
    gate.open.set()
    return DataLoader(gate, cache_map=cache_map), gate


# -- DictCacheMap ------------------------------------------------------------


async def test_dict_cache_map_round_trip() -> None:
    cache_map = DictCacheMap()
    assert isinstance(cache_map, CacheMap)
    future = asyncio.get_running_loop().create_future()
    assert cache_map.get("a") is None
    cache_map.set("a", future)
    assert cache_map.get("a") is future
    assert len(cache_map) == 1
    cache_map.delete("a")
    cache_map.delete("a")  # absent: not an error
    assert cache_map.get("a") is None
    cache_map.set("b", future)
    cache_map.clear()
    assert len(cache_map) == 0


def test_dict_cache_map_hits_are_the_dicts_own_methods() -> None:
    # What keeps a hit one C call: typing get and set as methods for type
    # checkers must not put a Python frame in front of the dict's.
    cache_map: DictCacheMap[str, int] = DictCacheMap()
    assert cache_map.get == cache_map.mapping.get
    assert cache_map.set == cache_map.mapping.__setitem__


async def test_a_subclass_defines_get_or_set_of_its_own() -> None:
    seen: List[Any] = []

    class Counting(DictCacheMap):
        def get(self, key: Any) -> Any:
            seen.append(key)
            return super().get(key)

    class Sub(Counting):  # inherits the get of its parent, binds set
        pass

    for cache_map in (Counting(), Sub()):
        loader, _ = open_loader(cache_map)
        await loader.load("a")
        assert loader.load("a").result() == "a"
        assert cache_map.set == cache_map.mapping.__setitem__
    assert seen == ["a", "a", "a", "a"]


async def test_dict_cache_map_never_evicts() -> None:
    loader, gate = open_loader(DictCacheMap())
    await loader.load_many(range(1000))
    await loader.load_many(range(1000))
    assert len(gate.calls) == 1


# -- eviction ----------------------------------------------------------------

BOUNDED: List[Any] = [
    pytest.param(lambda size: LRUCacheMap(maxsize=size), id="lru"),
    pytest.param(lambda size: TTLCacheMap(maxsize=size, ttl=3600), id="ttl"),
]


@pytest.mark.parametrize("bounded", BOUNDED)
async def test_evicted_key_is_loaded_again(bounded: Callable[[int], Any]) -> None:
    loader, gate = open_loader(bounded(2))
    await loader.load_many(["a", "b"])
    await loader.load("a")  # a is now the most recently used
    await loader.load("c")  # evicts b
    assert await loader.load_many(["a", "c"]) == ["a", "c"]
    assert gate.calls == [["a", "b"], ["c"]]
    assert await loader.load("b") == "b"
    assert gate.calls == [["a", "b"], ["c"], ["b"]]


@pytest.mark.parametrize("bounded", BOUNDED)
async def test_in_flight_key_evicted_still_settles_for_everyone(
    bounded: Callable[[int], Any],
) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=bounded(1))
    holders = [loader.load("a"), loader.load("a")]
    holders.append(loader.load("b"))  # evicts the in-flight a
    await within(gate.running.wait())
    gate.open.set()
    assert await within(asyncio.gather(*holders)) == ["a", "a", "b"]
    assert gate.calls == [["a", "b"]]
    assert await within(loader.load("a")) == "a"
    assert gate.calls == [["a", "b"], ["a"]]


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_invalid_maxsize_is_refused(size: Any, error: type) -> None:
    with pytest.raises(error, match="maxsize must be an int of at least 1"):
        LRUCacheMap(size)
    with pytest.raises(error, match="maxsize must be an int of at least 1"):
        TTLCacheMap(size, ttl=1)


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("inf"), ValueError),
        (True, TypeError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_invalid_ttl_is_refused(ttl: Any, error: type) -> None:
    with pytest.raises(error, match="ttl must be a finite positive number"):
        TTLCacheMap(10, ttl=ttl)


def test_missing_cachetools_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cachetools", None)
    monkeypatch.delitem(sys.modules, "loadercache.backends.lru")
    with pytest.raises(ImportError, match=r"pip install 'loadercache\[lru\]'"):
        importlib.import_module("loadercache.backends.lru")


# -- expiry ------------------------------------------------------------------


async def test_expired_key_is_loaded_again() -> None:
    timer = FakeTimer()
    loader, gate = open_loader(TTLCacheMap(100, ttl=10, timer=timer))
    await loader.load("a")
    timer.now += 9.9
    await loader.load("a")
    assert gate.calls == [["a"]]
    timer.now += 0.2
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"], ["a"]]


async def test_ttl_counts_from_resolution_not_from_queueing() -> None:
    timer = FakeTimer()
    gate = Gate()
    loader = DataLoader(gate, cache_map=TTLCacheMap(100, ttl=10, timer=timer))
    queued_at = timer.now
    first = loader.load("a")
    await within(gate.running.wait())
    # The batch takes far longer than the TTL: the key never expires in flight.
    timer.now = queued_at + 100
    joined = loader.load("a")
    gate.open.set()
    assert await within(asyncio.gather(first, joined)) == ["a", "a"]
    await asyncio.sleep(0)
    resolved_at = timer.now
    timer.now = resolved_at + 9.9
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"]]
    timer.now = resolved_at + 10.1
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"], ["a"]]


async def test_primed_value_expires_ttl_after_priming() -> None:
    timer = FakeTimer()
    loader, gate = open_loader(TTLCacheMap(100, ttl=10, timer=timer))
    loader.prime("a", "primed")
    timer.now += 9.9
    assert await loader.load("a") == "primed"
    timer.now += 0.2
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"]]


async def test_key_cleared_in_flight_keeps_the_new_loads_expiry() -> None:
    timer = FakeTimer()
    gate = Gate()
    loader = DataLoader(gate, cache_map=TTLCacheMap(100, ttl=10, timer=timer))
    first = loader.load("a")
    await within(gate.running.wait())
    loader.clear("a")
    second = loader.load("a")
    gate.open.set()
    assert await within(asyncio.gather(first, second)) == ["a", "a"]
    await asyncio.sleep(0)
    timer.now += 5
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"], ["a"]]
