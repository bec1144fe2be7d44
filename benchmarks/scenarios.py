"""The workloads, one coroutine per scenario, and the table of scenarios.

Every workload builds its loader inside the running event loop, times only
the loads (setup such as warming the cache is outside the timer), and returns
a :class:`Sample`.  The batch function is :func:`benchmarks.contenders.batch_fn`
for everyone.  Scenario 9 (Redis) lives in :mod:`benchmarks.redis_tier`,
scenario 11 (a fleet of processes) in :mod:`benchmarks.fleet`.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from dataclasses import dataclass, field, replace
from functools import partial
from time import perf_counter
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import aiodataloader
import cachetools
import graphql

import loadercache
from benchmarks.contenders import (
    FLOOR,
    LOADERCACHE,
    PEERS,
    BatchCounter,
    BatchFn,
    Contender,
    Loader,
    batch_fn,
)
from loadercache.backends import LRUCacheMap, TTLCacheMap

__all__ = ["FULL", "QUICK", "Entry", "Sample", "Scenario", "Sizes", "scenarios"]

CHILDREN = 50
GRANDCHILDREN = 10
TREE_NODES = 1 + CHILDREN + CHILDREN * GRANDCHILDREN
TREE_BATCHES = 3


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; ``QUICK`` is the CI mode."""

    keys: int = 100_000
    group: int = 1_000
    max_batch_size: int = 100
    many: int = 100
    duplicates: int = 50
    trees: int = 100
    graphql_trees: int = 20
    memory_keys: int = 100_000
    redis_keys: int = 20_000
    redis_batch: int = 1_000
    fleet_processes: int = 4
    fleet_requests: int = 32
    fleet_keys: int = 1_000
    # The store's default: shorter leases expire under a loaded event loop
    # (one turn runs every callback a thousand settled waits make ready, and
    # renewals wait for it), and keys are loaded twice.
    fleet_lease_ttl: float = 2.0
    near_clears: int = 200
    web_requests: int = 800
    web_ids: int = 20
    web_keys: int = 1_000


FULL = Sizes()
QUICK = Sizes(
    keys=10_000,
    trees=5,
    graphql_trees=2,
    memory_keys=5_000,
    redis_keys=2_000,
    fleet_processes=3,
    fleet_requests=4,
    fleet_keys=200,
    fleet_lease_ttl=0.5,
    near_clears=30,
    web_requests=64,
)


