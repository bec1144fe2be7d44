"""The near cache: values kept in process memory, evicted by the server's pushes.

Against servers the tests start (Redis 7 and Valkey 9).  Two stores stand
for two processes where the claim is about what Redis tells each connection;
the fleet test runs real subprocesses (``fleet.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Sequence

import pytest

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore

from ...redis_servers import RedisServer
from .test_leases import Process, set_row


class Rows:
    """A database of rows, recording the keys each batch asked for."""

    def __init__(self) -> None:
        self.rows: Dict[int, Any] = {}
        self.calls: List[int] = []

    async def __call__(self, keys: Sequence[int]) -> List[Any]:
        self.calls.extend(keys)
        return [self.rows.get(key, f"db{key}") for key in keys]


async def load(store: RedisStore, rows: Rows, *keys: int) -> List[Any]:
    """One request: a fresh loader over the store, loading *keys*."""
    loader = DataLoader(rows, cache_map=store.cache_map("users"))
    return await loader.load_many(list(keys))


async def eventually(
    check: Callable[[], Awaitable[bool]], seconds: float = 3.0
) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


async def warm(store: RedisStore, rows: Rows, *keys: int) -> None:
    """Load *keys* until they are in the store's near cache."""
    await load(store, rows, *keys)  # loaded, written back
    await store.flush()
    await load(store, rows, *keys)  # read from Redis: kept near
    hits = store.stats.near_hits
    await load(store, rows, *keys)
    assert store.stats.near_hits == hits + len(keys)


