"""The per-process side of the Redis cache: :class:`RedisStore`.

One store per process holds the connection (a
:class:`~loadercache.backends.redis._link.Link`, or a redis-py client behind a
:class:`~loadercache.backends.redis._client_link.ClientLink`), the
serializer and its envelope, the TTLs, the health of the server and the
counters, and the state of every namespace in use.  Cache maps reach it
through a :class:`Tier`, the store's view of one namespace: ``read`` and
``write`` for a batch, ``prime``, ``invalidate`` and ``invalidate_all`` for
the loader's ``prime``, ``clear`` and ``clear_all``.

Reads are one ``MGET`` per batch (the namespace's generation key first, then
the batch's keys), sent by the batch's own task.  Writes are collected from
every namespace and sent in one round trip per event-loop turn, from a
callback: the fresh values of the batches that loaded them, and the
operations (deletes, primes, new generations) Redis has not confirmed yet.
A failed read is a batch of misses; a failed write drops its fresh values
(Redis simply lacks them) and keeps its operations, which are sent again by
themselves when Redis answers (see :mod:`loadercache.backends.redis._namespace`
for why a read never waits for them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import asdict
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Hashable,
    List,
    MutableMapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from loadercache import _valid
from loadercache.backends.redis._client_link import ClientLink
from loadercache.backends.redis._cluster import ClusterLink, Node
from loadercache.backends.redis._envelope import (
    Envelope,
    LeaseMark,
    Mismatch,
    Opened,
    new_token,
    timing,
)
from loadercache.backends.redis._health import Health, RateLimitedLog
from loadercache.backends.redis._keys import (
    check_namespace,
    check_prefix,
    check_version,
    namespace_base,
    redis_key,
    redis_keys,
    short_repr,
    store_prefix,
)
from loadercache.backends.redis._leases import LeaseFailure, LeaseRefused, Leases
from loadercache.backends.redis._link import (
    Address,
    Command,
    Link,
    RoundTripError,
    Unusable,
    parse_url,
)
from loadercache.backends.redis._namespace import (
    DELETE,
    UNKNOWN,
    Namespace,
    Operation,
    Reading,
)
from loadercache.backends.redis._near import HitCounter, NearCache
from loadercache.backends.redis._resp import TOO_LARGE, Push, ReplyError
from loadercache.backends.redis._scripts import (
    ACQUIRE,
    FENCED_SET,
    RELEASE,
    RENEW,
    is_noscript,
)
from loadercache.backends.redis._spread import Spread, SpreadTier
from loadercache.backends.redis._stats import StoreStats
from loadercache.backends.serializers import MsgpackSerializer, Serializer
from loadercache.cache import MISS, CacheMap, Leased, Refresh, RemoteTierError, Stale
from loadercache.tracing import start_redis_span

if TYPE_CHECKING:
    from loadercache.backends.redis._cache_map import RedisCacheMap

__all__ = ["RedisStore", "Tier"]

logger: logging.Logger = logging.getLogger("loadercache")

# Namespaces whose state (the known generation) outlives their cache maps.
_RECENT_NAMESPACES = 1024
# Serializer failures are warned about once per type, for this many types.
_WARNED_TYPES = 1000
# A write round trip that failed is tried again after at least this long
# (longer while a breaker is open: until its trial).
_RETRY_DELAY = 0.1
# Unconfirmed operations across all namespaces before the largest
# namespace's deletes are replaced by a new generation.
_MAX_PENDING = 10_000

# Hash tags a namespace is spread over on a cluster by default: each of 3 to
# 5 masters serves 3 or more of them (see _keys.bucket_tag), and a batch of
# a thousand keys costs 16 MGETs of about 60 keys.
_CLUSTER_BUCKETS = 16
_MAX_BUCKETS = 1024


def _serializer(value: object) -> Serializer:
    if value is None:
        return MsgpackSerializer()
    if callable(getattr(value, "dumps", None)) and callable(
        getattr(value, "loads", None)
    ):
        return value  # type: ignore[return-value]
    raise TypeError(
        "serializer must have dumps(value) -> bytes and loads(bytes) -> value "
        f"methods, but got {short_repr(value)}."
    )


def _secret(value: object) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise TypeError(f"secret must be bytes or a str, but got {short_repr(value)}.")
    if len(value) < 16:
        raise ValueError(
            f"secret must be at least 16 bytes (a random one: os.urandom(32)), but "
            f"it has {len(value)}."
        )
    return value


class RedisStore:
    """The per-process side of the Redis cache: connection, settings, health, stats.

    Create one per process (at start-up, e.g. in an ASGI lifespan) and make a
    cache map per loader, per request, with :meth:`cache_map`:

    >>> store = RedisStore("redis://localhost:6379/0", ttl=600)
    >>> users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    >>> await store.aclose()  # at shutdown: sends pending writes, closes

    Arguments:

    * ``client_or_url``: a ``redis://``, ``rediss://`` (TLS) or ``unix://``
      URL, to which the store opens one connection of its own (no redis-py
      needed); or a ``redis.asyncio.Redis`` or ``RedisCluster`` client
      (redis-py 8.1 or newer, ``decode_responses=False``; closing it stays
      your job), whose connections it borrows one pipeline at a time.
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
    * ``timeout`` (default 0.25 s): how long Redis may send nothing before a
      round trip fails (time the event loop spends elsewhere does not count);
      ``connect_timeout`` (default: ``timeout``) bounds opening a connection.
      ``None`` waits forever.
    * ``breaker_threshold`` (default 5) consecutive failures open a breaker
      (one for reads, one for writes) for ``breaker_cooldown`` seconds
      (default 10); ``timer`` (default ``time.monotonic``) is its clock.
    * ``max_value_bytes`` (default 1 MiB; ``None``: no limit): larger values
      are neither written nor read.
    * ``secret``: bytes (16 or more); every value is then signed (HMAC), and
      a value without a valid signature (written by anyone who lacks the
      secret) is a miss.
    * ``leases`` (default True; needs a URL, not a client): a key missed by
      several processes at once is loaded by one of them, whose lease it
      holds for ``lease_ttl`` seconds (default 2, renewed while the load
      runs); the others wait for its value (woken by the server) up to
      ``lease_wait`` seconds (default 10), then load it themselves.  A value
      written back only lands if the key still holds the lease (a
      ``clear`` in between wins).
    * ``stale_if_error`` (default None: off): seconds a value stays in Redis
      past its TTL; a load of such a value is tried again, and if the batch
      function fails, the stale value is served instead of the error.
    * ``refresh_ahead`` (default False): a value near the end of its TTL is
      loaded again in the background by one process, which is served the
      current value meanwhile (the nearer the end and the slower the load,
      the likelier a read triggers it), so hot keys never expire under load.
    * ``near_cache`` (default None: off; needs a URL, not a client): up to
      this many recently read values of every namespace are kept in process
      memory and served to every request of the process without a round
      trip; Redis tells the store (client tracking, in broadcast mode on the
      store's keys) when any client changes one, and it goes at once.  While
      the store's connection is down or its pings go unanswered, the near
      cache is empty and bypassed.  ``near_ttl`` (default 60 s; at most
      ``ttl``) bounds how long a value stays regardless; ``near_ping``
      (default 1 s) is how often an idle connection is checked.  Values are
      shared by the requests, not copied: treat them as read-only.
    * ``cluster`` (default False; needs a URL, not a client): the URL is one
      node of a Redis Cluster or Valkey cluster; the store reads the slot map
      from it and keeps one connection per node.  Each namespace is then
      spread over ``buckets`` hash tags (default 16 on a cluster, 1 else), so
      its keys and its load spread over every node; a batch costs one round
      trip per node, all at once, and a node that fails costs only its keys
      (each node has its own breakers).  A near cache tracks every node.
    * ``ssl``: an ``ssl.SSLContext`` for a ``rediss://`` URL (default: the
      system's trusted certificates); ``client_name`` (default
      ``"loadercache"``): the name the connection gives itself
      (``CLIENT LIST``).
    """

    def __init__(
        self,
        client_or_url: Union[str, Any],
        *,
        prefix: str = "lc",
        version: str = "1",
        serializer: Optional[Serializer] = None,
        ttl: Optional[float] = 3600.0,
        negative_ttl: Optional[float] = None,
        ttl_jitter: float = 0.0,
        wait_for_writes: bool = False,
        timeout: Optional[float] = 0.25,
        connect_timeout: Optional[float] = None,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
        max_value_bytes: Optional[int] = 1 << 20,
        secret: Union[bytes, str, None] = None,
        leases: bool = True,
        lease_ttl: float = 2.0,
        lease_wait: float = 10.0,
        stale_if_error: Optional[float] = None,
        refresh_ahead: bool = False,
        near_cache: Optional[int] = None,
        near_ttl: float = 60.0,
        near_ping: float = 1.0,
        cluster: bool = False,
        buckets: Optional[int] = None,
        ssl: Any = None,
        client_name: Optional[str] = "loadercache",
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix: str = check_prefix(prefix)
        self.version: str = check_version(version)
        self.cluster: bool = bool(cluster)
        if self.cluster and not isinstance(client_or_url, str):
            raise TypeError(
                "RedisStore(cluster=True) needs the redis:// URL of a node (the "
                "store connects to every node itself); a RedisCluster client is "
                "passed without cluster=True."
            )
        #: Hash tags each namespace is spread over (see _keys).
        self.buckets: int = _valid.count("buckets", buckets, least=1, none=True) or (
            _CLUSTER_BUCKETS if self.cluster else 1
        )
        if self.buckets > _MAX_BUCKETS:
            raise ValueError(
                f"buckets must be at most {_MAX_BUCKETS}, but got {buckets!r}."
            )
        self.serializer: Serializer = _serializer(serializer)
        self.ttl: Optional[float] = _valid.seconds("ttl", ttl, none=True)
        self.negative_ttl: Optional[float] = _valid.seconds(
            "negative_ttl", negative_ttl, none=True, zero=True
        )
        self.ttl_jitter: float = _valid.fraction("ttl_jitter", ttl_jitter)
        self.stale_if_error: Optional[float] = _valid.seconds(
            "stale_if_error", stale_if_error, none=True, zero=True
        )
        self.refresh_ahead: bool = bool(refresh_ahead)
        # Values say when they go stale (and how long they took to load).
        self._timed_values = self.ttl is not None and (
            self.stale_if_error is not None or self.refresh_ahead
        )
        # How long a value outlives its time in Redis, to be served stale.
        self._grace_ms = int(1000 * (self.stale_if_error or 0.0))
        self.wait_for_writes: bool = bool(wait_for_writes)
        self.timeout: Optional[float] = _valid.seconds("timeout", timeout, none=True)
        connect_timeout = _valid.seconds("connect_timeout", connect_timeout, none=True)
        self.max_value_bytes: Optional[int] = _valid.count(
            "max_value_bytes", max_value_bytes, least=64, none=True
        )
        threshold = _valid.count("breaker_threshold", breaker_threshold, least=1)
        cooldown = _valid.seconds("breaker_cooldown", breaker_cooldown, zero=True)
        self._envelope = Envelope(
            self.serializer, secret=_secret(secret), max_bytes=self.max_value_bytes
        )
        lease_ttl = _valid.seconds("lease_ttl", lease_ttl) or 2.0
        lease_wait = _valid.seconds("lease_wait", lease_wait, zero=True) or 0.0
        # Leases need the store's own connection: waits are woken by RESP3
        # invalidation pushes (see _leases).
        self._leases: Optional[Leases] = (
            Leases(self, ttl=lease_ttl, wait=lease_wait)
            if leases and isinstance(client_or_url, str)
            else None
        )
        self._timer = timer
        self._stats = StoreStats()
        self._near_hits = HitCounter()
        self._near = self._make_near(client_or_url, near_cache, near_ttl, near_ping)
        # Whether the current connection tracks keys (see _handshook), and
        # warnings already given about tracking; on a cluster, each node's.
        self._tracking = False
        self._node_tracking: Dict[Node, bool] = {}
        self._tracking_warned = False
        self._link: Union[Link, ClientLink, ClusterLink] = self._make_link(
            client_or_url, connect_timeout, ssl, client_name
        )
        self._owns_client = isinstance(client_or_url, str)
        longest = max(self.ttl or 0.0, self.negative_ttl or 0.0)
        # The generation outlives every value written under it.
        self._gen_px: Optional[int] = (
            None if self.ttl is None else int(2000 * longest) + self._grace_ms
        )
        # A write extends the generation's expiry only if it was last
        # extended longer ago than this: it still outlives the write's
        # values, and other processes' near caches are not emptied by
        # every write (each extension is a change Redis tells them of).
        self._gen_touch_every = longest / 2
        self._health = Health(
            repr(self), threshold=threshold or 1, cooldown=cooldown or 0.0, timer=timer
        )
        # On a cluster, each node's own (see _health_for).
        self._node_healths: Dict[Node, Health] = {}
        self._decode_log = RateLimitedLog(interval=60.0, timer=timer)
        self._size_log = RateLimitedLog(interval=60.0, timer=timer)
        self._warned_types: Set[type] = set()
        # Every namespace a live cache map uses; the most recent ones also
        # after their maps are gone, so the next request still knows the
        # generation; and those with operations Redis has not confirmed.
        self._namespaces: weakref.WeakValueDictionary[str, Namespace] = (
            weakref.WeakValueDictionary()
        )
        # Spread namespaces, by the same rules (see _spread).
        self._spreads: weakref.WeakValueDictionary[str, Spread] = (
            weakref.WeakValueDictionary()
        )
        self._recent: OrderedDict[str, Union[Namespace, Spread]] = OrderedDict()
        self._dirty: Dict[str, Namespace] = {}
        # Fresh values waiting for the next write round trip.
        self._fresh: List[_Fresh] = []
        # Completed when the next write round trip is answered (for
        # wait_for_writes), and the write round trips in flight.
        self._carrier: Optional[asyncio.Future[None]] = None
        self._inflight: Set[asyncio.Future[Any]] = set()
        self._trips = 0
        self._send_handle: Optional[asyncio.Handle] = None
        self._retry_handle: Optional[asyncio.TimerHandle] = None
        self._last_trip_failed = False

    def _make_link(
        self,
        client_or_url: Any,
        connect_timeout: Optional[float],
        ssl: Any,
        client_name: Optional[str],
    ) -> Union[Link, ClientLink, ClusterLink]:
        if isinstance(client_or_url, str):
            tracks = self._leases is not None or self._near is not None
            make = functools.partial(
                Link,
                timeout=self.timeout,
                connect_timeout=connect_timeout,
                # A value past the limit is skipped as it arrives, unread.
                max_bulk=self._envelope.max_reply,
                client_name=client_name,
                handshake=self._handshake if tracks else None,
                on_handshake=self._handshook if tracks else None,
                on_push=self._pushed if tracks else None,
                on_connect=self._connected if tracks else None,
                on_lost=self._lost if tracks else None,
            )
            address = parse_url(client_or_url, ssl)
            if not self.cluster:
                return make(address)

            def make_node(address: Address) -> Link:
                # Each node tracks (or refuses to) on its own connection.
                node = (address.host, address.port)
                handshook = functools.partial(self._handshook, node=node)
                return make(address, on_handshake=handshook if tracks else None)

            return ClusterLink(address, make_node)
        if not callable(getattr(client_or_url, "pipeline", None)):
            raise TypeError(
                "RedisStore needs a redis:// URL, or a redis.asyncio.Redis or "
                f"RedisCluster client, but got {short_repr(client_or_url)}."
            )
        get_encoder = getattr(client_or_url, "get_encoder", None)
        if get_encoder is not None and get_encoder().decode_responses:
            raise ValueError(
                "RedisStore stores bytes, but the client was created with "
                "decode_responses=True; pass a client created with "
                "decode_responses=False (the default)."
            )
        if connect_timeout is not None or ssl is not None:
            raise TypeError(
                "connect_timeout and ssl apply when RedisStore connects from a URL; "
                "configure the client you pass instead."
            )
        return ClientLink(client_or_url, timeout=self.timeout)

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r} version={self.version!r}>"

    def _make_near(
        self, client_or_url: Any, maxsize: Any, ttl: Any, ping: Any
    ) -> Optional[NearCache]:
        size = _valid.count("near_cache", maxsize, least=1, none=True)
        ttl = _valid.seconds("near_ttl", ttl)
        ping = _valid.seconds("near_ping", ping)
        if size is None:
            return None
        if not isinstance(client_or_url, str):
            warnings.warn(
                "RedisStore(near_cache=...) needs a redis:// URL (the store's own "
                "connection receives the invalidations); with a client it is off.",
                stacklevel=3,
            )
            return None
        # No value outlives its TTL here: Redis tells of an expiry only once it
        # deletes the key, which may be long after.
        life = min(t for t in (ttl or 60.0, self.ttl, self.negative_ttl) if t)
        return NearCache(
            size,
            life,
            ping or 1.0,
            self._stats,
            check_gen=self._check_gen,
            send_ping=self._send_ping,
            tracking=lambda: self._tracking,
        )

    def _handshake(self, resp3: bool) -> List[Command]:
        """What a new connection sends first: client tracking (its pushes
        wake lease waits and evict near values; broadcast mode on the
        store's keys with a near cache, else only keys asked for), and the
        lease scripts, so that they are known before the first EVALSHA."""
        if not resp3:
            self._tracking = False
            self._warn_tracking("the server speaks RESP2 only (no pushes)")
            return []
        if self._near is not None:
            prefix = store_prefix(self.prefix, self.version, self.buckets)
            tracking: Command = (
                b"CLIENT",
                b"TRACKING",
                b"ON",
                b"BCAST",
                b"PREFIX",
                prefix,
            )
        else:
            tracking = (b"CLIENT", b"TRACKING", b"ON", b"OPTIN")
        scripts = _SCRIPTS if self._leases is not None else ()
        return [tracking, *[(b"SCRIPT", b"LOAD", s.source) for s in scripts]]

    def _handshook(self, replies: List[Any], node: Optional[Node] = None) -> None:
        """The handshake's replies: tracking may be refused (an ACL, a proxy);
        then leases wait for nobody and the near cache stays empty.  A
        script that cannot be loaded is sent by its source when needed.  On
        a cluster each *node* answers for itself, and the store tracks only
        while every node it has connected to does."""
        refusal = replies[0] if replies else None
        tracking = bool(replies) and _is_ok(refusal)
        if node is not None:
            self._node_tracking[node] = tracking
            tracking = all(self._node_tracking.values())
        self._tracking = tracking
        if not self._tracking:
            self._warn_tracking(f"CLIENT TRACKING answered {short_repr(refusal)}")

    def _warn_tracking(self, why: str) -> None:
        if self._tracking_warned:
            return
        self._tracking_warned = True
        off = [
            name
            for name, on in (("leases", self._leases), ("near_cache", self._near))
            if on is not None
        ]
        if off:
            logger.warning(
                "%r: no client tracking on this server (%s): %s off.",
                self,
                why,
                " and ".join(off),
            )

    def _pushed(self, frame: Push) -> None:
        if len(frame) < 2 or frame[0] != b"invalidate":
            return
        if self._leases is not None:
            self._leases.pushed(frame)
        if self._near is not None:
            self._near.pushed(frame[1])

    def _connected(self) -> None:
        if self._leases is not None:
            self._leases.reconnected()
        if self._near is not None:
            self._near.connected(self._tracking)

    def _lost(self, error: RoundTripError) -> None:
        if self._near is not None:
            self._near.lost()
        if self._leases is not None:
            self._leases.lost(error)

    def _check_gen(self, namespace: Namespace) -> None:
        """Read *namespace*'s generation for the near cache (see
        NearCache.gen_read), deciding as the reply is parsed."""
        near = self._near
        assert near is not None
        envelope = self._envelope

        def parse(replies: List[Any]) -> None:
            (raw,) = replies
            try:
                gen, _ = envelope.open_generation(namespace.gen_key, raw)
            except Mismatch as error:
                raise Unusable(str(error)) from None
            near.gen_read(namespace, gen)

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                near.gen_read(namespace, None)  # cannot tell: drop them

        self._link.request([(b"GET", namespace.gen_key)], parse).add_done_callback(done)

    def _send_ping(self) -> Optional[asyncio.Future[Any]]:
        link = self._link
        if type(link) is ClusterLink:
            # Every node's connection: a silent one would hide its pushes.
            pings = [
                link.link(node).request([(b"PING",)], _pong) for node in link.nodes
            ]
            return asyncio.gather(*pings) if pings else None
        return link.request([(b"PING",)], _pong)

    def _leasing(self) -> bool:
        """Whether reads lease their misses now: leases on, and a connection
        that delivers the pushes that wake waits."""
        return self._leases is not None and self._link.resp3 and self._tracking

    def _native_fencing(self) -> bool:
        """Whether the server has SET ... IFEQ (Valkey 8.1, Redis 8.4)."""
        name, version = getattr(self._link, "server", ("", ()))
        return (name == "valkey" and version >= (8, 1)) or (
            name == "redis" and version >= (8, 4)
        )

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def stats(self) -> StoreStats:
        """A snapshot of the store's counters (see :class:`StoreStats`).

        >>> store.stats.breaker_state
        'closed'
        """
        snapshot = StoreStats(**asdict(self._stats))
        healths = [self._health, *self._node_healths.values()]
        # On a cluster: the state of the worst node's breaker.
        snapshot.breaker_state = _worst(health.reads.state for health in healths)
        snapshot.write_breaker_state = _worst(h.writes.state for h in healths)
        snapshot.breaker_opens = sum(h.reads.opens + h.writes.opens for h in healths)
        snapshot.pending_operations = sum(
            namespace.pending_count() for namespace in self._dirty.values()
        )
        snapshot.connects = self._link.connects
        snapshot.near_size = len(self._near) if self._near is not None else 0
        snapshot.near_hits = self._near_hits.value
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
        from loadercache.backends.redis._cache_map import RedisCacheMap

        return RedisCacheMap(self, namespace, local=local)

    def redis_key(self, namespace: str, key: Hashable) -> bytes:
        """The Redis key that holds *key* of *namespace* (for inspection and ops).

        >>> RedisStore("redis://localhost").redis_key("users", 42)
        b'lc:3:v1:{users}:i:42'
        """
        return self._tier(namespace).rkey(key)

    async def flush(self) -> None:
        """Wait until every pending write, delete, prime and clear_all is sent.

        Call it in tests, and at shutdown (:meth:`aclose` does).  It returns
        once Redis has confirmed them, or once a round trip carrying them has
        failed: operations that failed are kept and sent again when Redis
        answers (values are dropped); ``flush`` never raises because Redis is
        down.

        >>> users.prime(1, ada)
        >>> await store.flush()  # now every process reads ada
        """
        loop = asyncio.get_running_loop()
        # Bounded: each pass sends what is pending and waits for every round
        # trip in flight; only a generation learned by one (for primes)
        # leaves more to send.
        for _ in range(4):
            self._send()
            inflight = [f for f in self._inflight if f.get_loop() is loop]
            if not inflight:
                return
            await asyncio.gather(*inflight, return_exceptions=True)
            if self._last_trip_failed:
                return

    async def aclose(self) -> None:
        """Flush pending writes, then close the connection the store opened.

        A client you passed stays open.

        >>> await store.aclose()
        """
        await self.flush()
        if self._near is not None:
            self._near.close()
        if self._leases is not None:
            await self._leases.close()
        for handle in (self._send_handle, self._retry_handle):
            if handle is not None:
                handle.cancel()
        await self._link.aclose()

    # -- namespaces --------------------------------------------------------

    def _tier(self, name: str) -> Union[Tier, SpreadTier]:
        """The store's view of namespace *name*, for a cache map."""
        state: Union[Namespace, Spread, None]
        if self.buckets > 1:
            state = self._spreads.get(name)
            if state is None:
                check_namespace(name)
                state = self._spreads[name] = Spread(
                    [
                        Namespace(
                            f"{name}{{{bucket}}}",  # no namespace has braces
                            namespace_base(
                                self.prefix, self.version, name, bucket, self.buckets
                            ),
                        )
                        for bucket in range(self.buckets)
                    ]
                )
        else:
            state = self._namespaces.get(name)
            if state is None:
                check_namespace(name)
                state = Namespace(name, namespace_base(self.prefix, self.version, name))
                self._namespaces[name] = state
        recent = self._recent
        recent[name] = state
        recent.move_to_end(name)
        if len(recent) > _RECENT_NAMESPACES:
            recent.popitem(last=False)
        if type(state) is Spread:
            return SpreadTier(self, name, state)
        return Tier(self, state)  # type: ignore[arg-type]

    def _health_for(self, key: bytes) -> Health:
        """The health of the server that holds *key*: on a cluster, its node's."""
        link = self._link
        if type(link) is not ClusterLink:
            return self._health
        node = link.node_of(key)
        if node is None:
            return self._health  # before the slot map
        health = self._node_healths.get(node)
        if health is None:
            default = self._health
            health = self._node_healths[node] = Health(
                f"{self!r} node {node[0]}:{node[1]}",
                threshold=default.reads.threshold,
                cooldown=default.cooldown,
                timer=self._timer,
            )
        return health

    def _pending(self) -> bool:
        return any(namespace.has_pending() for namespace in self._dirty.values())

    def _dirtied(self, namespace: Namespace) -> None:
        self._dirty[namespace.name] = namespace
        if sum(n.pending_count() for n in self._dirty.values()) > _MAX_PENDING:
            # Replace the deletes of the namespace holding most with one new
            # generation: bounded memory, and nothing stale is ever served.
            largest = max(self._dirty.values(), key=Namespace.pending_count)
            largest.clear_all(keep_primes=True)
            self._stats.generation_overflows += 1
        self._schedule_send()

    # -- the payload of a value ----------------------------------------------

    def _payload(self, value: Any) -> Optional[Tuple[bytes, Optional[int]]]:
        """The serialized *value* and its expiry (ms), or None not to write it."""
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
            if (
                value_type not in self._warned_types
                and len(self._warned_types) < _WARNED_TYPES
            ):
                self._warned_types.add(value_type)
                logger.warning(
                    "%r: a value of type %s is returned but not cached in "
                    "Redis: %s (logged once per type)",
                    self,
                    getattr(value_type, "__qualname__", value_type),
                    error,
                )
            return None
        limit = self.max_value_bytes
        if limit is not None and len(payload) + self._envelope.overhead > limit:
            self._stats.serialization_skips += 1
            self._size_log.warn(
                "%r: a value of %d bytes is returned but not cached in Redis: it "
                "exceeds max_value_bytes=%d",
                self,
                len(payload) + self._envelope.overhead,
                limit,
            )
            return None
        if ttl is None:
            return payload, None
        if self.ttl_jitter:
            ttl *= 1.0 - self.ttl_jitter * random.random()
        return payload, max(1, int(ttl * 1000))

    def _decode_errors(self, namespace: Namespace, opened: Opened) -> None:
        errors = opened.errors
        if errors:
            self._stats.decode_errors += errors
            self._decode_log.warn(
                "%r: %d values read in namespace %r could not be decoded "
                "(%d corrupt or of another format, %d too large, %d with a bad "
                "signature); they are loaded anew and overwritten.",
                self,
                errors,
                namespace.name,
                opened.corrupt,
                opened.too_large,
                opened.forged,
            )

    # -- the write round trip ------------------------------------------------

    def _schedule_send(self) -> None:
        if self._send_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a clear() at import): the next flush sends
        self._send_handle = loop.call_soon(self._send)

    def _schedule_retry(self) -> None:
        if self._retry_handle is not None or not self._pending():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        healths = [self._health, *self._node_healths.values()]
        delay = max(_RETRY_DELAY, min(h.writes.retry_in() for h in healths))
        self._retry_handle = loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        self._send()

    def _carrier_future(self) -> asyncio.Future[None]:
        """Completed when the round trip carrying what is queued now is answered."""
        if self._carrier is None:
            self._carrier = asyncio.get_running_loop().create_future()
        return self._carrier

    def _send(self) -> None:
        """Write round trips with everything queued and not yet sent: one,
        or on a cluster one per node."""
        if self._send_handle is not None:
            self._send_handle.cancel()  # flush() sends now, not next turn
            self._send_handle = None
        fresh, self._fresh = self._fresh, []
        carrier, self._carrier = self._carrier, None
        if not fresh and not self._pending():
            _complete(carrier)
            return
        by_namespace: Dict[str, List[_Fresh]] = {}
        for entry in fresh:
            by_namespace.setdefault(entry.namespace.name, []).append(entry)
        names = [*self._dirty, *(n for n in by_namespace if n not in self._dirty)]
        groups: Dict[Any, List[Tuple[Namespace, Sequence[_Fresh]]]] = {}
        node_of = self._link.node_of if type(self._link) is ClusterLink else None
        for name in names:
            namespace = self._dirty.get(name) or by_namespace[name][0].namespace
            node = node_of(namespace.gen_key) if node_of is not None else None
            groups.setdefault(node, []).append((namespace, by_namespace.get(name, ())))
        carriers = _split_carrier(carrier, len(groups))
        for parts, part_carrier in zip(groups.values(), carriers):
            self._send_trip(parts, part_carrier)

    def _send_trip(
        self,
        parts: List[Tuple[Namespace, Sequence[_Fresh]]],
        carrier: Optional[asyncio.Future[None]],
    ) -> None:
        """One write round trip with the parts of the namespaces of one server."""
        health = self._health_for(parts[0][0].gen_key)
        ticket = health.writes.allow()
        if ticket is None:
            self._stats.skipped += 1
            self._last_trip_failed = True
            _complete(carrier)
            self._schedule_retry()
            return
        self._trips += 1
        trip = _Trip(self._trips, health, ticket, carrier)
        for namespace, fresh in parts:
            self._plan(trip, namespace, fresh)
        if not trip.commands:
            health.writes.abandoned(ticket)
            _complete(carrier)
            return
        span = start_redis_span("set_many", trip.keys)
        future = self._link.request(trip.commands, functools.partial(_check, trip))
        self._inflight.add(future)
        future.add_done_callback(functools.partial(self._written, trip, span))

    def _plan(self, trip: _Trip, namespace: Namespace, fresh: Sequence[_Fresh]) -> None:
        """Add *namespace*'s commands to *trip*, and where their replies will be.

        In order: a new generation (clear_all), a read of the generation (for
        primes in a namespace this process has not read), the creation of a
        generation (for values of a namespace Redis had none of), the deletes,
        the primes, the fresh values, and the generation's new expiry.
        """
        commands = trip.commands
        gen_key = namespace.gen_key
        gen_px = self._gen_px
        envelope = self._envelope
        part = _Part(namespace, len(commands), namespace.seq)
        trip.parts.append(part)
        if namespace.new_gen is not None and namespace.new_gen_sent is None:
            namespace.new_gen_sent = trip.number
            part.new_gen = len(commands)
            value = envelope.generation(gen_key, namespace.new_gen)
            commands.append(_set(gen_key, value, gen_px))
        tag = namespace.prime_tag()
        if (
            tag is UNKNOWN
            and namespace.learning is None
            and namespace.has_unsent_primes()
        ):
            namespace.learning = trip.number
            part.learn = len(commands)
            commands.append((b"GET", gen_key))
        part.taken = namespace.take(trip.number, primes=tag is not UNKNOWN)
        primes = [(rkey, op) for rkey, op in part.taken if op.kind != DELETE]
        tags = [namespace.tag_for(entry.reading) for entry in fresh]
        if (primes and tag is None) or None in tags:
            part.creating = new_token()
            part.create = len(commands)
            value = envelope.generation(gen_key, part.creating)
            commands.append((b"SET", gen_key, value, b"NX", *_px(gen_px)))
        deletes = [rkey for rkey, op in part.taken if op.kind == DELETE]
        if deletes:
            part.deletes = len(commands)
            commands.append((b"DEL", *deletes))
        prime_tag = tag if isinstance(tag, bytes) else part.creating
        timed = self._timed_values
        now_ms = int(time.time() * 1000) if timed else 0
        for rkey, op in primes:
            assert prime_tag is not None and op.payload is not None
            px = op.px
            meta = b""
            if timed and px is not None:
                meta = timing(now_ms + px, 0)
                px += self._grace_ms
            part.primes.append(len(commands))
            commands.append(
                _set(rkey, envelope.seal(prime_tag, rkey, op.payload, meta), px)
            )
        native = self._native_fencing()
        fenced_keys: List[bytes] = []
        fenced_args: List[Any] = []
        for entry, entry_tag in zip(fresh, tags):
            token = entry_tag or part.creating
            assert token is not None
            px = entry.px
            meta = b""
            if timed and px is not None:
                # Stale at the end of its TTL; kept in Redis for the grace.
                meta = timing(now_ms + px, entry.load_ms)
                px += self._grace_ms
            sealed = envelope.seal(token, entry.rkey, entry.payload, meta)
            fence = entry.fence
            if fence is None:
                part.fresh.append(len(commands))
                commands.append(_set(entry.rkey, sealed, px))
                continue
            if entry.leased:
                trip.leases.append((entry.rkey, fence))
            if native:
                # Stored only if the key still holds *fence*.
                part.fenced.append(len(commands))
                commands.append((b"SET", entry.rkey, sealed, b"IFEQ", fence, *_px(px)))
            else:
                fenced_keys.append(entry.rkey)
                fenced_args += [fence, sealed, b"" if px is None else px]
        if fenced_keys:
            part.fenced_script = len(commands)
            commands.append(FENCED_SET.command(fenced_keys, fenced_args))
        if (primes or fresh) and gen_px is not None:
            now = self._timer()
            if now - namespace.gen_touched >= self._gen_touch_every:
                namespace.gen_touched = now
                part.touch = True
                commands.append((b"PEXPIRE", gen_key, gen_px))
        part.end = len(commands)
        trip.stores = trip.stores or bool(
            primes or fresh or part.new_gen is not None or part.create is not None
        )
        trip.keys += len(deletes) + len(primes) + len(fresh)

    def _written(
        self, trip: _Trip, span: Any, future: asyncio.Future[List[Any]]
    ) -> None:
        """The answer to a write round trip: confirm, or keep for another."""
        self._inflight.discard(future)
        span.end()
        health = trip.health
        stats = self._stats
        if future.cancelled():
            health.abandoned(health.writes, trip.ticket)
            self._returned(trip)
            _complete(trip.carrier)
            return
        error = future.exception()
        if error is not None:
            stats.errors += 1
            if isinstance(error, RoundTripError):
                stats.timeouts += error.reason == "timeout"
                stats.unusable_replies += error.reason == "unusable"
            health.failed(health.writes, trip.ticket, error)
            self._returned(trip)
            self._last_trip_failed = True
            _complete(trip.carrier)
            self._schedule_retry()
            return
        replies = future.result()
        refused: Optional[ReplyError] = None
        for part in trip.parts:
            refused = self._settle(trip, part, replies) or refused
        if refused is not None:
            stats.write_errors += 1
            health.failed(health.writes, trip.ticket, refused)
            if trip.leases and self._leases is not None:
                # Fenced writes Redis refused leave their leases: free them.
                # (One that was stored holds a value now, and stays.)
                self._leases.unwritten(trip.leases)
            self._last_trip_failed = True
            self._schedule_retry()
        else:
            stats.writes += 1
            if trip.stores:
                health.succeeded(health.writes, trip.ticket)
            else:
                # Deletes and reads only: a server out of memory takes those,
                # so they prove nothing about writing values.
                health.abandoned(health.writes, trip.ticket)
            self._last_trip_failed = False
            if self._pending():
                self._schedule_send()  # primes whose generation was just learned
        _complete(trip.carrier)

    def _settle(
        self, trip: _Trip, part: _Part, replies: List[Any]
    ) -> Optional[ReplyError]:
        """Apply the replies to *part*; the first command Redis refused, if any."""
        namespace = part.namespace
        stats = self._stats
        refused = next(
            (
                r
                for r in replies[part.start : part.end]
                # A server that lost the scripts (SCRIPT FLUSH) refused
                # nothing: the fenced values are simply not written.
                if isinstance(r, ReplyError) and not is_noscript(r)
            ),
            None,
        )
        if part.new_gen is not None:
            if isinstance(replies[part.new_gen], ReplyError):
                namespace.gen_returned(trip.number)
            else:
                namespace.gen_confirmed(trip.number)
        if part.learn is not None:
            namespace.learning = None
            if not isinstance(replies[part.learn], ReplyError):
                token, _ = self._envelope.open_generation(
                    namespace.gen_key, replies[part.learn]
                )
                if namespace.new_gen is None:
                    namespace.gen = token
        created = True
        if part.create is not None:
            reply = replies[part.create]
            created = _is_ok(reply)
            if created and part.creating is not None:
                namespace.created_gen(part.creating, part.seq)
            elif not isinstance(reply, ReplyError) and namespace.new_gen is None:
                # Another process made one meanwhile: what was written under
                # ours is a miss to everybody.  Learn it before priming again.
                namespace.gen = UNKNOWN
        confirmed: List[Tuple[bytes, Operation]] = []
        returned: List[Tuple[bytes, Operation]] = []
        deletes = [pair for pair in part.taken if pair[1].kind == DELETE]
        if part.deletes is not None:
            if isinstance(replies[part.deletes], ReplyError):
                returned += deletes
            else:
                confirmed += deletes
                stats.deleted_keys += len(deletes)
        primes = [pair for pair in part.taken if pair[1].kind != DELETE]
        for position, pair in zip(part.primes, primes):
            if created and not isinstance(replies[position], ReplyError):
                confirmed.append(pair)
                stats.written_keys += 1
            else:
                returned.append(pair)
        stats.written_keys += sum(
            not isinstance(replies[position], ReplyError) for position in part.fresh
        )
        for position in part.fenced:
            if _is_ok(replies[position]):
                stats.written_keys += 1
            elif not isinstance(replies[position], ReplyError):
                stats.fenced_refusals += 1
        if part.fenced_script is not None:
            stored = replies[part.fenced_script]
            if isinstance(stored, list):
                stats.written_keys += sum(1 for flag in stored if flag == 1)
                stats.fenced_refusals += sum(1 for flag in stored if flag != 1)
        namespace.confirmed(confirmed)
        namespace.returned(returned)
        if not namespace.has_unconfirmed():
            self._dirty.pop(namespace.name, None)
        return refused

    def _returned(self, trip: _Trip) -> None:
        for part in trip.parts:
            namespace = part.namespace
            if part.touch:
                namespace.gen_touched = -math.inf  # extend it with the next write
            namespace.returned(part.taken)
            namespace.gen_returned(trip.number)
            if part.learn is not None:
                namespace.learning = None
        if trip.leases and self._leases is not None:
            self._leases.unwritten(trip.leases)


