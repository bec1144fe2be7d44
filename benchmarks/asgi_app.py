"""Scenario 13's web app: one route, a loader per request, served by uvicorn.

``LCBENCH_MODE`` picks the loader every request gets (``dict``: loadercache
with its default per-request dict; ``redis``: over ``store.cache_map(ns)``;
``near``: the same store with a near cache; ``aiodataloader``), and
``LCBENCH_PREFIX`` the Redis key prefix (scenario 9's ``REDIS_URL``).
``GET /users?ids=1,2,...`` answers the rows of those ids (``load_many``);
the batch function sleeps ``DB_SECONDS``, like a database.  ``GET /health``
answers once the process is up, ``GET /stats`` with its store's counters.
Each process exits by itself ``LCBENCH_DEADLINE`` seconds after it started,
whatever its parent does.
"""

from __future__ import annotations

import asyncio
import os
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Dict, List

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from benchmarks.redis_tier import REDIS_URL, TTL, row

#: How long a batch takes in the database.
DB_SECONDS = 0.001
NEAR_SIZE = 10_000
MODES = ("dict", "redis", "near", "aiodataloader")


async def fetch_rows(keys: List[int]) -> List[Dict[str, Any]]:
    await asyncio.sleep(DB_SECONDS)
    return [row(key) for key in keys]


def _loader_factory(mode: str, store: Any) -> Callable[[], Any]:
    if mode == "aiodataloader":
        import aiodataloader

        return lambda: aiodataloader.DataLoader(fetch_rows)
    from loadercache import DataLoader

    if mode == "dict":
        return lambda: DataLoader(fetch_rows)
    return lambda: DataLoader(fetch_rows, cache_map=store.cache_map("users"))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    mode = os.environ.get("LCBENCH_MODE", "dict")
    if mode not in MODES:
        raise RuntimeError(f"LCBENCH_MODE must be one of {MODES}, not {mode!r}")
    deadline = float(os.environ.get("LCBENCH_DEADLINE", "900"))
    watchdog = threading.Timer(deadline, os._exit, (3,))
    watchdog.daemon = True
    watchdog.start()
    store = None
    if mode in ("redis", "near"):
        from loadercache.backends.redis import RedisStore

        store = RedisStore(
            REDIS_URL,
            prefix=os.environ["LCBENCH_PREFIX"],
            ttl=TTL,
            near_cache=NEAR_SIZE if mode == "near" else None,
        )
    app.state.make_loader = _loader_factory(mode, store)
    app.state.store = store
    try:
        yield
    finally:
        if store is not None:
            await store.aclose()


async def users(request: Request) -> JSONResponse:
    ids = [int(part) for part in request.query_params["ids"].split(",")]
    loader = request.app.state.make_loader()
    return JSONResponse(await loader.load_many(ids))


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def stats(request: Request) -> JSONResponse:
    store = request.app.state.store
    return JSONResponse(store.stats.as_dict() if store is not None else {})


app = Starlette(
    routes=[
        Route("/users", users),
        Route("/health", health),
        Route("/stats", stats),
    ],
    lifespan=lifespan,
)
