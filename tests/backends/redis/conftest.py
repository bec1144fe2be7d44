"""Fixtures shared by the Redis backend tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ...redis_cluster import LocalCluster
from ...redis_servers import KINDS, RedisServer


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private server on a free port, Redis and Valkey, killed by pid at the end."""
    server = RedisServer(tmp_path, kind=request.param)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=KINDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    """A formed three-master cluster with a replica each, Redis and Valkey.

    Every node is killed by its pid at the end.  A missing server binary skips
    the test (fails it under LOADERCACHE_REQUIRE_REDIS=1), as for ``server``.
    """
    cluster = LocalCluster(tmp_path, kind=request.param)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
