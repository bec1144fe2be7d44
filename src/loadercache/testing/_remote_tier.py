"""The contract of a remote tier: get_many, set_many, discard, and failures."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, List, Optional, Sequence, Tuple

from loadercache.cache import MISS, CacheMap, RemoteTier
from loadercache.testing._cache_map import CacheMapContract
from loadercache.testing._support import (
    BatchRecorder,
    _expect,
    _expect_equal,
    _skip,
)

__all__ = ["RemoteTierContract"]


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
