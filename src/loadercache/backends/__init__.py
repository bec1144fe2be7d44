"""Cache maps for :class:`loadercache.DataLoader`.

``DictCacheMap`` and ``TTLCacheMap`` need nothing; ``LRUCacheMap`` needs
``cachetools`` (``pip install 'loadercache[lru]'``); the Redis map lives in
:mod:`loadercache.backends.redis` and needs ``pip install 'loadercache[redis]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loadercache.backends.local import DictCacheMap, TTLCacheMap

if TYPE_CHECKING:
    from loadercache.backends.lru import LRUCacheMap

__all__ = ["DictCacheMap", "LRUCacheMap", "TTLCacheMap"]


def __getattr__(name: str) -> object:
    # The cachetools-backed map is imported on first use, so that the others
    # work without the extra installed; type checkers see the import above.
    if name == "LRUCacheMap":
        from loadercache.backends import lru

        return getattr(lru, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
