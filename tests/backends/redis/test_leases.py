"""Fleet-wide single flight: leases on misses, waits, fenced write-back.

The fleet's processes are real subprocesses (``fleet.py``) against a server
the test starts (Redis 7, whose fenced write is a Lua script, and Valkey 9,
whose is ``SET ... IFEQ``), sharing a "database" file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore
from loadercache.backends.serializers import MsgpackSerializer

from ...proxy import Proxy
from ...redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[3]


class Process:
    """One process of the fleet, driven through its stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str, db: Path, *options: str) -> Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.backends.redis.fleet",
            url,
            str(db),
            *options,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def answer(self, timeout: float = 30) -> Any:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert line, "the process died"
        return json.loads(line)

    async def __call__(self, line: str) -> Any:
        await self.send(line)
        return await self.answer()

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.send("quit")
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.kill()
                await self.process.wait()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "db.json"
    path.write_text(json.dumps({f"k{i}": f"v{i}" for i in range(1000)}))
    return path


@pytest.fixture
async def fleet(server: RedisServer, db: Path) -> AsyncIterator[Callable[..., Any]]:
    processes: List[Process] = []

    async def start(*options: str) -> Process:
        process = await Process.start(server.url, db, *options)
        processes.append(process)
        return process

    try:
        yield start
    finally:
        for process in processes:
            await process.stop()


def set_row(db: Path, key: str, value: Any) -> None:
    rows = json.loads(db.read_text())
    rows[key] = value
    db.write_text(json.dumps(rows))


async def wait_for_file(path: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)


KEYS = [f"k{i}" for i in range(200)]


async def stampede(processes: List[Process], keys: List[str]) -> List[str]:
    """Every process loads *keys* in 8 concurrent requests at once (each
    answer checked); the keys their batch functions were called with, in all."""
    line = f"load users {','.join(keys)} 8"
    for process in processes:
        await process.send(line)
    for process in processes:
        assert await process.answer() == [f"v{key[1:]}" for key in keys]
    return [key for process in processes for key in await process("calls")]


async def test_a_fleet_missing_the_same_keys_loads_each_once(
    fleet: Callable[..., Any],
) -> None:
    processes = [await fleet() for _ in range(4)]  # 4 processes x 8 requests
    loaded = await stampede(processes, KEYS)
    assert sorted(loaded) == sorted(KEYS)  # each key once across the fleet


async def test_without_leases_the_fleet_loads_keys_again_and_again(
    fleet: Callable[..., Any],
) -> None:
    # What leases are for: the same workload, leases off.
    processes = [await fleet("--no-leases") for _ in range(4)]
    for process in processes:
        await process.send(f"load users {','.join(KEYS)} 8")
    for process in processes:
        await process.answer()
    loaded = [key for process in processes for key in await process("calls")]
    assert len(loaded) > len(KEYS)


