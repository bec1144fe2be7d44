"""Starlette: one Redis cache shared by every process, loaders per request.

    pip install 'loadercache[redis,integrations]'   # redis-py, msgpack, starlette
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/web_redis.py
    uvicorn --app-dir examples web_redis:app --workers 4   # a real server
    curl -H 'x-tenant: acme' 'http://127.0.0.1:8000/users?ids=1,2'

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) is the server and
``REDIS_PREFIX`` (default ``example``) the first segment of every key the app
writes, so that several deployments (or test runs) can share one server.

One :class:`RedisStore` per process is created in the lifespan (it holds the
Redis client, so it is opened once and closed at shutdown) and lives at
``app.state.store``.  Each request builds its own loaders from it; that costs
no I/O.  The cache namespace carries the tenant, taken here from the
``x-tenant`` header (in an application: from the authenticated user), so one
tenant's rows are never served to another.

* ``GET /users?ids=1,2`` loads users: from the request's own cache, else from
  Redis (filled by any process), else from the database in one query.  Ids
  that are not integers are a 400, not a server error.
* ``PUT /users/{id}`` updates a user, then ``clear(id).prime(id, user)``: every
  process reads the new row from Redis without querying.
* ``DELETE /users`` forgets the tenant's cached users in every process
  (``clear_all``, one Redis command), e.g. after a bulk import.
* ``GET /stats`` shows the store's counters.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Dict, List, Optional, Union

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadercache import DataLoader
from loadercache.backends.redis import RedisStore

User = Dict[str, Any]


class UserDB:
    """The database: users per tenant, and how many queries it answered."""

    def __init__(self) -> None:
        self.rows: Dict[str, Dict[int, User]] = {
            "acme": {i: {"id": i, "name": f"Acme user {i}"} for i in range(1, 6)},
            "globex": {i: {"id": i, "name": f"Globex user {i}"} for i in range(1, 6)},
        }
        self.queries = 0

    async def fetch_users(self, tenant: str, ids: List[int]) -> List[Optional[User]]:
        """SELECT ... WHERE tenant = $1 AND id = ANY($2): one query per batch."""
        self.queries += 1
        await asyncio.sleep(0)  # the database round trip
        rows = self.rows.get(tenant, {})
        return [rows.get(user_id) for user_id in ids]

    async def update_user(self, tenant: str, user: User) -> None:
        self.queries += 1
        self.rows.setdefault(tenant, {})[user["id"]] = user


class RequestLoaders:
    """The loaders of one request, scoped to its tenant."""

    def __init__(self, store: RedisStore, db: UserDB, tenant: str) -> None:
        async def fetch(ids: List[int]) -> List[Optional[User]]:
            return await db.fetch_users(tenant, ids)

        # The tenant is part of the namespace: the cache is shared by every
        # process, never by two tenants.
        self.users: DataLoader[int, Optional[User]] = DataLoader(
            fetch, cache_map=store.cache_map(f"tenant:{tenant}:users")
        )


def loaders(request: Request) -> RequestLoaders:
    """This request's loaders, built on first use from the process's store."""
    built: Optional[RequestLoaders] = getattr(request.state, "loaders", None)
    if built is None:
        tenant = request.headers.get("x-tenant", "acme")
        app = request.app
        built = RequestLoaders(app.state.store, app.state.db, tenant)
        request.state.loaders = built
    return built


async def get_users(request: Request) -> JSONResponse:
    text = request.query_params.get("ids", "")
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return JSONResponse(
            {"error": f"ids must be integers separated by commas, got {text!r}"},
            status_code=400,
        )
    users = await loaders(request).users.load_many(ids)
    return JSONResponse(users)


async def put_user(request: Request) -> JSONResponse:
    user_id = int(request.path_params["user_id"])
    user = {"id": user_id, "name": (await request.json())["name"]}
    tenant = request.headers.get("x-tenant", "acme")
    await request.app.state.db.update_user(tenant, user)
    # Replace the cached row for this request and, through Redis, for every
    # process: prime alone never overwrites, so clear first.
    loaders(request).users.clear(user_id).prime(user_id, user)
    return JSONResponse(user)


async def forget_users(request: Request) -> JSONResponse:
    loaders(request).users.clear_all()  # every process, this tenant only
    return JSONResponse({"cleared": True})


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.store.stats.as_dict())


def create_app(
    redis: Union[str, Redis, None] = None,
    *,
    db: Optional[UserDB] = None,
    prefix: Optional[str] = None,
) -> Starlette:
    """The app; *redis* is a URL (default: $REDIS_URL) or a client you close.

    *prefix* (default: $REDIS_PREFIX, else ``"example"``) starts every key.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One store per process: created at start-up, closed at shutdown
        # (which also sends the writes still in the background).
        target = redis or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        key_prefix = prefix or os.environ.get("REDIS_PREFIX", "example")
        app.state.store = RedisStore(
            target, prefix=key_prefix, ttl=600, negative_ttl=30
        )
        try:
            yield
        finally:
            await app.state.store.aclose()

    app = Starlette(
        routes=[
            Route("/users", get_users, methods=["GET"]),
            Route("/users", forget_users, methods=["DELETE"]),
            Route("/users/{user_id:int}", put_user, methods=["PUT"]),
            Route("/stats", stats, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.db = db if db is not None else UserDB()
    return app


app = create_app()


async def demo(redis: Optional[str] = None, prefix: Optional[str] = None) -> int:
    """Two 'processes' (two apps) sharing one Redis and one database.

    Prints what the second process read, and returns the database queries
    both made.
    """
    db = UserDB()
    first = create_app(redis, db=db, prefix=prefix)
    second = create_app(redis, db=db, prefix=prefix)
    async with AsyncExitStack() as stack:
        clients = []
        for app in (first, second):
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            client = httpx.AsyncClient(transport=transport, base_url="http://app")
            clients.append(await stack.enter_async_context(client))
        one, two = clients
        await two.delete("/users")  # start from an empty cache
        await second.state.store.flush()
        await one.get("/users", params={"ids": "1,2,3"})
        await first.state.store.flush()  # tests and shutdown; not per request
        users = (await two.get("/users", params={"ids": "1,2,3"})).json()
    print(f"process 2 read {[user['name'] for user in users]}")
    print(f"database queries for both processes: {db.queries}")
    return db.queries


if __name__ == "__main__":
    asyncio.run(demo())
