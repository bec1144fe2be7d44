"""The DataLoader: queueing loads, dispatching batches, settling futures.

Read top to bottom: construction and the ``_valid_*`` helpers it calls, the
public methods (``load``, ``load_many``, ``clear``, ``prime`` and their
``_many`` forms), then the private steps of a batch's life in the order they
happen (``_enqueue``, ``_dispatch_batch``, ``_run_batch``, ``_read_through``,
``_settle``, ``_failed_dispatch``).

A batch is the list of keys collected since the last dispatch.  The first key
of a batch schedules its dispatch with ``batch_schedule_fn``; by default that
is ``loop.call_soon``, and the dispatch callback starts a task whose first
step closes the batch, one turn of the event loop later, so a batch collects
every load made in this turn *and* in the next one.  The second turn
matters: graphql-core and ``asyncio.gather`` start sibling resolvers as tasks
that first run one turn after they are created, and a loader that closed its
batch one turn earlier would split a list of siblings in two.
(aiodataloader and strawberry wait the same two turns; the JavaScript
original waits for the promise job queue.)  Under
``asyncio.eager_task_factory``, which runs a task's first step inside
``create_task``, that step waits one turn before it closes the batch, so
either factory gives the same batches.

Every caller of ``load()`` gets a future of its own, so that cancelling one
caller (a timeout, a client that went away) cancels nobody else.  The cache
map holds the first caller's future; the loads that find it in flight get
*followers*, futures that the first one's outcome is copied to when it
settles (one callback per key in flight, not one per duplicate).

See :mod:`loadercache.cache` for how a remote cache tier joins a dispatch.

``load``, ``_enqueue`` and ``_settle`` run once per key; where the optional C
extension ``loadercache._speedups`` was built, its line-for-line translations
of these three replace them (see the end of this module), and the fields they
read live in C structs under the same names (``_LoaderCore``, ``_BatchCore``,
``_CountsCore``).  This module is the reference for both, and
``tests/test_differential.py`` holds the two to the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import sysconfig
import warnings
import weakref
from collections.abc import Hashable, Iterable, Mapping, MutableMapping
from dataclasses import fields
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    ClassVar,
    Dict,
    Generic,
    List,
    Literal,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
    cast,
    overload,
)

from loadercache._repr import short_repr
from loadercache._valid import count
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
    as_cache_map,
)
from loadercache.gathering import Gathering
from loadercache.stats import LoaderStats
from loadercache.tracing import batch_span

__all__ = ["SPEEDUPS", "BatchLoadFn", "DataLoader"]

_speedups: Any = None
# Not on a free-threaded build either: the extension needs the GIL (importing
# it there would turn the GIL back on for the whole process).
if not os.environ.get("LOADERCACHE_NO_EXTENSIONS") and not sysconfig.get_config_var(
    "Py_GIL_DISABLED"
):
    # Missing without a C compiler at install time, or off CPython.
    with contextlib.suppress(ImportError):
        from loadercache import _speedups

#: Whether ``load()`` and the settling of a batch (and the Redis backend's
#: per-key steps) run as C, the optional ``loadercache._speedups``
#: extension, rather than as the Python below (and the Python twins there).
#: Both behave the same; ``LOADERCACHE_NO_EXTENSIONS=1`` forces the Python.
SPEEDUPS: bool = _speedups is not None

K = TypeVar("K")
V = TypeVar("V")
_Self = TypeVar("_Self", bound="DataLoader[Any, Any]")

#: What a batch function returns: values aligned with the keys, or a mapping
#: from key to value.  An ``Exception`` in place of a value rejects that key.
BatchResult = Union[
    Mapping[K, Union[V, BaseException]], Sequence[Union[V, BaseException]]
]
BatchLoadFn = Callable[[List[K]], Awaitable[BatchResult[K, V]]]

logger: logging.Logger = logging.getLogger("loadercache")


#: The counters of :class:`LoaderStats`, kept live by the loader.
_COUNTERS = tuple(field.name for field in fields(LoaderStats))
# What a remote tier answers for a key besides a value or MISS.
_TIER_ANSWERS = (Leased, Stale, Refresh)


class _PyCountsCore:
    """A loader's live counters; ``_speedups.CountsCore`` holds them in C.

    Slots, not LoaderStats itself: an instance attribute that shadows a class
    attribute (a dataclass default) is never specialized by the interpreter,
    which made each counted hit cost about 700 instructions more on 3.13.
    """

    __slots__ = _COUNTERS

    def __init__(self) -> None:
        for name in _COUNTERS:
            setattr(self, name, 0)


class _PyBatchCore:
    """The fields of a batch; ``_speedups.BatchCore`` holds them in C."""

    __slots__ = ("cache_keys", "futures", "keys", "loop")

    loop: asyncio.AbstractEventLoop
    keys: List[Any]
    cache_keys: List[Hashable]
    futures: List[asyncio.Future[Any]]


class _PyLoaderCore:
    """Nothing: without ``_speedups`` the loader's fields live in its ``__dict__``."""

    __slots__ = ()


if TYPE_CHECKING:
    # The counters have LoaderStats' fields.
    _CountsCore = LoaderStats
    _BatchCore = _PyBatchCore
    _LoaderCore = _PyLoaderCore
elif _speedups is None:
    _CountsCore = _PyCountsCore
    _BatchCore = _PyBatchCore
    _LoaderCore = _PyLoaderCore
