"""Scenario 12: how soon a clear in one process reaches another's near cache.

A reader process (a :mod:`benchmarks.fleet_worker`, its ``near`` store: a
near cache) keeps key *k* warm: it loads *k* through fresh loaders until a
load is a near hit.  Then this process, the writer, with a store of its own,
calls ``clear(k)`` on a fresh loader and awaits ``store.flush()`` (Redis
has deleted the key once it returns).  Measured: the time from just before
the ``clear`` in the writer to the moment the reader's push handler has
applied the invalidation Redis pushed for *k* (the worker wraps it; see
``fleet_worker``), with ``time.monotonic()`` in both processes (one clock
for the whole machine).  Then the writer primes *k* again and the next
round trip begins; ``near_clears`` of them per run, p50 and p99 reported
(the issue's goal: p99 under 10 ms on loopback).

Every wait is bounded: an eviction not seen within ``EVICT_TIMEOUT`` counts
as missed (a structural failure: the near cache would serve a cleared value
for up to ``near_ttl``), and one seen before the ``clear`` began as early
(the measurement would be wrong).  The server, the random key prefix and
the clean-up by ``SCAN`` are scenario 9's; without a server the scenario is
skipped with a note.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, List

from benchmarks import fleet, redis_tier
from benchmarks.scenarios import Entry, Sample, Scenario, Sizes

__all__ = ["scenarios"]

SUBJECT = "loadercache near_cache, clear(k) + flush"
#: How long the reader may take to see one clear before it counts as missed.
EVICT_TIMEOUT = 1.0
KEY = 7


@dataclass
class _Bench:
    """What the runs share: the reader process, the prefix, the namespaces."""

    sizes: Sizes
    prefix: str = field(default_factory=lambda: f"lcbench-{uuid.uuid4().hex[:12]}")
    reader: List[fleet.Worker] = field(default_factory=list)
    runs: int = 0

    def namespace(self) -> str:
        self.runs += 1
        return f"near-{self.runs}"

    async def start(self) -> None:
        self.reader = fleet.start(1, self.prefix, 2.0, ["near"])

    async def stop(self) -> None:
        for worker in self.reader:
            worker.stop()
        self.reader = []
        await redis_tier.delete_prefix(self.prefix)


async def _echo(keys: List[int]) -> List[int]:
    return keys


def _percentile(values: List[float], fraction: float) -> float:
    """The nearest-rank percentile of *values* (sorted here)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def _clears(bench: _Bench) -> Sample:
    from loadercache import DataLoader
    from loadercache.backends.redis import RedisStore

    (reader,) = bench.reader
    namespace = bench.namespace()
    store = RedisStore(
        redis_tier.REDIS_URL, prefix=bench.prefix, ttl=redis_tier.TTL, timeout=5.0
    )
    latencies: List[float] = []
    flushes: List[float] = []
    missed = early = 0
    try:
        for _ in range(bench.sizes.near_clears):
            writer: DataLoader[int, Any] = DataLoader(
                _echo, cache_map=store.cache_map(namespace)
            )
            writer.prime(KEY, redis_tier.row(KEY))
            await store.flush()
            reader.call({"op": "near_warm", "ns": namespace, "key": KEY})
            clearing: DataLoader[int, Any] = DataLoader(
                _echo, cache_map=store.cache_map(namespace)
            )
            start = time.monotonic()
            clearing.clear(KEY)
            await store.flush()
            flushes.append(time.monotonic() - start)
            at = reader.call({"op": "near_evicted", "timeout": EVICT_TIMEOUT})["at"]
            if at is None:
                missed += 1
            elif at < start:
                early += 1
            else:
                latencies.append(at - start)
    finally:
        await store.aclose()
    ms = [latency * 1e3 for latency in latencies] or [float("nan")]
    return Sample(
        _percentile(latencies, 0.5) if latencies else float("nan"),
        1,
        extra={
            "p50 ms": round(_percentile(ms, 0.5), 3),
            "p99 ms": round(_percentile(ms, 0.99), 3),
            "max ms": round(max(ms), 3),
            "flush p50 ms": round(_percentile(flushes, 0.5) * 1e3, 3),
            "clears": float(len(flushes)),
            "missed evictions": float(missed),
            "early evictions": float(early),
        },
    )


def _bind(work: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: work(*args)


def scenarios(sizes: Sizes) -> List[Scenario]:
    """Scenario 12, or a skipped one saying why."""
    title = (
        f"near cache invalidation across processes, {sizes.near_clears} clears: "
        "clear(k) + flush in one, the eviction in another"
    )
    reason = redis_tier.unavailable()
    if reason is not None:
        return [
            Scenario(
                "12",
                12,
                title,
                "near-cache invalidation latency",
                skipped=reason,
                required=redis_tier.REQUIRE_REDIS,
            )
        ]
    bench = _Bench(sizes)
    return [
        Scenario(
            "12",
            12,
            title,
            f"{redis_tier.REDIS_URL}; time from before clear() in the writer to "
            "the push applied in the reader (time.monotonic in both); the "
            "median column is each run's p50",
            (Entry(SUBJECT, _bind(_clears, bench), subject=True),),
            baseline=SUBJECT,
            peers_of={SUBJECT: ()},
            exact={
                "clears": float(sizes.near_clears),
                "missed evictions": 0.0,
                "early evictions": 0.0,
            },
            at_most={"p99 ms": 10.0},
            setup=bench.start,
            teardown=bench.stop,
        )
    ]
