"""Fixtures shared by the Redis backend tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

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
