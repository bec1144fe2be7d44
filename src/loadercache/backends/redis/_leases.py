"""Fleet-wide single flight: leases on missed keys, and waits on other holders.

When a batch's keys miss in Redis, the store leases them before the batch
function runs, in one round trip for the batch (the ``ACQUIRE`` script of
:mod:`loadercache.backends.redis._scripts`): the key itself holds the lease,
``"?" | generation | holder | nonce``, for ``lease_ttl`` seconds.  For each
key the answer is a value (someone filled it meanwhile), a lease now held by
this store (only those keys go to the batch function), or a lease held by
another process.  The holder writes the value back *fenced*: only if the key
still holds its lease (``SET ... IFEQ`` where the server has it, the
``FENCED_SET`` script elsewhere), so a ``clear`` or a ``prime`` made by any
process while it loaded, which replaced the lease, wins.

A key leased elsewhere is *waited for*, not loaded: its load gets a
:class:`~loadercache.cache.Leased` answer that completes when the holder's
value lands.  The wake-up comes from Redis itself, through server-assisted
client tracking (``CLIENT TRACKING ON OPTIN`` on the store's RESP3
connection; broadcast mode on the store's prefix when it has a near cache):
the store re-reads the waited keys with ``CLIENT CACHING YES``, and Redis
pushes an invalidation the moment any of them changes (filled, cleared,
deleted), upon which it reads them again.  No polling.  A wait ends
with the value; or, when the key turns out free (its holder failed and
released it, or died and its lease expired) or after ``lease_wait`` seconds,
with a :class:`~loadercache.cache.Takeover`: this process then loads the key
itself, leasing it first.  Once per process, not once per waiting request:
every load that waited gets the same Takeover, the first to claim it loads
the key, and the first read of the key to answer after that (the claimer's,
as a rule) settles the others, with its value, or with the wait on the lease
it took or found.  A claim whose load is dropped before its batch reads the
key (cancelled: the map's ``discard`` tells), or whose read fails, ends in
MISS, and so does one that no read answers within ``lease_ttl``: every
waiting load then loads the key itself, as before.

A lease that expires is not a change Redis announces: the key is deleted,
and the invalidation pushed, only when something reads it or when the
server's active expire cycle samples it, ``hz`` times a second, among all
the keys with a TTL, and stops once few of its samples have expired.  A
dead holder's thousand leases in a database of other volatile keys can take
many cycles, or minutes.  So each re-read also asks each key's ``PTTL``, and
a wait holds one timer, due just after its lease can at the earliest have
expired: it reads the key again, which expires it at once (and pushes the
invalidation to every other waiter).  If the holder renewed the lease
meanwhile, that read finds the new TTL and sets the timer again, once per
renewal at most.

Keys leased by *this* store are waited for in-process: a second request that
misses a key another request of the process is loading joins that load.

A batch that fails (the batch function raises, a key's exception is not
cached, the batch is cancelled) releases its leases at once (``RELEASE``),
and a slow one renews them every third of ``lease_ttl`` (``RENEW``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Container,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from loadercache.backends.redis._envelope import (
    LeaseMark,
    Mismatch,
    Opened,
    lease_marker,
    new_token,
)
from loadercache.backends.redis._link import RoundTripError, Unusable
from loadercache.backends.redis._namespace import Namespace
from loadercache.backends.redis._resp import Push, ReplyError
from loadercache.backends.redis._scripts import (
    ACQUIRE,
    RELEASE,
    RENEW,
    Script,
    is_noscript,
)
from loadercache.cache import MISS, Leased, Refresh, Stale, Takeover

if TYPE_CHECKING:
    from loadercache.backends.redis._store import RedisStore

__all__ = ["LeaseFailure", "LeaseRefused", "Leases"]

T = TypeVar("T")

#: A lease: the namespace and the marker the key holds while this store has it.
Lease = Tuple[Namespace, bytes]


class _Held:
    """A key this store has leased: its marker, and local waiters for its value."""

    __slots__ = ("marker", "namespace", "value", "waiters")

    def __init__(self, namespace: Namespace, marker: bytes) -> None:
        self.namespace = namespace
        self.marker = marker
        # The payload's future (see _shared), and the value's.
        self.waiters: List[asyncio.Future[Any]] = []
        self.value: Optional[asyncio.Future[Any]] = None


class _Wait:
    """A key another process has leased, and this process's loads waiting for it."""

    __slots__ = ("deadline", "due", "namespace", "value", "waiters")

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.waiters: List[asyncio.Future[Any]] = []
        self.value: Optional[asyncio.Future[Any]] = None
        #: When it stops waiting (``lease_wait``): the loads load the key.
        self.deadline: Optional[asyncio.TimerHandle] = None
        #: When the lease it waits for can first have expired: read it again.
        self.due: Optional[asyncio.TimerHandle] = None


