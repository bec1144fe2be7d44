"""Strawberry: per-request loaders built in the ASGI app's context getter.

    python examples/strawberry_app.py                       # prints query counts
    uvicorn --app-dir examples strawberry_app:app           # serves it
    curl -d '{"query": "{ posts { title author { name } } }"}' \
        -H 'content-type: application/json' http://127.0.0.1:8000/graphql

Strawberry ships a DataLoader of its own; switching to loadercache's is an
import and a keyword: ``from loadercache import DataLoader`` and
``DataLoader(batch_load_fn=...)`` where strawberry says ``load_fn=`` (a
positional batch function needs no change).  What it gains is listed in
``docs/migration.md``: loads that can be cancelled without cancelling other
callers, batches that always settle, mapping results, ``cache_exceptions``,
stats, bounded and shared (Redis) caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import httpx
import strawberry
from blog import QUERY, Blog, BlogLoaders, report, served_blog
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.types import Info


@dataclass
class Context:
    loaders: BlogLoaders


@strawberry.type
class User:
    name: str


async def load_author(info: Info[Context, None], author_id: int) -> Optional[User]:
    row = await info.context.loaders.users.load(author_id)
    return None if row is None else User(name=row.name)


@strawberry.type
class Comment:
    body: str
    author_id: strawberry.Private[int]

    @strawberry.field
    async def author(self, info: Info[Context, None]) -> Optional[User]:
        return await load_author(info, self.author_id)


@strawberry.type
class Post:
    title: str
    id: strawberry.Private[int]
    author_id: strawberry.Private[int]

    @strawberry.field
    async def author(self, info: Info[Context, None]) -> Optional[User]:
        return await load_author(info, self.author_id)

    @strawberry.field
    async def comments(self, info: Info[Context, None]) -> List[Comment]:
        rows = await info.context.loaders.comments_by_post.load(self.id)
        return [Comment(body=row.body, author_id=row.author_id) for row in rows]


@strawberry.type
class Query:
    @strawberry.field
    def posts(self, info: Info[Context, None]) -> List[Post]:
        return [
            Post(title=row.title, id=row.id, author_id=row.author_id)
            for row in info.context.loaders.blog.posts()
        ]


schema = strawberry.Schema(query=Query)


class BlogGraphQL(GraphQL):
    """The ASGI app: a new set of loaders for every request."""

    def __init__(self, blog: Optional[Blog] = None, *, batching: bool = True) -> None:
        super().__init__(schema)
        self.blog = blog  # None: the served blog, opened by the first request
        self.batching = batching

    async def get_context(
        self,
        request: Union[Request, WebSocket],
        response: Union[Response, WebSocket],
    ) -> Context:
        blog = self.blog if self.blog is not None else served_blog()
        return Context(loaders=BlogLoaders(blog, batching=self.batching))


app = BlogGraphQL()


async def run(batching: bool = True) -> Tuple[Dict[str, Any], int]:
    """Serve one HTTP request for QUERY; return its data and the queries it cost."""
    with Blog() as blog:
        asgi = httpx.ASGITransport(app=BlogGraphQL(blog, batching=batching))
        async with httpx.AsyncClient(transport=asgi, base_url="http://test") as client:
            response = await client.post("/", json={"query": QUERY})
    body = response.json()
    assert "errors" not in body, body
    return body["data"], blog.queries


if __name__ == "__main__":
    report("strawberry", run)
