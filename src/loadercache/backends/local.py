"""The in-process cache maps that need no dependency: dict and TTL."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Callable, Dict, Generic, Optional, TypeVar

from loadercache._valid import count, seconds
from loadercache.cache import MutableMappingCacheMap

__all__ = ["DictCacheMap", "TTLCacheMap"]

KT = TypeVar("KT", bound=Hashable)
VT = TypeVar("VT")


class DictCacheMap(MutableMappingCacheMap[KT, VT]):
    """An unbounded in-process cache map; what a loader uses by default.

    >>> loader = DataLoader(fetch_users, cache_map=DictCacheMap())

    Its key and value types are the loader's: a type checker infers them from
    the batch function, as for every cache map here.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__({})


def _check_maxsize(maxsize: object) -> None:
    count("maxsize", maxsize)


class TTLCacheMap(Generic[KT, VT]):
    """Keep at most *maxsize* keys, each for *ttl* seconds after it resolved.

    The time to live counts from when the value arrived, not from when the
    load was queued: a slow batch does not shorten it, and a key never expires
    while it is being loaded.  Beyond *maxsize* keys the least recently used
    goes first.  ``timer`` (default ``time.monotonic``) is the clock, so tests
    can move time without sleeping.

    >>> loader = DataLoader(fetch_rates, cache_map=TTLCacheMap(1024, ttl=30))
    """

    # Not over cachetools' TTLCache: its clock starts at insertion (the queued
    # load), and restarting it on resolution meant a second insert per key.
    # An OrderedDict keeps the LRU order in C; a deadline is stamped once, when
    # the future resolves.
    __slots__ = ("_deadlines", "_futures", "_timer", "maxsize", "ttl")

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_maxsize(maxsize)
        seconds("ttl", ttl)
        self.maxsize: int = maxsize
        self.ttl: float = ttl
        self._timer = timer
        self._futures: OrderedDict[KT, asyncio.Future[VT]] = OrderedDict()
        self._deadlines: Dict[KT, float] = {}

    def get(self, key: KT) -> Optional[asyncio.Future[VT]]:
        """Return the future stored for *key*, or ``None`` once it has expired."""
        future = self._futures.get(key)
        if future is None:
            return None
        deadline = self._deadlines.get(key)
        if deadline is not None and self._timer() >= deadline:
            self.delete(key)
            return None
        self._futures.move_to_end(key)
        return future

    def set(self, key: KT, value: asyncio.Future[VT]) -> None:
        """Store *value* for *key*; its TTL starts when it resolves."""
        futures = self._futures
        futures[key] = value
        futures.move_to_end(key)
        if value.done():
            self._deadlines[key] = self._timer() + self.ttl
        else:
            self._deadlines.pop(key, None)
            value.add_done_callback(functools.partial(self._resolved, key))
        if len(futures) > self.maxsize:
            oldest, _ = futures.popitem(last=False)
            self._deadlines.pop(oldest, None)

    def _resolved(self, key: KT, future: asyncio.Future[VT]) -> None:
        # Only if the key still holds this future: it may have been cleared,
        # evicted or replaced while it loaded.
        if self._futures.get(key) is future:
            self._deadlines[key] = self._timer() + self.ttl

    def delete(self, key: KT) -> None:
        """Forget *key*; a key that is absent is not an error."""
        self._futures.pop(key, None)
        self._deadlines.pop(key, None)

    def clear(self) -> None:
        """Forget every key."""
        self._futures.clear()
        self._deadlines.clear()

    def __len__(self) -> int:
        return len(self._futures)

    def __repr__(self) -> str:
        return f"TTLCacheMap(maxsize={self.maxsize}, ttl={self.ttl})"
