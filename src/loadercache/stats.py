"""Counters a loader keeps about itself: plain numbers users can log."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

__all__ = ["LoaderStats"]


@dataclass
class LoaderStats:
    """A snapshot of one loader's counters, from :attr:`DataLoader.stats`.

    ``local_hits`` counts the loads answered by the loader's own cache map (a
    value already resolved, or a load already in flight) and
    ``local_misses`` the loads that missed it and were queued for a batch;
    ``loads`` is their sum (a load that raised, such as one of an unhashable
    key, is in neither).  ``batches`` counts the calls made to the batch
    function and ``batched_keys`` the keys they received (``mean_batch`` is
    their ratio, ``max_batch`` the largest).  With a remote tier (the Redis
    map), ``remote_hits`` and ``remote_misses`` count keys looked up there at
    dispatch, and ``remote_errors`` the round trips that failed and were
    treated as misses.  ``failed_batches`` counts batch calls that raised or
    broke the contract.

    >>> loader.stats.as_dict()  # doctest: +SKIP
    {'local_hits': 1, 'local_misses': 2, 'batches': 1, 'batched_keys': 2, ...}
    """

    local_hits: int = 0
    local_misses: int = 0
    batches: int = 0
    batched_keys: int = 0
    max_batch: int = 0
    remote_hits: int = 0
    remote_misses: int = 0
    remote_errors: int = 0
    failed_batches: int = 0

    @property
    def loads(self) -> int:
        """Every ``load()`` that returned a future: hits plus misses."""
        return self.local_hits + self.local_misses

    @property
    def mean_batch(self) -> float:
        """The mean number of keys per batch call (0.0 before the first)."""
        return self.batched_keys / self.batches if self.batches else 0.0

    def as_dict(self) -> Dict[str, Any]:
        """The counters as a dict, ready for a log record or a metrics sink."""
        return {**asdict(self), "loads": self.loads, "mean_batch": self.mean_batch}
