"""The per-request loader set: lazy, typed, reachable, and never shared."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import pytest

from loadercache import DataLoader, LoaderStats
from loadercache.registry import (
    Loaders,
    current_loaders,
    loader_property,
    use_loaders,
)

Calls = List[Tuple[str, List[int]]]


class ViewerLoaders(Loaders):
    """Loaders of one viewer: ``notes`` values depend on who is asking."""

    def __init__(self, viewer: str, calls: Calls) -> None:
        self.viewer = viewer
        self.calls = calls
        self.factory_runs = 0

    @loader_property
    def notes(self) -> DataLoader[int, str]:
        self.factory_runs += 1

        async def fetch_notes(ids: List[int]) -> List[str]:
            self.calls.append((self.viewer, list(ids)))
            # A database round trip: lets the other request run meanwhile.
            await asyncio.sleep(0)
            return [f"{self.viewer}'s note on {i}" for i in ids]

        return DataLoader(fetch_notes)

    @loader_property
    def named(self) -> DataLoader[int, int]:
        async def echo(ids: List[int]) -> List[int]:
            return ids

        return DataLoader(echo, name="explicit")


async def test_a_loader_is_built_on_first_access_and_then_kept() -> None:
    loaders = ViewerLoaders("ann", [])
    assert loaders.created() == {}
    first = loaders.notes
    assert loaders.factory_runs == 1
    assert loaders.notes is first
    assert loaders.factory_runs == 1
    assert await first.load(1) == "ann's note on 1"


async def test_each_set_builds_its_own_loaders() -> None:
    calls: Calls = []
    one, two = ViewerLoaders("ann", calls), ViewerLoaders("bob", calls)
    assert one.notes is not two.notes
    assert await one.notes.load(1) == "ann's note on 1"
    assert await two.notes.load(1) == "bob's note on 1"
    assert calls == [("ann", [1]), ("bob", [1])]


def test_a_loader_is_named_after_its_attribute_unless_named() -> None:
    loaders = ViewerLoaders("ann", [])
    assert loaders.notes.name == "notes"
    assert loaders.named.name == "explicit"
    assert "'notes'" in repr(loaders.notes)


def test_the_class_attribute_is_the_declaration() -> None:
    declaration = ViewerLoaders.notes
    assert isinstance(declaration, loader_property)
    assert declaration.name == "notes"


def test_created_lists_the_loaders_built_so_far_in_declaration_order() -> None:
    loaders = ViewerLoaders("ann", [])
    named = loaders.named
    notes = loaders.notes
    assert loaders.created() == {"notes": notes, "named": named}


async def test_stats_reports_each_built_loader() -> None:
    loaders = ViewerLoaders("ann", [])
    await asyncio.gather(loaders.notes.load(1), loaders.notes.load(2))
    await loaders.notes.load(1)
    stats = loaders.stats()
    assert list(stats) == ["notes"]
    assert isinstance(stats["notes"], LoaderStats)
    assert (stats["notes"].local_misses, stats["notes"].batches) == (2, 1)


def test_a_factory_must_return_a_dataloader() -> None:
    class Broken(Loaders):
        @loader_property
        def users(self) -> Any:
            return {"not": "a loader"}

    with pytest.raises(TypeError, match=r"Broken\.users must return a DataLoader"):
        Broken().users  # noqa: B018


async def test_assigning_the_attribute_replaces_the_loader() -> None:
    async def fake(ids: List[int]) -> List[str]:
        return ["fake"] * len(ids)

    loaders = ViewerLoaders("ann", [])
    loaders.notes = DataLoader(fake)
    assert await loaders.notes.load(1) == "fake"
    assert loaders.factory_runs == 0


async def test_subclasses_inherit_declarations_and_may_be_dataclasses() -> None:
    @dataclass
    class More(ViewerLoaders):
        viewer: str
        calls: Calls
        factory_runs: int = 0

        @loader_property
        def doubled(self) -> DataLoader[int, int]:
            async def double(ids: List[int]) -> List[int]:
                return [2 * i for i in ids]

            return DataLoader(double)

    loaders = More("ann", [])
    assert await loaders.doubled.load(4) == 8
    assert await loaders.notes.load(4) == "ann's note on 4"
    assert list(loaders.created()) == ["notes", "doubled"]


@pytest.fixture
def built_without_a_loop() -> DataLoader[int, str]:
    # A sync fixture runs with no event loop running.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    return ViewerLoaders("ann", []).notes


async def test_loaders_can_be_built_with_no_event_loop_running(
    built_without_a_loop: DataLoader[int, str],
) -> None:
    assert await built_without_a_loop.load(1) == "ann's note on 1"


def test_current_loaders_outside_a_request_says_how_to_set_one() -> None:
    with pytest.raises(RuntimeError, match=r"use_loaders\(\.\.\.\)"):
        current_loaders()


def test_use_loaders_sets_restores_and_nests() -> None:
    outer, inner = ViewerLoaders("ann", []), ViewerLoaders("bob", [])
    with use_loaders(outer) as given:
        assert given is outer
        assert current_loaders() is outer
        with use_loaders(inner):
            assert current_loaders(ViewerLoaders) is inner
        assert current_loaders(ViewerLoaders) is outer
    with pytest.raises(RuntimeError):
        current_loaders()


def test_use_loaders_restores_when_the_request_fails() -> None:
    with pytest.raises(ValueError), use_loaders(ViewerLoaders("ann", [])):
        raise ValueError("the request failed")
    with pytest.raises(RuntimeError):
        current_loaders()


def test_current_loaders_checks_the_class_it_is_given() -> None:
    class Other(Loaders):
        pass

    expected = r"found a Other in use, which is not a ViewerLoaders"
    with use_loaders(Other()), pytest.raises(TypeError, match=expected):
        current_loaders(ViewerLoaders)


async def test_tasks_a_request_starts_see_its_loaders() -> None:
    loaders = ViewerLoaders("ann", [])

    async def deep() -> str:
        await asyncio.sleep(0)
        return await current_loaders(ViewerLoaders).notes.load(7)

    with use_loaders(loaders):
        found = await asyncio.gather(asyncio.ensure_future(deep()), deep())
    assert found == ["ann's note on 7", "ann's note on 7"]
    assert loaders.notes.stats.batches == 1


class Rendezvous:
    """Holds every party until all have arrived (asyncio.Barrier is 3.11+)."""

    def __init__(self, parties: int) -> None:
        self.missing = parties
        self.all_here = asyncio.Event()

    async def wait(self) -> None:
        self.missing -= 1
        if self.missing == 0:
            self.all_here.set()
        await self.all_here.wait()


async def serve(viewer: str, calls: Calls, midway: Rendezvous) -> List[str]:
    """One request: loads the same keys as every other request, as its viewer."""
    with use_loaders(ViewerLoaders(viewer, calls)):

        async def resolve(key: int) -> str:
            # Reached through the context, as a resolver deep in a query would.
            return await current_loaders(ViewerLoaders).notes.load(key)

        first = await asyncio.gather(*(resolve(k) for k in (1, 2, 3)))
        # Both requests now hold the same keys in their caches.
        await midway.wait()
        again = await asyncio.gather(*(resolve(k) for k in (3, 2, 1)))
        return first + again


async def test_concurrent_requests_of_two_viewers_never_share_cached_values() -> None:
    calls: Calls = []
    midway = Rendezvous(2)
    ann, bob = await asyncio.gather(
        serve("ann", calls, midway), serve("bob", calls, midway)
    )
    assert ann == [f"ann's note on {k}" for k in (1, 2, 3, 3, 2, 1)]
    assert bob == [f"bob's note on {k}" for k in (1, 2, 3, 3, 2, 1)]
    # Each viewer's keys were loaded once, by a batch of its own: the second
    # round was served by each request's own cache.
    assert sorted(calls) == [("ann", [1, 2, 3]), ("bob", [1, 2, 3])]


async def test_the_isolation_test_would_catch_a_loader_shared_across_requests() -> None:
    # The same two requests over ONE loader, as a module-level loader would
    # be: the second viewer is served the first viewer's cached values.
    calls: Calls = []
    shared = ViewerLoaders("ann", calls).notes

    class Leaky(ViewerLoaders):
        @loader_property
        def notes(self) -> DataLoader[int, str]:
            return shared

    async def serve_leaky(viewer: str) -> List[str]:
        with use_loaders(Leaky(viewer, calls)):
            return list(
                await asyncio.gather(
                    *(current_loaders(Leaky).notes.load(k) for k in (1, 2))
                )
            )

    _, bob = await asyncio.gather(serve_leaky("ann"), serve_leaky("bob"))
    assert bob == ["ann's note on 1", "ann's note on 2"]


async def test_leaving_a_request_logs_its_stats_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="loadercache")
    with use_loaders(ViewerLoaders("ann", [])) as loaders:
        await loaders.notes.load_many([1, 2])
    (record,) = [r for r in caplog.records if r.name == "loadercache"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "ViewerLoaders: notes 2 keys in 1 batches"
    stats: Dict[str, Dict[str, Any]] = record.__dict__["loadercache_stats"]
    assert stats["notes"]["batched_keys"] == 2


def test_no_stats_record_when_debug_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="loadercache")
    with use_loaders(ViewerLoaders("ann", [])):
        pass
    assert [r for r in caplog.records if r.name == "loadercache"] == []
