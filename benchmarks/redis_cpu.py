"""The client's instructions per warm key of scenario 9a, counted by callgrind.

``python -m benchmarks.redis_cpu`` (``REDIS_URL``, default
``redis://127.0.0.1:6379/0``) writes 10,000 of scenario 9a's 10-field rows
under a prefix of its own, then runs each entry in a child process under
``valgrind --tool=callgrind``, once with one warm pass and once with three,
over batches of 1,000.  The difference is two warm passes, start-up and
imports excluded; divided by their 20,000 reads it is the client's
instructions per warm key:

* ``loadercache``: a fresh ``DataLoader`` and ``store.cache_map`` per batch,
  its keys loaded in one tick, as in scenario 9a;
* ``store get_many``: the same cache map's ``get_many``, the Redis tier
  without the loader around it;
* ``redis-py MGET+msgpack (hiredis)``: the hand-written read of 9a on
  redis-py's hiredis parser: one ``MGET`` and ``msgpack.unpackb`` per value.

Instructions are not seconds (a system call, a cache miss), but they are the
same on a busy machine as on a quiet one, which 9a's timed rounds are not.
It deletes its keys afterwards (found by ``SCAN`` under its prefix).  Needs
valgrind, a Redis server and hiredis; takes about two minutes.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List

CHILD = "benchmarks.redis_cpu"
KEYS = 10_000
BATCH = 1_000
ENTRIES = ("loadercache", "store get_many", "redis-py MGET+msgpack (hiredis)")
BASELINE = ENTRIES[2]
# The store's value layout: a 13-byte envelope, a format-version byte, msgpack.
_HEADER = 14


def _store(url: str, prefix: str) -> Any:
    from loadercache.backends.redis import RedisStore

    # No timeout: under callgrind everything runs about 50 times slower.
    return RedisStore(url, prefix=prefix, ttl=600, timeout=None)


async def _batch(keys: List[int]) -> List[Dict[str, Any]]:
    from benchmarks.redis_tier import row

    return [row(key) for key in keys]


async def _fill(url: str, prefix: str) -> None:
    from loadercache import DataLoader

    store = _store(url, prefix)
    try:
        loader: DataLoader[int, Any] = DataLoader(
            _batch, cache_map=store.cache_map("cpu")
        )
        await loader.load_many(range(KEYS))
        await store.flush()
    finally:
        await store.aclose()


async def _child(entry: str, url: str, prefix: str, passes: int) -> None:
    from loadercache import DataLoader

    store = _store(url, prefix)
    chunks = [list(range(i, i + BATCH)) for i in range(0, KEYS, BATCH)]
    try:
        if entry == BASELINE:
            import msgpack  # type: ignore[import-untyped, unused-ignore]
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(url)
            base = store.redis_key("cpu", 0)[:-1]  # ...:i:
            unpackb = msgpack.unpackb
            await client.ping()
            for _ in range(passes):
                for chunk in chunks:
                    raws = await client.mget([base + b"%d" % key for key in chunk])
                    values = [unpackb(raw[_HEADER:]) for raw in raws]
            assert values[-1]["id"] == KEYS - 1
            await client.aclose()
            return
        for _ in range(passes):
            for chunk in chunks:
                cache_map = store.cache_map("cpu")
                if entry == "store get_many":
                    values = list(await cache_map.get_many(chunk))
                else:
                    loader: DataLoader[int, Any] = DataLoader(
                        _batch, cache_map=cache_map
                    )
                    futures = [loader.load(key) for key in chunk]
                    values = [await future for future in futures]
        assert values[-1]["id"] == KEYS - 1, "a warm key missed"
    finally:
        await store.aclose()


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.instructions import callgrind
    from benchmarks.redis_tier import (
        REDIS_URL,
        delete_prefix,
        hiredis_available,
        unavailable,
    )

    why = unavailable() or (None if hiredis_available() else "hiredis is missing")
    if why is not None:
        raise SystemExit(f"benchmarks.redis_cpu: {why}")
    prefix = f"lcbench-cpu-{uuid.uuid4().hex[:12]}"
    asyncio.run(_fill(REDIS_URL, prefix))
    try:
        print(f"client instructions per warm key (callgrind), {REDIS_URL}")
        counts: Dict[str, float] = {}
        for entry in ENTRIES:
            one, three = (
                callgrind(CHILD, "--child", entry, REDIS_URL, prefix, str(n))
                for n in (1, 3)
            )
            counts[entry] = (three - one) / (2 * KEYS)
        for entry, per_key in counts.items():
            ratio = counts[BASELINE] / per_key
            print(
                f"  {entry:<34} {per_key:>8,.0f} per key"
                f"  (the throughput of {ratio:.2f} x {BASELINE})"
            )
    finally:
        asyncio.run(delete_prefix(prefix))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        entry, url, prefix, passes = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
        asyncio.run(_child(entry, url, prefix, int(passes)))
    else:
        main()