@pytest.fixture
async def stores(server: RedisServer) -> Any:
    made: List[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        options.setdefault("near_cache", 1000)
        options.setdefault("timeout", 2.0)
        store = RedisStore(server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def test_a_warm_key_costs_no_round_trip(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store, rows = stores(), Rows()
    await warm(store, rows, 1, 2, 3)
    server.reset_stats()
    assert await load(store, rows, 1, 2, 3) == ["db1", "db2", "db3"]
    assert server.command_calls() == {}  # not a command (pings are left out)
    assert sorted(rows.calls) == [1, 2, 3]  # loaded once
    stats = store.stats
    assert stats.near_size == 3
    assert stats.near_hits == 6  # warm()'s last request, and this one


async def test_without_a_near_cache_every_request_reads_redis(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store, rows = stores(near_cache=None), Rows()
    await load(store, rows, 1)
    await store.flush()
    server.reset_stats()
    await load(store, rows, 1)
    assert server.command_calls().get("mget") == 1
    assert store.stats.near_hits == 0


async def test_a_request_keeps_the_value_it_saw(
    stores: Callable[..., RedisStore],
) -> None:
    store, rows = stores(), Rows()
    await warm(store, rows, 1)
    loader = DataLoader(rows, cache_map=store.cache_map("users"))
    assert await loader.load(1) == "db1"
    other = DataLoader(rows, cache_map=store.cache_map("users"))
    other.clear(1)  # another request clears it: near value gone
    assert store.stats.near_size == 0
    assert await loader.load(1) == "db1"  # this request's own future still


async def test_changes_by_any_client_reach_the_other_near_caches(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    writer, reader, rows = stores(), stores(), Rows()
    await warm(reader, rows, 1)

    async def reads(value: Any) -> bool:
        return await load(reader, rows, 1) == [value]

    # clear(k) in another process, the row changed meanwhile.
    rows.rows[1] = "changed"
    DataLoader(rows, cache_map=writer.cache_map("users")).clear(1)
    await writer.flush()
    await eventually(lambda: reads("changed"))
    # prime(k, v) in another process.
    await warm(reader, rows, 1)
    DataLoader(rows, cache_map=writer.cache_map("users")).prime(1, "primed")
    await writer.flush()
    await eventually(lambda: reads("primed"))
    # clear_all() in another process: one push for the whole namespace.
    await warm(reader, rows, 1, 2)
    rows.rows.update({1: "after all", 2: "after all"})
    flushes = reader.stats.near_flushes
    DataLoader(rows, cache_map=writer.cache_map("users")).clear_all()
    await writer.flush()
    await eventually(lambda: reads("after all"))
    assert reader.stats.near_flushes > flushes
    # A plain Redis client that knows nothing of loadercache.
    await warm(reader, rows, 1)
    rows.rows[1] = "behind our back"
    with server.client() as client:
        assert client.delete(reader.redis_key("users", 1)) == 1
    await eventually(lambda: reads("behind our back"))
    assert reader.stats.near_invalidations >= 4


async def test_a_write_elsewhere_that_extends_the_generation_keeps_the_values(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    # Every push about the generation key is checked by reading it again:
    # only a new generation (a clear_all) empties the namespace.
    reader, rows = stores(), Rows()
    await warm(reader, rows, 1, 2, 3)
    flushes = reader.stats.near_flushes
    pushed = reader.stats.near_invalidations
    with server.client() as client:
        gen_key = reader.redis_key("users", 0)[: -len(b"i:0")] + b"gen"
        assert client.pexpire(gen_key, 600_000)  # what another store's write does
    await eventually(lambda: _true(reader.stats.near_invalidations > pushed))
    hits = reader.stats.near_hits

    async def served_near() -> bool:
        before = reader.stats.near_hits
        await load(reader, rows, 1, 2, 3)
        return reader.stats.near_hits == before + 3

    await eventually(served_near)
    assert reader.stats.near_flushes == flushes and reader.stats.near_hits > hits
    # A new generation set by hand: the check finds it, and the values go.
    with server.client() as client:
        raw = client.get(gen_key)
        assert raw is not None
        client.set(gen_key, raw[:1] + b"X" * 8 + raw[9:])
    await eventually(lambda: _true(reader.stats.near_flushes == flushes + 1))
    assert reader.stats.near_size == 0


async def test_a_fleet_of_processes_sees_each_others_changes(
    server: RedisServer, tmp_path: Path
) -> None:
    db = tmp_path / "db.json"
    db.write_text(json.dumps({"k1": "v1"}))
    processes = [await Process.start(server.url, db, "--near", "100") for _ in range(2)]
    writer, reader = processes

    async def reads(value: str) -> None:
        deadline = time.monotonic() + 3
        while await reader("load users k1") != [value]:
            assert time.monotonic() < deadline, f"{value} never reached it"

    async def kept() -> None:
        # Read from Redis, then served near without a round trip.
        await reader("load users k1")
        hits = (await reader("stats"))["near_hits"]
        server.reset_stats()
        await reader("load users k1")
        assert (await reader("stats"))["near_hits"] == hits + 1
        assert "mget" not in server.command_calls()

    try:
        assert await writer("load users k1") == ["v1"]
        await kept()
        set_row(db, "k1", "v2")
        assert await reader("load users k1") == ["v1"]  # nobody said
        assert await writer("clear users k1") is True
        await reads("v2")
        await kept()
        assert await writer('prime users k1 "primed"') is True
        await reads("primed")
        await kept()
        set_row(db, "k1", "v3")
        assert await writer("clear_all users") is True
        await reads("v3")
        await kept()
        set_row(db, "k1", "v4")
        with server.client() as client:  # not loadercache: no envelope
            client.set(RedisStore(server.url).redis_key("users", "k1"), b"plain")
        await reads("v4")  # evicted; the plain value is not ours: a miss
    finally:
        for process in processes:
            await process.stop()


async def test_a_read_racing_a_change_never_keeps_the_old_value(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    """A read answered just before a change: its reply and the change's push
    arrive together, in the server's order; the value is kept, then evicted.

    The server is paused while the read and the change are sent, so that it
    runs both in one turn and answers the read and pushes the change in one
    write (when it runs the change first, the read has the new value).
    """
    writer, reader, check = stores(), stores(), stores(near_cache=None)
    rows = Rows()
    raced = 0
    for i in range(12):
        # A key of its own, in Redis and never read here: this read goes out.
        DataLoader(rows, cache_map=writer.cache_map("users")).prime(i, "old")
        await writer.flush()
        server.pause()
        try:
            read = asyncio.ensure_future(load(reader, rows, i))
            await asyncio.sleep(0.02)  # the read is sent
            DataLoader(rows, cache_map=writer.cache_map("users")).prime(i, "new")
            written = asyncio.ensure_future(writer.flush())
            await asyncio.sleep(0.02)  # the change is sent; neither has run
        finally:
            server.resume()
        await asyncio.gather(read, written)
        raced += read.result() == ["old"]  # it ran first: the race
        # A read of a key never read: every push Redis sent before its reply
        # (on the same connection) has been handled when it returns.
        await load(reader, rows, 1000 + i)
        assert await load(reader, rows, i) == await load(check, rows, i) == ["new"]
    assert sorted(rows.calls) == list(range(1000, 1012))  # the keys of no prime
    assert raced >= 6


async def test_a_lost_connection_empties_it_and_caching_resumes(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store, rows = stores(), Rows()
    await warm(store, rows, 1, 2)
    with server.client() as client:
        assert client.client_kill_filter(_type="normal") >= 1
    await eventually(lambda: _true(store.stats.near_size == 0))
    assert store.stats.near_flushes >= 1
    server.reset_stats()
    assert await load(store, rows, 1, 2) == ["db1", "db2"]  # from Redis again
    assert server.command_calls().get("mget") == 1
    hits = store.stats.near_hits
    assert await load(store, rows, 1, 2) == ["db1", "db2"]
    assert store.stats.near_hits == hits + 2


async def test_a_server_that_stops_answering_pings_empties_it(
    server: RedisServer, stores: Callable[..., RedisStore]
) -> None:
    store, rows = stores(near_ping=0.1, timeout=10.0), Rows()
    await warm(store, rows, 1)
    server.pause()
    try:
        await asyncio.sleep(0.35)  # a ping sent, unanswered by the next beat
        assert store.stats.near_size == 0
        loader = DataLoader(rows, cache_map=store.cache_map("users"))
        assert loader.cache_map.get(1) is None  # type: ignore[union-attr]
    finally:
        server.resume()

    async def served_near() -> bool:  # read, kept, then served near again
        before = store.stats.near_hits
        await load(store, rows, 1)
        return store.stats.near_hits > before

    await eventually(served_near)


async def test_entries_live_at_most_near_ttl(
    stores: Callable[..., RedisStore],
) -> None:
    store, rows = stores(near_ttl=0.2), Rows()
    await warm(store, rows, 1)
    await asyncio.sleep(0.3)  # the TTL and a quarter of it
    assert store.stats.near_size == 0


async def test_entries_live_at_most_the_stores_ttl(
    stores: Callable[..., RedisStore],
) -> None:
    # Redis pushes an expiry only once it deletes the key, maybe long after.
    store, rows = stores(ttl=0.3, near_ttl=60.0), Rows()
    await warm(store, rows, 1)
    await asyncio.sleep(0.45)
    assert store.stats.near_size == 0


async def test_its_own_clear_all_empties_the_namespace_at_once(
    stores: Callable[..., RedisStore],
) -> None:
    store, rows = stores(), Rows()
    await warm(store, rows, 1, 2)
    flushes = store.stats.near_flushes
    DataLoader(rows, cache_map=store.cache_map("users")).clear_all()
    stats = store.stats
    assert (stats.near_size, stats.near_flushes) == (0, flushes + 1)


# The first loop closes with the store's connection open: its socket is
# left for the garbage collector (one store per event loop is the rule; this
# is what happens when it is broken).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_store_on_a_new_event_loop_forgets_its_near_values(
    server: RedisServer,
) -> None:
    rows = Rows()
    store = RedisStore(server.url, near_cache=100, timeout=2.0)
    asyncio.run(warm(store, rows, 1))
    rows.rows[1] = "changed"

    async def elsewhere() -> List[Any]:
        other = RedisStore(server.url, timeout=2.0)
        DataLoader(rows, cache_map=other.cache_map("users")).clear(1)
        await other.flush()
        await other.aclose()
        try:
            return await load(store, rows, 1)  # a future of the old loop, or Redis
        finally:
            await store.aclose()

    assert asyncio.run(elsewhere()) == ["changed"]


async def test_it_holds_at_most_near_cache_values(
    stores: Callable[..., RedisStore],
) -> None:
    store, rows = stores(near_cache=3), Rows()
    await load(store, rows, *range(6))
    await store.flush()
    await load(store, rows, *range(6))
    assert store.stats.near_size == 3
    hits = store.stats.near_hits
    await load(store, rows, 3, 4, 5)  # the newest stay
    assert store.stats.near_hits == hits + 3


async def test_values_about_to_go_stale_are_not_kept(
    stores: Callable[..., RedisStore],
) -> None:
    # Timed values (stale_if_error, refresh_ahead) must reach Redis before
    # their time: one that comes within near_ttl of it is not kept.
    store, rows = stores(ttl=5.0, stale_if_error=1.0, near_ttl=10.0), Rows()
    await load(store, rows, 1)
    await store.flush()
    await load(store, rows, 1)
    assert store.stats.near_size == 0
    longer, rows = stores(ttl=60.0, stale_if_error=1.0, near_ttl=10.0), Rows()
    await warm(longer, rows, 2)


async def test_without_tracking_it_is_off_with_a_warning(
    server: RedisServer,
    stores: Callable[..., RedisStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with server.client() as client:
        client.execute_command("ACL", "SETUSER", "default", "-client|tracking")
    store, rows = stores(), Rows()
    with caplog.at_level(logging.WARNING, logger="loadercache"):
        for _ in range(3):
            assert await load(store, rows, 1) == ["db1"]
            await store.flush()
    assert store.stats.near_hits == 0 and store.stats.near_size == 0
    assert store.stats.hits == 2  # Redis still serves
    warnings = [r for r in caplog.records if "client tracking" in r.getMessage()]
    assert len(warnings) == 1
    assert "leases and near_cache off" in warnings[0].getMessage()


async def test_with_a_redis_py_client_it_is_off_with_a_warning(
    server: RedisServer,
) -> None:
    redis = pytest.importorskip("redis.asyncio")
    client = redis.Redis.from_url(server.url)
    try:
        with pytest.warns(UserWarning, match="near_cache=.* needs a redis:// URL"):
            store = RedisStore(client, near_cache=100)
        rows = Rows()
        for _ in range(3):
            assert await load(store, rows, 1) == ["db1"]
            await store.flush()
        stats = store.stats
        assert (stats.hits, stats.near_hits, stats.near_size) == (2, 0, 0)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"near_cache": 0}, "near_cache"),
        ({"near_cache": True}, "near_cache"),
        ({"near_cache": 10, "near_ttl": 0}, "near_ttl"),
        ({"near_cache": 10, "near_ping": -1.0}, "near_ping"),
    ],
)
def test_bad_options_are_refused(options: Dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        RedisStore("redis://127.0.0.1:1", **options)


async def _true(value: bool) -> bool:
    return value


async def test_read_spans_carry_the_near_counters(
    stores: Callable[..., RedisStore],
) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from loadercache import tracing

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        store, rows = stores(), Rows()
        await warm(store, rows, 1, 2)  # 2 near hits
        await load(store, rows, 3)  # a read: its span has the counters
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()
    last = [s for s in exporter.get_finished_spans() if s.name.endswith("get_many")]
    attributes = dict(last[-1].attributes or {})
    assert attributes["loadercache.near_hits"] == 2
    assert attributes["loadercache.near_size"] == 2
    assert "loadercache.near_flushes" in attributes
    assert "loadercache.near_invalidations" in attributes


def _getters() -> List[Any]:
    from loadercache.backends.redis import _near

    def python(local: Dict[Any, Any], near: Dict[Any, Any], hits: Any) -> Any:
        # RedisCacheMap._near_get on a bare object with the slots it reads.
        holder = type(
            "Holder",
            (),
            {"__slots__": ("_hits", "_local_get", "_local_set", "_near")},
        )()
        holder._local_get, holder._local_set = local.get, local.__setitem__
        holder._near, holder._hits = near, hits
        from loadercache.backends.redis._cache_map import RedisCacheMap

        return lambda key: RedisCacheMap._near_get(holder, key)  # type: ignore[arg-type]

    getters = [python]
    if _near.NearGet is not None:
        getters.append(
            lambda local, near, hits: _near.NearGet(
                local.get, local.__setitem__, near, hits
            )
        )
    return getters


@pytest.mark.parametrize("make", _getters(), ids=["python", "c"][: len(_getters())])
def test_the_near_getter_in_c_and_in_python(make: Callable[..., Any]) -> None:
    from loadercache.backends.redis._near import HitCounter

    local: Dict[Any, Any] = {"mine": "local future"}
    near: Dict[Any, Any] = {"shared": "near future", "mine": "other"}
    hits = HitCounter()
    get = make(local, near, hits)
    assert get("mine") == "local future"  # the request's own first
    assert hits.value == 0
    assert get("shared") == "near future"
    assert local["shared"] == "near future"  # kept by the request
    assert hits.value == 1
    assert get("shared") == "near future"  # now a local hit
    assert hits.value == 1
    assert get("nowhere") is None
    with pytest.raises(TypeError):
        get([])
