"""Random sequences of load/load_many/clear/clear_all/prime/tick against a model.

The model is what the documentation promises: a key that is cached (loaded,
in flight or primed) is answered from the cache; a key that is not is queued
for the next batch; a tick dispatches the queue, split by ``max_batch_size``,
in load order.  After every tick the machine checks that the batch function
received exactly the queued keys (so no key was loaded twice while cached, and
none was dropped) and that every future returned so far holds the value or
the exception the model says.

Batches dispatch only on ``tick``: the loader is given a ``batch_schedule_fn``
that keeps the dispatch callbacks until the machine calls them.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from loadercache import DataLoader
from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap

BACKENDS: Dict[str, Callable[[], Any]] = {
    "dict": DictCacheMap,
    "lru": lambda: LRUCacheMap(maxsize=10_000),
    "ttl": lambda: TTLCacheMap(maxsize=10_000, ttl=3600),
}

# Negative keys make the batch function return an exception for that key.
keys = st.integers(min_value=-2, max_value=6)


class Slot:
    """One load the loader is expected to make, or one primed value."""

    def __init__(self, key: int, outcome: Any = None, known: bool = False) -> None:
        self.key = key
        self.outcome = outcome
        self.known = known

    @property
    def failed(self) -> bool:
        return isinstance(self.outcome, Exception)


def same_outcome(got: Any, slot: Slot) -> bool:
    assert slot.known, f"key {slot.key} was never loaded"
    if isinstance(slot.outcome, Exception):
        return (
            isinstance(got, Exception)
            and type(got) is type(slot.outcome)
            and got.args == slot.outcome.args
        )
    return bool(got == slot.outcome)


Outstanding = Tuple[asyncio.Future[Any], Union[Slot, List[Slot]]]


class LoaderMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.scheduled: List[Callable[[], None]] = []
        self.calls: List[List[int]] = []
        self.limit: Optional[int] = None
        self.cache_exceptions = True
        # The model: the cache, the loads queued for the next tick, and every
        # future handed out that has not been checked yet.
        self.cache: Dict[int, Slot] = {}
        self.queue: List[Slot] = []
        self.outstanding: List[Outstanding] = []
        self.primes = itertools.count()
        self.loader: DataLoader[int, Any]

    async def _batch_load(self, batch: List[int]) -> List[Any]:
        call = len(self.calls)
        self.calls.append(list(batch))
        return [self._value(key, call, i) for i, key in enumerate(batch)]

    @staticmethod
    def _value(key: int, call: int, position: int) -> Any:
        if key < 0:
            return ValueError(key, call, position)
        return (key, call, position)

    def _run(self, operation: Callable[[], Any]) -> Any:
        """Run a loader operation inside the machine's event loop."""

        async def call() -> Any:
            return operation()

        return self.loop.run_until_complete(call())

    def _model_load(self, key: int) -> Slot:
        slot = self.cache.get(key)
        if slot is None:
            slot = self.cache[key] = Slot(key)
            self.queue.append(slot)
        return slot

    @initialize(
        max_batch_size=st.sampled_from([None, 1, 2, 3]),
        cache_exceptions=st.booleans(),
        backend=st.sampled_from(sorted(BACKENDS)),
    )
    def make_loader(
        self, max_batch_size: Optional[int], cache_exceptions: bool, backend: str
    ) -> None:
        self.limit = max_batch_size
        self.cache_exceptions = cache_exceptions
        self.loader = DataLoader(
            self._batch_load,
            max_batch_size=max_batch_size,
            cache_exceptions=cache_exceptions,
            cache_map=BACKENDS[backend](),
            batch_schedule_fn=self.scheduled.append,
        )

    @rule(key=keys)
    def load(self, key: int) -> None:
        future = self._run(lambda: self.loader.load(key))
        self.outstanding.append((future, self._model_load(key)))

    @rule(batch=st.lists(keys, max_size=6))
    def load_many(self, batch: List[int]) -> None:
        future = self._run(lambda: self.loader.load_many(batch, return_exceptions=True))
        self.outstanding.append((future, [self._model_load(key) for key in batch]))

    @rule(key=keys)
    def clear(self, key: int) -> None:
        assert self._run(lambda: self.loader.clear(key)) is self.loader
        self.cache.pop(key, None)

    @rule()
    def clear_all(self) -> None:
        assert self._run(self.loader.clear_all) is self.loader
        self.cache.clear()

    @rule(key=keys, fails=st.booleans())
    def prime(self, key: int, fails: bool) -> None:
        n = next(self.primes)
        value: Any = KeyError("primed", n) if fails else ("primed", n)
        assert self._run(lambda: self.loader.prime(key, value)) is self.loader
        if key not in self.cache:
            self.cache[key] = Slot(key, value, known=True)

    @rule()
    def tick(self) -> None:
        limit = self.limit or len(self.queue) or 1
        expected = [
            self.queue[start : start + limit]
            for start in range(0, len(self.queue), limit)
        ]
        self.queue = []
        first_call = len(self.calls)
        assert len(self.scheduled) == len(expected)
        dispatches, self.scheduled[:] = list(self.scheduled), []
        for dispatch in dispatches:
            dispatch()
        futures = [future for future, _ in self.outstanding]
        if futures:
            self.loop.run_until_complete(asyncio.wait(futures, timeout=5))

        # The batch function received exactly the queued keys, in order.
        assert self.calls[first_call:] == [
            [slot.key for slot in batch] for batch in expected
        ]
        assert self.loader.stats.batches == len(self.calls)
        for call, batch in enumerate(expected, start=first_call):
            for position, slot in enumerate(batch):
                slot.outcome = self._value(slot.key, call, position)
                slot.known = True
                forgotten = slot.failed and not self.cache_exceptions
                if forgotten and self.cache.get(slot.key) is slot:
                    del self.cache[slot.key]

        for future, expectation in self.outstanding:
            assert future.done()
            error = future.exception()
            if isinstance(expectation, Slot):
                got = error if error is not None else future.result()
                assert same_outcome(got, expectation), (got, expectation.outcome)
            else:
                assert error is None
                results = future.result()
                assert len(results) == len(expectation)
                for got, slot in zip(results, expectation):
                    assert same_outcome(got, slot), (got, slot.outcome)
        self.outstanding = []

    def teardown(self) -> None:
        try:
            if hasattr(self, "loader"):
                self.tick()
        finally:
            self.loop.close()


LoaderMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
test_loader_against_the_model = LoaderMachine.TestCase
