"""Fixtures shared by the test suite.

``cache_map_factory`` holds every backend to one contract: a behaviour test
that takes it runs once per entry of :data:`BACKENDS`.  To add a backend,
append an ``(id, factory)`` pair to that list; the factory takes no argument
and returns a fresh, empty cache map each time it is called.
"""

from __future__ import annotations

import gc
import logging
from typing import Any, AsyncIterator, Callable, Iterator, List, Tuple

import pytest

from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap

from .redis_servers import close_stores, fakeredis_cache_map, real_redis_cache_map

CacheMapFactory = Callable[[], Any]

#: The backends every general behaviour test runs against, as (id, factory).
BACKENDS: List[Tuple[str, CacheMapFactory]] = [
    ("dict", DictCacheMap),
    ("lru", lambda: LRUCacheMap(maxsize=10_000)),
    ("ttl", lambda: TTLCacheMap(maxsize=10_000, ttl=3600)),
    # Redis maps: over fakeredis, and over REDIS_URL (skipped if unreachable).
    ("redis-fake", fakeredis_cache_map),
    ("redis-real", real_redis_cache_map),
]


@pytest.fixture(params=[pytest.param(factory, id=name) for name, factory in BACKENDS])
async def cache_map_factory(
    request: pytest.FixtureRequest,
) -> AsyncIterator[CacheMapFactory]:
    """A callable returning a fresh cache map of one backend per call.

    Redis stores it made are closed (their writes flushed) after the test.
    """
    factory: CacheMapFactory = request.param
    try:
        yield factory
    finally:
        await close_stores()


class _AsyncioErrors(logging.Handler):
    """Collects what asyncio reports through its logger.

    'Future exception was never retrieved', 'Task exception was never
    retrieved' and 'Task was destroyed but it is pending!' are not warnings:
    asyncio logs them when the object is garbage collected, so
    ``filterwarnings = error`` alone would let them pass.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_asyncio_errors = _AsyncioErrors()
logging.getLogger("asyncio").addHandler(_asyncio_errors)


@pytest.fixture(autouse=True)
def no_asyncio_errors(no_asyncio_errors_at_exit: None) -> Iterator[None]:
    """Fail a test after which asyncio reports a lost exception or task."""
    earlier, _asyncio_errors.messages[:] = list(_asyncio_errors.messages), []
    assert not earlier, f"an earlier test left asyncio errors behind: {earlier}"
    yield
    gc.collect()
    found, _asyncio_errors.messages[:] = list(_asyncio_errors.messages), []
    assert not found, f"asyncio reported errors: {found}"


@pytest.fixture(autouse=True, scope="session")
def no_asyncio_errors_at_exit() -> Iterator[None]:
    """Freeze what collection imported; check what the last test leaves behind.

    gc.freeze() keeps every object that exists before the first test out of
    later collections, so the collection after each test is quick.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    gc.collect()
    assert not _asyncio_errors.messages, (
        f"asyncio reported errors: {_asyncio_errors.messages}"
    )