class _Fresh:
    """A freshly loaded value on its way to Redis."""

    __slots__ = (
        "fence",
        "leased",
        "load_ms",
        "namespace",
        "payload",
        "px",
        "reading",
        "rkey",
    )

    def __init__(
        self,
        namespace: Namespace,
        reading: Reading,
        rkey: bytes,
        payload: bytes,
        px: Optional[int],
        fence: Optional[bytes],
        *,
        leased: bool = True,
        load_ms: int = 0,
    ) -> None:
        self.namespace = namespace
        self.reading = reading
        self.rkey = rkey
        self.payload = payload
        self.px = px
        # What the key must still hold for the value to be written: the
        # lease it holds for this load (*leased*: freed if the write fails),
        # or the value a refresh-ahead replaces.
        self.fence = fence
        self.leased = leased
        # How long the load took (for a timed value; see _envelope.timing).
        self.load_ms = load_ms


class _Part:
    """Where one namespace's commands sit in a write round trip (see _plan)."""

    __slots__ = (
        "create",
        "creating",
        "deletes",
        "end",
        "fenced",
        "fenced_script",
        "fresh",
        "learn",
        "namespace",
        "new_gen",
        "primes",
        "seq",
        "start",
        "taken",
        "touch",
    )

    def __init__(self, namespace: Namespace, start: int, seq: int) -> None:
        self.namespace = namespace
        self.start = start
        self.end = start
        # Reads of the namespace sent before this round trip.
        self.seq = seq
        # Positions of the commands (None: not in this round trip).
        self.new_gen: Optional[int] = None
        self.learn: Optional[int] = None
        self.create: Optional[int] = None
        self.deletes: Optional[int] = None
        self.primes: List[int] = []
        self.fresh: List[int] = []
        # Fresh values fenced by their lease: SET ... IFEQ commands, or one
        # FENCED_SET script for them all.
        self.fenced: List[int] = []
        self.fenced_script: Optional[int] = None
        # The token a SET NX creates, and the operations taken.
        self.creating: Optional[bytes] = None
        self.taken: List[Tuple[bytes, Operation]] = []
        # Whether it extends the generation's expiry.
        self.touch = False


