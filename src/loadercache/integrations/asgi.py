"""ASGI middleware that gives every HTTP request its own set of loaders.

Works with any ASGI application (Starlette, FastAPI, Strawberry's and
Ariadne's ASGI apps) and imports none of them.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

from loadercache.registry import Loaders, use_loaders

__all__ = ["LoadersMiddleware", "Scope"]

Scope = MutableMapping[str, Any]
"""An ASGI connection scope, as the middleware's *factory* receives it."""
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LoadersMiddleware:
    """Run each HTTP request inside ``use_loaders(factory(scope))``.

    >>> from starlette.middleware import Middleware
    >>> app = Starlette(
    ...     routes=routes,
    ...     middleware=[
    ...         Middleware(LoadersMiddleware, factory=lambda scope: AppLoaders(db))
    ...     ],
    ... )

    Anything the request runs (endpoints, dependencies, GraphQL resolvers,
    background tasks of the response) then reaches its loaders with
    ``current_loaders(AppLoaders)``.  *factory* receives the ASGI scope, so it
    can read the authenticated user (``scope["user"]`` behind Starlette's
    ``AuthenticationMiddleware``) or a header to scope the loaders to a
    viewer or tenant.  Lifespan and WebSocket connections pass through
    untouched: a WebSocket lives for many operations, and a cache that lived
    as long would serve stale data; build loaders per operation there.
    """

    def __init__(self, app: ASGIApp, factory: Callable[[Scope], Loaders]) -> None:
        self.app = app
        self.factory = factory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with use_loaders(self.factory(scope)):
            await self.app(scope, receive, send)
