"""Scenario 9: the Redis cache map against hand-written redis-py, on a real server.

* 9a, warm reads: every key is in Redis; each request is a fresh loader over a
  fresh ``store.cache_map(ns)`` loading ``redis_batch`` keys in one tick, so
  every load goes to Redis.  The baseline is what one would write by hand for
  the same keys: one ``MGET`` and a msgpack decode of each value.  Beside it:
  aiocache's ``multi_get`` (a ``RedisCache`` with its msgpack serializer,
  over keys of its own holding the same rows), and a store with
  ``near_cache`` holding every key: each request is still a fresh loader and
  cache map, but after a warm-up pass (untimed) every load is a near hit,
  with no round trip.
* 9c, near hits against a dict: the near-cache entry of 9a against one
  plain ``DataLoader`` (a dict cache) that already holds every key, loading
  them again in the same batches: what a near hit costs over a plain cache
  hit (the issue's goal: at least half the dict loader's throughput).
* 9b, cold loads: no key is in Redis; the loader reads (all misses), calls the
  batch function and writes the values back (in the background, awaited with
  ``store.flush()`` inside the timing).  The baseline: ``MGET``, the batch
  function, one pipelined ``SET ... PX`` per value.

Every value is the same 10-field row (:func:`row`: ints, strings, a float
and a bool, like a user record), so decoding costs what it would in an app.

Round trips are counted twice.  At the client: for the hand-written code, a
redis-py connection class counts every ``send_packed_command`` (one per
command or pipeline), split into reads (those carrying an ``MGET``) and
writes; the store, which speaks to Redis over a connection of its own,
reports its round trips in ``store.stats``.  At the server, a ``MONITOR``
connection counts the commands that touch this run's keys (their random
prefix makes them ours on a shared server), once per scenario, outside the
timed rounds.

The server is ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).  Without
the Redis backend, redis-py or a server, the scenario is skipped with a note;
with ``LOADERCACHE_REQUIRE_REDIS=1`` the skip fails the run instead.  Keys
live under a random prefix with a 10-minute TTL, are never listed outside
that prefix, and are deleted at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from benchmarks.contenders import BatchCounter, batch_fn
from benchmarks.scenarios import Entry, Sample, Scenario, Sizes

__all__ = ["REDIS_URL", "REQUIRE_REDIS", "delete_prefix", "scenarios", "unavailable"]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("LOADERCACHE_REQUIRE_REDIS") == "1"

SUBJECT = "loadercache[RedisCacheMap]"
NEAR = "loadercache near_cache"
DICT_HITS = "loadercache[dict] hits, one loader"
RAW_WARM = "redis-py MGET+msgpack"
RAW_COLD = "redis-py MGET+SET pipeline"
#: The same hand-written code on redis-py's hiredis parser (a C extension,
#: which redis-py picks when hiredis is installed; the entries above force
#: its pure-Python parser).  loadercache's connection parses RESP itself.
HIREDIS = " (hiredis)"
AIOCACHE = "aiocache multi_get"
TTL = 600.0
# The store's value layout (see loadercache.backends.redis._envelope and
# .serializers): a 13-byte envelope, a format-version byte, then msgpack.
_HEADER = 14
# The store's timeout in the set-up and under MONITOR, which slows Redis down.
_SLOW = 10.0


def row(key: int) -> Dict[str, Any]:
    """The value of *key* in every Redis scenario: a 10-field row."""
    return {
        "id": key,
        "name": f"user {key}",
        "email": f"user{key}@example.com",
        "active": key % 3 != 0,
        "score": key / 7,
        "org_id": key % 101,
        "created_at": 1_700_000_000 + key,
        "country": "FR",
        "plan": "pro",
        "logins": key % 1000,
    }


def unavailable() -> Optional[str]:
    """Why scenario 9 cannot run here, or None if it can."""
    try:
        import msgpack  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
        import redis

        import loadercache.backends.redis  # noqa: F401
    except ImportError as error:
        return f"{error.name or error} cannot be imported ({error})"
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as error:
        return f"no Redis server answers at {REDIS_URL} ({error})"
    finally:
        client.close()
    return None


# -- counting round trips ------------------------------------------------------

_sent: Counter[str] = Counter()


def hiredis_available() -> bool:
    """Whether redis-py can parse with hiredis here."""
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


def _client(hiredis: bool = False) -> Any:
    """A redis.asyncio client whose connections count what they send, on
    redis-py's pure-Python parser or (*hiredis*) on hiredis."""
    import redis.asyncio
    from redis.asyncio.connection import _AsyncHiredisParser, _AsyncRESP2Parser

    class CountingConnection(redis.asyncio.Connection):
        handshaking = False

        async def on_connect_check_health(self, check_health: bool = True) -> None:
            # HELLO and CLIENT SETINFO are the connection's, not the cache's.
            self.handshaking = True
            _sent["connections"] += 1
            try:
                await super().on_connect_check_health(check_health=check_health)
            finally:
                self.handshaking = False

        async def send_packed_command(
            self, command: Any, check_health: bool = True
        ) -> None:
            if not self.handshaking:
                data = (
                    command
                    if isinstance(command, bytes)
                    else b"".join(
                        part if isinstance(part, bytes) else part.encode()
                        for part in ([command] if isinstance(command, str) else command)
                    )
                )
                _sent["read" if b"\r\nMGET\r\n" in data else "write"] += 1
            await super().send_packed_command(command, check_health)

    # A Python parser is per protocol; redis-py swaps RESP2's for RESP3's
    # when the connection speaks RESP3.
    parser = _AsyncHiredisParser if hiredis else _AsyncRESP2Parser
    pool = redis.asyncio.ConnectionPool.from_url(
        REDIS_URL, connection_class=CountingConnection, parser_class=parser
    )
    return redis.asyncio.Redis(connection_pool=pool)


