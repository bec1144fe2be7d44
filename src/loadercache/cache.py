"""The cache protocols the DataLoader depends on, and the MutableMapping adapter.

The loader memoises *futures*, not values: a key that is being loaded and a key
that has been loaded are both one future in the cache map, so a second
``load()`` of an in-flight key joins the first instead of loading it again.
:class:`CacheMap` is everything the loader asks of a cache: ``get``, ``set``,
``delete`` and ``clear``.  It is deliberately synchronous: ``load()`` runs once
per field of every GraphQL query and must not await anything.

A second, remote tier
---------------------
A cache shared between processes (Redis) cannot hold futures, and it cannot be
read from ``load()``: a synchronous ``get`` that returned an awaitable would
make every lookup look like a hit, and one network round trip per key is what
a DataLoader exists to avoid.  So a cache map may *also* implement
:class:`RemoteTier`, and the loader then talks to it at dispatch, once per
batch:

1. ``load()`` consults only the local map (``get``/``set``), as for any map.
2. When a batch dispatches, the loader calls ``await remote.get_many(keys)``
   with the cache keys of the batch (one round trip for the whole batch).  The
   answer is a sequence aligned with the keys, holding a value or
   :data:`MISS`.  Hits resolve their futures at once; only the misses reach the
   batch function.
3. After the batch function returns, and before the futures settle, the loader
   calls ``await remote.set_many(pairs)`` with the freshly loaded
   ``(cache_key, value)`` pairs.  Per-key exceptions are never passed.  Whether
   the write is awaited or scheduled in the background is the remote tier's
   choice: a tier that returns at once keeps the write off the caller's
   latency, one that awaits it makes the value visible to other processes
   before this request sees it.

4. A load that fails, is cancelled, or whose exception is not cached leaves
   the cache through ``discard(key, future)`` when its batch settles: the
   local entry goes (if it is still that future: a later load may have
   replaced a cancelled one), and the remote tier is not touched, since none
   of these was ever written there.

Instead of a value or :data:`MISS`, ``get_many`` may answer a key with
:class:`Leased` (another loader is loading it: wait for its value; the wait
may end in a :class:`Takeover`, which one waiting load claims and loads),
:class:`Stale` (load it, and serve this value if the load fails) or
:class:`Refresh` (serve this value, and reload it in the background).

``get_many`` and ``set_many`` of one batch run in the same task, in that
order, so a tier may pair them (the Redis map pairs a batch's write with the
generation its read saw).

A remote tier that raises, or answers with the wrong number of values, is
treated as a tier that holds nothing: the loader counts it in
``LoaderStats.remote_errors``, logs a warning and loads from the batch
function.  A tier that reports its own failures (once per outage, not once per
batch) raises :class:`RemoteTierError` instead, which the loader counts but
logs only at DEBUG.  A cache failure never becomes a user failure.
``prime``, ``clear`` and ``clear_all`` reach the remote tier through the
ordinary ``set``, ``delete`` and ``clear`` of the map (``set`` with a future
that is already resolved is a prime).  The core never imports a backend; it
only checks for these two methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, MutableMapping
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Generic,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    runtime_checkable,
)

__all__ = [
    "MISS",
    "CacheMap",
    "Leased",
    "MutableMappingCacheMap",
    "Refresh",
    "RemoteTier",
    "RemoteTierError",
    "Stale",
    "Takeover",
    "as_cache_map",
]

KT = TypeVar("KT", bound=Hashable)
VT = TypeVar("VT")
KT_contra = TypeVar("KT_contra", bound=Hashable, contravariant=True)
VT_contra = TypeVar("VT_contra", contravariant=True)


class _Miss:
    """The type of :data:`MISS`; there is exactly one instance."""

    __slots__ = ()
    _instance: Optional[_Miss] = None

    def __new__(cls) -> _Miss:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISS"

    def __reduce__(self) -> str:
        return "MISS"


MISS: Any = _Miss()
"""Returned in :meth:`RemoteTier.get_many` answers for a key the tier does not hold."""


class Leased:
    """A remote tier's answer for a key that another loader is loading now.

    Instead of a value or :data:`MISS`, :meth:`RemoteTier.get_many` may
    answer ``Leased(awaitable)``: the key is being loaded elsewhere (another
    process holds its lease), and *awaitable* completes with its value once
    that load is written back, or with :data:`MISS` if it never is (the other
    loader failed, or took too long): the loader then loads the key itself,
    in a batch of its own.  Waiting runs alongside the batch function's call
    for the batch's other keys.  Instead of MISS it may complete with a
    :class:`Takeover`, when many loads (of many loaders) wait for the key at
    once: one of them loads it, and the others wait for that load.  A tier
    that never answers ``Leased`` needs nothing of this.

    >>> async def value_later(): return {"id": 7}
    >>> Leased(value_later())
    Leased(...)
    """

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable: Awaitable[Any] = awaitable

    def __repr__(self) -> str:
        return "Leased(...)"


class Takeover:
    """What a :class:`Leased` wait may complete with: load it, one of you.

    The other loader failed or took too long, and every load that waited for
    the key gets this same object.  Each load still pending calls
    :meth:`claim`: the first gets True and loads the key in a batch of its
    own (as for :data:`MISS`), the others get False and wait for
    *awaitable*, which completes as a :class:`Leased` wait does: with that
    load's value, or with MISS or another Takeover if it fails.  A thousand
    waiting loads of a key then cost one read, one lease and one call of a
    batch function, not a thousand reads and leases.

    >>> takeover = Takeover(asyncio.get_running_loop().create_future())
    >>> takeover.claim(), takeover.claim()
    (True, False)
    """

    __slots__ = ("_claimed", "awaitable")

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable: Awaitable[Any] = awaitable
        self._claimed = False

    def claim(self) -> bool:
        """True for the first load to ask (it loads the key), then False."""
        claimed, self._claimed = self._claimed, True
        return not claimed

    def __repr__(self) -> str:
        return f"Takeover(claimed={self._claimed})"


class Stale:
    """A remote tier's answer for a key whose value is past its time.

    ``Stale(value)``: the loader loads the key as for a :data:`MISS`, and
    serves *value* instead if that load fails (the batch function raises, or
    returns an exception for the key): ``stale_if_error``.

    >>> Stale({"id": 7})
    Stale(...)
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value: Any = value

    def __repr__(self) -> str:
        return "Stale(...)"


