"""Behaviour of DataLoader: construction, loading, caching, batching, errors.

Ported in spirit from graphql/dataloader's and aiodataloader's suites.  Every
assertion is on values, on the keys each batch call received, or on public
stats; no test reads a private attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
import unittest.mock
from typing import Any, Awaitable, Callable, Dict, List, Sequence, Tuple, TypeVar

import pytest

from loadercache import DataLoader, RemoteTier
from loadercache.backends import DictCacheMap

from .conftest import CacheMapFactory
from .helpers import Calls, Gate, within

T = TypeVar("T")


def identity_loader(**options: Any) -> Tuple[DataLoader[Any, Any], Calls]:
    """A loader whose batch function returns the keys, and its recorded calls."""
    calls: Calls = []

    async def batch_load(keys: List[Any]) -> List[Any]:
        calls.append(list(keys))
        return keys

    return DataLoader(batch_load, **options), calls


async def ticks(n: int = 5) -> None:
    """Let the event loop run *n* turns."""
    for _ in range(n):
        await asyncio.sleep(0)


def run(main: Awaitable[T]) -> T:
    """asyncio.run on a loop of its own, leaving the current event loop alone.

    asyncio.run replaces the loop set for the thread, which pytest-asyncio
    may still hold, without closing it.  Like asyncio.run, this cancels the
    tasks left when *main* returns, then closes the loop.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        finally:
            loop.close()


# -- construction ------------------------------------------------------------


async def test_batch_load_fn_by_keyword_or_position() -> None:
    async def double(keys: List[int]) -> List[int]:
        return [key * 2 for key in keys]

    assert await DataLoader(double).load(2) == 4
    assert await DataLoader(batch_load_fn=double).load(3) == 6


async def test_subclass_with_async_method_and_class_attributes() -> None:
    class Users(DataLoader[int, str]):
        cache = False
        max_batch_size = 100

        def __init__(self) -> None:
            super().__init__()
            self.calls: Calls = []

        async def batch_load_fn(self, keys: List[int]) -> List[str]:
            self.calls.append(list(keys))
            return [f"user{key}" for key in keys]

    users = Users()
    values = await users.load_many([*range(250), 7])
    assert values == [*(f"user{key}" for key in range(250)), "user7"]
    # cache = False: the duplicate 7 is loaded again; max 100 per call.
    assert [len(call) for call in users.calls] == [100, 100, 51]
    assert users.calls[2][-1] == 7


def _only_lookup_errors(error: Exception) -> bool:
    return isinstance(error, LookupError)


@pytest.mark.parametrize(
    "predicate",
    [_only_lookup_errors, staticmethod(_only_lookup_errors)],
    ids=["function", "staticmethod"],
)
async def test_subclass_cache_exceptions_predicate_as_class_attribute(
    predicate: Any,
) -> None:
    class Things(DataLoader[str, str]):
        cache_exceptions = predicate

        def __init__(self) -> None:
            super().__init__()
            self.calls: Calls = []

        async def batch_load_fn(self, keys: List[str]) -> List[Any]:
            self.calls.append(list(keys))
            return [KeyError(key) if key == "k" else ValueError(key) for key in keys]

    things = Things()
    for _ in range(2):
        results = await things.load_many(["k", "v"], return_exceptions=True)
        assert [type(result) for result in results] == [KeyError, ValueError]
    # The KeyError is cached, the ValueError is retried.
    assert things.calls == [["k", "v"], ["v"]]


async def test_functools_partial_of_an_async_function_is_accepted() -> None:
    async def scaled(factor: int, keys: List[int]) -> List[int]:
        return [key * factor for key in keys]

    loader = DataLoader(functools.partial(scaled, 10))
    assert await loader.load_many([1, 2]) == [10, 20]


async def test_object_with_async_call_is_accepted() -> None:
    gate = Gate()
    gate.open.set()
    assert await DataLoader(gate).load("a") == "a"


def _sync_batch(keys: List[int]) -> List[int]:
    return keys


async def _async_batch(keys: List[int]) -> List[int]:
    return keys


@pytest.mark.parametrize(
    "batch_load_fn",
    [
        lambda keys: _async_batch(keys),
        unittest.mock.Mock(side_effect=_async_batch),
        functools.partial(lambda keys: _async_batch(keys)),
    ],
    ids=["lambda returning a coroutine", "Mock(side_effect=async_fn)", "partial"],
)
async def test_any_callable_returning_an_awaitable_is_accepted(
    batch_load_fn: Any,
) -> None:
    loader = DataLoader(batch_load_fn)
    assert await loader.load_many([1, 2]) == [1, 2]


async def test_a_batch_function_returning_no_awaitable_rejects_its_batch() -> None:
    loader = DataLoader(_sync_batch)
    results = await loader.load_many([1, 2], return_exceptions=True)
    assert isinstance(results[0], TypeError) and results[0] is results[1]
    assert "returned [1, 2], which is not awaitable" in str(results[0])
    # A failed batch caches nothing.
    assert loader.stats.failed_batches == 1


def test_batch_load_fn_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match=r"async function .* but got 42"):
        DataLoader(42)  # type: ignore[arg-type]


def test_a_loader_built_from_functions_exposes_them_as_aiodataloader_does() -> None:
    loader = DataLoader(_async_batch)
    assert loader.batch_load_fn is _async_batch
    assert loader.get_cache_key(7) == 7
    keyed = DataLoader(_async_batch, get_cache_key=str)
    assert keyed.get_cache_key is str


def test_missing_batch_load_fn_is_refused() -> None:
    with pytest.raises(TypeError, match="batch_load_fn"):
        DataLoader()


async def test_loop_keyword_is_deprecated_but_works() -> None:
    async def batch_load(keys: List[int]) -> List[int]:
        return keys

    with pytest.warns(DeprecationWarning, match="loop"):
        loader = DataLoader(batch_load, loop=asyncio.get_running_loop())
    assert await loader.load(1) == 1