@dataclass
class Sample:
    """One timed run of one entry.

    ``seconds`` covers ``ops`` loads.  ``batches`` lists the batch calls of
    each request (scenarios 3 and 4), ``extra`` anything else worth printing
    (bytes per key, Redis round trips).
    """

    seconds: float
    ops: int
    batches: Tuple[int, ...] = ()
    extra: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One column of a scenario: a name and a coroutine function doing the work."""

    name: str
    run: Callable[[], Awaitable[Sample]]
    subject: bool = False


@dataclass(frozen=True)
class Scenario:
    """A workload run by every entry, interleaved, round after round.

    ``baseline`` names the entry the others are divided by (the floor, or raw
    redis-py for Redis).  ``floor_target`` is issue 4's target for
    loadercache's fraction of the baseline's throughput, and ``guard_ratio``
    whether CI fails below half of it.  ``peers_of`` maps
    each loadercache entry to the entries it must not be slower than (by
    default every entry but the baseline).  ``tree``: each request must make
    exactly three batch calls.  ``exact``: counts loadercache's samples must
    show exactly (Redis round trips per batch); ``exact_of`` replaces them
    for the entries it names (a near cache makes no round trip at all).
    ``at_most``: upper bounds
    on loadercache's extras (medians), checked like ``floor_target``.
    ``skipped`` says why the scenario cannot run here; ``required`` makes
    that a failure.
    """

    key: str
    number: int
    title: str
    measures: str
    entries: Tuple[Entry, ...] = ()
    baseline: str = FLOOR.name
    floor_target: Optional[float] = None
    guard_ratio: bool = False
    peers_of: Optional[Dict[str, Tuple[str, ...]]] = None
    tree: bool = False
    exact: Dict[str, float] = field(default_factory=dict)
    exact_of: Dict[str, Dict[str, float]] = field(default_factory=dict)
    at_most: Dict[str, float] = field(default_factory=dict)
    memory: bool = False
    skipped: Optional[str] = None
    required: bool = False
    setup: Optional[Callable[[], Awaitable[None]]] = None
    teardown: Optional[Callable[[], Awaitable[None]]] = None


def _groups(keys: Sequence[Any], size: int) -> List[List[Any]]:
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


# -- scenarios 1, 5: distinct keys, a group per tick ---------------------------


async def distinct_keys(
    contender: Contender, sizes: Sizes, max_batch_size: Optional[int] = None
) -> Sample:
    """Load ``sizes.keys`` new keys, ``sizes.group`` per tick, awaiting each group.

    The first ``await`` of a group yields until its batch settles; the rest
    find their futures done.  No ``gather``: its cost would dilute the loader's.
    """
    counter = BatchCounter()
    loader = contender.make(batch_fn(counter), max_batch_size)
    groups = _groups(range(sizes.keys), sizes.group)
    start = perf_counter()
    for group in groups:
        futures = [loader.load(key) for key in group]
        for future in futures:
            await future
    seconds = perf_counter() - start
    assert await loader.load(groups[-1][-1]) == groups[-1][-1]
    return Sample(seconds, sizes.keys, extra={"batches": counter.calls})


# -- scenario 2: cache hits ------------------------------------------------------


async def cached_keys(contender: Contender, sizes: Sizes) -> Sample:
    """Load ``sizes.keys`` keys that are all cached, one ``await`` each."""
    counter = BatchCounter()
    loader = contender.make(batch_fn(counter), None)
    keys = list(range(sizes.keys))
    for group in _groups(keys, sizes.group):
        for future in [loader.load(key) for key in group]:
            await future
    calls = counter.calls
    start = perf_counter()
    for key in keys:
        await loader.load(key)
    seconds = perf_counter() - start
    assert counter.calls == calls, "a cached key reached the batch function"
    return Sample(seconds, len(keys))


# -- scenario 6: load_many ---------------------------------------------------------


async def load_many(contender: Contender, sizes: Sizes) -> Sample:
    """``await loader.load_many(keys)`` with ``sizes.many`` new keys each time."""
    counter = BatchCounter()
    loader = contender.make(batch_fn(counter), None)
    groups = _groups(range(sizes.keys), sizes.many)
    start = perf_counter()
    for group in groups:
        await loader.load_many(group)
    seconds = perf_counter() - start
    return Sample(seconds, sizes.keys, extra={"batches": counter.calls})


async def load_each(contender: Contender, sizes: Sizes) -> Sample:
    """Scenario 6's keys, loaded with ``load()`` and awaited one after another."""
    return await distinct_keys(contender, replace(sizes, group=sizes.many))


# -- scenario 10: duplicate keys in flight ---------------------------------------


async def duplicates(contender: Contender, sizes: Sizes, distinct: int) -> Sample:
    """Requests of ``sizes.duplicates`` loads over *distinct* keys, a loader each.

    The shape of "50 posts and their 10 authors": most loads find their key
    in flight, loaded by an earlier load of the same request.
    """
    counter = BatchCounter()
    fn = batch_fn(counter)
    requests = sizes.keys // sizes.duplicates
    start = perf_counter()
    for _ in range(requests):
        loader = contender.make(fn, None)
        futures = [loader.load(i % distinct) for i in range(sizes.duplicates)]
        for future in futures:
            await future
    seconds = perf_counter() - start
    assert counter.calls == requests and counter.keys == requests * distinct
    return Sample(
        seconds, requests * sizes.duplicates, extra={"batches": counter.calls}
    )


# -- scenario 3: a GraphQL-shaped tree of coroutines -------------------------------


async def _leaf(loader: Loader, key: int) -> Any:
    return await loader.load(key)


async def _child(loader: Loader, key: int) -> None:
    await loader.load(key)
    await asyncio.gather(*[_leaf(loader, key * 100 + j) for j in range(GRANDCHILDREN)])


async def _tree_request(loader: Loader) -> None:
    await loader.load(0)
    await asyncio.gather(*[_child(loader, i) for i in range(1, CHILDREN + 1)])


async def tree(contender: Contender, sizes: Sizes) -> Sample:
    """Requests of 1 root, 50 children, 10 grandchildren each; a loader per request.

    Each node is loaded in its own coroutine (``gather`` makes each a task),
    as a GraphQL executor resolves sibling fields.
    """
    batches: List[int] = []
    start = perf_counter()
    for _ in range(sizes.trees):
        counter = BatchCounter()
        await _tree_request(contender.make(batch_fn(counter), None))
        batches.append(counter.calls)
    seconds = perf_counter() - start
    return Sample(seconds, sizes.trees * TREE_NODES, batches=tuple(batches))


# -- scenario 4: the same tree through graphql-core ---------------------------------

_SDL = """
type Query { root: Node! }
type Node { id: Int!  children: [Node!]! }
"""
_QUERY = "{ root { id children { id children { id } } } }"