class _Trip:
    """One write round trip: its commands, and each namespace's part of them."""

    __slots__ = (
        "carrier",
        "commands",
        "health",
        "keys",
        "leases",
        "number",
        "parts",
        "stores",
        "ticket",
    )

    def __init__(
        self,
        number: int,
        health: Health,
        ticket: int,
        carrier: Optional[asyncio.Future[None]],
    ) -> None:
        self.number = number
        self.health = health
        self.ticket = ticket
        self.carrier = carrier
        self.commands: List[Tuple[Any, ...]] = []
        self.parts: List[_Part] = []
        self.keys = 0
        # Whether it stores anything (a value, a prime or a generation).
        self.stores = False
        # The (key, lease) of its fenced writes.
        self.leases: List[Tuple[bytes, bytes]] = []


_SCRIPTS = (ACQUIRE, FENCED_SET, RELEASE, RENEW)


def _px(px: Optional[int]) -> Tuple[Any, ...]:
    return () if px is None else (b"PX", px)


def _set(rkey: bytes, value: bytes, px: Optional[int]) -> Tuple[Any, ...]:
    return (b"SET", rkey, value, *_px(px))


def _is_ok(reply: Any) -> bool:
    # Our connection parses +OK as "OK"; redis-py's callbacks make it True.
    return reply == "OK" or reply is True or reply == b"OK"


