"""The cache map a loader gets from a store: futures locally, values in Redis."""

from __future__ import annotations

import asyncio
import functools
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Hashable,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from loadercache.backends.redis._keys import (
    SHORT_INT_HIGH,
    SHORT_INT_LOW,
    check_namespace,
    short_repr,
)
from loadercache.backends.redis._near import NearGet
from loadercache.backends.redis._spread import SpreadTier
from loadercache.backends.redis._store import RedisStore, Tier
from loadercache.cache import CacheMap, as_cache_map, fill_slot
from loadercache.loader import _speedups

__all__ = ["RedisCacheMap"]

# Redis keys encoded by set() for the dispatch that will read them.
_MAX_ENCODED = 10_000

#: _short_set's common case as a C callable (None without the extension).
ShortSet: Any = None if _speedups is None else _speedups.ShortSet


class RedisCacheMap:
    """A cache map whose futures live locally and whose values live in Redis.

    Make one per loader, per request, from a shared :class:`RedisStore`:

    >>> users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    >>> # or: RedisCacheMap(store, "users", local=LRUCacheMap(maxsize=1000))

    The loader drives it: ``get``/``set``/``delete``/``clear`` (the
    :class:`~loadercache.CacheMap` protocol) keep the futures in ``local`` (a
    new dict by default, or any cache map or ``MutableMapping``), and
    ``get_many``/``set_many`` (the :class:`~loadercache.RemoteTier` protocol)
    read and write Redis once per batch.  ``namespace`` is required: it scopes
    every key and every clear (see :mod:`loadercache.backends.redis` on tenant
    scoping).  A cache key that cannot become a Redis key raises
    ``TypeError`` at ``load()`` (from :meth:`set`, before anything is stored
    or queued).
    """

    __slots__ = (
        "_encoded",
        "_hits",
        "_local",
        "_local_get",
        "_local_set",
        "_near",
        "_tier",
        "get",
        "set",
    )

    if TYPE_CHECKING:

        def get(self, key: Hashable) -> Optional[asyncio.Future[Any]]:
            """The local future of *key*, or None: the local tier's own ``get``."""

    def __init__(
        self,
        store: RedisStore,
        namespace: str,
        *,
        local: Union[CacheMap[Any, Any], MutableMapping[Any, Any], None] = None,
    ) -> None:
        if not isinstance(store, RedisStore):
            raise TypeError(
                f"RedisCacheMap needs a RedisStore, but got {short_repr(store)}; "
                "create one store per process and call store.cache_map(namespace)."
            )
        check_namespace(namespace)
        self._tier = store._tier(namespace)
        self._local: CacheMap[Any, Any] = as_cache_map(
            local if local is not None else {}
        )
        # The loader calls get for every load: it is the local tier's own
        # (with a near cache, one that looks there next).  A key that cannot
        # be stored is refused by set().
        self._local_get = self._local.get
        self._local_set: Callable[[Hashable, asyncio.Future[Any]], None] = (
            self._local.set
        )
        if store._near is not None:
            store._near.bind()  # on another event loop, its values go
            self._near = self._tier.near_view()
            self._hits = store._near_hits
            get: Callable[[Hashable], Optional[asyncio.Future[Any]]] = (
                self._near_get
                if NearGet is None
                else NearGet(self._local_get, self._local_set, self._near, self._hits)
            )
            fill_slot(RedisCacheMap, self, "get", get)
        else:
            fill_slot(RedisCacheMap, self, "get", self._local_get)
        self._encoded: Dict[Hashable, bytes] = {}
        # set: _short_set, whose common case (a load's pending future under a
        # str or short int key: only held locally) runs in C when built.  Of
        # the map's parts only, not of the map: no reference cycle.
        slow = functools.partial(_short_set, self._encoded, self._tier, self._local_set)
        fill_slot(
            RedisCacheMap,
            self,
            "set",
            slow if ShortSet is None else ShortSet(self._local_set, slow),
        )

    def __repr__(self) -> str:
        return (
            f"RedisCacheMap(namespace={self.namespace!r}, store={self.store!r}, "
            f"local={self._local!r})"
        )

    @property
    def namespace(self) -> str:
        """The namespace every key and clear of this map is scoped to.

        >>> store.cache_map("users").namespace
        'users'
        """
        return self._tier.name

    @property
    def store(self) -> RedisStore:
        """The store this map reads and writes through.

        >>> store.cache_map("users").store is store
        True
        """
        return self._tier.store

    # -- CacheMap --------------------------------------------------------

    if TYPE_CHECKING:

        def set(self, key: Hashable, value: asyncio.Future[Any]) -> None:
            """Hold *value* locally; a resolved future (a prime) is also
            written to Redis.

            Raises ``TypeError``, storing nothing, for a key that cannot
            become a Redis key: ``load()`` and ``prime()`` call ``set`` on
            every miss, so that is where an unstorable key is refused.

            >>> loader.prime(1, ada)  # calls cache_map.set(1, <resolved future>)
            """

    def delete(self, key: Hashable) -> None:
        """Forget *key* locally and delete it in Redis (in the background).

        >>> loader.clear(1)  # calls cache_map.delete(1)
        """
        self._local.delete(key)
        try:
            rkey = self._redis_key(key)
        except TypeError:
            return  # such a key cannot be in Redis
        self._tier.invalidate(rkey)

    def clear(self) -> None:
        """Forget every key locally and, for every process, in Redis (O(1)).

        >>> loader.clear_all()  # calls cache_map.clear()
        """
        self._local.clear()
        self._encoded.clear()
        self._tier.invalidate_all()

    # -- RemoteTier --------------------------------------------------------

    async def get_many(self, keys: Sequence[Hashable]) -> Sequence[Any]:
        """Read *keys* from Redis in one round trip: values, or MISS.

        When Redis fails, raises :class:`~loadercache.RemoteTierError` (the
        failure is logged once per outage by the store), and the loader loads
        every key from the batch function.  While the breaker is open every
        key is a MISS, with no round trip.

        >>> await cache_map.get_many([1, 2])
        [{'id': 1, 'name': 'Ada'}, MISS]
        """
        if not keys:
            return []
        return await self._tier.read(keys, self._encoded)

    async def set_many(self, items: Sequence[Tuple[Hashable, Any]]) -> None:
        """Write freshly loaded values to Redis with this turn's other writes.

        In the background unless the store has ``wait_for_writes=True``.
        Values that cannot be serialized are skipped; never raises.

        >>> await cache_map.set_many([(2, {'id': 2, 'name': 'Grace'})])
        """
        await self._tier.write(items, self._encoded)

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        """Forget the local future of a load that failed or was cancelled.

        Such a load never wrote anything to Redis; if its batch leased the
        key, the lease is released at once, so other processes waiting for it
        load it themselves.

        >>> cache_map.discard(1, failed_future)
        """
        if self._local_get(key) is future:
            self._local.delete(key)
        self._tier.forget(key, self._encoded)
        self._encoded.pop(key, None)

    # -- helpers -------------------------------------------------------------

    def _near_get(self, key: Hashable) -> Optional[asyncio.Future[Any]]:
        # The local future; else the near cache's, which this request then
        # keeps (whatever later happens to the near cache).  _speedups.NearGet
        # is this, line for line, in C.
        future = self._local_get(key)
        if future is None:
            future = self._near.get(key)
            if future is not None:
                self._local_set(key, future)
                self._hits.value += 1
        return future

    def _redis_key(self, key: Hashable) -> bytes:
        return _redis_key(self._encoded, self._tier, key)


