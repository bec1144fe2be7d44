"""The :class:`~loadercache.backends.redis._link.Link` interface over a redis-py client.

For a store given a ``redis.asyncio.Redis`` or ``RedisCluster`` (or a
fakeredis client in tests) instead of a URL.  It keeps the two promises the
store relies on:

* **Auto-pipelining**: the requests of one event-loop turn go out as one
  redis-py pipeline (``transaction=False``).
* **One connection's ordering**: one pipeline is in flight at a time; requests
  made meanwhile wait and go out together as the next one.  A delete therefore
  reaches Redis before any read made after it, as on a single connection.

What it cannot do as well as the store's own connection: its timeout is
``asyncio.wait_for`` around the pipeline, so it also counts time the event
loop spends elsewhere, and it cannot tell a late reply from a lost one.  After
a reply it cannot use, it disconnects the client's idle connections (redis-py
hands out connections per pipeline, so the one that produced the reply is
back in the pool).  redis-py 8.1 or newer is required: earlier async
pipelines could keep a connection checked out when cancelled (redis-py
#4111, #4123), which a timeout does.

redis-py applies its response callbacks to pipeline replies (``SET`` answers
``True``), so the store's reply checks accept both forms.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from loadercache.backends.redis._link import Command, RoundTripError
from loadercache.backends.redis._resp import ReplyError

__all__ = ["MIN_REDIS_PY", "ClientLink"]

T = TypeVar("T")

#: The oldest redis-py whose async pipelines release their connection when
#: cancelled (see the module docs).
MIN_REDIS_PY = (8, 1)


def redis_py_version() -> Tuple[int, ...]:
    import redis

    return tuple(int(part) for part in redis.__version__.split(".")[:2])


class _Request:
    __slots__ = ("commands", "future", "parse")

    def __init__(
        self,
        commands: Sequence[Command],
        parse: Callable[[List[Any]], Any],
        future: asyncio.Future[Any],
    ) -> None:
        self.commands = commands
        self.parse = parse
        self.future = future


class ClientLink:
    """Requests of one loop turn as one pipeline of *client*, one at a time.

    >>> link = ClientLink(redis.asyncio.Redis(), timeout=0.25)
    """

    resp3 = False

    def __init__(self, client: Any, *, timeout: Optional[float]) -> None:
        version = redis_py_version()
        if version < MIN_REDIS_PY:
            raise TypeError(
                f"RedisStore needs redis-py {'.'.join(map(str, MIN_REDIS_PY))} or "
                f"newer to use a client you pass (its async pipelines release "
                f"their connection when cancelled), but redis-py "
                f"{'.'.join(map(str, version))} is installed. Upgrade it, or pass "
                f"a redis:// URL: the store then needs no redis-py at all."
            )
        self.client = client
        self.timeout = timeout
        self.connects = 0
        self._outgoing: List[_Request] = []
        self._runner: Optional[asyncio.Task[None]] = None
        self._flush_scheduled = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<ClientLink {self.client!r}>"

    @property
    def connected(self) -> bool:
        """A client manages its own connections: always True while open."""
        return not self._closed

    def request(
        self, commands: Sequence[Command], parse: Callable[[List[Any]], T]
    ) -> asyncio.Future[T]:
        """Queue *commands* for the next pipeline; a future of ``parse(replies)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(RoundTripError("closed", "the store is closed"))
            return future
        self._outgoing.append(_Request(commands, parse, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def aclose(self) -> None:
        """Stop sending; the client itself stays open (it is yours)."""
        self._closed = True
        runner = self._runner
        if runner is not None and not runner.done():
            await asyncio.wait([runner])
        outgoing, self._outgoing = self._outgoing, []
        error = RoundTripError("closed", "the store is closed")
        for request in outgoing:
            if not request.future.done():
                request.future.set_exception(error)

    def _flush(self) -> None:
        self._flush_scheduled = False
        runner = self._runner
        if runner is None or runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._outgoing:
            requests, self._outgoing = self._outgoing, []
            requests = [r for r in requests if not r.future.done()]
            if requests:
                await self._send(requests)

    async def _send(self, requests: List[_Request]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for request in requests:
            for name, *args in request.commands:
                # redis-py routes by the command's name, as a str.
                if isinstance(name, bytes):
                    name = name.decode("ascii")
                pipe.execute_command(name, *args)
        try:
            execute = pipe.execute(raise_on_error=False)
            if self.timeout is None:
                results = await execute
            else:
                results = await asyncio.wait_for(execute, self.timeout)
        except asyncio.CancelledError:
            self._fail(requests, RoundTripError("closed", "cancelled"))
            raise
        except asyncio.TimeoutError:
            self._fail(
                requests, RoundTripError("timeout", f"no reply within {self.timeout} s")
            )
            return
        except Exception as error:
            self._fail(
                requests, RoundTripError("closed", f"{type(error).__name__}: {error}")
            )
            return
        position = 0
        for request in requests:
            count = len(request.commands)
            replies = [
                _reply(result) for result in results[position : position + count]
            ]
            position += count
            if request.future.done():
                continue
            try:
                result = request.parse(replies)
            except Exception as error:
                request.future.set_exception(RoundTripError("unusable", error))
                await self._drop_connections()
                continue
            request.future.set_result(result)

    def _fail(self, requests: List[_Request], error: RoundTripError) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)

    async def _drop_connections(self) -> None:
        client = self.client
        with contextlib.suppress(Exception):
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                await pool.disconnect(inuse_connections=False)
                return
            for node in client.get_nodes():
                await node.disconnect()


def _reply(result: Any) -> Any:
    # redis-py hands back a per-command error as the exception it would raise.
    if isinstance(result, Exception):
        return ReplyError(str(result))
    return result
