"""loadercache: an asyncio DataLoader with pluggable, shareable caches.

>>> from loadercache import DataLoader
>>> users = DataLoader(fetch_users)
>>> user = await users.load(1)
"""

from loadercache._version import __version__
from loadercache.cache import (
    MISS,
    CacheMap,
    Leased,
    MutableMappingCacheMap,
    Refresh,
    RemoteTier,
    RemoteTierError,
    Stale,
    Takeover,
)
from loadercache.loader import SPEEDUPS, BatchLoadFn, DataLoader
from loadercache.registry import Loaders, current_loaders, loader_property, use_loaders
from loadercache.stats import LoaderStats

__all__ = [
    "MISS",
    "SPEEDUPS",
    "BatchLoadFn",
    "CacheMap",
    "DataLoader",
    "Leased",
    "LoaderStats",
    "Loaders",
    "MutableMappingCacheMap",
    "Refresh",
    "RemoteTier",
    "RemoteTierError",
    "Stale",
    "Takeover",
    "__version__",
    "current_loaders",
    "loader_property",
    "use_loaders",
]