def _is_int(reply: Any) -> bool:
    return isinstance(reply, int)


def _check(trip: _Trip, replies: List[Any]) -> List[Any]:
    """The replies to a write round trip, if they can be its answers."""
    if len(replies) != len(trip.commands):
        raise Unusable(f"{len(replies)} replies to {len(trip.commands)} commands")
    for part in trip.parts:
        for position in range(part.start, part.end):
            reply = replies[position]
            if isinstance(reply, ReplyError):
                continue
            name = trip.commands[position][0]
            if name == b"SET":
                conditional = position == part.create or position in part.fenced
                if not (_is_ok(reply) or (conditional and reply in (None, False))):
                    raise Unusable(f"SET answered {short_repr(reply)}")
            elif name in (b"EVALSHA", b"EVAL"):
                if not isinstance(reply, list) or any(
                    flag not in (0, 1) for flag in reply
                ):
                    raise Unusable(f"the fenced write answered {short_repr(reply)}")
            elif name in (b"DEL", b"PEXPIRE"):
                if not _is_int(reply):
                    raise Unusable(f"{name.decode()} answered {short_repr(reply)}")
            elif name == b"GET" and reply is not None and type(reply) is not bytes:
                raise Unusable(f"GET answered {short_repr(reply)}")
    return replies


