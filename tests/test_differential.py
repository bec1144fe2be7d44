"""The C extension against the Python it translates, in one process.

``loadercache._speedups`` replaces ``DataLoader.load``, ``_enqueue``,
``_new_future`` and ``_settle`` with C; ``loadercache.loader.PYTHON_METHODS``
keeps the Python definitions.  This state machine builds two loaders alike in
everything but those methods, one with the C ones and one with the Python
ones, drives both through the same random operations on one event loop (load,
load_many, clear, clear_all, prime, cancelling a future handed out, turns of
the loop and dispatches, batch functions that fail as a whole, return the
wrong number of values or a mapping that lacks keys, and every local cache
map), and after every step compares what a user can observe: each future's
state and outcome, the exception an operation raised, ``stats.as_dict()``,
the calls each batch function received, and what each cache map holds (its
``len`` and the state of the entry of every key).

Without the extension both loaders would run the same Python, so the test
skips (it fails instead under ``LOADERCACHE_REQUIRE_SPEEDUPS=1``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import loadercache
from loadercache import DataLoader
from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap
from loadercache.loader import PYTHON_METHODS

if not loadercache.SPEEDUPS:
    if os.environ.get("LOADERCACHE_REQUIRE_SPEEDUPS") == "1" and not os.environ.get(
        "LOADERCACHE_NO_EXTENSIONS"
    ):
        pytest.fail("the C extension is not built (LOADERCACHE_REQUIRE_SPEEDUPS=1)")
    pytest.skip("no C extension: both are the Python", allow_module_level=True)


class PythonMethodsLoader(DataLoader[Any, Any]):
    """A DataLoader whose per-load methods are the Python ones."""


for _name, _method in PYTHON_METHODS.items():
    setattr(PythonMethodsLoader, _name, _method)

MAPS: Dict[str, Callable[[], Any]] = {
    "dict": dict,
    "DictCacheMap": DictCacheMap,
    "LRUCacheMap": lambda: LRUCacheMap(maxsize=4),  # small: keys get evicted
    "TTLCacheMap": lambda: TTLCacheMap(maxsize=4, ttl=10, timer=lambda: 0.0),
}
KEYS = list(range(-2, 9))
# A few keys that misbehave: None and an unhashable list.
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from([None, [1]]))


def outcome(future: asyncio.Future[Any]) -> Tuple[Any, ...]:
    """What a user can see of a future, comparable across the two loaders."""
    if not future.done():
        return ("pending",)
    if future.cancelled():
        return ("cancelled",)
    error = future.exception()
    if error is not None:
        return ("error", type(error), str(error))
    return ("value", _comparable(future.result()))


def _comparable(value: Any) -> Any:
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, BaseException):
        return ("error", type(value), str(value))
    return value


def attempt(operation: Callable[[], Any]) -> Tuple[str, Any]:
    try:
        return "returned", operation()
    except Exception as error:
        return "raised", (type(error), str(error))


class Side:
    """One of the two loaders, with what its batch function received."""

    def __init__(
        self,
        cls: type,
        options: Dict[str, Any],
        mode: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.calls: List[List[Any]] = []
        self.scheduled: List[Callable[[], None]] = []
        # Batch functions wait here until the machine releases them, so that
        # loads, primes and cancels can come in while a batch runs.
        self.loop = loop
        self.gate: asyncio.Future[None] = loop.create_future()
        self.mode = mode
        self.cache_map = MAPS[options.pop("cache_map")]()
        self.loader = cls(
            self.batch_load,
            cache_map=self.cache_map,
            batch_schedule_fn=self.scheduled.append,
            **options,
        )

    async def batch_load(self, keys: List[Any]) -> Any:
        self.calls.append(list(keys))
        call = len(self.calls)
        await asyncio.shield(self.gate)
        if 5 in keys:
            raise ConnectionError("down", call)
        if self.mode == "short" and 4 in keys:
            return keys[:-1]
        if self.mode == "mapping":
            return {key: ("v", key, call) for key in keys if key % 3}
        return [ValueError(key, call) if key < 0 else ("v", key, call) for key in keys]

    def entries(self) -> Tuple[Any, ...]:
        cache_map = loadercache.loader.as_cache_map(self.cache_map)
        held = []
        for key in KEYS:
            found = cache_map.get(key)
            held.append(None if found is None else outcome(found))
        return (len(self.cache_map), tuple(held))


class DifferentialMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sides: List[Side] = []
        self.futures: List[Tuple[asyncio.Future[Any], ...]] = []

    def _in_loop(self, operation: Callable[[Side], Any]) -> List[Any]:
        async def both() -> List[Any]:
            return [attempt(lambda side=side: operation(side)) for side in self.sides]

        return self.loop.run_until_complete(both())

    @initialize(
        cache_map=st.sampled_from(sorted(MAPS)),
        mode=st.sampled_from(["values", "short", "mapping"]),
        max_batch_size=st.sampled_from([None, 1, 2, 3]),
        batch=st.booleans(),
        cache=st.sampled_from([True, True, True, False]),
        keyed=st.booleans(),
        cache_exceptions=st.sampled_from([True, False, "predicate"]),
    )
    def make_loaders(
        self,
        cache_map: str,
        mode: str,
        max_batch_size: Optional[int],
        batch: bool,
        cache: bool,
        keyed: bool,
        cache_exceptions: Any,
    ) -> None:
        for cls in (DataLoader, PythonMethodsLoader):
            options: Dict[str, Any] = {
                "cache_map": cache_map,
                "max_batch_size": max_batch_size,
                "batch": batch,
                "cache": cache,
                "cache_exceptions": (
                    (lambda error: isinstance(error.args[0], int) and error.args[0] % 2)
                    if cache_exceptions == "predicate"
                    else cache_exceptions
                ),
            }
            if keyed:
                # Several keys share a cache key; lists become hashable.
                options["cache_key_fn"] = lambda key: (
                    tuple(key) if isinstance(key, list) else key % 5
                )
            self.sides.append(Side(cls, options, mode, self.loop))

    def _hand_out(self, results: List[Tuple[str, Any]]) -> None:
        (c_kind, c_value), (py_kind, py_value) = results
        assert c_kind == py_kind, results
        if c_kind == "raised":
            assert c_value == py_value
        else:
            assert type(c_value) is type(py_value) or isinstance(
                c_value, asyncio.Future
            )
            self.futures.append((c_value, py_value))

    @rule(key=keys)
    def load(self, key: Any) -> None:
        self._hand_out(self._in_loop(lambda side: side.loader.load(key)))

    @rule(key=keys)
    def load_by_keyword(self, key: Any) -> None:
        self._hand_out(self._in_loop(lambda side: side.loader.load(key=key)))

    @rule(batch=st.lists(st.sampled_from(KEYS), max_size=5), errors=st.booleans())
    def load_many(self, batch: List[Any], errors: bool) -> None:
        self._hand_out(
            self._in_loop(
                lambda side: side.loader.load_many(batch, return_exceptions=errors)
            )
        )

    @rule(key=keys)
    def clear(self, key: Any) -> None:
        results = self._in_loop(lambda side: side.loader.clear(key) is side.loader)
        assert results[0] == results[1]

    @rule()
    def clear_all(self) -> None:
        results = self._in_loop(lambda side: side.loader.clear_all() is side.loader)
        assert results[0] == results[1]

    @rule(key=keys, fails=st.booleans(), force=st.booleans())
    def prime(self, key: Any, fails: bool, force: bool) -> None:
        value: Any = KeyError("primed", key) if fails else ("primed", key)
        results = self._in_loop(
            lambda side: side.loader.prime(key, value, force=force) is side.loader
        )
        assert results[0] == results[1]

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.futures:
            return
        pair = data.draw(st.sampled_from(self.futures))
        assert pair[0].cancel() == pair[1].cancel()

    @rule()
    def dispatch(self) -> None:
        c_side, py_side = self.sides
        assert len(c_side.scheduled) == len(py_side.scheduled)
        for c_dispatch, py_dispatch in zip(c_side.scheduled, py_side.scheduled):
            c_dispatch()
            py_dispatch()
        c_side.scheduled.clear()
        py_side.scheduled.clear()

    @rule()
    def release(self) -> None:
        for side in self.sides:
            side.gate.set_result(None)
            side.gate = self.loop.create_future()

    @rule(turns=st.integers(min_value=1, max_value=4))
    def turn(self, turns: int) -> None:
        for _ in range(turns):
            self.loop.run_until_complete(asyncio.sleep(0))

    @invariant()
    def alike(self) -> None:
        if not self.sides:
            return
        c_side, py_side = self.sides
        for c_future, py_future in self.futures:
            assert outcome(c_future) == outcome(py_future)
        assert c_side.loader.stats.as_dict() == py_side.loader.stats.as_dict()
        assert c_side.calls == py_side.calls
        assert c_side.entries() == py_side.entries()

    def teardown(self) -> None:
        try:
            for _ in range(5):
                if self.sides:
                    self.dispatch()
                    self.release()
                for _ in range(10):
                    self.loop.run_until_complete(asyncio.sleep(0))
            self.alike()
            for pair in self.futures:
                for future in pair:
                    if future.done() and not future.cancelled():
                        future.exception()  # retrieved: not reported at collection
            for side in self.sides:
                side.loader.clear_all()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(
                    asyncio.gather(*pending, return_exceptions=True)
                )
            self.loop.close()


DifferentialMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_c_and_python_methods_behave_alike = DifferentialMachine.TestCase
