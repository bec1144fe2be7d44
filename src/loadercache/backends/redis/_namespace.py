"""What this process knows about one namespace, and what it still owes Redis.

A :class:`Namespace` is shared by every cache map of its namespace in the
process.  It holds no connection and does no I/O: the store reads and writes
it around its round trips.  Three things live here.

Generations (clear_all)
-----------------------
Each namespace has a *generation*, a random token stored at its generation key
(``...:{<namespace>}:gen``); every cached value carries the generation it was
loaded under (see :mod:`loadercache.backends.redis._envelope`), and a read
fetches the generation in the same ``MGET`` as the values and treats values
of any other generation as misses.  ``clear_all`` stores a new token: one
command, O(1), without ``KEYS`` or ``SCAN``, and every process stops reading
the old values at once.  The generation key expires at twice the longest value
TTL after the last write, so an idle namespace leaves nothing behind; if it is
lost (evicted, a restart), every value of the namespace is a miss until a
write makes a new one, never a stale hit.

A read that finds *no* generation has its values written back under a new
token that the write creates with ``SET NX`` (if another process created one
meanwhile, these values are misses to everybody and are simply loaded again).
Reads that found no generation and were sent before this process created one
may use the token it created: no ``clear_all`` can have come in between, or
the key would have existed (``created``, ``created_seq``).

Invalidations and primes not yet confirmed
------------------------------------------
``clear(key)``, ``prime(key, value)`` and ``clear_all()`` become *operations*,
at most one per key (the latest wins), kept until Redis has confirmed them.
An operation that could not be sent, or whose round trip failed, stays and is
sent again (it is idempotent); the store retries by itself when Redis answers
again.  Until it is confirmed, this process answers its reads of that key
from the operation (a cleared key is a miss, a primed key its primed value),
and while a ``clear_all`` is unconfirmed every read of the namespace is a
miss: so a read never depends on the order in which round trips complete or
on whether a lost connection had delivered an invalidation.  Past
:data:`MAX_OPERATIONS` operations the namespace's deletes are replaced by one
``clear_all`` (primes are kept, under the new generation): memory stays
bounded and no invalidation is dropped.

Reads in flight
---------------
Each batch that read keys and missed some (its *reading*) is remembered until
it writes them back.  A key cleared or primed while its batch is loading is
not written back (the loaded value may predate the change that caused the
clear), and after a ``clear_all`` none of the batch's keys are.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from typing import Any, Dict, Hashable, List, Optional, Set, Tuple, Union

from loadercache.backends.redis._envelope import new_token

__all__ = ["MAX_OPERATIONS", "Namespace", "Operation", "Reading"]

#: Operations (deletes and primes) one namespace keeps unconfirmed before its
#: deletes are replaced by a new generation.
MAX_OPERATIONS = 1000


class Unknown(enum.Enum):
    """The generation of a namespace this process has not read yet."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN

#: A generation as this process knows it: a token, None (Redis holds none: the
#: namespace is empty) or UNKNOWN.
Generation = Union[bytes, None, Unknown]

DELETE = "del"
PRIME = "prime"


class Operation:
    """A delete or a prime of one key, until Redis confirms it.

    ``sent`` is the round trip carrying it (an int), or None if it is still
    to be sent.
    """

    __slots__ = ("kind", "payload", "px", "sent")

    def __init__(
        self, kind: str, payload: Optional[bytes] = None, px: Optional[int] = None
    ) -> None:
        self.kind = kind
        self.payload = payload
        self.px = px
        self.sent: Optional[int] = None


class Reading:
    """What one batch read: the generation, the keys it may write back, and the
    leases it holds on them."""

    __slots__ = ("cleared", "cleared_all", "gen", "keys", "leases", "seq", "started")

    def __init__(
        self,
        gen: Optional[bytes],
        keys: Dict[Hashable, bytes],
        seq: int,
        leases: Optional[Dict[bytes, bytes]] = None,
    ) -> None:
        self.gen = gen
        self.keys = keys
        self.seq = seq
        # Redis key -> the lease marker it holds for this batch.
        self.leases: Dict[bytes, bytes] = leases if leases is not None else {}
        self.cleared: Set[bytes] = set()
        self.cleared_all = False
        # When the batch read (its loads' time is what it waits for after).
        self.started = time.monotonic()


