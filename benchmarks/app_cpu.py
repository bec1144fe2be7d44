"""CPU per request of scenario 13's web app, in-process, without the database.

``python -m benchmarks.app_cpu`` runs :mod:`benchmarks.asgi_app` (Starlette,
one loader per request, ``load_many`` of the request's ids) in one process,
called as an ASGI app (no server, no client, no sockets but Redis'), with a
batch function that returns at once, for each loader mode: a per-request
dict, the Redis tier, the Redis tier with a near cache, and aiodataloader.
Each request asks for 50 ids drawn (seeded) from 200 hot keys, one request
after another; a warm-up of 100 requests fills Redis and the near cache
first.

The cost is counted by ``valgrind --tool=callgrind`` (instructions, not
seconds: the same on a busy machine): each mode runs twice, with 100 and
with 300 measured requests, and the difference over 200 requests is the
instructions per request, start-up and warm-up excluded.  What is left of a
request is the framework's and the loader's work: the routing and the JSON
response are the same in every mode.  Needs valgrind, Starlette and Redis at
``REDIS_URL`` (keys under a prefix of their own, deleted at the end); takes
about three minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from typing import Any, Dict, List

MODES = ("dict", "redis", "near", "aiodataloader")
IDS_PER_REQUEST = 50
HOT_KEYS = 200
WARM_UP = 100


async def _call(app: Any, path: str, query: str) -> bytes:
    """One GET through the ASGI app; the response body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
        "app": app,
    }
    body: List[bytes] = []

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return b"".join(body)


async def _client(mode: str, requests: int) -> None:
    os.environ["LCBENCH_MODE"] = mode
    from benchmarks import asgi_app

    asgi_app.DB_SECONDS = 0.0  # the database answers at once
    app = asgi_app.app
    rng = random.Random(13)
    queries = [
        "ids=" + ",".join(str(rng.randrange(HOT_KEYS)) for _ in range(IDS_PER_REQUEST))
        for _ in range(WARM_UP + requests)
    ]
    async with app.router.lifespan_context(app):
        for query in queries[:WARM_UP]:
            await _call(app, "/users", query)
        store = app.state.store
        if store is not None:
            await store.flush()
        for query in queries[WARM_UP:]:
            await _call(app, "/users", query)


def main() -> None:
    from benchmarks.instructions import callgrind
    from benchmarks.redis_tier import delete_prefix

    prefix = f"lcappcpu-{uuid.uuid4().hex[:8]}"
    print(
        f"instructions per request (callgrind), {IDS_PER_REQUEST} ids of "
        f"{HOT_KEYS} hot keys, in-process, no database latency"
    )
    costs: Dict[str, float] = {}
    try:
        for mode in MODES:
            env = dict(os.environ, LCBENCH_PREFIX=prefix)
            few, many = (
                callgrind("benchmarks.app_cpu", "--client", mode, str(n), env=env)
                for n in (100, 300)
            )
            costs[mode] = (many - few) / 200
            print(
                f"  {mode:<14} {costs[mode]:>12,.0f}   "
                f"{costs[mode] / costs.get('dict', costs[mode]):.2f} x dict"
            )
    finally:
        asyncio.run(delete_prefix(prefix))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        asyncio.run(_client(sys.argv[2], int(sys.argv[3])))
    else:
        main()