else:
    # C structs with the same field names: the C load() reads them directly.
    _CountsCore = _speedups.CountsCore
    _BatchCore = _speedups.BatchCore
    _LoaderCore = _speedups.LoaderCore


class _Counts(_CountsCore):
    """A loader's live counters; ``stats`` hands out snapshots."""

    __slots__ = ()

    def snapshot(self) -> LoaderStats:
        return LoaderStats(*[getattr(self, name) for name in _COUNTERS])


class _Batch(_BatchCore):
    """The loads collected for one call of the batch function.

    ``cache_keys[i]`` is the cache key of ``keys[i]`` and ``futures[i]``;
    when keys are their own cache keys (no ``cache_key_fn``), ``cache_keys``
    is the list ``keys`` itself.
    """

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop, same_keys: bool) -> None:
        self.loop = loop
        self.keys = []
        self.cache_keys = self.keys if same_keys else []
        self.futures = []


_BASE_CREATE_FUTURE = asyncio.BaseEventLoop.create_future


def _never_cached(cache_key: Hashable) -> None:
    """The cache lookup of a loader with ``cache=False``."""
    return None


class DataLoader(_LoaderCore, Generic[K, V]):
    """Coalesce the loads of one event-loop turn into one call of a batch function.

    >>> async def fetch_users(ids: list[int]) -> list[User | None]:
    ...     rows = await db.fetch("SELECT * FROM users WHERE id = ANY($1)", ids)
    ...     by_id = {row["id"]: User(**row) for row in rows}
    ...     return [by_id.get(i) for i in ids]
    >>> users = DataLoader(fetch_users)
    >>> alice, bob = await asyncio.gather(users.load(1), users.load(2))

    Both loads reach ``fetch_users`` in one call, ``[1, 2]``; loading 1 again
    returns the memoised result.  Subclasses may define ``batch_load_fn`` as an
    async method and set ``batch``, ``max_batch_size`` and ``cache`` as class
    attributes, as with aiodataloader.

    Arguments (all optional keywords but the batch function):

    * ``batch_load_fn``: ``async (keys: list[K]) -> Sequence[V | Exception]``
      aligned with the keys, or ``Mapping[K, V | Exception]`` (a key the
      mapping lacks resolves to ``None``).  Any callable returning an
      awaitable will do (a ``functools.partial``, a ``Mock(side_effect=...)``,
      a plain function returning a coroutine); one that returns something
      else rejects the batch with a ``TypeError``.
    * ``batch`` (default True): False calls the batch function once per key.
    * ``max_batch_size``: split larger batches into concurrent calls.
    * ``cache`` (default True): False loads every ``load()`` call anew,
      duplicates included, and makes ``prime``/``clear`` do nothing.
    * ``cache_key_fn`` (alias ``get_cache_key``): maps a key to the hashable
      cache key, e.g. ``lambda key: key["id"]``.
    * ``cache_map``: a :class:`~loadercache.cache.CacheMap` or any
      ``MutableMapping`` (default: a new dict).
    * ``cache_exceptions`` (default True): whether a per-key ``Exception``
      returned by the batch function is memoised like a value (the JavaScript
      behaviour), or forgotten so the next ``load`` retries; a callable
      ``(exception) -> bool`` decides per exception.
    * ``batch_schedule_fn``: ``(callback) -> None``, calls ``callback`` when
      the batch should dispatch, e.g.
      ``lambda cb: asyncio.get_running_loop().call_later(0.002, cb)``.
    * ``name``: shown in ``repr`` and log records.
    * ``loop``: deprecated; the loader binds to the running loop on first use.
    """

    batch: ClassVar[bool] = True
    max_batch_size: ClassVar[Optional[int]] = None
    cache: ClassVar[bool] = True
    cache_exceptions: ClassVar[Union[bool, Callable[[Exception], bool]]] = True

    #: The batch function: the one passed in, or a subclass's method.  Typed
    #: here so that a subclass whose method returns the wrong type is an error
    #: to a type checker.
    batch_load_fn: Callable[[List[K]], Awaitable[BatchResult[K, V]]]
    #: Maps a key to its cache key (the key itself unless one was given).
    get_cache_key: Callable[[K], Hashable]

    def __init__(
        self,
        batch_load_fn: Optional[BatchLoadFn[K, V]] = None,
        batch: Optional[bool] = None,
        max_batch_size: Optional[int] = None,
        cache: Optional[bool] = None,
        get_cache_key: Optional[Callable[[K], Hashable]] = None,
        cache_map: Union[
            CacheMap[Any, V], MutableMapping[Any, asyncio.Future[V]], None
        ] = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        *,
        cache_key_fn: Optional[Callable[[K], Hashable]] = None,
        cache_exceptions: Union[bool, Callable[[Exception], bool], None] = None,
        batch_schedule_fn: Optional[Callable[[Callable[[], None]], Any]] = None,
        name: Optional[str] = None,
    ) -> None:
        self.name = name
        if batch_load_fn is not None:
            self.batch_load_fn = batch_load_fn
        _check_batch_load_fn(self)
        self._limit = _valid_limit(self, batch, max_batch_size)
        self._key_fn = _valid_cache_key_fn(self, cache_key_fn, get_cache_key)
        self._cache_map: CacheMap[Any, V] = (
            MutableMappingCacheMap({}) if cache_map is None else as_cache_map(cache_map)
        )
        self._caching = bool(self.cache if cache is None else cache)
        self._get = self._cache_map.get if self._caching else _never_cached
        self._set = self._cache_map.set
        self._remote = _remote_tier(self._cache_map) if self._caching else None
        self._cache_exceptions = _valid_cache_exceptions(self, cache_exceptions)
        self._schedule = _valid_batch_schedule_fn(batch_schedule_fn)
        self._bind(_deprecated_loop(loop))
        self._batch: Optional[_Batch] = None
        self._followers: Dict[asyncio.Future[V], List[asyncio.Future[V]]] = {}
        self._tasks: Set[asyncio.Task[None]] = set()
        self._counts = _Counts()

    def __repr__(self) -> str:
        # Also for a loader whose __init__ raised (pytest shows it).
        name = getattr(self, "name", None)
        shown = f" {name!r}" if name else ""
        # The map's type, not its repr: that lists every cached future, and
        # this repr goes into error messages and log records.
        cache_map = getattr(self, "_cache_map", None)
        kind = "" if cache_map is None else f" cache_map={type(cache_map).__name__}"
        return f"<{type(self).__name__}{shown}{kind}>"

    @property
    def cache_map(self) -> CacheMap[Any, V]:
        """The cache map this loader memoises its futures in."""
        return self._cache_map

    @property
    def stats(self) -> LoaderStats:
        """A snapshot of this loader's counters (see :class:`LoaderStats`).

        >>> loader.stats.batches
        1
        """
        return self._counts.snapshot()

    # -- the public API --------------------------------------------------

    def load(self, key: K) -> asyncio.Future[V]:
        """Load one key; return a future of its value.

        >>> user = await users.load(1)

        Every caller gets a future of its own, so that cancelling one caller
        cancels nobody else's load: while the key is in flight, a second load
        gets a new future that settles with the first; once it has settled,
        loads return the cached future itself until the key is cleared.
        Raises ``TypeError`` for ``None`` or for a cache key that is
        unhashable, and ``RuntimeError`` outside a running event loop or from
        a second event loop.
        """
        if key is None:
            raise TypeError(
                "The loader.load() function must be called with a value, but got: None."
            )
        cache_key: Hashable = key if self._key_fn is None else self._key_fn(key)
        try:
            future = self._get(cache_key)
        except TypeError:
            error = _unhashable_error(cache_key)
            if error is None:
                raise
            raise error from None
        if future is not None:
            if not future.done():
                followers = self._followers.get(future)
                if followers is None:
                    return self._share(future, key)
                mine = self._new_future()
                followers.append(mine)
                self._counts.local_hits += 1
                return mine
            if not future.cancelled():
                self._counts.local_hits += 1
                return future
            # Cancelled by its caller before its batch settled, and left in
            # the cache until then: this load replaces it.
        return self._enqueue(key, cache_key)

    @overload
    def load_many(
        self, keys: Iterable[K], *, return_exceptions: Literal[False] = ...
    ) -> asyncio.Future[List[V]]: ...

    @overload
    def load_many(
        self, keys: Iterable[K], *, return_exceptions: bool
    ) -> asyncio.Future[List[Union[V, BaseException]]]: ...

    def load_many(
        self, keys: Iterable[K], *, return_exceptions: bool = False
    ) -> asyncio.Future[List[Any]]:
        """Load several keys; return one future of their values in key order.

        >>> a, b = await users.load_many([1, 2])

        The future settles when the last of the keys has: with the first
        failed key's exception (in key order), or with ``return_exceptions=
        True`` with a list holding each failed key's exception in its place
        (JavaScript's ``loadMany``).  Cancelling it cancels its loads, as
        cancelling an ``asyncio.gather`` does.  A ``str`` or ``bytes`` is
        refused: it is an iterable of characters, almost never a list of keys.
        """
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise TypeError(
                "The loader.load_many() function must be called with Iterable<key> "
                f"but got: {short_repr(keys)}."
                + (
                    " A str or bytes would load each of its characters; pass a "
                    "list of keys."
                    if isinstance(keys, (str, bytes))
                    else ""
                )
            )
        futures = [self.load(key) for key in keys]
        loop = futures[0].get_loop() if futures else self._bound_loop()
        return Gathering.of(loop, futures, return_exceptions)

    def clear(self: _Self, key: K) -> _Self:
        """Forget the cached value of *key*; return the loader for chaining.

        >>> users.clear(1).prime(1, updated_user)
        """
        if self._caching:
            self._cache_map.delete(self._cache_key(key))
        return self

    def clear_many(self: _Self, keys: Iterable[K]) -> _Self:
        """Forget the cached values of *keys*; return the loader for chaining.

        >>> users.clear_many([1, 2])
        """
        for key in keys:
            self.clear(key)
        return self

    def clear_all(self: _Self) -> _Self:
        """Forget every cached value; return the loader for chaining.

        With a shared cache map (Redis) this forgets the namespace for every
        process, not only for this loader.
        """
        if self._caching:
            self._cache_map.clear()
        return self

    def prime(
        self: _Self, key: K, value: Union[V, Exception], force: bool = False
    ) -> _Self:
        """Cache *value* for *key* unless the key is cached already; chainable.

        >>> users.prime(1, alice).prime(2, bob, force=True)

        An ``Exception`` value caches a rejection.  ``force=True`` replaces
        what the key holds (as ``clear(key).prime(key, value)`` does); a load
        of the key already in flight still settles its callers with what the
        batch function returns.
        """
        if not self._caching:
            return self
        cache_key = self._cache_key(key)
        if not force:
            existing = self._cache_map.get(cache_key)
            if existing is not None and not existing.cancelled():
                return self
        future: asyncio.Future[V] = self._bound_loop().create_future()
        if isinstance(value, Exception):
            future.set_exception(value)
            # A primed rejection nobody loads is not an unhandled error.
            future.exception()
        else:
            future.set_result(value)
        self._cache_map.set(cache_key, future)
        return self

    def prime_many(
        self: _Self, values: Mapping[K, Union[V, Exception]], force: bool = False
    ) -> _Self:
        """Prime every key of *values* with its value; chainable.

        >>> users.prime_many({1: alice, 2: bob})
        """
        for key, value in values.items():
            self.prime(key, value, force)
        return self

    # -- helpers of the public API ---------------------------------------

    def _cache_key(self, key: K) -> Hashable:
        cache_key = key if self._key_fn is None else self._key_fn(key)
        error = _unhashable_error(cache_key)
        if error is not None:
            raise error
        return cache_key

    def _bind(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        self._loop = loop
        # None when the loop's create_future is asyncio's own: _new_future
        # then makes the same asyncio.Future without that method's frame.
        self._create_future: Optional[Callable[[], asyncio.Future[Any]]] = (
            None
            if loop is None or type(loop).create_future is _BASE_CREATE_FUTURE
            else loop.create_future
        )

    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None and not self._loop.is_closed():
                return self._loop
            raise RuntimeError(
                "DataLoader must be used from a coroutine or callback running in "
                "an asyncio event loop; no event loop is running."
            ) from None
        if loop is self._loop:
            return loop
        old = self._loop
        if old is not None and not old.is_closed():
            raise RuntimeError(
                f"{self!r} is bound to event loop {old!r}, which is still open, "
                f"and was used from another event loop {loop!r}. A DataLoader "
                "holds futures of one event loop: create one loader per loop "
                "(per request)."
            )
        # First use, or the old loop is closed (a test suite's loop per test):
        # bind to this loop; nothing queued on the dead loop can ever run.
        self._bind(loop)
        self._batch = None
        self._followers = {}
        return loop

    def _new_future(self) -> asyncio.Future[V]:
        make = self._create_future
        return asyncio.Future(loop=self._loop) if make is None else make()

    def _share(self, future: asyncio.Future[V], key: K) -> asyncio.Future[V]:
        """The first load that finds *future* in flight: start its followers.

        Later loads of the key join the list directly (in ``load``).
        """
        loop = future.get_loop()
        if loop is not self._loop or loop.is_closed():
            # Left over from a closed loop, so it will never settle (or not
            # of this loader's loop at all): load the key anew.
            return self._enqueue(key, self._cache_key(key))
        mine = self._new_future()
        self._followers[future] = [mine]
        future.add_done_callback(functools.partial(self._fan_out, key))
        self._counts.local_hits += 1
        return mine

    def _fan_out(self, key: K, future: asyncio.Future[V]) -> None:
        """*future* settled: copy its outcome to the loads that followed it."""
        followers = self._followers.pop(future, [])
        if not future.cancelled():
            _copy_outcome(future, followers)
            return
        # The first caller was cancelled; the followers were not, and still
        # want the value: load it again, once for all of them.
        waiting = [follower for follower in followers if not follower.done()]
        if not waiting:
            return
        try:
            again = self.load(key)
        except Exception as error:
            for follower in waiting:
                follower.set_exception(error)
            return
        again.add_done_callback(functools.partial(_copy_outcome, targets=waiting))

    # -- a batch's life ----------------------------------------------------

    def _enqueue(self, key: K, cache_key: Hashable) -> asyncio.Future[V]:
        """Queue a load that missed the cache (cache_key is unused without cache)."""
        batch = self._batch
        if batch is None or len(batch.keys) == self._limit:
            batch = self._new_batch()
        future = self._new_future()
        if self._caching:
            # First: a cache map that refuses the key (raising) leaves
            # nothing queued.
            self._set(cache_key, future)
        if self._key_fn is not None:
            batch.cache_keys.append(cache_key)
        batch.keys.append(key)
        batch.futures.append(future)
        self._counts.local_misses += 1
        return future

    def _new_batch(self) -> _Batch:
        # The loop is checked once per batch, not per load: on Python 3.11 and
        # older, asyncio.get_running_loop() makes a getpid() system call.
        loop = self._bound_loop()
        batch = _Batch(loop, self._key_fn is None)
        callback = functools.partial(self._dispatch_batch, batch)
        if self._schedule is None:
            loop.call_soon(callback)
        else:
            self._schedule(callback)
        # Only a batch whose dispatch is scheduled may collect loads: if
        # batch_schedule_fn raised, later loads would join it and wait
        # forever.
        self._batch = batch
        return batch

    def _dispatch_batch(self, batch: _Batch) -> None:
        """The scheduled callback: start the task that runs the batch."""
        loop = batch.loop
        if loop.is_closed():
            return
        starting = [True]  # true while an eager task factory runs the first step
        task = loop.create_task(self._run_batch(batch, starting))
        starting[0] = False
        # The event loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: _Batch, starting: List[bool]) -> None:
        keys, cache_keys, futures = batch.keys, batch.cache_keys, batch.futures
        try:
            try:
                if starting[0]:
                    # asyncio.eager_task_factory runs this first step inside
                    # create_task, in the turn of the dispatch callback: close
                    # the batch one turn later all the same.
                    await asyncio.sleep(0)
            finally:
                # Closed: loads from now on go to a new batch.
                if self._batch is batch:
                    self._batch = None
            if not futures:
                return  # its only load was refused by the cache map's set
            # All futures of a batch come from one loop's create_future.
            if any(map(type(futures[0]).done, futures)):
                # Loads cancelled before dispatch are not loaded at all.
                keys, cache_keys, futures = self._drop_done(keys, cache_keys, futures)
                if not keys:
                    return
            stale: Optional[Dict[int, Any]] = None
            if self._remote is not None:
                keys, cache_keys, futures, stale = await self._read_through(
                    self._remote, keys, cache_keys, futures
                )
                if not keys:
                    return
            counts = self._counts
            counts.batches += 1
            counts.batched_keys += len(keys)
            if len(keys) > counts.max_batch:
                counts.max_batch = len(keys)
            with batch_span(self.name, len(keys)):
                loading = self.batch_load_fn(list(keys))
                if not inspect.isawaitable(loading):
                    raise _not_awaitable_error(loading)
                # Inside the span: a result breaking the contract is its error.
                values = _check_result(await loading, keys)
        except Exception as error:
            self._failed_dispatch(cache_keys, futures, error, stale)
            return
        except BaseException as error:
            # Cancelled, KeyboardInterrupt, SystemExit: still settle every
            # load, or its callers would wait forever.
            interrupted = RuntimeError(
                f"The batch function of {self!r} was interrupted by "
                f"{type(error).__name__} before it returned; keys: "
                f"{short_repr(keys)}."
            )
            interrupted.__cause__ = error
            self._failed_dispatch(cache_keys, futures, interrupted, stale)
            if isinstance(error, _PROPAGATE):
                raise
            # Nobody awaits this task: any other BaseException would surface
            # only as 'Task exception was never retrieved' when it is garbage
            # collected.  Every load of the batch carries it as __cause__.
            return
        try:
            if self._remote is not None:
                await self._write_back(self._remote, cache_keys, values)
        finally:
            # Even if this task is cancelled while writing back.  A key that
            # failed but has a stale value serves that (the stale value is
            # not written back: the tier holds it already).
            if stale:
                values = _with_stale(values, stale)
            self._settle(cache_keys, futures, values)

    def _drop_done(
        self,
        keys: List[Any],
        cache_keys: List[Hashable],
        futures: List[asyncio.Future[V]],
    ) -> Tuple[List[Any], List[Hashable], List[asyncio.Future[V]]]:
        kept = []
        for i, future in enumerate(futures):
            if not future.done():
                kept.append(i)
            else:
                self._forget(cache_keys[i], future)  # cancelled by its caller
        return (
            [keys[i] for i in kept],
            [cache_keys[i] for i in kept],
            [futures[i] for i in kept],
        )

    async def _read_through(
        self,
        remote: RemoteTier[Any, V],
        keys: List[Any],
        cache_keys: List[Hashable],
        futures: List[asyncio.Future[V]],
    ) -> Tuple[
        List[Any], List[Hashable], List[asyncio.Future[V]], Optional[Dict[int, Any]]
    ]:
        """Answer what the remote tier holds; return the keys still to load,
        and the stale values to serve for those of them whose load fails (by
        their place in the keys returned)."""
        try:
            found = await remote.get_many(cache_keys)
            if len(found) != len(cache_keys):
                raise ValueError(
                    f"the remote tier answered {len(found)} values for "
                    f"{len(cache_keys)} keys"
                )
        except Exception as error:
            self._remote_failed("read", error)
            self._counts.remote_misses += len(cache_keys)
            return keys, cache_keys, futures, None
        todo: List[int] = []
        leased: List[int] = []
        stale: Optional[Dict[int, Any]] = None
        refreshes: List[Tuple[Any, Refresh]] = []
        for i, value in enumerate(found):
            if value is MISS:
                todo.append(i)
                continue
            cls = type(value)
            if cls in _TIER_ANSWERS:  # (one test for the plain values)
                if cls is Leased:
                    leased.append(i)
                    continue
                if cls is Stale:
                    if stale is None:
                        stale = {}
                    stale[len(todo)] = value.value
                    todo.append(i)
                    continue
                refreshes.append((keys[i], value))  # a Refresh
                value = value.value
            future = futures[i]
            if not future.done():
                future.set_result(value)
            else:
                self._forget(cache_keys[i], future)  # cancelled meanwhile
        if leased:
            waits = _Waits(self, keys, cache_keys, futures)
            for i in leased:
                waits.add(found[i].awaitable, i)
        if refreshes:
            self._refresh(refreshes)
        self._counts.remote_hits += len(found) - len(todo) - len(leased)
        self._counts.remote_misses += len(todo)
        if len(todo) == len(keys):
            return keys, cache_keys, futures, stale
        return (
            [keys[i] for i in todo],
            [cache_keys[i] for i in todo],
            [futures[i] for i in todo],
            stale,
        )

    def _refresh(self, refreshes: List[Tuple[Any, Refresh]]) -> None:
        """Load again, in the background, keys served now but about to go stale."""
        task = asyncio.get_running_loop().create_task(self._run_refresh(refreshes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_refresh(self, refreshes: List[Tuple[Any, Refresh]]) -> None:
        keys = [key for key, _ in refreshes]
        counts = self._counts
        counts.batches += 1
        counts.batched_keys += len(keys)
        try:
            with batch_span(self.name, len(keys)):
                loading = self.batch_load_fn(list(keys))
                if not inspect.isawaitable(loading):
                    raise _not_awaitable_error(loading)
                values = _check_result(await loading, keys)
        except Exception as error:
            # Nobody waits for it: the values served stay until they go stale.
            counts.failed_batches += 1
            logger.debug("%r: a refresh-ahead batch failed: %r", self, error)
            return
        for (_, refresh), value in zip(refreshes, values):
            if not isinstance(value, Exception):
                refresh.store(value)

    def _leased_done(self, waits: _Waits[V], i: int, value: Any) -> None:
        """A key another loader was loading, for load *i* of *waits*, is
        done with *value*: settle the load with it, or load the key here."""
        future = waits.futures[i]
        if future.done():
            self._forget(waits.cache_keys[i], future)  # cancelled by its caller
        elif type(value) is Takeover and not value.claim():
            # Another load waiting for the key loads it: wait for that one.
            waits.add(value.awaitable, i)
        elif value is MISS or type(value) is Takeover:
            # The other load failed or took too long: load it here, in a
            # batch of this loader's own (which asks the tier again), in the
            # context the batch that waited had.
            self._counts.remote_misses += 1
            waits.context.run(self._requeue, waits.keys[i], waits.cache_keys[i], future)
        else:
            self._counts.remote_hits += 1
            future.set_result(value)

    def _requeue(
        self, key: Any, cache_key: Hashable, future: asyncio.Future[V]
    ) -> None:
        """Queue a load whose future is in the cache map already (as the end
        of _enqueue does)."""
        batch = self._batch
        if batch is None or len(batch.keys) == self._limit:
            batch = self._new_batch()
        if self._key_fn is not None:
            batch.cache_keys.append(cache_key)
        batch.keys.append(key)
        batch.futures.append(future)

    async def _write_back(
        self,
        remote: RemoteTier[Any, V],
        cache_keys: List[Hashable],
        values: Sequence[Any],
    ) -> None:
        items = [
            (cache_key, value)
            for cache_key, value in zip(cache_keys, values)
            if not isinstance(value, Exception)
        ]
        if not items:
            return
        try:
            await remote.set_many(items)
        except Exception as error:
            self._remote_failed("write", error)

    def _remote_failed(self, what: str, error: Exception) -> None:
        self._counts.remote_errors += 1
        # A tier raising RemoteTierError has logged the outage itself, once;
        # logging it again here would log it once per batch.
        log = logger.debug if isinstance(error, RemoteTierError) else logger.warning
        log(
            "%r: remote cache %s failed; loading from the batch function: %s",
            self,
            what,
            error,
        )

    def _settle(
        self,
        cache_keys: List[Hashable],
        futures: List[asyncio.Future[V]],
        values: Sequence[Any],
    ) -> None:
        for cache_key, future, value in zip(cache_keys, futures, values):
            if future.done():
                # Cancelled by its caller while the batch ran.
                self._forget(cache_key, future)
            elif isinstance(value, Exception):
                self._reject(cache_key, future, value)
            else:
                future.set_result(value)

    def _reject(
        self, cache_key: Hashable, future: asyncio.Future[V], error: Exception
    ) -> None:
        future.set_exception(error)
        if not self._caches(error):
            self._forget(cache_key, future)

    def _caches(self, error: Exception) -> bool:
        """Apply the cache_exceptions policy to a per-key exception."""
        policy = self._cache_exceptions
        if isinstance(policy, bool):
            return policy
        try:
            return bool(policy(error))
        except Exception:
            # A broken predicate must not leave the rest of the batch
            # unsettled; not caching is the choice that heals itself.
            logger.exception(
                "%r: cache_exceptions raised for %r; not caching it", self, error
            )
            return False

    def _failed_dispatch(
        self,
        cache_keys: List[Hashable],
        futures: List[asyncio.Future[V]],
        error: Exception,
        stale: Optional[Dict[int, Any]] = None,
    ) -> None:
        """Reject every load of the batch and cache none of them.

        The failure belongs to the batch, not to any key, so the next load of
        any of these keys tries again.  A load with a *stale* value (by its
        place in the batch) is settled with it instead, and stays cached.
        """
        self._counts.failed_batches += 1
        for i, (cache_key, future) in enumerate(zip(cache_keys, futures)):
            if future.done():
                self._forget(cache_key, future)  # cancelled by its caller
            elif stale and i in stale:
                future.set_result(stale[i])
            else:
                self._forget(cache_key, future)
                future.set_exception(error)

    def _forget(self, cache_key: Hashable, future: asyncio.Future[V]) -> None:
        """Drop a load that failed, was cancelled or whose error is not cached.

        Only if the map still holds this future: a clear() and a new load may
        have replaced it, and the new one must stay.  None of these values was
        ever written to a remote tier, so only the local entry goes.  A loader
        that does not cache has nothing to drop.
        """
        if not self._caching:
            return
        if self._remote is not None:
            self._remote.discard(cache_key, future)
        elif self._cache_map.get(cache_key) is future:
            self._cache_map.delete(cache_key)


class _Waits(Generic[V]):
    """The loads of one batch that wait for keys other loaders are loading
    (answered :class:`Leased`), alongside the batch's own call of the batch
    function."""

    __slots__ = ("cache_keys", "context", "futures", "keys", "loader")

    def __init__(
        self,
        loader: DataLoader[Any, V],
        keys: List[Any],
        cache_keys: List[Hashable],
        futures: List[asyncio.Future[V]],
    ) -> None:
        self.loader = loader
        self.keys = keys
        self.cache_keys = cache_keys
        self.futures = futures
        # Where a done callback would have copied it, once per wait.
        self.context = contextvars.copy_context()

    def add(self, waiting: Awaitable[Any], i: int) -> None:
        """Settle load *i* once *waiting* is done."""
        if not isinstance(waiting, asyncio.Future):
            # (A future is taken as it is: ensure_future's loop check costs
            # more than the rest of a wait, and a stampede has thousands.)
            waiting = asyncio.ensure_future(waiting, loop=self.futures[i].get_loop())
        waiters = _waiters.get(waiting)
        if waiters is None:
            waiters = _waiters[waiting] = _Waiters()
            # (Run in a context of its own: each load's own is entered
            # where it matters, and a context cannot be entered twice.)
            waiting.add_done_callback(waiters, context=contextvars.Context())
        waiters.waits.append(self)
        waiters.places.append(i)


class _Waiters:
    """Every load of the process that waits for one future, of any loader: the
    future's one done callback.

    A stampede's waits are counted in tens of thousands per process: a done
    callback per load would cost a partial, a bound method, a copied context
    and a scheduled handle for each, and the garbage collector would go
    through every one of them, where this costs two list slots.
    """

    __slots__ = ("places", "waits")

    def __init__(self) -> None:
        self.waits: List[_Waits[Any]] = []
        self.places: List[int] = []

    def __call__(self, waiting: asyncio.Future[Any]) -> None:
        _waiters.pop(waiting, None)
        value = MISS
        if not waiting.cancelled() and waiting.exception() is None:
            value = waiting.result()
        for waits, i in zip(self.waits, self.places):
            try:
                waits.loader._leased_done(waits, i, value)
            except Exception as error:  # a cache map's discard, say
                # As the event loop does with a done callback that raises:
                # report it, and go on with the others.
                waiting.get_loop().call_exception_handler(
                    {
                        "message": f"{waits.loader!r}: settling a waited load failed",
                        "exception": error,
                        "future": waiting,
                    }
                )


#: The futures loads of this process wait for (see _Waits), and their loads.
_waiters: weakref.WeakKeyDictionary[asyncio.Future[Any], _Waiters] = (
    weakref.WeakKeyDictionary()
)


def _copy_outcome(
    source: asyncio.Future[Any], targets: List[asyncio.Future[Any]]
) -> None:
    """Settle each of *targets* that is still pending as *source* settled."""
    if source.cancelled():
        for target in targets:
            if not target.done():
                target.cancel()
        return
    # Read the exception even when no target is left: the source may be a
    # reload that only these followers wait on, and asyncio would report its
    # exception as never retrieved.
    error = source.exception()
    for target in targets:
        if target.done():
            continue
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(source.result())


# -- construction helpers: each decides one option, with one message ----------


def _check_batch_load_fn(loader: DataLoader[Any, Any]) -> None:
    batch_load_fn = getattr(loader, "batch_load_fn", None)
    if not callable(batch_load_fn):
        raise TypeError(
            "DataLoader must be constructed with a batch_load_fn, an async "
            "function which accepts a list of keys and returns a list of values "
            "of the same length (or a mapping from key to value), or subclassed "
            f"with an async batch_load_fn method, but got {batch_load_fn!r}."
        )


def _valid_limit(
    loader: DataLoader[Any, Any], batch: Optional[bool], max_batch_size: Optional[int]
) -> Optional[int]:
    """The most keys per batch call: 1 without batching, else max_batch_size."""
    # Arguments over class attributes, as with aiodataloader (which copies the
    # arguments onto the instance; here they stay out of its __dict__).
    if not (loader.batch if batch is None else batch):
        return 1
    limit = loader.max_batch_size if max_batch_size is None else max_batch_size
    limit = count("max_batch_size", limit, none=True)
    return limit


def _valid_cache_key_fn(
    loader: DataLoader[K, Any],
    cache_key_fn: Optional[Callable[[K], Hashable]],
    get_cache_key: Optional[Callable[[K], Hashable]],
) -> Optional[Callable[[K], Hashable]]:
    """The key function, None when keys are their own cache keys.

    Sets ``loader.get_cache_key`` (to the key itself without a key function)
    unless it is a method of the loader's class, as aiodataloader does.
    """
    if cache_key_fn is not None and get_cache_key is not None:
        raise TypeError("Pass cache_key_fn or its alias get_cache_key, not both.")
    key_fn = cache_key_fn if cache_key_fn is not None else get_cache_key
    from_class = key_fn is None
    if from_class:
        key_fn = getattr(loader, "get_cache_key", None)
    if key_fn is not None and not callable(key_fn):
        raise TypeError(f"cache_key_fn must be callable, but got {key_fn!r}.")
    if key_fn is None:
        loader.get_cache_key = _same_key
    elif not from_class:
        loader.get_cache_key = key_fn
    return key_fn


def _same_key(key: K) -> K:
    """The cache key of a loader without ``cache_key_fn``: the key itself."""
    return key


def _remote_tier(cache_map: CacheMap[Any, V]) -> Optional[RemoteTier[Any, V]]:
    if callable(getattr(cache_map, "get_many", None)):
        return cast("RemoteTier[Any, V]", cache_map)
    return None


def _valid_cache_exceptions(
    loader: DataLoader[Any, Any],
    cache_exceptions: Union[bool, Callable[[Exception], bool], None],
) -> Union[bool, Callable[[Exception], bool]]:
    if cache_exceptions is None:
        # Read through the class: a predicate set as a class attribute must
        # not become a bound method.
        cache_exceptions = _class_attribute(type(loader), "cache_exceptions")
        if isinstance(cache_exceptions, staticmethod):
            cache_exceptions = cache_exceptions.__func__
    if not isinstance(cache_exceptions, bool) and not callable(cache_exceptions):
        raise TypeError(
            "cache_exceptions must be a bool or a callable taking the "
            f"exception, but got {cache_exceptions!r}."
        )
    return cache_exceptions


def _class_attribute(cls: type, name: str) -> Any:
    """*name* as the class defines it, unbound (what inspect.getattr_static
    finds on a class, for a tenth of the time)."""
    for base in cls.__mro__:
        if name in base.__dict__:
            return base.__dict__[name]
    raise AttributeError(name)


def _valid_batch_schedule_fn(
    batch_schedule_fn: Optional[Callable[[Callable[[], None]], Any]],
) -> Optional[Callable[[Callable[[], None]], Any]]:
    if batch_schedule_fn is not None and not callable(batch_schedule_fn):
        raise TypeError(
            f"batch_schedule_fn must be callable, but got {batch_schedule_fn!r}."
        )
    return batch_schedule_fn


def _deprecated_loop(
    loop: Optional[asyncio.AbstractEventLoop],
) -> Optional[asyncio.AbstractEventLoop]:
    if loop is not None:
        warnings.warn(
            "DataLoader(loop=...) is deprecated and unnecessary: a loader "
            "binds to the running event loop the first time it is used.",
            DeprecationWarning,
            stacklevel=3,
        )
    return loop


# -- errors and results ---------------------------------------------------------

# Exceptions a batch task must let through once its loads are settled:
# cancellation, and the ones asyncio itself re-raises out of the event loop.
_PROPAGATE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


def _with_stale(values: Sequence[Any], stale: Dict[int, Any]) -> List[Any]:
    """*values*, with the stale value in place of each failed key that has one."""
    served = list(values)
    for i, value in stale.items():
        if isinstance(served[i], Exception):
            served[i] = value
    return served


def _unhashable_error(cache_key: object) -> Optional[TypeError]:
    """The error for an unhashable cache key; None if *cache_key* is hashable."""
    try:
        hash(cache_key)
    except TypeError:
        return TypeError(
            f"cache key {short_repr(cache_key)} is unhashable; pass "
            "cache_key_fn= to map it to a hashable key."
        )
    return None


def _not_awaitable_error(returned: object) -> TypeError:
    return TypeError(
        "DataLoader must be constructed with a function which accepts a list of "
        "keys and returns an awaitable of a list of values of the same length "
        "(or a mapping from key to value), but the function returned "
        f"{short_repr(returned)}, which is not awaitable; make it an async "
        "function."
    )


def _check_result(result: Any, keys: List[Any]) -> Sequence[Any]:
    """Return the values aligned with *keys*, or raise a TypeError saying why not."""
    # What nearly every batch function returns, checked without the three
    # isinstance() calls against ABCs below (a microsecond per batch).
    if type(result) is list and len(result) == len(keys):
        return result
    if isinstance(result, Mapping):
        get = result.get
        try:
            return [get(key) for key in keys]
        except TypeError as error:
            raise TypeError(
                "The batch function returned a mapping, but the keys it was given "
                f"are not hashable ({error}); return a list aligned with the keys "
                "instead."
            ) from None
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise TypeError(
            "DataLoader must be constructed with a function which accepts a list "
            "of keys and returns an awaitable of a list of values of the same "
            "length (or a mapping from key to value), but the function returned "
            f"{short_repr(result)} for keys {short_repr(keys)}."
        )
    values = result if isinstance(result, Sequence) else list(result)
    if len(values) != len(keys):
        raise TypeError(
            "DataLoader must be constructed with a function which accepts a list "
            "of keys and returns an awaitable of a list of values of the same "
            f"length as the list of keys, but it returned {len(values)} values "
            f"for {len(keys)} keys.\n\nKeys:\n{short_repr(keys)}\n\n"
            f"Values:\n{short_repr(values)}"
        )
    return values


# -- the C translations ---------------------------------------------------------

#: The per-load methods ``_speedups`` translates, as this module defines them:
#: tests build a loader with these on a C-extension build, so that one process
#: holds the two to the same behaviour.
PYTHON_METHODS: Dict[str, Callable[..., Any]] = {
    name: DataLoader.__dict__[name]
    for name in ("load", "_enqueue", "_new_future", "_settle")
}

if _speedups is not None:
    # The C translations take the place of the Python above; everything they
    # call back (_share, _new_batch, _reject, _forget) stays the Python.
    _speedups._setup(_unhashable_error)
    for _name in PYTHON_METHODS:
        setattr(DataLoader, _name, getattr(_speedups.LoaderCore, _name))