class Refresh:
    """A remote tier's answer for a key whose value is about to go stale.

    ``Refresh(value, store)``: the load is settled with *value* at once, and
    the loader loads the key again in the background (the keys of one batch
    in one call of the batch function) and passes the fresh value to
    ``store(value)``; a key whose reload fails is not passed.  Refresh-ahead.

    >>> Refresh({"id": 7}, print)
    Refresh(...)
    """

    __slots__ = ("store", "value")

    def __init__(self, value: Any, store: Callable[[Any], None]) -> None:
        self.value: Any = value
        self.store: Callable[[Any], None] = store

    def __repr__(self) -> str:
        return "Refresh(...)"


class RemoteTierError(Exception):
    """A remote tier's read or write failed, and the tier has logged it already.

    Raised from :meth:`RemoteTier.get_many` or :meth:`RemoteTier.set_many`;
    the loader counts it and carries on from the batch function without
    logging it again.  Users never see it: ``load()`` does not raise it.

    >>> raise RemoteTierError("Redis unreachable") from ConnectionError()
    """


@runtime_checkable
class CacheMap(Protocol[KT_contra, VT]):
    """What a DataLoader needs of its cache: a map from cache key to future.

    Any object with these four methods works; a ``dict`` or any other
    ``MutableMapping`` (for instance a ``cachetools`` cache) is adapted by
    :func:`as_cache_map`.

    >>> from loadercache import DataLoader
    >>> from loadercache.backends import LRUCacheMap
    >>> loader = DataLoader(fetch_users, cache_map=LRUCacheMap(maxsize=10_000))
    """

    def get(self, key: KT_contra) -> Optional[asyncio.Future[VT]]:
        """Return the future stored for *key*, or ``None``."""
        ...

    def set(self, key: KT_contra, value: asyncio.Future[VT]) -> None:
        """Store *value* for *key* (a pending or a resolved future).

        A map that cannot hold *key* raises (a ``TypeError``), storing
        nothing: ``load()`` or ``prime()`` then raises it, and nothing is
        queued for the batch function.
        """
        ...

    def delete(self, key: KT_contra) -> None:
        """Forget *key*; a key that is absent is not an error."""
        ...

    def clear(self) -> None:
        """Forget every key."""
        ...


