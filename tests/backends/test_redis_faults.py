"""The Redis cache map when Redis dies, comes back or stalls.

Each test starts its own redis-server on a free port (no persistence, a
temporary directory) and kills it by pid at the end; the breaker's clock is a
fake, so cooldowns pass without sleeping.  Loads must always return the right
values, never hang, and Redis must be used again once it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Dict, List, Tuple

import fakeredis
import pytest
import redis.asyncio

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore

from ..redis_servers import Calls, RedisServer
from ..redis_servers import recorder as shared_recorder


class Clock:
    """A timer for the breaker that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def recorder(
    compute: Callable[[Any], Any] = lambda key: f"value {key}",
) -> Tuple[Callable[[List[Any]], Any], Calls]:
    return shared_recorder(compute)


async def request(store: RedisStore, batch_load: Any, keys: List[Any]) -> List[Any]:
    """One request: a new loader over a new cache map, loading *keys*."""
    loader = DataLoader(batch_load, cache_map=store.cache_map("users"))
    values: List[Any] = await loader.load_many(keys)
    return values


def episode_logs(caplog: pytest.LogCaptureFixture) -> Dict[str, int]:
    counts = {"failed": 0, "recovered": 0}
    for record in caplog.records:
        if record.name != "loadercache" or record.levelno < logging.WARNING:
            continue
        message = record.getMessage()
        if "round trip failed" in message:
            counts["failed"] += 1
        elif "answers again" in message:
            counts["recovered"] += 1
    return counts


KEYS = list(range(10))
VALUES = [f"value {key}" for key in KEYS]


