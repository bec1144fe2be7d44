"""The framework examples run for real, and their N+1 falls to one query a level.

Each example in ``examples/`` serves the same nested query over the same
SQLite blog (``examples/blog.py``) once with batching off (the N+1 baseline)
and once with per-request DataLoaders, and reports the queries each cost.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadercache import DataLoader
from loadercache.integrations.asgi import LoadersMiddleware, Scope
from loadercache.registry import Loaders, current_loaders, loader_property

pytestmark = [
    # Strawberry releases for Python 3.9 import `lia`, which warns that it has
    # been renamed; nothing here uses it.
    pytest.mark.filterwarnings(
        "ignore:The 'lia' package has been renamed:DeprecationWarning"
    ),
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FRAMEWORKS = ["graphql_core_app", "strawberry_app", "graphene_app", "ariadne_app"]


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (and the ``blog`` module it imports)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("name", FRAMEWORKS)
async def test_nested_query_falls_from_n_plus_one_to_one_query_a_level(
    name: str,
) -> None:
    blog = example("blog")
    run = example(name).run
    naive, naive_queries = await run(batching=False)
    batched, batched_queries = await run(batching=True)
    assert naive_queries == blog.NAIVE_QUERIES == 51
    assert batched_queries == blog.BATCHED_QUERIES == 4
    assert batched == naive


async def test_every_framework_serves_the_same_response() -> None:
    responses = [(await example(name).run())[0] for name in FRAMEWORKS]
    assert all(response == responses[0] for response in responses)
    posts = responses[0]["posts"]
    assert len(posts) == 10
    assert posts[0] == {
        "title": "post 1",
        "author": {"name": "user 2"},
        "comments": [
            {"body": f"comment {c} on post 1", "author": {"name": f"user {2 + c}"}}
            for c in range(3)
        ],
    }


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_example_script_prints_its_query_counts(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES,
    )
    assert done.returncode == 0, done.stderr
    counts = dict(
        re.findall(r"^(naive resolvers|with DataLoader):\s+(\d+)", done.stdout, re.M)
    )
    assert counts == {"naive resolvers": "51", "with DataLoader": "4"}
    assert "same response:   yes" in done.stdout


# -- per-request loaders in an ASGI application --------------------------


async def test_starlette_example_serves_each_viewer_their_own_bookmarks() -> None:
    bodies, queries = await example("starlette_registry").run(viewers=(1, 2))
    marked = [[p["title"] for p in body if p["bookmarked"]] for body in bodies]
    # examples/blog.py: user u has bookmarked post p when (u + p) % 3 == 0.
    assert marked == [
        ["post 2", "post 5", "post 8"],
        ["post 1", "post 4", "post 7", "post 10"],
    ]
    # Per request: the posts, their authors, the viewer's bookmarks.
    assert queries == 2 * 3


def test_starlette_example_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "starlette_registry.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES,
    )
    assert done.returncode == 0, done.stderr
    assert "viewer 1 bookmarked: post 2, post 5, post 8" in done.stdout
    assert "2 concurrent requests: 6 queries" in done.stdout


class InFlight:
    """Releases the batch functions once every request has one running."""

    def __init__(self, requests: int) -> None:
        self.requests = requests
        self.arrived = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.requests:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), timeout=5)


class ViewerLoaders(Loaders):
    """Loaders whose values depend on the viewer; every batch joins ``in_flight``."""

    def __init__(self, viewer: str, batches: List[str], in_flight: InFlight) -> None:
        self.viewer = viewer
        self.batches = batches
        self.in_flight = in_flight

    @loader_property
    def secrets(self) -> DataLoader[int, str]:
        async def fetch(ids: List[int]) -> List[str]:
            self.batches.append(self.viewer)
            await self.in_flight.wait()
            return [f"{self.viewer}'s secret {i}" for i in ids]

        return DataLoader(fetch)


async def secrets_endpoint(request: Request) -> JSONResponse:
    loaders = current_loaders(ViewerLoaders)
    first = await loaders.secrets.load_many([1, 2, 3])
    # By now the other request has cached the same keys for its own viewer.
    again = await asyncio.gather(*(loaders.secrets.load(k) for k in (3, 2, 1)))
    return JSONResponse({"viewer": loaders.viewer, "values": first + list(again)})


async def test_concurrent_requests_of_two_users_never_see_each_others_values() -> None:
    batches: List[str] = []
    in_flight = InFlight(requests=2)

    def loaders_for(scope: Scope) -> ViewerLoaders:
        headers = dict(scope["headers"])
        return ViewerLoaders(headers[b"x-user"].decode(), batches, in_flight)

    app = Starlette(routes=[Route("/secrets", secrets_endpoint)])
    app.add_middleware(LoadersMiddleware, factory=loaders_for)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        responses = await asyncio.gather(
            *(
                client.get("/secrets", headers={"x-user": user})
                for user in ("alice", "bob")
            )
        )
    bodies: List[Dict[str, Any]] = [response.json() for response in responses]
    for body in bodies:
        user = body["viewer"]
        assert body["values"] == [f"{user}'s secret {k}" for k in (1, 2, 3, 3, 2, 1)]
    assert [body["viewer"] for body in bodies] == ["alice", "bob"]
    # One batch per request, both running at once; the second round of each
    # request was served from that request's own cache.
    assert sorted(batches) == ["alice", "bob"]


async def test_the_middleware_passes_lifespan_and_websockets_through() -> None:
    seen: List[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        try:
            current_loaders()
        except RuntimeError:
            seen.append(scope["type"])

    def factory(scope: Scope) -> Loaders:
        raise AssertionError("no loaders outside HTTP requests")

    middleware = LoadersMiddleware(app, factory=factory)

    async def receive() -> Dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    for kind in ("lifespan", "websocket"):
        await middleware({"type": kind}, receive, send)
    assert seen == ["lifespan", "websocket"]


async def test_the_middleware_restores_the_context_when_the_app_fails() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert isinstance(current_loaders(), Loaders)
        raise ValueError("the endpoint failed")

    middleware = LoadersMiddleware(app, factory=lambda scope: Loaders())

    async def receive() -> Dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    with pytest.raises(ValueError, match="the endpoint failed"):
        await middleware({"type": "http"}, receive, send)
    with pytest.raises(RuntimeError):
        current_loaders()
