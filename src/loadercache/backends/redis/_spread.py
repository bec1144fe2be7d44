"""A namespace spread over buckets: what a cache map calls on a cluster.

On a cluster each namespace is spread over ``RedisStore.buckets`` hash tags
(see :mod:`loadercache.backends.redis._keys`), and each bucket is a
:class:`~loadercache.backends.redis._namespace.Namespace` of its own: its
generation, its operations, its reads in flight and its leases live in one
slot, so every script and compare-and-set the store sends still touches one
slot.  A :class:`SpreadTier` has the interface of the store's
:class:`~loadercache.backends.redis._store.Tier` and splits each call by
bucket:

* ``read`` sends every bucket's read of a batch at once (``Tier.send_read``),
  so the cluster link sends one round trip per node and the batch waits for
  the slowest node, not for the sum; the replies are settled in the batch's
  own task, and only buckets that need more round trips (leases of their
  misses, refreshes) get tasks of their own, run together.  A bucket whose
  node fails is a batch of misses: only the keys of a failing node go to the
  batch function.  Only if every
  bucket fails does the read raise, as one server's read does.
* ``write``, ``forget``, ``prime``, ``invalidate`` go to the key's bucket;
  ``invalidate_all`` gives every bucket a new generation.
"""

from __future__ import annotations

import asyncio
from binascii import crc32
from typing import TYPE_CHECKING, Any, Dict, Hashable, List, Optional, Sequence, Tuple

from loadercache.backends.redis._keys import bucket_of, redis_keys
from loadercache.backends.redis._namespace import Namespace
from loadercache.cache import MISS, RemoteTierError

if TYPE_CHECKING:
    from loadercache.backends.redis._store import RedisStore, Tier

__all__ = ["Spread", "SpreadTier"]


class Spread:
    """The buckets of one namespace, shared by the process (like a Namespace)."""

    __slots__ = ("__weakref__", "bases", "by_base", "namespaces", "near")

    def __init__(self, namespaces: List[Namespace]) -> None:
        self.namespaces = namespaces
        self.bases = [namespace.base for namespace in namespaces]
        self.by_base = {namespace.base: i for i, namespace in enumerate(namespaces)}
        # The near values of every bucket, which the cache maps read: a near
        # hit costs one dict lookup, not a bucket's hash (see _near).
        self.near: Dict[Hashable, asyncio.Future[Any]] = {}
        for namespace in namespaces:
            namespace.near_shared = self.near


