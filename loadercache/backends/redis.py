"""A two-tier cache map: per-request futures in memory, resolved values in Redis.

Two tiers
---------
A :class:`RedisCacheMap` is what a :class:`~loadercache.DataLoader` memoises
its futures in.  The *local* tier is an ordinary cache map (a dict by default):
it holds the futures of one request, in flight or resolved, exactly as without
Redis, so a request keeps DataLoader's semantics and in-flight futures never
leave the process.  The *remote* tier is Redis, shared by every process of the
service: when a batch dispatches, the keys not held locally are read from
Redis in one round trip, the hits resolve at once, only the misses reach the
batch function, and the values it returns are written back in one pipelined
round trip, in the background by default (see :class:`RedisStore`).

One :class:`RedisStore` per process holds the client, the serializer, the
TTLs, the health state and the counters; a cache map per request is cheap to
make (no I/O, no connection)::

    store = RedisStore("redis://localhost:6379/0")           # at start-up
    users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    ...
    await store.aclose()                                      # at shutdown

Key scheme
----------
A cached value lives at ``<prefix>:<version>:{<namespace>}:<encoded key>``,
e.g. ``lc:1:{users}:i:42`` or ``lc:1:{tenant:7:users}:s:alice``.  Change
``version`` when the shape of the cached values changes: a deploy then stops
reading what older code wrote.  The namespace is in braces, which makes it the
Redis Cluster *hash tag*: every key of a namespace lives in one slot, so one
``MGET`` and one pipeline serve a whole batch on a cluster too (namespaces
spread over the cluster; a namespace does not).

The key encoding is injective and type-aware: ``1``, ``"1"``, ``b"1"``,
``(1,)`` and ``frozenset({1})`` are five different Redis keys (``s:`` for
str, ``i:`` for int, ``f:`` for a non-integral float, ``b:`` for bytes, ``u:``
for a UUID, ``t:`` and ``z:`` for tuples and frozensets, whose items are
length-prefixed).  Keys that are *equal in Python* share a Redis key:
``True``, ``1`` and ``1.0`` are one key, as they are one key of the local
dict, so the answer never depends on which tier gave it.  A cache key of any
other type (or an int of more digits than ``sys.get_int_max_str_digits()``)
fails at ``load()`` with a ``TypeError``; map it with ``cache_key_fn=``.

clear, prime and clear_all
--------------------------
``loader.clear(key)`` forgets the key locally and deletes it in Redis;
``loader.prime(key, value)`` writes the value through to Redis.  Both are sent
in the background, in the order they were made.  A read of the same namespace
by this process is ordered after the invalidations made before it: a pending
delete travels in the read's own round trip, ahead of the ``MGET``, so
``clear(k)`` followed by ``load(k)`` never sees the old value.  A key cleared
while its load is in flight is not written back when the load returns: the
value may predate the change the clear announces.  A prime is tagged with the
namespace's generation (below); in a namespace this process has not read yet,
it first reads the generation, so it costs two round trips instead of one.

``loader.clear_all()`` forgets the whole namespace **for every process** that
shares the Redis server, in one command and O(1) time, without ``KEYS`` or
``SCAN``: each namespace has a *generation*, a random token stored at
``<prefix>:<version>:{<namespace>}:gen``, every cached value carries the
generation it was loaded under, and a read fetches the current generation in
the same round trip as the values (``GET`` + ``MGET`` in one pipeline) and
treats values of any other generation as misses.  ``clear_all`` sets a new
token; the old values are overwritten by the next loads or expire with their
TTL.  A value loaded before a ``clear_all`` and written after it carries the
old generation and is never read.  The generation key expires at twice the
longest value TTL after the last write, so idle namespaces leave nothing
behind; if it is lost (evicted, a restart), every value of the namespace is a
miss until the next write makes a new one, never a stale hit.  A prime
racing a clear_all of another process may be lost (it becomes a miss): the
clear wins.

Tenant scoping
--------------
The namespace is required, and it is the only thing that separates the values
of different users of one Redis server.  Put in it everything that decides
what a value may contain: the kind of object and the tenant, and the
permission scope if values differ by it, e.g.
``store.cache_map(f"tenant:{tenant_id}:users")``.  Two namespaces never see
each other's values or clears.

When Redis misbehaves
---------------------
Redis is a cache, never a source of errors: a failed or slow round trip (each
is bounded by ``timeout``) counts as all misses and the batch function
answers; a failed write is dropped and counted; a failed delete or
``clear_all`` is kept and sent again ahead of the next round trip of its
namespace, so a value that should be gone is never served after Redis comes
back.  A value that cannot be decoded is a miss, is logged and is overwritten.
After ``breaker_threshold`` consecutive failures the store stops calling Redis
for ``breaker_cooldown`` seconds (every lookup is a miss, at no cost), then
lets one round trip through, and closes again when it succeeds.  A failure
episode is logged once through the ``loadercache`` logger, and its end once;
:attr:`RedisStore.stats` counts everything.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import random
import re
import reprlib
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Hashable, MutableMapping
from dataclasses import asdict, dataclass
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from loadercache.backends.serializers import MsgpackSerializer, Serializer
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "loadercache.backends.redis needs redis and msgpack; install them with: "
        "pip install 'loadercache[redis]'"
    ) from error

from loadercache.cache import MISS, CacheMap, RemoteTierError, as_cache_map
from loadercache.tracing import redis_span

__all__ = ["RedisCacheMap", "RedisStore", "StoreStats"]

logger = logging.getLogger("loadercache")

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80

RedisClient = Union["aioredis.Redis", "RedisCluster"]

# A generation token: 16 lowercase hex digits (64 random bits), stored in the
# namespace's generation key and in front of every value written under it.
_TOKEN_LEN = 16
_TOKEN = re.compile(rb"[0-9a-f]{16}")

# Deletes that could not be sent are kept; past this many in one namespace a
# new generation (one command) replaces them.
_MAX_PENDING_DELETES = 1000
# Encoded keys remembered between set() and the dispatch that reads them.
_MAX_ENCODED = 10_000
# An int key this short is written in decimal under any int_max_str_digits
# (at least 640 digits): set() need not encode it to know it can be stored.
_SHORT_INT_BITS = 2000
# Namespaces whose state (the known generation) outlives their cache maps.
_RECENT_NAMESPACES = 1024
# Event-loop turns a background write waits before it takes the pending
# operations; see _flusher.
_FLUSH_DELAY_TURNS = 3


def _new_token() -> bytes:
    return os.urandom(_TOKEN_LEN // 2).hex().encode("ascii")


class _Mark(enum.Enum):
    # The generation of a namespace as this process knows it is a token
    # (bytes), None (the server has none: nothing is cached) or UNKNOWN (not
    # read yet).  A pending prime is tagged CURRENT: with the generation
    # current when it is sent.
    UNKNOWN = "unknown"
    CURRENT = "current"


_Gen = Union[bytes, None, _Mark]


# -- key encoding ----------------------------------------------------------


def _digits(value: int) -> bytes:
    try:
        return b"%d" % value
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        raise _unencodable(
            value, "it is an int too large to write in decimal"
        ) from None


def _float(value: float, int_tag: bytes, float_tag: bytes, end: bytes) -> bytes:
    # 1.0 == 1 in Python, and so in the local dict: give them one Redis key.
    if value.is_integer():
        return int_tag + _digits(int(value)) + end
    return float_tag + float.__repr__(value).encode("ascii") + end


def _item(item: Any) -> bytes:
    # A prefix-free code for an item of a tuple or frozenset, so that the
    # concatenation of the items' codes decodes in exactly one way.
    if item is None:
        return b"n"
    if isinstance(item, str):
        data = str.encode(item, "utf-8", "surrogatepass")
        return b"s%d:%s" % (len(data), data)
    if isinstance(item, bytes):
        return b"b%d:%s" % (len(item), item)
    if isinstance(item, int):
        return b"i" + _digits(item) + b";"
    if isinstance(item, float):
        return _float(item, b"i", b"f", b";")
    if isinstance(item, tuple):
        return b"t%d:" % len(item) + b"".join(map(_item, item))
    if isinstance(item, frozenset):
        return b"z%d:" % len(item) + b"".join(sorted(map(_item, item)))
    if isinstance(item, uuid.UUID):
        return b"u" + item.hex.encode("ascii")
    raise _unencodable(item, f"it holds a {type(item).__name__}")


def _key_segment(key: Any) -> bytes:
    """The last segment of the Redis key of *key*; TypeError if there is none."""
    cls = type(key)
    if cls is str:
        return b"s:" + str.encode(key, "utf-8", "surrogatepass")
    if cls is int:
        return b"i:" + _digits(key)
    try:
        if isinstance(key, str):
            return b"s:" + str.encode(key, "utf-8", "surrogatepass")
        if isinstance(key, int):  # bool too: True == 1
            return b"i:" + _digits(key)
        if isinstance(key, bytes):
            return b"b:" + key
        if isinstance(key, float):
            return _float(key, b"i:", b"f:", b"")
        if isinstance(key, tuple):
            return b"t:" + b"".join(map(_item, key))
        if isinstance(key, frozenset):
            return b"z:" + b"".join(sorted(map(_item, key)))
        if isinstance(key, uuid.UUID):
            return b"u:" + key.hex.encode("ascii")
    except RecursionError:
        raise _unencodable(key, "it is nested too deeply") from None
    raise _unencodable(key, f"it is a {cls.__name__}")


def _key_repr(key: Any) -> str:
    try:
        return _short.repr(key)
    except ValueError:  # an int too long for repr() too, or something holding one
        if isinstance(key, int):
            return f"<int of {key.bit_length()} bits>"
        return f"<a {type(key).__name__}>"


def _unencodable(key: Any, why: str) -> TypeError:
    return TypeError(
        f"cache key {_key_repr(key)} cannot be stored in Redis: {why}. "
        "RedisCacheMap stores keys that are str, int, float, bool, bytes, "
        "uuid.UUID, or tuples and frozensets of those (None allowed inside); "
        "pass cache_key_fn= to map the key to one, e.g. "
        "cache_key_fn=lambda key: (key.tenant_id, key.id)."
    )


def _check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise TypeError(
            f"namespace must be a str such as 'users' or 'tenant:42:users', but "
            f"got {_short.repr(namespace)}."
        )
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(
            f"namespace must be a non-empty str without braces (it becomes the "
            f"Redis hash tag {{namespace}}), but got {namespace!r}."
        )
    return namespace


# -- stats and health ------------------------------------------------------


@dataclass
class StoreStats:
    """A snapshot of a :class:`RedisStore`'s counters, from :attr:`RedisStore.stats`.

    ``reads`` counts read round trips that succeeded and ``read_keys`` the keys
    looked up (``hits + misses == read_keys``; a key not read because Redis
    failed or the breaker was open is a miss).  ``writes`` counts write round
    trips that succeeded, ``written_keys`` the values they stored and
    ``deleted_keys`` the deletes sent.  ``errors`` counts failed round trips,
    ``skipped`` the round trips not attempted because the breaker was open,
    ``serialization_skips`` the values not cached because the serializer
    could not encode them, ``decode_errors`` the stored values that could not
    be decoded (read as misses).  ``breaker_state`` is ``"closed"`` (Redis in
    use), ``"open"`` (skipped) or ``"half-open"`` (one trial in flight);
    ``breaker_opens`` counts how often it opened.  Per-loader numbers (remote
    hits and misses of one request) are in :attr:`DataLoader.stats`.

    >>> store.stats.as_dict()  # doctest: +SKIP
    {'reads': 12, 'read_keys': 340, 'hits': 301, 'misses': 39, ...}
    """

    reads: int = 0
    read_keys: int = 0
    hits: int = 0
    misses: int = 0
    writes: int = 0
    written_keys: int = 0
    deleted_keys: int = 0
    errors: int = 0
    skipped: int = 0
    serialization_skips: int = 0
    decode_errors: int = 0
    breaker_state: str = "closed"
    breaker_opens: int = 0

    def as_dict(self) -> Dict[str, Any]:
        """The counters as a dict, ready for a log record or a metrics sink.

        >>> StoreStats(reads=1).as_dict()["reads"]
        1
        """
        return asdict(self)


class _Breaker:
    """Consecutive failures open it; after the cooldown one trial may pass."""

    __slots__ = (
        "cooldown",
        "failures",
        "name",
        "opened_at",
        "opens",
        "state",
        "threshold",
        "timer",
    )

    def __init__(
        self, name: str, threshold: int, cooldown: float, timer: Callable[[], float]
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.timer = timer
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.opens = 0

    def allow(self) -> bool:
        """May a round trip go to Redis now?  Every True must be followed by
        exactly one of succeeded(), failed() or abandoned()."""
        if self.state == "closed":
            return True
        if self.state == "open" and self.timer() - self.opened_at >= self.cooldown:
            self.state = "half-open"
            return True
        return False

    def succeeded(self) -> None:
        if self.failures:
            logger.warning(
                "%s: Redis answers again after %d failed round trips; caching resumes.",
                self.name,
                self.failures,
            )
        self.state = "closed"
        self.failures = 0

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            # The first failure of an episode is logged; the rest are counted.
            logger.warning(
                "%s: a Redis round trip failed (%s: %s); loads fall back to the "
                "batch function. After %d consecutive failures Redis is skipped "
                "for %gs at a time; further failures are logged at DEBUG until "
                "it answers again.",
                self.name,
                type(error).__name__,
                error,
                self.threshold,
                self.cooldown,
            )
        else:
            logger.debug(
                "%s: Redis round trip failed again (%s: %s)",
                self.name,
                type(error).__name__,
                error,
            )
        if self.state == "half-open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            self.state = "open"
            self.opened_at = self.timer()
            self.opens += 1

    def abandoned(self) -> None:
        # A trial cancelled before it finished proves nothing: let the next
        # caller try at once.
        if self.state == "half-open":
            self.state = "open"
            self.opened_at = self.timer() - self.cooldown


# -- per-namespace state -----------------------------------------------------

_PendingSet = Tuple[bytes, Optional[int], Union[bytes, _Mark, None]]


class _Reading:
    """What one batch read: the generation, and the keys it must write back."""

    __slots__ = ("cleared", "cleared_all", "gen", "keys")

    def __init__(self, gen: Optional[bytes], keys: Dict[Hashable, bytes]) -> None:
        self.gen = gen
        self.keys = keys
        self.cleared: Set[bytes] = set()
        self.cleared_all = False


class _Namespace:
    """What every cache map of one namespace in this process shares.

    The pending operations are per namespace, not per cache map, so that a
    clear made by one request is ordered before the reads of every request of
    this process that follow it.
    """

    __slots__ = (
        "__weakref__",
        "base",
        "created",
        "created_at_read",
        "flusher",
        "gen",
        "gen_key",
        "inv_lane",
        "lane",
        "name",
        "pending_dels",
        "pending_gen",
        "pending_sets",
        "readings",
        "reads_started",
    )

    def __init__(self, base: bytes, name: str) -> None:
        self.name = name
        self.base = base
        self.gen_key = base + b"gen"  # no key segment is "gen": theirs are "x:..."
        self.gen: _Gen = _Mark.UNKNOWN
        # The generation this process created (SET NX) when there was none,
        # and how many reads had started when it learned so: a read started
        # later that sees another generation (or none) proves it gone.
        self.created: Optional[bytes] = None
        self.created_at_read = 0
        self.reads_started = 0
        # Operations not sent yet: a new generation (clear_all), deletes, and
        # values to store.  A key is never both deleted and stored by one
        # round trip unless the delete came first: deletes are sent first.
        self.pending_gen: Optional[bytes] = None
        self.pending_dels: Dict[bytes, None] = {}
        self.pending_sets: Dict[bytes, _PendingSet] = {}
        # The reads in flight, by the task of their batch.
        self.readings: Dict[Optional[asyncio.Task[Any]], _Reading] = {}
        # Completion of the last round trip that carried any operation, and
        # of the last one that carried invalidations (see RedisStore._read).
        self.lane: Optional[asyncio.Future[None]] = None
        self.inv_lane: Optional[asyncio.Future[None]] = None
        self.flusher: Optional[asyncio.Task[None]] = None

    def has_pending(self) -> bool:
        return bool(self.pending_gen or self.pending_dels or self.pending_sets)

    def has_invalidations(self) -> bool:
        return bool(self.pending_gen or self.pending_dels)

    def invalidate(self, rkey: bytes) -> None:
        self.pending_sets.pop(rkey, None)
        self.pending_dels[rkey] = None
        for reading in self.readings.values():
            # A key cleared while its load is in flight is not written back:
            # the loaded value may predate the change that caused the clear.
            reading.cleared.add(rkey)
        if len(self.pending_dels) > _MAX_PENDING_DELETES:
            self.new_generation(keep_primes=True)

    def new_generation(self, *, keep_primes: bool = False) -> None:
        """Invalidate every value of the namespace (clear_all).

        Values loaded before are never written under the new generation.
        *keep_primes* is for a new generation standing in for pending
        deletes: primes made after those deletes must survive them (they are
        tagged with the generation current when they are sent).
        """
        token = _new_token()
        self.pending_gen = self.gen = token
        self.created = None
        self.pending_dels.clear()
        self.pending_sets = {
            rkey: entry
            for rkey, entry in self.pending_sets.items()
            if keep_primes and entry[2] is _Mark.CURRENT
        }
        for reading in self.readings.values():
            reading.cleared_all = True

    def take_invalidations(self) -> Tuple[Optional[bytes], List[bytes]]:
        gen, dels = self.pending_gen, list(self.pending_dels)
        self.pending_gen = None
        self.pending_dels = {}
        return gen, dels

    def restore(
        self,
        gen: Optional[bytes],
        dels: Sequence[bytes],
        sets: Dict[bytes, _PendingSet],
    ) -> None:
        """Keep the invalidations of a round trip that failed, to send them again.

        A prime that failed becomes a delete: it may stand for a clear().
        Fresh values that failed are dropped: Redis simply lacks them.
        """
        if gen is not None and self.pending_gen is None:
            self.pending_gen = gen
        elif gen is not None:
            return  # a newer clear_all supersedes all of these
        for rkey in dels:
            self.pending_dels[rkey] = None
        for rkey, entry in sets.items():
            if entry[2] is _Mark.CURRENT:
                self.pending_dels[rkey] = None
        if len(self.pending_dels) > _MAX_PENDING_DELETES:
            self.new_generation(keep_primes=True)


def _drop_reading(namespace: _Namespace, task: asyncio.Task[Any]) -> None:
    namespace.readings.pop(task, None)


# -- the store ----------------------------------------------------------------


class RedisStore:
    """The per-process side of the Redis cache: client, settings, health, stats.

    Create one per process (at start-up, e.g. in an ASGI lifespan) and make a
    :class:`RedisCacheMap` per request with :meth:`cache_map`:

    >>> store = RedisStore("redis://localhost:6379/0", ttl=600)
    >>> users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    >>> await store.aclose()  # at shutdown: sends pending writes, closes

    Arguments:

    * ``client_or_url``: a ``redis.asyncio.Redis`` or ``RedisCluster`` (created
      with ``decode_responses=False``; closing it stays your job), or a URL
      from which the store builds a client with ``socket_timeout`` (default
      0.1 s) and no retries, and closes it in :meth:`aclose`.
    * ``prefix`` (default ``"lc"``) and ``version`` (default ``"1"``): the
      first segments of every key; bump ``version`` when cached values change
      shape.
    * ``serializer``: an object with ``dumps``/``loads`` (default:
      :class:`~loadercache.backends.serializers.MsgpackSerializer`).
    * ``ttl`` (default 3600 s; ``None``: no expiry), ``negative_ttl``: the TTL
      of ``None`` values (default: ``ttl``; 0 caches ``None`` only locally),
      ``ttl_jitter`` (default 0): a fraction; each TTL is shortened by a
      random part of it (0.1: 90 % to 100 % of the TTL), so values written
      together do not expire together.
    * ``wait_for_writes`` (default False): True makes each batch wait for its
      write-back before its loads settle, so other processes can read the
      values once a load returns.  By default writes run in the background;
      :meth:`flush` awaits them.
    * ``timeout`` (default 0.25 s): the longest one round trip may take,
      whatever the client's own timeouts; ``None`` relies on the client.
    * ``breaker_threshold`` (default 5) consecutive failures open the breaker
      for ``breaker_cooldown`` seconds (default 10); ``timer`` (default
      ``time.monotonic``) is its clock.
    """

    def __init__(
        self,
        client_or_url: Union[str, RedisClient],
        *,
        prefix: str = "lc",
        version: str = "1",
        serializer: Optional[Serializer] = None,
        ttl: Optional[float] = 3600.0,
        negative_ttl: Optional[float] = None,
        ttl_jitter: float = 0.0,
        wait_for_writes: bool = False,
        socket_timeout: Optional[float] = None,
        timeout: Optional[float] = 0.25,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, text in (("prefix", prefix), ("version", version)):
            if not isinstance(text, str):
                raise TypeError(f"{name} must be a str, but got {text!r}.")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(
                f"prefix must be a non-empty str without braces, but got {prefix!r}."
            )
        if not version or any(char in version for char in ":{}"):
            raise ValueError(
                "version must be a non-empty str without ':' or braces, such as "
                f"'1' or '2024-05', but got {version!r}."
            )
        _check_seconds("ttl", ttl, allow_none=True)
        _check_seconds("negative_ttl", negative_ttl, allow_none=True, allow_zero=True)
        _check_seconds("timeout", timeout, allow_none=True)
        _check_seconds("breaker_cooldown", breaker_cooldown, allow_zero=True)
        if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)):
            raise TypeError(f"ttl_jitter must be a number, but got {ttl_jitter!r}.")
        if not 0 <= ttl_jitter < 1:
            raise ValueError(
                f"ttl_jitter must be a fraction from 0 to less than 1 (0.1 "
                f"shortens each TTL by up to 10 %), but got {ttl_jitter!r}."
            )
        if isinstance(breaker_threshold, bool) or not isinstance(
            breaker_threshold, int
        ):
            raise TypeError(
                f"breaker_threshold must be an int, but got {breaker_threshold!r}."
            )
        if breaker_threshold < 1:
            raise ValueError(
                f"breaker_threshold must be at least 1, but got {breaker_threshold!r}."
            )
        if serializer is None:
            serializer = MsgpackSerializer()
        elif not (
            callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))
        ):
            raise TypeError(
                "serializer must have dumps(value) -> bytes and loads(bytes) -> "
                f"value methods, but got {_short.repr(serializer)}."
            )

        self._owns_client = isinstance(client_or_url, str)
        if isinstance(client_or_url, str):
            if socket_timeout is None:
                socket_timeout = 0.1
            _check_seconds("socket_timeout", socket_timeout)
            self._client: RedisClient = aioredis.Redis.from_url(
                client_or_url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # A cache retries nothing: the batch function is the fallback.
                retry=Retry(NoBackoff(), 0),
            )
        elif callable(getattr(client_or_url, "pipeline", None)):
            if socket_timeout is not None:
                raise TypeError(
                    "socket_timeout applies only when RedisStore builds the client "
                    "from a URL; set socket_timeout on the client you pass instead."
                )
            get_encoder = getattr(client_or_url, "get_encoder", None)
            if get_encoder is not None and get_encoder().decode_responses:
                raise ValueError(
                    "RedisStore stores bytes, but the client was created with "
                    "decode_responses=True; pass a client created with "
                    "decode_responses=False (the default)."
                )
            self._client = client_or_url
        else:
            raise TypeError(
                "RedisStore needs a redis.asyncio.Redis or RedisCluster client, or "
                f"a redis:// URL, but got {_short.repr(client_or_url)}."
            )

        self.prefix = prefix
        self.version = version
        self.serializer: Serializer = serializer
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.ttl_jitter = float(ttl_jitter)
        self.wait_for_writes = wait_for_writes
        self.timeout = timeout
        longest = max(ttl or 0.0, negative_ttl or 0.0)
        self._gen_px: Optional[int] = None if ttl is None else int(2000 * longest)
        self._stats = StoreStats()
        self._breaker = _Breaker(repr(self), breaker_threshold, breaker_cooldown, timer)
        # Every namespace a live cache map uses, and the most recent ones
        # also after their maps are gone, so that the next request still knows
        # the generation (a prime then costs one round trip, not two).
        self._namespaces: weakref.WeakValueDictionary[str, _Namespace] = (
            weakref.WeakValueDictionary()
        )
        self._recent: OrderedDict[str, _Namespace] = OrderedDict()
        # Namespaces holding operations that could not be sent yet.
        self._dirty: Dict[str, _Namespace] = {}
        self._tasks: Set[asyncio.Task[None]] = set()
        self._warned_types: Set[type] = set()
        self._warned_decode: Set[str] = set()

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r} version={self.version!r}>"

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def client(self) -> RedisClient:
        """The ``redis.asyncio`` client the store talks through.

        >>> await store.client.ping()  # doctest: +SKIP
        True
        """
        return self._client

    @property
    def stats(self) -> StoreStats:
        """A snapshot of the store's counters (see :class:`StoreStats`).

        >>> store.stats.breaker_state
        'closed'
        """
        snapshot = StoreStats(**asdict(self._stats))
        snapshot.breaker_state = self._breaker.state
        snapshot.breaker_opens = self._breaker.opens
        return snapshot

    def cache_map(
        self,
        namespace: str,
        *,
        local: Union[CacheMap[Any, Any], MutableMapping[Any, Any], None] = None,
    ) -> RedisCacheMap:
        """A new cache map of *namespace* for one loader (no I/O; make one per request).

        >>> loader = DataLoader(fetch_users, cache_map=store.cache_map(
        ...     f"tenant:{tenant_id}:users", local=LRUCacheMap(maxsize=1000)))
        """
        return RedisCacheMap(self, namespace, local=local)

    def redis_key(self, namespace: str, key: Hashable) -> bytes:
        """The Redis key that holds *key* of *namespace* (for inspection and ops).

        >>> RedisStore("redis://localhost").redis_key("users", 42)
        b'lc:1:{users}:i:42'
        """
        return self._namespace(namespace).base + _key_segment(key)

    async def flush(self) -> None:
        """Wait until every pending write, delete and clear_all has been sent.

        Call it in tests, and at shutdown (:meth:`aclose` does).  Operations
        that fail are kept (deletes) or dropped (values) as usual; ``flush``
        never raises because Redis is down.

        >>> users.prime(1, ada)
        >>> await store.flush()  # now every process reads ada
        """
        loop = asyncio.get_running_loop()
        for namespace in [*self._namespaces.values(), *self._dirty.values()]:
            if namespace.has_pending():
                self._schedule_flush(namespace)
        while True:
            tasks = [task for task in self._tasks if task.get_loop() is loop]
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Flush pending writes, then close the client if the store created it.

        >>> await store.aclose()
        """
        await self.flush()
        if self._owns_client:
            await self._client.aclose()

    # -- what the cache maps call -----------------------------------------

    def _namespace(self, name: str) -> _Namespace:
        namespace = self._namespaces.get(name)
        if namespace is None:
            _check_namespace(name)
            base = f"{self.prefix}:{self.version}:{{{name}}}:".encode(
                "utf-8", "surrogatepass"
            )
            namespace = _Namespace(base, name)
            self._namespaces[name] = namespace
        recent = self._recent
        recent[name] = namespace
        recent.move_to_end(name)
        if len(recent) > _RECENT_NAMESPACES:
            recent.popitem(last=False)
        return namespace

    def _entry(self, value: Any) -> Optional[Tuple[bytes, Optional[int]]]:
        """The payload and expiry (ms) to store *value* with, or None to skip it."""
        ttl = self.ttl
        if value is None and self.negative_ttl is not None:
            ttl = self.negative_ttl
            if ttl == 0:
                return None
        try:
            payload = self.serializer.dumps(value)
        except Exception as error:
            self._stats.serialization_skips += 1
            value_type = getattr(error, "value_type", type(value))
            if value_type not in self._warned_types:
                self._warned_types.add(value_type)
                logger.warning(
                    "%r: a value of type %s is returned but not cached in "
                    "Redis: %s (logged once per type)",
                    self,
                    getattr(value_type, "__qualname__", value_type),
                    error,
                )
            return None
        if ttl is None:
            return payload, None
        if self.ttl_jitter:
            ttl *= 1.0 - self.ttl_jitter * random.random()
        return payload, max(1, int(ttl * 1000))

    def _prime(self, namespace: _Namespace, rkey: bytes, value: Any) -> None:
        entry = self._entry(value)
        if entry is None:
            return
        namespace.pending_sets[rkey] = (entry[0], entry[1], _Mark.CURRENT)
        self._schedule_flush(namespace)

    def _invalidate(self, namespace: _Namespace, rkey: bytes) -> None:
        namespace.invalidate(rkey)
        self._schedule_flush(namespace)

    def _clear_all(self, namespace: _Namespace) -> None:
        namespace.new_generation()
        self._schedule_flush(namespace)

    async def _get_many(
        self,
        namespace: _Namespace,
        cache_keys: Sequence[Hashable],
        rkeys: List[bytes],
    ) -> List[Any]:
        stats = self._stats
        count = len(rkeys)
        stats.read_keys += count
        if not self._breaker.allow():
            stats.skipped += 1
            stats.misses += count
            return [MISS] * count
        try:
            gen, raws = await self._read(namespace, rkeys)
        except Exception as error:
            # Logged once per outage by the breaker; the loader counts it.
            self._failed(error)
            stats.misses += count
            raise RemoteTierError(f"Redis read failed: {error!r}") from error
        except BaseException:
            self._breaker.abandoned()
            raise
        self._breaker.succeeded()
        stats.reads += 1
        if gen is not None and not isinstance(gen, bytes):
            gen = None
        if not namespace.has_invalidations():
            # Unless this process cleared it meanwhile, this is the
            # namespace's generation: primes are tagged with it.
            namespace.gen = gen
        if not isinstance(raws, list) or len(raws) != count:
            stats.errors += 1
            stats.misses += count
            logger.warning(
                "%r: Redis answered %s values for %d keys; treating them all "
                "as misses.",
                self,
                len(raws) if isinstance(raws, list) else type(raws).__name__,
                count,
            )
            raise RemoteTierError("Redis answered the wrong number of values")

        values: List[Any] = []
        missed: Dict[Hashable, bytes] = {}
        loads = self.serializer.loads
        # A token is exactly _TOKEN_LEN bytes: startswith(token) is then the
        # comparison _decode makes, without slicing the token off first.
        token = gen if gen is not None and len(gen) == _TOKEN_LEN else None
        for cache_key, rkey, raw in zip(cache_keys, rkeys, raws):
            if raw is None:
                value = MISS
            elif token is not None and raw.startswith(token):
                try:
                    value = loads(raw[_TOKEN_LEN:])
                except Exception:
                    # Decode again to count, log and answer MISS.
                    value = self._decode(namespace, gen, rkey, raw)
            else:
                value = self._decode(namespace, gen, rkey, raw)
            if value is MISS:
                missed[cache_key] = rkey
            values.append(value)
        stats.hits += count - len(missed)
        stats.misses += len(missed)
        if missed:
            # Remember the generation these keys were read under: their values
            # are written back tagged with it (see set_many).
            task = asyncio.current_task()
            namespace.readings[task] = _Reading(gen, missed)
            if task is not None:
                task.add_done_callback(functools.partial(_drop_reading, namespace))
        return values

    async def _read(self, namespace: _Namespace, rkeys: List[bytes]) -> Tuple[Any, Any]:
        """One round trip: pending invalidations, then GET generation + MGET."""
        loop = asyncio.get_running_loop()
        # Invalidations already sent must land before this read.  A read that
        # carries invalidations of its own must also follow writes already in
        # flight: a prime sent before a clear() must not land after its delete.
        while True:
            if namespace.has_invalidations():
                barrier = namespace.lane
            else:
                barrier = namespace.inv_lane
            if barrier is None or barrier.done() or barrier.get_loop() is not loop:
                break
            await asyncio.shield(barrier)
        gen_token, dels = namespace.take_invalidations()
        namespace.reads_started += 1
        started = namespace.reads_started
        lane: Optional[asyncio.Future[None]] = None
        if gen_token is not None or dels:
            lane = namespace.lane = namespace.inv_lane = loop.create_future()
        try:
            pipe = self._client.pipeline(transaction=False)
            if gen_token is not None:
                pipe.set(namespace.gen_key, gen_token, px=self._gen_px)
            if dels:
                pipe.delete(*dels)
            pipe.get(namespace.gen_key)
            # Not pipe.mget: redis-py's cluster pipeline refuses that method
            # because MGET may span slots; these keys share the namespace's.
            pipe.execute_command("MGET", *rkeys)
            try:
                with redis_span("get_many", len(rkeys)):
                    results = await self._execute(pipe)
            except BaseException:
                namespace.restore(gen_token, dels, {})
                self._dirty[namespace.name] = namespace
                raise
        finally:
            if lane is not None and not lane.done():
                lane.set_result(None)
        self._stats.deleted_keys += len(dels)
        gen = results[-2]
        if (
            namespace.created is not None
            and started > namespace.created_at_read
            and gen != namespace.created
        ):
            namespace.created = None
        return gen, results[-1]

    def _decode(
        self, namespace: _Namespace, gen: Optional[bytes], rkey: bytes, raw: Any
    ) -> Any:
        if gen is not None and raw[:_TOKEN_LEN] == gen:
            try:
                return self.serializer.loads(raw[_TOKEN_LEN:])
            except Exception as error:
                reason: Any = error
        elif _TOKEN.fullmatch(raw[:_TOKEN_LEN]) or gen is None:
            return MISS  # written under another generation: cleared
        else:
            reason = "it does not start with a generation token"
        self._stats.decode_errors += 1
        log = logger.debug
        if (
            namespace.name not in self._warned_decode
            and len(self._warned_decode) < 1000
        ):
            self._warned_decode.add(namespace.name)
            log = logger.warning
        log(
            "%r: cannot decode the value at %r (%s); loading it anew and "
            "overwriting it. Further decode errors in this namespace are "
            "logged at DEBUG.",
            self,
            rkey,
            reason,
        )
        return MISS

    async def _set_many(
        self,
        namespace: _Namespace,
        encoded: Dict[Hashable, bytes],
        items: Sequence[Tuple[Hashable, Any]],
    ) -> None:
        reading = namespace.readings.pop(asyncio.current_task(), None)
        if reading is None or reading.cleared_all:
            # Nothing was read (Redis failed or was skipped), or the namespace
            # was cleared since: these values may predate the clear.
            return
        pending = namespace.pending_sets
        queued = False
        for cache_key, value in items:
            rkey = reading.keys.get(cache_key)
            if rkey is None:
                rkey = encoded.pop(cache_key, None) or namespace.base + _key_segment(
                    cache_key
                )
            if rkey in reading.cleared:
                continue
            entry = self._entry(value)
            if entry is not None:
                pending[rkey] = (entry[0], entry[1], reading.gen)
                queued = True
        if not queued:
            return
        flusher = self._schedule_flush(namespace)
        if self.wait_for_writes and flusher is not None:
            await asyncio.shield(flusher)

    # -- sending -------------------------------------------------------------

    def _schedule_flush(self, namespace: _Namespace) -> Optional[asyncio.Task[None]]:
        flusher = namespace.flusher
        if flusher is not None and not flusher.done():
            return flusher
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No event loop (a clear() at import time): the next read of this
            # namespace, or flush(), sends it.
            self._dirty[namespace.name] = namespace
            return None
        flusher = namespace.flusher = loop.create_task(self._flusher(namespace))
        self._tasks.add(flusher)
        flusher.add_done_callback(self._tasks.discard)
        return flusher

    async def _flusher(self, namespace: _Namespace) -> None:
        # Give the batches dispatched in this tick the chance to carry the
        # invalidations in their reads (one round trip instead of two), and
        # let the write-backs of neighbouring batches share a round trip.
        # Correctness does not depend on it: reads wait for sent invalidations.
        for _ in range(_FLUSH_DELAY_TURNS):
            await asyncio.sleep(0)
        while namespace.has_pending():
            if not await self._send(namespace):
                self._dirty[namespace.name] = namespace
                return
        self._dirty.pop(namespace.name, None)

    async def _send(self, namespace: _Namespace) -> bool:
        """One write round trip with everything pending; False if it failed."""
        loop = asyncio.get_running_loop()
        barrier = namespace.lane
        while barrier is not None and not barrier.done():
            if barrier.get_loop() is not loop:
                break
            await asyncio.shield(barrier)
            barrier = namespace.lane
        gen_token, dels = namespace.take_invalidations()
        sets, namespace.pending_sets = namespace.pending_sets, {}
        if gen_token is None and not dels and not sets:
            return True
        if not self._breaker.allow():
            self._stats.skipped += 1
            namespace.restore(gen_token, dels, sets)
            return False
        lane = namespace.lane = loop.create_future()
        if gen_token is not None or dels:
            namespace.inv_lane = lane
        try:
            try:
                with redis_span("set_many", len(sets) + len(dels)):
                    results, created, created_at = await self._write(
                        namespace, gen_token, dels, sets
                    )
            except Exception as error:
                self._failed(error)
                namespace.restore(gen_token, dels, sets)
                return False
            except BaseException:
                self._breaker.abandoned()
                namespace.restore(gen_token, dels, sets)
                raise
        finally:
            if not lane.done():
                lane.set_result(None)
        self._breaker.succeeded()
        stats = self._stats
        stats.writes += 1
        stats.written_keys += len(sets)
        stats.deleted_keys += len(dels)
        if created is not None:
            if results[created_at]:
                namespace.created = created
                namespace.created_at_read = namespace.reads_started
                if not isinstance(namespace.gen, bytes):
                    namespace.gen = created
            elif namespace.gen == created:
                namespace.gen = _Mark.UNKNOWN
        return True

    async def _write(
        self,
        namespace: _Namespace,
        gen_token: Optional[bytes],
        dels: List[bytes],
        sets: Dict[bytes, _PendingSet],
    ) -> Tuple[List[Any], Optional[bytes], int]:
        current: _Gen = gen_token if gen_token is not None else namespace.gen
        if current is _Mark.UNKNOWN and any(
            entry[2] is _Mark.CURRENT for entry in sets.values()
        ):
            # A prime in a namespace this process has not read yet: learn its
            # generation first (one extra round trip, once per namespace).
            pipe = self._client.pipeline(transaction=False)
            pipe.get(namespace.gen_key)
            (current,) = await self._execute(pipe)
            if current is not None and not isinstance(current, bytes):
                current = None
            if namespace.gen is _Mark.UNKNOWN:
                namespace.gen = current
        gen_px = self._gen_px
        pipe = self._client.pipeline(transaction=False)
        if gen_token is not None:
            pipe.set(namespace.gen_key, gen_token, px=gen_px)
        if dels:
            pipe.delete(*dels)
        created: Optional[bytes] = None
        created_at = -1
        for rkey, (payload, px, tag) in sets.items():
            if tag is _Mark.CURRENT:
                tag = current if isinstance(current, bytes) else None
            if tag is None and namespace.created is not None:
                # Read when the namespace had no generation, and this process
                # has created one since: no clear_all came in between (it would
                # have made the creation fail), so the values belong to it.  If
                # it is gone by now, they are misses: never a stale hit.
                tag = namespace.created
            if tag is None or isinstance(tag, _Mark):
                # The namespace had no generation when read: make one, unless
                # another process did meanwhile (then these values are misses
                # to it, and are simply loaded again).
                if created is None:
                    created = _new_token()
                    created_at = len(pipe)
                    pipe.set(namespace.gen_key, created, nx=True, px=gen_px)
                tag = created
            pipe.set(rkey, tag + payload, px=px)
        if sets and gen_px is not None:
            # The generation outlives every value written under it, and an
            # idle namespace leaves nothing behind.
            pipe.pexpire(namespace.gen_key, gen_px)
        return await self._execute(pipe), created, created_at

    async def _execute(self, pipe: Any) -> List[Any]:
        if self.timeout is None:
            results: List[Any] = await pipe.execute()
        else:
            results = await asyncio.wait_for(pipe.execute(), self.timeout)
        return results

    def _failed(self, error: BaseException) -> None:
        self._stats.errors += 1
        self._breaker.failed(error)