def _child_keys(key: int) -> range:
    if key == 0:
        return range(1, CHILDREN + 1)
    if key <= CHILDREN:
        return range(key * 100, key * 100 + GRANDCHILDREN)
    return range(0)


async def _resolve_root(_: None, info: graphql.GraphQLResolveInfo) -> Any:
    return await info.context.load(0)


def _resolve_children(key: int, info: graphql.GraphQLResolveInfo) -> List[Any]:
    # Each item is an awaitable; graphql-core awaits each in its own coroutine.
    return [info.context.load(child) for child in _child_keys(key)]


def _resolve_id(key: int, _: graphql.GraphQLResolveInfo) -> int:
    return key


def _schema() -> graphql.GraphQLSchema:
    schema = graphql.build_schema(_SDL)
    query_type = schema.query_type
    node_type = schema.get_type("Node")
    assert query_type is not None and isinstance(node_type, graphql.GraphQLObjectType)
    query_type.fields["root"].resolve = _resolve_root
    node_type.fields["children"].resolve = _resolve_children
    node_type.fields["id"].resolve = _resolve_id
    return schema


_SCHEMA = _schema()
_DOCUMENT = graphql.parse(_QUERY)
assert not graphql.validate(_SCHEMA, _DOCUMENT)


async def graphql_tree(contender: Contender, sizes: Sizes) -> Sample:
    """Scenario 3's tree, executed by graphql-core with resolvers that load."""
    batches: List[int] = []
    start = perf_counter()
    for _ in range(sizes.graphql_trees):
        counter = BatchCounter()
        loader = contender.make(batch_fn(counter), None)
        result = graphql.execute(_SCHEMA, _DOCUMENT, context_value=loader)
        assert isinstance(result, Awaitable)
        result = await result
        assert result.errors is None, result.errors
        batches.append(counter.calls)
    seconds = perf_counter() - start
    return Sample(seconds, sizes.graphql_trees * TREE_NODES, batches=tuple(batches))


# -- scenario 7: memory per cached key ----------------------------------------------


async def memory(contender: Contender, sizes: Sizes) -> Sample:
    """Bytes allocated per cached key, and in all, once ``sizes.memory_keys``
    keys are cached.

    Keys are created before tracing starts, and each key is its own value, so
    what remains is the loader: its cache map and one settled future per key.
    Per key is the growth from the first group cached to the last, divided by
    the keys added: what the loader object itself holds (its counters, its
    task set, a batch's lists) is made by the first group and cancels out.
    """
    counter = BatchCounter()
    fn = batch_fn(counter)
    groups = _groups(range(sizes.memory_keys), sizes.group)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        start = perf_counter()
        loader = contender.make(fn, None)
        first = 0
        for group in groups:
            futures = [loader.load(key) for key in group]
            for future in futures:
                await future
            if not first:
                del futures
                gc.collect()
                first = tracemalloc.get_traced_memory()[0] - base
        del futures
        seconds = perf_counter() - start
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del loader
    added = sizes.memory_keys - len(groups[0])
    return Sample(
        seconds,
        sizes.memory_keys,
        extra={"bytes/key": (used - first) / added, "total KiB": used / 1024},
    )


# -- scenario 8: bounded cache maps -------------------------------------------------


def _cache_map_contenders(size: int) -> Tuple[Contender, ...]:
    # Large enough that nothing is evicted: this measures the maps' overhead.
    ttl = 3600.0

    def lc(cache_map: Callable[[], Any]) -> Callable[[BatchFn, Optional[int]], Loader]:
        return lambda fn, _: loadercache.DataLoader(fn, cache_map=cache_map())

    def aio(cache_map: Callable[[], Any]) -> Callable[[BatchFn, Optional[int]], Loader]:
        return lambda fn, _: aiodataloader.DataLoader(fn, cache_map=cache_map())

    return (
        FLOOR,
        Contender("loadercache[dict]", lc(dict)),
        Contender("loadercache[LRUCacheMap]", lc(lambda: LRUCacheMap(size))),
        Contender("loadercache[TTLCacheMap]", lc(lambda: TTLCacheMap(size, ttl))),
        Contender(
            "aiodataloader[cachetools.LRUCache]",
            aio(lambda: cachetools.LRUCache(size)),
        ),
        Contender(
            "aiodataloader[cachetools.TTLCache]",
            aio(lambda: cachetools.TTLCache(size, ttl)),
        ),
    )