@pytest.mark.parametrize("keyword", ["cache_key_fn", "get_cache_key"])
async def test_cache_key_fn_and_its_alias_map_keys_to_cache_keys(
    keyword: str, cache_map_factory: CacheMapFactory
) -> None:
    def by_id(key: Dict[str, int]) -> int:
        return key["id"]

    loader, calls = identity_loader(**{keyword: by_id}, cache_map=cache_map_factory())
    first, second = await asyncio.gather(
        loader.load({"id": 1, "v": "a"}), loader.load({"id": 1, "v": "b"})
    )
    assert first == second == {"id": 1, "v": "a"}
    assert calls == [[{"id": 1, "v": "a"}]]
    loader.clear({"id": 1}).prime({"id": 2}, "primed")
    assert await loader.load({"id": 2}) == "primed"
    assert await loader.load({"id": 1, "v": "c"}) == {"id": 1, "v": "c"}


def test_cache_key_fn_and_get_cache_key_together_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        identity_loader(cache_key_fn=str, get_cache_key=str)


@pytest.mark.parametrize(
    ("limit", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("3", TypeError),
    ],
)
def test_invalid_max_batch_size_is_refused(limit: Any, error: type) -> None:
    # One rule in the whole package: the wrong type is a TypeError, a number
    # out of range a ValueError.
    with pytest.raises(error, match="max_batch_size must be an int of at least 1"):
        identity_loader(max_batch_size=limit)


def test_invalid_max_batch_size_class_attribute_is_refused() -> None:
    class Loader(DataLoader[int, int]):
        max_batch_size = 0

        async def batch_load_fn(self, keys: List[int]) -> List[int]:
            return keys

    with pytest.raises(ValueError, match="max_batch_size"):
        Loader()


def test_cache_map_lacking_protocol_methods_is_refused() -> None:
    class HalfAMap:
        def get(self, key: Any) -> None:
            return None

        def set(self, key: Any, value: Any) -> None:
            pass

    with pytest.raises(TypeError, match="HalfAMap lacks delete, clear"):
        identity_loader(cache_map=HalfAMap())


@pytest.mark.parametrize(
    "options",
    [
        {"cache_exceptions": "yes"},
        {"cache_key_fn": "id"},
        {"batch_schedule_fn": 0.002},
    ],
    ids=["cache_exceptions", "cache_key_fn", "batch_schedule_fn"],
)
def test_invalid_option_types_are_refused(options: Dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=next(iter(options))):
        identity_loader(**options)


async def test_repr_shows_the_name_but_not_the_cached_values() -> None:
    loader, _ = identity_loader(name="users")
    await loader.load_many(range(1000))
    # The repr goes into error messages and log records: it must not grow
    # with the cache.
    assert repr(loader) == "<DataLoader 'users' cache_map=MutableMappingCacheMap>"


async def test_a_subclass_that_skips_init_fails_with_attribute_error() -> None:
    class Broken(DataLoader[int, int]):
        def __init__(self) -> None:  # never calls DataLoader.__init__
            pass

        async def batch_load_fn(self, keys: List[int]) -> List[int]:
            return keys

    with pytest.raises(AttributeError):
        Broken().load(1)


# -- event loops -------------------------------------------------------------


@pytest.fixture
def loader_made_without_a_loop() -> Tuple[DataLoader[Any, Any], Calls]:
    # A sync fixture: no event loop is running while the loader is built.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    return identity_loader()


async def test_loader_built_without_a_running_loop_binds_on_first_use(
    loader_made_without_a_loop: Tuple[DataLoader[Any, Any], Calls],
) -> None:
    loader, calls = loader_made_without_a_loop
    assert await asyncio.gather(loader.load(1), loader.load(2)) == [1, 2]
    assert calls == [[1, 2]]


MODULE_LEVEL_LOADER, MODULE_LEVEL_CALLS = identity_loader()


async def test_loader_built_at_module_level_works_in_a_test() -> None:
    assert await MODULE_LEVEL_LOADER.load("module") == "module"
    assert ["module"] in MODULE_LEVEL_CALLS


def test_loader_whose_loop_closed_works_on_the_next_loop() -> None:
    loader, calls = identity_loader()

    async def load(key: int) -> int:
        value: int = await loader.load(key)
        return value

    assert run(load(1)) == 1
    assert run(load(1)) == 1
    assert run(load(2)) == 2
    assert calls == [[1], [2]]


@pytest.mark.xfail(
    strict=True,
    raises=(RuntimeError, ValueError),
    reason="a value cached on a closed loop is a future of that loop: awaiting "
    "it works, but gather() adds a callback on the closed loop; detecting it "
    "would cost a loop check on every cache hit",
)
def test_values_cached_on_a_closed_loop_can_be_gathered_on_the_next() -> None:
    loader, _ = identity_loader()

    async def load_one() -> Any:
        return await loader.load(1)

    async def gather_two() -> Any:
        await loader.load(2)  # cached on this loop
        return await asyncio.gather(loader.load(1), loader.load(2))

    assert run(load_one()) == 1
    assert run(gather_two()) == [1, 2]


def test_load_outside_a_running_loop_raises_runtime_error() -> None:
    loader, _ = identity_loader()
    with pytest.raises(RuntimeError, match="no event loop is running"):
        loader.load(1)


def test_loader_used_from_a_second_open_loop_raises_runtime_error() -> None:
    loader, calls = identity_loader()

    async def load(key: int) -> int:
        value: int = await within(loader.load(key))
        return value

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(load(1)) == 1
        with pytest.raises(RuntimeError, match="another event loop"):
            second.run_until_complete(load(2))
        first.close()
        # Once the first loop is closed the loader moves to the next one.
        assert second.run_until_complete(load(2)) == 2
    finally:
        first.close()
        second.close()
    assert calls == [[1], [2]]


async def test_loader_used_from_a_loop_in_another_thread_raises_runtime_error() -> None:
    loader, calls = identity_loader()
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever)
    thread.start()
    try:

        async def load_there(key: int) -> int:
            value: int = await loader.load(key)
            return value

        done = asyncio.run_coroutine_threadsafe(load_there(1), other)
        assert await within(asyncio.wrap_future(done)) == 1
        with pytest.raises(RuntimeError, match="another event loop"):
            loader.load(2)
        with pytest.raises(RuntimeError, match="another event loop"):
            loader.prime(3, 3)
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join()
        other.close()
    assert calls == [[1]]


class _LoopFuture(asyncio.Future):  # type: ignore[type-arg]
    """The future type of a loop that overrides create_future (as uvloop does)."""


