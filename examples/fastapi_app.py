"""FastAPI: Strawberry's GraphQL router and a REST route, loaders per request.

    python examples/fastapi_app.py                          # prints query counts
    uvicorn --app-dir examples fastapi_app:app              # serves it
    curl http://127.0.0.1:8000/posts/1/comments
    curl -d '{"query": "{ posts { title author { name } } }"}' \\
        -H 'content-type: application/json' http://127.0.0.1:8000/graphql

``LoadersMiddleware`` gives every HTTP request its own ``BlogLoaders``; the
GraphQL router's context getter and the REST endpoint both take them through
one dependency, ``request_loaders``, so everything a request loads shares
that request's cache and nothing is shared between requests.  The GraphQL
schema is the one of ``examples/strawberry_app.py``: its resolvers read
``info.context.loaders``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Dict, List, Optional, Tuple

import httpx
from blog import QUERY, Blog, BlogLoaders, report, served_blog
from fastapi import Depends, FastAPI
from strawberry.fastapi import BaseContext, GraphQLRouter
from strawberry_app import schema

from loadercache.integrations.asgi import LoadersMiddleware, Scope
from loadercache.registry import current_loaders


async def request_loaders() -> BlogLoaders:
    """The dependency: this request's loaders, as the middleware made them."""
    return current_loaders(BlogLoaders)


Loaders = Annotated[BlogLoaders, Depends(request_loaders)]


class Context(BaseContext):
    """What Strawberry's resolvers see as ``info.context``."""

    def __init__(self, loaders: BlogLoaders) -> None:
        super().__init__()
        self.loaders = loaders


async def graphql_context(loaders: Loaders) -> Context:
    return Context(loaders)


def make_app(blog: Optional[Blog] = None, *, batching: bool = True) -> FastAPI:
    """The app; without *blog*, it serves the blog its first request opens."""
    app = FastAPI(title="loadercache blog")

    def loaders_for(scope: Scope) -> BlogLoaders:
        return BlogLoaders(
            blog if blog is not None else served_blog(), batching=batching
        )

    app.add_middleware(LoadersMiddleware, factory=loaders_for)
    app.include_router(
        GraphQLRouter(schema, context_getter=graphql_context), prefix="/graphql"
    )

    @app.get("/posts/{post_id}/comments")
    async def post_comments(post_id: int, loaders: Loaders) -> List[Dict[str, Any]]:
        comments = await loaders.comments_by_post.load(post_id)
        authors = await loaders.users.load_many([c.author_id for c in comments])
        return [
            {"body": comment.body, "author": None if author is None else author.name}
            for comment, author in zip(comments, authors)
        ]

    return app


app = make_app()


async def run(batching: bool = True) -> Tuple[Dict[str, Any], int]:
    """Serve one GraphQL request for QUERY; return its data and the queries it cost."""
    with Blog() as blog:
        asgi = httpx.ASGITransport(app=make_app(blog, batching=batching))
        async with httpx.AsyncClient(transport=asgi, base_url="http://test") as client:
            response = await client.post("/graphql", json={"query": QUERY})
    body = response.json()
    assert "errors" not in body, body
    return body["data"], blog.queries


async def comments_of(post_id: int) -> Tuple[List[Dict[str, Any]], int]:
    """Serve GET /posts/{post_id}/comments; return the body and the queries."""
    with Blog() as blog:
        asgi = httpx.ASGITransport(app=make_app(blog))
        async with httpx.AsyncClient(transport=asgi, base_url="http://test") as client:
            response = await client.get(f"/posts/{post_id}/comments")
    response.raise_for_status()
    body: List[Dict[str, Any]] = response.json()
    return body, blog.queries


if __name__ == "__main__":
    report("fastapi", run)
    comments, queries = asyncio.run(comments_of(1))
    print(f"GET /posts/1/comments: {len(comments)} comments in {queries} queries")
