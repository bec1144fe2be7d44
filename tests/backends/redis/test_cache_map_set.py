"""RedisCacheMap.set: its C common case (ShortSet) does what _short_set does."""

from __future__ import annotations

import asyncio
import functools
import gc
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadercache.backends.redis import RedisStore, _cache_map
from loadercache.backends.redis._keys import redis_key


class RecordingTier:
    """What _short_set asks of a tier: rkey and prime, recorded."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any]] = []

    def rkey(self, key: Any) -> bytes:
        self.calls.append(("rkey", key))
        return redis_key(b"b:", key)

    def prime(self, rkey: bytes, value: Any) -> None:
        self.calls.append(("prime", (rkey, value)))


keys = st.one_of(
    st.text(max_size=4),
    st.integers(),
    st.sampled_from([2**1999, 2**2000, -(2**2000), 2**2001, True, 1.0, 1.5]),
    st.tuples(st.integers(0, 3)),
    st.just(object()),  # cannot be stored: TypeError
    st.just([1]),  # unhashable
)
# How the future set is given: pending, resolved (a prime), failed, cancelled.
states = st.sampled_from(["pending", "result", "exception", "cancelled"])


def _future(loop: asyncio.AbstractEventLoop, state: str) -> asyncio.Future[Any]:
    future = loop.create_future()
    if state == "result":
        future.set_result({"v": 1})
    elif state == "exception":
        future.set_exception(ValueError("no"))
    elif state == "cancelled":
        future.cancel()
    return future


def _outcome(setter_of: Any, items: List[Tuple[Any, str]]) -> Any:
    loop = asyncio.new_event_loop()
    futures: List[asyncio.Future[Any]] = []
    try:
        local: Dict[Any, Any] = {}
        encoded: Dict[Any, bytes] = {}
        tier = RecordingTier()
        setter = setter_of(encoded, tier, local.__setitem__)
        seen: List[Any] = []
        for key, state in items:
            future = _future(loop, state)
            futures.append(future)
            try:
                seen.append(setter(key, future))
            except TypeError as error:
                seen.append(type(error))
        held = [(repr(key), future._state) for key, future in local.items()]
        return seen, held, dict(encoded), tier.calls
    finally:
        for future in futures:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no warning when it goes
        loop.close()


def _python(encoded: Any, tier: Any, local_set: Any) -> Any:
    return functools.partial(_cache_map._short_set, encoded, tier, local_set)


def _c(encoded: Any, tier: Any, local_set: Any) -> Any:
    return _cache_map.ShortSet(local_set, _python(encoded, tier, local_set))


@pytest.mark.skipif(
    _cache_map.ShortSet is None,
    reason="the C extension is not built (or LOADERCACHE_NO_EXTENSIONS=1)",
)
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, states), max_size=8))
def test_the_c_set_holds_encodes_and_primes_as_the_python_does(
    items: List[Tuple[Any, str]],
) -> None:
    assert repr(_outcome(_c, items)) == repr(_outcome(_python, items))


def test_a_cache_map_is_freed_without_the_cycle_collector() -> None:
    # Its set holds the map's parts, not the map: a cache map per request
    # must go when its request does, not at the next collection.
    store = RedisStore("redis://127.0.0.1:1/0")
    loop = asyncio.new_event_loop()
    gc.collect()
    gc.disable()
    try:
        for key in ("k", (1, 2)):
            cache_map = store.cache_map("users")
            cache_map.set(key, loop.create_future())
            del cache_map
        found = [o for o in gc.get_objects() if type(o) is _cache_map.RedisCacheMap]
        assert found == []
    finally:
        gc.enable()
        loop.close()