class _FutureMakingLoop(asyncio.SelectorEventLoop):
    def create_future(self) -> asyncio.Future[Any]:
        return _LoopFuture(loop=self)


def test_loads_are_futures_of_the_loops_own_create_future() -> None:
    async def main() -> None:
        loader, calls = identity_loader()
        first = loader.load(1)
        assert type(first) is _LoopFuture
        assert await within(first) == 1
        # A hit, an in-flight key and a cancelled load, on that future type.
        assert loader.load(1) is first
        pending = loader.load(2)
        shared = loader.load(2)
        cancelled = loader.load(3)
        cancelled.cancel()
        assert await within(asyncio.gather(pending, shared)) == [2, 2]
        assert await within(loader.load(3)) == 3
        assert calls == [[1], [2], [3]]

    loop = _FutureMakingLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


# -- load, load_many, clear, prime -------------------------------------------


async def test_load_returns_an_awaitable_future(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, _ = identity_loader(cache_map=cache_map_factory())
    future = loader.load(1)
    assert isinstance(future, asyncio.Future)
    assert await future == 1


async def test_load_memoises_values(cache_map_factory: CacheMapFactory) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    assert await loader.load("a") == "a"
    assert await loader.load("a") == "a"
    assert await asyncio.gather(loader.load("a"), loader.load("b")) == ["a", "b"]
    assert calls == [["a"], ["b"]]
    stats = loader.stats
    assert (stats.local_misses, stats.batches) == (2, 2)


async def test_load_many_returns_values_in_key_order(
    cache_map_factory: CacheMapFactory,
) -> None:
    async def batch_load(keys: List[int]) -> Dict[int, int]:
        return {key: key * 10 for key in reversed(keys)}

    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    assert await loader.load_many([3, 1, 2, 1]) == [30, 10, 20, 10]
    assert await loader.load_many([]) == []
    assert await loader.load_many(iter([2, 3])) == [20, 30]


async def test_load_many_raises_the_first_failure_or_returns_exceptions(
    cache_map_factory: CacheMapFactory,
) -> None:
    async def batch_load(keys: List[int]) -> List[Any]:
        return [ValueError(key) if key < 0 else key for key in keys]

    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    with pytest.raises(ValueError, match="-1"):
        await loader.load_many([1, -1, 2, -2])
    results = await loader.load_many([1, -1, 2, -2], return_exceptions=True)
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ValueError) and results[1].args == (-1,)
    assert isinstance(results[3], ValueError) and results[3].args == (-2,)


@pytest.mark.parametrize("keys", ["abc", b"abc", 42])
async def test_load_many_refuses_a_string_or_a_non_iterable(keys: Any) -> None:
    loader, _ = identity_loader()
    with pytest.raises(TypeError, match="must be called with Iterable<key> but got"):
        loader.load_many(keys)


async def test_load_many_of_none_says_what_aiodataloader_says() -> None:
    loader, _ = identity_loader()
    with pytest.raises(TypeError) as raised:
        loader.load_many(None)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "The loader.load_many() function must be called with Iterable<key> "
        "but got: None."
    )


async def test_clear_clear_all_and_prime_chain(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, _ = identity_loader(cache_map=cache_map_factory())
    assert loader.clear(1) is loader
    assert loader.clear_all() is loader
    assert loader.prime(1, "one") is loader
    assert loader.clear(1).prime(1, "uno").clear(2).prime(2, "dos") is loader
    assert await loader.load_many([1, 2]) == ["uno", "dos"]


async def test_clear_forgets_one_key(cache_map_factory: CacheMapFactory) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    await loader.load_many(["a", "b"])
    loader.clear("a")
    await loader.load_many(["a", "b"])
    assert calls == [["a", "b"], ["a"]]


async def test_clear_all_forgets_every_key(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    await loader.load_many(["a", "b"])
    loader.clear_all()
    await loader.load_many(["a", "b"])
    assert calls == [["a", "b"], ["a", "b"]]


async def test_clear_of_a_key_in_flight_lets_it_settle_and_loads_it_anew(
    cache_map_factory: CacheMapFactory,
) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=cache_map_factory())
    first = loader.load("a")
    await within(gate.running.wait())
    loader.clear("a")
    second = loader.load("a")
    # Before the first settles: a shared tier would otherwise answer the
    # second from the first's write-back.
    await within(gate.entered(2))
    gate.open.set()
    assert await within(first) == "a"
    assert await within(second) == "a"
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"], ["a"]]


async def test_prime_never_overwrites(cache_map_factory: CacheMapFactory) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=cache_map_factory())
    loader.prime("a", "primed").prime("a", "again")
    in_flight = loader.load("b")
    loader.prime("b", "too late")
    gate.open.set()
    assert await within(loader.load_many(["a", "b"])) == ["primed", "b"]
    assert await in_flight == "b"
    loader.prime("b", "still too late")
    assert await loader.load("b") == "b"
    assert gate.calls == [["b"]]


