"""Redis servers for the tests: the shared one at REDIS_URL, and private ones.

* :func:`real_redis_url` returns ``REDIS_URL`` (default
  ``redis://127.0.0.1:6379/0``) if a server answers there, and otherwise skips
  the test with the reason, or fails it when ``LOADERCACHE_REQUIRE_REDIS=1``
  (CI).  Tests on the shared server use a random key prefix and delete only
  keys under it (:func:`delete_prefix`); they never flush or list the server.
* :class:`RedisServer` starts a private ``redis-server`` on a free port,
  without persistence, in a temporary directory, for tests that kill it,
  pause it or count its commands; it is always killed by its pid.
* :func:`fakeredis_cache_map` and :func:`real_redis_cache_map` are the Redis
  entries of ``conftest.BACKENDS``.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import fakeredis
import pytest
import redis
import redis.asyncio

from loadercache.backends.redis import RedisCacheMap, RedisStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("LOADERCACHE_REQUIRE_REDIS") == "1"

_reachable: Optional[str] = None  # None: not checked yet; "": reachable


def _unavailable(reason: str) -> None:
    if REQUIRE_REDIS:
        pytest.fail(f"{reason} (LOADERCACHE_REQUIRE_REDIS=1 makes this an error)")
    pytest.skip(reason)


def real_redis_url() -> str:
    """``REDIS_URL`` if a Redis server answers there; else skip (or fail in CI)."""
    global _reachable
    if _reachable is None:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
        try:
            client.ping()
            _reachable = ""
        except redis.RedisError as error:
            _reachable = (
                f"no Redis server answers at {REDIS_URL} ({error}); start one or "
                "set REDIS_URL"
            )
        finally:
            client.close()
    if _reachable:
        _unavailable(_reachable)
    return REDIS_URL


def random_prefix() -> str:
    """A key prefix no other test run uses."""
    return f"lctest-{uuid.uuid4().hex[:12]}"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete the keys under *prefix* (and only those); return how many."""
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    deleted = 0
    try:
        batch: List[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


class NoIdleConnectionPool(redis.asyncio.ConnectionPool):
    """A pool that closes each connection when it is released.

    For clients nobody closes (the BACKENDS factories): no socket outlives the
    round trip that used it, so no ResourceWarning when the test's event loop
    ends.
    """

    async def release(self, connection: Any) -> None:
        await connection.disconnect()
        await super().release(connection)


# -- the shared behaviour tests' backends (conftest.BACKENDS) ------------------

_session_prefix = random_prefix()
_cleanup_registered = False


def fakeredis_cache_map() -> RedisCacheMap:
    """A fresh RedisCacheMap over a new in-memory fakeredis server."""
    store = RedisStore(fakeredis.FakeAsyncRedis(), prefix="lctest")
    return store.cache_map(f"ns-{uuid.uuid4().hex[:8]}")


def real_redis_cache_map() -> RedisCacheMap:
    """A fresh RedisCacheMap on the real server, in a namespace of its own."""
    global _cleanup_registered
    url = real_redis_url()
    if not _cleanup_registered:
        _cleanup_registered = True
        atexit.register(delete_prefix, url, _session_prefix)
    client = redis.asyncio.Redis(
        connection_pool=NoIdleConnectionPool.from_url(url, socket_timeout=1.0)
    )
    # Nobody flushes these stores: a write-back still in the background when
    # the test's loop closes would be cut off mid-pipeline, and redis-py 7
    # warns about the pipeline's connection.  Awaited writes end with the
    # batch.  (The background path is tested in backends/test_redis.py.)
    store = RedisStore(
        client, prefix=_session_prefix, timeout=2.0, wait_for_writes=True
    )
    return store.cache_map(f"ns-{uuid.uuid4().hex[:8]}")


# -- private servers -------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(cluster: bool = False) -> int:
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    # A cluster node also listens on port + 10000, so the port must be at
    # most 55535 and both must be free.
    for _ in range(100):
        port = random.randrange(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _server_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "Redis server v=7.0.15 sha=..."
    version = out.split("v=", 1)[1].split()[0]
    return tuple(int(part) for part in version.split(".")[:2])


class RedisServer:
    """A private ``redis-server`` on a free port; kill(), start() again, count.

    >>> server = RedisServer(tmp_path); server.start()
    >>> server.url
    'redis://127.0.0.1:40123/0'
    """

    def __init__(self, directory: Path, *, cluster: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server is not on PATH")
            raise AssertionError("unreachable")
        self.binary = binary
        self.directory = directory
        self.cluster = cluster
        self.port = _free_port(cluster)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        assert self.process is None, "already running"
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log),
        ]
        version = _server_version(self.binary)
        if version >= (7, 0):
            args += ["--enable-debug-command", "yes"]
        if self.cluster:
            # A one-node cluster that owns every slot: enough for a
            # RedisCluster client and its routing rules.
            if version < (7, 0):
                _unavailable("the cluster tests need redis-server 7 or later")
            config = self.directory / f"nodes-{self.port}.conf"
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(config)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                    if self.cluster:
                        self._own_every_slot(client)
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text() if self.log.exists() else ""
                    self.kill()
                    raise RuntimeError(f"redis-server did not start:\n{log}") from None
                time.sleep(0.02)

    def _own_every_slot(self, client: redis.Redis) -> None:
        if not client.execute_command("CLUSTER", "SLOTS"):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node cluster did not become ready")
            time.sleep(0.05)

    def kill(self) -> None:
        """Kill the server by its pid (SIGKILL: no goodbye to the clients)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def client(self) -> redis.Redis:
        """A synchronous client, for the test's own inspection."""
        return redis.Redis.from_url(self.url, socket_timeout=5.0)

    def reset_stats(self) -> None:
        with self.client() as client:
            client.config_resetstat()

    def command_calls(self) -> Dict[str, int]:
        """Calls per command since reset_stats(), from INFO commandstats.

        The test's own INFO/CONFIG calls and redis-py's connection handshake
        (HELLO, CLIENT SETINFO) are left out: they are per connection, not
        per round trip.
        """
        with self.client() as client:
            info = client.info("commandstats")
        calls = {
            name[len("cmdstat_") :]: fields["calls"]
            for name, fields in info.items()
            if name.startswith("cmdstat_")
        }
        handshake = ("hello", "client|setinfo", "ping")
        for name in ("info", "config|resetstat", *handshake):
            calls.pop(name, None)
        return calls


Calls = List[List[Any]]


def recorder(
    compute: Callable[[Any], Any] = lambda key: {"id": key},
) -> Tuple[Callable[[List[Any]], Any], Calls]:
    """A batch function computing each value, and the list of calls it received."""
    calls: Calls = []

    async def batch_load(keys: List[Any]) -> List[Any]:
        calls.append(list(keys))
        return [compute(key) for key in keys]

    return batch_load, calls