def _pong(replies: List[Any]) -> Any:
    (reply,) = replies
    if reply != "PONG" and reply != b"PONG":
        raise Unusable(f"PING answered {short_repr(reply)}")
    return reply


def _check_refresh_leases(replies: List[Any]) -> List[bool]:
    """Which refresh leases (``SET ... NX``) this store took."""
    taken = []
    for reply in replies:
        if isinstance(reply, ReplyError) or reply in (None, False):
            taken.append(False)
        elif _is_ok(reply):
            taken.append(True)
        else:
            raise Unusable(f"SET NX answered {short_repr(reply)}")
    return taken


def _worst(states: Any) -> str:
    """The worst of breaker states: open, then half-open, then closed."""
    found = set(states)
    return next((s for s in ("open", "half-open") if s in found), "closed")


def _split_carrier(
    carrier: Optional[asyncio.Future[None]], count: int
) -> List[Optional[asyncio.Future[None]]]:
    """*count* futures that complete *carrier* once all of them are complete."""
    if carrier is None or count <= 1:
        return [carrier] * count
    loop = carrier.get_loop()
    parts: List[Optional[asyncio.Future[None]]] = [
        loop.create_future() for _ in range(count)
    ]
    left = [count]

    def one_done(_: asyncio.Future[None]) -> None:
        left[0] -= 1
        if not left[0]:
            _complete(carrier)

    for part in parts:
        part.add_done_callback(one_done)  # type: ignore[union-attr]
    return parts


