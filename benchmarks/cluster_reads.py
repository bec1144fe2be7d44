"""Scenario 14: warm reads on a Redis Cluster, a namespace spread or in one slot.

A private 3-master cluster on loopback (no replicas: reads go to masters, so
replicas would only add processes), started by the scenario's set-up with
:class:`tests.redis_cluster.LocalCluster` and killed by pid in its tear-down.
Every entry reads the same ``redis_keys`` rows (scenario 9's
:func:`~benchmarks.redis_tier.row`), all of them in the cluster first, in
batches of ``redis_batch``:

* ``RedisStore(cluster=True)``, default buckets (16): each namespace spread
  over 16 hash tags, so a batch is one pipelined round trip per master, all
  masters at once; a fresh loader and cache map per batch, ``load_many`` of
  the batch;
* the same with ``buckets=1``: every key of the namespace in one slot, on one
  master (what a namespace was before buckets);
* redis-py's ``RedisCluster.mget_nonatomic`` plus a msgpack decode, over keys
  of its own without hash tags (spread over the slots by CRC16): one ``MGET``
  per slot, pipelined per node;
* cashews' Redis backend with ``cluster=True``, ``get_many`` over keys of its
  own written by its ``set_many`` (its default pickle serializer): one
  ``MGET`` per slot, awaited one after another.

Besides throughput, each entry reports its round trips per batch at the
client (loadercache: socket writes on every node's link; redis-py: node
pipelines sent; cashews: its ``MGET`` calls), the commands per batch the
masters counted (``INFO commandstats`` around the timed pass, outside the
timing), how many of its keys each master holds (``SCAN`` of its prefix), and
its batch latency p50/p99 (the p99 of 20 batches is about their maximum).
All nodes and the benchmark share the machine's cores.

Without redis-server on PATH, the Redis backend, redis-py, msgpack or the
test fixture (``tests/redis_cluster.py``, importable from the repository's
root), the scenario is skipped with the reason; with
``LOADERCACHE_REQUIRE_REDIS=1`` the skip fails the run.  Without cashews, and
in the quick run, its entry is left out.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from benchmarks import redis_tier
from benchmarks.contenders import BatchCounter
from benchmarks.scenarios import QUICK, Entry, Sample, Scenario, Sizes

__all__ = ["scenarios"]

MASTERS = 3
SPREAD = "loadercache cluster, 16 buckets"
ONE_SLOT = "loadercache cluster, buckets=1"
RAW = "redis-py mget_nonatomic+msgpack"
CASHEWS = "cashews get_many (cluster)"
#: Whole-pass bound for a SCAN of one node (keys per node / COUNT, with room).
_SCAN_LIMIT = 10_000


def unavailable() -> Optional[str]:
    """Why scenario 14 cannot run here, or None if it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (the scenario starts its own cluster)"
    try:
        import msgpack  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
        import redis.asyncio.cluster  # noqa: F401

        import loadercache.backends.redis  # noqa: F401
        import tests.redis_cluster  # noqa: F401
    except ImportError as error:
        return f"{error.name or error} cannot be imported ({error})"
    return None


def _cashews_missing() -> Optional[str]:
    try:
        import cashews  # noqa: F401
    except ImportError as error:
        return f"cashews cannot be imported ({error})"
    return None


@dataclass
class _Run:
    """The cluster and what the entries share: keys, rows, per-node counts."""

    sizes: Sizes
    cluster: Any = None
    directory: Optional[tempfile.TemporaryDirectory[str]] = None
    rows: List[Dict[str, Any]] = field(default_factory=list)
    #: Entry name -> its keys on each master, in port order.
    spread: Dict[str, List[int]] = field(default_factory=dict)
    with_cashews: bool = False

    def __post_init__(self) -> None:
        self.rows = [redis_tier.row(key) for key in range(self.sizes.redis_keys)]

    @property
    def chunks(self) -> List[List[int]]:
        n, size = self.sizes.redis_keys, self.sizes.redis_batch
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def masters(self) -> List[Any]:
        return sorted(self.cluster.masters(), key=lambda node: node.port)

    def store(self, buckets: int) -> Any:
        from loadercache.backends.redis import RedisStore

        return RedisStore(
            self.cluster.seed_url,
            prefix=f"lc{buckets}",
            ttl=redis_tier.TTL,
            cluster=True,
            buckets=buckets,
        )

    def raw_keys(self, chunk: List[int]) -> List[bytes]:
        return [b"rp:%d" % key for key in chunk]

    def cashews(self) -> Any:
        from cashews import Cache

        cache = Cache()
        cache.setup(self.cluster.seed_url, cluster=True, suppress=False)
        return cache

    def server_calls(self) -> Dict[str, int]:
        """Every master's command calls so far, summed over the masters."""
        total: Dict[str, int] = {}
        for node in self.masters():
            for name, calls in self.cluster.command_calls(node).items():
                total[name] = total.get(name, 0) + calls
        return total

    def node_keys(self, match: str) -> List[int]:
        """How many keys matching *match* each master holds (SCAN, bounded)."""
        counts = []
        for node in self.masters():
            seen, cursor = 0, 0
            with node.client() as client:
                for _ in range(_SCAN_LIMIT):
                    cursor, keys = client.scan(cursor, match=match, count=1000)
                    seen += len(keys)
                    if cursor == 0:
                        break
                else:
                    raise RuntimeError(f"SCAN of {match!r} did not end")
            counts.append(seen)
        return counts


