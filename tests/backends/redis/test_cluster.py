"""RedisStore(cluster=True) on a real local cluster (3 masters, 3 replicas).

Each test starts its own cluster (``cluster`` fixture, Redis 7.0 and Valkey 9)
and stops it by pid.  The claims: a namespace spreads over every master; a
batch costs one round trip per master; clear, prime, clear_all and leases
reach the other stores; a failover, a killed master and a slot migrated
mid-load give no wrong value and no hang, and keys of the other masters keep
hitting.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Set

import pytest

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore
from loadercache.backends.redis._cluster import ClusterLink, first_key
from loadercache.backends.redis._keys import bucket_of, key_slot, namespace_base

from ...redis_cluster import LocalCluster
from ...redis_servers import (
    KINDS,
    delete_prefix,
    real_redis_url,
    recorder,
    redis_py_clients,
)
from .test_leases import Process, stampede


@pytest.fixture(scope="module", params=KINDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """One cluster for the tests that leave it as they found it (each uses a
    key prefix of its own); the fault tests get their own (``cluster``)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), kind=request.param)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


KEYS = list(range(3000))


def make_store(cluster: LocalCluster, prefix: str, **options: Any) -> RedisStore:
    options.setdefault("timeout", 1.0)
    options.setdefault("wait_for_writes", True)
    return RedisStore(cluster.seed_url, cluster=True, prefix=prefix, **options)


def prefix() -> str:
    return f"lcc-{uuid.uuid4().hex[:8]}"


def value(key: Any) -> Dict[str, Any]:
    return {"id": key}


def count_values(node: Any, prefix: str) -> int:
    with node.client() as client:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}:*}}:i:*", count=1000))


def masters_of(
    store: RedisStore, cluster: LocalCluster, keys: List[int]
) -> Dict[int, int]:
    """Key -> port of the master that serves its slot now."""
    by_slot: Dict[int, int] = {}
    found = {}
    for key in keys:
        slot = key_slot(store.redis_key("users", key))
        if slot not in by_slot:
            by_slot[slot] = cluster.master_of_slot(slot).port
        found[key] = by_slot[slot]
    return found


async def load_all(store: RedisStore, batch: Any, keys: List[int]) -> List[Any]:
    loader: DataLoader[int, Any] = DataLoader(batch, cache_map=store.cache_map("users"))
    return await asyncio.wait_for(loader.load_many(keys), timeout=10)


async def test_a_namespace_spreads_over_every_master(shared: LocalCluster) -> None:
    cluster = shared
    name = prefix()
    store = make_store(cluster, name)
    batch, _ = recorder(value)
    try:
        assert await load_all(store, batch, KEYS) == [value(k) for k in KEYS]
        await store.flush()
    finally:
        await store.aclose()
    counts = [count_values(master, name) for master in cluster.masters()]
    assert sum(counts) == len(KEYS)
    assert min(counts) >= len(KEYS) // 5, counts


async def test_a_batch_costs_one_round_trip_per_master(shared: LocalCluster) -> None:
    cluster = shared
    store = make_store(cluster, prefix())
    batch, calls = recorder(value)
    try:
        await load_all(store, batch, KEYS)
        await store.flush()
        link = store._link
        assert isinstance(link, ClusterLink)
        nodes = link.nodes
        assert len(nodes) == 3
        writes = {node: link.link(node).writes for node in nodes}
        cluster.reset_stats()
        assert await load_all(store, batch, KEYS) == [value(k) for k in KEYS]
        assert len(calls) == 1  # the second batch was served by Redis
        for node in nodes:
            assert link.link(node).writes - writes[node] == 1, node
        # Each master read its own buckets, one MGET each, and nothing else.
        buckets_on: Dict[int, Set[int]] = {}
        for slot in {key_slot(store.redis_key("users", key)) for key in KEYS}:
            buckets_on.setdefault(cluster.master_of_slot(slot).port, set()).add(slot)
        for master in cluster.masters():
            counted = cluster.command_calls(master)
            assert counted.get("mget") == len(buckets_on[master.port]), counted
            # (REPLCONF: its replica's acknowledgements.)
            assert set(counted) <= {"mget", "cluster|slots", "replconf"}, counted
    finally:
        await store.aclose()


