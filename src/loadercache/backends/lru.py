"""The bounded in-process cache map over ``cachetools``: LRU."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

try:
    import cachetools
except ImportError as _missing:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "LRUCacheMap needs cachetools; install it with: pip install 'loadercache[lru]'"
    ) from _missing

from loadercache.backends.local import _check_maxsize
from loadercache.cache import MutableMappingCacheMap

__all__ = ["LRUCacheMap"]

KT = TypeVar("KT", bound=Hashable)
VT = TypeVar("VT")


class LRUCacheMap(MutableMappingCacheMap[KT, VT]):
    """Keep at most *maxsize* keys, evicting the least recently used.

    An evicted key is loaded again by the next ``load``; a load in flight
    when its key is evicted still settles for every caller holding it.

    >>> loader = DataLoader(fetch_users, cache_map=LRUCacheMap(maxsize=10_000))
    """

    __slots__ = ()

    def __init__(self, maxsize: int) -> None:
        _check_maxsize(maxsize)
        super().__init__(cachetools.LRUCache(maxsize))