# Like with like: an LRU map is held to aiodataloader over an LRU cache.
_MAP_PEERS = {
    "loadercache[dict]": (),
    "loadercache[LRUCacheMap]": ("aiodataloader[cachetools.LRUCache]",),
    "loadercache[TTLCacheMap]": ("aiodataloader[cachetools.TTLCache]",),
}


# -- the table ----------------------------------------------------------------------


def _entries(
    contenders: Sequence[Contender],
    work: Callable[[Contender], Awaitable[Sample]],
) -> Tuple[Entry, ...]:
    return tuple(
        Entry(c.name, partial(work, c), subject=c.is_subject) for c in contenders
    )


def scenarios(sizes: Sizes) -> List[Scenario]:
    """Scenarios 1 to 8 at the given sizes (9 comes from :mod:`redis_tier`)."""
    n, group = sizes.keys, sizes.group
    maps = _cache_map_contenders(n)
    return [
        Scenario(
            "1",
            1,
            f"{n:,} distinct keys, {group:,} per tick",
            "load() of a new key, queueing, one batch per tick, settling",
            _entries(PEERS, lambda c: distinct_keys(c, sizes)),
            floor_target=0.9,
            guard_ratio=True,
        ),
        Scenario(
            "2",
            2,
            f"{n:,} loads of cached keys",
            "load() of a key whose future is done: the cache-hit fast path",
            _entries(PEERS, lambda c: cached_keys(c, sizes)),
            floor_target=0.9,
            guard_ratio=True,
        ),
        Scenario(
            "3",
            3,
            f"{sizes.trees} requests of a {TREE_NODES}-node tree, a task per node",
            "batching across coroutines started by gather; a loader per request",
            _entries(PEERS, lambda c: tree(c, sizes)),
            tree=True,
        ),
        Scenario(
            "4",
            4,
            f"{sizes.graphql_trees} requests of the same tree through graphql-core",
            "the tree under a real executor; graphql-core dominates the time",
            _entries(PEERS, lambda c: graphql_tree(c, sizes)),
            tree=True,
        ),
        Scenario(
            "5",
            5,
            f"{n:,} distinct keys, {group:,} per tick, "
            f"max_batch_size={sizes.max_batch_size}",
            "splitting a tick's keys into concurrent batch calls",
            _entries(PEERS, lambda c: distinct_keys(c, sizes, sizes.max_batch_size)),
            floor_target=0.9,
            guard_ratio=True,
        ),
        Scenario(
            "6",
            6,
            f"load_many of {sizes.many} new keys, {n // sizes.many:,} times",
            "load_many: one load per key plus gathering them",
            _entries(PEERS, lambda c: load_many(c, sizes)),
            floor_target=0.9,
            guard_ratio=True,
        ),
        Scenario(
            "6b",
            6,
            f"load_many of {sizes.many} new keys against the same load() calls",
            "load_many's one future against awaiting each load in turn",
            (
                Entry(
                    "loadercache load() each", partial(load_each, LOADERCACHE, sizes)
                ),
                Entry(
                    "loadercache load_many",
                    partial(load_many, LOADERCACHE, sizes),
                    subject=True,
                ),
            ),
            baseline="loadercache load() each",
            floor_target=0.95,
            peers_of={"loadercache load_many": ()},
        ),
        Scenario(
            "7",
            7,
            f"memory per cached key, {sizes.memory_keys:,} keys",
            "tracemalloc: bytes added per key from the first group cached to "
            "the last, and all bytes still allocated once all are cached",
            _entries(PEERS, lambda c: memory(c, sizes)),
            memory=True,
        ),
        Scenario(
            "8a",
            8,
            f"cache maps: {n:,} distinct keys, {group:,} per tick",
            "scenario 1 with bounded maps (maxsize >= keys: nothing evicted)",
            _entries(maps, lambda c: distinct_keys(c, sizes)),
            peers_of=_MAP_PEERS,
        ),
        Scenario(
            "8b",
            8,
            f"cache maps: {n:,} loads of cached keys",
            "scenario 2 with bounded maps",
            _entries(maps, lambda c: cached_keys(c, sizes)),
            peers_of=_MAP_PEERS,
        ),
        Scenario(
            "10a",
            10,
            f"{n // sizes.duplicates:,} requests of {sizes.duplicates} loads "
            "over 10 keys",
            "loads of a key already in flight: each caller gets its own future",
            _entries(PEERS, lambda c: duplicates(c, sizes, 10)),
        ),
        Scenario(
            "10b",
            10,
            f"{n // sizes.duplicates:,} requests of {sizes.duplicates} loads of 1 key",
            "loads of a key already in flight, all of one key",
            _entries(PEERS, lambda c: duplicates(c, sizes, 1)),
        ),
    ]
