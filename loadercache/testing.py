"""A contract suite for cache maps and remote tiers: point it at yours, run pytest.

Every guarantee a :class:`~loadercache.DataLoader` relies on from its cache
map is a test here.  Subclass the contract for what your backend is, tell it
how to make one, and pytest runs the lot::

    from loadercache.testing import CacheMapContract

    class TestMyCacheMap(CacheMapContract):
        def make_cache_map(self):
            return MyCacheMap(maxsize=1000)

A map that also implements :class:`~loadercache.RemoteTier` (``get_many``,
``set_many``, ``discard``) subclasses :class:`RemoteTierContract` instead,
which runs every cache map test too.  Its ``make_cache_map`` returns a new map
(one request's) over storage that every map of the same test shares, as the
processes of a service share one Redis: what one map writes, another reads.

The tests are plain methods, not coroutines: each runs in an event loop of its
own (:meth:`CacheMapContract.run`), bounded by ``timeout`` seconds, so no
async plugin is needed and none is in the way.  Optional hooks
(:meth:`~CacheMapContract.setup_backend`, ``teardown_backend``, ``settle``,
``fail_tier``, ``heal_tier``) run inside that loop; a test that needs a hook
your class does not implement is skipped, saying which.
"""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Hashable
from typing import (
    Any,
    Awaitable,
    Callable,
    ClassVar,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
)

from loadercache.cache import MISS, CacheMap, RemoteTier
from loadercache.loader import DataLoader

__all__ = ["BatchRecorder", "CacheMapContract", "RemoteTierContract"]


class BatchRecorder:
    """A batch function over a dict that records the keys of every call.

    A key missing from ``values`` loads ``f"value of {key!r}"``; an
    ``Exception`` in ``values`` rejects its key.  A call reads its values
    when it is made; while ``gate`` is not set, it then waits for it
    (``gate.set()`` lets it return).

    >>> source = BatchRecorder()
    >>> loader = DataLoader(source)
    >>> await loader.load(1), source.calls
    ('value of 1', [[1]])
    """

    def __init__(self, values: Optional[Dict[Hashable, Any]] = None) -> None:
        self.values: Dict[Hashable, Any] = dict(values or {})
        self.calls: List[List[Any]] = []
        self.gate: asyncio.Event = asyncio.Event()
        self.gate.set()

    async def __call__(self, keys: List[Any]) -> List[Any]:
        self.calls.append(list(keys))
        values = [self.value_of(key) for key in keys]
        await self.gate.wait()
        return values

    def value_of(self, key: Any) -> Any:
        """What the batch function returns for *key* (unhashable keys too)."""
        try:
            return self.values[key]
        except (KeyError, TypeError):
            return f"value of {key!r}"

    @property
    def keys(self) -> List[Any]:
        """Every key the batch function received, in order."""
        return [key for call in self.calls for key in call]

    async def entered(self, times: int = 1) -> None:
        """Wait until the batch function has been called *times* times."""
        while len(self.calls) < times:
            await asyncio.sleep(0)


def _expect(condition: bool, message: str) -> None:
    # Explicit messages: pytest rewrites the asserts of test modules, not of
    # an installed package, and a bare AssertionError tells an author nothing.
    if not condition:
        raise AssertionError(message)