def _complete(future: Optional[asyncio.Future[None]]) -> None:
    if future is not None and not future.done():
        future.set_result(None)


# What a read may answer besides a value or MISS (see answered).
_UNSETTLED = (LeaseMark, Stale)


class _Read:
    """One read on its way (see Tier.send_read): what it read, for whom, and
    what came back."""

    __slots__ = (
        "future",
        "gen",
        "health",
        "keys",
        "opened",
        "owner",
        "raws",
        "rkeys",
        "seq",
        "span",
        "ticket",
        "timings",
        "values",
    )

    def __init__(
        self,
        keys: Sequence[Hashable],
        rkeys: List[bytes],
        owner: Optional[asyncio.Task[Any]],
        health: Health,
        ticket: int,
        seq: int,
    ) -> None:
        self.keys = keys
        self.rkeys = rkeys
        self.owner = owner
        self.health = health
        self.ticket = ticket
        self.seq = seq
        self.opened = Opened()
        self.timings: Dict[int, Tuple[int, int]] = {}
        self.raws: List[Any] = []
        self.future: Optional[asyncio.Future[Any]] = None
        self.span: Any = None
        self.gen: Optional[bytes] = None
        self.values: List[Any] = []

    async def wait(self) -> None:
        """Wait for the reply; its failure is for Tier.answered to raise.

        If the waiting task is cancelled, so is the read (abandoned)."""
        future = self.future
        assert future is not None
        try:
            await future
        except asyncio.CancelledError:
            self.abandon()
            raise
        except Exception:
            pass

    def abandon(self) -> None:
        """Nobody waits for this read any more (once; not after answered)."""
        span, self.span = self.span, None
        if span is not None:
            span.end()
            self.health.abandoned(self.health.reads, self.ticket)


