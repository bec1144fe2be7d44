"""Helpers the loader and backend tests share: a gated batch function, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List

Calls = List[List[Any]]


class Gate:
    """A batch function that records its calls, computes its values (each key
    is its own value by default), then waits to be let through."""

    def __init__(self, compute: Callable[[Any], Any] = lambda key: key) -> None:
        self.compute = compute
        self.calls: Calls = []
        self.running = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, keys: List[Any]) -> List[Any]:
        self.calls.append(list(keys))
        values = [self.compute(key) for key in keys]
        self.running.set()
        await self.open.wait()
        return values

    async def entered(self, times: int) -> None:
        """Wait until the batch function has been called *times* times."""
        while len(self.calls) < times:
            await asyncio.sleep(0)


async def within(awaitable: Any, timeout: float = 1.0) -> Any:
    """Await, failing instead of hanging if it never settles."""
    return await asyncio.wait_for(awaitable, timeout)
