"""Fixtures shared by the Redis backend tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ..redis_servers import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port, killed by pid at the end."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