# -- set-up and tear-down ------------------------------------------------------


async def _setup(run: _Run) -> None:
    """Start the cluster and write every entry's keys; on failure, stop it."""
    from tests.redis_cluster import LocalCluster

    run.directory = tempfile.TemporaryDirectory(prefix="lcbench-cluster-")
    run.cluster = LocalCluster(
        Path(run.directory.name), kind="redis", masters=MASTERS, replicas=0
    )
    try:
        run.cluster.start()
        for buckets, name in ((16, SPREAD), (1, ONE_SLOT)):
            await _write_store_rows(run, buckets)
            run.spread[name] = run.node_keys(f"lc{buckets}:*")
        await _write_raw_rows(run)
        run.spread[RAW] = run.node_keys("rp:*")
        if run.with_cashews:
            await _write_cashews_rows(run)
            run.spread[CASHEWS] = run.node_keys("cw:*")
    except BaseException:
        _teardown_now(run)
        raise


def _teardown_now(run: _Run) -> None:
    if run.cluster is not None:
        run.cluster.stop()
    if run.directory is not None:
        run.directory.cleanup()
        run.directory = None


async def _teardown(run: _Run) -> None:
    _teardown_now(run)


async def _write_store_rows(run: _Run, buckets: int) -> None:
    from loadercache import DataLoader

    counter = BatchCounter()
    store = run.store(buckets)
    try:
        for chunk in run.chunks:
            loader: DataLoader[int, Any] = DataLoader(
                _batch_fn(run, counter), cache_map=store.cache_map("warm")
            )
            await loader.load_many(chunk)
            await store.flush()
        assert counter.keys == run.sizes.redis_keys
    finally:
        await store.aclose()


async def _write_raw_rows(run: _Run) -> None:
    import msgpack  # type: ignore[import-untyped, unused-ignore]
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(run.cluster.seed_url)
    try:
        for chunk in run.chunks:
            packed = [msgpack.packb(run.rows[key]) for key in chunk]
            await client.mset_nonatomic(dict(zip(run.raw_keys(chunk), packed)))
    finally:
        await client.aclose()


async def _write_cashews_rows(run: _Run) -> None:
    cache = run.cashews()
    try:
        await cache.init()
        for chunk in run.chunks:
            await cache.set_many(
                {f"cw:{key}": run.rows[key] for key in chunk}, expire=redis_tier.TTL
            )
    finally:
        await cache.close()


def _batch_fn(run: _Run, counter: BatchCounter) -> Any:
    rows = run.rows

    async def load_rows(keys: List[int]) -> List[Dict[str, Any]]:
        counter.calls += 1
        counter.keys += len(keys)
        return [rows[key] for key in keys]

    return load_rows


# -- the timed passes ------------------------------------------------------------


def _sample(
    run: _Run,
    name: str,
    latencies: List[float],
    trips: float,
    before: Dict[str, int],
    after: Dict[str, int],
) -> Sample:
    """One run's sample: its time, and the per-batch counts beside it."""
    batches = len(run.chunks)
    ordered = sorted(latencies)
    extra = {
        "round trips/batch": trips / batches,
        "MGET/batch (server)": (after.get("mget", 0) - before.get("mget", 0)) / batches,
        "commands/batch (server)": (sum(after.values()) - sum(before.values()))
        / batches,
        "p50 ms": statistics.median(ordered) * 1e3,
        "p99 ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
    }
    for index, keys in enumerate(run.spread.get(name, [])):
        extra[f"keys node{index + 1}"] = float(keys)
    return Sample(sum(latencies), run.sizes.redis_keys, extra=extra)