@runtime_checkable
class RemoteTier(Protocol[KT_contra, VT_contra]):
    """An optional second tier a cache map may implement (see the module docs).

    The loader calls ``get_many`` once per batch, before the batch function,
    and ``set_many`` once per batch, after it.
    """

    async def get_many(self, keys: Sequence[KT_contra]) -> Sequence[Any]:
        """Return one entry per key: the stored value, or :data:`MISS`."""
        ...

    async def set_many(self, items: Sequence[Tuple[KT_contra, VT_contra]]) -> None:
        """Store freshly loaded values (never exceptions)."""
        ...

    def discard(self, key: KT_contra, future: asyncio.Future[Any]) -> None:
        """Forget the local entry of *key* if it is *future*; not the remote one."""
        ...


class MutableMappingCacheMap(Generic[KT, VT]):
    """Adapt a ``MutableMapping`` (a dict, a cachetools cache) to :class:`CacheMap`.

    ``get`` and ``set`` are the mapping's own bound methods, so over a
    ``dict`` a ``load()`` costs one C call to look up and one to store.  A
    subclass may define either as a method of its own, which may call
    ``super()``'s.

    >>> cache_map = MutableMappingCacheMap({})
    >>> cache_map.get("a") is None
    True
    """

    mapping: MutableMapping[KT, asyncio.Future[VT]]
    """The mapping the futures are kept in.

    >>> MutableMappingCacheMap({}).mapping
    {}
    """

    if TYPE_CHECKING:
        # At run time get and set are slots holding the mapping's own bound
        # methods, filled in by __init__; to a type checker they are the
        # methods of the CacheMap protocol, with its parameter names (pyright
        # takes a name listed in __slots__ for an instance variable, and a
        # method reached through one for an unbound function).
        __slots__ = ("mapping",)

        def get(self, key: KT) -> Optional[asyncio.Future[VT]]:
            """Return the future stored for *key*, or ``None``."""

        def set(self, key: KT, value: asyncio.Future[VT]) -> None:
            """Store *value* for *key*."""

    else:
        __slots__ = ("get", "mapping", "set")

    def __init__(self, mapping: MutableMapping[KT, asyncio.Future[VT]]) -> None:
        self.mapping = mapping
        fill_slot(MutableMappingCacheMap, self, "get", mapping.get)
        fill_slot(MutableMappingCacheMap, self, "set", mapping.__setitem__)

    def delete(self, key: KT) -> None:
        """Forget *key*; a key that is absent is not an error."""
        self.mapping.pop(key, None)

    def clear(self) -> None:
        """Forget every key."""
        self.mapping.clear()

    def __len__(self) -> int:
        return len(self.mapping)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mapping!r})"


def fill_slot(owner: type, instance: object, name: str, value: object) -> None:
    """Store *value* in the slot *name* that *owner* declares, on *instance*.

    Through the slot's descriptor, not by assignment: a method of that name
    defined by a subclass of *owner* stays in force (assignment would shadow
    nothing, but reading the attribute would find the method), and that
    method's ``super().name`` reaches the slot.  This is how a cache map binds
    a C method such as ``dict.get`` as its own ``get``, costing ``load()`` no
    Python call, while staying open to subclassing.
    """
    owner.__dict__[name].__set__(instance, value)


_PROTOCOL_METHODS = ("get", "set", "delete", "clear")


def as_cache_map(
    cache_map: Union[CacheMap[Any, Any], MutableMapping[Any, Any]],
) -> CacheMap[Any, Any]:
    """Return *cache_map* if it is a :class:`CacheMap`, adapt a ``MutableMapping``.

    Raise ``TypeError`` for anything else, naming the methods it lacks.

    >>> as_cache_map({})
    MutableMappingCacheMap({})
    """
    if all(callable(getattr(cache_map, name, None)) for name in _PROTOCOL_METHODS):
        return cache_map  # type: ignore[return-value]
    if isinstance(cache_map, MutableMapping):
        return MutableMappingCacheMap(cache_map)
    missing = [
        name
        for name in _PROTOCOL_METHODS
        if not callable(getattr(cache_map, name, None))
    ]
    raise TypeError(
        f"cache_map must implement the CacheMap protocol (get, set, delete, "
        f"clear) or be a MutableMapping such as a dict, but "
        f"{type(cache_map).__name__} lacks {', '.join(missing)}."
    )
