"""A remote tier of your own: a cache in an SQLite file, shared by processes.

    pip install 'loadercache[examples]'   # aiosqlite
    python examples/custom_backend.py

:class:`SQLiteCacheMap` is a complete cache map with a remote tier, written
against the two protocols in ``loadercache.cache`` and nothing else: futures
stay in a per-request dict (``get``/``set``/``delete``/``clear``), and
resolved values live in one SQLite table that every process opening the same
file shares (``get_many``/``set_many``/``discard``).  It passes
``loadercache.testing.RemoteTierContract``, which is how
``tests/test_examples_custom_backend.py`` tests it; ``docs/custom-backends.md``
walks through it.

What it shows, in the order the loader needs it:

* ``load()`` never awaits: ``set`` of a resolved future (a prime),
  ``delete`` and ``clear`` queue their SQL, and :class:`SQLiteStore` runs the
  queue in order in the background.  ``get_many`` first waits for what was
  queued before it, so ``clear(k)`` then ``load(k)`` never reads the old row.
* One ``SELECT`` per batch and one transaction per write-back.
* Keys are ``str``, ``int`` or tuples of them, stored as JSON; ``set``
  refuses any other key with a ``TypeError`` before storing anything.
  Values are JSON too (a tuple comes back as a list); a value JSON cannot
  hold is returned but not cached.
* A failing database is a cache that holds nothing: ``get_many`` and
  ``set_many`` raise (the loader counts it and asks the batch function), and
  a queued write that fails is logged and dropped, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import aiosqlite

from loadercache import MISS, DataLoader

logger = logging.getLogger("loadercache.examples.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS loadercache (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID
"""


def encode_key(key: Hashable) -> str:
    """The text a cache key is stored under; TypeError for a key it cannot hold.

    >>> encode_key(1), encode_key("1"), encode_key((1, "a"))
    ('1', '"1"', '[1, "a"]')
    """
    if not _storable(key):
        raise TypeError(
            f"SQLiteCacheMap stores str and int keys and tuples of them, but got "
            f"{key!r}; pass cache_key_fn= to map it to one."
        )
    return json.dumps(key)


def _storable(key: object) -> bool:
    if isinstance(key, tuple):
        return all(_storable(item) for item in key)
    # bool is an int, but True == 1 would not share 1's row.
    return type(key) in (str, int)


class SQLiteStore:
    """One per process: the connection, and the queue of writes not yet run.

    >>> store = SQLiteStore("/var/cache/app/loaders.db", ttl=600)
    >>> await store.open()
    >>> users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    >>> await store.aclose()
    """

    def __init__(self, path: str, *, ttl: float = 3600.0) -> None:
        self.path = path
        self.ttl = ttl
        self._db: Optional[aiosqlite.Connection] = None
        # The last queued operation; each one waits for the one before.
        self._last: Optional[asyncio.Task[None]] = None

    async def open(self) -> None:
        """Connect, and create the table if it is missing."""
        self._db = await aiosqlite.connect(self.path)
        # WAL lets other processes read while this one writes.
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(_SCHEMA)
        await self._db.commit()

    def cache_map(self, namespace: str) -> SQLiteCacheMap:
        """A new cache map of *namespace* for one loader (no I/O)."""
        return SQLiteCacheMap(self, namespace)

    async def flush(self) -> None:
        """Wait until every queued write has run (or failed)."""
        while self._last is not None and not self._last.done():
            await asyncio.shield(self._last)

    async def aclose(self) -> None:
        """Run the queued writes, then close the connection."""
        await self.flush()
        if self._db is not None:
            await self._db.close()

    # -- what the cache maps call ------------------------------------------

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("SQLiteStore.open() was not awaited")
        return self._db

    def queue(self, what: str, operation: Callable[[], Awaitable[None]]) -> None:
        """Run *operation* in the background, after everything queued before it."""
        previous = self._last

        async def run() -> None:
            if previous is not None:
                await previous
            try:
                await operation()
            except Exception as error:
                # A cache failure is not the caller's failure.
                logger.warning("SQLite cache %s failed: %s", what, error)

        self._last = asyncio.get_running_loop().create_task(run())

    async def queued(self) -> None:
        """Wait for what was queued so far (a read is ordered after it)."""
        if self._last is not None:
            await asyncio.shield(self._last)

    async def read(self, namespace: str, keys: List[str]) -> Dict[str, Any]:
        db = self._connection()
        marks = ", ".join("?" * len(keys))
        async with db.execute(
            f"SELECT key, value FROM loadercache WHERE namespace = ? "
            f"AND key IN ({marks}) AND expires > ?",
            [namespace, *keys, time.time()],
        ) as rows:
            return {key: json.loads(value) async for key, value in rows}

    async def write(self, namespace: str, items: List[Tuple[str, str]]) -> None:
        db = self._connection()
        expires = time.time() + self.ttl
        await db.executemany(
            "INSERT OR REPLACE INTO loadercache VALUES (?, ?, ?, ?)",
            [(namespace, key, value, expires) for key, value in items],
        )
        await db.commit()

    async def delete(self, namespace: str, key: Optional[str]) -> None:
        db = self._connection()
        if key is None:
            await db.execute("DELETE FROM loadercache WHERE namespace = ?", [namespace])
        else:
            await db.execute(
                "DELETE FROM loadercache WHERE namespace = ? AND key = ?",
                [namespace, key],
            )
        await db.commit()


