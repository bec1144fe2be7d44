"""One connection to one Redis server, shared by every request of the process.

A :class:`Link` is what the store sends its round trips through.  Its one
method that matters, :meth:`Link.request`, takes a list of commands and a
``parse`` function and returns a future of what ``parse`` made of the
replies.  Three decisions shape it:

*Auto-pipelining.*  Every request made in one turn of the event loop is
written to the socket in one ``write`` at the end of that turn, and every
request of the process shares one connection, whose replies come back in the
order the commands went out.  A thousand concurrent requests whose batches
dispatch together cost one write and one connection, not a thousand pooled
connections (ioredis' ``enableAutoPipelining`` and Go's rueidis work this
way).  It also makes ordering simple: Redis runs one connection's commands in
the order they were written, so a delete written before a read is applied
before it.

*A timeout that measures Redis, not the event loop.*  Each write arms one
timer, ``timeout`` seconds ahead.  When it fires and replies are missing, the
link looks before it gives up: if bytes arrived since the last look, or the
socket has bytes the loop has not read yet, Redis has answered and the loop is
merely behind (a busy loop runs its timers late and its reads later), so the
timer is armed again.  Only a server that sent nothing for a whole ``timeout``
times out.  A timed-out connection is closed: its replies can no longer be
matched to requests.

*Replies are checked where they are parsed.*  ``parse`` runs as soon as a
request's last reply is read, before anything else reads the connection; if it
raises :class:`Unusable` (a reply of the wrong shape, a value bound to another
key), the connection is closed at once and every request still waiting on it
fails, since its replies may now be answers to other requests.

Failures reach the caller as :class:`RoundTripError`, whose ``reason`` says
which (``connect``, ``timeout``, ``closed``, ``protocol``, ``unusable``,
``overloaded``).  The link never retries: the store decides what a failure
means (a miss, a write to send again).

RESP3 is spoken where the server has it (``HELLO 3``; Redis 6 and newer,
Valkey), so push frames (client-side caching invalidations) can share the
connection; they go to ``on_push``.  Older servers get RESP2.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl as ssl_module
from collections import deque
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Generic,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)
from urllib.parse import unquote, urlsplit

from loadercache.backends.redis._resp import (
    NOT_ENOUGH,
    Arg,
    Parser,
    ProtocolError,
    Push,
    ReplyError,
    encode,
)

__all__ = [
    "Address",
    "Link",
    "RoundTripError",
    "Unusable",
    "parse_url",
]

T = TypeVar("T")
Command = Sequence[Arg]

# A timer that finds Redis still answering is armed again; past this many
# windows of `timeout` a request fails even so (a reply that never ends).
_MAX_WINDOWS = 40


class RoundTripError(Exception):
    """A request got no usable answer; ``reason`` says why.

    >>> RoundTripError("timeout", "no reply within 0.25 s").reason
    'timeout'
    """

    def __init__(self, reason: str, detail: object = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Unusable(Exception):
    """Raised by a request's ``parse``: these replies cannot be answers to it.

    The link then closes the connection the replies came from.
    """


@dataclass(frozen=True)
class Address:
    """Where and how to connect (see :func:`parse_url`)."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    db: int = 0
    ssl: Optional[ssl_module.SSLContext] = None

    def __repr__(self) -> str:
        where = self.unix_path or f"{self.host}:{self.port}"
        return f"redis{'s' if self.ssl else ''}://{where}/{self.db}"


