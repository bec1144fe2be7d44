"""Scenario 13: a 2-worker ASGI app under load, per-request caches against Redis.

Four servers, each uvicorn with ``--workers 2`` serving
:mod:`benchmarks.asgi_app`, differ only in the loader a request gets: a
per-request loadercache dict, the Redis tier (``store.cache_map``), the
Redis tier with a near cache, and aiodataloader.  ``web_clients`` clients
(13a: 4, 13b: 32), from this process, each over a keep-alive HTTP/1.1
connection of its own (a minimal client: httpx cost more CPU than the
servers), send ``web_requests`` requests in all, each for
``web_ids`` ids drawn (seeded) from ``web_keys`` hot keys; the batch
function sleeps 1 ms, like a database.  Measured: requests per second over
the run, and the p50/p99 of the requests' latencies.  The warm-up round
fills Redis and the near caches; a per-request cache starts empty every
time, which is the point of comparing them.

All of it shares the machine's cores: the client, both workers of the
server measured and Redis (the other servers idle).  The servers start in
the scenario's set-up, in sessions of their own, and are stopped in its
tear-down (SIGTERM to their process group, then SIGKILL); an ``atexit`` hook
stops any left, and every server process exits by itself after a deadline.
Every request and the start-up are bounded by timeouts.  Without Redis,
starlette or uvicorn the scenario is skipped with a note.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from benchmarks import redis_tier
from benchmarks.scenarios import Entry, Sample, Scenario, Sizes

__all__ = ["scenarios"]

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
STARTUP_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
SERVER_DEADLINE = 900.0
#: Entry names by the app's LCBENCH_MODE.
NAMES = {
    "dict": "loadercache[dict] per request",
    "aiodataloader": "aiodataloader per request",
    "redis": "loadercache[RedisCacheMap]",
    "near": "loadercache near_cache",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """uvicorn with WORKERS workers of the app in one mode, in its own session."""

    def __init__(self, mode: str, prefix: str) -> None:
        self.mode = mode
        self.port = _free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        env = {
            **os.environ,
            "LCBENCH_MODE": mode,
            "LCBENCH_PREFIX": prefix,
            "LCBENCH_DEADLINE": str(SERVER_DEADLINE),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.asgi_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(WORKERS),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _running.add(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> None:
        import urllib.request

        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.mode} server exited: {self._output()}")
            url = self.url + "/health"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=1) as r,
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.mode} server never answered")
            time.sleep(0.1)

    def _output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:].decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM to its process group (uvicorn and its workers), then SIGKILL."""
        _running.discard(self)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind
        self.process.wait(timeout=10)
        self.log.close()


_running: set[Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


@dataclass
class _Web:
    """What one scenario's entries share: its servers, prefix and workload."""

    sizes: Sizes
    clients: int
    prefix: str = field(default_factory=lambda: f"lcbench-{uuid.uuid4().hex[:12]}")
    servers: Dict[str, Server] = field(default_factory=dict)

    def paths(self) -> List[List[str]]:
        """Each client's request paths, the same in every run."""
        sizes = self.sizes
        per_client = max(1, sizes.web_requests // self.clients)
        out = []
        for client in range(self.clients):
            rng = random.Random(client)
            out.append(
                [
                    "/users?ids="
                    + ",".join(
                        str(rng.randrange(sizes.web_keys)) for _ in range(sizes.web_ids)
                    )
                    for _ in range(per_client)
                ]
            )
        return out

    async def start(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            for mode in NAMES:
                self.servers[mode] = Server(mode, self.prefix)
            for server in self.servers.values():
                server.wait_ready(deadline)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers = {}
        await redis_tier.delete_prefix(self.prefix)


class _Connection:
    """A keep-alive HTTP/1.1 client connection, by hand: httpx spent more of
    the shared cores per request than the servers did, so it measured
    itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any, port: int) -> None:
        self.reader, self.writer = reader, writer
        self.host = f"127.0.0.1:{port}".encode()

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT
        )
        return cls(reader, writer, port)

    async def get(self, path: str) -> Tuple[int, bytes]:
        """GET *path*: the status and the body (Content-Length framing only)."""
        self.writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), self.host)
        )
        head = await asyncio.wait_for(
            self.reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT
        )
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), REQUEST_TIMEOUT)
        return status, body

    def close(self) -> None:
        self.writer.close()


def _percentile(ordered: List[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def _load(web: _Web, mode: str) -> Sample:
    server = web.servers[mode]
    paths = web.paths()
    latencies: List[float] = []
    wrong = 0
    # Every client's connection opened outside the timing.
    connections = [await _Connection.open(server.port) for _ in paths]
    try:

        async def one_client(connection: _Connection, own: List[str]) -> None:
            nonlocal wrong
            for path in own:
                sent = perf_counter()
                status, _ = await connection.get(path)
                latencies.append(perf_counter() - sent)
                wrong += status != 200

        start = perf_counter()
        await asyncio.gather(*map(one_client, connections, paths))
        seconds = perf_counter() - start
        # One answer checked in full, outside the timing.
        status, body = await connections[0].get(paths[0][0])
        ids = [int(i) for i in paths[0][0].split("=", 1)[1].split(",")]
        wrong += status != 200 or json.loads(body) != [redis_tier.row(i) for i in ids]
        # The share of keys the near cache served, as one worker counted it.
        _, body = await connections[0].get("/stats")
        stats = json.loads(body)
    finally:
        for connection in connections:
            connection.close()
    ordered = sorted(latencies)
    return Sample(
        seconds,
        len(latencies),
        extra={
            "requests/s": round(len(latencies) / seconds),
            "p50 ms": round(_percentile(ordered, 0.5) * 1e3, 2),
            "p99 ms": round(_percentile(ordered, 0.99) * 1e3, 2),
            "wrong answers": float(wrong),
            **(
                {
                    "near hits/key (a worker)": round(
                        stats["near_hits"] / (stats["near_hits"] + stats["read_keys"]),
                        3,
                    )
                }
                if mode == "near"
                else {}
            ),
        },
    )


def _unavailable() -> Optional[str]:
    reason = redis_tier.unavailable()
    if reason is not None:
        return reason
    try:
        import aiodataloader  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        return f"{error.name or error} cannot be imported: pip install -e '.[bench]'"
    return None


def _bind(work: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: work(*args)


def scenarios(sizes: Sizes) -> List[Scenario]:
    """13a (4 clients) and 13b (32 clients), or one skipped scenario 13."""
    title = (
        f"a {WORKERS}-worker ASGI app, {sizes.web_requests:,} requests of "
        f"{sizes.web_ids} ids over {sizes.web_keys:,} hot keys"
    )
    reason = _unavailable()
    if reason is not None:
        return [
            Scenario(
                "13",
                13,
                title,
                "an ASGI app under load",
                skipped=reason,
                required=redis_tier.REQUIRE_REDIS,
            )
        ]
    out = []
    for key, clients in (("13a", 4), ("13b", 32)):
        web = _Web(sizes, clients)
        entries = tuple(
            Entry(name, _bind(_load, web, mode), subject=mode in ("redis", "near"))
            for mode, name in NAMES.items()
        )
        out.append(
            Scenario(
                key,
                13,
                f"{title}: {clients} clients",
                f"uvicorn --workers {WORKERS}, a loader per request, load_many of "
                "the ids, a 1 ms batch function; the clients in this process",
                entries,
                baseline=NAMES["dict"],
                peers_of={NAMES["redis"]: (), NAMES["near"]: ()},
                exact={"wrong answers": 0.0},
                setup=web.start,
                teardown=web.stop,
            )
        )
    return out
