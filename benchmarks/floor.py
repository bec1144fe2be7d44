"""The floor: the least work an asyncio batching loader can do.

One future per load, one ``call_soon`` callback per batch, one task per batch
to await the batch function, and a plain dict for the cache.  It checks
nothing (no ``None`` key, no hashability message, no second event loop, no
cancellation handling, no result validation), so no real loader should beat
it; the suite reports every loader's throughput as a fraction of this one's.

>>> loader = FloorLoader(batch_fn)  # inside a running event loop
>>> value = await loader.load(1)
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence

__all__ = ["FloorLoader"]

BatchFn = Callable[[List[Any]], Awaitable[Sequence[Any]]]


class FloorLoader:
    """A batching, caching loader with nothing but the essentials."""

    __slots__ = ("_cache", "_fn", "_futures", "_keys", "_limit", "_loop")

    def __init__(self, batch_fn: BatchFn, max_batch_size: Optional[int] = None) -> None:
        self._fn = batch_fn
        self._limit = max_batch_size
        self._loop = asyncio.get_running_loop()
        self._cache: Dict[Any, asyncio.Future[Any]] = {}
        self._keys: Optional[List[Any]] = None
        self._futures: List[asyncio.Future[Any]] = []

    def load(self, key: Any) -> asyncio.Future[Any]:
        future = self._cache.get(key)
        if future is not None:
            return future
        future = self._cache[key] = self._loop.create_future()
        keys = self._keys
        if keys is None or (self._limit is not None and len(keys) >= self._limit):
            keys = self._keys = []
            futures = self._futures = []
            self._loop.call_soon(self._dispatch, keys, futures)
        else:
            futures = self._futures
        keys.append(key)
        futures.append(future)
        return future

    def load_many(self, keys: Iterable[Any]) -> asyncio.Future[List[Any]]:
        return asyncio.gather(*[self.load(key) for key in keys])

    def _dispatch(self, keys: List[Any], futures: List[asyncio.Future[Any]]) -> None:
        if self._keys is keys:
            self._keys = None
        self._loop.create_task(self._run(keys, futures))

    async def _run(self, keys: List[Any], futures: List[asyncio.Future[Any]]) -> None:
        values = await self._fn(keys)
        for future, value in zip(futures, values):
            future.set_result(value)