async def test_clear_prime_clear_all_and_leases_reach_the_other_store(
    shared: LocalCluster,
) -> None:
    cluster = shared
    name = prefix()
    writer = make_store(cluster, name)
    reader = make_store(cluster, name)
    batch, calls = recorder(value)
    keys = KEYS[:300]
    try:
        await load_all(writer, batch, keys)
        await writer.flush()
        assert await load_all(reader, batch, keys) == [value(k) for k in keys]
        assert len(calls) == 1
        cache = writer.cache_map("users")
        loader: DataLoader[int, Any] = DataLoader(batch, cache_map=cache)
        loader.clear(5)
        loader.prime(6, {"id": 6, "primed": True})
        await writer.flush()
        got = await load_all(reader, batch, [5, 6, 7])
        assert got == [value(5), {"id": 6, "primed": True}, value(7)]
        assert calls[-1] == [5]
        DataLoader(batch, cache_map=writer.cache_map("users")).clear_all()
        await writer.flush()
        del calls[:]
        await load_all(reader, batch, keys)
        assert sorted(k for call in calls for k in call) == keys

        # Leases: two stores missing the same cold keys load each key once.
        slow_calls: List[List[int]] = []

        async def slow(keys: List[int]) -> List[Any]:
            slow_calls.append(list(keys))
            await asyncio.sleep(0.3)
            return [value(k) for k in keys]

        cold = list(range(10_000, 10_200))
        both = await asyncio.gather(
            load_all(writer, slow, cold), load_all(reader, slow, cold)
        )
        assert both[0] == both[1] == [value(k) for k in cold]
        assert sorted(k for call in slow_calls for k in call) == cold
    finally:
        await writer.aclose()
        await reader.aclose()


async def _until(check: Any, what: str, seconds: float = 3.0) -> None:
    """Wait until *check()* (a bool, or an awaitable of one) holds."""
    deadline = time.monotonic() + seconds
    for _ in range(1000):
        held = check()
        if await held if asyncio.iscoroutine(held) else held:
            return
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_near_cache_tracks_every_node(shared: LocalCluster) -> None:
    cluster = shared
    name = prefix()
    near = make_store(cluster, name, near_cache=10_000)
    other = make_store(cluster, name)
    batch, calls = recorder(value)
    keys = KEYS[:300]
    try:
        await load_all(near, batch, keys)
        await near.flush()
        await load_all(near, batch, keys)  # read from Redis: kept near
        cluster.reset_stats()
        assert await load_all(near, batch, keys) == [value(k) for k in keys]
        # No node was asked: every key was a near hit.
        for master in cluster.masters():
            assert "mget" not in cluster.command_calls(master)
        assert near.stats.near_hits >= len(keys)
        assert len(calls) == 1

        # Another store's clear and prime reach it, on whatever node.
        writer: DataLoader[int, Any] = DataLoader(
            batch, cache_map=other.cache_map("users")
        )
        writer.clear(5)
        writer.prime(6, "primed")
        await other.flush()

        async def seen() -> bool:
            before = len(calls)
            got = await load_all(near, batch, [5, 6])
            return got == [value(5), "primed"] and calls[before:] == [[5]]

        await _until(seen, "the clear and the prime evicted the near values")

        # And its clear_all: every bucket's generation.
        writer.clear_all()
        await other.flush()

        async def cleared() -> bool:
            before = len(calls)
            await load_all(near, batch, keys[100:110])
            return calls[before:] == [keys[100:110]]

        await _until(cleared, "clear_all emptied the near cache")

        # A node's connection killed: the near cache empties, then fills again.
        await load_all(near, batch, keys)  # loads those clear_all left out
        await near.flush()
        await load_all(near, batch, keys)  # reads them: kept near
        assert near.stats.near_size == len(keys)
        flushes = near.stats.near_flushes
        with cluster.masters()[0].client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "normal")
        await _until(
            lambda: near.stats.near_flushes > flushes,
            "the near cache flushed",
        )
        assert near.stats.near_size == 0
        await load_all(near, batch, keys)
        await load_all(near, batch, keys)
        hits = near.stats.near_hits
        await load_all(near, batch, keys)
        assert near.stats.near_hits - hits == len(keys)
    finally:
        await near.aclose()
        await other.aclose()


async def _load_through(
    cluster: LocalCluster,
    store: RedisStore,
    fault: Any,
    keys: List[int],
) -> Dict[str, Any]:
    """Load *keys* round after round (new loader each) while *fault* runs in a
    thread; every answer must be right and none may hang.  Returns the keys
    the batch function loaded during the fault, and the rounds run."""
    loaded: List[int] = []

    async def batch(batch_keys: List[int]) -> List[Any]:
        loaded.extend(batch_keys)
        return [value(k) for k in batch_keys]

    faulting = asyncio.ensure_future(asyncio.to_thread(fault))
    rounds = 0
    deadline = time.monotonic() + 60
    while not faulting.done() and rounds < 2000:
        assert time.monotonic() < deadline, "the fault took too long"
        assert await load_all(store, batch, keys) == [value(k) for k in keys]
        rounds += 1
        await asyncio.sleep(0.01)
    await faulting
    during = list(loaded)
    # Afterwards every key is served by Redis again, soon.
    for _ in range(200):
        del loaded[:]
        assert await load_all(store, batch, keys) == [value(k) for k in keys]
        if not loaded:
            break
        await asyncio.sleep(0.05)
    assert not loaded, f"{len(loaded)} keys still missed after the fault"
    return {"during": during, "rounds": rounds}


