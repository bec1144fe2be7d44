"""The near cache: values read recently, in this process, kept true by the server.

With ``RedisStore(near_cache=N)`` the store keeps up to *N* values of every
namespace in process memory, shared by all the requests of the process: a key
one request read from Redis is served to the next request without a round
trip.  Each request still has its own local map of futures; a near hit puts
the near cache's (resolved) future in it, so a request keeps the value it saw
for its whole life, whatever happens to the near cache meanwhile.

*Values are shared, not copied.*  A near hit hands every request the same
object, the one decoded from Redis: treat
cached values as read-only, as with any in-process cache.  Copying, or
decoding the stored bytes again for each request, costs a msgpack decode per
hit, several times the rest of the hit (see ``benchmarks/README.md``).

*Coherence comes from the server.*  The store's connection has client
tracking on in broadcast mode for the store's key prefix (``CLIENT TRACKING
ON BCAST PREFIX <prefix>:3:v<version>:``): whenever any client, this store
itself, its peers or a plain ``redis-cli``, changes or deletes a key under
the prefix, or the key expires or is evicted, Redis pushes its name, and the
entry goes.  A change to a namespace's generation key (a ``clear_all``, or
only its expiry extended by a write) hides the namespace's entries until the
store has read the generation again (one ``GET``, whose reply comes after
the push): the same generation, and they are served again; another, and
they go.  One push reaches them all.  The store's own ``clear``, ``prime``
and ``clear_all`` evict at once, before Redis has them.

*No race between a read and an invalidation.*  Pushes and replies share the
one connection, so they arrive in the order Redis executed them (a broadcast
push may come later than its change, never earlier).  Values enter the near
cache as their reply is parsed, in that order: a change made after the read
arrives after it and evicts the value; one made before it is in the read.  A
value enters only if no operation of this process that Redis has not
confirmed yet (a ``clear``, a ``prime``, a ``clear_all``) concerns its key.
Only values read enter; a value this process loads enters once it is read.

*When the server cannot tell, nothing is served.*  When the connection
drops, or a ping sent every ``near_ping`` seconds is not answered by the
next one, the near cache empties and takes no values until the connection
answers again (with tracking on).  ``near_ttl`` (capped at the store's TTLs:
Redis pushes an expiry only once it deletes the key, which may be long
after) bounds how long an entry lives regardless (entries go within a
quarter of it after it passes), and ``near_cache`` how many there are (the
oldest go first).  A store used from another event loop forgets its values
(futures of the old loop) when its next cache map is made.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, Optional

from loadercache.backends.redis._namespace import Namespace
from loadercache.loader import _speedups

if TYPE_CHECKING:
    from loadercache.backends.redis._stats import StoreStats

__all__ = ["HitCounter", "NearCache", "NearGet"]


class _HitCounter:
    """A count of near hits, shared by the cache maps of one store."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


#: The near hits' counter, and a cache map's getter with a near cache as a C
#: callable (None without the extension: RedisCacheMap._near_get then).
HitCounter: Any = _HitCounter if _speedups is None else _speedups.HitCounter
NearGet: Any = None if _speedups is None else _speedups.NearGet


