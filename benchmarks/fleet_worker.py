"""One process of scenario 11's fleet, driven through stdin by benchmarks.fleet.

``python -m benchmarks.fleet_worker <url> <prefix> --lease-ttl S --deadline S``
holds four stores on *url*, all under *prefix*: ``on`` (leases with the
default settings), ``off`` (``leases=False``), ``short`` (leases with
``lease_ttl=S``, for the killed-holder runs) and ``near`` (a near cache of
``NEAR_SIZE`` values, for scenario 12's reader).  It reads one JSON command per
line and answers each with one JSON line carrying the command's ``id``;
commands run concurrently, so ``stats`` answers while a load is in flight.

* ``{"op": "ready", "stores": [...]}``: open those stores' connections (a
  load in a namespace of its own), so no timed run pays for connecting or for
  sending the lease scripts.
* ``{"op": "load", "store": s, "ns": n, "keys": k, "requests": r}``: *r*
  concurrent requests, each a fresh loader over ``store.cache_map(n)``
  doing ``load_many(range(k))``; the batch function sleeps ``DB_SECONDS``
  (a database).  With ``"block": true`` it prints ``{"event": "started"}``
  and never returns (the holder a test kills).  The answer: the batch calls
  (``[monotonic time, keys]`` each, and the keys themselves with
  ``"report_keys": true``), the requests whose values were wrong, when the
  first request started and the last ended (``time.monotonic()``: one clock
  for every process of the machine), the CPU time the process spent until
  then, the garbage collections meanwhile (``[monotonic start, seconds]``
  each), and the store's counters that moved.
* ``{"op": "stats", "store": s}``: the store's counters.
* ``{"op": "near_warm", "ns": n, "key": k}``: load *k* of *n* through fresh
  loaders over the ``near`` store until one load is a near hit (so *k* is in
  the near cache), then watch for its eviction.  The answer: the loads it
  took.
* ``{"op": "near_evicted", "timeout": s}``: wait up to *s* seconds for that
  eviction; the answer: ``{"at": <monotonic time>}``, taken in the push
  handler the moment the push that evicted *k* was applied (None if none
  came).
* ``{"op": "quit"}``, or the end of stdin: close the stores and exit.

The process exits by itself after ``--deadline`` seconds, whatever it is
doing (a thread calls ``os._exit``), so a parent that dies or hangs never
leaves it behind for long.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore

#: How long the batch function takes, like a database's round trip.
DB_SECONDS = 0.002
TTL = 600.0
NEAR_SIZE = 1000
#: How long near_warm tries to make its key a near hit.
WARM_TIMEOUT = 5.0


#: Every garbage collection of the process: [monotonic start, seconds].
_collections: List[List[float]] = []
_collecting: List[float] = []


def _time_collections(phase: str, info: Dict[str, Any]) -> None:
    if phase == "start":
        _collecting[:] = [time.monotonic(), time.perf_counter()]
    elif _collecting:
        _collections.append([_collecting[0], time.perf_counter() - _collecting[1]])


gc.callbacks.append(_time_collections)


def _emit(message: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Worker:
    """The stores, and the commands of the module docstring."""

    def __init__(self, url: str, prefix: str, lease_ttl: float) -> None:
        self.stores: Dict[str, RedisStore] = {
            "on": RedisStore(url, prefix=prefix, ttl=TTL),
            "off": RedisStore(url, prefix=prefix, ttl=TTL, leases=False),
            "short": RedisStore(url, prefix=prefix, ttl=TTL, lease_ttl=lease_ttl),
            "near": RedisStore(url, prefix=prefix, ttl=TTL, near_cache=NEAR_SIZE),
        }
        # The key near_warm watches (its Redis key), and the future that the
        # push evicting it resolves with the time.
        self._watched: Optional[bytes] = None
        self._evicted: Optional[asyncio.Future[float]] = None
        self._hook_evictions()

    def _hook_evictions(self) -> None:
        """Time each invalidation push as it is applied.

        The store has no public hook for this: polling ``stats.near_size``
        would measure the poll's period, and spin a core the writer and
        Redis need.  So this wraps the near cache's push handler (private,
        and looked up at each push): after the original has run, a watched
        key that is gone resolves the watch with ``time.monotonic()``.
        """
        near = self.stores["near"]._near
        assert near is not None
        original = near.pushed

        def pushed(keys: Any) -> None:
            original(keys)
            evicted = self._evicted
            gone = self._watched not in near.entries
            if evicted is not None and not evicted.done() and gone:
                evicted.set_result(time.monotonic())

        near.pushed = pushed  # type: ignore[method-assign]

    async def near_warm(self, command: Dict[str, Any]) -> Dict[str, Any]:
        store = self.stores["near"]
        namespace, key = command["ns"], int(command["key"])
        deadline = time.monotonic() + WARM_TIMEOUT
        loads = 0
        while True:
            loads += 1
            hits = store.stats.near_hits
            loader: DataLoader[int, Any] = DataLoader(
                _echo, cache_map=store.cache_map(namespace)
            )
            await loader.load(key)
            if store.stats.near_hits > hits:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"key {key!r} never became a near hit")
            await asyncio.sleep(0.001)
        self._watched = store.redis_key(namespace, key)
        self._evicted = asyncio.get_running_loop().create_future()
        return {"loads": loads}

    async def near_evicted(self, command: Dict[str, Any]) -> Dict[str, Any]:
        evicted = self._evicted
        if evicted is None:
            raise RuntimeError("near_evicted without near_warm")
        try:
            at: Optional[float] = await asyncio.wait_for(
                asyncio.shield(evicted), float(command["timeout"])
            )
        except asyncio.TimeoutError:
            at = None
        self._evicted = self._watched = None
        return {"at": at}

    async def ready(self, command: Dict[str, Any]) -> Dict[str, Any]:
        for name in command["stores"]:
            store = self.stores[name]
            loader: DataLoader[int, int] = DataLoader(
                _echo, cache_map=store.cache_map(f"ready-{os.getpid()}")
            )
            await loader.load_many(range(3))
            await store.flush()
        return {"pid": os.getpid()}

    async def load(self, command: Dict[str, Any]) -> Dict[str, Any]:
        store = self.stores[command["store"]]
        namespace, block = command["ns"], bool(command.get("block"))
        keys = list(range(int(command["keys"])))
        calls: List[List[float]] = []
        loaded: List[int] = []

        async def batch_load(batch: List[int]) -> List[int]:
            calls.append([time.monotonic(), len(batch)])
            loaded.extend(batch)
            if block:
                _emit({"event": "started", "id": command["id"]})
                await asyncio.Event().wait()  # until the parent kills us
            await asyncio.sleep(DB_SECONDS)
            return batch

        async def request() -> bool:
            loader: DataLoader[int, int] = DataLoader(
                batch_load, cache_map=store.cache_map(namespace)
            )
            return await loader.load_many(keys) == keys

        before = store.stats.as_dict()
        cpu = time.process_time()
        start = time.monotonic()
        del _collections[:-1000]  # (bounded: earlier loads have answered)
        answers = await asyncio.gather(
            *[request() for _ in range(int(command["requests"]))]
        )
        done = time.monotonic()
        cpu = time.process_time() - cpu
        await store.flush()
        after = store.stats.as_dict()
        moved = {
            name: after[name] - value
            for name, value in before.items()
            if isinstance(value, int) and after[name] != value
        }
        answer: Dict[str, Any] = {
            "calls": calls,
            "wrong": answers.count(False),
            "start": start,
            "done": done,
            "cpu": cpu,
            "gc": [c for c in _collections if start <= c[0] <= done],
            "stats": moved,
        }
        if command.get("report_keys"):
            answer["keys"] = loaded
        return answer

    async def run(self, command: Dict[str, Any]) -> None:
        op = command["op"]
        try:
            if op == "ready":
                answer = await self.ready(command)
            elif op == "load":
                answer = await self.load(command)
            elif op == "stats":
                answer = {"stats": self.stores[command["store"]].stats.as_dict()}
            elif op == "near_warm":
                answer = await self.near_warm(command)
            elif op == "near_evicted":
                answer = await self.near_evicted(command)
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as error:  # the parent reports it; never hang it
            answer = {"error": f"{type(error).__name__}: {error}"}
        _emit({"id": command.get("id"), **answer})

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        tasks = set()
        while True:
            line = await reader.readline()
            if not line.strip():
                break  # the end of stdin: the parent is gone
            command = json.loads(line)
            if command["op"] == "quit":
                break
            task = asyncio.ensure_future(self.run(command))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in self.stores.values():
            await store.aclose()


async def _echo(keys: List[int]) -> List[int]:
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_worker")
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--lease-ttl", type=float, default=0.5)
    parser.add_argument("--deadline", type=float, default=600.0)
    options = parser.parse_args()
    watchdog = threading.Timer(options.deadline, os._exit, (3,))
    watchdog.daemon = True
    watchdog.start()
    asyncio.run(Worker(options.url, options.prefix, options.lease_ttl).serve())


if __name__ == "__main__":
    main()
