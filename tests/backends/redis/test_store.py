"""Behaviour of the two-tier Redis cache map, over fakeredis and the real server.

Every test runs twice: on fakeredis, and on the Redis server at REDIS_URL
under a random key prefix (skipped with the reason if none answers, failed
under LOADERCACHE_REQUIRE_REDIS=1).  Two RedisStores on one server stand for
two processes.  Assertions are on values, on the keys each batch call got, on
public stats and on what the Redis server holds.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import logging
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

import fakeredis
import pytest
import redis.asyncio

from loadercache import DataLoader
from loadercache.backends import LRUCacheMap
from loadercache.backends.redis import RedisCacheMap, RedisStore, StoreStats
from loadercache.backends.serializers import DeserializationError, MsgpackSerializer

from ...helpers import Gate
from ...redis_servers import (
    delete_prefix,
    random_prefix,
    real_redis_url,
    recorder,
    redis_py_clients,
    valkey_url,
)
from ..test_serializers import Point, point_serializer


class Env:
    """One Redis server (fake or real) that tests make 'processes' on.

    ``kind`` is ``fakeredis``; ``redis`` (the server at REDIS_URL) or
    ``valkey`` (a private Valkey server), both through the store's own
    connection; or ``redis-py`` (REDIS_URL through a redis-py client).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.server = fakeredis.FakeServer()
        self.url: Optional[str] = None
        if kind in ("redis", "redis-py"):
            self.url = real_redis_url()
        elif kind == "valkey":
            self.url = valkey_url()
        if kind in ("fakeredis", "redis-py"):
            redis_py_clients()
        self.prefix = "lctest" if self.url is None else random_prefix()
        self.stores: List[RedisStore] = []
        self.clients: List[Any] = []
        self.raw = self.client()

    def client(self) -> Any:
        """A redis-py client of the server, closed at the end."""
        if self.url is None:
            client = fakeredis.FakeAsyncRedis(server=self.server)
        else:
            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=2.0)
        self.clients.append(client)
        return client

    def store(self, **options: Any) -> RedisStore:
        """A new store with its own connection: another process."""
        options.setdefault("timeout", 2.0)
        target = self.url if self.kind in ("redis", "valkey") else self.client()
        store = RedisStore(target, prefix=self.prefix, **options)
        self.stores.append(store)
        return store

    async def keys(self) -> List[bytes]:
        """Every key this test wrote (SCAN on the test's own prefix)."""
        return sorted(
            [key async for key in self.raw.scan_iter(match=f"{self.prefix}:*")]
        )

    def gen_key(self, namespace: str = "users") -> str:
        """The generation key of *namespace* (the documented key scheme)."""
        return f"{self.prefix}:3:v1:{{{namespace}}}:gen"

    async def close(self) -> None:
        for store in self.stores:
            await store.aclose()
        for client in self.clients:
            await client.aclose()
        if self.url is not None:
            delete_prefix(self.url, self.prefix)