def _short_set(
    encoded: Dict[Hashable, bytes],
    tier: Union[Tier, SpreadTier],
    local_set: Callable[[Hashable, asyncio.Future[Any]], None],
    key: Hashable,
    value: asyncio.Future[Any],
) -> None:
    """RedisCacheMap.set, of the map's parts (see its docs).

    ``_speedups.ShortSet(local_set, <this, bound>)`` is its common case in C:
    a str or short int key whose future is still pending is only held
    locally; everything else comes here.
    """
    # A key that is not a str or short int (whose Redis keys redis_keys
    # makes in one pass) is encoded now, so an unstorable key raises here,
    # and kept for the read of its batch.
    cls = type(key)
    short = cls is str or (cls is int and SHORT_INT_LOW < key < SHORT_INT_HIGH)  # type: ignore[operator]
    if not short and key not in encoded:
        rkey = tier.rkey(key)
        if len(encoded) >= _MAX_ENCODED:
            encoded.clear()
        encoded[key] = rkey
    local_set(key, value)
    if value.done() and not value.cancelled() and value.exception() is None:
        tier.prime(_redis_key(encoded, tier, key), value.result())


def _redis_key(
    encoded: Dict[Hashable, bytes], tier: Union[Tier, SpreadTier], key: Hashable
) -> bytes:
    rkey = encoded.pop(key, None)
    if rkey is None:
        rkey = tier.rkey(key)
    return rkey
