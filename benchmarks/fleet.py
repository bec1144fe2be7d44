"""Scenario 11: fleet-wide single flight (issue 10), processes against one Redis.

* 11a, a stampede: ``fleet_processes`` processes, each running
  ``fleet_requests`` concurrent requests, all of ``load_many`` over the same
  ``fleet_keys`` cold keys (a fresh loader over ``store.cache_map(ns)`` per
  request; the batch function sleeps 2 ms, like a database).  What counts is
  how many keys reach batch functions across the fleet (with leases: each
  key once; without: up to processes x requests x keys) and the wall time
  from the commands going out to the last request's answer.  Entries: the
  default store (leases on) and ``leases=False``.
* 11b, a holder killed mid-batch: one process leases the keys and its batch
  function blocks; the others' requests wait for it; then it gets SIGKILL.
  Its leases (``lease_ttl`` of ``fleet_lease_ttl``) expire, the waiters take
  the keys over, and one of them loads each.  Measured: the time from the
  kill to the last waiter's answer (the issue's goal: within the lease TTL
  plus 100 ms), how long after the leases expired the first reload began
  (never before: a key is loaded twice only once its lease is dead), and
  whether every key was loaded exactly once by the survivors.

Both report the most time one process spent collecting garbage (after the
expiry, in 11b): a stampede's waits are counted in tens of thousands per
process, and the collector goes through every object they keep.

The processes are :mod:`benchmarks.fleet_worker`, started by each
scenario's set-up (outside the timing, connected and with the lease scripts
loaded before the first run) and killed by its tear-down; 11b starts a fresh
holder for every run.  Every read from a worker has a timeout, every worker
exits by itself after a deadline, and an ``atexit`` hook kills any still
running.  Times come from ``time.monotonic()`` in each process: one clock for
the whole machine.

The server is scenario 9's (``REDIS_URL``); keys live under a random prefix
of their own and are deleted by ``SCAN`` of it at the end.  Without a server
the scenario is skipped with a note, as scenario 9 is.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from benchmarks import redis_tier
from benchmarks.scenarios import Entry, Sample, Scenario, Sizes

__all__ = ["scenarios"]

ROOT = Path(__file__).resolve().parent.parent
LEASES = "loadercache leases (default)"
NO_LEASES = "loadercache leases=False"
KILLED = "loadercache leases, holder killed"
#: How long any one answer from a worker may take before the run fails.
ANSWER_TIMEOUT = 60.0
#: How long a worker lives at most, whatever happens to its parent.
WORKER_DEADLINE = 900.0


class WorkerError(RuntimeError):
    """A fleet worker failed, answered an error, or did not answer in time."""


class Worker:
    """A :mod:`benchmarks.fleet_worker` process, and its line protocol."""

    def __init__(self, prefix: str, lease_ttl: float) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.fleet_worker",
                redis_tier.REDIS_URL,
                prefix,
                "--lease-ttl",
                str(lease_ttl),
                "--deadline",
                str(WORKER_DEADLINE),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        _alive.add(self)
        self._buffer = b""
        self._ids = iter(range(1, 1 << 62))
        # Answers and events read while waiting for another one.
        self._unread: List[Dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, command: Dict[str, Any]) -> int:
        """Send *command* (without waiting); its id, to :meth:`wait` for."""
        ident = next(self._ids)
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"id": ident, **command}).encode())
            self.process.stdin.write(b"\n")
            self.process.stdin.flush()
        except OSError as error:
            raise WorkerError(f"worker {self.pid} is gone ({error})") from None
        return ident

    def wait(
        self, ident: int, event: Optional[str] = None, timeout: float = ANSWER_TIMEOUT
    ) -> Dict[str, Any]:
        """The answer to command *ident* (or its *event*), within *timeout*."""

        def wanted(message: Dict[str, Any]) -> bool:
            return message.get("id") == ident and message.get("event") == event

        deadline = time.monotonic() + timeout
        while True:
            for message in self._unread:
                if wanted(message):
                    self._unread.remove(message)
                    if "error" in message:
                        raise WorkerError(f"worker {self.pid}: {message['error']}")
                    return message
            self._unread.extend(self._read(deadline))

    def call(self, command: Dict[str, Any]) -> Dict[str, Any]:
        return self.wait(self.send(command))

    def _read(self, deadline: float) -> List[Dict[str, Any]]:
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise WorkerError(f"worker {self.pid} did not answer in time")
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    code = self.process.poll()
                    raise WorkerError(f"worker {self.pid} exited (status {code})")
                self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        """SIGKILL, and reap it (a no-op if it is gone already)."""
        _alive.discard(self)
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def stop(self) -> None:
        """Ask it to quit (it closes its stores); kill it if it does not."""
        if self.process.poll() is None:
            try:
                self.send({"op": "quit"})
                self.process.wait(timeout=5)
            except (WorkerError, subprocess.TimeoutExpired):
                pass
        self.kill()


_alive: set[Worker] = set()


@atexit.register
def _kill_all() -> None:
    for worker in list(_alive):
        worker.kill()


def start(count: int, prefix: str, lease_ttl: float, stores: List[str]) -> List[Worker]:
    """*count* workers, connected: each has opened *stores* before returning."""
    workers: List[Worker] = []
    try:
        for _ in range(count):
            workers.append(Worker(prefix, lease_ttl))
        pending = [(w, w.send({"op": "ready", "stores": stores})) for w in workers]
        for worker, ident in pending:
            worker.wait(ident)
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    return workers


@dataclass
class _Fleet:
    """What the entries of one scenario share: workers, prefix, namespaces."""

    sizes: Sizes
    prefix: str = field(default_factory=lambda: f"lcbench-{uuid.uuid4().hex[:12]}")
    workers: List[Worker] = field(default_factory=list)
    runs: int = 0

    def namespace(self) -> str:
        self.runs += 1
        return f"fleet-{self.runs}"

    def load(self, store: str, namespace: str, **options: Any) -> Dict[str, Any]:
        sizes = self.sizes
        return {
            "op": "load",
            "store": store,
            "ns": namespace,
            "keys": sizes.fleet_keys,
            "requests": sizes.fleet_requests,
            **options,
        }

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
        await redis_tier.delete_prefix(self.prefix)


# -- 11a: a stampede over cold keys -----------------------------------------------


async def _stampede_setup(fleet: _Fleet) -> None:
    fleet.workers = start(fleet.sizes.fleet_processes, fleet.prefix, 2.0, ["on", "off"])


async def _stampede(fleet: _Fleet, store: str) -> Sample:
    sizes = fleet.sizes
    command = fleet.load(store, fleet.namespace())
    start_at = time.monotonic()
    pending = [(worker, worker.send(command)) for worker in fleet.workers]
    answers = [worker.wait(ident) for worker, ident in pending]
    wall = max(answer["done"] for answer in answers) - start_at
    loaded = sum(n for answer in answers for _, n in answer["calls"])
    requests = sizes.fleet_processes * sizes.fleet_requests
    stats: Counter[str] = Counter()
    for answer in answers:
        stats.update(answer["stats"])
    return Sample(
        wall,
        requests * sizes.fleet_keys,
        extra={
            "keys to batch fns": loaded,
            "batch calls": sum(len(answer["calls"]) for answer in answers),
            "wrong answers": sum(answer["wrong"] for answer in answers),
            "lease waits": stats["lease_waits"],
            "takeovers": stats["lease_takeovers"],
            "store errors": stats["errors"],
            "gc ms (most of a process)": _gc_ms(answers, start_at),
        },
    )


def _gc_ms(answers: List[Dict[str, Any]], since: float) -> float:
    """The most time one worker spent collecting garbage after *since*."""
    return round(
        max(sum(s for t, s in answer["gc"] if t >= since) for answer in answers) * 1e3,
        1,
    )


# -- 11b: the holder killed mid-batch -----------------------------------------------


async def _killed_setup(fleet: _Fleet) -> None:
    waiters = fleet.sizes.fleet_processes - 1
    fleet.workers = start(waiters, fleet.prefix, fleet.sizes.fleet_lease_ttl, ["short"])


async def _killed_holder(fleet: _Fleet) -> Sample:
    import redis

    from loadercache.backends.redis import RedisStore

    sizes = fleet.sizes
    keys, requests = sizes.fleet_keys, sizes.fleet_requests
    namespace = fleet.namespace()
    (holder,) = start(1, fleet.prefix, sizes.fleet_lease_ttl, ["short"])
    names = RedisStore(redis_tier.REDIS_URL, prefix=fleet.prefix)
    rkeys = [names.redis_key(namespace, 0), names.redis_key(namespace, keys - 1)]
    client = redis.Redis.from_url(redis_tier.REDIS_URL, socket_timeout=5.0)
    try:
        holder.wait(holder.send(fleet.load("short", namespace, block=True)), "started")
        before = [w.call({"op": "stats", "store": "short"}) for w in fleet.workers]
        command = fleet.load("short", namespace, report_keys=True)
        pending = [(worker, worker.send(command)) for worker in fleet.workers]
        # Every waiter's every load waits for the holder: now kill it.
        for worker, stats in zip(fleet.workers, before):
            _until_waiting(worker, stats["stats"]["lease_waits"] + requests * keys)
        killed_at = time.monotonic()
        holder.kill()
        # Dead: nothing renews its leases any more.  When they expire:
        asked = time.monotonic()
        expire_at = asked + min(client.pttl(rkey) for rkey in rkeys) / 1000
        timeout = sizes.fleet_lease_ttl + ANSWER_TIMEOUT
        answers = [worker.wait(ident, timeout=timeout) for worker, ident in pending]
    finally:
        holder.kill()
        client.close()
    calls = [call for answer in answers for call in answer["calls"]]
    reloaded = Counter(key for answer in answers for key in answer["keys"])
    first_reload = min(t for t, _ in calls) if calls else float("nan")
    resumed = max(answer["done"] for answer in answers) - killed_at
    stats: Counter[str] = Counter()
    for answer in answers:
        stats.update(answer["stats"])
    return Sample(
        resumed,
        len(fleet.workers) * requests * keys,
        extra={
            "resume after kill ms": round(resumed * 1e3, 1),
            "lease left at kill ms": round((expire_at - killed_at) * 1e3, 1),
            "first reload after expiry ms": round((first_reload - expire_at) * 1e3, 1),
            "reloads before expiry": sum(t < expire_at for t, _ in calls),
            "keys reloaded": len(reloaded),
            "keys loaded twice": sum(n - 1 for n in reloaded.values()),
            "batch calls": len(calls),
            "wrong answers": sum(answer["wrong"] for answer in answers),
            "takeovers": stats["lease_takeovers"],
            "store errors": stats["errors"],
            "gc ms after expiry (most of a waiter)": _gc_ms(answers, expire_at),
        },
    )


def _until_waiting(worker: Worker, waits: int) -> None:
    """Poll *worker* until its short store counts *waits* lease waits."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while (
        worker.call({"op": "stats", "store": "short"})["stats"]["lease_waits"] < waits
    ):
        if time.monotonic() > deadline:
            raise WorkerError(f"worker {worker.pid} never waited for the holder")
        time.sleep(0.005)