async def _through_store(run: _Run, buckets: int, name: str) -> Sample:
    from loadercache import DataLoader

    store = run.store(buckets)
    counter = BatchCounter()
    fn = _batch_fn(run, counter)
    try:
        # One untimed batch: the slot map, and a connection to every node.
        loader: DataLoader[int, Any] = DataLoader(fn, cache_map=store.cache_map("warm"))
        await loader.load_many(run.chunks[0])
        link = store._link
        writes_before = sum(link.link(node).writes for node in link.nodes)
        before = run.server_calls()
        latencies = []
        for chunk in run.chunks:
            start = perf_counter()
            loader = DataLoader(fn, cache_map=store.cache_map("warm"))
            values = await loader.load_many(chunk)
            latencies.append(perf_counter() - start)
        after = run.server_calls()
        trips = sum(link.link(node).writes for node in link.nodes) - writes_before
        assert counter.calls == 0, "a warm key reached the batch function"
        assert values == [run.rows[key] for key in run.chunks[-1]]
        return _sample(run, name, latencies, trips, before, after)
    finally:
        await store.aclose()


async def _spread(run: _Run) -> Sample:
    return await _through_store(run, 16, SPREAD)


async def _one_slot(run: _Run) -> Sample:
    return await _through_store(run, 1, ONE_SLOT)


async def _raw(run: _Run) -> Sample:
    import msgpack  # type: ignore[import-untyped, unused-ignore]
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    client = RedisCluster.from_url(run.cluster.seed_url)
    unpackb = msgpack.unpackb
    # Each node's share of a pipeline is one write: count them by wrapping
    # the class's method for the timed pass (ClusterNode has __slots__).
    sent = [0]
    original = ClusterNode.execute_pipeline

    async def counted(node: Any, commands: Any) -> Any:
        sent[0] += 1
        return await original(node, commands)

    try:
        await client.mget_nonatomic(run.raw_keys(run.chunks[0]))
        before = run.server_calls()
        latencies = []
        ClusterNode.execute_pipeline = counted  # type: ignore[method-assign]
        try:
            for chunk in run.chunks:
                start = perf_counter()
                raws = await client.mget_nonatomic(run.raw_keys(chunk))
                values = [unpackb(raw) for raw in raws]
                latencies.append(perf_counter() - start)
        finally:
            ClusterNode.execute_pipeline = original  # type: ignore[method-assign]
        after = run.server_calls()
        assert values == [run.rows[key] for key in run.chunks[-1]]
        return _sample(run, RAW, latencies, sent[0], before, after)
    finally:
        await client.aclose()


async def _cashews(run: _Run) -> Sample:
    cache = run.cashews()
    try:
        await cache.init()
        await cache.get_many(*[f"cw:{key}" for key in run.chunks[0]])
        before = run.server_calls()
        latencies = []
        for chunk in run.chunks:
            start = perf_counter()
            values = await cache.get_many(*[f"cw:{key}" for key in chunk])
            latencies.append(perf_counter() - start)
        after = run.server_calls()
        assert list(values) == [run.rows[key] for key in run.chunks[-1]]
        # Every MGET is a request of its own, awaited before the next.
        mgets = after.get("mget", 0) - before.get("mget", 0)
        return _sample(run, CASHEWS, latencies, mgets, before, after)
    finally:
        await cache.close()


# -- the table ------------------------------------------------------------------------


def _bind(work: Callable[[_Run], Awaitable[Any]], run: _Run) -> Callable[[], Any]:
    return lambda: work(run)


def scenarios(sizes: Sizes) -> List[Scenario]:
    """Scenario 14, or a skipped one saying why."""
    title = (
        f"Redis Cluster ({MASTERS} masters, local), {sizes.redis_keys:,} keys, "
        f"{sizes.redis_batch:,} per batch: warm reads"
    )
    reason = unavailable()
    if reason is not None:
        return [
            Scenario(
                "14",
                14,
                title,
                "the store on a cluster",
                skipped=reason,
                required=redis_tier.REQUIRE_REDIS,
            )
        ]
    run = _Run(sizes)
    # cashews sends one MGET per slot, one after another (a third of a
    # second per batch here): left out of the quick run, which CI waits for.
    run.with_cashews = sizes != QUICK and _cashews_missing() is None
    entries: Tuple[Entry, ...] = (
        Entry(RAW, _bind(_raw, run)),
        *((Entry(CASHEWS, _bind(_cashews, run)),) if run.with_cashews else ()),
        Entry(SPREAD, _bind(_spread, run), subject=True),
        Entry(ONE_SLOT, _bind(_one_slot, run), subject=True),
    )
    return [
        Scenario(
            "14",
            14,
            title,
            f"a local cluster, {MASTERS} masters and no replicas, sharing the "
            "cores with this process; load_many per batch, a fresh loader and "
            "cache map each",
            entries,
            baseline=RAW,
            peers_of={SPREAD: (), ONE_SLOT: ()},
            # A spread batch reaches every master in one write each; a
            # one-slot batch is one write to one master.
            exact_of={
                SPREAD: {"round trips/batch": float(MASTERS)},
                ONE_SLOT: {"round trips/batch": 1.0},
            },
            setup=_bind(_setup, run),
            teardown=_bind(_teardown, run),
        )
    ]