def _expect_equal(got: Any, expected: Any, what: str = "the value") -> None:
    if got != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {got!r}")


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Close *loop* as ``asyncio.run`` does: cancel what is left, then shut down."""
    try:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _skip(reason: str) -> None:
    # unittest's SkipTest: pytest reports it as a skip, and the kit imports
    # no test framework.
    raise unittest.SkipTest(reason)


class CacheMapContract:
    """The tests every :class:`~loadercache.CacheMap` must pass.

    Subclass it (as ``Test...``, so pytest collects it) and define
    :meth:`make_cache_map`.  The class attributes describe your map:

    * ``keys``: at least three distinct cache keys your map holds (default:
      an int, a str and a tuple, equal in nothing).
    * ``capacity``: how many keys one map must hold without evicting (bounded
      maps: make them at least this big).
    * ``unstorable_keys``: hashable keys your ``set`` refuses with a
      ``TypeError`` (default none: the refusal test is skipped).
    * ``timeout``: the seconds one test may take.
    """

    keys: ClassVar[Sequence[Hashable]] = (1, "1", (1, "1"))
    capacity: ClassVar[int] = 100
    unstorable_keys: ClassVar[Sequence[Hashable]] = ()
    timeout: ClassVar[float] = 10.0

    # -- what a backend author provides ---------------------------------

    def make_cache_map(self) -> CacheMap[Any, Any]:
        """Return a new, empty cache map; called inside the test's event loop."""
        raise NotImplementedError(
            f"{type(self).__name__} must define make_cache_map() to return a new "
            "cache map of the backend under test."
        )

    async def setup_backend(self) -> None:
        """Run before each test, in its event loop (open a connection, say)."""

    async def teardown_backend(self) -> None:
        """Run after each test, in its event loop, even if it failed."""

    def run(self, test: Callable[[], Awaitable[None]]) -> None:
        """Run one test with the backend set up, in a new event loop.

        Override to use another loop (uvloop) or runner.  The loop is never
        made the thread's current one, so code after the test that relies on
        ``asyncio.get_event_loop()`` finds what it found before (after
        ``asyncio.run()``, it would raise).
        """

        async def main() -> None:
            await self.setup_backend()
            try:
                await asyncio.wait_for(test(), self.timeout)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"the test did not finish in {self.timeout} s: a load is "
                    "waiting for a future the cache map lost or replaced"
                ) from None
            finally:
                await self.teardown_backend()

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            _close(loop)

    # -- helpers for the tests ----------------------------------------------

    def loader(
        self, source: BatchRecorder, cache_map: CacheMap[Any, Any], **options: Any
    ) -> DataLoader[Any, Any]:
        """A loader over *cache_map* whose batch function is *source*."""
        return DataLoader(source, cache_map=cache_map, **options)

    # -- the map itself, as the loader calls it ------------------------------

    def test_get_of_an_absent_key_is_none(self) -> None:
        async def test() -> None:
            cache_map = self.make_cache_map()
            for key in self.keys:
                _expect(
                    cache_map.get(key) is None, f"get({key!r}) of a new map is not None"
                )

        self.run(test)

    def test_get_returns_the_very_future_set_in_flight_and_after(self) -> None:
        # The loader compares futures by identity: a map that returned a copy
        # would break joining loads in flight and forgetting failed ones.
        async def test() -> None:
            cache_map = self.make_cache_map()
            loop = asyncio.get_running_loop()
            futures = {key: loop.create_future() for key in self.keys}
            for key, future in futures.items():
                cache_map.set(key, future)
            for key, future in futures.items():
                _expect(
                    cache_map.get(key) is future,
                    f"get({key!r}) did not return the pending future set for it",
                )
                future.set_result(f"value of {key!r}")
            for key, future in futures.items():
                _expect(
                    cache_map.get(key) is future,
                    f"get({key!r}) did not return its future once it resolved",
                )

        self.run(test)

    def test_set_replaces_the_future_of_a_key(self) -> None:
        async def test() -> None:
            cache_map = self.make_cache_map()
            loop = asyncio.get_running_loop()
            key = self.keys[0]
            first, second = loop.create_future(), loop.create_future()
            cache_map.set(key, first)
            cache_map.set(key, second)
            _expect(
                cache_map.get(key) is second, "a second set() did not replace the first"
            )
            first.cancel()
            second.cancel()

        self.run(test)

    def test_delete_forgets_one_key_and_an_absent_key_is_no_error(self) -> None:
        async def test() -> None:
            cache_map = self.make_cache_map()
            loop = asyncio.get_running_loop()
            futures = {key: loop.create_future() for key in self.keys}
            for key, future in futures.items():
                cache_map.set(key, future)
            gone, *kept = self.keys
            cache_map.delete(gone)
            cache_map.delete(gone)
            _expect(
                cache_map.get(gone) is None, f"get({gone!r}) after delete() is not None"
            )
            for key in kept:
                _expect(
                    cache_map.get(key) is futures[key],
                    f"delete({gone!r}) also removed {key!r}",
                )
            for future in futures.values():
                future.cancel()

        self.run(test)

    def test_clear_forgets_every_key(self) -> None:
        async def test() -> None:
            cache_map = self.make_cache_map()
            loop = asyncio.get_running_loop()
            for key in self.keys:
                future = loop.create_future()
                future.set_result(key)
                cache_map.set(key, future)
            cache_map.clear()
            for key in self.keys:
                _expect(
                    cache_map.get(key) is None,
                    f"get({key!r}) after clear() is not None",
                )
            cache_map.clear()  # an empty map too

        self.run(test)

    # -- the loader over the map ---------------------------------------------

    def test_loads_of_one_tick_make_one_batch_and_hits_make_none(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            keys = list(self.keys)
            expected = [f"value of {key!r}" for key in keys]
            _expect_equal(await loader.load_many(keys), expected)
            _expect_equal(await loader.load_many(keys), expected)
            _expect_equal(source.calls, [keys], "the batch calls")

        self.run(test)

    def test_capacity_keys_stay_cached(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            keys = list(range(self.capacity))
            await loader.load_many(keys)
            _expect_equal(
                await loader.load_many(keys[::-1]),
                [f"value of {key!r}" for key in keys[::-1]],
            )
            _expect_equal(source.calls, [keys], "the batch calls")

        self.run(test)

    def test_a_key_in_flight_is_loaded_once_for_every_caller(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            source.gate.clear()
            loader = self.loader(source, self.make_cache_map())
            key = self.keys[0]
            first = loader.load(key)
            await source.entered()
            joined = [loader.load(key) for _ in range(3)]
            source.gate.set()
            values = await asyncio.gather(first, *joined)
            _expect_equal(values, [f"value of {key!r}"] * 4)
            _expect_equal(source.calls, [[key]], "the batch calls")

        self.run(test)

    def test_cancelling_one_caller_leaves_the_others_their_value(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            source.gate.clear()
            loader = self.loader(source, self.make_cache_map())
            key = self.keys[0]
            value = f"value of {key!r}"
            first = loader.load(key)
            await source.entered()
            second, third = loader.load(key), loader.load(key)
            second.cancel()
            source.gate.set()
            _expect_equal(list(await asyncio.gather(first, third)), [value] * 2)
            _expect_equal(source.calls, [[key]], "batch calls")
            # The first caller holds the future in the map: cancelling it
            # must still leave a value to the callers that joined it.
            source.gate.clear()
            other = self.keys[1]
            first = loader.load(other)
            await source.entered(2)
            joined = loader.load(other)
            first.cancel()
            source.gate.set()
            _expect_equal(await joined, f"value of {other!r}")
            _expect(first.cancelled(), "the cancelled load was not cancelled")

        self.run(test)

    def test_a_load_cancelled_before_its_batch_is_loaded_anew(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            key = self.keys[0]
            loader.load(key).cancel()
            _expect_equal(await loader.load(key), f"value of {key!r}")
            _expect_equal(await loader.load(key), f"value of {key!r}")
            _expect_equal(source.calls, [[key]], "the batch calls")

        self.run(test)

    def test_a_key_cleared_in_flight_keeps_the_newer_load(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            source.gate.clear()
            loader = self.loader(source, self.make_cache_map())
            key = self.keys[0]
            old = loader.load(key)
            await source.entered()
            loader.clear(key)
            source.values[key] = "new"
            new = loader.load(key)
            await source.entered(2)
            source.gate.set()
            _expect_equal(
                list(await asyncio.gather(old, new)), [f"value of {key!r}", "new"]
            )
            # The first batch settling must not have dropped the second's entry.
            _expect_equal(await loader.load(key), "new")
            _expect_equal(source.calls, [[key], [key]], "the batch calls")

        self.run(test)

    def test_prime_caches_a_value_and_never_overwrites_one(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            primed, loaded = self.keys[0], self.keys[1]
            _expect_equal(await loader.load(loaded), f"value of {loaded!r}")
            loader.prime(primed, "primed").prime(loaded, "ignored")
            _expect_equal(
                await loader.load_many([primed, loaded]),
                [
                    "primed",
                    f"value of {loaded!r}",
                ],
            )
            loader.clear(loaded).prime(loaded, "forced")
            _expect_equal(await loader.load(loaded), "forced")
            _expect_equal(source.calls, [[loaded]], "the batch calls")

        self.run(test)

    def test_a_primed_exception_rejects_its_key(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            key = self.keys[0]
            loader.prime(key, LookupError("primed"))
            for _ in range(2):
                try:
                    await loader.load(key)
                except LookupError as error:
                    _expect_equal(str(error), "primed")
                else:
                    raise AssertionError("the primed exception was not raised")
            _expect_equal(source.calls, [], "the batch calls")

        self.run(test)

    def test_a_failed_batch_leaves_nothing_cached(self) -> None:
        async def test() -> None:
            calls: List[List[Any]] = []

            async def failing_once(keys: List[Any]) -> List[Any]:
                calls.append(list(keys))
                if len(calls) == 1:
                    raise ConnectionError("the database is down")
                return [f"value of {key!r}" for key in keys]

            loader = DataLoader(failing_once, cache_map=self.make_cache_map())
            keys = list(self.keys)
            outcome = await loader.load_many(keys, return_exceptions=True)
            _expect(
                all(isinstance(value, ConnectionError) for value in outcome),
                f"a failed batch resolved its loads to {outcome!r}",
            )
            _expect_equal(
                await loader.load_many(keys), [f"value of {key!r}" for key in keys]
            )
            _expect_equal(calls, [keys, keys], "the batch calls")

        self.run(test)

    def test_an_exception_not_cached_is_loaded_again(self) -> None:
        async def test() -> None:
            bad, good = self.keys[0], self.keys[1]
            source = BatchRecorder({bad: ValueError("not yet")})
            loader = self.loader(source, self.make_cache_map(), cache_exceptions=False)
            first = await loader.load_many([bad, good], return_exceptions=True)
            _expect(
                isinstance(first[0], ValueError),
                f"expected a ValueError, got {first[0]!r}",
            )
            _expect_equal(first[1], f"value of {good!r}")
            source.values[bad] = "now"
            _expect_equal(await loader.load_many([bad, good]), ["now", first[1]])
            _expect_equal(source.calls, [[bad, good], [bad]], "the batch calls")

        self.run(test)

    def test_clear_all_forgets_every_key(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            keys = list(self.keys)
            await loader.load_many(keys)
            loader.clear_all()
            await loader.load_many(keys)
            _expect_equal(source.calls, [keys, keys], "the batch calls")

        self.run(test)

    def test_cache_keys_from_cache_key_fn(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(
                source, self.make_cache_map(), cache_key_fn=lambda key: key["id"]
            )
            ids = list(self.keys)
            keys = [{"id": cache_key} for cache_key in ids]
            values = await loader.load_many(keys)
            again = await loader.load_many([{"id": cache_key} for cache_key in ids])
            _expect_equal(values, again)
            _expect_equal(source.calls, [keys], "the batch calls")

        self.run(test)

    def test_a_key_the_map_refuses_is_never_queued(self) -> None:
        if not self.unstorable_keys:
            _skip(
                f"{type(self).__name__}.unstorable_keys is empty: the map refuses "
                "no key"
            )

        async def test() -> None:
            source = BatchRecorder()
            loader = self.loader(source, self.make_cache_map())
            for refused in self.unstorable_keys:
                try:
                    loader.load(refused)
                except TypeError:
                    pass
                else:
                    raise AssertionError(f"set() stored the unstorable {refused!r}")
                try:
                    loader.prime(refused, "primed")
                except TypeError:
                    pass
                else:
                    raise AssertionError(f"set() primed the unstorable {refused!r}")
            key = self.keys[0]
            _expect_equal(await loader.load(key), f"value of {key!r}")
            _expect_equal(source.calls, [[key]], "the batch calls")

        self.run(test)


class RemoteTierContract(CacheMapContract):
    """The tests every cache map with a :class:`~loadercache.RemoteTier` must pass.

    On top of the :class:`CacheMapContract` tests (each on one map), these
    make several maps in one test, as several requests or processes would:
    :meth:`make_cache_map` returns a new map with its own local tier over the
    remote storage every map of the test shares, empty at the start of each
    test.  ``values`` are the values your tier stores and gives back equal
    (``None`` among them: a tier must tell a stored ``None`` from a miss).

    Hooks:

    * :meth:`settle`: wait until what the maps handed to the tier (values,
      primes, deletes, clears) is what a new map reads.  Needed when writes
      run in the background.
    * :meth:`fail_tier` and :meth:`heal_tier`: make the remote storage fail
      (unreachable, every call an error) and work again, for the tests that
      a failing tier costs misses, never errors.  Without them those tests
      are skipped.

    Every answer of ``get_many`` goes through :meth:`read`, and every write
    through :meth:`write`: a tier protocol that grows another kind of answer
    (a key being loaded elsewhere, with an awaitable for its value) gets a
    contract subclass that overrides those two and adds its own tests.
    """

    values: ClassVar[Sequence[Any]] = (
        None,
        0,
        "text",
        [1, "two"],
        {"name": "Ada", "tags": ["a"]},
    )

    async def settle(self) -> None:
        """Wait until what was handed to the tier is visible to a new map."""

    async def fail_tier(self) -> None:
        """Make every call the maps make to the remote storage fail."""
        _skip(f"{type(self).__name__} does not implement fail_tier()")

    async def heal_tier(self) -> None:
        """Undo :meth:`fail_tier`."""
        _skip(f"{type(self).__name__} does not implement heal_tier()")

    # -- helpers -------------------------------------------------------------

    def make_remote(self) -> Tuple[CacheMap[Any, Any], RemoteTier[Any, Any]]:
        """A new map, and the same map seen as its remote tier."""
        cache_map = self.make_cache_map()
        if not isinstance(cache_map, RemoteTier):
            raise AssertionError(
                f"{type(cache_map).__name__} lacks get_many, set_many or discard"
            )
        return cache_map, cache_map

    async def write(
        self, tier: RemoteTier[Any, Any], items: List[Tuple[Any, Any]]
    ) -> None:
        """Write *items* as a batch does: ``get_many`` of the keys, then ``set_many``.

        A tier may pair a batch's write with its read (the Redis map tags
        values with the generation the read saw), so the kit never calls
        ``set_many`` alone.
        """
        await self.read(tier, [key for key, _ in items])
        await tier.set_many(items)

    async def read(self, tier: RemoteTier[Any, Any], keys: List[Any]) -> List[Any]:
        """``get_many(keys)``, checked: one answer per key, a value or MISS.

        Every test reads through here, so a contract for a tier with more
        kinds of answer overrides this one method.
        """
        answers = list(await tier.get_many(keys))
        _expect(
            len(answers) == len(keys),
            (f"get_many answered {len(answers)} entries for {len(keys)} keys"),
        )
        return answers

    # -- the tier, as the loader calls it ------------------------------------

    def test_keys_never_written_are_misses(self) -> None:
        async def test() -> None:
            _, tier = self.make_remote()
            keys = list(self.keys)
            _expect_equal(
                await self.read(tier, keys), [MISS] * len(keys), "get_many's answers"
            )
            _expect_equal(await self.read(tier, []), [], "get_many's answers")

        self.run(test)

    def test_values_written_by_one_map_are_read_by_another(self) -> None:
        async def test() -> None:
            _, writer = self.make_remote()
            keys = [f"key {i}" for i in range(len(self.values))]
            await self.write(writer, list(zip(keys, self.values)))
            await self.settle()
            _, reader = self.make_remote()
            answers = await self.read(reader, [*keys, "never written"])
            _expect_equal(answers, [*self.values, MISS])
            _expect(answers[0] is None, "a stored None was read back as a miss")

        self.run(test)

    def test_a_second_request_is_answered_by_the_tier(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            keys = list(self.keys)
            first = self.loader(source, self.make_cache_map())
            expected = await first.load_many(keys)
            await self.settle()
            second = self.loader(source, self.make_cache_map())
            _expect_equal(await second.load_many(keys), expected)
            _expect_equal(source.calls, [keys], "the batch calls")
            _expect_equal(second.stats.remote_hits, len(keys), "remote hits")

        self.run(test)

    def test_exceptions_are_never_written(self) -> None:
        async def test() -> None:
            bad, good = self.keys[0], self.keys[1]
            source = BatchRecorder({bad: ValueError("no such row")})
            first = self.loader(source, self.make_cache_map())
            await first.load_many([bad, good], return_exceptions=True)
            await self.settle()
            second = self.loader(source, self.make_cache_map())
            again = await second.load_many([bad, good], return_exceptions=True)
            _expect(
                isinstance(again[0], ValueError),
                f"expected a ValueError, got {again[0]!r}",
            )
            _expect_equal(source.calls, [[bad, good], [bad]], "the batch calls")

        self.run(test)

    def test_clear_reaches_every_map(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            gone, kept = self.keys[0], self.keys[1]
            first = self.loader(source, self.make_cache_map())
            await first.load_many([gone, kept])
            await self.settle()
            first.clear(gone)
            await self.settle()
            source.values[gone] = "new"
            second = self.loader(source, self.make_cache_map())
            _expect_equal(
                await second.load_many([gone, kept]),
                [
                    "new",
                    f"value of {kept!r}",
                ],
            )
            _expect_equal(source.calls, [[gone, kept], [gone]], "the batch calls")

        self.run(test)

    def test_clear_then_load_in_one_tick_never_reads_the_old_value(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            key = self.keys[0]
            await self.loader(source, self.make_cache_map()).load(key)
            await self.settle()
            source.values[key] = "new"
            # No settle between the clear and the read: the tier must order
            # a map's delete before its next read.
            loader = self.loader(source, self.make_cache_map())
            _expect_equal(await loader.clear(key).load(key), "new")

        self.run(test)

    def test_clear_all_reaches_every_map(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            keys = list(self.keys)
            first = self.loader(source, self.make_cache_map())
            await first.load_many(keys)
            await self.settle()
            first.clear_all()
            await self.settle()
            second = self.loader(source, self.make_cache_map())
            await second.load_many(keys)
            _expect_equal(source.calls, [keys, keys], "the batch calls")

        self.run(test)

    def test_a_prime_is_written_through(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            key = self.keys[0]
            self.loader(source, self.make_cache_map()).prime(key, "primed")
            await self.settle()
            second = self.loader(source, self.make_cache_map())
            _expect_equal(await second.load(key), "primed")
            _expect_equal(source.calls, [], "the batch calls")

        self.run(test)

    def test_a_primed_exception_is_not_written(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            key = self.keys[0]
            self.loader(source, self.make_cache_map()).prime(key, KeyError(key))
            await self.settle()
            second = self.loader(source, self.make_cache_map())
            _expect_equal(await second.load(key), f"value of {key!r}")
            _expect_equal(source.calls, [[key]], "the batch calls")

        self.run(test)

    def test_a_load_in_flight_is_not_written_until_it_resolves(self) -> None:
        async def test() -> None:
            cache_map, _ = self.make_remote()
            key = self.keys[0]
            cache_map.set(key, asyncio.get_running_loop().create_future())
            await self.settle()
            _, reader = self.make_remote()
            _expect_equal(await self.read(reader, [key]), [MISS], "get_many's answers")
            pending = cache_map.get(key)
            if pending is None:
                raise AssertionError("the map lost the future of a load in flight")
            pending.cancel()

        self.run(test)

    def test_discard_forgets_only_that_future_and_only_locally(self) -> None:
        async def test() -> None:
            cache_map, tier = self.make_remote()
            loop = asyncio.get_running_loop()
            key = self.keys[0]
            await self.write(tier, [(key, "stored")])
            await self.settle()
            mine, other = loop.create_future(), loop.create_future()
            cache_map.set(key, mine)
            tier.discard(key, other)  # not the future the map holds: kept
            _expect(
                cache_map.get(key) is mine,
                "discard() of another future removed the one the map holds",
            )
            tier.discard(key, mine)
            _expect(
                cache_map.get(key) is None, "discard() of its future left it in the map"
            )
            await self.settle()
            _, reader = self.make_remote()
            _expect_equal(
                await self.read(reader, [key]), ["stored"], "get_many's answers"
            )
            mine.cancel()
            other.cancel()

        self.run(test)

    def test_a_caller_cancelled_while_the_tier_reads_costs_the_others_nothing(
        self,
    ) -> None:
        async def test() -> None:
            source = BatchRecorder()
            keys = list(self.keys)
            await self.loader(source, self.make_cache_map()).load_many(keys)
            await self.settle()
            gated = _GatedRead(self.make_cache_map())
            loader = self.loader(source, gated)
            cancelled, *kept = [loader.load(key) for key in keys]
            await gated.reading.wait()
            cancelled.cancel()
            gated.release.set()
            _expect_equal(
                await asyncio.gather(*kept), [f"value of {key!r}" for key in keys[1:]]
            )
            _expect_equal(await loader.load(keys[0]), f"value of {keys[0]!r}")
            _expect_equal(source.calls, [keys], "the batch calls")

        self.run(test)

    # -- a tier that fails ---------------------------------------------------

    def test_a_failing_tier_costs_misses_never_errors(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            keys = list(self.keys)
            await self.loader(source, self.make_cache_map()).load_many(keys)
            await self.settle()
            await self.fail_tier()
            try:
                loader = self.loader(source, self.make_cache_map())
                expected = [f"value of {key!r}" for key in keys]
                _expect_equal(await loader.load_many(keys), expected)
                _expect_equal(loader.stats.remote_hits, 0, "remote hits")
                # prime, clear and clear_all reach the tier from load()'s
                # synchronous side: none of them may raise.
                loader.prime(keys[2], "primed").clear(keys[0]).clear_all()
                _expect_equal(await loader.load(keys[1]), expected[1])
                await self.settle()
            finally:
                await self.heal_tier()
            _expect_equal(source.calls, [keys, keys, [keys[1]]], "the batch calls")

        self.run(test)

    def test_a_healed_tier_serves_again(self) -> None:
        async def test() -> None:
            source = BatchRecorder()
            key = self.keys[0]
            await self.fail_tier()
            try:
                await self.loader(source, self.make_cache_map()).load(key)
                await self.settle()
            finally:
                await self.heal_tier()
            await self.loader(source, self.make_cache_map()).load(key)
            await self.settle()
            third = self.loader(source, self.make_cache_map())
            _expect_equal(await third.load(key), f"value of {key!r}")
            _expect_equal(source.calls, [[key], [key]], "the batch calls")

        self.run(test)


class _GatedRead:
    """A remote-tier map whose ``get_many`` waits for ``release`` once entered."""

    def __init__(self, inner: CacheMap[Any, Any]) -> None:
        if not isinstance(inner, RemoteTier):
            raise AssertionError(f"{type(inner).__name__} is not a remote tier")
        self.inner = inner
        self.tier: RemoteTier[Any, Any] = inner
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    def get(self, key: Any) -> Optional[asyncio.Future[Any]]:
        return self.inner.get(key)

    def set(self, key: Any, value: asyncio.Future[Any]) -> None:
        self.inner.set(key, value)

    def delete(self, key: Any) -> None:
        self.inner.delete(key)

    def clear(self) -> None:
        self.inner.clear()

    async def get_many(self, keys: Sequence[Any]) -> Sequence[Any]:
        self.reading.set()
        await self.release.wait()
        return await self.tier.get_many(keys)

    async def set_many(self, items: Sequence[Tuple[Any, Any]]) -> None:
        await self.tier.set_many(items)

    def discard(self, key: Any, future: asyncio.Future[Any]) -> None:
        self.tier.discard(key, future)
