"""Processes of a fleet for the multi-process Redis tests.

``python -m tests.backends.redis.fleet <url> <db.json> [options]`` is one
process of a service: a RedisStore on *url*, and loaders whose batch function
reads rows from the JSON file *db.json* (the database every process shares),
recording every key it is called with.  It obeys one command per line of
stdin and answers one JSON line per command on stdout:

* ``load <namespace> <key>,<key>,... [<concurrency>]``: that many concurrent
  requests, each a fresh loader loading the keys; answers the values the
  first request got.
* ``clear <namespace> <key>``, ``prime <namespace> <key> <json value>``,
  ``clear_all <namespace>``: then ``store.flush()``; answers ``true``.
* ``calls``: the keys the batch function has been called with, in all.
* ``stats``: the store's counters.
* ``quit``.

``--delay SECONDS`` makes the batch function read the rows first and then
sleep (a slow database, whose answer may be stale by the time it returns),
and ``--started PATH`` makes it write that file when it starts, so a test
knows a load is in flight.  ``--lease-ttl`` and ``--no-leases`` set the
store's leases, ``--near N`` gives it a near cache of N values, ``--cluster``
makes *url* a node of a cluster (``RedisStore(cluster=True)``), ``--prefix``
sets the key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("db")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--started", default="")
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--no-leases", action="store_true")
    parser.add_argument("--near", type=int, default=None)
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--prefix", default="lc")
    options = parser.parse_args()
    store = RedisStore(
        options.url,
        timeout=2.0,
        lease_ttl=options.lease_ttl,
        leases=not options.no_leases,
        near_cache=options.near,
        cluster=options.cluster,
        prefix=options.prefix,
    )
    db = Path(options.db)
    calls: List[Any] = []

    async def batch_load(keys: List[str]) -> List[Any]:
        calls.extend(keys)
        rows: Dict[str, Any] = json.loads(db.read_text())
        values = [rows.get(key) for key in keys]
        if options.started:
            Path(options.started).write_text("started")
        if options.delay:
            await asyncio.sleep(options.delay)
        return values

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        command, *args = line.split(" ", 3)
        answer: Any = True
        if command == "load":
            namespace, keys = args[0], args[1].split(",")
            concurrency = int(args[2]) if len(args) > 2 else 1

            async def request(namespace: str, keys: List[str]) -> List[Any]:
                loader = DataLoader(batch_load, cache_map=store.cache_map(namespace))
                values: List[Any] = await loader.load_many(keys)
                return values

            results = await asyncio.gather(
                *[request(namespace, keys) for _ in range(concurrency)]
            )
            answer = results[0]
        elif command == "clear_all":
            DataLoader(batch_load, cache_map=store.cache_map(args[0])).clear_all()
            await store.flush()
        elif command in ("clear", "prime"):
            loader = DataLoader(batch_load, cache_map=store.cache_map(args[0]))
            loader.clear(args[1])
            if command == "prime":
                loader.prime(args[1], json.loads(args[2]))
            await store.flush()
        elif command == "calls":
            answer = calls
        elif command == "stats":
            answer = store.stats.as_dict()
        print(json.dumps(answer), flush=True)
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