async def warm_store(cluster: LocalCluster, keys: List[int]) -> RedisStore:
    """A store whose namespace holds *keys* (breakers that retry soon)."""
    store = make_store(cluster, prefix(), breaker_cooldown=0.2)
    await load_all(store, recorder(value)[0], keys)
    await store.flush()
    return store


async def test_a_failover_mid_load_loses_nothing(cluster: LocalCluster) -> None:
    keys = KEYS[:600]
    store = await warm_store(cluster, keys)
    try:
        victim = cluster.masters()[0]
        owner = masters_of(store, cluster, keys)
        replica = cluster.replica_of(victim)
        result = await _load_through(
            cluster, store, lambda: cluster.failover(replica), keys
        )
        assert result["rounds"] > 0
        # Only keys of the master that failed over were ever loaded again.
        assert {owner[k] for k in result["during"]} <= {victim.port}
    finally:
        await store.aclose()


async def test_a_killed_master_costs_only_its_keys(cluster: LocalCluster) -> None:
    keys = KEYS[:600]
    store = await warm_store(cluster, keys)
    try:
        victim = cluster.masters()[0]
        owner = masters_of(store, cluster, keys)
        with victim.client() as client:
            client.execute_command("WAIT", 1, 1000)  # its replica has them
        for node in cluster.masters():
            # Redis' default (yes) refuses every key while a master is down;
            # a cluster that serves the others is what this is about.
            with node.client() as client:
                client.config_set("cluster-require-full-coverage", "no")

        def kill() -> None:
            cluster.kill(victim)
            cluster.wait_promoted(victim)

        result = await _load_through(cluster, store, kill, keys)
        assert result["during"], "the killed master's keys were not loaded"
        assert {owner[k] for k in result["during"]} == {victim.port}
    finally:
        await store.aclose()