def parse_url(url: str, ssl: Optional[ssl_module.SSLContext] = None) -> Address:
    """The address of a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL.

    >>> parse_url("redis://:secret@cache.internal:6380/2")
    redis://cache.internal:6380/2
    >>> parse_url("unix:///run/redis.sock?db=1").unix_path
    '/run/redis.sock'
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"A Redis URL starts with redis://, rediss:// or unix://, but got {url!r}."
        )
    query = dict(pair.partition("=")[::2] for pair in parts.query.split("&") if pair)
    db_text = query.get("db") or (parts.path.lstrip("/") if scheme != "unix" else "")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(
            f"The database of a Redis URL is a number, but got {db_text!r}."
        ) from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"A unix:// URL needs a socket path, but got {url!r}.")
        return Address(
            unix_path=parts.path, username=username, password=password, db=db
        )
    if scheme == "rediss" and ssl is None:
        ssl = ssl_module.create_default_context()
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"The port of {url!r} is not a number.") from None
    return Address(
        host=parts.hostname or "127.0.0.1",
        port=port,
        username=username,
        password=password,
        db=db,
        ssl=ssl,
    )


class _Request(Generic[T]):
    """Commands on their way, the replies read so far, and who waits for them."""

    __slots__ = ("commands", "future", "parse", "remaining", "replies")

    def __init__(
        self,
        commands: Sequence[Command],
        parse: Callable[[List[Any]], T],
        future: asyncio.Future[T],
    ) -> None:
        self.commands = commands
        self.parse = parse
        self.future = future
        self.remaining = len(commands)
        self.replies: List[Any] = []


class _Write:
    """The requests of one socket write: they share one deadline timer."""

    __slots__ = ("checked_at", "requests", "timer", "windows")

    def __init__(self, requests: List[_Request[Any]], now: float) -> None:
        self.requests = requests
        self.checked_at = now
        self.windows = 0
        self.timer: Optional[asyncio.TimerHandle] = None


class _Connection(asyncio.Protocol):
    """One socket to the server: writes requests, matches replies to them."""

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        self.link = link
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None
        self.parser = Parser(max_bulk=link.max_bulk)
        self.pending: Deque[_Request[Any]] = deque()
        self.writes: Deque[_Write] = deque()
        self.last_read = 0.0
        self.lost: Optional[RoundTripError] = None

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        parser = self.parser
        parser.feed(data)
        pending = self.pending
        while True:
            try:
                reply = parser.gets()
            except ProtocolError as error:
                self.fail(RoundTripError("protocol", error))
                return
            if reply is NOT_ENOUGH:
                return
            if type(reply) is Push:
                self.link.pushed(reply)
                continue
            if not pending:
                self.fail(RoundTripError("protocol", "a reply nobody asked for"))
                return
            request = pending[0]
            request.replies.append(reply)
            request.remaining -= 1
            if request.remaining:
                continue
            pending.popleft()
            writes = self.writes
            if writes and writes[0].requests[-1] is request:
                # The last reply of the oldest write (replies come in order):
                # its timer has nothing left to watch, and would keep every
                # request of the write, and each one's result, until it fired.
                write = writes.popleft()
                if write.timer is not None:
                    write.timer.cancel()
            future = request.future
            if future.done():
                continue  # timed out or cancelled: its replies are read and dropped
            try:
                result = request.parse(request.replies)
            except Exception as error:
                # Unusable, or a parse that broke on replies it did not
                # expect: either way they may be answers to other requests.
                failure = RoundTripError("unusable", error)
                future.set_exception(failure)
                self.fail(failure)
                return
            future.set_result(result)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.fail(self.lost or RoundTripError("closed", exc or "the server closed it"))

    # -- ours --------------------------------------------------------------

    def send(self, requests: List[_Request[Any]]) -> None:
        transport = self.transport
        assert transport is not None
        lost = self.lost
        if lost is not None:
            # Failed already (even during its handshake): nothing it is given
            # could ever be answered.
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(lost)
            return
        data = b"".join(
            [encode(command) for request in requests for command in request.commands]
        )
        self.pending.extend(requests)
        transport.write(data)
        timeout = self.link.timeout
        if timeout is not None:
            write = _Write(requests, self.loop.time())
            deadline = write.checked_at + timeout
            write.timer = self.loop.call_at(deadline, self.check, write)
            self.writes.append(write)

    def check(self, write: _Write) -> None:
        """The timer of a write: give up on Redis only if it sent nothing."""
        if self.lost is not None:
            self.fail(self.lost)  # fails whatever is still pending on it
            return
        writes = self.writes
        while writes and all(r.future.done() for r in writes[0].requests):
            writes.popleft()
        if all(request.future.done() for request in write.requests):
            return
        now = self.loop.time()
        answering = self.last_read > write.checked_at or self.readable()
        write.checked_at = now
        write.windows += 1
        timeout = self.link.timeout
        if answering and write.windows < _MAX_WINDOWS and timeout is not None:
            write.timer = self.loop.call_at(now + timeout, self.check, write)
            return
        self.fail(RoundTripError("timeout", f"Redis sent nothing for {timeout} s"))

    def readable(self) -> bool:
        """Whether the socket holds bytes the event loop has not read yet."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return False
        try:
            ready, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def fail(self, error: RoundTripError) -> None:
        """Close the connection; every request waiting on it gets *error*."""
        if self.lost is None:
            self.lost = error
            self.link.lost(self, error)
            if self.transport is not None:
                self.transport.abort()
        for write in self.writes:
            if write.timer is not None:
                write.timer.cancel()
        self.writes.clear()
        pending, self.pending = self.pending, deque()
        for request in pending:
            if not request.future.done():
                request.future.set_exception(error)


