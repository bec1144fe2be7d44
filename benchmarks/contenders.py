"""The loaders under comparison, each constructed the way its own docs say.

Every contender gets the same batch function (made by :func:`batch_fn`) and
is driven through the same two calls, ``load`` and ``load_many``.
``aiodataloader`` reads the event loop in its constructor, so every factory
here is called from inside a running loop, for every contender alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, List, Optional, Protocol

import aiodataloader
import strawberry.dataloader

import loadercache
from benchmarks.floor import FloorLoader

__all__ = [
    "AIODATALOADER",
    "FLOOR",
    "LOADERCACHE",
    "PEERS",
    "STRAWBERRY",
    "BatchCounter",
    "BatchFn",
    "Contender",
    "Loader",
    "batch_fn",
]

BatchFn = Callable[[List[Any]], Coroutine[Any, Any, List[Any]]]


class Loader(Protocol):
    """The two calls the scenarios make; every contender has both."""

    def load(self, key: Any) -> Awaitable[Any]: ...

    def load_many(self, keys: List[Any]) -> Awaitable[List[Any]]: ...


class BatchCounter:
    """Counts the calls made to one batch function and the keys they carried."""

    __slots__ = ("calls", "keys")

    def __init__(self) -> None:
        self.calls = 0
        self.keys = 0


def batch_fn(counter: BatchCounter) -> BatchFn:
    """The batch function every contender gets: each key is its own value.

    It never suspends, so what is timed is the loader, not a database; and it
    allocates no value objects, so scenario 7 measures the cache alone.
    """

    async def load_batch(keys: List[Any]) -> List[Any]:
        counter.calls += 1
        counter.keys += len(keys)
        return keys

    return load_batch


@dataclass(frozen=True)
class Contender:
    """A named way of building a loader from a batch function."""

    name: str
    make: Callable[[BatchFn, Optional[int]], Loader]

    @property
    def is_subject(self) -> bool:
        """Whether this is loadercache (the loader the ratios are about)."""
        return self.name.startswith("loadercache")


def _loadercache(fn: BatchFn, max_batch_size: Optional[int]) -> Loader:
    return loadercache.DataLoader(fn, max_batch_size=max_batch_size)


def _aiodataloader(fn: BatchFn, max_batch_size: Optional[int]) -> Loader:
    return aiodataloader.DataLoader(fn, max_batch_size=max_batch_size)


def _strawberry(fn: BatchFn, max_batch_size: Optional[int]) -> Loader:
    return strawberry.dataloader.DataLoader(load_fn=fn, max_batch_size=max_batch_size)


def _floor(fn: BatchFn, max_batch_size: Optional[int]) -> Loader:
    return FloorLoader(fn, max_batch_size=max_batch_size)


FLOOR = Contender("floor", _floor)
LOADERCACHE = Contender("loadercache", _loadercache)
AIODATALOADER = Contender("aiodataloader", _aiodataloader)
STRAWBERRY = Contender("strawberry", _strawberry)

#: The order every timed scenario runs its contenders in, round after round.
PEERS = (FLOOR, LOADERCACHE, AIODATALOADER, STRAWBERRY)
