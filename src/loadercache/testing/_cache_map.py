"""The contract of a cache map: what the loader relies on from get/set/delete/clear."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any, Awaitable, Callable, ClassVar, List, Sequence

from loadercache.cache import CacheMap
from loadercache.loader import DataLoader
from loadercache.testing._support import (
    BatchRecorder,
    _close,
    _expect,
    _expect_equal,
    _skip,
)

__all__ = ["CacheMapContract"]


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