class _Entry:
    """One value in the near cache: where it lives, and since when."""

    __slots__ = ("born", "future", "key", "namespace")

    def __init__(
        self,
        namespace: Namespace,
        key: Hashable,
        future: asyncio.Future[Any],
        born: float,
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.future = future
        self.born = born


class NearCache:
    """This process's near cache (see the module docs).

    Each namespace holds its entries in ``namespace.near`` (cache key ->
    resolved future), which the cache maps read; this holds them in age
    order by Redis key, for evictions by key, by age and by count.
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        ping: float,
        stats: StoreStats,
        *,
        check_gen: Callable[[Namespace], None],
        send_ping: Callable[[], Optional[asyncio.Future[Any]]],
        tracking: Callable[[], bool],
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.ping = ping
        self._stats = stats
        self._check_gen = check_gen
        self._send_ping = send_ping
        self._tracking = tracking
        self._timer = timer
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()
        # Whether values may be kept now: the connection tracks, and answers.
        self.active = False
        # The namespaces holding entries, by generation key.
        self._gens: Dict[bytes, Namespace] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sweep_handle: Optional[asyncio.TimerHandle] = None
        self._ping_handle: Optional[asyncio.TimerHandle] = None
        self._ping: Optional[asyncio.Future[Any]] = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.entries)

    # -- filling -------------------------------------------------------------

    def fill(
        self,
        namespace: Namespace,
        key: Hashable,
        rkey: bytes,
        value: Any,
        gen: Optional[bytes],
    ) -> None:
        """Keep *value*, read at *rkey* under generation *gen*."""
        if not self.active or gen is None:
            return
        if gen != namespace.near_gen:
            # Another generation: what was kept is of a cleared one.
            self.drop(namespace)
            namespace.near_gen = gen
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._start()
        future: asyncio.Future[Any] = loop.create_future()
        future.set_result(value)
        entries = self.entries
        old = entries.pop(rkey, None)
        if old is not None:
            _forget(old)
        entries[rkey] = _Entry(namespace, key, future, self._timer())
        namespace.near[key] = future
        if namespace.near_shared is not None:
            namespace.near_shared[key] = future
        self._gens[namespace.gen_key] = namespace
        while len(entries) > self.maxsize:
            _forget(entries.popitem(last=False)[1])

    # -- evicting --------------------------------------------------------------

    def evict(self, rkey: bytes) -> bool:
        """Forget *rkey*'s value; whether there was one."""
        entry = self.entries.pop(rkey, None)
        if entry is None:
            return False
        _forget(entry)
        return True

    def drop(self, namespace: Namespace) -> None:
        """Forget every value of *namespace* (served or hidden)."""
        if namespace.near or namespace.near_hidden:
            self._stats.near_flushes += 1
            entries = self.entries
            for rkey in [k for k, e in entries.items() if e.namespace is namespace]:
                del entries[rkey]
        namespace.forget_near()
        self._gens.pop(namespace.gen_key, None)

    def bind(self) -> None:
        """On an event loop other than its values', forget them: they are
        futures of a loop that is gone, and the pushes that kept them true
        went with its connection."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is not loop:
            self._stop()
            self.active = False  # until the new loop's connection is ready
            self.flush()

    def flush(self) -> None:
        """Forget everything."""
        if self.entries:
            self._stats.near_flushes += 1
        for entry in self.entries.values():
            entry.namespace.forget_near()
        self.entries.clear()
        self._gens.clear()

    def pushed(self, keys: Any) -> None:
        """An invalidation push: *keys* changed (None: everything did)."""
        if keys is None:
            self.flush()
            return
        if not isinstance(keys, list):
            return
        stats = self._stats
        stats.near_invalidations += len(keys)
        for rkey in keys:
            if type(rkey) is not bytes:
                continue
            if self.evict(rkey):
                continue
            namespace = self._gens.get(rkey)
            if namespace is not None:
                self._hide(namespace)

    def _hide(self, namespace: Namespace) -> None:
        """A push about *namespace*'s generation: a clear_all, or only its
        expiry extended (by any process's write).  Serve none of its values
        until the generation is read again; keep them if it is the same."""
        near = namespace.near
        if not near and namespace.near_hidden is None:
            return
        hidden = namespace.near_hidden
        if hidden is None:
            namespace.near_hidden = dict(near)
        else:
            hidden.update(near)
        shared = namespace.near_shared
        if shared is not None:
            for key, future in near.items():
                if shared.get(key) is future:
                    del shared[key]
        near.clear()
        # Its reply comes after this push, so it reads the generation as it
        # is since the change pushed (and after any later change it missed,
        # whose push comes before it): see gen_read.
        self._check_gen(namespace)

    def gen_read(self, namespace: Namespace, gen: Optional[bytes]) -> None:
        """The generation of *namespace*, read after a push about it (as its
        reply is parsed; None: it could not be read)."""
        hidden = namespace.near_hidden
        if hidden is None:
            return  # decided by an earlier read, or dropped meanwhile
        if gen is None or gen != namespace.near_gen or not self.active:
            self.drop(namespace)  # the hidden values too
            return
        namespace.near_hidden = None
        near = namespace.near
        shared = namespace.near_shared
        for key, future in hidden.items():
            if near.setdefault(key, future) is future and shared is not None:
                shared.setdefault(key, future)

    # -- the connection --------------------------------------------------------

    def connected(self, tracking: bool) -> None:
        """A new connection is ready: it tracks the prefix, or it does not."""
        self.active = tracking

    def lost(self) -> None:
        """The connection is gone: its pushes with it."""
        self.active = False
        self.flush()

    def close(self) -> None:
        self._closed = True
        self.active = False
        self._stop()
        self.flush()

    def _stop(self) -> None:
        for handle in (self._sweep_handle, self._ping_handle):
            if handle is not None:
                handle.cancel()
        self._sweep_handle = self._ping_handle = None
        self._ping = None
        self._loop = None

    # -- timers ----------------------------------------------------------------

    def _start(self) -> None:
        loop = self._loop
        assert loop is not None
        self._sweep_handle = loop.call_later(self.ttl / 4, self._sweep)
        self._ping_handle = loop.call_later(self.ping, self._heartbeat)

    def _sweep(self) -> None:
        """Forget the entries older than ``near_ttl``."""
        assert self._loop is not None
        oldest = self._timer() - self.ttl
        entries = self.entries
        while entries:
            rkey, entry = next(iter(entries.items()))
            if entry.born > oldest:
                break
            del entries[rkey]
            _forget(entry)
        gens = self._gens
        if len(gens) > len(entries):
            for gen_key in [k for k, n in gens.items() if not n.near]:
                del gens[gen_key]
        self._sweep_handle = self._loop.call_later(self.ttl / 4, self._sweep)

    def _heartbeat(self) -> None:
        """Ping; a ping unanswered since the last beat empties the near cache."""
        assert self._loop is not None
        self._ping_handle = self._loop.call_later(self.ping, self._heartbeat)
        ping = self._ping
        if ping is not None and not ping.done():
            # Redis has not answered for a whole beat: what it would have
            # pushed meanwhile is unknown.
            self.active = False
            self.flush()
            return
        self._ping = self._send_ping()
        if self._ping is not None:
            self._ping.add_done_callback(self._pong)

    def _pong(self, future: asyncio.Future[Any]) -> None:
        if self._closed or future is not self._ping:
            return  # closed, or a ping of a loop left behind
        if future.cancelled() or future.exception() is not None:
            return  # the connection failed, and lost() has run
        self.active = self._tracking()


def _forget(entry: _Entry) -> None:
    namespace = entry.namespace
    near = namespace.near
    if near.get(entry.key) is entry.future:
        del near[entry.key]
    shared = namespace.near_shared
    if shared is not None and shared.get(entry.key) is entry.future:
        del shared[entry.key]
    hidden = namespace.near_hidden
    if hidden is not None and hidden.get(entry.key) is entry.future:
        del hidden[entry.key]
