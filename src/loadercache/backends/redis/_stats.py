"""The counters of a :class:`~loadercache.backends.redis.RedisStore`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

__all__ = ["StoreStats"]


@dataclass
class StoreStats:
    """A snapshot of a store's counters, from :attr:`RedisStore.stats`.

    Reads: ``reads`` counts read round trips that succeeded and ``read_keys``
    the keys looked up (``hits + misses == read_keys``; a key not read because
    Redis failed or the breaker was open is a miss).  Writes: ``writes``
    counts write round trips that succeeded, ``written_keys`` the values they
    stored and ``deleted_keys`` the deletes they carried.

    Failures: ``errors`` counts round trips that failed (of them,
    ``timeouts`` got no reply in time and ``unusable_replies`` got replies
    that could not be answers, after which the connection was closed);
    ``write_errors`` counts commands Redis refused inside a write that
    otherwise went through (``OOM`` under ``maxmemory``, ``READONLY`` on a
    replica); ``skipped`` counts round trips not attempted because a breaker
    was open.  ``serialization_skips`` counts values not written because the
    serializer refused them or they exceed ``max_value_bytes``;
    ``decode_errors`` counts stored values that could not be read (corrupt,
    another format, too large, or failing ``secret=``'s signature): each is a
    miss.

    Leases (see ``RedisStore(leases=...)``): ``leases`` counts keys this store
    leased before loading them, ``lease_waits`` the loads that waited for a
    key another process (or request) was loading, ``lease_takeovers`` the
    waits that ended without its value (its holder failed, died or took too
    long, and this process loaded the key itself), and ``fenced_refusals``
    the write-backs Redis refused because the key no longer held this
    store's lease (a clear or prime by any process replaced it).

    Timed values (see ``RedisStore(stale_if_error=..., refresh_ahead=...)``):
    ``stale_reads`` counts values read past their TTL, within the grace of
    ``stale_if_error`` (each is loaded again, and served if that fails; it
    also counts as a miss), and ``refreshes`` the values this store chose to
    load again ahead of their expiry.

    Near cache (see ``RedisStore(near_cache=...)``): ``near_hits`` counts
    loads served from it (no round trip), ``near_invalidations`` the keys
    Redis said changed (each evicts its value, if held), ``near_flushes``
    how often it emptied, wholly or a namespace of it (a ``clear_all`` by
    any process, a lost or silent connection), and ``near_size`` how many
    values it holds now.

    ``pending_operations`` is how many clears, primes and clear_alls this
    process has made that Redis has not confirmed yet (they are sent again
    until it does), and ``generation_overflows`` how often pending deletes
    were replaced by a new generation to bound them.  ``connects`` counts
    connections opened.  ``breaker_state`` (reads) and
    ``write_breaker_state`` are ``"closed"`` (Redis in use), ``"open"``
    (skipped) or ``"half-open"`` (one trial in flight); ``breaker_opens``
    counts how often either opened.  Per-loader numbers (remote hits and
    misses of one request) are in :attr:`DataLoader.stats`.

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
    timeouts: int = 0
    unusable_replies: int = 0
    write_errors: int = 0
    skipped: int = 0
    serialization_skips: int = 0
    decode_errors: int = 0
    leases: int = 0
    lease_waits: int = 0
    lease_takeovers: int = 0
    fenced_refusals: int = 0
    stale_reads: int = 0
    refreshes: int = 0
    near_hits: int = 0
    near_invalidations: int = 0
    near_flushes: int = 0
    near_size: int = 0
    pending_operations: int = 0
    generation_overflows: int = 0
    connects: int = 0
    breaker_state: str = "closed"
    write_breaker_state: str = "closed"
    breaker_opens: int = 0

    def as_dict(self) -> Dict[str, Any]:
        """The counters as a dict, ready for a log record or a metrics sink.

        >>> StoreStats(reads=1).as_dict()["reads"]
        1
        """
        return asdict(self)
