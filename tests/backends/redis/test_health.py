"""Breakers and episodes: what opens and closes them, and what is logged."""

from __future__ import annotations

import logging
from typing import List

import pytest

from loadercache.backends.redis._health import Breaker, Health, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "loadercache" and r.levelno >= logging.WARNING
    ]


def test_consecutive_failures_open_it_and_one_trial_decides() -> None:
    clock = Clock()
    breaker = Breaker(threshold=2, cooldown=5, timer=clock)
    for _ in range(2):
        ticket = breaker.allow()
        assert ticket is not None
        breaker.failed(ticket)
    assert (breaker.state, breaker.allow()) == ("open", None)
    clock.now += 5
    trial = breaker.allow()
    assert trial is not None and breaker.allow() is None  # one trial at a time
    assert breaker.succeeded(trial) and breaker.state == "closed"


def test_a_success_between_failures_resets_the_count() -> None:
    breaker = Breaker(threshold=2, cooldown=5, timer=Clock())
    for outcome in ("failed", "succeeded", "failed", "succeeded"):
        ticket = breaker.allow()
        assert ticket is not None
        getattr(breaker, outcome)(ticket)
    assert breaker.state == "closed"


def test_a_late_success_from_before_an_outage_does_not_close_it() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=5, timer=clock)
    straggler = breaker.allow()  # started while all was well ...
    failing = breaker.allow()
    assert straggler is not None and failing is not None
    assert breaker.failed(failing)  # ... then the outage opened it
    assert not breaker.succeeded(straggler)
    assert breaker.state == "open"
    clock.now += 5
    trial = breaker.allow()
    assert trial is not None
    # A failure from before the trial does not reopen it either.
    assert not breaker.failed(straggler) and breaker.state == "half-open"


def test_a_cancelled_trial_lets_the_next_caller_try_at_once() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=5, timer=clock)
    ticket = breaker.allow()
    assert ticket is not None
    breaker.failed(ticket)
    clock.now += 5
    trial = breaker.allow()
    assert trial is not None
    breaker.abandoned(trial)
    assert breaker.allow() is not None


def test_an_outage_logs_three_records_however_long_it_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="loadercache")
    clock = Clock()
    health = Health("store", threshold=3, cooldown=10, timer=clock)
    for _ in range(1000):  # an hour of failing reads and writes, and trials
        for breaker in (health.reads, health.writes):
            ticket = breaker.allow()
            if ticket is not None:
                health.failed(breaker, ticket, ConnectionError("refused"))
        clock.now += 3.6
    clock.now += 10  # the cooldown: trials, which succeed
    for breaker in (health.reads, health.writes):
        ticket = breaker.allow()
        assert ticket is not None
        health.succeeded(breaker, ticket)
    records = warnings(caplog)
    assert len(records) == 3, records
    assert "failed" in records[0] and "skipping" in records[1]
    assert "answers again" in records[2]


def test_failures_that_come_and_go_are_one_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="loadercache")
    clock = Clock()
    health = Health("store", threshold=5, cooldown=10, timer=clock)
    for step in range(2000):  # one round trip in three fails, for a while
        ticket = health.reads.allow()
        assert ticket is not None
        if step % 3 == 0:
            health.failed(health.reads, ticket, TimeoutError())
        else:
            health.succeeded(health.reads, ticket)
        clock.now += 0.01
    assert len(warnings(caplog)) == 1
    clock.now += 10  # quiet for a cooldown: recovered
    ticket = health.reads.allow()
    assert ticket is not None
    health.succeeded(health.reads, ticket)
    assert len(warnings(caplog)) == 2
    ticket = health.reads.allow()
    assert ticket is not None
    health.failed(health.reads, ticket, TimeoutError())  # a new episode
    assert len(warnings(caplog)) == 3


def test_a_rate_limited_log_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="loadercache")
    clock = Clock()
    log = RateLimitedLog(interval=60, timer=clock)
    for _ in range(100):
        log.warn("%d values did not decode", 1)
    clock.now += 60
    log.warn("%d values did not decode", 2)
    assert warnings(caplog) == [
        "1 values did not decode",
        "2 values did not decode (99 similar records since the last were logged "
        "at DEBUG)",
    ]