# -- the table ------------------------------------------------------------------------


def _bind(work: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: work(*args)


def scenarios(sizes: Sizes) -> List[Scenario]:
    """11a and 11b, or one skipped scenario 11 saying why."""
    processes, requests, keys = (
        sizes.fleet_processes,
        sizes.fleet_requests,
        sizes.fleet_keys,
    )
    title = f"{processes} processes x {requests} requests over the same {keys:,} keys"
    reason = redis_tier.unavailable()
    if reason is not None:
        return [
            Scenario(
                "11",
                11,
                title,
                "fleet-wide single flight",
                skipped=reason,
                required=redis_tier.REQUIRE_REDIS,
            )
        ]
    stampede, killed = _Fleet(sizes), _Fleet(sizes)
    ttl_ms = sizes.fleet_lease_ttl * 1e3
    return [
        Scenario(
            "11a",
            11,
            f"{title}: a stampede of cold loads",
            f"{redis_tier.REDIS_URL}; a fresh loader per request, load_many of "
            "every key, a 2 ms batch function; wall time to the last answer",
            (
                Entry(NO_LEASES, _bind(_stampede, stampede, "off")),
                Entry(LEASES, _bind(_stampede, stampede, "on"), subject=True),
            ),
            baseline=NO_LEASES,
            peers_of={LEASES: ()},
            exact={"keys to batch fns": float(keys), "wrong answers": 0.0},
            setup=_bind(_stampede_setup, stampede),
            teardown=stampede.stop,
        ),
        Scenario(
            "11b",
            11,
            f"{title}: the holder killed mid-batch",
            f"1 holder + {processes - 1} waiting processes, lease_ttl="
            f"{sizes.fleet_lease_ttl:g} s; SIGKILL once every waiter waits; "
            "time from the kill to the last answer",
            (Entry(KILLED, _bind(_killed_holder, killed), subject=True),),
            baseline=KILLED,
            peers_of={KILLED: ()},
            exact={
                "keys reloaded": float(keys),
                "reloads before expiry": 0.0,
                "wrong answers": 0.0,
            },
            at_most={"resume after kill ms": ttl_ms + 100},
            setup=_bind(_killed_setup, killed),
            teardown=killed.stop,
        ),
    ]