class _Claim:
    """A key handed over (a Takeover): what the loads that did not claim it
    wait for, until the next read of the key answers."""

    __slots__ = ("deadline", "future")

    def __init__(
        self, future: asyncio.Future[Any], deadline: asyncio.TimerHandle
    ) -> None:
        self.future = future
        self.deadline = deadline


class Leases:
    """This store's leases, and its waits on other holders' (see the module docs)."""

    def __init__(self, store: RedisStore, *, ttl: float, wait: float) -> None:
        self.store = store
        self.ttl = ttl
        self.ttl_px = max(1, int(ttl * 1000))
        self.wait = wait
        #: Who this store is to the other processes: in every lease it takes.
        self.holder = os.urandom(8)
        self._nonces = itertools.count()
        self.held: Dict[bytes, _Held] = {}
        self.waits: Dict[bytes, _Wait] = {}
        #: Keys handed over to one of their waiting loads, and not read since.
        self.claims: Dict[bytes, _Claim] = {}
        # Waited keys to read again (tracked), sent once per loop turn.
        self._rereads: Dict[str, Tuple[Namespace, Set[bytes]]] = {}
        self._reread_handle: Optional[asyncio.Handle] = None
        self._renew_handle: Optional[asyncio.TimerHandle] = None
        # Scripts the server has not got yet are sent by their source.
        self._by_source = False
        # Releases and renewals in the background, awaited by close().
        self._tasks: Set[asyncio.Task[Any]] = set()

    # -- leasing -----------------------------------------------------------

    async def acquire(
        self, namespace: Namespace, rkeys: Sequence[bytes], opened: Opened
    ) -> Tuple[bytes, List[Any]]:
        """Lease the free keys of *rkeys*: the generation, and per key the answer.

        The answer is None (leased now, by this store), a value of this
        generation, a :class:`LeaseMark` (another holder), or MISS (a stored
        value that does not decode: load it, unfenced).
        """
        store = self.store
        envelope = store._envelope
        gen_value = envelope.generation(namespace.gen_key, new_token())
        nonce = next(self._nonces)
        # The script puts the generation it finds before holder and nonce.
        suffix = lease_marker(b"", self.holder, nonce)[1:]
        args = [
            gen_value,
            b"" if store._gen_px is None else store._gen_px,
            suffix,
            self.ttl_px,
        ]
        keys = [namespace.gen_key, *rkeys]
        parse = _AcquireParse(namespace, rkeys, store, opened)
        gen, answers = await self._call(ACQUIRE, keys, args, parse)
        marker = lease_marker(gen, self.holder, nonce)
        for rkey, answer in zip(rkeys, answers):
            if answer is None:
                self.held[rkey] = _Held(namespace, marker)
                store._stats.leases += 1
        if self.held:
            self._schedule_renew()
        return gen, answers

    def marker(self, rkey: bytes) -> Optional[bytes]:
        """The marker *rkey* holds if this store leased it, else None."""
        held = self.held.get(rkey)
        return held.marker if held is not None else None

    def filled(self, rkey: bytes, payload: bytes) -> None:
        """This store loaded *rkey* and is writing it back: its local waiters
        get the value now."""
        held = self.held.pop(rkey, None)
        if held is not None:
            self._resolve(held.waiters, payload)

    def release(self, rkeys: Sequence[bytes]) -> None:
        """This store will not write *rkeys* back: free them at once."""
        by_namespace: Dict[str, Tuple[Namespace, List[bytes], List[bytes]]] = {}
        for rkey in rkeys:
            held = self.held.pop(rkey, None)
            if held is None:
                continue
            self._hand_over(rkey, held.value)
            self._resolve(held.waiters, None)
            entry = by_namespace.setdefault(
                held.namespace.name, (held.namespace, [], [])
            )
            entry[1].append(rkey)
            entry[2].append(held.marker)
        for _, keys, markers in by_namespace.values():
            self._fire(RELEASE, keys, markers)

    def unwritten(self, leases: Sequence[Tuple[bytes, bytes]]) -> None:
        """Fenced writes of (key, marker) whose round trip failed: the keys
        may still hold the leases, which would make every other loader wait
        out their TTL.  Free them (if Redis is back, at once; else they
        expire)."""
        for rkey, marker in leases:
            self._fire(RELEASE, [rkey], [marker])

    # -- waiting -------------------------------------------------------------

    def wait_local(self, rkey: bytes) -> Optional[asyncio.Future[Any]]:
        """A future of the value of *rkey*, which this store is loading; None
        if it is not (any more).  MISS: load it yourself."""
        held = self.held.get(rkey)
        if held is None:
            return None
        self.store._stats.lease_waits += 1
        return self._shared(held)

    def wait_remote(self, namespace: Namespace, rkey: bytes) -> asyncio.Future[Any]:
        """A future of the value of *rkey*, which another process is loading.

        It completes with the value, or MISS: load it yourself.
        """
        wait = self.waits.get(rkey)
        if wait is None:
            loop = asyncio.get_running_loop()
            wait = self.waits[rkey] = _Wait(namespace)
            wait.deadline = loop.call_later(self.wait, self._expired, rkey)
            self._reread(namespace, rkey)
        self.store._stats.lease_waits += 1
        return self._shared(wait)

    def _shared(self, owner: Union[_Held, _Wait]) -> asyncio.Future[Any]:
        # Every load of the process waiting for one key shares one future of
        # its value, decoded once: a wait costs a done callback, not a
        # future, a decode and three callbacks (waits of a stampede are
        # counted in tens of thousands per process).
        value = owner.value
        if value is None or value.cancelled():  # (nobody should cancel it)
            payload: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            owner.waiters.append(payload)
            value = owner.value = _decoded(payload, self.store.serializer.loads)
        return value

    def pushed(self, frame: Push) -> None:
        """A RESP3 push: an invalidation of waited keys means: read them again."""
        if len(frame) < 2 or frame[0] != b"invalidate":
            return
        keys = frame[1]
        if keys is None:  # everything (a FLUSHALL, the tracking table full)
            keys = list(self.waits)
        for rkey in keys:
            wait = self.waits.get(rkey) if isinstance(rkey, bytes) else None
            if wait is not None:
                self._reread(wait.namespace, rkey)

    def reconnected(self) -> None:
        """A new connection tracks nothing yet: read every waited key again."""
        for rkey, wait in list(self.waits.items()):
            self._reread(wait.namespace, rkey)

    def lost(self, error: RoundTripError) -> None:
        """The connection that tracked the waited keys is gone: read them again
        (through a new one; if Redis cannot be reached, the keys are taken
        over)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.reconnected()

    # -- helpers -----------------------------------------------------------

    def _resolve(self, waiters: List[asyncio.Future[Any]], payload: Any) -> None:
        for future in waiters:
            if not future.done():
                future.set_result(payload)

    def _end_wait(self, rkey: bytes, payload: Any, hand_over: bool = True) -> None:
        wait = self.waits.pop(rkey, None)
        if wait is None:
            return
        for timer in (wait.deadline, wait.due):
            if timer is not None:
                timer.cancel()
        if payload is None:
            self.store._stats.lease_takeovers += 1
            if hand_over:
                self._hand_over(rkey, wait.value)
        self._resolve(wait.waiters, payload)

    # -- handing a key over to one of its waiting loads ----------------------

    def _hand_over(self, rkey: bytes, value: Optional[asyncio.Future[Any]]) -> None:
        # The loads waiting on *value* take the key over: one of them loads
        # it, the others wait for the next read of it (see the module docs).
        if value is None or value.done() or rkey in self.claims:
            return  # (an open claim: those loads get MISS, and read it)
        loop = value.get_loop()
        after: asyncio.Future[Any] = loop.create_future()
        deadline = loop.call_later(self.ttl, self._end_claim, rkey, MISS)
        self.claims[rkey] = _Claim(after, deadline)
        value.set_result(Takeover(after))

    def answer_claims(
        self, rkeys: Sequence[bytes], values: Sequence[Any], leases: Container[bytes]
    ) -> None:
        """A read of *rkeys* answered *values* (having leased *leases*): the
        loads waiting for a claim of one of those keys get that answer."""
        claims = self.claims
        for rkey, value in zip(rkeys, values):
            if rkey not in claims:
                continue
            cls = type(value)
            if cls is Leased:
                answer: Any = value.awaitable  # wait on with the claimer
            elif cls is Refresh:
                answer = value.value
            elif value is MISS or cls is Stale:
                held = self.held.get(rkey) if rkey in leases else None
                answer = MISS if held is None else self._shared(held)
            else:
                answer = value
            self._end_claim(rkey, answer)

    def fail_claims(self, rkeys: Sequence[bytes]) -> None:
        """A read of *rkeys* failed, or a load of one of them was dropped:
        the loads waiting for a claim of one of them load it themselves."""
        if self.claims:
            for rkey in rkeys:
                self._end_claim(rkey, MISS)

    def _end_claim(self, rkey: bytes, answer: Any) -> None:
        claim = self.claims.pop(rkey, None)
        if claim is None:
            return
        claim.deadline.cancel()
        future = claim.future
        if future.done():
            return
        if isinstance(answer, asyncio.Future):
            answer.add_done_callback(functools.partial(_copy_value, future))
        else:
            future.set_result(answer)

    def _expired(self, rkey: bytes) -> None:
        # Waited long enough: take the key over (the loader loads it, leasing
        # it first, and so waits for nobody if the holder is alive but slow).
        self._end_wait(rkey, None)

    def _lease_due(self, rkey: bytes) -> None:
        # The lease may have expired: a read expires it now, where the
        # server's expire cycle might take many cycles to get to it.
        wait = self.waits.get(rkey)
        if wait is not None:
            wait.due = None
            self._reread(wait.namespace, rkey)

    def _reread(self, namespace: Namespace, rkey: bytes) -> None:
        entry = self._rereads.get(namespace.name)
        if entry is None:
            entry = self._rereads[namespace.name] = (namespace, set())
        entry[1].add(rkey)
        if self._reread_handle is None:
            loop = asyncio.get_running_loop()
            self._reread_handle = loop.call_soon(self._send_rereads)

    def _send_rereads(self) -> None:
        self._reread_handle = None
        rereads, self._rereads = self._rereads, {}
        link = self.store._link
        for namespace, keys in rereads.values():
            rkeys = [rkey for rkey in keys if rkey in self.waits]
            if not rkeys:
                continue
            # CLIENT CACHING YES tracks the next command's keys (the MGET;
            # broadcast tracking, for a near cache, tracks every key); the
            # PTTLs say when the leases found can first have expired.
            caching = self.store._near is None
            parse = _RereadParse(namespace, rkeys, self.store, caching)
            future = link.request(
                [
                    *([(b"CLIENT", b"CACHING", b"YES")] if caching else []),
                    (b"MGET", namespace.gen_key, *rkeys),
                    *[(b"PTTL", rkey) for rkey in rkeys],
                ],
                parse,
            )
            # The PTTLs count from when Redis answered, which is after this,
            # and may be long before their reply is handled (a loop busy with
            # a stampede's loads): the timers count from here.
            sent = asyncio.get_running_loop().time()
            future.add_done_callback(functools.partial(self._reread_done, rkeys, sent))

    def _reread_done(
        self, rkeys: List[bytes], sent: float, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            # Redis cannot tell: take the keys over, rather than wait blind.
            for rkey in rkeys:
                self._end_wait(rkey, None)
            return
        answers, pttls = future.result()
        loop = asyncio.get_running_loop()
        for rkey, answer, pttl in zip(rkeys, answers, pttls):
            if not isinstance(answer, LeaseMark):
                self._end_wait(rkey, None if answer is MISS else answer)
                continue
            # Still being loaded; tracked now: an invalidation wakes it, and
            # so does the lease's expiry, which Redis may be slow to notice.
            wait = self.waits.get(rkey)
            if wait is None or pttl < 0:
                continue  # no TTL (or gone since the MGET: a push is coming)
            if wait.due is not None:
                wait.due.cancel()
            # Redis expires a key the millisecond after its PTTL runs out.
            wait.due = loop.call_at(sent + (pttl + 1) / 1000, self._lease_due, rkey)

    def _schedule_renew(self) -> None:
        if self._renew_handle is None:
            self._renew_handle = asyncio.get_running_loop().call_later(
                self.ttl / 3, self._renew
            )

    def _renew(self) -> None:
        self._renew_handle = None
        if not self.held:
            return
        by_namespace: Dict[str, Tuple[List[bytes], List[bytes]]] = {}
        for rkey, held in self.held.items():
            keys, markers = by_namespace.setdefault(held.namespace.name, ([], []))
            keys.append(rkey)
            markers.append(held.marker)
        for keys, markers in by_namespace.values():
            self._fire(RENEW, keys, [self.ttl_px, *markers])
        self._schedule_renew()

    def _fire(self, script: Script, keys: List[bytes], args: List[Any]) -> None:
        """Run *script* in the background; a failure only lets leases expire."""
        try:
            task = asyncio.get_running_loop().create_task(
                self._call(script, keys, args, _no_parse)
            )
        except RuntimeError:
            return  # no event loop
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_consume)

    async def close(self) -> None:
        """Stop renewing; end every wait (its loads load the key themselves);
        wait for the releases on their way."""
        for handle in (self._renew_handle, self._reread_handle):
            if handle is not None:
                handle.cancel()
        self._renew_handle = self._reread_handle = None
        for rkey in list(self.waits):
            self._end_wait(rkey, None, hand_over=False)
        self.fail_claims(list(self.claims))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _call(
        self,
        script: Script,
        keys: List[bytes],
        args: List[Any],
        parse: Callable[[Any], T],
    ) -> T:
        """Run *script*: by its SHA, and by its source if Redis has not got it.

        Raises :class:`RoundTripError`, or :class:`LeaseRefused` when Redis
        answers the script with an error (out of memory, a read-only replica).
        """
        link = self.store._link
        for by_source in (self._by_source, True):
            result = await link.request(
                [script.command(keys, args, by_source=by_source)],
                functools.partial(_script_reply, parse),
            )
            if result is _NOSCRIPT:
                self._by_source = True
                continue
            if isinstance(result, ReplyError):
                raise LeaseRefused(str(result))
            return result  # type: ignore[no-any-return]
        raise LeaseRefused("the server has no script and refused its source")


def _copy_value(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    # A claim's loads wait with the claimer: they get its value, or MISS.
    if target.done():
        return
    if source.cancelled() or source.exception() is not None:
        target.set_result(MISS)
    else:
        target.set_result(source.result())


def _decoded(
    future: asyncio.Future[Any], loads: Callable[[bytes], Any]
) -> asyncio.Future[Any]:
    """A future of the value whose payload *future* gives (MISS for None, or
    for a payload that does not decode)."""
    value: asyncio.Future[Any] = future.get_loop().create_future()

    def done(payload_future: asyncio.Future[Any]) -> None:
        if value.done():
            return
        if payload_future.cancelled():
            value.set_result(MISS)
            return
        payload = payload_future.result()
        if payload is None:
            value.set_result(MISS)
            return
        try:
            value.set_result(loads(payload))
        except Exception:
            value.set_result(MISS)

    future.add_done_callback(done)
    return value


class LeaseRefused(Exception):
    """Redis answered a lease script with an error (out of memory...)."""


# What a script's reply is when the server has not got the script.
_NOSCRIPT: Any = object()


def _script_reply(parse: Callable[[Any], Any], replies: List[Any]) -> Any:
    # Error replies are answers, not broken connections: hand them back.
    (reply,) = replies
    if is_noscript(reply):
        return _NOSCRIPT
    if isinstance(reply, ReplyError):
        return reply
    return parse(reply)


def _no_parse(reply: Any) -> Any:
    return reply


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _AcquireParse:
    """Checks and reads the ACQUIRE script's reply, as it is parsed."""

    __slots__ = ("namespace", "opened", "rkeys", "store")

    def __init__(
        self, namespace: Namespace, rkeys: Sequence[bytes], store: Any, opened: Opened
    ) -> None:
        self.namespace = namespace
        self.rkeys = rkeys
        self.store = store
        self.opened = opened

    def __call__(self, reply: Any) -> Tuple[bytes, List[Any]]:
        rkeys = self.rkeys
        if type(reply) is not list or len(reply) != len(rkeys) + 1:
            raise Unusable(f"the lease script answered {reply!r:.80}")
        envelope = self.store._envelope
        try:
            gen, valid = envelope.open_generation(self.namespace.gen_key, reply[0])
        except Mismatch as error:
            raise Unusable(str(error)) from None
        if gen is None or not valid:
            raise Unusable("the lease script answered no generation")
        answers: List[Any] = []
        held = [raw for raw in reply[1:] if raw != 1]
        positions = [i for i, raw in enumerate(reply[1:]) if raw != 1]
        try:
            opened_values = envelope.open_all(
                gen, [rkeys[i] for i in positions], held, self.opened, MISS
            )
        except Mismatch as error:
            raise Unusable(str(error)) from None
        by_position = dict(zip(positions, opened_values))
        for i, raw in enumerate(reply[1:]):
            if raw == 1:
                answers.append(None)
            elif type(raw) is not bytes:
                raise Unusable(f"the lease script answered {raw!r:.80} for a key")
            else:
                answers.append(by_position[i])
        return gen, answers