async def _close(client: Any) -> None:
    await client.aclose()
    await client.connection_pool.disconnect()


@dataclass
class _Run:
    """What the entries of one scenario 9 share: prefix, keys, server counts."""

    sizes: Sizes
    prefix: str = field(default_factory=lambda: f"lcbench-{uuid.uuid4().hex[:12]}")
    server: Dict[str, Dict[str, float]] = field(default_factory=dict)
    runs: int = 0

    rows: List[Dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = [row(key) for key in range(self.sizes.redis_keys)]

    @property
    def chunks(self) -> List[List[int]]:
        n, size = self.sizes.redis_keys, self.sizes.redis_batch
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def batch_fn(self, counter: BatchCounter) -> Any:
        """The batch function of these scenarios: each key's row, prebuilt."""
        rows = self.rows

        async def load_rows(keys: List[int]) -> List[Dict[str, Any]]:
            counter.calls += 1
            counter.keys += len(keys)
            return [rows[key] for key in keys]

        return load_rows

    def store(self, timeout: Optional[float] = None) -> Any:
        """A store with default settings, or a longer timeout for the set-up
        and the MONITOR passes (MONITOR slows the server down)."""
        from loadercache.backends.redis import RedisStore

        if timeout is None:
            return RedisStore(REDIS_URL, prefix=self.prefix, ttl=TTL)
        return RedisStore(REDIS_URL, prefix=self.prefix, ttl=TTL, timeout=timeout)

    def near_store(self, timeout: Optional[float] = None) -> Any:
        """A store whose near cache holds every key of the scenario."""
        from loadercache.backends.redis import RedisStore

        return RedisStore(
            REDIS_URL,
            prefix=self.prefix,
            ttl=TTL,
            near_cache=self.sizes.redis_keys,
            **({} if timeout is None else {"timeout": timeout}),
        )

    def aiocache(self) -> Any:
        """aiocache's RedisCache with its msgpack serializer, keys of its own."""
        from urllib.parse import urlsplit

        from aiocache import RedisCache
        from aiocache.serializers import MsgPackSerializer

        class BinaryMsgPack(MsgPackSerializer):  # type: ignore[misc]
            # aiocache 0.12 decodes what Redis returns with the serializer's
            # encoding (utf-8 by default) before msgpack sees it, which fails
            # on msgpack's bytes; without an encoding, msgpack gets the bytes
            # but would return strings as bytes (raw=True), hence raw=False.
            DEFAULT_ENCODING = None

            def loads(self, value: Optional[bytes]) -> Any:
                if value is None:
                    return None
                return msgpack.loads(value, raw=False, use_list=self.use_list)

        import msgpack  # type: ignore[import-untyped, unused-ignore]

        parts = urlsplit(REDIS_URL)
        return RedisCache(
            serializer=BinaryMsgPack(),
            endpoint=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(parts.path.strip("/") or 0),
            namespace=f"{self.prefix}:aiocache",
        )

    def fresh_namespace(self) -> str:
        self.runs += 1
        return f"cold-{self.runs}"


async def _through_loader(run: _Run, store: Any, namespace: str, fn: Any) -> None:
    """Every chunk as one request: a fresh loader and cache map, one tick."""
    from loadercache import DataLoader

    for chunk in run.chunks:
        loader: DataLoader[int, Any] = DataLoader(
            fn, cache_map=store.cache_map(namespace)
        )
        futures = [loader.load(key) for key in chunk]
        for future in futures:
            await future


# -- 9a: warm reads -------------------------------------------------------------


async def _populate(run: _Run) -> None:
    """9a's set-up: the rows in Redis for loadercache and for aiocache, and
    the server's counts for the plain and the near-cache store."""
    await _write_rows(run)
    await _near_server_counts(run)
    if _aiocache_missing() is None:
        cache = run.aiocache()
        try:
            for chunk in run.chunks:
                await cache.multi_set([(k, run.rows[k]) for k in chunk], ttl=TTL)
        finally:
            await cache.close()


async def _populate_near(run: _Run) -> None:
    """9c's set-up: the rows in Redis, and the near-cache store's counts."""
    await _write_rows(run)
    await _near_server_counts(run)


async def _write_rows(run: _Run) -> None:
    from loadercache import DataLoader

    store = run.store(timeout=_SLOW)
    try:
        # One batch, so one write-back round trip and one generation for all.
        loader: DataLoader[int, Any] = DataLoader(
            run.batch_fn(BatchCounter()), cache_map=store.cache_map("warm")
        )
        await loader.load_many(range(run.sizes.redis_keys))
        await store.flush()
        counter = BatchCounter()
        run.server["warm"] = await _server_counts(
            run, lambda: _through_loader(run, store, "warm", run.batch_fn(counter))
        )
        assert counter.calls == 0, "a key written back could not be read"
    finally:
        await store.aclose()


async def _near_server_counts(run: _Run) -> None:
    """What the server sees of a warm near cache's pass: nothing."""
    counter = BatchCounter()
    near = run.near_store(timeout=_SLOW)
    try:
        await _connect(near)
        await _through_loader(run, near, "warm", run.batch_fn(counter))
        run.server["near"] = await _server_counts(
            run, lambda: _through_loader(run, near, "warm", run.batch_fn(counter))
        )
        assert counter.calls == 0, "a key written back could not be read"
    finally:
        await near.aclose()


async def _warm_loadercache(run: _Run) -> Sample:
    store = run.store()
    try:
        await _connect(store)
        seconds, trips, _ = await _warm_pass(run, store, BatchCounter())
        batches = len(run.chunks)
        return Sample(
            seconds,
            run.sizes.redis_keys,
            extra={"round trips/batch": trips / batches, **run.server.get("warm", {})},
        )
    finally:
        await store.aclose()


async def _warm_pass(
    run: _Run, store: Any, counter: BatchCounter
) -> Tuple[float, int, int]:
    """One timed pass over the warm keys: its seconds, round trips and near hits."""
    before = store.stats
    start = perf_counter()
    await _through_loader(run, store, "warm", run.batch_fn(counter))
    seconds = perf_counter() - start
    after = store.stats
    assert counter.calls == 0, "a warm key reached the batch function"
    trips = after.reads + after.writes - before.reads - before.writes
    return seconds, trips, after.near_hits - before.near_hits


async def _warm_near(run: _Run) -> Sample:
    """9a and 9c: fresh loaders over a warm near cache; no round trip at all."""
    store = run.near_store()
    try:
        await _connect(store)
        counter = BatchCounter()
        # The warm-up pass: one read per batch, which fills the near cache.
        await _through_loader(run, store, "warm", run.batch_fn(counter))
        seconds, trips, near_hits = await _warm_pass(run, store, counter)
        keys = run.sizes.redis_keys
        return Sample(
            seconds,
            keys,
            extra={
                "round trips/batch": trips / len(run.chunks),
                "near hits/load": near_hits / keys,
                **run.server.get("near", {}),
            },
        )
    finally:
        await store.aclose()


async def _warm_aiocache(run: _Run) -> Sample:
    cache = run.aiocache()
    try:
        await cache.exists("connect")  # the pool's connection, outside the timing
        start = perf_counter()
        for chunk in run.chunks:
            values = await cache.multi_get(chunk)
        seconds = perf_counter() - start
        assert values == [run.rows[key] for key in run.chunks[-1]]
        return Sample(seconds, run.sizes.redis_keys)
    finally:
        await cache.close()


def _aiocache_missing() -> Optional[str]:
    try:
        import aiocache  # noqa: F401
    except ImportError as error:
        return f"aiocache cannot be imported ({error}): pip install -e '.[bench]'"
    return None


# -- 9c: near hits against a plain cache hit ----------------------------------------


async def _dict_hits(run: _Run) -> Sample:
    """One plain loader holding every key, loading them again, batch by batch."""
    from loadercache import DataLoader

    counter = BatchCounter()
    loader: DataLoader[int, Any] = DataLoader(run.batch_fn(counter))
    await loader.load_many(range(run.sizes.redis_keys))
    start = perf_counter()
    for chunk in run.chunks:
        futures = [loader.load(key) for key in chunk]
        for future in futures:
            await future
    seconds = perf_counter() - start
    assert counter.calls == 1, "a cached key reached the batch function"
    return Sample(seconds, run.sizes.redis_keys)


async def _connect(store: Any) -> None:
    """Open the store's connection outside the timing (a read of nothing)."""
    from loadercache import DataLoader

    loader: DataLoader[int, Any] = DataLoader(
        batch_fn(BatchCounter()), cache_map=store.cache_map("connect")
    )
    await loader.load(0)
    await store.flush()


async def _warm_raw(run: _Run, hiredis: bool = False) -> Sample:
    import msgpack  # type: ignore[import-untyped, unused-ignore]

    client = _client(hiredis)
    try:
        base = run.store().redis_key("warm", 0)[:-1]  # ...:i:
        await client.ping()
        unpackb = msgpack.unpackb
        _sent.clear()
        start = perf_counter()
        for chunk in run.chunks:
            raws = await client.mget([base + b"%d" % key for key in chunk])
            values = [unpackb(raw[_HEADER:]) for raw in raws]
        seconds = perf_counter() - start
        assert values == [run.rows[key] for key in run.chunks[-1]]
        round_trips = _sent["read"] + _sent["write"]
        return Sample(
            seconds,
            run.sizes.redis_keys,
            extra={"round trips/batch": round_trips / len(run.chunks)},
        )
    finally:
        await _close(client)


# -- 9b: cold loads with write-back ----------------------------------------------


async def _cold_loadercache(run: _Run) -> Sample:
    store = run.store()
    try:
        namespace = run.fresh_namespace()
        await _connect(store)
        counter = BatchCounter()
        before = store.stats
        start = perf_counter()
        await _through_loader(run, store, namespace, run.batch_fn(counter))
        await store.flush()
        seconds = perf_counter() - start
        after = store.stats
        batches = len(run.chunks)
        assert counter.calls == batches, "a cold batch was split or skipped"
        return Sample(
            seconds,
            run.sizes.redis_keys,
            extra={
                "read round trips/batch": (after.reads - before.reads) / batches,
                "write round trips/batch": (after.writes - before.writes) / batches,
                **run.server.get("cold", {}),
            },
        )
    finally:
        await store.aclose()


async def _cold_raw(run: _Run, hiredis: bool = False) -> Sample:
    import msgpack  # type: ignore[import-untyped, unused-ignore]

    client = _client(hiredis)
    try:
        base = run.store().redis_key(run.fresh_namespace(), 0)[:-1]
        await client.ping()
        packb, px = msgpack.packb, int(TTL * 1000)
        fn = run.batch_fn(BatchCounter())
        _sent.clear()
        start = perf_counter()
        for chunk in run.chunks:
            rkeys = [base + b"%d" % key for key in chunk]
            raws = await client.mget(rkeys)
            todo = [key for key, raw in zip(chunk, raws) if raw is None]
            values = await fn(todo)
            pipe = client.pipeline(transaction=False)
            for rkey, value in zip(rkeys, values):
                pipe.set(rkey, packb(value), px=px)
            await pipe.execute()
        seconds = perf_counter() - start
        batches = len(run.chunks)
        return Sample(
            seconds,
            run.sizes.redis_keys,
            extra={
                "read round trips/batch": _sent["read"] / batches,
                "write round trips/batch": _sent["write"] / batches,
            },
        )
    finally:
        await _close(client)


# -- counting at the server --------------------------------------------------------


async def _server_counts(
    run: _Run, work: Callable[[], Awaitable[None]]
) -> Dict[str, float]:
    """Commands per batch that touched this run's keys, as MONITOR saw them.

    Read from a plain socket with a generous line limit: a fenced write of a
    thousand values is one MONITOR line longer than redis-py's reader takes.
    Commands that scripts run inside Redis (MONITOR shows them as the "lua"
    client's) are not the client's commands and are left out.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    reader, writer = await asyncio.open_connection(
        parts.hostname or "127.0.0.1", parts.port or 6379, limit=1 << 26
    )
    sentinel = f"{run.prefix}:done"
    seen: Counter[str] = Counter()
    try:
        writer.write(b"MONITOR\r\n")
        assert await reader.readuntil(b"\r\n") == b"+OK\r\n"

        async def listen() -> None:
            while True:
                line = (await reader.readuntil(b"\r\n")).decode("utf-8", "replace")
                if sentinel in line:
                    return
                if run.prefix not in line or "lua]" in line:
                    continue
                # +1700000000.123456 [0 127.0.0.1:5678] "MGET" "key" ...
                command = line.split("] ", 1)[1].split(" ", 1)[0].strip('"')
                seen[command.upper()] += 1

        listener = asyncio.ensure_future(listen())
        await work()
        import redis.asyncio

        echo = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            await echo.echo(sentinel)
        finally:
            await _close(echo)
        await asyncio.wait_for(listener, 30)
    finally:
        writer.close()
    batches = len(run.chunks)
    return {
        "MGET/batch (server)": seen["MGET"] / batches,
        "commands/batch (server)": sum(seen.values()) / batches,
    }


async def _cold_server_counts(run: _Run) -> None:
    store = run.store(timeout=_SLOW)
    try:
        namespace = run.fresh_namespace()

        async def work() -> None:
            await _through_loader(run, store, namespace, run.batch_fn(BatchCounter()))
            await store.flush()

        run.server["cold"] = await _server_counts(run, work)
    finally:
        await store.aclose()


async def _delete_keys(run: _Run) -> None:
    await delete_prefix(run.prefix)


async def delete_prefix(prefix: str) -> None:
    """Delete the keys under *prefix*: found by SCAN, never KEYS or FLUSH*."""
    client = _client()
    try:
        batch: List[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.delete(*batch)
                batch = []
        if batch:
            await client.delete(*batch)
    finally:
        await _close(client)


# -- the table ------------------------------------------------------------------------


def _bind(work: Callable[[_Run], Awaitable[Any]], run: _Run) -> Callable[[], Any]:
    return lambda: work(run)


def scenarios(sizes: Sizes) -> List[Scenario]:
    """9a, 9b and 9c, or one skipped scenario 9 saying why."""
    reason = unavailable()
    title = f"Redis, {sizes.redis_keys:,} keys, {sizes.redis_batch:,} per batch"
    if reason is not None:
        return [
            Scenario(
                "9",
                9,
                title,
                "the Redis cache map",
                skipped=reason,
                required=REQUIRE_REDIS,
            )
        ]
    run = _Run(sizes)
    cleanup = _bind(_delete_keys, run)
    hiredis = hiredis_available()
    raw_warm: Tuple[Entry, ...] = (Entry(RAW_WARM, _bind(_warm_raw, run)),)
    raw_cold: Tuple[Entry, ...] = (Entry(RAW_COLD, _bind(_cold_raw, run)),)
    if hiredis:
        raw_warm += (Entry(RAW_WARM + HIREDIS, lambda: _warm_raw(run, True)),)
        raw_cold += (Entry(RAW_COLD + HIREDIS, lambda: _cold_raw(run, True)),)
    aiocache: Tuple[Entry, ...] = ()
    if _aiocache_missing() is None:
        # aiocache takes redis-py's default parser: hiredis when installed.
        name = AIOCACHE + (HIREDIS if hiredis else "")
        aiocache = (Entry(name, _bind(_warm_aiocache, run)),)
    warm: Tuple[Entry, ...] = (
        *raw_warm,
        *aiocache,
        Entry(SUBJECT, _bind(_warm_loadercache, run), subject=True),
        Entry(NEAR, _bind(_warm_near, run), subject=True),
    )
    near = _Run(sizes)
    near_vs_dict: Tuple[Entry, ...] = (
        Entry(DICT_HITS, _bind(_dict_hits, near)),
        Entry(NEAR, _bind(_warm_near, near), subject=True),
    )
    cold: Tuple[Entry, ...] = (
        *raw_cold,
        Entry(SUBJECT, _bind(_cold_loadercache, run), subject=True),
    )
    return [
        Scenario(
            "9a",
            9,
            f"{title}: warm reads",
            f"{REDIS_URL}; a request per batch, every key in Redis, "
            "a fresh loader and cache map each",
            warm,
            baseline=RAW_WARM,
            floor_target=0.8,
            peers_of={SUBJECT: (), NEAR: ()},
            exact={"round trips/batch": 1.0, "MGET/batch (server)": 1.0},
            # The near cache's own counts are 9c's checks.
            exact_of={NEAR: {}},
            setup=_bind(_populate, run),
            teardown=cleanup,
        ),
        Scenario(
            "9b",
            9,
            f"{title}: cold loads with write-back",
            "no key in Redis: read, batch function, write-back (flushed in the timing)",
            cold,
            baseline=RAW_COLD,
            peers_of={SUBJECT: ()},
            exact={"read round trips/batch": 1.0, "MGET/batch (server)": 1.0},
            setup=_bind(_cold_server_counts, run),
            teardown=cleanup,
        ),
        Scenario(
            "9c",
            9,
            f"{title}: near hits against a dict loader's hits",
            "fresh loaders over a warm near cache against one plain loader "
            "holding every key, loading them again in the same batches",
            near_vs_dict,
            baseline=DICT_HITS,
            floor_target=0.5,
            peers_of={NEAR: ()},
            exact={
                "round trips/batch": 0.0,
                "near hits/load": 1.0,
                "MGET/batch (server)": 0.0,
            },
            setup=_bind(_populate_near, near),
            teardown=_bind(_delete_keys, near),
        ),
    ]