class SQLiteCacheMap:
    """A cache map: futures in a dict of this request, values in SQLite.

    >>> loader = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    """

    def __init__(self, store: SQLiteStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self.local: Dict[Hashable, asyncio.Future[Any]] = {}

    # -- CacheMap: what load(), prime() and clear() call ------------------

    def get(self, key: Hashable) -> Optional[asyncio.Future[Any]]:
        """The future of *key* in this request, or None."""
        return self.local.get(key)

    def set(self, key: Hashable, value: asyncio.Future[Any]) -> None:
        """Hold *value*; a resolved one (a prime) is also written to SQLite."""
        encoded = encode_key(key)  # refuse before storing anything
        self.local[key] = value
        if value.done() and not value.cancelled() and value.exception() is None:
            self._queue_write([(encoded, value.result())])

    def delete(self, key: Hashable) -> None:
        """Forget *key* here and in SQLite."""
        self.local.pop(key, None)
        if _storable(key):
            encoded = encode_key(key)
            self.store.queue(
                "delete", lambda: self.store.delete(self.namespace, encoded)
            )

    def clear(self) -> None:
        """Forget every key of the namespace, here and for every process."""
        self.local.clear()
        self.store.queue("clear", lambda: self.store.delete(self.namespace, None))

    # -- RemoteTier: what a batch calls -------------------------------------

    async def get_many(self, keys: Sequence[Hashable]) -> Sequence[Any]:
        """One SELECT for the batch, after this process's queued writes."""
        await self.store.queued()
        encoded = [encode_key(key) for key in keys]
        found = await self.store.read(self.namespace, encoded)
        return [found.get(key, MISS) for key in encoded]

    async def set_many(self, items: Sequence[Tuple[Hashable, Any]]) -> None:
        """Queue the batch's fresh values; the loads settle without waiting."""
        self._queue_write([(encode_key(key), value) for key, value in items])

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        """Forget the local future of a failed or cancelled load (never in SQLite)."""
        if self.local.get(key) is future:
            del self.local[key]

    def _queue_write(self, items: List[Tuple[str, Any]]) -> None:
        rows = []
        for key, value in items:
            try:
                rows.append((key, json.dumps(value)))
            except (TypeError, ValueError):
                logger.info("not caching %s: JSON cannot hold %r", key, value)
        if rows:
            self.store.queue("write", lambda: self.store.write(self.namespace, rows))


async def demo(path: str) -> int:
    """Two 'processes' (two stores) over one file; return the database queries."""
    queries: List[List[int]] = []

    async def fetch_users(ids: List[int]) -> List[Dict[str, Any]]:
        queries.append(list(ids))
        return [{"id": i, "name": f"user {i}"} for i in ids]

    first, second = SQLiteStore(path), SQLiteStore(path)
    await first.open()
    await second.open()
    try:
        one = DataLoader(fetch_users, cache_map=first.cache_map("users"))
        await one.load_many([1, 2, 3])
        await first.flush()  # tests and shutdown; not per request
        two = DataLoader(fetch_users, cache_map=second.cache_map("users"))
        users = await two.load_many([1, 2, 3, 4])
        print(f"process 2 read {[user['name'] for user in users]}")
        print(f"queries: {queries} (process 2 asked the database for user 4 only)")
    finally:
        await first.aclose()
        await second.aclose()
    return len(queries)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(demo(str(Path(directory) / "cache.db")))