class _RereadParse:
    """Checks and reads a tracked re-read of waited keys: per key a payload, a
    :class:`LeaseMark` or MISS, and its PTTL in milliseconds (negative: none)."""

    __slots__ = ("caching", "namespace", "rkeys", "store")

    def __init__(
        self, namespace: Namespace, rkeys: List[bytes], store: Any, caching: bool
    ) -> None:
        self.namespace = namespace
        self.rkeys = rkeys
        self.store = store
        # Whether a CLIENT CACHING YES came first (its reply does too).
        self.caching = caching

    def __call__(self, replies: List[Any]) -> Tuple[List[Any], List[int]]:
        if self.caching:
            caching, raws, *pttls = replies
            if isinstance(caching, ReplyError):
                raise Unusable(f"CLIENT CACHING failed: {caching}")
        else:
            raws, *pttls = replies
        if type(raws) is not list or len(raws) != len(self.rkeys) + 1:
            raise Unusable(f"MGET answered {raws!r:.80}")
        if len(pttls) != len(self.rkeys) or any(type(t) is not int for t in pttls):
            raise Unusable(f"PTTL answered {pttls!r:.80}")
        envelope = self.store._envelope
        opened = Opened()
        try:
            gen, _ = envelope.open_generation(self.namespace.gen_key, raws[0])
            answers = envelope.open_all(
                gen, self.rkeys, raws[1:], opened, MISS, decode=False
            )
        except Mismatch as error:
            raise Unusable(str(error)) from None
        self.store._decode_errors(self.namespace, opened)
        result: List[Any] = answers
        return result, pttls


#: A lease round trip that failed: the caller loads its keys unleased.
LeaseFailure = (RoundTripError, LeaseRefused)