class Tier:
    """The store's view of one namespace: what a :class:`RedisCacheMap` calls.

    Cheap to make (a cache map makes one per request); the state it works on
    is the namespace's, shared by the whole process.
    """

    __slots__ = ("namespace", "store")

    def __init__(self, store: RedisStore, namespace: Namespace) -> None:
        self.store = store
        self.namespace = namespace

    @property
    def name(self) -> str:
        """The namespace's name."""
        return self.namespace.name

    def rkey(self, key: Hashable) -> bytes:
        """The Redis key of *key*; ``TypeError`` if it cannot be stored."""
        return redis_keys(self.namespace.base, (key,))[0]

    def near_view(self) -> Dict[Hashable, asyncio.Future[Any]]:
        """The near values the cache maps of this namespace read."""
        return self.namespace.near_view()

    async def read(
        self,
        keys: Sequence[Hashable],
        encoded: Optional[Dict[Hashable, bytes]],
    ) -> List[Any]:
        """One round trip: the stored value of each key, or MISS.

        Raises :class:`~loadercache.RemoteTierError` when Redis fails (the
        failure is logged once per outage, by the store's health).
        """
        read = self.send_read(keys, redis_keys(self.namespace.base, keys, encoded))
        if type(read) is not _Read:
            return read  # type: ignore[return-value]
        await read.wait()
        answer = self.answered(read)
        if answer is read:
            return await self.complete(read)
        return answer  # type: ignore[return-value]

    # A read in three steps, so that a spread namespace (see _spread) can
    # send every bucket's read at once and settle them in its own task:
    # send_read (sends; or answers at once), answered (once the reply is
    # in: the values, or the read itself if it needs more round trips), and
    # complete (those round trips: refreshes, leases).

    def send_read(
        self,
        keys: Sequence[Hashable],
        rkeys: List[bytes],
        owner: Optional[asyncio.Task[Any]] = None,
    ) -> Union[_Read, List[Any]]:
        """Send the read of *keys* (at *rkeys*) for the batch of task *owner*
        (default: the current task); or answer it without Redis."""
        store = self.store
        namespace = self.namespace
        stats = store._stats
        count = len(keys)
        stats.read_keys += count
        if namespace.new_gen is not None:
            # A clear_all Redis has not confirmed: nothing stored is current.
            stats.misses += count
            self._remember(namespace.new_gen, keys, rkeys, 0, {}, owner)
            self._fail_claims(rkeys)
            return [MISS] * count
        health = store._health_for(namespace.gen_key)
        ticket = health.reads.allow()
        if ticket is None:
            stats.skipped += 1
            stats.misses += count
            self._fail_claims(rkeys)
            return [MISS] * count
        read = _Read(keys, rkeys, owner, health, ticket, namespace.read_sent())
        parse = functools.partial(
            _parse_read,
            store._envelope,
            namespace,
            keys,
            rkeys,
            read.opened,
            read.timings,
            read.raws,
            store._near,
        )
        read.span = start_redis_span("get_many", count)
        read.future = store._link.request([(b"MGET", namespace.gen_key, *rkeys)], parse)
        return read

    def answered(self, read: _Read) -> Union[_Read, List[Any]]:
        """The answer to *read*, whose reply is in: its values, or *read* if
        it needs :meth:`complete`.  Raises RemoteTierError if Redis failed."""
        store = self.store
        namespace = self.namespace
        stats = store._stats
        health = read.health
        future = read.future
        span, read.span = read.span, None
        assert future is not None and future.done() and span is not None
        if store._near is not None:
            _near_attributes(span, store)
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            # (The span is not current while it waits, so nothing records
            # the failure on it but this.)
            span.set_attribute(
                "error.type", "cancelled" if error is None else type(error).__name__
            )
        span.end()
        if error is not None or future.cancelled():
            self._fail_claims(read.rkeys)
        if future.cancelled():  # by nobody of ours: a failed read
            health.abandoned(health.reads, read.ticket)
            stats.misses += len(read.keys)
            raise RemoteTierError("Redis read failed: it was cancelled")
        if error is not None and not isinstance(error, Exception):
            health.abandoned(health.reads, read.ticket)
            raise error
        if error is not None:
            stats.errors += 1
            stats.misses += len(read.keys)
            store._decode_errors(namespace, read.opened)  # a value of another key
            if isinstance(error, RoundTripError):
                stats.timeouts += error.reason == "timeout"
                stats.unusable_replies += error.reason == "unusable"
            health.failed(health.reads, read.ticket, error)
            raise RemoteTierError(f"Redis read failed: {error}") from error
        health.succeeded(health.reads, read.ticket)
        stats.reads += 1
        store._decode_errors(namespace, read.opened)
        read.gen, read.values = future.result()
        values = read.values
        namespace.read_answered(read.seq, read.gen)
        # The keys Redis did not answer with a current value (one pass,
        # unless the values were counted as they opened).
        pending = (
            []
            if read.opened.unanswered == 0
            else [i for i, v in enumerate(values) if v is MISS or type(v) in _UNSETTLED]
        )
        if read.timings or (pending and store._leasing()):
            return read
        for i in pending:
            if type(values[i]) is LeaseMark:
                values[i] = MISS  # leased by a store that waits; this one loads
        return self._settled(read, {}, pending, 0)

    async def complete(self, read: _Read) -> List[Any]:
        """The round trips an answered *read* still needs: refreshes ahead,
        stale values, leases of its misses and waits for others' leases."""
        store = self.store
        values = read.values
        leases: Dict[bytes, bytes] = {}
        try:
            if read.timings:
                await self._timed(
                    values, read.rkeys, read.raws, read.timings, read.gen, read.seq
                )
            leasing = store._leasing()
            if leasing:
                read.gen = await self._lease(
                    values, read.rkeys, read.gen, leases, read.opened
                )
        except BaseException:
            self._fail_claims(read.rkeys)  # cancelled
            raise
        if not leasing:
            for i, value in enumerate(values):
                if type(value) is LeaseMark:
                    values[i] = MISS  # leased by a store that waits; this one loads
        missed = [
            i for i, value in enumerate(values) if value is MISS or type(value) is Stale
        ]
        waits = sum(type(value) is Leased for value in values)
        return self._settled(read, leases, missed, waits)

    def _settled(
        self,
        read: _Read,
        leases: Dict[bytes, bytes],
        missed: List[int],
        waits: int,
    ) -> List[Any]:
        # The read's answer: count it, and remember what the batch may write.
        store = self.store
        stats = store._stats
        values = read.values
        keys = read.keys
        rkeys = read.rkeys
        count = len(keys)
        stats.hits += count - len(missed) - waits
        stats.misses += len(missed) + waits
        registry = store._leases
        if registry is not None and registry.claims:
            registry.answer_claims(rkeys, values, leases)
        if missed:
            self._remember(
                read.gen,
                [keys[i] for i in missed],
                [rkeys[i] for i in missed],
                read.seq,
                leases,
                read.owner,
            )
        elif leases:
            store._leases.release(list(leases))  # type: ignore[union-attr]
        if store._dirty:
            # Redis answers: whatever it owes, send now.
            store._schedule_send()
        return values

    async def _timed(
        self,
        values: List[Any],
        rkeys: List[bytes],
        raws: List[Any],
        timings: Dict[int, Tuple[int, int]],
        gen: Optional[bytes],
        seq: int,
    ) -> None:
        """Values past their time, and values about to be: Stale and Refresh.

        A value past its time is a miss, or with ``stale_if_error`` a Stale
        answer (loaded again, and served if that fails).  With
        ``refresh_ahead``, a value near its time is chosen for a refresh with
        the probability XFetch gives it (Vattani et al., VLDB 2015: the
        nearer its time, and the longer its load took, the likelier); of the
        processes that choose it, the one that takes its refresh lease (SET
        NX) answers Refresh, and its loader loads it again in the background.
        """
        store = self.store
        now = int(time.time() * 1000)
        candidates: List[int] = []
        for i, (stale_at, load_ms) in timings.items():
            if not stale_at or values[i] is MISS or type(values[i]) is LeaseMark:
                continue
            if now >= stale_at:
                if store.stale_if_error is not None:
                    values[i] = Stale(values[i])
                    store._stats.stale_reads += 1
                else:
                    values[i] = MISS
            elif (
                store.refresh_ahead
                and now - load_ms * math.log(1.0 - random.random()) >= stale_at
            ):
                candidates.append(i)
        if not candidates or gen is None:
            return
        base = self.namespace.base
        refresh_keys = [base + b"r:" + rkeys[i][len(base) :] for i in candidates]
        px = store._leases.ttl_px if store._leases is not None else 2000
        try:
            taken = await store._link.request(
                [(b"SET", key, b"1", b"NX", b"PX", px) for key in refresh_keys],
                _check_refresh_leases,
            )
        except RoundTripError:
            return  # no refresh now: the values are still good
        reading = Reading(gen, {}, seq)
        started = time.monotonic()
        for i, won in zip(candidates, taken):
            if won:
                store._stats.refreshes += 1
                values[i] = Refresh(
                    values[i],
                    functools.partial(
                        self._refreshed, reading, rkeys[i], raws[i], started
                    ),
                )

    def _refreshed(
        self, reading: Reading, rkey: bytes, old: bytes, started: float, value: Any
    ) -> None:
        """A key refreshed ahead loaded again: store it, if it is still *old*."""
        store = self.store
        entry = store._payload(value)
        if entry is None:
            return
        load_ms = int((time.monotonic() - started) * 1000)
        store._fresh.append(
            _Fresh(
                self.namespace,
                reading,
                rkey,
                *entry,
                old,
                leased=False,
                load_ms=load_ms,
            )
        )
        store._schedule_send()

    async def _lease(
        self,
        values: List[Any],
        rkeys: List[bytes],
        gen: Optional[bytes],
        leases: Dict[bytes, bytes],
        opened: Opened,
    ) -> Optional[bytes]:
        """Lease the missed keys, and wait for the keys others are loading.

        Changes *values* in place (a key leased elsewhere becomes a Leased
        answer, one filled meanwhile its value), fills *leases* with the keys
        leased now, and returns the generation their values go under.
        """
        store = self.store
        registry = store._leases
        assert registry is not None
        namespace = self.namespace
        missed = []
        for i, value in enumerate(values):
            if value is MISS:
                missed.append(i)
            elif type(value) is LeaseMark:
                values[i] = self._wait(rkeys[i], value)
        if not missed:
            return gen
        health = store._health_for(namespace.gen_key)
        writes = health.writes
        ticket = writes.allow()
        if ticket is None:
            return gen  # no writes now: load them unleased (and unwritten)
        try:
            gen, answers = await registry.acquire(
                namespace, [rkeys[i] for i in missed], opened
            )
        except LeaseFailure as error:
            if isinstance(error, LeaseRefused):
                store._stats.write_errors += 1  # out of memory, say
            else:
                store._stats.errors += 1
            health.failed(writes, ticket, error)
            return gen
        except BaseException:
            health.abandoned(writes, ticket)
            raise
        if None in answers:
            health.succeeded(writes, ticket)
        else:
            # Nothing was leased, so nothing written: a server out of memory
            # runs such a script too, which proves nothing about writing.
            health.abandoned(writes, ticket)
        for i, answer in zip(missed, answers):
            if answer is None:
                marker = registry.marker(rkeys[i])
                if marker is not None:
                    leases[rkeys[i]] = marker
            elif type(answer) is LeaseMark:
                values[i] = self._wait(rkeys[i], answer)
            else:
                values[i] = answer  # filled meanwhile, or MISS (undecodable)
        return gen

    def _fail_claims(self, rkeys: Sequence[bytes]) -> None:
        # Nothing read them: the loads waiting for their claims load them.
        registry = self.store._leases
        if registry is not None and registry.claims:
            registry.fail_claims(rkeys)

    def _wait(self, rkey: bytes, mark: LeaseMark) -> Any:
        """The answer for a key another loader is loading: a Leased value."""
        store = self.store
        registry = store._leases
        assert registry is not None
        future = None
        if mark.holder == registry.holder:
            future = registry.wait_local(rkey)  # a load of this process
        if future is None:
            future = registry.wait_remote(self.namespace, rkey)
        return Leased(future)

    def _remember(
        self,
        gen: Optional[bytes],
        keys: Sequence[Hashable],
        rkeys: Sequence[bytes],
        seq: int,
        leases: Dict[bytes, bytes],
        owner: Optional[asyncio.Task[Any]] = None,
    ) -> None:
        # The generation and keys the batch may write back, and its leases;
        # forgotten when its task ends, whatever happens to it, and the
        # leases it has not written by then are released.
        task = owner or asyncio.current_task()
        readings = self.namespace.readings
        reading = Reading(gen, dict(zip(keys, rkeys)), seq, leases)
        readings[task] = reading
        if task is not None:
            task.add_done_callback(
                functools.partial(_forget_reading, readings, self.store._leases)
            )

    def forget(self, key: Hashable, encoded: Dict[Hashable, bytes]) -> None:
        """A load of *key* failed or was cancelled: release its lease, if any."""
        registry = self.store._leases
        if registry is not None and registry.claims:
            # It may have claimed the key and been dropped before reading it.
            registry.fail_claims(redis_keys(self.namespace.base, (key,), encoded))
        reading = self.namespace.readings.get(asyncio.current_task())
        if reading is None or not reading.leases:
            return
        rkey = reading.keys.get(key)
        if rkey is not None and reading.leases.pop(rkey, None) is not None:
            registry = self.store._leases
            if registry is not None:
                registry.release([rkey])

    async def write(
        self, items: Sequence[Tuple[Hashable, Any]], encoded: Dict[Hashable, bytes]
    ) -> None:
        """Queue the freshly loaded *items* of the batch that read them.

        Sent with this turn's other writes; awaited only with
        ``wait_for_writes=True``.  Never raises.
        """
        if self.queue(items, encoded) and self.store.wait_for_writes:
            await asyncio.shield(self.store._carrier_future())

    def queue(
        self, items: Sequence[Tuple[Hashable, Any]], encoded: Dict[Hashable, bytes]
    ) -> bool:
        """Queue *items* for the next write round trip; whether any was."""
        namespace = self.namespace
        reading = namespace.readings.pop(asyncio.current_task(), None)
        if reading is None or reading.cleared_all:
            # Nothing was read (Redis failed or was skipped), or the namespace
            # was cleared since: these values may predate the clear.
            return False
        store = self.store
        registry = store._leases
        queued = False
        load_ms = (
            int((time.monotonic() - reading.started) * 1000)
            if store._timed_values
            else 0
        )
        for cache_key, value in items:
            rkey = reading.keys.get(cache_key)
            if rkey is None:
                rkey = encoded.pop(cache_key, None) or redis_key(
                    namespace.base, cache_key
                )
            lease = reading.leases.pop(rkey, None)
            if rkey in reading.cleared:
                if lease is not None and registry is not None:
                    registry.release([rkey])
                continue
            entry = store._payload(value)
            if entry is None:
                if lease is not None and registry is not None:
                    registry.release([rkey])
                continue
            if lease is not None and registry is not None:
                registry.filled(rkey, entry[0])
            store._fresh.append(
                _Fresh(namespace, reading, rkey, *entry, lease, load_ms=load_ms)
            )
            queued = True
        if reading.leases and registry is not None:
            # Keys whose loads did not give a value to store (an exception).
            registry.release(list(reading.leases))
            reading.leases.clear()
        if queued:
            store._schedule_send()
        return queued

    def prime(self, rkey: bytes, value: Any) -> None:
        """Store *value* at *rkey* for every process (in the background)."""
        near = self.store._near
        if near is not None:
            near.evict(rkey)  # the others' go when Redis has it
        entry = self.store._payload(value)
        if entry is None:
            # It cannot be stored: at least what Redis holds must go.
            self.namespace.invalidate(rkey)
        else:
            self.namespace.prime(rkey, *entry)
        self.store._dirtied(self.namespace)

    def invalidate(self, rkey: bytes) -> None:
        """Delete *rkey* for every process (in the background)."""
        near = self.store._near
        if near is not None:
            near.evict(rkey)
        self.namespace.invalidate(rkey)
        self.store._dirtied(self.namespace)

    def invalidate_all(self) -> None:
        """Forget every value of the namespace for every process (O(1))."""
        near = self.store._near
        if near is not None:
            near.drop(self.namespace)
        self.namespace.clear_all()
        self.store._dirtied(self.namespace)


