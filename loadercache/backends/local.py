"""The in-process cache map over a plain dict (no dependency)."""

from __future__ import annotations

from typing import Any

from loadercache.cache import MutableMappingCacheMap

__all__ = ["DictCacheMap"]


class DictCacheMap(MutableMappingCacheMap[Any, Any]):
    """An unbounded in-process cache map; what a loader uses by default.

    >>> loader = DataLoader(fetch_users, cache_map=DictCacheMap())
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__({})
