"""Optional OpenTelemetry spans: one per batch dispatch, one per Redis round trip.

``pip install 'loadercache[otel]'`` and configure an OpenTelemetry SDK as
usual; loadercache then reports

* ``loadercache.batch`` around each call of a batch function, with the
  attributes ``loadercache.loader`` (the loader's ``name``, when it has one)
  and ``loadercache.batch_size`` (the keys the call received).  The span is
  current while the batch function runs, so the spans of your database client
  nest under it; a batch function that raises marks it as an error.
* ``loadercache.redis.get_many`` and ``loadercache.redis.set_many`` around
  each round trip of the Redis cache map, with the attribute
  ``loadercache.keys``; with a near cache, ``get_many`` also carries the
  store's ``loadercache.near_hits``, ``near_invalidations``,
  ``near_flushes`` and ``near_size`` so far (near hits make no round trip,
  and no span, of their own).

Why this module costs nothing when OpenTelemetry is absent: nothing here
imports ``opentelemetry`` until the first span is asked for (so ``import
loadercache`` never pays for it, installed or not), and when the import fails
every call returns :data:`NOOP_SPAN`, one shared object whose ``__enter__``
and ``__exit__`` do nothing.  The same goes while no SDK is configured
(the provider is still the API's proxy or no-op provider): a span of the
API's no-op tracer records nothing yet costs several microseconds, which
with ``max_batch_size=100`` is a twentieth of each load.  The loader calls
:func:`batch_span` once per batch, never per ``load()``.

:func:`batch_span` and :func:`redis_span` are what loadercache itself calls;
:func:`set_tracer_provider` is for applications that do not use the global
tracer provider.
"""

from __future__ import annotations

import os
from typing import (
    TYPE_CHECKING,
    Any,
    ContextManager,
    Dict,
    Optional,
    Protocol,
    Tuple,
    Union,
)

from loadercache._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = [
    "NOOP_SPAN",
    "EndableSpan",
    "SpanLike",
    "batch_span",
    "redis_span",
    "set_tracer_provider",
    "start_redis_span",
]

AttributeValue = Union[str, bool, int, float]


class SpanLike(Protocol):
    """What a span context manager yields: an OpenTelemetry ``Span`` or the no-op.

    >>> with batch_span("users", 2) as span:
    ...     span.set_attribute("loadercache.remote_hits", 1)
    """

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute on the span (nothing, on the no-op)."""
        ...


class EndableSpan(SpanLike, Protocol):
    """A span ended explicitly: from :func:`start_redis_span`."""

    def end(self) -> None:
        """End the span (nothing, on the no-op)."""
        ...


class _NoopSpan:
    """A context manager and span that does nothing; see :data:`NOOP_SPAN`."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def end(self) -> None:
        return None

    def __repr__(self) -> str:
        return "NOOP_SPAN"


NOOP_SPAN = _NoopSpan()
"""The one context manager every span call returns when tracing is off.

>>> batch_span("users", 2) is NOOP_SPAN  # without opentelemetry-api
True
"""

# The tracer, resolved on the first span: _UNRESOLVED until then, None when
# opentelemetry-api cannot be imported.
_UNRESOLVED: Any = object()
_tracer: Any = _UNRESOLVED
_provider: Optional[TracerProvider] = None
# Set with the tracer: the opentelemetry.trace module, whether the
# environment names a provider for it to load, and the provider types that
# record nothing (no SDK configured yet).
_trace_api: Any = None
_provider_from_env = False
_silent_providers: Tuple[type, ...] = ()


def set_tracer_provider(provider: Optional[TracerProvider]) -> None:
    """Send loadercache's spans to *provider* instead of the global provider.

    ``None`` goes back to the global provider (``opentelemetry.trace``'s).
    Useful in tests and in applications that keep a provider per component.

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> set_tracer_provider(TracerProvider())
    """
    global _tracer, _provider
    _provider = provider
    _tracer = _UNRESOLVED


def _resolve() -> Any:
    global _tracer, _trace_api, _provider_from_env, _silent_providers
    try:
        from opentelemetry import trace
    except ImportError:
        _tracer = None
    else:
        _trace_api = trace
        _provider_from_env = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        _silent_providers = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        _tracer = trace.get_tracer(
            "loadercache", __version__, tracer_provider=_provider
        )
    return _tracer


def _recording_tracer() -> Any:
    """The tracer, or None when its spans would record nothing.

    Asked per span, not once: the global provider of a proxy tracer may be
    set (an SDK configured) after loadercache made its first span.
    """
    tracer = _tracer
    if tracer is _UNRESOLVED:
        tracer = _resolve()
    if tracer is None:
        return None
    provider = _provider
    if provider is None:
        # trace.get_tracer_provider() costs about 2 us while no provider is
        # set (it looks the environment up, through a KeyError): read the
        # global it returns first, and call it only when it would do more.
        provider = getattr(_trace_api, "_TRACER_PROVIDER", _UNRESOLVED)
        if provider is None and not _provider_from_env:
            return None
        if provider is None or provider is _UNRESOLVED:
            provider = _trace_api.get_tracer_provider()
    if isinstance(provider, _silent_providers):
        return None
    return tracer


def batch_span(loader_name: Optional[str], size: int) -> ContextManager[SpanLike]:
    """A ``loadercache.batch`` span around one call of a batch function.

    >>> with batch_span(loader.name, len(keys)):
    ...     values = await batch_load_fn(keys)

    *loader_name* becomes ``loadercache.loader`` (omitted when ``None``) and
    *size* ``loadercache.batch_size``.  An exception leaving the block is
    recorded on the span.  Returns :data:`NOOP_SPAN` without OpenTelemetry
    or while no SDK provider is configured.
    """
    tracer = _recording_tracer()
    if tracer is None:
        return NOOP_SPAN
    attributes: Dict[str, AttributeValue] = {"loadercache.batch_size": size}
    if loader_name is not None:
        attributes["loadercache.loader"] = loader_name
    span: ContextManager[SpanLike] = tracer.start_as_current_span(
        "loadercache.batch", attributes=attributes
    )
    return span


def redis_span(operation: str, keys: int) -> ContextManager[SpanLike]:
    """A ``loadercache.redis.<operation>`` span around one Redis round trip.

    >>> with redis_span("get_many", len(cache_keys)):
    ...     raw = await client.mget(redis_keys)

    *operation* is ``"get_many"`` or ``"set_many"``; *keys* becomes
    ``loadercache.keys``.  Returns :data:`NOOP_SPAN` without OpenTelemetry
    or while no SDK provider is configured.
    """
    tracer = _recording_tracer()
    if tracer is None:
        return NOOP_SPAN
    span: ContextManager[SpanLike] = tracer.start_as_current_span(
        "loadercache.redis." + operation, attributes={"loadercache.keys": keys}
    )
    return span


def start_redis_span(operation: str, keys: int) -> EndableSpan:
    """A ``loadercache.redis.<operation>`` span that the caller ends itself.

    For a round trip sent from one callback and answered in another, where no
    ``with`` block spans both: the span is not made current.

    >>> span = start_redis_span("set_many", 3)
    >>> span.end()

    Returns :data:`NOOP_SPAN` without OpenTelemetry or while no SDK provider
    is configured.
    """
    tracer = _recording_tracer()
    if tracer is None:
        return NOOP_SPAN
    span: EndableSpan = tracer.start_span(
        "loadercache.redis." + operation, attributes={"loadercache.keys": keys}
    )
    return span