class SpreadTier:
    """The store's view of a spread namespace (see the module docs)."""

    __slots__ = ("name", "spread", "store", "tiers")

    def __init__(self, store: RedisStore, name: str, spread: Spread) -> None:
        from loadercache.backends.redis._store import Tier

        self.store = store
        self.name = name
        self.spread = spread
        self.tiers: List[Tier] = [Tier(store, ns) for ns in spread.namespaces]

    def _place(self, key: Hashable) -> Tuple[int, bytes]:
        # The bucket of *key*, and its Redis key.
        segment = redis_keys(b"", (key,))[0]
        bucket = bucket_of(segment, len(self.tiers))
        return bucket, self.spread.bases[bucket] + segment

    def rkey(self, key: Hashable) -> bytes:
        """The Redis key of *key*; ``TypeError`` if it cannot be stored."""
        return self._place(key)[1]

    def near_view(self) -> Dict[Hashable, asyncio.Future[Any]]:
        """The near values the cache maps of this namespace read."""
        return self.spread.near

    def _tier_of(self, rkey: bytes) -> Tier:
        # The base ends at the first "}:" (no prefix or namespace has braces).
        return self.tiers[self.spread.by_base[rkey[: rkey.index(b"}:") + 2]]]

    async def read(
        self, keys: Sequence[Hashable], encoded: Optional[Dict[Hashable, bytes]]
    ) -> List[Any]:
        """Every bucket's keys at once: the stored value of each key, or MISS."""
        if encoded:
            for key in keys:
                encoded.pop(key, None)  # placed again here
        # Every key encoded in one call, then placed: a CRC-32 and a
        # concatenation per key.
        count = len(self.tiers)
        bases = self.spread.bases
        groups: Dict[int, Tuple[List[int], List[bytes]]] = {}
        for i, segment in enumerate(redis_keys(b"", keys)):
            bucket = crc32(segment) % count
            group = groups.get(bucket)
            if group is None:
                group = groups[bucket] = ([], [])
            group[0].append(i)
            group[1].append(bases[bucket] + segment)
        owner = asyncio.current_task()
        tiers = self.tiers
        # Every bucket's read sent now (one write per node), then awaited in
        # turn: the batch waits for the slowest node, in its own task.
        sent = [
            (
                positions,
                tiers[bucket],
                tiers[bucket].send_read([keys[i] for i in positions], rkeys, owner),
            )
            for bucket, (positions, rkeys) in groups.items()
        ]
        try:
            for _, _, read in sent:
                if type(read) is not list:
                    await read.wait()  # type: ignore[union-attr]
        except BaseException:
            for _, _, read in sent:
                if type(read) is not list:
                    read.future.cancel()  # type: ignore[union-attr]
                    read.abandon()  # type: ignore[union-attr]
            raise
        answers: List[Any] = []
        more: List[int] = []  # reads that need more round trips
        for _, tier, read in sent:
            answer: Any = read
            if type(read) is not list:
                try:
                    answer = tier.answered(read)  # type: ignore[arg-type]
                except RemoteTierError as error:
                    answer = error
                if answer is read:
                    more.append(len(answers))
            answers.append(answer)
        if more:
            completed = await asyncio.gather(
                *[sent[i][1].complete(answers[i]) for i in more],
                return_exceptions=True,
            )
            for i, answer in zip(more, completed):
                if isinstance(answer, BaseException) and not isinstance(
                    answer, RemoteTierError
                ):
                    raise answer
                answers[i] = answer
        values: List[Any] = [MISS] * len(keys)
        failure: Optional[RemoteTierError] = None
        served = False
        for (positions, _, _), answer in zip(sent, answers):
            if isinstance(answer, RemoteTierError):
                failure = answer  # its keys are misses
                continue
            served = True
            for i, value in zip(positions, answer):
                values[i] = value
        if failure is not None and not served:
            raise failure
        return values

    async def write(
        self, items: Sequence[Tuple[Hashable, Any]], encoded: Dict[Hashable, bytes]
    ) -> None:
        """Queue each bucket's freshly loaded items (see ``Tier.write``)."""
        if encoded:
            for item in items:
                encoded.pop(item[0], None)
        count = len(self.tiers)
        by_bucket: Dict[int, List[Tuple[Hashable, Any]]] = {}
        segments = redis_keys(b"", [item[0] for item in items])
        for item, segment in zip(items, segments):
            by_bucket.setdefault(crc32(segment) % count, []).append(item)
        queued = False
        for bucket, bucket_items in by_bucket.items():
            queued = self.tiers[bucket].queue(bucket_items, {}) or queued
        if queued and self.store.wait_for_writes:
            await asyncio.shield(self.store._carrier_future())

    def forget(self, key: Hashable, encoded: Dict[Hashable, bytes]) -> None:
        """A load of *key* failed or was cancelled: release its lease, if any."""
        try:
            bucket = self._place(key)[0]
        except TypeError:
            return
        self.tiers[bucket].forget(key, {})

    def prime(self, rkey: bytes, value: Any) -> None:
        self._tier_of(rkey).prime(rkey, value)

    def invalidate(self, rkey: bytes) -> None:
        self._tier_of(rkey).invalidate(rkey)

    def invalidate_all(self) -> None:
        for tier in self.tiers:
            tier.invalidate_all()
