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
batch function, and the values it returns are written back in the background
(see :class:`RedisStore`).

One :class:`RedisStore` per process holds the connection, the serializer, the
TTLs, the health state and the counters; a cache map per request is cheap to
make (no I/O, no connection)::

    store = RedisStore("redis://localhost:6379/0")           # at start-up
    users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    ...
    await store.aclose()                                      # at shutdown

The package holds one idea per (private) module: ``_keys`` (the key scheme
and key encoding), ``_envelope`` (how a value is stored: bound to its key and
generation, optionally signed), ``_resp`` and ``_link`` (the wire protocol,
and the one auto-pipelined connection every request shares),
``_client_link`` (the same over a redis-py client), ``_health`` (breakers, and
what is logged about failures), ``_namespace`` (the generation of a namespace
and the invalidations Redis has not confirmed), ``_stats``, ``_store`` and
``_cache_map`` (the public objects, exported here).

What a reader may see
---------------------
* **After a clear.**  ``loader.clear(key)`` deletes the key in Redis,
  ``loader.prime(key, value)`` writes the value through, and
  ``loader.clear_all()`` forgets the namespace for every process in one
  command (a new generation).  They are sent in the background, with the
  event-loop turn's other writes; from the moment they are made, every read of
  this process answers as if they had landed (a cleared key is a miss), and
  once ``await store.flush()`` returns, every process does.  A key cleared
  while its load is in flight is not written back.
* **During an outage.**  Loads never fail because of Redis: a failed, slow or
  nonsensical round trip (each bounded by ``timeout`` of silence from the
  server) counts as all misses and the batch function answers.  Values that
  cannot be written are dropped.  Clears, primes and clear_alls that cannot be
  sent are kept (bounded: past 1,000 in a namespace, or 10,000 in all, a
  namespace's deletes become one clear_all) and are sent by themselves once Redis
  answers again, oldest namespace first, so a partition never loses an
  invalidation; while one is pending, this process never serves what it
  invalidated.  After ``breaker_threshold`` consecutive failures Redis is
  skipped for ``breaker_cooldown`` seconds, then one trial round trip decides.
  Each outage is logged in at most three WARNING records through the
  ``loadercache`` logger; :attr:`RedisStore.stats` counts everything.
* **Never another key's value.**  Each value is stored bound to its key and
  generation: a reply that runs out of step with its
  request, or a value copied to another key, is refused, and the connection
  that produced it is closed.  With ``secret=``, values are signed, and a
  value written by anyone without the secret is a miss.
* **Bytes that are not ours.**  Whatever a key holds (corrupt, of another
  format, of another program, tens of megabytes), reading it gives a value or
  a counted miss: never an exception to the caller, a crash or a hang.

Tenant scoping
--------------
The namespace is required, and it is the only thing that separates the values
of different users of one Redis server.  Put in it everything that decides
what a value may contain: the kind of object and the tenant, and the
permission scope if values differ by it, e.g.
``store.cache_map(f"tenant:{tenant_id}:users")``.  Two namespaces never see
each other's values or clears.
"""

from __future__ import annotations

try:
    import msgpack  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
except ImportError as _error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "loadercache.backends.redis needs msgpack; install it with: "
        "pip install 'loadercache[redis]'"
    ) from _error

from loadercache.backends.redis._cache_map import RedisCacheMap
from loadercache.backends.redis._stats import StoreStats
from loadercache.backends.redis._store import RedisStore

__all__ = ["RedisCacheMap", "RedisStore", "StoreStats"]
