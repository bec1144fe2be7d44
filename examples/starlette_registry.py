"""Starlette: every HTTP request gets its own loaders from a middleware.

    python examples/starlette_registry.py                   # two viewers' requests
    uvicorn --app-dir examples starlette_registry:app       # serves it
    curl -H 'x-user-id: 1' http://127.0.0.1:8000/posts

``LoadersMiddleware`` builds an ``AppLoaders`` for each request (here scoped
to the viewer named by a header; in an application, the authenticated user)
and code anywhere in that request reaches it with
``current_loaders(AppLoaders)``: the endpoint does not pass it to
``render_post``.  Two requests never share a loader, so a value cached for
one viewer is never served to another.  FastAPI takes the same middleware
(``app.add_middleware(LoadersMiddleware, factory=...)``).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Dict, List, Optional, Tuple

import httpx
from blog import Blog, BlogLoaders, Post, fetch_bookmarked, served_blog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadercache import DataLoader
from loadercache.integrations.asgi import LoadersMiddleware, Scope
from loadercache.registry import current_loaders, loader_property


class AppLoaders(BlogLoaders):
    """The blog's loaders, plus one whose values depend on the viewer."""

    def __init__(self, blog: Blog, viewer_id: int) -> None:
        super().__init__(blog)
        self.viewer_id = viewer_id

    @loader_property
    def bookmarked(self) -> DataLoader[int, bool]:
        return DataLoader(
            functools.partial(fetch_bookmarked, self.blog, self.viewer_id)
        )


async def render_post(post: Post) -> Dict[str, Any]:
    loaders = current_loaders(AppLoaders)
    author, bookmarked = await asyncio.gather(
        loaders.users.load(post.author_id), loaders.bookmarked.load(post.id)
    )
    return {
        "title": post.title,
        "author": None if author is None else author.name,
        "bookmarked": bookmarked,
    }


async def list_posts(request: Request) -> JSONResponse:
    posts = current_loaders(AppLoaders).blog.posts()
    return JSONResponse(await asyncio.gather(*(render_post(p) for p in posts)))


def make_app(blog: Optional[Blog] = None) -> Starlette:
    """The app; without *blog*, it serves the blog its first request opens."""

    def loaders_for(scope: Scope) -> AppLoaders:
        viewer_id = int(Headers(scope=scope).get("x-user-id", "0"))
        return AppLoaders(blog if blog is not None else served_blog(), viewer_id)

    return Starlette(
        routes=[Route("/posts", list_posts)],
        middleware=[Middleware(LoadersMiddleware, factory=loaders_for)],
    )


app = make_app()


async def run(viewers: Tuple[int, ...] = (1, 2)) -> Tuple[List[Any], int]:
    """Serve one request per viewer, concurrently; return the bodies and queries."""
    with Blog() as blog:
        asgi = httpx.ASGITransport(app=make_app(blog))
        async with httpx.AsyncClient(transport=asgi, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(client.get("/posts", headers={"x-user-id": str(v)}) for v in viewers)
            )
    return [response.json() for response in responses], blog.queries


if __name__ == "__main__":
    bodies, queries = asyncio.run(run())
    for viewer, body in zip((1, 2), bodies):
        marked = [post["title"] for post in body if post["bookmarked"]]
        print(f"viewer {viewer} bookmarked: {', '.join(marked)}")
    print(
        f"2 concurrent requests: {queries} queries (per request: posts, users, "
        "bookmarks)"
    )