def _check_seconds(
    name: str, value: object, *, allow_none: bool = False, allow_zero: bool = False
) -> None:
    if value is None and allow_none:
        return
    expected = "a non-negative number" if allow_zero else "a positive number"
    if allow_none:
        expected += " or None"
    message = f"{name} must be {expected} of seconds, but got {value!r}."
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(message)
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ValueError(message)


# -- the cache map -------------------------------------------------------------


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
    every key and every clear (see the module docs on tenant scoping).  A
    cache key that cannot become a Redis key raises ``TypeError`` at
    ``load()`` (from :meth:`set`, before anything is stored or queued).
    """

    __slots__ = (
        "_encoded",
        "_local",
        "_local_set",
        "_namespace",
        "_store",
        "get",
    )

    get: Callable[[Hashable], Optional[asyncio.Future[Any]]]
    """The local future of a key, or None: the local tier's own ``get``.

    Bound at construction rather than wrapped, since ``load()`` calls it for
    every key: a key that cannot be stored is refused by :meth:`set`.

    >>> cache_map.get(1) is None
    True
    """

    def __init__(
        self,
        store: RedisStore,
        namespace: str,
        *,
        local: Union[CacheMap[Any, Any], MutableMapping[Any, Any], None] = None,
    ) -> None:
        if not isinstance(store, RedisStore):
            raise TypeError(
                f"RedisCacheMap needs a RedisStore, but got {_short.repr(store)}; "
                "create one store per process and call store.cache_map(namespace)."
            )
        _check_namespace(namespace)
        self._store = store
        self._namespace = store._namespace(namespace)
        self._local: CacheMap[Any, Any] = as_cache_map(
            local if local is not None else {}
        )
        # Bound once: the loader calls get and set per load.
        # Through the slot's descriptor, not by assignment: a get a subclass
        # defines stays in force, and its super().get() reaches this one.
        _GET_SLOT.__set__(self, self._local.get)
        self._local_set = self._local.set
        # Redis keys encoded by set() for the dispatch that will read them.
        self._encoded: Dict[Hashable, bytes] = {}

    def __repr__(self) -> str:
        return (
            f"RedisCacheMap(namespace={self._namespace.name!r}, "
            f"store={self._store!r}, local={self._local!r})"
        )

    @property
    def namespace(self) -> str:
        """The namespace every key and clear of this map is scoped to.

        >>> store.cache_map("users").namespace
        'users'
        """
        return self._namespace.name

    @property
    def store(self) -> RedisStore:
        """The store this map reads and writes through.

        >>> store.cache_map("users").store is store
        True
        """
        return self._store

    # -- CacheMap --------------------------------------------------------

    def set(self, key: Hashable, value: asyncio.Future[Any]) -> None:
        """Hold *value* locally; a resolved future (a prime) is also written to Redis.

        Raises ``TypeError``, storing nothing, for a key that cannot become a
        Redis key: ``load()`` and ``prime()`` call ``set`` on every miss, so
        that is where an unstorable key is refused.

        >>> loader.prime(1, ada)  # calls cache_map.set(1, <resolved future>)
        """
        # str and short int keys can always be stored: get_many encodes them,
        # a batch at a time.  Anything else is encoded now, so an unstorable
        # key raises here, and kept for get_many.
        if not (
            type(key) is str
            or (type(key) is int and key.bit_length() <= _SHORT_INT_BITS)
        ):
            encoded = self._encoded
            if key not in encoded:
                rkey = self._namespace.base + _key_segment(key)
                if len(encoded) >= _MAX_ENCODED:
                    encoded.clear()
                encoded[key] = rkey
        self._local_set(key, value)
        if value.done() and not value.cancelled() and value.exception() is None:
            self._store._prime(self._namespace, self._redis_key(key), value.result())

    def delete(self, key: Hashable) -> None:
        """Forget *key* locally and delete it in Redis (in the background).

        >>> loader.clear(1)  # calls cache_map.delete(1)
        """
        self._local.delete(key)
        try:
            rkey = self._redis_key(key)
        except TypeError:
            return  # such a key cannot be in Redis
        self._store._invalidate(self._namespace, rkey)

    def clear(self) -> None:
        """Forget every key locally and, for every process, in Redis (O(1)).

        >>> loader.clear_all()  # calls cache_map.clear()
        """
        self._local.clear()
        self._encoded.clear()
        self._store._clear_all(self._namespace)

    # -- RemoteTier --------------------------------------------------------

    async def get_many(self, keys: Sequence[Hashable]) -> Sequence[Any]:
        """Read *keys* from Redis in one round trip: values, or MISS.

        When Redis fails, raises :class:`~loadercache.RemoteTierError` (the
        failure is logged once per outage, here), and the loader loads every
        key from the batch function.  While the breaker is open every key is a
        MISS, with no round trip.

        >>> await cache_map.get_many([1, 2])
        [{'id': 1, 'name': 'Ada'}, MISS]
        """
        if not keys:
            return []
        pop: Callable[[Hashable, None], Optional[bytes]] = self._encoded.pop
        base = self._namespace.base
        # The encodings of _key_segment for str and int, inlined.
        int_key = base + b"i:%d"
        str_key = base + b"s:"
        rkeys: List[bytes] = []
        for key in keys:
            if type(key) is int:
                rkey = pop(key, None) or int_key % key
            elif type(key) is str:
                rkey = str_key + str.encode(key, "utf-8", "surrogatepass")
            else:
                rkey = pop(key, None) or base + _key_segment(key)
            rkeys.append(rkey)
        return await self._store._get_many(self._namespace, keys, rkeys)

    def discard(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        """Forget the local future of a load that failed or was cancelled.

        Redis is not touched: such a load never wrote anything there.

        >>> cache_map.discard(1, failed_future)
        """
        if self.get(key) is future:
            self._local.delete(key)
        self._encoded.pop(key, None)

    async def set_many(self, items: Sequence[Tuple[Hashable, Any]]) -> None:
        """Write freshly loaded values to Redis in one pipelined round trip.

        In the background unless the store has ``wait_for_writes=True``.
        Values that cannot be serialized are skipped; never raises.

        >>> await cache_map.set_many([(2, {'id': 2, 'name': 'Grace'})])
        """
        await self._store._set_many(self._namespace, self._encoded, items)

    # -- helpers -------------------------------------------------------------

    def _redis_key(self, key: Hashable) -> bytes:
        rkey = self._encoded.pop(key, None)
        if rkey is None:
            rkey = self._namespace.base + _key_segment(key)
        return rkey


_GET_SLOT = RedisCacheMap.__dict__["get"]
