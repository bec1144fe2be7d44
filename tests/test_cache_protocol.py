"""The CacheMap protocol, the MutableMapping adapter and the RemoteTier seam."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import cachetools
import pytest

from loadercache import (
    MISS,
    CacheMap,
    DataLoader,
    MutableMappingCacheMap,
    RemoteTier,
)
from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap
from loadercache.cache import Leased, Refresh, Stale, Takeover, as_cache_map

from .conftest import CacheMapFactory

Calls = List[List[Any]]


def identity_loader(**options: Any) -> Tuple[DataLoader[Any, Any], Calls]:
    calls: Calls = []

    async def batch_load(keys: List[Any]) -> List[Any]:
        calls.append(list(keys))
        return [ValueError(key) if key == "bad" else f"v{key}" for key in keys]

    return DataLoader(batch_load, **options), calls


class RecordingMap:
    """A CacheMap that is not a mapping, recording what the loader asks of it."""

    def __init__(self) -> None:
        self.futures: Dict[Hashable, asyncio.Future[Any]] = {}
        self.log: List[Tuple[Any, ...]] = []

    def get(self, key: Hashable) -> Optional[asyncio.Future[Any]]:
        self.log.append(("get", key))
        return self.futures.get(key)

    def set(self, key: Hashable, value: asyncio.Future[Any]) -> None:
        self.log.append(("set", key))
        self.futures[key] = value

    def delete(self, key: Hashable) -> None:
        self.log.append(("delete", key))
        self.futures.pop(key, None)

    def clear(self) -> None:
        self.log.append(("clear",))
        self.futures.clear()


class FakeRemote(RecordingMap):
    """A cache map with a remote tier: a dict standing in for Redis."""

    def __init__(self, store: Optional[Dict[Hashable, Any]] = None) -> None:
        super().__init__()
        self.store: Dict[Hashable, Any] = dict(store or {})
        self.get_many_calls: List[List[Hashable]] = []
        self.set_many_calls: List[List[Tuple[Hashable, Any]]] = []
        self.read_error: Optional[Exception] = None
        self.write_error: Optional[Exception] = None
        self.answer_short = False

    async def get_many(self, keys: Sequence[Hashable]) -> Sequence[Any]:
        self.get_many_calls.append(list(keys))
        await asyncio.sleep(0)
        if self.read_error is not None:
            raise self.read_error
        found = [self.store.get(key, MISS) for key in keys]
        return found[:-1] if self.answer_short else found

    async def set_many(self, items: Sequence[Tuple[Hashable, Any]]) -> None:
        self.set_many_calls.append(list(items))
        await asyncio.sleep(0)
        if self.write_error is not None:
            raise self.write_error
        self.store.update(items)

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        self.log.append(("discard", key))
        if self.futures.get(key) is future:
            del self.futures[key]


# -- the protocol ------------------------------------------------------------


def test_every_backend_is_a_cache_map(cache_map_factory: CacheMapFactory) -> None:
    assert isinstance(cache_map_factory(), CacheMap)


def test_protocol_check_needs_all_four_methods() -> None:
    assert isinstance(RecordingMap(), CacheMap)
    assert isinstance(FakeRemote(), CacheMap)
    assert isinstance(FakeRemote(), RemoteTier)
    assert not isinstance(RecordingMap(), RemoteTier)
    assert not isinstance({}, CacheMap)  # no set or delete
    assert not isinstance(object(), CacheMap)


def test_as_cache_map_returns_a_cache_map_unchanged() -> None:
    cache_map = RecordingMap()
    assert as_cache_map(cache_map) is cache_map


@pytest.mark.parametrize(
    "mapping",
    [{}, cachetools.LRUCache(maxsize=4)],
    ids=["dict", "cachetools"],
)
def test_as_cache_map_adapts_a_mutable_mapping(mapping: Any) -> None:
    adapted = as_cache_map(mapping)
    assert isinstance(adapted, MutableMappingCacheMap)
    assert isinstance(adapted, CacheMap)
    assert adapted.get("a") is None
    adapted.delete("absent")


class OnlyGet:
    def get(self, key: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("cache_map", "message"),
    [
        (OnlyGet(), "OnlyGet lacks set, delete, clear"),
        (object(), "object lacks get, set, delete, clear"),
        ([], "list lacks get, set, delete"),
    ],
    ids=["get only", "object", "list"],
)
def test_as_cache_map_names_the_missing_methods(cache_map: Any, message: str) -> None:
    with pytest.raises(TypeError, match="CacheMap protocol") as raised:
        as_cache_map(cache_map)
    assert message in str(raised.value)


async def test_loader_keeps_its_futures_in_a_dict_it_is_given() -> None:
    mapping: Dict[Any, Any] = {}
    loader, calls = identity_loader(cache_map=mapping)
    assert await loader.load(1) == "v1"
    assert list(mapping) == [1]
    assert mapping[1].result() == "v1"
    mapping.clear()
    assert await loader.load(1) == "v1"
    assert calls == [[1], [1]]


async def test_loader_over_a_cachetools_cache_reloads_evicted_keys() -> None:
    loader, calls = identity_loader(cache_map=cachetools.LRUCache(maxsize=2))
    await loader.load_many([1, 2, 3])
    assert await loader.load_many([3, 2]) == ["v3", "v2"]
    assert await loader.load(1) == "v1"
    assert calls == [[1, 2, 3], [1]]


async def test_loader_uses_only_the_protocol_methods() -> None:
    cache_map = RecordingMap()
    loader, calls = identity_loader(cache_map=cache_map)
    assert loader.cache_map is cache_map
    await loader.load(1)
    await loader.load(1)
    loader.clear(1).prime(2, "two").clear_all()
    kinds = {entry[0] for entry in cache_map.log}
    assert kinds <= {"get", "set", "delete", "clear"}
    assert ("set", 1) in cache_map.log
    assert ("delete", 1) in cache_map.log
    assert cache_map.log[-1] == ("clear",)
    assert calls == [[1]]


# -- the remote tier ---------------------------------------------------------


async def test_remote_hits_skip_the_batch_function() -> None:
    remote = FakeRemote({1: "remote1", 3: "remote3"})
    loader, calls = identity_loader(cache_map=remote)
    assert await loader.load_many([1, 2, 3, 4]) == ["remote1", "v2", "remote3", "v4"]
    assert remote.get_many_calls == [[1, 2, 3, 4]]
    assert calls == [[2, 4]]
    stats = loader.stats
    assert (stats.remote_hits, stats.remote_misses, stats.batches) == (2, 2, 1)
    # The hits now sit in the local map: no second round trip.
    assert await loader.load_many([1, 2, 3, 4]) == ["remote1", "v2", "remote3", "v4"]
    assert len(remote.get_many_calls) == 1


async def test_all_hits_do_not_call_the_batch_function() -> None:
    remote = FakeRemote({1: "remote1", 2: "remote2"})
    loader, calls = identity_loader(cache_map=remote)
    assert await loader.load_many([1, 2]) == ["remote1", "remote2"]
    assert calls == []
    assert remote.set_many_calls == []
    assert loader.stats.batches == 0


async def test_one_get_many_per_batch() -> None:
    remote = FakeRemote()
    loader, calls = identity_loader(cache_map=remote, max_batch_size=2)
    await loader.load_many([1, 2, 3])
    await loader.load(4)
    assert remote.get_many_calls == [[1, 2], [3], [4]]
    assert calls == [[1, 2], [3], [4]]


async def test_set_many_receives_only_fresh_values_never_exceptions() -> None:
    remote = FakeRemote({"cached": "remote"})
    loader, calls = identity_loader(cache_map=remote)
    results = await loader.load_many(
        ["cached", "a", "bad", "b"], return_exceptions=True
    )
    assert results[0] == "remote" and results[1] == "va" and results[3] == "vb"
    assert isinstance(results[2], ValueError)
    assert remote.set_many_calls == [[("a", "va"), ("b", "vb")]]
    assert calls == [["a", "bad", "b"]]


async def test_only_exceptions_write_nothing() -> None:
    remote = FakeRemote()
    loader, _ = identity_loader(cache_map=remote)
    with pytest.raises(ValueError):
        await loader.load("bad")
    assert remote.set_many_calls == []


def _break_read(remote: FakeRemote) -> None:
    remote.read_error = ConnectionError("redis is down")


def _answer_short(remote: FakeRemote) -> None:
    remote.answer_short = True


@pytest.mark.parametrize(
    ("breakage", "logged"),
    [(_break_read, "redis is down"), (_answer_short, "answered 2 values for 3 keys")],
    ids=["raises", "wrong length"],
)
async def test_broken_remote_read_is_a_miss_not_a_failure(
    caplog: pytest.LogCaptureFixture, breakage: Any, logged: str
) -> None:
    remote = FakeRemote({1: "remote1"})
    breakage(remote)
    loader, calls = identity_loader(cache_map=remote, name="users")
    with caplog.at_level(logging.WARNING, logger="loadercache"):
        assert await loader.load_many([1, 2, 3]) == ["v1", "v2", "v3"]
    assert calls == [[1, 2, 3]]
    stats = loader.stats
    assert (stats.remote_errors, stats.remote_hits, stats.remote_misses) == (1, 0, 3)
    records = [record for record in caplog.records if record.name == "loadercache"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert logged in records[0].getMessage()
    assert "'users'" in records[0].getMessage()


async def test_broken_remote_write_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote = FakeRemote()
    remote.write_error = ConnectionError("redis is down")
    loader, calls = identity_loader(cache_map=remote)
    with caplog.at_level(logging.WARNING, logger="loadercache"):
        assert await loader.load_many([1, 2]) == ["v1", "v2"]
    assert loader.stats.remote_errors == 1
    assert any("write failed" in record.getMessage() for record in caplog.records)
    assert await loader.load(1) == "v1"
    assert calls == [[1, 2]]


async def test_cache_false_never_calls_the_remote_tier() -> None:
    remote = FakeRemote({1: "remote1"})
    loader, calls = identity_loader(cache_map=remote, cache=False)
    assert await loader.load_many([1, 2, 1]) == ["v1", "v2", "v1"]
    loader.prime(3, "three").clear(1).clear_all()
    assert remote.get_many_calls == []
    assert remote.set_many_calls == []
    assert remote.log == []
    assert calls == [[1, 2, 1]]


async def test_remote_hit_for_a_load_cancelled_during_the_read_is_not_set() -> None:
    remote = FakeRemote({1: "remote1", 2: "remote2"})
    loader, calls = identity_loader(cache_map=remote)
    cancelled, kept = loader.load(1), loader.load(2)
    while not remote.get_many_calls:
        await asyncio.sleep(0)
    cancelled.cancel()
    assert await asyncio.wait_for(kept, 1) == "remote2"
    assert cancelled.cancelled()
    assert await loader.load(1) == "remote1"
    assert calls == []


@pytest.mark.parametrize(
    "backend",
    [DictCacheMap, lambda: LRUCacheMap(8), lambda: TTLCacheMap(8, ttl=60)],
    ids=["dict", "lru", "ttl"],
)
async def test_local_backends_have_no_remote_tier(backend: Any) -> None:
    cache_map = backend()
    assert not isinstance(cache_map, RemoteTier)
    loader, _ = identity_loader(cache_map=cache_map)
    assert await loader.load(1) == "v1"
    assert loader.stats.remote_misses == 0


# -- answers beyond a value: Stale and Refresh -----------------------------------


def failing_loader(remote: FakeRemote, fail: Any) -> Tuple[DataLoader[Any, Any], Calls]:
    """A loader whose batch function raises (fail is None: returns an error
    for each key named in *fail*)."""
    calls: Calls = []

    async def batch_load(keys: List[Any]) -> List[Any]:
        calls.append(list(keys))
        if fail is None:
            raise ConnectionError("down")
        return [KeyError(key) if key in fail else f"new {key}" for key in keys]

    return DataLoader(batch_load, cache_map=remote), calls


async def test_a_stale_answer_is_loaded_and_served_if_the_batch_fails() -> None:
    remote = FakeRemote({1: Stale("old 1"), 2: "hit 2"})
    loader, calls = failing_loader(remote, None)
    loads = [loader.load(1), loader.load(2), loader.load(3)]
    results = await asyncio.gather(*loads, return_exceptions=True)
    assert results[:2] == ["old 1", "hit 2"]
    assert isinstance(results[2], ConnectionError)
    assert calls == [[1, 3]]  # the stale key was tried again
    assert remote.set_many_calls == []  # the stale value is not written back
    assert await loader.load(1) == "old 1"  # and stays cached locally
    assert loader.stats.remote_misses == 2


async def test_a_stale_answer_is_served_for_its_key_error_only() -> None:
    remote = FakeRemote({1: Stale("old 1"), 2: Stale("old 2")})
    loader, calls = failing_loader(remote, {1})
    assert await loader.load_many([1, 2]) == ["old 1", "new 2"]
    assert calls == [[1, 2]]
    assert remote.set_many_calls == [[(2, "new 2")]]


async def test_a_stale_answer_gives_way_to_a_fresh_value() -> None:
    remote = FakeRemote({1: Stale("old 1")})
    loader, calls = failing_loader(remote, set())
    assert await loader.load(1) == "new 1"
    assert calls == [[1]]
    assert remote.set_many_calls == [[(1, "new 1")]]


async def test_a_refresh_answer_serves_now_and_reloads_in_the_background() -> None:
    stored: List[Any] = []
    gate = asyncio.Event()
    calls: Calls = []

    async def batch_load(keys: List[Any]) -> List[Any]:
        calls.append(list(keys))
        await asyncio.wait_for(gate.wait(), 5)
        return [KeyError(key) if key == 3 else f"new {key}" for key in keys]

    remote = FakeRemote(
        {
            1: Refresh("old 1", stored.append),
            2: Refresh("old 2", stored.append),
            3: Refresh("old 3", stored.append),
        }
    )
    loader = DataLoader(batch_load, cache_map=remote)
    assert await loader.load_many([1, 2, 3]) == ["old 1", "old 2", "old 3"]
    assert calls == [[1, 2, 3]]  # one batch for the refreshes
    assert stored == []
    gate.set()
    for _ in range(100):
        if stored:
            break
        await asyncio.sleep(0.01)
    assert stored == ["new 1", "new 2"]  # a key that failed is not stored
    assert remote.set_many_calls == []  # the refresh's store stores it


async def test_a_failed_refresh_is_logged_at_debug_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored: List[Any] = []
    remote = FakeRemote({1: Refresh("old 1", stored.append)})
    loader, calls = failing_loader(remote, None)
    with caplog.at_level(logging.DEBUG, logger="loadercache"):
        assert await loader.load(1) == "old 1"
        for _ in range(100):
            if loader.stats.failed_batches:
                break
            await asyncio.sleep(0.01)
    assert calls == [[1]] and stored == []
    assert "refresh-ahead batch failed" in caplog.text
    assert await loader.load(1) == "old 1"


# -- Leased and Takeover -------------------------------------------------------


def leased_loaders(
    count: int, wait: asyncio.Future[Any]
) -> Tuple[List[DataLoader[Any, Any]], Calls]:
    """*count* loaders whose tier answers key 1 with Leased(wait) once, then MISS."""
    calls: Calls = []

    async def batch_load(keys: List[Any]) -> List[Any]:
        calls.append(list(keys))
        return [f"v{key}" for key in keys]

    loaders = []
    for _ in range(count):
        remote = FakeRemote({1: Leased(wait)})
        original = remote.get_many

        async def get_many(
            keys: Sequence[Hashable], remote: FakeRemote = remote, read: Any = original
        ) -> Sequence[Any]:
            found = await read(keys)
            remote.store.clear()  # leased only on the first read
            return found

        remote.get_many = get_many  # type: ignore[method-assign]
        loaders.append(DataLoader(batch_load, cache_map=remote))
    return loaders, calls


async def test_a_leased_key_takes_the_value_its_wait_completes_with() -> None:
    wait = asyncio.get_running_loop().create_future()
    (loader,), calls = leased_loaders(1, wait)
    load = loader.load(1)
    await asyncio.sleep(0.01)
    assert not load.done()
    wait.set_result("theirs")
    assert await load == "theirs"
    assert calls == []
    assert loader.stats.remote_hits == 1


async def test_a_leased_key_whose_wait_ends_in_miss_is_loaded_by_every_loader() -> None:
    wait = asyncio.get_running_loop().create_future()
    loaders, calls = leased_loaders(3, wait)
    loads = [loader.load(1) for loader in loaders]
    await asyncio.sleep(0.01)
    wait.set_result(MISS)
    assert await asyncio.gather(*loads) == ["v1"] * 3
    assert calls == [[1]] * 3


async def test_a_takeover_is_loaded_by_the_one_load_that_claims_it() -> None:
    wait = asyncio.get_running_loop().create_future()
    after = asyncio.get_running_loop().create_future()
    loaders, calls = leased_loaders(3, wait)
    loads = [loader.load(1) for loader in loaders]
    await asyncio.sleep(0.01)
    takeover = Takeover(after)
    wait.set_result(takeover)
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.001)
    assert calls == [[1]]  # one claimed it
    assert [load.done() for load in loads].count(True) == 1
    assert not takeover.claim()
    after.set_result("v1")  # as the tier does, once the claimer's read answers
    assert await asyncio.gather(*loads) == ["v1"] * 3
    assert calls == [[1]]


async def test_a_cancelled_load_does_not_claim_a_takeover() -> None:
    wait = asyncio.get_running_loop().create_future()
    after = asyncio.get_running_loop().create_future()
    loaders, calls = leased_loaders(2, wait)
    first, second = (loader.load(1) for loader in loaders)
    await asyncio.sleep(0.01)
    first.cancel()
    wait.set_result(Takeover(after))
    assert await asyncio.wait_for(second, 5) == "v1"
    assert calls == [[1]]  # the live load claimed it, and loaded it
    assert not after.done()


async def test_two_keys_answered_with_one_wait_both_take_its_value() -> None:
    wait = asyncio.get_running_loop().create_future()
    remote = FakeRemote({1: Leased(wait), 2: Leased(wait)})
    loader, calls = identity_loader(cache_map=remote)
    loads = loader.load_many([1, 2])
    await asyncio.sleep(0.01)
    wait.set_result("theirs")
    assert await loads == ["theirs", "theirs"]
    assert calls == []
    assert loader.stats.remote_hits == 2


async def test_a_wait_that_ends_in_miss_loads_in_the_context_of_its_request() -> None:
    # One future waited on by the loads of two requests settles them in one
    # callback; each reload is still a batch in its own request's context
    # (a trace's parent span, say), not in the other's or in none.
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request")
    wait = asyncio.get_running_loop().create_future()
    loaders, _ = leased_loaders(2, wait)
    seen: List[str] = []
    for loader in loaders:
        batch_load = loader.batch_load_fn

        async def in_context(keys: List[Any], batch_load: Any = batch_load) -> Any:
            seen.append(request.get("none"))
            return await batch_load(keys)

        loader.batch_load_fn = in_context

    async def serve(name: str, loader: DataLoader[Any, Any]) -> Any:
        request.set(name)
        return await loader.load(1)

    serving = [
        asyncio.ensure_future(serve(name, loader))
        for name, loader in zip("ab", loaders)
    ]
    await asyncio.sleep(0.01)
    wait.set_result(MISS)
    assert await asyncio.gather(*serving) == ["v1", "v1"]
    assert sorted(seen) == ["a", "b"]


async def test_a_wait_whose_settling_fails_for_one_load_settles_the_others() -> None:
    # A cancelled load's discard raises in one loader's map: that is reported
    # as a done callback's error would be, and the other loader still gets
    # the value (one callback settles both).
    wait = asyncio.get_running_loop().create_future()
    loaders, _ = leased_loaders(2, wait)
    broken = loaders[0].cache_map

    def discard(key: Hashable, future: asyncio.Future[Any]) -> None:
        raise RuntimeError("discard failed")

    broken.discard = discard  # type: ignore[attr-defined]
    reported: List[Dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: reported.append(context)
    )
    first, second = (loader.load(1) for loader in loaders)
    await asyncio.sleep(0.01)
    first.cancel()
    wait.set_result("theirs")
    assert await asyncio.wait_for(second, 5) == "theirs"
    assert [type(context["exception"]) for context in reported] == [RuntimeError]
