"""loadercache.testing: every bundled backend passes the kit, and the kit has teeth.

The contract runs against the dict, LRU and TTL maps, the Redis map over
fakeredis and over the server at REDIS_URL (random key prefix, skipped with
the reason if none answers, failed under LOADERCACHE_REQUIRE_REDIS=1), each
through the backend's public API only.  Then maps broken in one way each are
run through the kit's tests, which must fail them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import unittest
import uuid
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple

import fakeredis
import pytest

from loadercache import MISS, CacheMap
from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap
from loadercache.backends.redis import RedisStore
from loadercache.backends.redis._client_link import MIN_REDIS_PY, redis_py_version
from loadercache.testing import CacheMapContract, RemoteTierContract

from .redis_servers import delete_prefix, random_prefix, real_redis_url

# -- the bundled backends ----------------------------------------------------


class TestDictCacheMap(CacheMapContract):
    def make_cache_map(self) -> CacheMap[Any, Any]:
        return DictCacheMap()


class TestLRUCacheMap(CacheMapContract):
    def make_cache_map(self) -> CacheMap[Any, Any]:
        return LRUCacheMap(maxsize=self.capacity)


class TestTTLCacheMap(CacheMapContract):
    def make_cache_map(self) -> CacheMap[Any, Any]:
        return TTLCacheMap(maxsize=self.capacity, ttl=3600)


class RedisContract(RemoteTierContract):
    """The Redis map, through RedisStore's public API; the client is the subclass's."""

    # A key type the Redis key encoding has no tag for.
    unstorable_keys = (object(),)
    store: RedisStore

    def redis_client(self) -> Any:
        raise NotImplementedError

    async def setup_backend(self) -> None:
        # A new namespace per test: each starts from an empty tier.
        self.namespace = f"contract-{uuid.uuid4().hex[:8]}"
        self.store = RedisStore(
            self.redis_client(),
            prefix=self.prefix,
            # A failing tier is retried at once, not after a cooldown.
            breaker_cooldown=0,
        )

    async def teardown_backend(self) -> None:
        await self.store.aclose()

    def make_cache_map(self) -> CacheMap[Any, Any]:
        return self.store.cache_map(self.namespace)

    async def settle(self) -> None:
        await self.store.flush()


class TestRedisOverFakeredis(RedisContract):
    prefix = "lctest"

    def redis_client(self) -> Any:
        if redis_py_version() < MIN_REDIS_PY:
            raise unittest.SkipTest(
                f"the store takes clients from redis-py {MIN_REDIS_PY}, and "
                f"redis-py {redis_py_version()} is installed"
            )
        self.server = fakeredis.FakeServer()
        self.client = fakeredis.FakeAsyncRedis(server=self.server)
        return self.client

    async def teardown_backend(self) -> None:
        await super().teardown_backend()
        await self.client.aclose()

    async def fail_tier(self) -> None:
        self.server.connected = False

    async def heal_tier(self) -> None:
        self.server.connected = True


class TestRedisOverRealServer(RedisContract):
    def redis_client(self) -> Any:
        return self.url  # the store builds its client, and closes it

    def run(self, test: Callable[[], Any]) -> None:
        self.url = real_redis_url()
        self.prefix = random_prefix()
        try:
            super().run(test)
        finally:
            delete_prefix(self.url, self.prefix)


# -- the kit fails what breaks the contract ----------------------------------


class CopyingMap(DictCacheMap[Any, Any]):
    """Returns a new future holding the same outcome, not the one it was given."""

    def get(self, key: Any) -> Optional[asyncio.Future[Any]]:
        future = super().get(key)
        if future is None:
            return None
        copy: asyncio.Future[Any] = future.get_loop().create_future()
        if future.done() and not future.cancelled():
            copy.set_result(future.result())
        return copy


class ForgetfulDeleteMap(DictCacheMap[Any, Any]):
    """delete() does nothing."""

    def delete(self, key: Any) -> None:
        pass


class DictTier:
    """A remote tier over a dict shared by the maps of one test, broken on request."""

    def __init__(self, shared: Dict[Hashable, Any], broken: str = "") -> None:
        self.local: Dict[Hashable, asyncio.Future[Any]] = {}
        self.shared = shared
        self.broken = broken

    def get(self, key: Hashable) -> Optional[asyncio.Future[Any]]:
        return self.local.get(key)

    def set(self, key: Hashable, value: asyncio.Future[Any]) -> None:
        self.local[key] = value
        if value.done() and not value.cancelled() and value.exception() is None:
            self.shared[key] = value.result()

    def delete(self, key: Hashable) -> None:
        self.local.pop(key, None)
        if self.broken != "delete":
            self.shared.pop(key, None)

    def clear(self) -> None:
        self.local.clear()
        self.shared.clear()

    async def get_many(self, keys: Sequence[Hashable]) -> Sequence[Any]:
        found = [self.shared.get(key, MISS) for key in keys]
        if self.broken == "none is a miss":
            found = [MISS if value is None else value for value in found]
        if self.broken == "short answer":
            found = found[:-1]
        return found

    async def set_many(self, items: Sequence[Tuple[Hashable, Any]]) -> None:
        if self.broken != "no writes":
            self.shared.update(items)

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        if self.broken == "discard anything" or self.local.get(key) is future:
            self.local.pop(key, None)


class DictTierContract(RemoteTierContract):
    broken = ""

    async def setup_backend(self) -> None:
        self.shared: Dict[Hashable, Any] = {}

    def make_cache_map(self) -> CacheMap[Any, Any]:
        return DictTier(self.shared, self.broken)


class TestTheKitPassesASoundTier(DictTierContract):
    pass


@pytest.mark.parametrize(
    ("broken_map", "failing"),
    [
        (CopyingMap, "test_get_returns_the_very_future_set_in_flight_and_after"),
        (CopyingMap, "test_set_replaces_the_future_of_a_key"),
        (CopyingMap, "test_delete_forgets_one_key_and_an_absent_key_is_no_error"),
        (
            ForgetfulDeleteMap,
            "test_delete_forgets_one_key_and_an_absent_key_is_no_error",
        ),
        (ForgetfulDeleteMap, "test_prime_caches_a_value_and_never_overwrites_one"),
    ],
)
def test_the_kit_fails_a_broken_cache_map(broken_map: type, failing: str) -> None:
    class Contract(CacheMapContract):
        timeout = 0.5  # a broken map may leave a load waiting forever

        def make_cache_map(self) -> CacheMap[Any, Any]:
            map_: CacheMap[Any, Any] = broken_map()
            return map_

    with pytest.raises(AssertionError):
        getattr(Contract(), failing)()


@pytest.mark.parametrize(
    ("broken", "failing"),
    [
        ("delete", "test_clear_reaches_every_map"),
        ("none is a miss", "test_values_written_by_one_map_are_read_by_another"),
        ("short answer", "test_keys_never_written_are_misses"),
        ("no writes", "test_a_second_request_is_answered_by_the_tier"),
        ("discard anything", "test_discard_forgets_only_that_future_and_only_locally"),
    ],
)
def test_the_kit_fails_a_broken_remote_tier(broken: str, failing: str) -> None:
    class Contract(DictTierContract):
        pass

    Contract.broken = broken
    with pytest.raises(AssertionError):
        getattr(Contract(), failing)()


def test_the_kit_skips_what_a_backend_does_not_declare() -> None:
    # A map that refuses no key, and a tier that cannot be made to fail.
    with pytest.raises(unittest.SkipTest, match="unstorable_keys is empty"):
        TestDictCacheMap().test_a_key_the_map_refuses_is_never_queued()
    with pytest.raises(unittest.SkipTest, match="does not implement fail_tier"):
        TestTheKitPassesASoundTier().test_a_failing_tier_costs_misses_never_errors()


def test_a_kit_test_leaves_the_threads_event_loop_alone() -> None:
    # asyncio.run() would unset it: later code calling get_event_loop() (as
    # redis-py and fakeredis do on Python 3.9 when a client is made) failed.
    # In a fresh interpreter, so that this test changes no loop of the suite.
    script = """
import asyncio
from loadercache.backends import DictCacheMap
from loadercache.testing import CacheMapContract

class Contract(CacheMapContract):
    def make_cache_map(self):
        return DictCacheMap()

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
Contract().test_clear_forgets_every_key()
assert asyncio.get_event_loop() is loop
loop.close()
"""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