async def test_a_write_back_older_than_a_clear_elsewhere_is_refused(
    fleet: Callable[..., Any], db: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    slow = await fleet("--delay", "0.5", "--started", str(started))
    other, reader = await fleet(), await fleet()
    await slow.send("load users k1")
    await wait_for_file(started)  # the slow process has read the old row
    set_row(db, "k1", "new")
    assert await other("clear users k1") is True  # and flushed
    assert await slow.answer() == ["v1"]  # its own request's view
    # Its write-back is tried (and refused) in the background: wait for it
    # (on a busy machine 0.2 s was not always enough), then read.
    deadline = time.monotonic() + 10
    while (await slow("stats"))["fenced_refusals"] != 1:
        assert time.monotonic() < deadline, "the write-back never came back"
        await asyncio.sleep(0.02)
    assert await reader("load users k1") == ["new"]


async def test_a_prime_is_never_lost_to_a_racing_load(
    fleet: Callable[..., Any], db: Path, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    slow = await fleet("--delay", "0.5", "--started", str(started))
    other, reader = await fleet(), await fleet()
    await slow.send("load users k2")
    await wait_for_file(started)
    assert await other('prime users k2 "primed"') is True
    assert await slow.answer() == ["v2"]
    await asyncio.sleep(0.2)
    assert await reader("load users k2") == ["primed"]
    assert await reader("calls") == []  # served by Redis


async def holding(
    fleet: Callable[..., Any], tmp_path: Path, keys: List[str], lease_ttl: float
) -> Process:
    """A process whose batch function is in flight (for a minute) over *keys*:
    it holds their leases, for *lease_ttl* seconds at a time."""
    started = tmp_path / "started"
    holder = await fleet(
        "--delay", "60", "--started", str(started), "--lease-ttl", str(lease_ttl)
    )
    await holder.send(f"load users {','.join(keys)}")
    await wait_for_file(started)
    return holder


def failing_until(gate: asyncio.Event) -> Callable[[List[int]], Any]:
    """A batch function that fails, once *gate* is set."""

    async def failing(keys: List[int]) -> List[Any]:
        await gate.wait()
        raise RuntimeError("the database is down")

    return failing


async def working(keys: List[int]) -> List[str]:
    return [f"v{key}" for key in keys]


@pytest.mark.parametrize("expire_cycle", [True, False], ids=["cycle", "no-cycle"])
async def test_a_killed_holder_is_taken_over_when_its_lease_expires(
    server: RedisServer, fleet: Callable[..., Any], tmp_path: Path, expire_cycle: bool
) -> None:
    if not expire_cycle:
        # Redis deletes an expired key when it is read, or when its expire
        # cycle samples it among every key with a TTL: in a database full of
        # volatile keys that may take many cycles, or minutes.  The waiters
        # must notice the expiry without it.
        with server.client() as client:
            client.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    holder = await holding(fleet, tmp_path, ["k3", "k4"], 0.5)

    async def batch_load(keys: List[str]) -> List[str]:
        return [f"taken {key}" for key in keys]

    store = RedisStore(server.url, lease_ttl=0.5)
    try:
        loader = DataLoader(batch_load, cache_map=store.cache_map("users"))
        loads = loader.load_many(["k3", "k4"])
        await asyncio.sleep(0.8)  # alive, it renews its leases: nobody loads
        assert not loads.done()
        assert store.stats.lease_waits == 2
        holder.kill()
        killed = time.monotonic()
        assert await asyncio.wait_for(loads, 5) == ["taken k3", "taken k4"]
        resumed = time.monotonic() - killed
        # At most the lease's TTL after its last renewal, and a round trip.
        assert resumed < 0.5 + 0.1, f"took over {resumed:.3f} s after the kill"
        assert store.stats.lease_takeovers == 2
    finally:
        await store.aclose()


async def test_a_wait_whose_read_was_slow_still_takes_over_at_expiry(
    server: RedisServer, fleet: Callable[..., Any], tmp_path: Path
) -> None:
    with server.client() as client:
        # Only the waiter's own timer may notice the expiry.
        client.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    holder = await holding(fleet, tmp_path, ["k3"], 1.5)
    holder.kill()  # before its first renewal: the lease ends 1.5 s after it began
    proxy = Proxy(server.port)
    proxy.start()
    store = RedisStore(proxy.url, lease_ttl=1.5, timeout=2.0)
    try:
        with server.client() as client:
            pttl = client.pttl(store.redis_key("users", "k3"))
            expires = time.monotonic() + pttl / 1e3

        async def batch_load(keys: List[str]) -> List[str]:
            return [f"taken {key}" for key in keys]

        warm = DataLoader(batch_load, cache_map=store.cache_map("users"))
        assert await warm.load("k1") == "taken k1"  # connected

        # The wait's read of the lease's PTTL comes back 0.3 s after Redis
        # answered it (a slow network, or a loop busy with a stampede).
        proxy.latency(0.3)
        load = DataLoader(batch_load, cache_map=store.cache_map("users")).load("k3")
        for _ in range(200):
            if store.stats.lease_waits:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)
        proxy.heal()
        assert await asyncio.wait_for(load, 5) == "taken k3"
        late = time.monotonic() - expires
        assert late < 0.15, f"took over {late:.3f} s after the lease expired"
    finally:
        await store.aclose()
        proxy.stop()


async def test_requests_waiting_for_a_killed_holder_take_over_in_one_read(
    server: RedisServer, fleet: Callable[..., Any], tmp_path: Path
) -> None:
    keys = [f"k{i}" for i in range(50)]
    holder = await holding(fleet, tmp_path, keys, 0.5)
    calls: List[List[str]] = []

    async def batch_load(batch: List[str]) -> List[str]:
        calls.append(list(batch))
        return [f"taken {key}" for key in batch]

    store = RedisStore(server.url, lease_ttl=0.5)
    try:
        loads = [
            DataLoader(batch_load, cache_map=store.cache_map("users")).load_many(keys)
            for _ in range(20)
        ]
        await asyncio.sleep(0.3)
        assert store.stats.lease_waits == 20 * 50
        holder.kill()
        server.reset_stats()
        results = await asyncio.wait_for(asyncio.gather(*loads), 5)
        assert results == [[f"taken {key}" for key in keys]] * 20
        assert [sorted(call) for call in calls] == [sorted(keys)]
        # Handed over once per process, not once per waiting request: the
        # expiry's reads, then one read and one lease for the whole batch
        # (and the fenced write, a script on Redis 7), not 20 of each.
        counted = server.command_calls()
        scripts = counted.get("evalsha", 0) + counted.get("eval", 0)
        assert counted.get("mget", 0) < 10, counted
        assert scripts < 10, counted
        assert store.stats.lease_takeovers == 50
    finally:
        await store.aclose()


async def test_a_takeover_claimed_by_a_load_cancelled_before_its_read_is_not_lost(
    server: RedisServer,
) -> None:
    gate = asyncio.Event()
    failing = failing_until(gate)
    delay = [0.0]
    loop = asyncio.get_running_loop()

    def schedule(callback: Callable[[], None]) -> None:
        loop.call_later(delay[0], callback)

    holder = RedisStore(server.url, lease_ttl=30)
    # Its own leases last 30 s too: so would a claim nobody ever reads.
    waiter = RedisStore(server.url, lease_ttl=30)
    try:
        doomed = DataLoader(failing, cache_map=holder.cache_map("users")).load(1)
        await asyncio.sleep(0.1)
        claimer = DataLoader(
            working, cache_map=waiter.cache_map("users"), batch_schedule_fn=schedule
        )
        first = claimer.load(1)
        await asyncio.sleep(0.05)
        others = [
            DataLoader(working, cache_map=waiter.cache_map("users")).load(1)
            for _ in range(3)
        ]
        await asyncio.sleep(0.1)
        assert waiter.stats.lease_waits == 4
        delay[0] = 0.2  # the claimer's next batch reads late
        gate.set()
        with pytest.raises(RuntimeError):
            await doomed
        for _ in range(500):
            if waiter.stats.lease_takeovers:
                break
            await asyncio.sleep(0.002)
        assert waiter.stats.lease_takeovers == 1
        await asyncio.sleep(0.02)  # the loads have seen it; the first claimed it
        assert not first.done()
        first.cancel()  # and so never reads it
        started = time.monotonic()
        assert await asyncio.wait_for(asyncio.gather(*others), 5) == ["v1"] * 3
        assert time.monotonic() - started < 2
    finally:
        await holder.aclose()
        await waiter.aclose()


async def test_a_failed_batch_frees_its_keys_at_once(
    server: RedisServer,
) -> None:
    gate = asyncio.Event()
    failing = failing_until(gate)
    first = RedisStore(server.url, lease_ttl=30)  # no waiting out its lease
    second = RedisStore(server.url, lease_ttl=30)
    try:
        doomed = DataLoader(failing, cache_map=first.cache_map("users")).load(1)
        await asyncio.sleep(0.1)
        waiting = DataLoader(working, cache_map=second.cache_map("users")).load(1)
        await asyncio.sleep(0.1)
        assert second.stats.lease_waits == 1 and not waiting.done()
        gate.set()
        with pytest.raises(RuntimeError):
            await doomed
        started = time.monotonic()
        assert await asyncio.wait_for(waiting, 5) == "v1"
        assert time.monotonic() - started < 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_requests_of_one_process_missing_a_key_share_one_load(
    server: RedisServer,
) -> None:
    calls: List[List[int]] = []
    gate = asyncio.Event()

    async def batch_load(keys: List[int]) -> List[str]:
        calls.append(list(keys))
        await gate.wait()
        return [f"v{key}" for key in keys]

    store = RedisStore(server.url)
    try:
        loads = [
            DataLoader(batch_load, cache_map=store.cache_map("users")).load_many([1, 2])
            for _ in range(20)
        ]
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*loads), 5)
        assert results == [["v1", "v2"]] * 20
        assert calls == [[1, 2]]
        # The waits of a key share its value, decoded once.
        assert store.stats.lease_waits == 38
        assert all(result[0] is results[1][0] for result in results[1:])
    finally:
        await store.aclose()