@pytest.fixture(params=["fakeredis", "redis", "valkey", "redis-py"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    env = Env(request.param)
    try:
        yield env
    finally:
        await env.close()


def loader_on(
    store: RedisStore, batch_load: Any, namespace: str = "users", **options: Any
) -> DataLoader[Any, Any]:
    """What a request handler does: a new loader over a new cache map."""
    return DataLoader(batch_load, cache_map=store.cache_map(namespace), **options)


# -- sharing and read-through -------------------------------------------------


async def test_a_second_process_reads_what_the_first_loaded(env: Env) -> None:
    batch_load, calls = recorder()
    first, second = env.store(), env.store()
    assert await loader_on(first, batch_load).load_many([1, 2]) == [
        {"id": 1},
        {"id": 2},
    ]
    await first.flush()
    other = loader_on(second, batch_load)
    assert await other.load_many([1, 2, 3]) == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert calls == [[1, 2], [3]]
    stats = other.stats
    assert (stats.remote_hits, stats.remote_misses, stats.batches) == (2, 1, 1)


async def test_hits_resolve_without_the_batch_function(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load_many(["a", "b"])
    await store.flush()
    for _ in range(3):  # three requests
        assert await loader_on(store, batch_load).load_many(["a", "b"]) == [
            {"id": "a"},
            {"id": "b"},
        ]
    assert calls == [["a", "b"]]
    stats = store.stats
    assert (stats.hits, stats.misses, stats.read_keys) == (6, 2, 8)
    assert stats.reads == 4
    assert stats.written_keys == 2


async def test_values_come_back_with_their_types(env: Env) -> None:
    value = {
        "tuple": (1, "a"),
        "set": {1, 2},
        "when": datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 1),
        "price": decimal.Decimal("9.99"),
        "id": uuid.UUID(int=7),
        "none": None,
        "big": 2**100,
        "bytes": b"\x00\xff",
        "int-keyed": {1: "one", (2, 3): "two-three"},
        "registered": Point(1, 2),
    }
    batch_load, calls = recorder(lambda key: value)
    store = env.store(serializer=point_serializer())
    await loader_on(store, batch_load).load(1)
    await store.flush()
    got = await loader_on(env.store(serializer=point_serializer()), batch_load).load(1)
    assert got == value
    assert {k: type(v) for k, v in got.items()} == {
        k: type(v) for k, v in value.items()
    }
    assert calls == [[1]]


async def test_cache_false_neither_reads_nor_writes_redis(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load(1)
    await store.flush()
    keys_before = await env.keys()
    uncached = loader_on(store, batch_load, cache=False)
    assert await uncached.load_many([1, 2, 2]) == [{"id": 1}, {"id": 2}, {"id": 2}]
    uncached.prime(3, "primed").clear(1).clear_all()
    await store.flush()
    assert calls == [[1], [1, 2, 2]]
    assert await env.keys() == keys_before
    assert uncached.stats.remote_hits == uncached.stats.remote_misses == 0


async def test_the_local_map_can_be_any_cache_map(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    loader = DataLoader(
        batch_load, cache_map=store.cache_map("users", local=LRUCacheMap(maxsize=1))
    )
    assert await loader.load_many([1, 2, 3]) == [{"id": 1}, {"id": 2}, {"id": 3}]
    await store.flush()
    # Evicted locally, still in Redis.
    assert await loader.load_many([1, 2]) == [{"id": 1}, {"id": 2}]
    assert calls == [[1, 2, 3]]
    assert loader.stats.remote_hits == 2


# -- clear, prime, clear_all --------------------------------------------------


async def test_clear_deletes_the_key_for_every_process(env: Env) -> None:
    db = {1: "old", 2: "two"}
    batch_load, calls = recorder(db.__getitem__)
    first, second = env.store(), env.store()
    await loader_on(first, batch_load).load_many([1, 2])
    await first.flush()
    db[1] = "new"
    loader_on(first, batch_load).clear(1)
    await first.flush()
    assert await loader_on(second, batch_load).load_many([1, 2]) == ["new", "two"]
    assert calls == [[1, 2], [1]]


async def test_clear_then_load_in_the_same_tick_never_sees_the_old_value(
    env: Env,
) -> None:
    db = {1: "old"}
    batch_load, calls = recorder(db.__getitem__)
    store = env.store()
    loader = loader_on(store, batch_load)
    assert await loader.load(1) == "old"
    await store.flush()
    db[1] = "new"
    # The write of "old" is long done; the delete is made in the same tick as
    # the next load, which reads Redis at dispatch.
    assert await loader.clear(1).load(1) == "new"
    # And a new request of another process, also clearing first.
    db[1] = "newer"
    other = loader_on(env.store(), batch_load)
    assert await other.clear(1).load(1) == "newer"
    assert calls == [[1], [1], [1]]


async def test_prime_writes_through_for_a_new_loader_elsewhere(env: Env) -> None:
    batch_load, calls = recorder()
    first = env.store()
    await loader_on(first, batch_load).load(1)
    await first.flush()
    # A process that never read this namespace primes a key.
    writer = env.store()
    loader_on(writer, batch_load).clear(1).prime(1, "forced").prime(2, "primed")
    await writer.flush()
    reader = loader_on(env.store(), batch_load)
    assert await reader.load_many([1, 2]) == ["forced", "primed"]
    assert calls == [[1]]


async def test_prime_into_an_empty_namespace(env: Env) -> None:
    batch_load, calls = recorder()
    writer = env.store()
    loader_on(writer, batch_load, namespace="empty").prime("k", ["v"])
    await writer.flush()
    reader = loader_on(env.store(), batch_load, namespace="empty")
    assert await reader.load("k") == ["v"]
    assert calls == []


async def test_clear_all_is_seen_by_a_new_loader_of_another_process(
    env: Env,
) -> None:
    db = {1: "a1", 2: "a2"}
    batch_load, calls = recorder(db.__getitem__)
    first, second = env.store(), env.store()
    await loader_on(first, batch_load).load_many([1, 2])
    await first.flush()
    # The second process reads the values (and so knows the generation) ...
    assert await loader_on(second, batch_load).load_many([1, 2]) == ["a1", "a2"]
    db.update({1: "b1", 2: "b2"})
    # ... and the first one clears the namespace.
    loader_on(first, batch_load).clear_all()
    await first.flush()
    assert await loader_on(second, batch_load).load_many([1, 2]) == ["b1", "b2"]
    assert await loader_on(env.store(), batch_load).load_many([1, 2]) == [
        "b1",
        "b2",
    ]
    assert calls == [[1, 2], [1, 2]]


async def test_clear_all_then_load_in_the_same_tick(env: Env) -> None:
    db = {1: "old"}
    batch_load, calls = recorder(db.__getitem__)
    store = env.store()
    await loader_on(store, batch_load).load(1)
    await store.flush()
    db[1] = "new"
    assert await loader_on(store, batch_load).clear_all().load(1) == "new"
    assert calls == [[1], [1]]


async def test_a_prime_after_clear_all_survives_it(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load_many([1, 2])
    await store.flush()
    loader_on(store, batch_load).clear_all().prime(1, "after")
    await store.flush()
    reader = loader_on(env.store(), batch_load)
    assert await reader.load_many([1, 2]) == ["after", {"id": 2}]
    assert calls == [[1, 2], [2]]


async def test_a_prime_before_clear_all_is_forgotten_with_it(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load(2)  # the namespace exists
    await store.flush()
    loader_on(store, batch_load).prime(1, "before").clear_all()
    await store.flush()
    reader = loader_on(env.store(), batch_load)
    assert await reader.load_many([1, 2]) == [{"id": 1}, {"id": 2}]
    assert calls == [[2], [1, 2]]


async def test_a_value_loaded_before_clear_all_is_not_served_after_it(
    env: Env,
) -> None:
    db = {1: "old"}
    gate = Gate(db.__getitem__)
    first, second = env.store(), env.store()
    slow = loader_on(first, gate).load(1)
    await asyncio.wait_for(gate.running.wait(), 5)
    # The batch has read db[1] == "old"; meanwhile the row changes and
    # another process clears the namespace.
    db[1] = "new"
    loader_on(second, gate).clear_all()
    await second.flush()
    gate.open.set()
    assert await slow == "old"  # this request's own view
    await first.flush()
    batch_load, calls = recorder(db.__getitem__)
    assert await loader_on(env.store(), batch_load).load(1) == "new"
    assert calls == [[1]]


async def test_a_key_cleared_while_it_loads_is_not_written_back(env: Env) -> None:
    db = {1: "old"}
    gate = Gate(db.__getitem__)
    store = env.store()
    loader = loader_on(store, gate)
    slow = loader.load(1)
    await asyncio.wait_for(gate.running.wait(), 5)
    db[1] = "new"
    loader_on(store, gate).clear(1)  # another request of this process
    gate.open.set()
    assert await slow == "old"
    await store.flush()
    batch_load, calls = recorder(db.__getitem__)
    assert await loader_on(env.store(), batch_load).load(1) == "new"
    assert calls == [[1]]


async def test_write_backs_of_concurrent_reads_of_a_new_namespace_all_count(
    env: Env,
) -> None:
    # Two batches read a namespace nobody wrote yet; their values go back in
    # separate round trips.  Both must be readable afterwards.
    release = asyncio.Event()

    async def batch_load(keys: List[int]) -> List[str]:
        if keys == [2]:
            await release.wait()
        return [f"v{key}" for key in keys]

    store = env.store()
    loader = loader_on(store, batch_load, max_batch_size=1)
    first, second = loader.load(1), loader.load(2)
    assert await first == "v1"
    await store.flush()  # the first write-back: it makes the generation
    release.set()
    assert await second == "v2"
    await store.flush()
    batch_load2, calls = recorder()
    reader = loader_on(env.store(), batch_load2)
    assert await reader.load_many([1, 2]) == ["v1", "v2"]
    assert calls == []


async def test_a_lost_generation_key_is_made_anew(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load(1)
    await store.flush()
    # Evicted, or lost with a restart: <prefix>:<version>:{<namespace>}:gen.
    assert await env.raw.delete(env.gen_key()) == 1
    assert await loader_on(store, batch_load).load_many([1, 2]) == [
        {"id": 1},
        {"id": 2},
    ]
    await store.flush()
    for reader in (store, env.store()):
        assert await loader_on(reader, batch_load).load_many([1, 2]) == [
            {"id": 1},
            {"id": 2},
        ]
    assert calls == [[1], [1, 2]]


async def test_namespaces_never_share_values_or_clears(env: Env) -> None:
    store = env.store()
    tenant1, calls1 = recorder(lambda key: f"tenant1:{key}")
    tenant2, calls2 = recorder(lambda key: f"tenant2:{key}")
    # Namespaces may hold colons; "t:1" with key "x" is not "t" with "1:x".
    spaces = {"tenant:1:users": tenant1, "tenant:2:users": tenant2}
    for namespace, batch_load in spaces.items():
        await loader_on(store, batch_load, namespace).load_many(["x", "1:x"])
    await store.flush()
    other = env.store()
    assert await loader_on(other, tenant1, "tenant:1:users").load("x") == ("tenant1:x")
    assert await loader_on(other, tenant2, "tenant:2:users").load("x") == ("tenant2:x")
    loader_on(other, tenant1, "tenant:1:users").clear_all()
    loader_on(other, tenant2, "tenant:2:users").clear("1:x")
    await other.flush()
    reader = env.store()
    assert await loader_on(reader, tenant1, "tenant:1:users").load_many(
        ["x", "1:x"]
    ) == ["tenant1:x", "tenant1:1:x"]
    assert await loader_on(reader, tenant2, "tenant:2:users").load_many(
        ["x", "1:x"]
    ) == ["tenant2:x", "tenant2:1:x"]
    assert calls1 == [["x", "1:x"], ["x", "1:x"]]
    assert calls2 == [["x", "1:x"], ["1:x"]]
    assert store.redis_key("t:1", "x") != store.redis_key("t", "1:x")


@pytest.mark.parametrize(
    ("namespace", "error"),
    [("", ValueError), ("a{b}", ValueError), (None, TypeError), (42, TypeError)],
)
async def test_a_namespace_is_a_non_empty_str_without_braces(
    env: Env, namespace: Any, error: type
) -> None:
    store = env.store()
    with pytest.raises(error, match="namespace"):
        store.cache_map(namespace)
    with pytest.raises(error, match="namespace"):
        RedisCacheMap(store, namespace)


# -- values -------------------------------------------------------------------


async def test_none_is_cached_with_the_negative_ttl(env: Env) -> None:
    db = {1: "one"}
    batch_load, calls = recorder(db.get)
    store = env.store(ttl=600, negative_ttl=5)
    assert await loader_on(store, batch_load).load_many([1, 2]) == ["one", None]
    await store.flush()
    assert await loader_on(env.store(), batch_load).load_many([1, 2]) == [
        "one",
        None,
    ]
    assert calls == [[1, 2]]
    assert 0 < await env.raw.pttl(store.redis_key("users", 2)) <= 5000
    assert 5000 < await env.raw.pttl(store.redis_key("users", 1)) <= 600_000


async def test_a_zero_negative_ttl_caches_none_only_locally(env: Env) -> None:
    batch_load, calls = recorder(lambda key: None)
    store = env.store(negative_ttl=0)
    loader = loader_on(store, batch_load)
    assert await loader.load(1) is None
    assert await loader.load(1) is None
    await store.flush()
    assert await loader_on(env.store(), batch_load).load(1) is None
    assert calls == [[1], [1]]


async def test_exceptions_are_never_written(env: Env) -> None:
    def compute(key: int) -> Any:
        return ValueError(f"no user {key}") if key < 0 else key

    batch_load, calls = recorder(compute)
    store = env.store()
    loader = loader_on(store, batch_load)
    results = await loader.load_many([1, -1], return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], ValueError)
    await store.flush()
    assert await env.raw.exists(store.redis_key("users", -1)) == 0
    again = await loader_on(env.store(), batch_load).load_many(
        [1, -1], return_exceptions=True
    )
    assert again[0] == 1 and isinstance(again[1], ValueError)
    assert calls == [[1, -1], [-1]]


class Handle:
    """A value no serializer knows."""


async def test_an_unserializable_value_is_returned_not_cached_and_warned_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    handles = {key: Handle() for key in range(4)}
    batch_load, calls = recorder(handles.__getitem__)
    store = env.store()
    with caplog.at_level(logging.WARNING, logger="loadercache"):
        assert await loader_on(store, batch_load).load_many([0, 1]) == [
            handles[0],
            handles[1],
        ]
        assert await loader_on(store, batch_load).load_many([2, 3]) == [
            handles[2],
            handles[3],
        ]
        await store.flush()
    warnings = [r for r in caplog.records if r.name == "loadercache"]
    assert len(warnings) == 1
    assert "Handle" in warnings[0].getMessage()
    assert store.stats.serialization_skips == 4
    assert await loader_on(env.store(), batch_load).load(0) is handles[0]
    assert calls == [[0, 1], [2, 3], [0]]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda written: b"\x00garbage",
        # The right envelope (13 bytes) and format version, then bytes
        # msgpack refuses (0xc1 is never used).
        lambda written: written[:14] + b"\xc1",
        # ... then a msgpack extension code nobody registered.
        lambda written: written[:14] + b"\xd4\x7f\x00",
    ],
    ids=["no-token", "bad-msgpack", "unknown-extension"],
)
async def test_a_corrupt_value_is_a_miss_reloaded_and_overwritten(
    env: Env,
    caplog: pytest.LogCaptureFixture,
    corrupt: Callable[[bytes], bytes],
) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load(1)
    await store.flush()
    key = store.redis_key("users", 1)
    garbage = corrupt(await env.raw.get(key))
    await env.raw.set(key, garbage)
    reader = env.store()
    with caplog.at_level(logging.WARNING, logger="loadercache"):
        assert await loader_on(reader, batch_load).load(1) == {"id": 1}
    assert reader.stats.decode_errors == 1
    assert any("decode" in r.getMessage() for r in caplog.records)
    await reader.flush()
    assert await env.raw.get(key) != garbage
    assert await loader_on(env.store(), batch_load).load(1) == {"id": 1}
    assert calls == [[1], [1]]


class OtherFormat:
    """A serializer of another version: reads nothing the default wrote."""

    def __init__(self) -> None:
        self.inner = MsgpackSerializer()

    def dumps(self, value: Any) -> bytes:
        return b"v2" + self.inner.dumps(value)

    def loads(self, data: bytes) -> Any:
        if not data.startswith(b"v2"):
            raise DeserializationError("not version 2")
        return self.inner.loads(data[2:])


async def test_a_value_another_serializer_wrote_is_a_miss_and_overwritten(
    env: Env,
) -> None:
    batch_load, calls = recorder()
    old = env.store()
    await loader_on(old, batch_load).load(1)
    await old.flush()
    new = env.store(serializer=OtherFormat())
    assert await loader_on(new, batch_load).load(1) == {"id": 1}
    await new.flush()
    assert new.stats.decode_errors == 1
    assert await loader_on(env.store(serializer=OtherFormat()), batch_load).load(1) == {
        "id": 1
    }
    assert calls == [[1], [1]]


# -- keys ---------------------------------------------------------------------

DISTINCT_KEYS: List[Any] = [
    1,
    "1",
    b"1",
    (1,),
    ((1,),),
    frozenset({1}),
    1.5,
    "1.5",
    -1,
    uuid.UUID(int=1),
    str(uuid.UUID(int=1)),
    ("a", None),
    ("a", "None"),
    ("a", "b"),
    ("a,b",),
    ("ab",),
    ("a", ("b",)),
    "",
    (),
    b"",
    "i:1",
    "\udc80",  # a lone surrogate
]


async def test_keys_of_different_types_are_different_redis_keys(env: Env) -> None:
    batch_load, calls = recorder(repr)
    store = env.store()
    assert len({store.redis_key("k", key) for key in DISTINCT_KEYS}) == len(
        DISTINCT_KEYS
    )
    assert await loader_on(store, batch_load, "k").load_many(DISTINCT_KEYS) == [
        repr(key) for key in DISTINCT_KEYS
    ]
    await store.flush()
    reader = loader_on(env.store(), batch_load, "k")
    assert await reader.load_many(DISTINCT_KEYS) == [repr(k) for k in DISTINCT_KEYS]
    assert calls == [DISTINCT_KEYS]
    assert reader.stats.remote_hits == len(DISTINCT_KEYS)


@pytest.mark.parametrize(
    "key",
    [7, -7, 2**64, 10**700, True, "", "ä", "\udc80", "i:1", 1.0, ("a", 1)],
    ids=repr,
)
async def test_a_primed_key_is_a_hit_for_a_fresh_loader(env: Env, key: Any) -> None:
    # prime() writes under the key store.redis_key() gives; a dispatch reads
    # under the keys get_many encodes (str and int inline): they must agree.
    store = env.store()
    batch_load, calls = recorder()
    loader_on(store, batch_load, "k").prime(key, "primed")
    await store.flush()
    reader = loader_on(env.store(), batch_load, "k")
    assert await reader.load(key) == "primed"
    assert calls == []
    assert reader.stats.remote_hits == 1


async def test_keys_equal_in_python_share_a_redis_key(env: Env) -> None:
    # True == 1 == 1.0 and frozenset order does not matter: the local dict
    # treats them as one key, and so does Redis, so that the answer does not
    # depend on which tier gave it.
    store = env.store()
    for same in ([1, True, 1.0], [0, False, -0.0], [(1, "a"), (True, "a")]):
        assert len({store.redis_key("k", key) for key in same}) == 1
    assert store.redis_key("k", frozenset({1, 2})) == store.redis_key(
        "k", frozenset({2, 1})
    )
    batch_load, calls = recorder(repr)
    await loader_on(store, batch_load, "k").load(1)
    await store.flush()
    assert await loader_on(env.store(), batch_load, "k").load(True) == "1"
    assert calls == [[1]]


@pytest.mark.parametrize(
    "key",
    [
        datetime.date(2024, 5, 1),
        decimal.Decimal("1.5"),
        object(),
        (1, [2]),
        (1, object()),
        10**5000,
    ],
    ids=[
        "date",
        "Decimal",
        "object",
        "tuple-with-list",
        "tuple-with-object",
        "int-too-long-for-decimal",
    ],
)
async def test_a_key_redis_cannot_hold_fails_at_load(env: Env, key: Any) -> None:
    batch_load, calls = recorder()
    store = env.store()
    loader = loader_on(store, batch_load)
    with pytest.raises(TypeError, match="cache_key_fn"):
        loader.load(key)  # not awaited: it fails at the call
    with pytest.raises(TypeError, match="cache_key_fn"):
        loader.prime(key, {"id": 0})
    # Refused before it was queued: the batch of the same tick, and Redis,
    # see only the other key.
    assert await loader.load(2) == {"id": 2}
    assert calls == [[2]]
    assert store.stats.read_keys == 1


async def test_a_subclass_may_define_get(env: Env) -> None:
    seen: List[Any] = []

    class Counting(RedisCacheMap):
        def get(self, key: Any) -> Any:
            seen.append(key)
            return super().get(key)

    batch_load, calls = recorder()
    loader = DataLoader(batch_load, cache_map=Counting(env.store(), "users"))
    assert await loader.load(1) == {"id": 1}
    assert await loader.load(1) == {"id": 1}
    assert seen == [1, 1]
    assert calls == [[1]]


async def test_cache_key_fn_maps_a_key_redis_cannot_hold(env: Env) -> None:
    batch_load, calls = recorder(lambda day: day.isoformat())
    store = env.store()
    day = datetime.date(2024, 5, 1)
    loader = loader_on(store, batch_load, cache_key_fn=lambda d: d.toordinal())
    assert await loader.load(day) == "2024-05-01"
    await store.flush()
    other = loader_on(env.store(), batch_load, cache_key_fn=lambda d: d.toordinal())
    assert await other.load(day) == "2024-05-01"
    assert calls == [[day]]


# -- TTL, writes, flush -------------------------------------------------------


async def test_ttl_with_jitter_spreads_expiries_below_the_ttl(env: Env) -> None:
    batch_load, _ = recorder()
    store = env.store(ttl=100, ttl_jitter=0.5)
    keys = list(range(40))
    await loader_on(store, batch_load).load_many(keys)
    await store.flush()
    pttls = [await env.raw.pttl(store.redis_key("users", key)) for key in keys]
    assert all(49_000 <= pttl <= 100_000 for pttl in pttls), pttls
    assert len(set(pttls)) > 10  # spread, not all equal


async def test_ttl_none_never_expires(env: Env) -> None:
    batch_load, _ = recorder()
    store = env.store(ttl=None)
    await loader_on(store, batch_load).load(1)
    await store.flush()
    assert await env.raw.pttl(store.redis_key("users", 1)) == -1


async def test_the_generation_key_expires_after_the_values(env: Env) -> None:
    batch_load, _ = recorder()
    store = env.store(ttl=100, negative_ttl=300)
    await loader_on(store, batch_load).load(1)
    await store.flush()
    gen_keys = [key for key in await env.keys() if key.endswith(b":gen")]
    assert len(gen_keys) == 1
    assert 300_000 < await env.raw.pttl(gen_keys[0]) <= 600_000


async def test_wait_for_writes_makes_values_visible_when_the_load_returns(
    env: Env,
) -> None:
    batch_load, calls = recorder()
    store = env.store(wait_for_writes=True)
    assert await loader_on(store, batch_load).load_many([1, 2]) == [
        {"id": 1},
        {"id": 2},
    ]
    # No flush: the batch waited for its write before settling.
    assert await loader_on(env.store(), batch_load).load_many([1, 2]) == [
        {"id": 1},
        {"id": 2},
    ]
    assert calls == [[1, 2]]


async def test_flush_waits_for_the_background_writes(env: Env) -> None:
    batch_load, _ = recorder()
    store = env.store()
    await loader_on(store, batch_load).load_many(list(range(10)))
    loader_on(store, batch_load).prime("p", 1).clear(3)
    await store.flush()
    keys = set(await env.keys())
    expected = {store.redis_key("users", key) for key in [*range(10), "p"]}
    expected.discard(store.redis_key("users", 3))
    assert expected <= keys
    assert store.redis_key("users", 3) not in keys
    stats = store.stats
    # The ten values went out the turn their batch settled, before the
    # clear; then the prime and the delete.
    assert (stats.written_keys, stats.deleted_keys, stats.errors) == (11, 1, 0)


async def test_store_stats_are_a_plain_snapshot(env: Env) -> None:
    batch_load, _ = recorder()
    store = env.store()
    await loader_on(store, batch_load).load_many([1, 2])
    await store.flush()
    await loader_on(store, batch_load).load_many([1, 2, 3])
    await store.flush()
    stats = store.stats
    assert isinstance(stats, StoreStats)
    assert stats.as_dict() == {
        "reads": 2,
        "read_keys": 5,
        "hits": 2,
        "misses": 3,
        "writes": 2,
        "written_keys": 3,
        "deleted_keys": 0,
        "errors": 0,
        "timeouts": 0,
        "unusable_replies": 0,
        "write_errors": 0,
        "skipped": 0,
        "serialization_skips": 0,
        "decode_errors": 0,
        "leases": 3 if env.kind in ("redis", "valkey") else 0,
        "lease_waits": 0,
        "lease_takeovers": 0,
        "fenced_refusals": 0,
        "stale_reads": 0,
        "refreshes": 0,
        "near_hits": 0,
        "near_invalidations": 0,
        "near_flushes": 0,
        "near_size": 0,
        "pending_operations": 0,
        "generation_overflows": 0,
        "connects": stats.connects,
        "breaker_state": "closed",
        "write_breaker_state": "closed",
        "breaker_opens": 0,
    }
    assert stats.connects == (1 if env.kind in ("redis", "valkey") else 0)


# -- construction -------------------------------------------------------------


async def test_making_cache_maps_needs_no_server() -> None:
    # Port 1: nothing listens.  A store and many maps cost no I/O.
    store = RedisStore("redis://127.0.0.1:1/0")
    maps = [store.cache_map(f"tenant:{i}:users") for i in range(1000)]
    assert maps[7].namespace == "tenant:7:users" and maps[7].store is store
    await store.aclose()


async def test_a_url_store_survives_no_server_and_closes_its_client() -> None:
    batch_load, calls = recorder()
    store = RedisStore("redis://127.0.0.1:1/0")
    assert await loader_on(store, batch_load).load(1) == {"id": 1}
    assert store.stats.errors == 1
    await store.aclose()
    assert calls == [[1]]


async def test_the_store_refuses_what_it_cannot_work_with() -> None:
    redis_py_clients()
    decoding = redis.asyncio.Redis(decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore(decoding)
    await decoding.aclose()
    client = fakeredis.FakeAsyncRedis()
    with pytest.raises(TypeError, match="connect_timeout"):
        RedisStore(client, connect_timeout=1.0)
    await client.aclose()
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        RedisStore(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dumps"):
        RedisStore("redis://x", serializer=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="redis://"):
        RedisStore("http://x")
    bad_options: List[Dict[str, Any]] = [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": float("nan")},
        {"ttl": float("inf")},
        {"stale_if_error": -1},
        {"lease_ttl": 0},
        {"lease_wait": -1},
        {"negative_ttl": -1},
        {"ttl_jitter": 1},
        {"timeout": 0},
        {"breaker_threshold": 0},
        {"breaker_cooldown": -1},
        {"max_value_bytes": 10},
        {"secret": b"short"},
        {"prefix": ""},
        {"prefix": "a{b"},
        {"version": "1:2"},
    ]
    for options in bad_options:
        with pytest.raises(ValueError):
            RedisStore("redis://x", **options)
    wrong_types: List[Dict[str, Any]] = [
        {"ttl": "60"},
        {"ttl": True},
        {"ttl_jitter": None},
        {"stale_if_error": "5"},
        {"breaker_threshold": 2.5},
        {"max_value_bytes": 1.5},
        {"secret": 42},
        {"version": 2},
        {"prefix": b"lc"},
    ]
    for options in wrong_types:
        with pytest.raises(TypeError):
            RedisStore("redis://x", **options)
    with pytest.raises(TypeError, match="RedisStore"):
        RedisCacheMap(object(), "users")  # type: ignore[arg-type]


def test_importing_without_the_extra_names_the_install_command() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["msgpack"] = None
        try:
            import loadercache.backends.redis
        except ImportError as error:
            print(error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "pip install 'loadercache[redis]'" in done.stdout


# -- a Redis that answers wrongly ---------------------------------------------


class ShortPipeline:
    """Wraps a pipeline so that MGET answers one value too few."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    async def execute(self, **options: Any) -> List[Any]:
        results: List[Any] = await self.pipe.execute(**options)
        if results and isinstance(results[-1], list):
            results[-1] = results[-1][:-1]
        return results


class ShortRedis(fakeredis.FakeAsyncRedis):  # type: ignore[misc]
    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return ShortPipeline(super().pipeline(*args, **kwargs))


async def test_a_wrong_number_of_values_is_all_misses_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_py_clients()
    server = fakeredis.FakeServer()
    good = RedisStore(fakeredis.FakeAsyncRedis(server=server))
    batch_load, calls = recorder()
    await loader_on(good, batch_load).load_many([1, 2])
    await good.flush()
    short = RedisStore(ShortRedis(server=server))
    with caplog.at_level(logging.WARNING, logger="loadercache"):
        loader = loader_on(short, batch_load)
        assert await loader.load_many([1, 2]) == [{"id": 1}, {"id": 2}]
    assert calls == [[1, 2], [1, 2]]
    assert loader.stats.remote_misses == 2
    assert short.stats.errors == 1
    assert short.stats.unusable_replies == 1
    assert any("MGET of 3 keys" in r.getMessage() for r in caplog.records)
    await short.aclose()
    await good.aclose()


# -- hostile and unusual data -------------------------------------------------


@pytest.mark.parametrize("namespace", ["100%", "x%%y", "%d:%s"])
async def test_a_percent_in_a_namespace_is_just_a_character(
    env: Env, namespace: str
) -> None:
    db = {5: "old", 6: "six"}
    batch_load, calls = recorder(db.__getitem__)
    store = env.store()
    assert await loader_on(store, batch_load, namespace).load_many([5, 6]) == [
        "old",
        "six",
    ]
    await store.flush()
    db[5] = "new"
    loader_on(store, batch_load, namespace).clear(5)
    await store.flush()
    fresh = loader_on(env.store(), batch_load, namespace)
    assert await fresh.load_many([5, 6]) == ["new", "six"]
    assert calls == [[5, 6], [5]]
    assert fresh.stats.remote_hits == 1


async def test_nan_cannot_be_a_cache_key(env: Env) -> None:
    batch_load, calls = recorder()
    loader = loader_on(env.store(), batch_load)
    for key in (float("nan"), ("a", float("nan"))):
        with pytest.raises(TypeError, match="NaN"):
            loader.load(key)
    assert calls == []


async def test_values_past_max_value_bytes_are_served_not_stored(env: Env) -> None:
    batch_load, calls = recorder(lambda key: "x" * key)
    store = env.store(max_value_bytes=1000)
    assert await loader_on(store, batch_load).load_many([10, 5000]) == [
        "x" * 10,
        "x" * 5000,
    ]
    await store.flush()
    assert store.stats.serialization_skips == 1
    reader = loader_on(env.store(max_value_bytes=1000), batch_load)
    assert await reader.load_many([10, 5000]) == ["x" * 10, "x" * 5000]
    assert calls == [[10, 5000], [5000]]


async def test_a_huge_stored_value_is_a_miss_read_without_buffering_it(
    env: Env,
) -> None:
    if env.kind != "redis" and env.kind != "valkey":
        pytest.skip("the store's own connection skips large replies unread")
    batch_load, calls = recorder()
    store = env.store(max_value_bytes=4096)
    await loader_on(store, batch_load).load(1)
    await store.flush()
    key = store.redis_key("users", 1)
    await env.raw.set(key, b"L" + b"\x00" * (16 << 20))  # 16 MiB
    tracemalloc.start()
    try:
        reader = env.store(max_value_bytes=4096)
        assert await loader_on(reader, batch_load).load(1) == {"id": 1}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"reading it took {peak} bytes at the peak"
    assert reader.stats.decode_errors == 1
    assert calls == [[1], [1]]


async def test_a_value_copied_to_another_key_is_refused(env: Env) -> None:
    batch_load, calls = recorder()
    store = env.store()
    await loader_on(store, batch_load).load_many([1, 2])
    await store.flush()
    # Key 2 now holds key 1's value: its envelope names key 1.
    await env.raw.set(
        store.redis_key("users", 2), await env.raw.get(store.redis_key("users", 1))
    )
    reader = env.store()
    assert await loader_on(reader, batch_load).load_many([1, 2]) == [
        {"id": 1},
        {"id": 2},
    ]
    stats = reader.stats
    assert (stats.unusable_replies, stats.decode_errors) == (1, 1)
    assert calls == [[1, 2], [1, 2]]


async def test_with_a_secret_only_values_signed_with_it_are_read(env: Env) -> None:
    batch_load, calls = recorder()
    secret = b"a secret of thirty-two bytes ok!"
    signed = env.store(secret=secret)
    await loader_on(signed, batch_load).load_many([1, 2])
    await signed.flush()
    # Readers with the secret hit; with another, or none, they miss.
    assert await loader_on(env.store(secret=secret), batch_load).load(1) == {"id": 1}
    assert len(calls) == 1
    other = env.store(secret=b"another secret, also 32 bytes..")
    assert await loader_on(other, batch_load).load(1) == {"id": 1}
    assert other.stats.decode_errors == 1
    # A value forged by a writer without the secret: a miss.
    forger = env.store()
    loader_on(forger, batch_load).clear(2).prime(2, {"id": "forged"})
    await forger.flush()
    reader = env.store(secret=secret)
    assert await loader_on(reader, batch_load).load(2) == {"id": 2}
    assert reader.stats.decode_errors == 1


def test_a_client_needs_redis_py_8_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # Older async pipelines could keep a connection checked out when a
    # timeout cancelled them.
    monkeypatch.setattr(redis, "__version__", "8.0.1")
    with pytest.raises(TypeError, match=r"redis-py 8\.1 or newer"):
        RedisStore(fakeredis.FakeAsyncRedis())
    RedisStore("redis://127.0.0.1:6379/0")  # a URL needs no redis-py
