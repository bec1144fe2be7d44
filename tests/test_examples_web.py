"""The web examples serve: each module's ``app`` runs under uvicorn as it says.

Each example is started as its "run it" line starts it (``python -m uvicorn
--app-dir examples <module>:app``, from the repository root) on a free
loopback port, asked one request, and stopped by its pid.  The FastAPI
example is also held to the same query counts as the other frameworks.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, Optional

import httpx
import pytest

from .redis_servers import delete_prefix, random_prefix, real_redis_url

pytestmark = [
    # Strawberry releases for Python 3.9 import `lia`, which warns that it has
    # been renamed; nothing here uses it.
    pytest.mark.filterwarnings(
        "ignore:The 'lia' package has been renamed:DeprecationWarning"
    ),
]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GRAPHQL = {"query": "{ posts { title author { name } } }"}


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (and the ``blog`` module it imports)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    """``python -m uvicorn --app-dir examples <target>`` on a free port."""

    def __init__(self, target: str, env: Optional[Dict[str, str]] = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                "examples",
                target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"uvicorn exited:\n{self.stop()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"uvicorn did not listen in {timeout} s:\n{self.stop()}")

    def stop(self) -> str:
        """Stop uvicorn by its pid (SIGINT: a clean shutdown); return its output."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
        try:
            output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            output, _ = self.process.communicate(timeout=20)
        return output


def serve(target: str, env: Optional[Dict[str, str]] = None) -> Iterator[Served]:
    served = Served(target, env)
    try:
        served.wait_until_serving()
        yield served
    finally:
        served.stop()


def post_graphql(url: str) -> Any:
    response = httpx.post(url, json=GRAPHQL, timeout=30)
    response.raise_for_status()
    return response.json()


FIRST_POST = {"title": "post 1", "author": {"name": "user 2"}}


@pytest.mark.parametrize(
    ("module", "path"),
    [("strawberry_app", "/graphql"), ("ariadne_app", "/"), ("fastapi_app", "/graphql")],
)
def test_graphql_example_serves_under_uvicorn(module: str, path: str) -> None:
    for served in serve(f"{module}:app"):
        body = post_graphql(served.url + path)
        assert "errors" not in body, body
        assert body["data"]["posts"][0] == FIRST_POST
        assert len(body["data"]["posts"]) == 10


def test_starlette_example_serves_under_uvicorn() -> None:
    for served in serve("starlette_registry:app"):
        response = httpx.get(
            served.url + "/posts", headers={"x-user-id": "1"}, timeout=30
        )
        response.raise_for_status()
        marked = [post["title"] for post in response.json() if post["bookmarked"]]
        assert marked == ["post 2", "post 5", "post 8"]


def test_fastapi_example_rest_route_serves_under_uvicorn() -> None:
    for served in serve("fastapi_app:app"):
        response = httpx.get(served.url + "/posts/1/comments", timeout=30)
        response.raise_for_status()
        assert response.json() == [
            {"body": f"comment {c} on post 1", "author": f"user {2 + c}"}
            for c in range(3)
        ]


def test_redis_example_serves_under_uvicorn_with_its_prefix_from_the_environment() -> (
    None
):
    url = real_redis_url()
    prefix = random_prefix()
    env = {"REDIS_URL": url, "REDIS_PREFIX": prefix}
    try:
        for served in serve("web_redis:app", env):
            users = httpx.get(served.url + "/users", params={"ids": "1,2"}, timeout=30)
            assert users.json() == [
                {"id": 1, "name": "Acme user 1"},
                {"id": 2, "name": "Acme user 2"},
            ]
            bad = httpx.get(served.url + "/users", params={"ids": "1,x"}, timeout=30)
            assert bad.status_code == 400
            assert "integers" in bad.json()["error"]
    finally:
        # After uvicorn's shutdown, which flushed the store's writes.
        deleted = delete_prefix(url, prefix)
    assert deleted >= 2  # the two users, written under the prefix asked for


# -- the FastAPI example, in process -------------------------------------------


async def test_fastapi_example_falls_from_n_plus_one_to_one_query_a_level() -> None:
    blog = example("blog")
    run = example("fastapi_app").run
    naive, naive_queries = await run(batching=False)
    batched, batched_queries = await run(batching=True)
    assert naive_queries == blog.NAIVE_QUERIES
    assert batched_queries == blog.BATCHED_QUERIES
    assert batched == naive == (await example("strawberry_app").run())[0]


async def test_fastapi_rest_route_batches_the_comments_authors() -> None:
    comments, queries = await example("fastapi_app").comments_of(1)
    assert [comment["author"] for comment in comments] == ["user 2", "user 3", "user 4"]
    assert queries == 2  # the comments, then their authors in one query


def test_fastapi_example_script_prints_its_query_counts() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "fastapi_app.py")],
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
    assert "GET /posts/1/comments: 3 comments in 2 queries" in done.stdout
