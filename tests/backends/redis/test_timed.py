"""Timed values: ``stale_if_error`` and ``refresh_ahead``, on private servers.

Each test runs against Redis 7 (fenced writes by Lua script) and Valkey 9
(``SET ... IFEQ``); two stores stand for two processes of a fleet.  Where
refresh-ahead draws its chance (XFetch), the draw is pinned.
"""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore, _store

from ...redis_servers import RedisServer


class Database:
    """A batch function whose rows, failures and calls the test controls."""

    def __init__(self) -> None:
        self.version = 1
        self.calls: List[List[Any]] = []
        self.failing = False
        self.key_errors = False
        self.gate: asyncio.Event = asyncio.Event()
        self.gate.set()

    async def __call__(self, keys: List[Any]) -> List[Any]:
        self.calls.append(list(keys))
        await asyncio.wait_for(self.gate.wait(), 10)
        if self.failing:
            raise ConnectionError("the database is down")
        if self.key_errors:
            return [KeyError(key) for key in keys]
        return [f"{key} v{self.version}" for key in keys]

    def loader(self, store: RedisStore) -> DataLoader[Any, Any]:
        return DataLoader(self, cache_map=store.cache_map("users"))


async def expire(server: RedisServer, store: RedisStore, key: Any) -> None:
    """Age *key*'s value past its TTL, not past the grace: rewrite its stale
    time into the past, as a store would see it after the TTL."""
    await store.flush()
    client = server.client()
    rkey = store.redis_key("users", key)
    raw = client.get(rkey)
    assert raw is not None and raw[:1] == b"M", raw
    # "M" | token (8) | crc (4) | stale at (8) | load ms (4) | payload
    aged = raw[:13] + (1).to_bytes(8, "big") + raw[21:]
    client.set(rkey, aged, keepttl=True)


async def test_a_failed_reload_serves_the_stale_value(server: RedisServer) -> None:
    db = Database()
    store = RedisStore(server.url, ttl=60, stale_if_error=300)
    try:
        assert await db.loader(store).load(1) == "1 v1"
        await expire(server, store, 1)
        db.failing = True
        assert await db.loader(store).load(1) == "1 v1"
        assert len(db.calls) == 2  # the reload was tried
        db.failing, db.key_errors = False, True
        assert await db.loader(store).load(1) == "1 v1"  # a per-key error too
        stats = store.stats
        assert stats.stale_reads == 2 and stats.misses == 3
        # The database is back: the new value is loaded and written back.
        db.key_errors, db.version = False, 2
        assert await db.loader(store).load(1) == "1 v2"
        await store.flush()
        assert await db.loader(store).load(1) == "1 v2"
        assert len(db.calls) == 4
        # In Redis, the TTL is the value's plus the grace.
        pttl = server.client().pttl(store.redis_key("users", 1))
        assert 300_000 < pttl <= 360_000
    finally:
        await store.aclose()


async def test_the_stale_value_stays_cached_in_the_request(
    server: RedisServer,
) -> None:
    db = Database()
    store = RedisStore(server.url, ttl=60, stale_if_error=300)
    try:
        await db.loader(store).load(1)
        await expire(server, store, 1)
        db.failing = True
        loader = db.loader(store)
        one, two = loader.load(1), loader.load(2)
        assert await one == "1 v1"
        with pytest.raises(ConnectionError):
            await two  # no stale value: the batch's error
        assert await loader.load(1) == "1 v1"
        assert len(db.calls) == 2  # served from the request's cache
        with pytest.raises(ConnectionError):
            await loader.load(2)  # not cached: tried again
        assert len(db.calls) == 3
    finally:
        await store.aclose()


async def test_without_stale_if_error_a_failed_load_fails(
    server: RedisServer,
) -> None:
    db = Database()
    store = RedisStore(server.url, ttl=0.2)
    try:
        assert await db.loader(store).load(1) == "1 v1"
        await store.flush()
        await asyncio.sleep(0.4)
        db.failing = True
        with pytest.raises(ConnectionError):
            await db.loader(store).load(1)
        assert store.stats.stale_reads == 0
    finally:
        await store.aclose()


async def test_past_the_grace_the_value_is_gone(server: RedisServer) -> None:
    db = Database()
    store = RedisStore(server.url, ttl=0.1, stale_if_error=0.2)
    try:
        assert await db.loader(store).load(1) == "1 v1"
        await store.flush()
        await asyncio.sleep(0.5)
        db.failing = True
        with pytest.raises(ConnectionError):
            await db.loader(store).load(1)
    finally:
        await store.aclose()


