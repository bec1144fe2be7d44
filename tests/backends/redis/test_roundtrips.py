"""What the Redis cache map costs Redis, counted by the server itself.

Each test starts its own server (Redis and Valkey), resets its statistics
(CONFIG RESETSTAT) and reads INFO commandstats afterwards: no mocks.  A read
round trip is one ``MGET <generation> <keys>``, so ``mget`` counts read round
trips.  A write round trip is one pipeline of ``SET``s that ends with one
``PEXPIRE`` per namespace written of its generation key (it keeps the
generation alive as long as the values), so ``pexpire`` counts write round
trips of one namespace.

These counts are of the store without leases (``leases=False``): the Lua
scripts of leases run their GETs and SETs inside Redis, which commandstats
counts too.  What leases cost is counted by round trips: one ``EVALSHA``
more for a batch with misses, and nothing for one without.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore

from ...redis_servers import RedisServer, recorder, redis_py_clients

N, B = 120, 6


def assert_b_reads_and_at_most_b_writes(server: RedisServer) -> int:
    """Check the server's counts for N keys over B batches; return the writes.

    Each write round trip ends with one PEXPIRE of the generation key.
    """
    counted = server.command_calls()
    writes = counted["pexpire"]
    assert 1 <= writes <= B
    # Every value once, plus at most one generation created per write.
    assert N < counted["set"] <= N + writes
    assert counted == {"mget": B, "set": counted["set"], "pexpire": writes}
    return writes


async def test_n_keys_over_b_concurrent_batches_cost_b_reads_and_at_most_b_writes(
    server: RedisServer,
) -> None:
    batch_load, calls = recorder()
    store = RedisStore(server.url, leases=False)
    server.reset_stats()
    loader = DataLoader(
        batch_load, max_batch_size=N // B, cache_map=store.cache_map("users")
    )
    assert await loader.load_many(range(N)) == [{"id": key} for key in range(N)]
    await store.flush()
    assert len(calls) == B
    writes = assert_b_reads_and_at_most_b_writes(server)
    assert (store.stats.reads, store.stats.writes) == (B, writes)

    # Another process, B batches again: B reads, all hits, nothing written.
    server.reset_stats()
    reader = RedisStore(server.url, leases=False)
    warm = DataLoader(
        batch_load, max_batch_size=N // B, cache_map=reader.cache_map("users")
    )
    assert await warm.load_many(range(N)) == [{"id": key} for key in range(N)]
    await reader.flush()
    assert server.command_calls() == {"mget": B}
    assert len(calls) == B
    await store.aclose()
    await reader.aclose()


async def test_n_keys_over_b_successive_batches_cost_b_reads_and_at_most_b_writes(
    server: RedisServer,
) -> None:
    batch_load, calls = recorder()
    store = RedisStore(server.url, leases=False)
    server.reset_stats()
    loader = DataLoader(batch_load, cache_map=store.cache_map("users"))
    size = N // B
    for start in range(0, N, size):  # one batch per request step
        keys = list(range(start, start + size))
        assert await loader.load_many(keys) == [{"id": key} for key in keys]
    await store.flush()
    assert len(calls) == B
    assert_b_reads_and_at_most_b_writes(server)
    await store.aclose()


async def test_clear_all_is_one_command_whatever_the_namespace_holds(
    server: RedisServer,
) -> None:
    batch_load, calls = recorder()
    store = RedisStore(server.url, leases=False)
    keys = list(range(1000))
    await DataLoader(batch_load, cache_map=store.cache_map("users")).load_many(keys)
    await DataLoader(batch_load, cache_map=store.cache_map("posts")).load_many([1])
    await store.flush()
    with server.client() as client:
        size = client.dbsize()

    server.reset_stats()
    DataLoader(batch_load, cache_map=store.cache_map("users")).clear_all()
    await store.flush()
    assert server.command_calls() == {"set": 1}  # the new generation, nothing else
    with server.client() as client:
        assert client.dbsize() == size  # old values stay until overwritten/expired

    # Another process: every key of the namespace is a miss, in one read; the
    # other namespace is untouched.
    reader = RedisStore(server.url, leases=False)
    calls.clear()
    server.reset_stats()
    users = DataLoader(batch_load, cache_map=reader.cache_map("users"))
    assert await users.load_many(keys) == [{"id": key} for key in keys]
    posts = DataLoader(batch_load, cache_map=reader.cache_map("posts"))
    assert await posts.load(1) == {"id": 1}
    assert calls == [keys]
    assert server.command_calls()["mget"] == 2
    await store.aclose()
    await reader.aclose()


async def test_clear_then_load_in_one_tick_deletes_before_it_reads(
    server: RedisServer,
) -> None:
    db = {1: "old"}
    batch_load, calls = recorder(db.__getitem__)
    store = RedisStore(server.url, leases=False)
    loader = DataLoader(batch_load, cache_map=store.cache_map("users"))
    assert await loader.load(1) == "old"
    await store.flush()
    db[1] = "new"

    server.reset_stats()
    before = store.stats
    assert await loader.clear(1).load(1) == "new"
    await store.flush()
    after = store.stats
    # The delete went out the turn it was made, on the connection the read
    # took a turn later (so Redis ran it first); then the fresh value (the
    # generation's expiry was extended by the first write: not again yet).
    assert (after.reads - before.reads, after.writes - before.writes) == (1, 2)
    assert server.command_calls() == {"del": 1, "mget": 1, "set": 1}
    assert calls == [[1], [1]]
    await store.aclose()


async def test_the_generation_expiry_is_extended_once_per_half_ttl(
    server: RedisServer,
) -> None:
    # Every extension is a change Redis tells every near cache of (which
    # drops the namespace there): a write extends it only when the last
    # extension is half the longest TTL old, so it still outlives the values.
    batch_load, _ = recorder()
    store = RedisStore(server.url, leases=False, ttl=0.4)
    server.reset_stats()
    for key in range(3):
        await DataLoader(batch_load, cache_map=store.cache_map("users")).load(key)
        await store.flush()
    assert server.command_calls().get("pexpire") == 1
    await asyncio.sleep(0.2)
    await DataLoader(batch_load, cache_map=store.cache_map("users")).load(9)
    await store.flush()
    assert server.command_calls().get("pexpire") == 2
    with server.client() as client:
        gen_ttl = client.pttl(store.redis_key("users", 0)[: -len(b"i:0")] + b"gen")
    assert 600 < gen_ttl <= 800  # twice the TTL
    await store.aclose()


async def test_a_prime_is_one_write_or_two_round_trips_in_a_new_process(
    server: RedisServer,
) -> None:
    batch_load, _ = recorder()
    store = RedisStore(server.url, leases=False)
    await DataLoader(batch_load, cache_map=store.cache_map("users")).load(1)
    await store.flush()

    # A process that has read the namespace knows its generation (and has
    # extended its expiry with the first write).
    server.reset_stats()
    DataLoader(batch_load, cache_map=store.cache_map("users")).prime(2, "two")
    await store.flush()
    assert server.command_calls() == {"set": 1}

    # A new process first reads the generation: two round trips.
    fresh = RedisStore(server.url, leases=False)
    server.reset_stats()
    DataLoader(batch_load, cache_map=fresh.cache_map("users")).prime(3, "three")
    await fresh.flush()
    assert server.command_calls() == {"get": 1, "set": 1, "pexpire": 1}
    assert fresh.stats.writes == 2
    await store.aclose()
    await fresh.aclose()


async def test_cache_false_and_local_hits_cost_nothing(server: RedisServer) -> None:
    batch_load, _ = recorder()
    store = RedisStore(server.url, leases=False)
    server.reset_stats()
    uncached = DataLoader(batch_load, cache=False, cache_map=store.cache_map("users"))
    await uncached.load_many([1, 2, 3])
    uncached.prime(1, "x").clear(2).clear_all()
    await store.flush()
    assert server.command_calls() == {}

    cached = DataLoader(batch_load, cache_map=store.cache_map("users"))
    await cached.load_many([1, 2])
    await store.flush()
    server.reset_stats()
    for _ in range(10):
        await cached.load_many([1, 2])  # held by the request's own map
    await store.flush()
    assert server.command_calls() == {}
    await store.aclose()


async def test_leases_cost_a_cold_batch_one_round_trip_and_a_warm_one_none(
    server: RedisServer,
) -> None:
    batch_load, calls = recorder()
    store = RedisStore(server.url)  # leases on, the default
    server.reset_stats()
    loader = DataLoader(
        batch_load, max_batch_size=N // B, cache_map=store.cache_map("users")
    )
    assert await loader.load_many(range(N)) == [{"id": key} for key in range(N)]
    await store.flush()
    counted = server.command_calls()
    assert counted["mget"] == B  # the reads
    fenced = counted.get("evalsha", 0) - B  # the fenced writes, on Redis 7
    assert counted["evalsha"] in (B, B + 1, B + B)  # plus one lease per batch
    assert fenced == 0 or server.kind == "redis"
    assert store.stats.leases == N and store.stats.fenced_refusals == 0

    # Warm: a batch is one MGET, exactly as without leases.
    server.reset_stats()
    reader = RedisStore(server.url)
    warm = DataLoader(
        batch_load, max_batch_size=N // B, cache_map=reader.cache_map("users")
    )
    assert await warm.load_many(range(N)) == [{"id": key} for key in range(N)]
    await reader.flush()
    assert server.command_calls() == {"mget": B}
    assert len(calls) == B
    await store.aclose()
    await reader.aclose()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, cluster=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_a_redis_cluster_reads_a_batch_with_one_mget_on_one_node(
    cluster: RedisServer,
) -> None:
    # All keys of a namespace share its hash tag, so a batch is one MGET (in
    # one pipeline) on the node that owns the namespace's slot.
    redis_py_clients()
    db = {key: f"v{key}" for key in range(N)}
    batch_load, calls = recorder(db.__getitem__)
    clients = [RedisCluster(host="127.0.0.1", port=cluster.port) for _ in range(2)]
    writer, reader = (RedisStore(client) for client in clients)
    cluster.reset_stats()
    loader = DataLoader(
        batch_load, max_batch_size=N // B, cache_map=writer.cache_map("tenant:1:users")
    )
    assert await loader.load_many(range(N)) == [db[key] for key in range(N)]
    await writer.flush()
    warm = DataLoader(
        batch_load, max_batch_size=N // B, cache_map=reader.cache_map("tenant:1:users")
    )
    assert await warm.load_many(range(N)) == [db[key] for key in range(N)]
    counted = cluster.command_calls()
    assert (counted["mget"], counted.get("get", 0)) == (2 * B, 0)
    assert 1 <= counted["pexpire"] <= B
    assert len(calls) == B and warm.stats.remote_hits == N

    # clear, prime and clear_all reach the other process through the cluster.
    db[0] = "changed"
    DataLoader(batch_load, cache_map=reader.cache_map("tenant:1:users")).clear(0).prime(
        1, "primed"
    )
    await reader.flush()
    check = DataLoader(batch_load, cache_map=writer.cache_map("tenant:1:users"))
    assert await check.load_many([0, 1, 2]) == ["changed", "primed", db[2]]
    DataLoader(batch_load, cache_map=writer.cache_map("tenant:1:users")).clear_all()
    await writer.flush()
    calls.clear()
    again = DataLoader(batch_load, cache_map=reader.cache_map("tenant:1:users"))
    assert await again.load_many([1, 2]) == [db[1], db[2]]
    assert calls == [[1, 2]]
    assert writer.stats.errors == reader.stats.errors == 0
    for client in clients:
        await client.aclose()
