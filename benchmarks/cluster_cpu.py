"""The client's instructions per warm key on a cluster, spread or in one slot.

``python -m benchmarks.cluster_cpu`` starts a private 3-master cluster
(``tests/redis_cluster.py``, no replicas), and runs a client under
``valgrind --tool=callgrind`` (which counts instructions, not seconds: the
same on a busy machine as on a quiet one) for ``buckets=1`` and
``buckets=16``, each with one and with three warm passes over 10,000 keys in
batches of 1,000.  The difference between the two runs of one bucket count
is the cost of two warm passes; divided by their 20,000 loads it is the
client's instructions per warm key, start-up and the cold pass excluded.
Scenario 14 measures wall time, in which the nodes, on the same cores,
take part; this is what the client alone pays.  Needs valgrind and
redis-server; takes about three minutes.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

CLIENT = "benchmarks.cluster_cpu"
KEYS = 10_000
BATCH = 1_000


async def _client(url: str, buckets: int, passes: int) -> None:
    from loadercache import DataLoader
    from loadercache.backends.redis import RedisStore

    # No timeout: under callgrind everything runs about 50 times slower.
    store = RedisStore(
        url, cluster=True, buckets=buckets, prefix=f"cpu{buckets}", timeout=None
    )

    async def batch(keys: list) -> list:  # type: ignore[type-arg]
        return [{"id": key, "name": f"user {key}"} for key in keys]

    keys = list(range(KEYS))
    for _ in range(1 + passes):  # the first pass loads and writes them
        for start in range(0, KEYS, BATCH):
            loader = DataLoader(batch, cache_map=store.cache_map("cpu"))
            await loader.load_many(keys[start : start + BATCH])
        await store.flush()
    await store.aclose()


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.instructions import callgrind
    from tests.redis_cluster import LocalCluster

    directory = Path(tempfile.mkdtemp(prefix="lc-cluster-cpu-"))
    cluster = LocalCluster(directory, masters=3, replicas=0)
    cluster.start()
    try:
        print("client instructions per warm load (callgrind), 3-master cluster")
        for buckets in (1, 16):
            one, three = (
                callgrind(CLIENT, "--client", cluster.seed_url, str(buckets), str(n))
                for n in (1, 3)
            )
            per_key = (three - one) / (2 * KEYS)
            print(f"  buckets={buckets:<3} {per_key:,.0f} instructions per key")
    finally:
        cluster.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        url, buckets, passes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        asyncio.run(_client(url, buckets, passes))
    else:
        main()