async def test_requests_waiting_for_another_process_decode_its_value_once(
    server: RedisServer,
) -> None:
    class Counting(MsgpackSerializer):
        decoded = 0

        def loads(self, data: bytes) -> Any:
            Counting.decoded += 1
            return super().loads(data)

    gate = asyncio.Event()

    async def slow(keys: List[int]) -> List[str]:
        await gate.wait()
        return [f"v{key}" for key in keys]

    async def fast(keys: List[int]) -> List[str]:
        raise AssertionError("a waiting process loaded a key")

    holder = RedisStore(server.url)
    waiter = RedisStore(server.url, serializer=Counting())
    try:
        keys = list(range(50))
        held = asyncio.ensure_future(
            DataLoader(slow, cache_map=holder.cache_map("users")).load_many(keys)
        )
        await asyncio.sleep(0.1)  # leased
        waits = [
            DataLoader(fast, cache_map=waiter.cache_map("users")).load_many(keys)
            for _ in range(10)
        ]
        await asyncio.sleep(0.1)  # waiting
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(held, *waits), 5)
        assert results == [[f"v{key}" for key in keys]] * 11
        assert waiter.stats.lease_waits == 500
        assert Counting.decoded == 50  # once per key, not per request
    finally:
        await holder.aclose()
        await waiter.aclose()


