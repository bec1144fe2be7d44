"""What the contract tests share: a recording batch function, checks, the loop."""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Hashable
from typing import Any, Dict, List, Optional

__all__ = ["BatchRecorder"]


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