async def test_a_server_killed_mid_workload_then_restarted(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = RedisStore(
        server.url, breaker_threshold=3, breaker_cooldown=10, timer=clock
    )
    batch_load, calls = recorder()
    caplog.set_level(logging.WARNING, logger="loadercache")

    # Warm: the first request loads, the next ones are served by Redis.
    for _ in range(3):
        assert await request(store, batch_load, KEYS) == VALUES
        await store.flush()
    assert calls == [KEYS]

    # Killed while requests are running: every value is still right.
    async def killer() -> None:
        await asyncio.sleep(0.01)
        server.kill()

    async def workload() -> None:
        for _ in range(20):
            assert await request(store, batch_load, KEYS) == VALUES
            await asyncio.sleep(0.002)

    await asyncio.wait_for(
        asyncio.gather(killer(), *[workload() for _ in range(5)]), 10
    )
    assert await request(store, batch_load, KEYS) == VALUES
    await store.flush()
    stats = store.stats
    assert stats.breaker_state == "open"
    assert stats.breaker_opens == 1
    assert stats.errors >= 3
    assert stats.skipped > 0  # later requests did not even try
    assert episode_logs(caplog) == {"failed": 1, "recovered": 0}

    # Restarted on the same port (empty: no persistence).  Until the cooldown
    # has passed the store does not try; then one trial closes the breaker.
    server.start()
    reads = store.stats.reads
    assert await request(store, batch_load, KEYS) == VALUES
    assert store.stats.reads == reads
    clock.now += 10
    calls.clear()
    assert await request(store, batch_load, KEYS) == VALUES  # a miss: refills
    await store.flush()
    assert await request(store, batch_load, KEYS) == VALUES  # a hit
    assert calls == [KEYS]
    stats = store.stats
    assert stats.breaker_state == "closed"
    assert stats.reads == reads + 2
    assert episode_logs(caplog) == {"failed": 1, "recovered": 1}
    await store.aclose()


async def test_a_failed_trial_reopens_quietly_and_one_trial_at_a_time(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = RedisStore(server.url, breaker_threshold=2, breaker_cooldown=5, timer=clock)
    batch_load, _ = recorder()
    caplog.set_level(logging.WARNING, logger="loadercache")
    server.kill()
    for _ in range(3):
        assert await request(store, batch_load, KEYS) == VALUES
    assert store.stats.breaker_opens == 1
    clock.now += 5
    assert await request(store, batch_load, KEYS) == VALUES  # the trial fails
    stats = store.stats
    assert (stats.breaker_state, stats.breaker_opens, stats.errors) == ("open", 2, 3)

    server.start()
    clock.now += 5
    # Three concurrent requests when the cooldown ends: one trial goes to
    # Redis, the other two skip it.
    skipped = stats.skipped
    results = await asyncio.gather(
        *[request(store, batch_load, KEYS) for _ in range(3)]
    )
    assert results == [VALUES] * 3
    stats = store.stats
    assert (stats.reads, stats.skipped - skipped) == (1, 2)
    assert stats.breaker_state == "closed"
    assert episode_logs(caplog) == {"failed": 1, "recovered": 1}
    await store.aclose()


def sleep_server(server: RedisServer, seconds: float) -> asyncio.Task[Any]:
    """Block the server with DEBUG SLEEP from a client of its own."""
    client = redis.asyncio.Redis.from_url(server.url, socket_timeout=seconds + 5)

    async def sleep() -> Any:
        try:
            return await client.execute_command("DEBUG", "SLEEP", seconds)
        finally:
            await client.aclose()

    return asyncio.get_running_loop().create_task(sleep())


@pytest.mark.parametrize("client", ["url", "client-without-timeouts"])
async def test_a_stalled_server_does_not_hang_loads(
    server: RedisServer, client: str
) -> None:
    if client == "url":
        store = RedisStore(server.url)  # socket_timeout 0.1 s, timeout 0.25 s
    else:
        # A client that would wait forever: the store's own timeout holds.
        store = RedisStore(redis.asyncio.Redis.from_url(server.url), timeout=0.2)
    batch_load, calls = recorder()
    assert await request(store, batch_load, KEYS) == VALUES
    await store.flush()

    sleeping = sleep_server(server, 1)
    await asyncio.sleep(0.1)  # the server is asleep now
    started = time.monotonic()
    assert await request(store, batch_load, [*KEYS, 10]) == [*VALUES, "value 10"]
    elapsed = time.monotonic() - started
    assert elapsed < 0.5, f"a load took {elapsed:.2f}s while Redis slept 1s"
    await store.flush()
    assert time.monotonic() - started < 0.9  # the writes gave up too
    await sleeping
    assert store.stats.errors >= 1
    assert calls == [KEYS, [*KEYS, 10]]
    # Awake again: Redis serves (the breaker did not open: one failure).
    assert await request(store, batch_load, KEYS) == VALUES
    assert calls == [KEYS, [*KEYS, 10]]
    await store.aclose()
    if client != "url":
        await store.client.aclose()


async def test_a_delete_that_could_not_be_sent_is_delivered_when_redis_returns(
    server: RedisServer,
) -> None:
    clock = Clock()
    db = {1: "old", 2: "two"}
    batch_load, _ = recorder(db.__getitem__)
    process_a = RedisStore(
        server.url, breaker_threshold=1, breaker_cooldown=5, timer=clock
    )
    process_b = RedisStore(server.url)
    assert await request(process_a, batch_load, [1]) == ["old"]
    await process_a.flush()

    # Redis stalls; A's read times out and its breaker opens.  A clear made
    # now cannot be sent, but it must not be forgotten: Redis keeps the data.
    sleeping = sleep_server(server, 0.5)
    await asyncio.sleep(0.1)
    assert await request(process_a, batch_load, [2]) == ["two"]
    assert process_a.stats.breaker_state == "open"
    db[1] = "new"
    DataLoader(batch_load, cache_map=process_a.cache_map("users")).clear(1)
    await process_a.flush()
    assert process_a.stats.deleted_keys == 0
    await sleeping

    # The cooldown over, A's next round trip carries the delete first.
    clock.now += 5
    assert await request(process_a, batch_load, [2]) == ["two"]
    assert process_a.stats.deleted_keys == 1
    assert await request(process_b, batch_load, [1]) == ["new"]
    await process_a.aclose()
    await process_b.aclose()


async def test_fakeredis_disconnected_degrades_the_same_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The quick variant of the above for machines without redis-server.
    fake_server = fakeredis.FakeServer()
    clock = Clock()
    store = RedisStore(
        fakeredis.FakeAsyncRedis(server=fake_server),
        breaker_threshold=2,
        breaker_cooldown=5,
        timer=clock,
    )
    batch_load, calls = recorder()
    caplog.set_level(logging.WARNING, logger="loadercache")
    assert await request(store, batch_load, KEYS) == VALUES
    await store.flush()
    fake_server.connected = False
    for _ in range(4):
        assert await request(store, batch_load, KEYS) == VALUES
    stats = store.stats
    assert (stats.errors, stats.skipped, stats.breaker_state) == (2, 2, "open")
    fake_server.connected = True
    clock.now += 5
    assert await request(store, batch_load, KEYS) == VALUES  # a hit again
    assert len(calls) == 5
    assert store.stats.breaker_state == "closed"
    assert episode_logs(caplog) == {"failed": 1, "recovered": 1}
    await store.aclose()