async def test_a_slot_migrated_mid_load_gives_right_values(
    cluster: LocalCluster,
) -> None:
    store = make_store(cluster, prefix())
    batch, calls = recorder(value)
    keys = KEYS[:600]
    try:
        await load_all(store, batch, keys)
        await store.flush()
        slot = key_slot(store.redis_key("users", keys[0]))
        source = cluster.master_of_slot(slot)
        target = next(m for m in cluster.masters() if m.port != source.port)
        with source.client() as client:
            in_slot = client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        assert in_slot > 2
        cluster.begin_migration(slot, source, target, keys=in_slot // 2)
        for _ in range(3):  # keys split over two nodes: right, if not hits
            assert await load_all(store, batch, keys) == [value(k) for k in keys]
        await store.flush()
        cluster.finish_migration(slot, source, target)
        del calls[:]
        # MOVED is followed within the read: the slot's keys hit at their
        # new node at once.
        assert await load_all(store, batch, keys) == [value(k) for k in keys]
        assert calls == []
    finally:
        await store.aclose()


# -- without a cluster: the pieces ------------------------------------------------


def test_the_buckets_of_a_namespace_cover_the_slots_evenly() -> None:
    for namespace in ("users", "tenant:7:users", "ü"):
        slots = [
            key_slot(namespace_base("lc", "1", namespace, bucket, 16))
            for bucket in range(16)
        ]
        # Bucket b's slot is in the b-th sixteenth of the slots: each of
        # three masters with even ranges serves 5 or 6 buckets.
        assert [slot * 16 // 16384 for slot in slots] == list(range(16))


def test_a_spread_key_names_its_bucket_count_and_bucket() -> None:
    store = RedisStore("redis://127.0.0.1:1", buckets=16)
    rkey = store.redis_key("users", 42)
    bucket = bucket_of(b"i:42", 16)
    assert rkey == namespace_base("lc", "1", "users", bucket, 16) + b"i:42"
    assert rkey.startswith(b"lc:3:v1:b16:{%d." % bucket)
    # One server: one tag per namespace, as before.
    assert RedisStore("redis://127.0.0.1:1").redis_key("users", 42) == (
        b"lc:3:v1:{users}:i:42"
    )


def test_first_key_finds_the_key_of_every_command_the_store_sends() -> None:
    assert first_key((b"MGET", b"g", b"a")) == b"g"
    assert first_key((b"SET", b"k", b"v", b"NX")) == b"k"
    assert first_key((b"EVALSHA", b"sha", 2, b"k1", b"k2")) == b"k1"
    assert first_key((b"EVAL", b"return 1", 0)) is None
    assert first_key((b"CLIENT", b"CACHING", b"YES")) is None
    assert first_key((b"PING",)) is None


def test_cluster_options_are_checked() -> None:
    with pytest.raises(TypeError, match="URL of a node"):
        RedisStore(object(), cluster=True)
    with pytest.raises(ValueError, match="at most 1024"):
        RedisStore("redis://127.0.0.1:1", buckets=1025)
    with pytest.raises(ValueError, match="at least 1"):
        RedisStore("redis://127.0.0.1:1", buckets=0)
    with pytest.raises(ValueError, match="database 0"):
        RedisStore("redis://127.0.0.1:1/2", cluster=True)
    assert RedisStore("redis://127.0.0.1:1", cluster=True).buckets == 16


async def test_a_spread_namespace_works_on_one_server() -> None:
    # buckets > 1 without a cluster: the same store, its namespace in 4 tags.
    url = real_redis_url()
    name = prefix()
    writer = RedisStore(url, prefix=name, buckets=4, wait_for_writes=True)
    reader = RedisStore(url, prefix=name, buckets=4, wait_for_writes=True)
    batch, calls = recorder(value)
    keys = list(range(200))
    try:
        await load_all(writer, batch, keys)
        await writer.flush()
        assert await load_all(reader, batch, keys) == [value(k) for k in keys]
        assert len(calls) == 1
        assert reader.stats.reads == 4  # one MGET per bucket
        loader: DataLoader[int, Any] = DataLoader(
            batch, cache_map=writer.cache_map("users")
        )
        loader.clear(5)
        loader.prime(6, "primed")
        await writer.flush()
        assert await load_all(reader, batch, [5, 6]) == [value(5), "primed"]
        assert calls[-1] == [5]
        loader.clear_all()
        await writer.flush()
        del calls[:]
        await load_all(reader, batch, keys)
        assert sorted(k for call in calls for k in call) == keys
    finally:
        await writer.aclose()
        await reader.aclose()
        delete_prefix(url, name)


# -- several processes ---------------------------------------------------------


@pytest.fixture
async def cluster_fleet(
    shared: LocalCluster, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Processes of a fleet (tests/backends/redis/fleet.py) on the cluster,
    with a prefix of their own."""
    db = tmp_path / "db.json"
    db.write_text(json.dumps({f"k{i}": f"v{i}" for i in range(1000)}))
    processes: List[Process] = []
    name = prefix()

    async def start(*options: str) -> Process:
        process = await Process.start(
            shared.seed_url, db, "--cluster", "--prefix", name, *options
        )
        processes.append(process)
        return process

    try:
        yield start
    finally:
        for process in processes:
            await process.stop()


FLEET_KEYS = [f"k{i}" for i in range(200)]


async def test_a_fleet_on_a_cluster_loads_each_key_once(
    cluster_fleet: Callable[..., Any],
) -> None:
    processes = [await cluster_fleet() for _ in range(4)]  # x 8 requests
    loaded = await stampede(processes, FLEET_KEYS)
    assert sorted(loaded) == sorted(FLEET_KEYS)


async def test_a_fleet_on_a_cluster_sees_each_others_changes(
    cluster_fleet: Callable[..., Any], tmp_path: Path
) -> None:
    writer = await cluster_fleet()
    reader = await cluster_fleet("--near", "1000")
    keys = ",".join(FLEET_KEYS)
    await writer(f"load users {keys}")
    assert await reader(f"load users {keys}") == [f"v{i}" for i in range(200)]
    assert await reader(f"load users {keys}") == [f"v{i}" for i in range(200)]
    assert await reader("calls") == []  # all from Redis, then near
    assert await writer("clear users k1") is True
    assert await writer('prime users k2 "primed"') is True
    await asyncio.sleep(0.2)  # the pushes (p99 under a millisecond here)
    assert await reader("load users k1,k2,k3") == ["v1", "primed", "v3"]
    assert await reader("calls") == ["k1"]
    assert await writer("clear_all users") is True
    await asyncio.sleep(0.2)
    await reader(f"load users {keys}")
    assert sorted(await reader("calls")) == sorted(["k1", *FLEET_KEYS])


async def test_buckets_spread_a_namespace_through_a_redis_py_cluster_client(
    shared: LocalCluster,
) -> None:
    redis_py_clients()
    from redis.asyncio.cluster import RedisCluster

    name = prefix()
    client = RedisCluster(host="127.0.0.1", port=shared.masters()[0].port)
    store = RedisStore(client, buckets=16, prefix=name, wait_for_writes=True)
    batch, calls = recorder(value)
    try:
        await load_all(store, batch, KEYS)
        await store.flush()
        assert await load_all(store, batch, KEYS) == [value(k) for k in KEYS]
        assert len(calls) == 1  # the second pass came from the cluster
    finally:
        await store.aclose()
        await client.aclose()
    counts = [count_values(master, name) for master in shared.masters()]
    assert min(counts) >= len(KEYS) // 5, counts
