"""Glue between loadercache and the frameworks it is used from.

Each module here is small and imports nothing beyond the standard library and
loadercache: :mod:`loadercache.integrations.asgi` gives every HTTP request of
an ASGI application (Starlette, FastAPI, Strawberry's or Ariadne's ASGI apps)
its own :class:`~loadercache.Loaders`.  The GraphQL frameworks need no module:
their context getters are where per-request loaders go, as the documentation
(``docs/integrations.md``) and ``examples/`` show.
"""
