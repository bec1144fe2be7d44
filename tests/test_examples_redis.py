"""examples/web_redis.py serves requests from two 'processes' sharing one Redis.

Runs over fakeredis and over the server at REDIS_URL (random key prefix,
skipped with the reason if none answers).  Each app runs its lifespan, so
its RedisStore is created and closed as in production; the requests go
through httpx's ASGI transport.
"""

from __future__ import annotations

import importlib.util
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Callable, Dict, List

import fakeredis
import httpx
import pytest

from .redis_servers import REDIS_URL, delete_prefix, random_prefix, real_redis_url

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "web_redis.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_redis", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


web_redis = load_example()


class Process:
    """One app (one process of the service) and an HTTP client to it."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def get_users(self, ids: str, tenant: str = "acme") -> List[Any]:
        response = await self.client.get(
            "/users", params={"ids": ids}, headers={"x-tenant": tenant}
        )
        response.raise_for_status()
        users: List[Any] = response.json()
        return users

    async def settle(self) -> None:
        """Wait for this process's background Redis writes."""
        await self.app.state.store.flush()


@pytest.fixture(params=["fakeredis", "real"])
async def start(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[Any], Any]]:
    """start(db) -> a new Process on the shared Redis, its lifespan running."""
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        prefix = "example"

        def redis_for_app() -> Any:
            return fakeredis.FakeAsyncRedis(server=server)
    else:
        url = real_redis_url()
        prefix = random_prefix()

        def redis_for_app() -> Any:
            return url  # the store builds (and closes) its own client

    try:
        async with AsyncExitStack() as stack:

            async def start_process(db: Any) -> Process:
                app = web_redis.create_app(redis_for_app(), db=db, prefix=prefix)
                await stack.enter_async_context(app.router.lifespan_context(app))
                client = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://test"
                )
                await stack.enter_async_context(client)
                return Process(app, client)

            yield start_process
    finally:
        # After every lifespan has ended, and so flushed its writes.
        if request.param == "real":
            delete_prefix(REDIS_URL, prefix)


async def test_two_processes_share_loads_primes_and_clears(
    start: Callable[[Any], Any],
) -> None:
    db = web_redis.UserDB()
    first: Process = await start(db)
    second: Process = await start(db)

    # The first process queries the database once for both users ...
    assert await first.get_users("1,2") == [
        {"id": 1, "name": "Acme user 1"},
        {"id": 2, "name": "Acme user 2"},
    ]
    assert db.queries == 1
    await first.settle()
    # ... and the second finds them in Redis: one query, for user 3 only.
    assert [u["name"] for u in await second.get_users("1,2,3")] == [
        "Acme user 1",
        "Acme user 2",
        "Acme user 3",
    ]
    assert db.queries == 2
    await second.settle()

    # An update primes the new row for every process.
    response = await first.client.put("/users/1", json={"name": "Ada"})
    assert response.json() == {"id": 1, "name": "Ada"}
    assert db.queries == 3
    await first.settle()
    assert await second.get_users("1") == [{"id": 1, "name": "Ada"}]
    assert db.queries == 3

    # Another tenant never sees acme's rows.
    assert await second.get_users("1", tenant="globex") == [
        {"id": 1, "name": "Globex user 1"}
    ]
    assert db.queries == 4
    await second.settle()

    # clear_all forgets acme's users in every process, not globex's.
    db.rows["acme"][2] = {"id": 2, "name": "Grace"}
    assert (await second.client.delete("/users")).json() == {"cleared": True}
    await second.settle()
    assert await first.get_users("1,2") == [
        {"id": 1, "name": "Ada"},
        {"id": 2, "name": "Grace"},
    ]
    assert db.queries == 5
    assert await first.get_users("1", tenant="globex") == [
        {"id": 1, "name": "Globex user 1"}
    ]
    assert db.queries == 5

    stats: Dict[str, Any] = (await first.client.get("/stats")).json()
    assert stats["errors"] == 0 and stats["breaker_state"] == "closed"
    assert stats["hits"] >= 1


async def test_a_missing_user_is_cached_as_none(start: Callable[[Any], Any]) -> None:
    db = web_redis.UserDB()
    first: Process = await start(db)
    second: Process = await start(db)
    assert await first.get_users("99") == [None]
    await first.settle()
    assert await second.get_users("99") == [None]
    assert db.queries == 1


async def test_the_demo_prints_one_query_for_two_processes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = real_redis_url()
    prefix = random_prefix()
    try:
        assert await web_redis.demo(url, prefix) == 1
    finally:
        delete_prefix(url, prefix)
    out = capsys.readouterr().out
    assert "process 2 read ['Acme user 1', 'Acme user 2', 'Acme user 3']" in out
    assert "database queries for both processes: 1" in out


async def test_ids_that_are_not_integers_are_a_400(start: Callable[[Any], Any]) -> None:
    db = web_redis.UserDB()
    process: Process = await start(db)
    for ids in ("1,x", "x", "1.5"):
        response = await process.client.get("/users", params={"ids": ids})
        assert response.status_code == 400, ids
        assert "integers" in response.json()["error"]
    assert await process.get_users("1, 2,") == [
        {"id": 1, "name": "Acme user 1"},
        {"id": 2, "name": "Acme user 2"},
    ]
    assert db.queries == 1
