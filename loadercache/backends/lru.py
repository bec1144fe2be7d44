"""Bounded in-process cache maps over ``cachetools``: LRU and TTL."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Hashable
from typing import Any, Callable

try:
    import cachetools
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "LRUCacheMap and TTLCacheMap need cachetools; install it with: "
        "pip install 'loadercache[lru]'"
    ) from error

from loadercache.cache import MappingBackedCacheMap, MutableMappingCacheMap

__all__ = ["LRUCacheMap", "TTLCacheMap"]


def _check_maxsize(maxsize: object) -> None:
    if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
        raise TypeError(f"maxsize must be a positive int, but got {maxsize!r}.")


class LRUCacheMap(MutableMappingCacheMap[Hashable, Any]):
    """Keep at most *maxsize* keys, evicting the least recently used.

    An evicted key is loaded again by the next ``load``; a load in flight
    when its key is evicted still settles for every caller holding it.

    >>> loader = DataLoader(fetch_users, cache_map=LRUCacheMap(maxsize=10_000))
    """

    __slots__ = ()

    def __init__(self, maxsize: int) -> None:
        _check_maxsize(maxsize)
        super().__init__(cachetools.LRUCache(maxsize))


class TTLCacheMap(MappingBackedCacheMap[Hashable, Any]):
    """Keep at most *maxsize* keys, each for *ttl* seconds after it resolved.

    The time to live counts from when the value arrived, not from when the
    load was queued: a slow batch does not shorten it, and a key never expires
    while it is being loaded.  ``timer`` (default ``time.monotonic``) is the
    clock, so tests can move time without sleeping.

    >>> loader = DataLoader(fetch_rates, cache_map=TTLCacheMap(1024, ttl=30))
    """

    __slots__ = ("ttl",)

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_maxsize(maxsize)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            raise TypeError(f"ttl must be a positive number, but got {ttl!r}.")
        self.ttl = ttl
        super().__init__(cachetools.TLRUCache(maxsize, self._expiry, timer=timer))

    def _expiry(self, key: Hashable, future: asyncio.Future[Any], now: float) -> float:
        return now + self.ttl if future.done() else math.inf

    def set(self, key: Hashable, value: asyncio.Future[Any]) -> None:
        self.mapping[key] = value
        if not value.done():
            value.add_done_callback(lambda future: self._restart(key, future))

    def _restart(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        # Storing the entry again computes its expiry from now, when it resolved.
        if self.mapping.get(key) is future:
            self.mapping[key] = future
