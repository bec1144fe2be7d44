"""OpenTelemetry spans: what they are called and carry, and that they cost
nothing when opentelemetry-api is absent."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import textwrap
from typing import Any, Iterator, List, Optional, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from loadercache import DataLoader, tracing


class Spans:
    """The spans finished under a test's own provider, and a tracer on it."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def finished(self, name: Optional[str] = None) -> List[ReadableSpan]:
        return [
            span
            for span in self.exporter.get_finished_spans()
            if name is None or span.name == name
        ]


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorded = Spans()
    tracing.set_tracer_provider(recorded.provider)
    yield recorded
    tracing.set_tracer_provider(None)
    recorded.provider.shutdown()


# -- the spans tracing.py makes -------------------------------------------


def test_batch_span_is_named_and_carries_the_loader_and_size(spans: Spans) -> None:
    with tracing.batch_span("users", 3):
        pass
    (span,) = spans.finished()
    assert span.name == "loadercache.batch"
    assert dict(span.attributes or {}) == {
        "loadercache.loader": "users",
        "loadercache.batch_size": 3,
    }


def test_an_unnamed_loader_leaves_the_loader_attribute_out(spans: Spans) -> None:
    with tracing.batch_span(None, 1):
        pass
    (span,) = spans.finished()
    assert dict(span.attributes or {}) == {"loadercache.batch_size": 1}


@pytest.mark.parametrize("operation", ["get_many", "set_many"])
def test_redis_span_is_named_for_its_round_trip(spans: Spans, operation: str) -> None:
    with tracing.redis_span(operation, 5):
        pass
    (span,) = spans.finished()
    assert span.name == f"loadercache.redis.{operation}"
    assert dict(span.attributes or {}) == {"loadercache.keys": 5}


def test_the_span_is_current_so_work_inside_nests_under_it(spans: Spans) -> None:
    with tracing.batch_span("users", 2), spans.tracer.start_as_current_span("db"):
        pass
    db, batch = spans.finished()
    assert db.parent is not None
    assert db.parent.span_id == batch.context.span_id


def test_an_exception_leaving_the_span_marks_it_as_an_error(spans: Spans) -> None:
    with pytest.raises(ValueError), tracing.batch_span("users", 2):
        raise ValueError("database down")
    (span,) = spans.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_the_yielded_span_takes_attributes(spans: Spans) -> None:
    with tracing.redis_span("get_many", 4) as span:
        span.set_attribute("loadercache.hits", 3)
    (finished,) = spans.finished()
    assert (finished.attributes or {})["loadercache.hits"] == 3


def test_without_a_configured_sdk_spans_are_the_shared_noop(spans: Spans) -> None:
    # The global provider of this process is still the API's proxy: its
    # spans would record nothing, so none is made.
    tracing.set_tracer_provider(None)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert tracing.batch_span("users", 1) is tracing.NOOP_SPAN
    assert tracing.redis_span("get_many", 1) is tracing.NOOP_SPAN
    tracing.set_tracer_provider(trace.NoOpTracerProvider())
    assert tracing.batch_span("users", 1) is tracing.NOOP_SPAN


