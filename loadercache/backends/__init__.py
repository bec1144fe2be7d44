"""Cache maps for :class:`loadercache.DataLoader`.

``DictCacheMap`` needs nothing; ``LRUCacheMap`` and ``TTLCacheMap`` need
``cachetools`` (``pip install 'loadercache[lru]'``); the Redis map lives in
:mod:`loadercache.backends.redis` and needs ``pip install 'loadercache[redis]'``.
"""

from __future__ import annotations

from typing import Any

from loadercache.backends.local import DictCacheMap

__all__ = ["DictCacheMap", "LRUCacheMap", "TTLCacheMap"]


def __getattr__(name: str) -> Any:
    # The cachetools-backed maps are imported on first use, so that
    # DictCacheMap works without the extra installed.
    if name in ("LRUCacheMap", "TTLCacheMap"):
        from loadercache.backends import lru

        return getattr(lru, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