async def test_stores_without_timing_read_timed_values(server: RedisServer) -> None:
    # A deploy turning stale_if_error on shares the cache with one that has
    # not yet: each reads the other's values.
    db = Database()
    timed = RedisStore(server.url, refresh_ahead=True, stale_if_error=10)
    plain = RedisStore(server.url)
    try:
        assert await db.loader(timed).load(1) == "1 v1"
        assert await db.loader(plain).load(2) == "2 v1"
        await timed.flush()
        await plain.flush()
        assert await db.loader(plain).load(1) == "1 v1"
        assert await db.loader(timed).load(2) == "2 v1"
        assert len(db.calls) == 2
    finally:
        await timed.aclose()
        await plain.aclose()


def pin_draw(monkeypatch: pytest.MonkeyPatch, draw: float) -> None:
    """Pin XFetch's draw: 1 - draw is the chance's exponent's base."""
    monkeypatch.setattr(_store.random, "random", lambda: draw)


async def test_a_value_near_its_end_is_refreshed_once_across_the_fleet(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database()
    first = RedisStore(server.url, ttl=60, refresh_ahead=True)
    second = RedisStore(server.url, ttl=60, refresh_ahead=True)
    try:
        assert await db.loader(first).load(1) == "1 v1"
        await first.flush()
        # Far from its end, no draw refreshes it.
        pin_draw(monkeypatch, 0.999999)
        assert await db.loader(second).load(1) == "1 v1"
        assert second.stats.refreshes == 0 and len(db.calls) == 1
        # Near it (the stale time rewritten to one second from now), both
        # processes draw a refresh; one takes it.
        await near_end(server, first, 1)
        db.gate.clear()
        db.version = 2
        readers = [db.loader(store).load(1) for store in (first, second, first)]
        # Answered with the current value, before the reload returns.
        assert await asyncio.wait_for(asyncio.gather(*readers), 5) == ["1 v1"] * 3
        assert first.stats.refreshes + second.stats.refreshes == 1
        assert len(db.calls) == 2
        db.gate.set()
        for _ in range(100):
            await first.flush()
            await second.flush()
            if db.calls and await db.loader(second).load(1) == "1 v2":
                break
            await asyncio.sleep(0.02)
        assert await db.loader(second).load(1) == "1 v2"
        assert len(db.calls) == 2  # nobody loaded it but the refresh
        assert server.client().pttl(first.redis_key("users", 1)) > 50_000
    finally:
        await first.aclose()
        await second.aclose()


async def near_end(server: RedisServer, store: RedisStore, key: Any) -> None:
    """Rewrite *key*'s stale time to one second from now, and its load time
    to one second: a pinned draw near 1 then refreshes it."""
    client = server.client()
    rkey = store.redis_key("users", key)
    raw = client.get(rkey)
    assert raw is not None and raw[:1] == b"M", raw
    seconds, micros = client.time()
    soon = seconds * 1000 + micros // 1000 + 1000
    timing = soon.to_bytes(8, "big") + (1000).to_bytes(4, "big")
    client.set(rkey, raw[:13] + timing + raw[25:], keepttl=True)


async def test_a_refresh_is_not_written_over_a_clear(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database()
    refresher = RedisStore(server.url, ttl=60, refresh_ahead=True)
    clearer = RedisStore(server.url, ttl=60)
    try:
        await db.loader(refresher).load(1)
        await refresher.flush()
        await near_end(server, refresher, 1)
        pin_draw(monkeypatch, 0.999999)
        db.gate.clear()
        assert await db.loader(refresher).load(1) == "1 v1"
        assert refresher.stats.refreshes == 1
        # Another process clears the key while the refresh loads.
        db.loader(clearer).clear(1)
        await clearer.flush()
        db.gate.set()
        for _ in range(100):
            if refresher.stats.fenced_refusals:
                break
            await refresher.flush()
            await asyncio.sleep(0.02)
        assert refresher.stats.fenced_refusals == 1
        assert server.client().get(refresher.redis_key("users", 1)) is None
    finally:
        await refresher.aclose()
        await clearer.aclose()


async def test_a_failed_refresh_leaves_the_value(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database()
    store = RedisStore(server.url, ttl=60, refresh_ahead=True)
    try:
        await db.loader(store).load(1)
        await store.flush()
        await near_end(server, store, 1)
        pin_draw(monkeypatch, 0.999999)
        db.failing = True
        assert await db.loader(store).load(1) == "1 v1"
        for _ in range(100):
            if len(db.calls) == 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        await store.flush()
        rkey = store.redis_key("users", 1)
        assert server.client().get(rkey) is not None
        db.failing = False
        pin_draw(monkeypatch, 0.0)
        assert await db.loader(store).load(1) == "1 v1"
        assert len(db.calls) == 2
    finally:
        await store.aclose()