def test_spans_follow_a_global_provider_configured_after_the_first_span() -> None:
    # The global provider can be set once per process: a process of its own.
    out = run_python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from loadercache import tracing

        print(tracing.batch_span("users", 1) is tracing.NOOP_SPAN)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        with tracing.batch_span("users", 1):
            pass
        print([span.name for span in exporter.get_finished_spans()])
        """
    )
    assert out.splitlines() == ["True", "['loadercache.batch']"]


# -- a real loader's spans (loader._run_batch calls tracing.batch_span) ------


async def test_loader_dispatch_is_traced_as_one_batch_span(spans: Spans) -> None:
    async def fetch_users(ids: List[int]) -> List[str]:
        with spans.tracer.start_as_current_span("db.query"):
            return [f"user {i}" for i in ids]

    users: DataLoader[int, str] = DataLoader(fetch_users, name="users")
    assert await asyncio.gather(users.load(1), users.load(2), users.load(1)) == [
        "user 1",
        "user 2",
        "user 1",
    ]
    assert await users.load(2) == "user 2"  # cached: no second batch

    (batch,) = spans.finished("loadercache.batch")
    assert dict(batch.attributes or {}) == {
        "loadercache.loader": "users",
        "loadercache.batch_size": 2,
    }
    (query,) = spans.finished("db.query")
    assert query.parent is not None
    assert query.parent.span_id == batch.context.span_id


async def test_loader_failed_batch_span_is_marked_as_an_error(spans: Spans) -> None:
    async def broken(ids: List[int]) -> List[str]:
        return ["only one"]

    users: DataLoader[int, str] = DataLoader(broken, name="users")
    results = await users.load_many([1, 2], return_exceptions=True)
    assert all(isinstance(result, TypeError) for result in results)
    (batch,) = spans.finished("loadercache.batch")
    assert batch.status.status_code is StatusCode.ERROR


async def test_redis_map_round_trips_are_traced(spans: Spans) -> None:
    # The Redis map calls tracing.redis_span() around each read and write.
    fakeredis = pytest.importorskip("fakeredis")
    redis_backend = pytest.importorskip("loadercache.backends.redis")

    async def fetch_users(ids: List[int]) -> List[str]:
        return [f"user {i}" for i in ids]

    store = redis_backend.RedisStore(fakeredis.FakeAsyncRedis())
    cold = DataLoader(fetch_users, cache_map=store.cache_map("users"), name="users")
    assert await cold.load_many([1, 2]) == ["user 1", "user 2"]
    await store.flush()
    warm = DataLoader(fetch_users, cache_map=store.cache_map("users"), name="users")
    assert await warm.load_many([1, 2, 3]) == ["user 1", "user 2", "user 3"]
    await store.aclose()

    def keys(name: str) -> List[Any]:
        return [(s.attributes or {})["loadercache.keys"] for s in spans.finished(name)]

    assert keys("loadercache.redis.get_many") == [2, 3]
    assert keys("loadercache.redis.set_many") == [2, 1]
    sizes = [
        (s.attributes or {})["loadercache.batch_size"]
        for s in spans.finished("loadercache.batch")
    ]
    assert sizes == [2, 1]  # only the Redis misses reach the batch function


async def test_a_failed_redis_read_is_marked_on_its_span(spans: Spans) -> None:
    redis_backend = pytest.importorskip("loadercache.backends.redis")

    async def fetch_users(ids: List[int]) -> List[str]:
        return [f"user {i}" for i in ids]

    # Nothing listens on port 1: the read fails, the loads are loaded.
    store = redis_backend.RedisStore("redis://127.0.0.1:1", timeout=0.5)
    users = DataLoader(fetch_users, cache_map=store.cache_map("users"))
    assert await users.load_many([1]) == ["user 1"]
    await store.aclose()
    (read,) = spans.finished("loadercache.redis.get_many")
    assert (read.attributes or {})["error.type"] == "RoundTripError"


# -- no cost when opentelemetry is absent ----------------------------------


class BlockOpenTelemetry:
    """A meta path finder that makes ``import opentelemetry`` fail, and counts."""

    def __init__(self) -> None:
        self.attempts = 0

    def find_spec(
        self, name: str, path: Optional[Sequence[str]], target: Any = None
    ) -> None:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            self.attempts += 1
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_without_opentelemetry_every_span_is_the_shared_noop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = BlockOpenTelemetry()
    with monkeypatch.context() as patch:
        for name in list(sys.modules):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                patch.delitem(sys.modules, name)
        patch.setattr(sys, "meta_path", [blocker, *sys.meta_path])
        module = importlib.reload(tracing)
        assert blocker.attempts == 0  # importing the module tries nothing

        noop = module.NOOP_SPAN
        assert module.batch_span("users", 2) is noop
        assert module.batch_span(None, 1) is noop
        assert module.redis_span("get_many", 3) is noop
        assert module.redis_span("set_many", 3) is noop
        with module.batch_span("users", 2) as span:
            assert span is noop
            span.set_attribute("loadercache.hits", 1)
        # One failed import, on the first span; never again.
        assert blocker.attempts == 1
    importlib.reload(tracing)


def run_python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_spans_follow_a_provider_named_by_the_environment() -> None:
    # OTEL_PYTHON_TRACER_PROVIDER makes the API load a provider on first use.
    out = run_python(
        """
        from opentelemetry import trace
        from loadercache import tracing

        with tracing.batch_span("users", 1) as span:
            print(span is tracing.NOOP_SPAN, span.is_recording())
        print(type(trace.get_tracer_provider()).__module__)
        """,
        OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider",
    )
    assert out.splitlines() == ["False True", "opentelemetry.sdk.trace"]


def test_importing_loadercache_never_imports_opentelemetry() -> None:
    out = run_python(
        """
        import sys
        import loadercache, loadercache.tracing, loadercache.registry
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    assert out == "[]"


def test_a_loader_runs_with_opentelemetry_missing() -> None:
    out = run_python(
        """
        import asyncio, sys

        class Block:
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ModuleNotFoundError(name)

        sys.meta_path.insert(0, Block())
        from loadercache import DataLoader, tracing

        async def main():
            async def double(keys):
                return [2 * k for k in keys]

            loader = DataLoader(double, name="double")
            print(await loader.load_many([1, 2]))
            print(tracing.batch_span("double", 2) is tracing.NOOP_SPAN)

        asyncio.run(main())
        print("opentelemetry" in sys.modules)
        """
    )
    assert out.splitlines() == ["[2, 4]", "True", "False"]