class Namespace:
    """The state of one namespace in this process (see the module docs).

    >>> namespace = Namespace("users", b"lc:3:v1:{users}:")
    >>> namespace.invalidate(b"lc:3:v1:{users}:i:1")
    >>> namespace.overrides(b"lc:3:v1:{users}:i:1").kind
    'del'
    """

    __slots__ = (
        "__weakref__",
        "base",
        "created",
        "created_seq",
        "gen",
        "gen_key",
        "gen_touched",
        "learning",
        "name",
        "near",
        "near_gen",
        "near_hidden",
        "near_shared",
        "new_gen",
        "new_gen_sent",
        "operations",
        "readings",
        "seq",
    )

    def __init__(self, name: str, base: bytes) -> None:
        self.name = name
        self.base = base
        self.gen_key = base + b"gen"  # no encoded key is "gen": theirs are "x:..."
        self.gen: Generation = UNKNOWN
        # A clear_all not yet confirmed: its token, and the round trip
        # carrying it (None: not sent yet).
        self.new_gen: Optional[bytes] = None
        self.new_gen_sent: Optional[int] = None
        # The token this process created when Redis had none, and the read
        # sequence number when that creation was sent.
        self.created: Optional[bytes] = None
        self.created_seq = 0
        # The write round trip reading the generation for primes, if one is.
        self.learning: Optional[int] = None
        # Reads sent so far: a read's place in the order of this connection.
        self.seq = 0
        self.operations: Dict[bytes, Operation] = {}
        self.readings: Dict[Optional[asyncio.Task[Any]], Reading] = {}
        # The near cache's values of this namespace (cache key -> resolved
        # future; see _near), and the generation they were read under.
        self.near: Dict[Hashable, asyncio.Future[Any]] = {}
        self.near_gen: Optional[bytes] = None
        # Its values while a push about its generation is checked (see
        # _near.NearCache.pushed): not served, kept if the generation holds.
        self.near_hidden: Optional[Dict[Hashable, asyncio.Future[Any]]] = None
        # For a bucket of a spread namespace: the near values of all its
        # buckets, which its cache maps read (its own are also in ``near``).
        self.near_shared: Optional[Dict[Hashable, asyncio.Future[Any]]] = None
        # When this process last extended the generation's expiry (monotonic).
        self.gen_touched = -math.inf

    def __repr__(self) -> str:
        return f"<Namespace {self.name!r}>"

    # -- what clear, prime and clear_all record ------------------------------

    def invalidate(self, rkey: bytes) -> None:
        """``clear(key)``: delete *rkey*; its loads in flight are not written back."""
        self.operations[rkey] = Operation(DELETE)
        self._cleared(rkey)
        if len(self.operations) > MAX_OPERATIONS:
            self.clear_all(keep_primes=True)

    def prime(self, rkey: bytes, payload: bytes, px: Optional[int]) -> None:
        """``prime(key, value)``: store *payload* at *rkey* (current generation)."""
        self.operations[rkey] = Operation(PRIME, payload, px)
        self._cleared(rkey)

    def clear_all(self, *, keep_primes: bool = False) -> None:
        """``clear_all()``: a new generation; no value loaded before it is written.

        *keep_primes* is for a new generation standing in for deletes: primes
        made after those deletes must survive them (they are sent under the
        new generation).
        """
        token = new_token()
        self.forget_near()
        self.new_gen = token
        self.new_gen_sent = None
        self.gen = token
        self.created = None
        self.operations = {
            rkey: operation
            for rkey, operation in self.operations.items()
            if keep_primes and operation.kind == PRIME
        }
        for reading in self.readings.values():
            reading.cleared_all = True

    def forget_near(self) -> None:
        """Forget the near values of this namespace (served and hidden)."""
        shared = self.near_shared
        if shared is not None:
            for key, future in self.near.items():
                if shared.get(key) is future:
                    del shared[key]
        self.near.clear()
        self.near_gen = None
        self.near_hidden = None

    def near_view(self) -> Dict[Hashable, asyncio.Future[Any]]:
        """The near values the cache maps of this namespace read."""
        return self.near if self.near_shared is None else self.near_shared

    def _cleared(self, rkey: bytes) -> None:
        for reading in self.readings.values():
            reading.cleared.add(rkey)

    # -- what reads consult ------------------------------------------------------

    def overrides(self, rkey: bytes) -> Optional[Operation]:
        """The operation a read of *rkey* must answer from, if any."""
        return self.operations.get(rkey)

    def read_sent(self) -> int:
        """Number the read about to be sent; return its sequence number."""
        self.seq += 1
        return self.seq

    def read_answered(self, seq: int, gen: Optional[bytes]) -> None:
        """A read numbered *seq* found generation *gen* in Redis."""
        if self.created is not None and seq > self.created_seq and gen != self.created:
            # Read after the creation and it is gone (or replaced): it can no
            # longer stand in for reads that found none.
            self.created = None
        if self.new_gen is None:
            self.gen = gen

    def tag_for(self, reading: Reading) -> Optional[bytes]:
        """The generation to write *reading*'s values under; None: create one."""
        if reading.gen is not None:
            return reading.gen
        if self.created is not None and reading.seq <= self.created_seq:
            return self.created
        return None

    def prime_tag(self) -> Generation:
        """The generation primes are written under now (UNKNOWN: read it first)."""
        if self.new_gen is not None:
            return self.new_gen
        if self.gen is None and self.created is not None:
            return self.created
        return self.gen

    # -- what writes take and give back -----------------------------------------

    def has_pending(self) -> bool:
        """Whether anything is still to be sent."""
        if self.new_gen is not None and self.new_gen_sent is None:
            return True
        return any(operation.sent is None for operation in self.operations.values())

    def has_unconfirmed(self) -> bool:
        """Whether anything is sent or to be sent but not confirmed."""
        return self.new_gen is not None or bool(self.operations)

    def has_unsent_primes(self) -> bool:
        return any(
            op.kind == PRIME and op.sent is None for op in self.operations.values()
        )

    def take(self, trip: int, *, primes: bool) -> List[Tuple[bytes, Operation]]:
        """The operations to send in round trip *trip*, marked as sent in it.

        Without *primes*, only the deletes (primes wait for the generation).
        """
        taken = []
        for rkey, operation in self.operations.items():
            if operation.sent is None and (primes or operation.kind == DELETE):
                operation.sent = trip
                taken.append((rkey, operation))
        return taken

    def confirmed(self, taken: List[Tuple[bytes, Operation]]) -> None:
        """Redis applied *taken*: forget those still the latest of their key."""
        operations = self.operations
        for rkey, operation in taken:
            if operations.get(rkey) is operation:
                del operations[rkey]

    def returned(self, taken: List[Tuple[bytes, Operation]]) -> None:
        """The round trip carrying *taken* failed: send them again."""
        for _, operation in taken:
            operation.sent = None

    def gen_confirmed(self, trip: int) -> None:
        if self.new_gen_sent == trip:
            self.new_gen = None
            self.new_gen_sent = None

    def gen_returned(self, trip: int) -> None:
        if self.new_gen_sent == trip:
            self.new_gen_sent = None

    def created_gen(self, token: bytes, seq: int) -> None:
        """This process stored *token* as the generation, which Redis lacked."""
        self.created = token
        self.created_seq = seq
        if not isinstance(self.gen, bytes):
            self.gen = token

    def pending_count(self) -> int:
        return len(self.operations) + (self.new_gen is not None)