def _forget_reading(
    readings: Dict[Optional[asyncio.Task[Any]], Reading],
    registry: Optional[Leases],
    task: asyncio.Task[Any],
) -> None:
    reading = readings.pop(task, None)
    if reading is not None and reading.leases and registry is not None:
        registry.release(list(reading.leases))


def _parse_read(
    envelope: Envelope,
    namespace: Namespace,
    keys: Sequence[Hashable],
    rkeys: List[bytes],
    opened: Opened,
    timings: Dict[int, Tuple[int, int]],
    raws_out: List[Any],
    near: Optional[NearCache],
    replies: List[Any],
) -> Tuple[Optional[bytes], List[Any]]:
    """The values of a read's ``MGET``, if the reply can be its answer.

    Runs as the reply is parsed, so operations made while the read was in
    flight are applied to its answer: a key cleared since is a miss.  The
    timings of timed values go to *timings*, and then the raw values to
    *raws_out* (a refresh-ahead compares them before it writes).  The values
    go to the *near* cache here too: in the order of the connection, before
    any invalidation Redis sent after this reply (see _near).
    """
    (raws,) = replies
    if type(raws) is not list or len(raws) != len(rkeys) + 1:
        raise Unusable(f"MGET of {len(rkeys) + 1} keys answered {short_repr(raws)}")
    for raw in raws:
        if raw is not None and type(raw) is not bytes and raw is not TOO_LARGE:
            raise Unusable(f"MGET answered {short_repr(raw)} among its values")
    try:
        gen, valid = envelope.open_generation(namespace.gen_key, raws[0])
        if not valid:
            opened.corrupt += 1
        values = envelope.open_all(gen, rkeys, raws[1:], opened, MISS, timings=timings)
    except Mismatch as error:
        opened.corrupt += 1
        raise Unusable(str(error)) from None
    if timings:
        raws_out[:] = raws[1:]
    if namespace.new_gen is not None:
        opened.unanswered = len(rkeys)
        return gen, [MISS] * len(rkeys)
    operations = namespace.operations
    if operations:
        loads = envelope.serializer.loads
        for i, rkey in enumerate(rkeys):
            op = operations.get(rkey)
            if op is None:
                continue
            opened.unanswered = -1  # values changed: count them again
            timings.pop(i, None)
            if op.kind == DELETE or op.payload is None:
                values[i] = MISS
            else:
                values[i] = loads(op.payload)
    if near is not None and near.active and gen is not None:
        _fill_near(near, namespace, keys, rkeys, values, timings, gen)
    return gen, values


def _near_attributes(span: Any, store: RedisStore) -> None:
    # The near cache's counters so far (its hits make no round trip, and no
    # span, of their own).
    stats = store._stats
    span.set_attribute("loadercache.near_hits", store._near_hits.value)
    span.set_attribute("loadercache.near_invalidations", stats.near_invalidations)
    span.set_attribute("loadercache.near_flushes", stats.near_flushes)
    span.set_attribute("loadercache.near_size", len(store._near or ()))


def _fill_near(
    near: NearCache,
    namespace: Namespace,
    keys: Sequence[Hashable],
    rkeys: List[bytes],
    values: List[Any],
    timings: Dict[int, Tuple[int, int]],
    gen: bytes,
) -> None:
    """Keep the values Redis answered: not those a pending operation of this
    process overrides, nor a timed value that goes stale within near_ttl
    (its reads must reach Redis by then)."""
    near.bind()
    operations = namespace.operations
    soon = int((time.time() + near.ttl) * 1000) if timings else 0
    for i, value in enumerate(values):
        if value is MISS or type(value) is LeaseMark:
            continue
        rkey = rkeys[i]
        if rkey in operations:
            continue
        timing_ = timings.get(i)
        if timing_ is not None and timing_[0] and timing_[0] <= soon:
            continue
        near.fill(namespace, keys[i], rkey, value, gen)
