"""Whether to call Redis at all, and what to log about it: breakers and episodes.

Redis is a cache: when it fails, loads fall back to the batch function, and
the store's job is to fail *cheaply* (not wait on a dead server for every
batch) and *quietly* (not log once per batch).

A :class:`Breaker` opens after ``threshold`` consecutive failed round trips
and then skips Redis for ``cooldown`` seconds, after which it lets one trial
round trip through: closed again if it succeeds, open for another cooldown if
it fails.  Every round trip takes a *ticket* when it starts, and only a round
trip that started in the breaker's current state may change it: a success
that started before an outage and finishes after the breaker opened (a
straggler of the old connection) does not close it, and a failure from before
a recovery does not reopen it.

The store keeps two breakers, for reads and for writes: a server out of
memory (``maxmemory`` with ``noeviction``) refuses every write and still
serves reads, and its hits are worth keeping.

An *episode* runs from the first failure until Redis has answered again and
then gone a whole cooldown without failing.  :class:`Health` logs at most
three records per episode through the ``loadercache`` logger, at WARNING: the
first failure, the first time a breaker opens, and the recovery; everything
else is logged at DEBUG and counted in
:class:`~loadercache.backends.redis.StoreStats`.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

__all__ = ["Breaker", "Health", "RateLimitedLog"]

logger: logging.Logger = logging.getLogger("loadercache")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class Breaker:
    """Consecutive failures open it; after the cooldown one trial may pass.

    >>> breaker = Breaker(threshold=1, cooldown=10, timer=lambda: 0.0)
    >>> ticket = breaker.allow()
    >>> breaker.failed(ticket)  # opened
    True
    >>> breaker.allow() is None  # skipped until the cooldown is over
    True
    """

    __slots__ = (
        "cooldown",
        "epoch",
        "failures",
        "opened_at",
        "opens",
        "state",
        "threshold",
        "timer",
    )

    def __init__(
        self, *, threshold: int, cooldown: float, timer: Callable[[], float]
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.timer = timer
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.opens = 0
        # Advanced on every change of state; a round trip's ticket is the
        # epoch it started in.
        self.epoch = 0

    def allow(self) -> Optional[int]:
        """A ticket for a round trip now, or None to skip Redis.

        Every ticket must be followed by exactly one of :meth:`succeeded`,
        :meth:`failed` or :meth:`abandoned`.
        """
        if self.state == CLOSED:
            return self.epoch
        if self.state == OPEN and self.timer() - self.opened_at >= self.cooldown:
            self.state = HALF_OPEN
            self.epoch += 1
            return self.epoch
        return None

    def succeeded(self, ticket: int) -> bool:
        """Record a success; True if it closed an open (half-open) breaker."""
        if ticket != self.epoch:
            return False  # started in another state: proves nothing now
        self.failures = 0
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.epoch += 1
            return True
        return False

    def failed(self, ticket: int) -> bool:
        """Record a failure; True if it opened the breaker."""
        if ticket != self.epoch:
            return False
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state = OPEN
            self.opened_at = self.timer()
            self.opens += 1
            self.epoch += 1
            return True
        return False

    def abandoned(self, ticket: int) -> None:
        """A round trip cancelled before it finished: it proves nothing.

        A trial cancelled leaves the breaker open with its cooldown over, so
        the next caller tries at once.
        """
        if ticket == self.epoch and self.state == HALF_OPEN:
            self.state = OPEN
            self.opened_at = self.timer() - self.cooldown
            self.epoch += 1

    def retry_in(self) -> float:
        """Seconds until a round trip may be tried (0 if one may now)."""
        if self.state == CLOSED:
            return 0.0
        if self.state == HALF_OPEN:
            return self.cooldown
        return max(0.0, self.opened_at + self.cooldown - self.timer())


class Health:
    """The read and write breakers of one server, and the log of its episodes.

    An episode starts with a failure and ends once Redis has answered again
    (a trial closed the breaker, or a round trip succeeded a whole cooldown
    after the last failure) and then a cooldown has passed without failure:
    failures while it recovers, or a breaker that opens again, belong to the
    same episode and are logged at DEBUG.

    >>> health = Health("<RedisStore>", threshold=5, cooldown=10, timer=time.monotonic)
    >>> ticket = health.reads.allow()
    >>> health.failed(health.reads, ticket, ConnectionError("refused"))
    """

    def __init__(
        self, name: str, *, threshold: int, cooldown: float, timer: Callable[[], float]
    ) -> None:
        self.name = name
        self.timer = timer
        self.cooldown = cooldown
        self.reads = Breaker(threshold=threshold, cooldown=cooldown, timer=timer)
        self.writes = Breaker(threshold=threshold, cooldown=cooldown, timer=timer)
        # The episode: whether one is running, when its last failure was, how
        # many failures it has had, and which of its records are logged.
        self.in_episode = False
        self.last_failure = 0.0
        self.episode_failures = 0
        self.logged_open = False
        self.logged_recovery = False

    def failed(self, breaker: Breaker, ticket: int, error: BaseException) -> None:
        """A round trip with *ticket* of *breaker* failed with *error*."""
        now = self.timer()
        what = "read" if breaker is self.reads else "write"
        if (
            self.in_episode
            and self.logged_recovery
            and now - self.last_failure >= self.cooldown
        ):
            self._end_episode()
        self.last_failure = now
        self.episode_failures += 1
        if not self.in_episode:
            self.in_episode = True
            logger.warning(
                "%s: a Redis %s failed (%s); loads fall back to the batch "
                "function. After %d consecutive failures Redis is skipped for "
                "%gs at a time; further failures are logged at DEBUG until it "
                "answers again.",
                self.name,
                what,
                _describe(error),
                breaker.threshold,
                breaker.cooldown,
            )
        else:
            logger.debug("%s: a Redis %s failed again (%s)", self.name, what, error)
        if breaker.failed(ticket):
            log = logger.debug
            if not self.logged_open:
                self.logged_open = True
                log = logger.warning
            log(
                "%s: %d Redis failures in a row; skipping Redis %ss for %gs.",
                self.name,
                breaker.failures,
                what,
                breaker.cooldown,
            )

    def succeeded(self, breaker: Breaker, ticket: int) -> None:
        """A round trip with *ticket* of *breaker* succeeded."""
        closed = breaker.succeeded(ticket)
        if not self.in_episode:
            return
        now = self.timer()
        quiet = now - self.last_failure >= self.cooldown
        if self.logged_recovery:
            if quiet:
                self._end_episode()
            return
        healthy = self.reads.state == CLOSED and self.writes.state == CLOSED
        if healthy and (closed or quiet):
            self.logged_recovery = True
            logger.warning(
                "%s: Redis answers again after %d failed round trips; caching resumes.",
                self.name,
                self.episode_failures,
            )
            if quiet:
                self._end_episode()

    def abandoned(self, breaker: Breaker, ticket: int) -> None:
        """A round trip with *ticket* of *breaker* was cancelled or proved nothing."""
        breaker.abandoned(ticket)

    def _end_episode(self) -> None:
        self.in_episode = False
        self.episode_failures = 0
        self.logged_open = False
        self.logged_recovery = False


class RateLimitedLog:
    """At most one WARNING per *interval* seconds; the rest at DEBUG, counted.

    For problems of the data rather than of the server (values that do not
    decode): worth a warning, not one per value.

    >>> decode_errors = RateLimitedLog(interval=60, timer=time.monotonic)
    >>> decode_errors.warn("%s: %d values could not be decoded", store, 3)
    """

    __slots__ = ("interval", "last", "suppressed", "timer")

    def __init__(self, *, interval: float, timer: Callable[[], float]) -> None:
        self.interval = interval
        self.timer = timer
        self.last: Optional[float] = None
        self.suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = self.timer()
        if self.last is not None and now - self.last < self.interval:
            self.suppressed += 1
            logger.debug(message, *args)
            return
        if self.suppressed:
            message += " (%d similar records since the last were logged at DEBUG)"
            args = (*args, self.suppressed)
        self.last = now
        self.suppressed = 0
        logger.warning(message, *args)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