async def test_prime_with_an_exception_caches_a_rejection(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    error = ValueError("no such user")
    loader.prime(1, error)
    for _ in range(2):
        with pytest.raises(ValueError) as raised:
            await loader.load(1)
        assert raised.value is error
    assert calls == []


async def test_primed_rejection_nobody_loads_is_not_reported() -> None:
    loader, _ = identity_loader()
    loader.prime(1, ValueError("never loaded"))
    # no_asyncio_errors fails the test if asyncio reports it at collection.


async def test_clear_then_prime_forces_a_value(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    assert await loader.load(1) == 1
    loader.clear(1).prime(1, "forced")
    assert await loader.load(1) == "forced"
    assert calls == [[1]]


# -- batching ----------------------------------------------------------------


async def test_loads_of_one_tick_make_one_call_in_call_order(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    assert await asyncio.gather(*map(loader.load, [3, 1, 2])) == [3, 1, 2]
    assert calls == [[3, 1, 2]]


async def test_loads_of_sibling_tasks_share_one_call(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())

    async def resolve(key: int) -> int:
        value: int = await loader.load(key)
        return value

    assert await asyncio.gather(*map(resolve, range(5))) == [0, 1, 2, 3, 4]
    assert calls == [[0, 1, 2, 3, 4]]


async def test_loads_of_later_ticks_make_later_calls(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    first = loader.load(1)
    await ticks()
    second = loader.load(2)
    assert await asyncio.gather(first, second) == [1, 2]
    # Two calls; a remote tier's read may finish them in either order.
    assert sorted(calls) == [[1], [2]]


async def test_duplicates_collapse_before_max_batch_size_splits(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(max_batch_size=3, cache_map=cache_map_factory())
    keys = ["a", "b", "a", "a", "b", "c"]
    assert await loader.load_many(keys) == keys
    assert calls == [["a", "b", "c"]]


async def test_cache_hits_do_not_count_toward_max_batch_size(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(max_batch_size=2, cache_map=cache_map_factory())
    loader.prime("a", "A").prime("b", "B")
    assert await loader.load_many(["a", "c", "b", "d"]) == ["A", "c", "B", "d"]
    assert calls == [["c", "d"]]


async def test_loads_made_while_a_batch_runs_go_to_the_next_batch(
    cache_map_factory: CacheMapFactory,
) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=cache_map_factory())
    first = loader.load(1)
    await within(gate.running.wait())
    later = [loader.load(2), loader.load(1), loader.load(3)]
    gate.open.set()
    assert await within(asyncio.gather(first, *later)) == [1, 2, 1, 3]
    assert gate.calls == [[1], [2, 3]]


async def test_max_batch_size_splits_into_concurrent_calls(
    cache_map_factory: CacheMapFactory,
) -> None:
    started: Calls = []
    returned: Calls = []
    all_started = asyncio.Event()

    async def batch_load(keys: List[int]) -> List[int]:
        started.append(list(keys))
        if len(started) == 3:
            all_started.set()
        # A call that waited for the previous one to return would wait forever.
        await all_started.wait()
        returned.append(list(keys))
        return keys

    loader = DataLoader(batch_load, max_batch_size=2, cache_map=cache_map_factory())
    assert await within(loader.load_many([1, 2, 3, 4, 5])) == [1, 2, 3, 4, 5]
    # Concurrent calls: a remote tier's read may start them in any order.
    assert sorted(started) == [[1, 2], [3, 4], [5]]
    assert sorted(returned) == sorted(started)
    stats = loader.stats
    assert (stats.batches, stats.batched_keys, stats.max_batch) == (3, 5, 2)


async def test_batch_false_calls_once_per_key(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(batch=False, cache_map=cache_map_factory())
    assert await loader.load_many([1, 2, 1, 3]) == [1, 2, 1, 3]
    # Concurrent calls: a remote tier's read may finish them in any order.
    assert sorted(calls) == [[1], [2], [3]]


async def test_cache_false_loads_every_call_and_ignores_prime_and_clear() -> None:
    loader, calls = identity_loader(cache=False)
    assert loader.prime(1, "primed") is loader
    assert loader.clear(2) is loader
    assert loader.clear_all() is loader
    assert await loader.load_many([1, 2, 1, 1]) == [1, 2, 1, 1]
    assert await loader.load(1) == 1
    assert calls == [[1, 2, 1, 1], [1]]
    assert (loader.stats.local_hits, loader.stats.local_misses) == (0, 5)


async def test_cache_false_never_touches_the_cache_map() -> None:
    mapping: Dict[Any, Any] = {}
    loader, calls = identity_loader(cache=False, cache_map=mapping)
    loader.prime(1, "primed")
    assert await loader.load_many([1, 1]) == [1, 1]
    assert mapping == {}
    assert calls == [[1, 1]]


class _RefusesOdd(DictCacheMap):
    """A cache map that cannot hold odd keys, as the Redis map cannot hold
    some keys: its set raises before storing anything."""

    def set(self, key: Any, value: asyncio.Future[Any]) -> None:
        if key % 2:
            raise TypeError(f"cannot hold {key!r}")
        self.mapping[key] = value


async def test_a_key_the_cache_map_refuses_is_not_queued() -> None:
    loader, calls = identity_loader(cache_map=_RefusesOdd())
    with pytest.raises(TypeError, match="cannot hold 1"):
        loader.load(1)
    # The batch that load opened dispatches with nothing in it.
    await ticks()
    assert calls == []
    with pytest.raises(TypeError, match="cannot hold 3"):
        loader.load(3)
    assert await loader.load(2) == 2
    assert calls == [[2]]
    assert (loader.stats.loads, loader.stats.local_misses) == (1, 1)


async def test_batch_schedule_fn_collects_loads_across_ticks() -> None:
    def after_20ms(callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(0.02, callback)

    loader, calls = identity_loader(batch_schedule_fn=after_20ms)
    first = loader.load(1)
    await ticks()
    second = loader.load(2)
    assert await within(asyncio.gather(first, second)) == [1, 2]
    assert calls == [[1, 2]]


async def test_batch_schedule_fn_decides_when_the_batch_dispatches() -> None:
    scheduled: List[Callable[[], None]] = []
    loader, calls = identity_loader(
        batch_schedule_fn=scheduled.append, max_batch_size=2
    )
    futures = [loader.load(key) for key in "abc"]
    await ticks()
    assert calls == []
    assert len(scheduled) == 2
    for dispatch in scheduled:
        dispatch()
    assert await within(asyncio.gather(*futures)) == ["a", "b", "c"]
    assert calls == [["a", "b"], ["c"]]


async def test_batch_schedule_fn_that_raises_does_not_strand_later_loads() -> None:
    failures = [RuntimeError("scheduler is down")]

    def flaky(callback: Callable[[], None]) -> None:
        if failures:
            raise failures.pop()
        asyncio.get_running_loop().call_soon(callback)

    loader, calls = identity_loader(batch_schedule_fn=flaky)
    with pytest.raises(RuntimeError, match="scheduler is down"):
        loader.load(1)
    assert await within(loader.load(1)) == 1
    assert calls == [[1]]


# -- results and errors ------------------------------------------------------


async def test_mapping_result_resolves_missing_keys_to_none(
    cache_map_factory: CacheMapFactory,
) -> None:
    async def batch_load(keys: List[int]) -> Dict[int, Any]:
        return {2: "two", 1: "one", 99: "unasked", 3: KeyError(3)}

    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    results = await loader.load_many([1, 2, 3, 4], return_exceptions=True)
    assert results[:2] == ["one", "two"]
    assert isinstance(results[2], KeyError)
    assert results[3] is None


class _Values(Sequence[Any]):
    """A Sequence that is neither a list nor a tuple."""

    def __init__(self, values: List[Any]) -> None:
        self.values = values

    def __getitem__(self, index: Any) -> Any:
        return self.values[index]

    def __len__(self) -> int:
        return len(self.values)


@pytest.mark.parametrize(
    "wrap",
    [tuple, _Values, iter, lambda values: (value for value in values)],
    ids=["tuple", "sequence", "iterator", "generator"],
)
async def test_any_iterable_of_values_settles_the_batch(
    wrap: Callable[[List[Any]], Any],
) -> None:
    error = KeyError(2)

    async def batch_load(keys: List[int]) -> Any:
        return wrap([error if key == 2 else key * 10 for key in keys])

    loader = DataLoader(batch_load)
    results = await within(loader.load_many([1, 2, 3], return_exceptions=True))
    assert results == [10, error, 30]


async def test_per_key_exception_rejects_that_key_only_and_is_cached(
    cache_map_factory: CacheMapFactory,
) -> None:
    calls: Calls = []
    error = ValueError("bad key")

    async def batch_load(keys: List[int]) -> List[Any]:
        calls.append(list(keys))
        return [error if key == 2 else key for key in keys]

    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    results = await loader.load_many([1, 2, 3], return_exceptions=True)
    assert results == [1, error, 3]
    with pytest.raises(ValueError) as raised:
        await loader.load(2)
    assert raised.value is error
    assert calls == [[1, 2, 3]]


async def test_cache_exceptions_false_retries_failed_keys(
    cache_map_factory: CacheMapFactory,
) -> None:
    calls: Calls = []

    async def batch_load(keys: List[int]) -> List[Any]:
        calls.append(list(keys))
        return [ValueError(key) if key == 2 else key for key in keys]

    loader = DataLoader(
        batch_load, cache_exceptions=False, cache_map=cache_map_factory()
    )
    for _ in range(2):
        results = await loader.load_many([1, 2], return_exceptions=True)
        assert results[0] == 1 and isinstance(results[1], ValueError)
    assert calls == [[1, 2], [2]]


async def test_cache_exceptions_predicate_decides_per_exception(
    cache_map_factory: CacheMapFactory,
) -> None:
    calls: Calls = []

    async def batch_load(keys: List[str]) -> List[Exception]:
        calls.append(list(keys))
        return [
            KeyError(key) if key == "missing" else TimeoutError(key) for key in keys
        ]

    loader = DataLoader(
        batch_load,
        cache_exceptions=lambda error: isinstance(error, KeyError),
        cache_map=cache_map_factory(),
    )
    for _ in range(2):
        results = await loader.load_many(["missing", "slow"], return_exceptions=True)
        assert [type(result) for result in results] == [KeyError, TimeoutError]
    assert calls == [["missing", "slow"], ["slow"]]


async def test_cache_exceptions_predicate_that_raises_still_settles_every_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: Calls = []

    async def batch_load(keys: List[int]) -> List[Exception]:
        calls.append(list(keys))
        return [ValueError(key) for key in keys]

    def broken(error: Exception) -> bool:
        raise RuntimeError("predicate bug")

    loader = DataLoader(batch_load, cache_exceptions=broken)
    for _ in range(2):
        results = await within(loader.load_many([1, 2], return_exceptions=True))
        assert [type(result) for result in results] == [ValueError, ValueError]
    # Not cached: a predicate that cannot answer retries the keys.
    assert calls == [[1, 2], [1, 2]]
    assert any(
        record.name == "loadercache" and "cache_exceptions raised" in record.message
        for record in caplog.records
    )


class _FailsOnce:
    """A batch function that breaks its contract on the first call only."""

    def __init__(self, first_result: Callable[[List[Any]], Any]) -> None:
        self.first_result = first_result
        self.calls: Calls = []

    async def __call__(self, keys: List[Any]) -> Any:
        self.calls.append(list(keys))
        if len(self.calls) == 1:
            return self.first_result(keys)
        return keys


def _raise(keys: List[Any]) -> Any:
    raise ConnectionError("database is down")


@pytest.mark.parametrize(
    ("first_result", "error_type", "message"),
    [
        (_raise, ConnectionError, r"database is down"),
        (lambda keys: None, TypeError, r"returned None for keys \[1, 2, 3\]"),
        (lambda keys: 42, TypeError, r"returned 42 for keys"),
        (lambda keys: "abc", TypeError, r"returned 'abc' for keys"),
        (
            lambda keys: keys[:2],
            TypeError,
            r"same length as the list of keys, but it returned 2 values for 3 keys"
            r"(.|\n)*Keys:\n\[1, 2, 3\](.|\n)*Values:\n\[1, 2\]",
        ),
    ],
    ids=["raises", "None", "int", "str", "wrong length"],
)
async def test_failed_batch_rejects_every_load_with_one_error_and_caches_none(
    cache_map_factory: CacheMapFactory,
    first_result: Callable[[List[Any]], Any],
    error_type: type,
    message: str,
) -> None:
    batch_load = _FailsOnce(first_result)
    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    results = await loader.load_many([1, 2, 3], return_exceptions=True)
    assert isinstance(results[0], error_type)
    assert results[0] is results[1] is results[2]
    with pytest.raises(error_type, match=message):
        raise results[0]
    # None of the keys stayed cached: the next load calls the function again.
    assert await loader.load_many([1, 2, 3]) == [1, 2, 3]
    assert batch_load.calls == [[1, 2, 3], [1, 2, 3]]
    assert loader.stats.failed_batches == 1


async def test_wrong_length_message_is_truncated() -> None:
    async def batch_load(keys: List[int]) -> List[int]:
        return list(range(len(keys) - 1))

    loader = DataLoader(batch_load)
    results = await loader.load_many(range(1000), return_exceptions=True)
    message = str(results[0])
    assert "returned 999 values for 1000 keys" in message
    assert "..." in message
    assert len(message) < 1000


async def test_load_none_is_refused() -> None:
    loader, calls = identity_loader()
    with pytest.raises(TypeError, match="called with a value, but got: None"):
        loader.load(None)
    assert calls == []


async def test_unhashable_key_is_refused_naming_it_and_suggesting_cache_key_fn(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, _ = identity_loader(cache_map=cache_map_factory())
    with pytest.raises(
        TypeError,
        match=r"cache key \[1, 2\] is unhashable; pass cache_key_fn= to map it",
    ):
        loader.load([1, 2])
    with pytest.raises(TypeError, match="unhashable"):
        loader.prime([1, 2], "v")
    with pytest.raises(TypeError, match="unhashable"):
        loader.clear([1, 2])
    tupled, tupled_calls = identity_loader(
        cache_key_fn=tuple, cache_map=cache_map_factory()
    )
    assert await tupled.load_many([[1, 2], [1, 2]]) == [[1, 2], [1, 2]]
    assert tupled_calls == [[[1, 2]]]


class Interrupt(BaseException):
    """A BaseException that asyncio does not treat specially."""


async def _raise_interrupt(keys: List[Any]) -> List[Any]:
    await asyncio.sleep(0)
    raise Interrupt()


async def _raise_cancelled(keys: List[Any]) -> List[Any]:
    await asyncio.sleep(0)
    raise asyncio.CancelledError()


@pytest.mark.parametrize(
    ("batch_load", "cause"),
    [(_raise_interrupt, Interrupt), (_raise_cancelled, asyncio.CancelledError)],
    ids=["BaseException", "CancelledError"],
)
async def test_batch_function_interrupted_still_settles_every_load(
    cache_map_factory: CacheMapFactory, batch_load: Any, cause: type
) -> None:
    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    results = await within(loader.load_many([1, 2], return_exceptions=True))
    assert isinstance(results[0], RuntimeError)
    assert results[0] is results[1]
    assert f"interrupted by {cause.__name__}" in str(results[0])
    assert isinstance(results[0].__cause__, cause)
    # Nothing of the interrupted batch stays cached.
    again = await within(loader.load_many([1, 2], return_exceptions=True))
    assert again[0] is not results[0]


def test_batch_cancelled_by_the_loop_shutting_down_settles_its_loads() -> None:
    async def main() -> asyncio.Future[Any]:
        gate = Gate()
        loader = DataLoader(gate)
        pending = loader.load(1)
        await gate.running.wait()
        # Return with the batch in flight: run(), like asyncio.run, cancels it.
        return pending

    pending = run(main())
    assert isinstance(pending.exception(), RuntimeError)
    assert "interrupted by CancelledError" in str(pending.exception())


# -- cancellation ------------------------------------------------------------


async def test_cancelling_the_first_awaiter_of_a_key_spares_the_others(
    cache_map_factory: CacheMapFactory,
) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=cache_map_factory())

    async def resolve(key: str) -> str:
        value: str = await loader.load(key)
        return value

    first = asyncio.ensure_future(resolve("a"))
    others = [asyncio.ensure_future(resolve("a")) for _ in range(3)]
    await within(gate.running.wait())
    first.cancel()
    gate.open.set()
    assert await within(asyncio.gather(*others)) == ["a", "a", "a"]
    with pytest.raises(asyncio.CancelledError):
        await first
    calls_so_far = len(gate.calls)
    # The cache holds a settled value, not the cancelled future.
    assert await within(loader.load("a")) == "a"
    assert len(gate.calls) == calls_so_far


async def test_cancelling_a_later_awaiter_of_a_key_spares_the_first(
    cache_map_factory: CacheMapFactory,
) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=cache_map_factory())
    first = loader.load("a")
    later = loader.load("a")
    await within(gate.running.wait())
    later.cancel()
    gate.open.set()
    assert await within(first) == "a"
    assert later.cancelled()
    assert await loader.load("a") == "a"
    assert gate.calls == [["a"]]


async def test_cancelling_every_awaiter_during_a_reload_leaves_no_lost_error() -> None:
    gate = Gate()
    calls: Calls = []

    async def batch_load(keys: List[int]) -> List[Exception]:
        calls.append(list(keys))
        await gate.open.wait()
        return [ValueError(key) for key in keys]

    loader = DataLoader(batch_load)
    first, second = loader.load(1), loader.load(1)
    await ticks()
    first.cancel()  # the other awaiter reloads the key
    await ticks()
    second.cancel()
    gate.open.set()
    await ticks(10)
    assert calls == [[1], [1]]
    assert first.cancelled() and second.cancelled()
    # The reload's ValueError, which nobody was left to take, must not be
    # reported by asyncio as never retrieved when it is collected
    # (no_asyncio_errors checks).
    loader.clear(1)


async def test_many_loads_cancelled_in_flight_each_leave_the_cache() -> None:
    gate = Gate()
    loader = DataLoader(gate)
    first = [loader.load(key) for key in range(200)]
    second = [loader.load(key) for key in range(200, 400)]
    await within(gate.running.wait())
    cancelled = first[::2] + second[1::2]
    for future in cancelled:
        future.cancel()
    gate.open.set()
    kept = first[1::2] + second[::2]
    assert await within(asyncio.gather(*kept)) == [
        *range(1, 200, 2),
        *range(200, 400, 2),
    ]
    # Every cancelled key is loaded again, in one batch; no kept key is.
    reloaded = [*range(0, 200, 2), *range(201, 400, 2)]
    assert await within(loader.load_many(reloaded)) == reloaded
    assert gate.calls == [list(range(400)), reloaded]


async def test_cancelled_load_is_not_left_in_the_cache(
    cache_map_factory: CacheMapFactory,
) -> None:
    gate = Gate()
    cache_map = cache_map_factory()
    loader = DataLoader(gate, cache_map=cache_map)
    cancelled, kept = loader.load("a"), loader.load("b")
    await within(gate.running.wait())
    cancelled.cancel()
    gate.open.set()
    assert await within(kept) == "b"
    # Settling forgot the cancelled future, rather than leave it for the next
    # load to find and replace.
    assert cache_map.get("a") is None
    assert await within(loader.load("a")) == "a"
    # A local map only ever held the cancelled future: "a" is loaded again.
    # The batch did load "a", so a shared tier may answer the next load
    # instead, once its background write-back has landed.
    if isinstance(cache_map, RemoteTier):
        assert gate.calls in ([["a", "b"]], [["a", "b"], ["a"]])
    else:
        assert gate.calls == [["a", "b"], ["a"]]


async def test_a_load_replacing_a_cancelled_one_outlives_the_first_batch(
    cache_map_factory: CacheMapFactory,
) -> None:
    gate = Gate()
    loader = DataLoader(gate, cache_map=cache_map_factory())
    cancelled = loader.load("a")
    await within(gate.running.wait())
    cancelled.cancel()
    # Still in flight: this load finds the cancelled future and replaces it.
    replacement = loader.load("a")
    assert replacement is not cancelled
    # Let the second batch reach the batch function before the first settles:
    # a shared tier would otherwise answer it from the first batch's write-back.
    # (A tier that leases keys, the Redis map's, answers it by waiting for the
    # first batch's load instead: then there is no second call.)
    with contextlib.suppress(asyncio.TimeoutError):
        await within(gate.entered(2), 0.5)
    gate.open.set()
    assert await within(replacement) == "a"
    # The first batch, settling, forgot its cancelled load, not the new one.
    assert loader.load("a") is replacement
    assert gate.calls in ([["a"], ["a"]], [["a"]])


async def test_loads_cancelled_before_dispatch_are_not_loaded(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    all_cancelled = [loader.load(1), loader.load(2)]
    for future in all_cancelled:
        future.cancel()
    await ticks()
    assert calls == []
    some_cancelled = [loader.load(3), loader.load(4)]
    some_cancelled[0].cancel()
    assert await within(some_cancelled[1]) == 4
    assert calls == [[4]]
    assert await loader.load_many([1, 2, 3]) == [1, 2, 3]
    assert calls == [[4], [1, 2, 3]]


@pytest.mark.parametrize("fails", [False, True], ids=["resolves", "fails"])
async def test_loads_cancelled_while_the_batch_runs_are_never_set(
    cache_map_factory: CacheMapFactory, fails: bool
) -> None:
    gate = Gate()
    error = ConnectionError("down")

    async def batch_load(keys: List[str]) -> List[str]:
        await gate(keys)
        if fails:
            raise error
        return keys

    loader = DataLoader(batch_load, cache_map=cache_map_factory())
    futures = [loader.load(key) for key in "abcd"]
    shared = loader.load("d")
    await within(gate.running.wait())
    futures[0].cancel()
    futures[2].cancel()
    shared.cancel()
    gate.open.set()
    results = await within(
        asyncio.gather(futures[1], futures[3], return_exceptions=True)
    )
    assert results == ([error, error] if fails else ["b", "d"])
    assert all(future.cancelled() for future in (futures[0], futures[2], shared))
    # An InvalidStateError in the batch task would be reported by asyncio and
    # fail this test through the no_asyncio_errors fixture.


# -- larger shapes -----------------------------------------------------------


async def test_loader_called_inside_another_loaders_batch_function(
    cache_map_factory: CacheMapFactory,
) -> None:
    authors, author_calls = identity_loader(cache_map=cache_map_factory())
    post_calls: Calls = []

    async def load_posts(ids: List[int]) -> List[Dict[str, Any]]:
        post_calls.append(list(ids))
        names = await authors.load_many([f"author{post_id % 2}" for post_id in ids])
        return [{"id": post_id, "author": name} for post_id, name in zip(ids, names)]

    posts = DataLoader(load_posts, cache_map=cache_map_factory())
    results = await asyncio.gather(*map(posts.load, [1, 2, 3]))
    assert [post["author"] for post in results] == ["author1", "author0", "author1"]
    assert post_calls == [[1, 2, 3]]
    assert author_calls == [["author1", "author0"]]


async def test_many_concurrent_tasks_share_one_call(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())

    async def resolve(i: int) -> int:
        await asyncio.sleep(0)
        value: int = await loader.load(i % 100)
        return value

    results = await within(asyncio.gather(*map(resolve, range(1000))), 10)
    assert results == [i % 100 for i in range(1000)]
    assert calls == [list(range(100))]
    assert loader.stats.local_misses == 100


async def test_graphql_shaped_tree_costs_one_call_per_level(
    cache_map_factory: CacheMapFactory,
) -> None:
    calls: Calls = []

    def children_of(node: str) -> List[str]:
        if node == "root":
            return [f"c{i}" for i in range(50)]
        if node.count(".") == 0:
            return [f"{node}.{i}" for i in range(10)]
        return []

    async def load_nodes(ids: List[str]) -> List[Dict[str, Any]]:
        calls.append(list(ids))
        return [{"id": node, "children": children_of(node)} for node in ids]

    nodes = DataLoader(load_nodes, cache_map=cache_map_factory())

    async def resolve(node_id: str) -> Dict[str, Any]:
        node = await nodes.load(node_id)
        children = await asyncio.gather(*map(resolve, node["children"]))
        return {"id": node["id"], "children": children}

    tree = await within(resolve("root"), 10)
    assert len(tree["children"]) == 50
    assert all(len(child["children"]) == 10 for child in tree["children"])
    assert [len(call) for call in calls] == [1, 50, 500]
    assert calls[1] == [f"c{i}" for i in range(50)]


async def test_stats_count_loads_hits_and_batches(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, _ = identity_loader(max_batch_size=2, cache_map=cache_map_factory())
    # The second 1 finds the first in flight: a hit.
    await loader.load_many([1, 2, 3, 1])
    await loader.load(2)  # resolved: a hit
    with pytest.raises(TypeError):
        loader.load([4])  # unhashable: neither
    cancelled = loader.load(5)
    cancelled.cancel()
    assert await loader.load(5) == 5  # replaces the cancelled load: a miss
    stats = loader.stats.as_dict()
    assert {
        key: stats[key]
        for key in (
            "loads",
            "local_hits",
            "local_misses",
            "batches",
            "batched_keys",
            "max_batch",
        )
    } == {
        "loads": 7,
        "local_hits": 2,
        "local_misses": 5,
        "batches": 3,
        "batched_keys": 4,
        "max_batch": 2,
    }
    assert stats["mean_batch"] == 4 / 3


# -- duplicates in flight ------------------------------------------------------


async def test_each_caller_of_a_key_in_flight_gets_a_future_of_its_own(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    futures = [loader.load(key % 3) for key in range(12)]
    assert len({id(future) for future in futures}) == 12
    assert await within(asyncio.gather(*futures)) == [key % 3 for key in range(12)]
    assert calls == [[0, 1, 2]]
    assert (loader.stats.local_hits, loader.stats.local_misses) == (9, 3)
    # Settled: later loads share the cached future.
    assert loader.load(1) is loader.load(1)


async def test_cancelling_followers_spares_the_first_and_the_other_followers() -> None:
    gate = Gate()
    loader = DataLoader(gate)
    first, *followers = [loader.load("a") for _ in range(4)]
    await within(gate.running.wait())
    followers[0].cancel()
    followers[2].cancel()
    gate.open.set()
    assert await within(asyncio.gather(first, followers[1])) == ["a", "a"]
    assert followers[0].cancelled() and followers[2].cancelled()
    assert gate.calls == [["a"]]


async def test_followers_of_a_failed_load_get_its_exception() -> None:
    error = ValueError("no")

    async def batch_load(keys: List[int]) -> List[Exception]:
        return [error for _ in keys]

    loader = DataLoader(batch_load)
    results = await within(
        asyncio.gather(*[loader.load(1) for _ in range(3)], return_exceptions=True)
    )
    assert results == [error, error, error]


# -- load_many as one future ---------------------------------------------------


async def test_load_many_waits_for_keys_in_flight_in_earlier_batches() -> None:
    gate = Gate()
    loader = DataLoader(gate)
    early = loader.load(1)
    await within(gate.running.wait())
    many = loader.load_many([2, 1, 3])
    await within(gate.entered(2))
    assert not many.done()
    gate.open.set()
    assert await within(many) == [2, 1, 3]
    assert await early == 1
    assert gate.calls == [[1], [2, 3]]


async def test_load_many_raises_the_first_failure_in_key_order() -> None:
    async def batch_load(keys: List[int]) -> List[Any]:
        return [KeyError(key) if key < 0 else key for key in keys]

    loader = DataLoader(batch_load)
    with pytest.raises(KeyError, match="-2"):
        await within(loader.load_many([1, -2, -3]))


async def test_load_many_raises_a_failure_only_once_every_key_has_settled() -> None:
    # As documented: settled when the last key has, not at the first failure
    # (which asyncio.gather would raise at once).
    slow = asyncio.Event()

    async def batch_load(keys: List[int]) -> List[Any]:
        if keys == [2]:
            await slow.wait()
        return [KeyError(key) if key < 0 else key for key in keys]

    loader = DataLoader(batch_load, max_batch_size=1)
    many = loader.load_many([-1, 2])
    failed = loader.load(-1)
    with pytest.raises(KeyError):
        await within(failed)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not many.done()
    slow.set()
    with pytest.raises(KeyError, match="-1"):
        await within(many)
    assert loader.load(2).result() == 2


async def test_cancelling_load_many_cancels_its_loads_only() -> None:
    gate = Gate()
    loader = DataLoader(gate)
    other = loader.load(1)
    many = loader.load_many([1, 2])
    await within(gate.running.wait())
    many.cancel()
    gate.open.set()
    assert await within(other) == 1
    with pytest.raises(asyncio.CancelledError):
        await many
    assert gate.calls == [[1, 2]]


async def test_load_many_of_cached_keys_is_done_at_once() -> None:
    loader, _ = identity_loader()
    loader.prime(1, "one").prime(2, "two")
    many = loader.load_many([2, 1])
    assert many.done() and many.result() == ["two", "one"]
    assert (await loader.load_many([])) == []


# -- the event loop's task factory ---------------------------------------------


FACTORIES = ["default"]
if sys.version_info >= (3, 12):
    FACTORIES.append("eager")


@pytest.mark.parametrize("factory", FACTORIES)
def test_siblings_that_yield_once_share_a_batch_under_either_task_factory(
    factory: str,
) -> None:
    calls: Calls = []

    async def batch_load(keys: List[int]) -> List[int]:
        calls.append(sorted(keys))
        return keys

    async def resolve(loader: DataLoader[int, int], key: int, depth: int) -> None:
        if key % 2:
            await asyncio.sleep(0)  # odd siblings do a little work first
        await loader.load(key)
        if depth < 2:
            await asyncio.gather(
                *[resolve(loader, key * 10 + i, depth + 1) for i in range(1, 5)]
            )

    async def main() -> None:
        await resolve(DataLoader(batch_load), 0, 0)

    loop = asyncio.new_event_loop()
    if factory == "eager":
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 5))
    finally:
        loop.close()
    assert [len(call) for call in calls] == [1, 4, 16]


# -- Strawberry's prime_many, clear_many, force --------------------------------


async def test_prime_force_replaces_a_cached_value(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    assert await loader.load(1) == 1
    assert loader.prime(1, "forced", force=True) is loader
    assert await loader.load(1) == "forced"
    loader.prime(1, "ignored")
    assert await loader.load(1) == "forced"
    assert calls == [[1]]


async def test_prime_many_and_clear_many_chain(
    cache_map_factory: CacheMapFactory,
) -> None:
    loader, calls = identity_loader(cache_map=cache_map_factory())
    assert loader.prime_many({1: "one", 2: "two"}) is loader
    assert await loader.load_many([1, 2]) == ["one", "two"]
    loader.prime_many({1: "uno", 3: "tres"})
    assert await loader.load_many([1, 3]) == ["one", "tres"]
    loader.prime_many({1: "uno"}, force=True)
    assert await loader.load(1) == "uno"
    assert loader.clear_many([1, 2]) is loader
    assert await loader.load_many([1, 2, 3]) == [1, 2, "tres"]
    assert calls == [[1, 2]]


# -- repr ------------------------------------------------------------------------


def test_repr_of_a_loader_whose_init_failed_does_not_raise() -> None:
    class Broken(DataLoader[int, int]):
        def __init__(self) -> None:
            pass

    assert repr(Broken()) == "<Broken>"
    with pytest.raises(ValueError, match="max_batch_size") as raised:
        identity_loader(max_batch_size=0, name="named")
    assert "Traceback" not in repr(raised.value)
