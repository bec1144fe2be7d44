"""A TCP proxy between a store and a Redis server, for injecting faults.

It runs its own event loop in a thread, so the faults it makes do not depend
on (or wait for) the event loop of the code under test.  It forwards whole
RESP frames: commands from the client, replies from the server, and can
meanwhile

* ``latency(seconds)``: hold every reply that long;
* ``drop()``: close every connection it carries (a reset mid-stream);
* ``blackhole()``: forward nothing either way and answer nothing, on open and
  new connections (a partition: packets vanish, connections stay up);
* ``refuse()``: close every new connection at once;
* ``garbage()``: send bytes that are not RESP instead of the replies;
* ``answer(frame)``: answer every command with *frame* (``b"+OK\\r\\n"``,
  ``b"*0\\r\\n"``) without asking the server;
* ``inject(count)``: slip *count* extra copies of recent replies into the
  reply stream (a connection that runs ahead of its requests);
* ``withhold(count)``: swallow the next *count* replies;
* ``heal()``: forward faithfully again.

Frames are split by a small RESP reader of the tests' own (not the
library's), so a fault lands between whole replies.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Awaitable, Callable, Deque, List, Optional, Set, Tuple, TypeVar

T = TypeVar("T")


def split_frames(buffer: bytes) -> Tuple[List[bytes], bytes]:
    """The complete RESP frames at the start of *buffer*, and what remains."""
    frames = []
    position = 0
    while True:
        end = _frame_end(buffer, position)
        if end is None:
            return frames, buffer[position:]
        frames.append(buffer[position:end])
        position = end


def _frame_end(buffer: bytes, position: int) -> Optional[int]:
    line_end = buffer.find(b"\r\n", position)
    if line_end < 0:
        return None
    kind = buffer[position : position + 1]
    header = buffer[position + 1 : line_end]
    after = line_end + 2
    if kind in (b"+", b"-", b":", b"_", b"#", b",", b"("):
        return after
    if kind in (b"$", b"!", b"="):
        length = int(header)
        if length < 0:
            return after
        end = after + length + 2
        return end if end <= len(buffer) else None
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(header)
        if kind in (b"%", b"|"):
            count *= 2
        for _ in range(max(count, 0)):
            end = _frame_end(buffer, after)
            if end is None:
                return None
            after = end
        if kind == b"|":  # an attribute precedes the frame it annotates
            return _frame_end(buffer, after)
        return after
    raise ValueError(f"not RESP: {buffer[position : position + 20]!r}")


class Proxy:
    """``Proxy(port)``: listen on a free port, forward to 127.0.0.1:*port*.

    >>> proxy = Proxy(server.port); proxy.start()
    >>> store = RedisStore(proxy.url)
    >>> proxy.blackhole()
    >>> proxy.heal(); proxy.stop()
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Optional[asyncio.AbstractServer] = None
        self._pipes: Set[_Pipe] = set()
        self._tasks: Set[asyncio.Task[Any]] = set()
        self.mode = "forward"
        self.delay = 0.0
        self.reply: bytes = b""
        self.to_inject = 0
        self.to_withhold = 0
        self.recent: Deque[bytes] = deque(maxlen=8)
        self.commands = 0
        self.connections = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for pipe in list(self._pipes):
                pipe.close()
            # Closed connections end their handlers (a cancelled handler
            # would be logged by asyncio's streams).
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- the faults ----------------------------------------------------------

    def heal(self) -> None:
        self._set(mode="forward", delay=0.0, to_inject=0, to_withhold=0)

    def latency(self, seconds: float) -> None:
        self._set(delay=seconds)

    def blackhole(self) -> None:
        self._set(mode="blackhole")

    def refuse(self) -> None:
        self._set(mode="refuse")

    def garbage(self) -> None:
        self._set(mode="garbage")

    def answer(self, frame: bytes) -> None:
        self._set(mode="answer", reply=frame)

    def inject(self, count: int) -> None:
        self._set(to_inject=count)

    def withhold(self, count: int) -> None:
        self._set(to_withhold=count)

    def drop(self) -> None:
        def close_all() -> None:
            for pipe in list(self._pipes):
                pipe.close()

        self._loop.call_soon_threadsafe(close_all)

    # -- machinery -------------------------------------------------------------

    def _set(self, **settings: Any) -> None:
        done: Future[None] = Future()

        def apply() -> None:
            for name, value in settings.items():
                setattr(self, name, value)
            done.set_result(None)

        self._loop.call_soon_threadsafe(apply)
        done.result(timeout=10)

    def _call(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        if self.mode == "refuse":
            writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        pipe = _Pipe(self, reader, writer, server_reader, server_writer)
        self._pipes.add(pipe)
        try:
            await pipe.run()
        finally:
            self._pipes.discard(pipe)
            pipe.close()


class _Pipe:
    """One client connection and its connection to the server."""

    def __init__(
        self,
        proxy: Proxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        server_reader: asyncio.StreamReader,
        server_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.server_reader = server_reader
        self.server_writer = server_writer

    def close(self) -> None:
        for writer in (self.client_writer, self.server_writer):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()

    async def run(self) -> None:
        upstream = asyncio.ensure_future(self._pump(self._commands))
        downstream = asyncio.ensure_future(self._pump(self._replies))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)

    async def _pump(self, step: Callable[[], Awaitable[bool]]) -> None:
        while await step():
            pass

    async def _commands(self) -> bool:
        data = await self.client_reader.read(65536)
        if not data:
            return False
        self._pending_commands = getattr(self, "_pending_commands", b"") + data
        frames, self._pending_commands = split_frames(self._pending_commands)
        proxy = self.proxy
        proxy.commands += len(frames)
        if proxy.mode == "blackhole":
            return True
        if proxy.mode == "answer":
            self.client_writer.write(proxy.reply * len(frames))
            return True
        self.server_writer.write(b"".join(frames))
        return True

    async def _replies(self) -> bool:
        data = await self.server_reader.read(65536)
        if not data:
            return False
        self._pending_replies = getattr(self, "_pending_replies", b"") + data
        frames, self._pending_replies = split_frames(self._pending_replies)
        proxy = self.proxy
        if proxy.delay:
            await asyncio.sleep(proxy.delay)
        out: List[bytes] = []
        for frame in frames:
            if proxy.mode == "blackhole" or proxy.mode == "answer":
                continue
            if proxy.mode == "garbage":
                out.append(b"?\x00\xffnot resp\r\n")
                continue
            if proxy.to_withhold:
                proxy.to_withhold -= 1
                continue
            while proxy.to_inject and proxy.recent:
                proxy.to_inject -= 1
                out.append(proxy.recent[-1])
            out.append(frame)
            proxy.recent.append(frame)
        if out:
            self.client_writer.write(b"".join(out))
        return True