async def test_redis_restarted_mid_lease_loses_nothing_and_hangs_nothing(
    server: RedisServer,
) -> None:
    gate = asyncio.Event()

    async def slow(keys: List[int]) -> List[str]:
        await gate.wait()
        return [f"slow {key}" for key in keys]

    async def quick(keys: List[int]) -> List[str]:
        return [f"quick {key}" for key in keys]

    holder = RedisStore(server.url, breaker_cooldown=0.2)
    waiter = RedisStore(server.url, breaker_cooldown=0.2)
    try:
        held = DataLoader(slow, cache_map=holder.cache_map("users")).load(5)
        await asyncio.sleep(0.1)
        waiting = DataLoader(quick, cache_map=waiter.cache_map("users")).load(5)
        await asyncio.sleep(0.1)
        server.kill()
        server.start()  # empty: the lease is gone with it
        assert await asyncio.wait_for(waiting, 5) == "quick 5"
        gate.set()
        assert await asyncio.wait_for(held, 5) == "slow 5"
        await holder.flush()
        # The holder's write-back found no lease: refused, not written.
        check = DataLoader(quick, cache_map=waiter.cache_map("users"))
        await asyncio.sleep(0.3)  # the breaker's cooldown
        assert await asyncio.wait_for(check.load(5), 5) in ("quick 5",)
    finally:
        await holder.aclose()
        await waiter.aclose()


def stats_of(store: RedisStore) -> Dict[str, Any]:
    return store.stats.as_dict()