def _check_hello(replies: List[Any]) -> Optional[Dict[str, Any]]:
    """What the server says of itself if it speaks RESP3; None if it refused
    HELLO (it speaks RESP2)."""
    (hello,) = replies
    if isinstance(hello, dict):
        return {_text(key): value for key, value in hello.items()}
    if isinstance(hello, ReplyError) and hello.code in ("ERR", "NOPROTO"):
        # "unknown command 'HELLO'" (Redis 5) or no RESP3: speak RESP2.
        return None
    if isinstance(hello, ReplyError):
        raise Unusable(f"HELLO failed: {hello}")
    raise Unusable(f"HELLO answered {hello!r}")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _version(text: str) -> Tuple[int, ...]:
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _check_all_ok(replies: List[Any]) -> None:
    for reply in replies:
        if isinstance(reply, ReplyError):
            raise Unusable(f"the connection handshake failed: {reply}")


class Link:
    """One auto-pipelined connection to one Redis server (see the module docs).

    >>> link = Link(parse_url("redis://localhost:6379/0"), timeout=0.25)
    >>> replies = await link.request([(b"GET", b"k")], lambda replies: replies)
    >>> await link.aclose()

    ``handshake`` returns commands sent on every new connection after
    authentication (e.g. ``CLIENT TRACKING``), whose replies go to
    ``on_handshake`` (which may raise :class:`Unusable`; by default an error
    reply fails the connection), and ``on_push`` receives every
    RESP3 push frame; ``on_connect`` is called with no argument once a new
    connection is ready, and ``on_lost`` with the error when one is lost.
    """

    def __init__(
        self,
        address: Address,
        *,
        timeout: Optional[float],
        connect_timeout: Optional[float] = None,
        max_bulk: Optional[int] = None,
        max_pending: int = 100_000,
        client_name: Optional[str] = "loadercache",
        handshake: Optional[Callable[[bool], Sequence[Command]]] = None,
        on_handshake: Optional[Callable[[List[Any]], None]] = None,
        on_push: Optional[Callable[[Push], None]] = None,
        on_connect: Optional[Callable[[], None]] = None,
        on_lost: Optional[Callable[[RoundTripError], None]] = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.max_bulk = max_bulk
        self.max_pending = max_pending
        self.client_name = client_name
        self.handshake = handshake
        self.on_handshake = on_handshake
        self.on_push = on_push
        self.on_connect = on_connect
        self.on_lost = on_lost
        self.resp3 = False
        # What the server said of itself in HELLO: its name ("redis",
        # "valkey") and version; ("", ()) before the first connection or
        # for a server that speaks only RESP2.
        self.server: Tuple[str, Tuple[int, ...]] = ("", ())
        self.connects = 0
        # Socket writes so far (each carries every request of one turn).
        self.writes = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._connection: Optional[_Connection] = None
        self._connecting: Optional[asyncio.Task[None]] = None
        self._outgoing: List[_Request[Any]] = []
        self._flush_scheduled = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<Link {self.address!r}>"

    @property
    def connected(self) -> bool:
        """Whether a connection is open and ready now."""
        connection = self._connection
        return connection is not None and connection.lost is None

    def request(
        self, commands: Sequence[Command], parse: Callable[[List[Any]], T]
    ) -> asyncio.Future[T]:
        """Send *commands* with this turn's other requests; a future of the parse.

        The future fails with :class:`RoundTripError`; ``parse`` may raise
        :class:`Unusable` to reject the replies (the connection then closes).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(RoundTripError("closed", "the store is closed"))
            return future
        connection = self._connection
        waiting = len(self._outgoing) + (
            len(connection.pending) if connection is not None else 0
        )
        if waiting >= self.max_pending:
            future.set_exception(
                RoundTripError(
                    "overloaded", f"{waiting} requests are waiting for Redis already"
                )
            )
            return future
        self._outgoing.append(_Request(commands, parse, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def aclose(self) -> None:
        """Close the connection; requests still waiting fail with ``closed``."""
        self._closed = True
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            connecting.cancel()
        connection = self._connection
        self._connection = None
        error = RoundTripError("closed", "the store is closed")
        if connection is not None:
            connection.fail(error)
            # Let the transport's connection_lost run before the loop ends.
            await asyncio.sleep(0)
        self._fail_outgoing(error)

    # -- what the connection calls -----------------------------------------

    def pushed(self, frame: Push) -> None:
        if self.on_push is not None:
            self.on_push(frame)

    def lost(self, connection: _Connection, error: RoundTripError) -> None:
        if connection is self._connection:
            self._connection = None
            if self.on_lost is not None:
                self.on_lost(error)

    # -- helpers -----------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        connection = self._connection
        if old is not None and not old.is_closed() and connection is not None:
            raise RuntimeError(
                "A RedisStore talks to Redis from one event loop, and this one "
                f"is still connected on {old!r}; create one store per event loop."
            )
        if connection is not None and connection.transport is not None:
            # Its loop is closed: the connection is dead, and nothing can
            # run on that loop any more to close it properly.
            with contextlib.suppress(RuntimeError):
                connection.transport.abort()
        self._loop = loop
        self._connection = None
        self._connecting = None
        self._outgoing = []
        self._flush_scheduled = False

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outgoing:
            return
        connection = self._connection
        if connection is None:
            if self._connecting is None and self._loop is not None:
                self._connecting = self._loop.create_task(self._connect())
            return
        requests, self._outgoing = self._outgoing, []
        self.writes += 1
        connection.send(requests)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            connection = await self._open(loop)
        except BaseException as error:
            self._connecting = None
            reason = error
            if isinstance(error, asyncio.CancelledError):
                reason = RoundTripError("closed", "the store is closed")
            elif not isinstance(error, RoundTripError):
                reason = RoundTripError("connect", _describe(error))
            self._fail_outgoing(reason)  # type: ignore[arg-type]
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        self._connecting = None
        if self._closed:
            connection.fail(RoundTripError("closed", "the store is closed"))
            return
        if connection.lost is not None:
            # It failed in its handshake (a reply nobody asked for, say).
            self._fail_outgoing(connection.lost)
            return
        self._connection = connection
        self.connects += 1
        if self.on_connect is not None:
            self.on_connect()
        self._flush()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        address = self.address
        connection = _Connection(self, loop)
        timeout = self.connect_timeout
        if address.unix_path is not None:
            opening = loop.create_unix_connection(lambda: connection, address.unix_path)
        else:
            opening = loop.create_connection(
                lambda: connection,
                address.host,
                address.port,
                ssl=address.ssl,
                server_hostname=address.host if address.ssl else None,
            )
        try:
            await asyncio.wait_for(self._greet(opening, connection, loop), timeout)
        except BaseException:
            connection.fail(RoundTripError("connect", "the handshake failed"))
            raise
        return connection

    async def _greet(
        self,
        opening: Any,
        connection: _Connection,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        await opening
        self.resp3 = await self._handshake(connection, loop)

    async def _handshake(
        self, connection: _Connection, loop: asyncio.AbstractEventLoop
    ) -> bool:
        address = self.address
        hello: List[Arg] = [b"HELLO", b"3"]
        if address.password is not None:
            hello += [b"AUTH", address.username or "default", address.password]
        if self.client_name:
            hello += [b"SETNAME", self.client_name]
        info = await self._call(connection, loop, [hello], _check_hello)
        resp3 = info is not None
        if info is not None:
            self.server = (
                _text(info.get("server", "")).lower(),
                _version(_text(info.get("version", ""))),
            )
        setup: List[Command] = []
        if not resp3:
            if address.password is not None:
                auth: List[Arg] = [b"AUTH"]
                if address.username is not None:
                    auth.append(address.username)
                setup.append([*auth, address.password])
            if self.client_name:
                setup.append([b"CLIENT", b"SETNAME", self.client_name])
        if address.db:
            setup.append([b"SELECT", address.db])
        if setup:
            await self._call(connection, loop, setup, _check_all_ok)
        if self.handshake is not None:
            # The caller's own setup: it decides what its errors mean.
            extra = list(self.handshake(resp3))
            if extra:
                check = self.on_handshake or _check_all_ok
                await self._call(connection, loop, extra, check)
        return resp3

    async def _call(
        self,
        connection: _Connection,
        loop: asyncio.AbstractEventLoop,
        commands: Sequence[Command],
        parse: Callable[[List[Any]], T],
    ) -> T:
        future: asyncio.Future[T] = loop.create_future()
        connection.send([_Request(commands, parse, future)])
        return await future

    def _fail_outgoing(self, error: RoundTripError) -> None:
        outgoing, self._outgoing = self._outgoing, []
        for request in outgoing:
            if not request.future.done():
                request.future.set_exception(error)


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"
