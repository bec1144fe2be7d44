"""The connection: pipelining, handshakes, timeouts, and servers that misbehave.

Against a real server (Redis and Valkey) where the claim is about Redis, and
against a scripted loopback server where it is about bytes Redis would never
send.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any, Callable, List, Optional

import pytest

from loadercache.backends.redis._link import Link, RoundTripError, Unusable, parse_url
from loadercache.backends.redis._resp import Push

from ...redis_servers import RedisServer

HELLO = b"%2\r\n+server\r\n+redis\r\n+version\r\n+7.0.0\r\n"


class Scripted:
    """A loopback server that answers each read with ``answer(data)``."""

    def __init__(self, answer: Callable[[bytes], Optional[bytes]]) -> None:
        self.answer = answer
        self.server: Optional[asyncio.AbstractServer] = None
        self.writers: List[asyncio.StreamWriter] = []
        self.handlers: List[asyncio.Task[Any]] = []

    async def __aenter__(self) -> str:
        async def serve(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.handlers.append(task)
            self.writers.append(writer)
            while data := await reader.read(65536):
                reply = self.answer(data)
                if reply is None:
                    break
                writer.write(reply)
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()  # ends its handler (cancelling one would be logged)
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)


def raw(replies: List[Any]) -> List[Any]:
    return replies


async def test_requests_of_one_turn_share_one_write_and_answer_in_order(
    server: RedisServer,
) -> None:
    link = Link(parse_url(server.url), timeout=1.0)
    try:
        await link.request([(b"PING",)], raw)  # connected
        server.reset_stats()
        futures = [
            link.request(
                [(b"SET", b"lctest:k%d" % i, i), (b"GET", b"lctest:k%d" % i)], raw
            )
            for i in range(500)
        ]
        results = await asyncio.gather(*futures)
        assert results == [["OK", b"%d" % i] for i in range(500)]
        assert link.connects == 1
        assert link.server[0] in ("redis", "valkey")
    finally:
        await link.aclose()


async def test_an_answered_request_is_not_kept_until_its_write_times_out(
    server: RedisServer,
) -> None:
    # The timer of a write watches for a Redis that sends nothing; once the
    # write is answered it must let go of the requests and their results (a
    # stampede's reads each hold thousands of answers).
    class Answer:
        pass

    link = Link(parse_url(server.url), timeout=60.0)
    try:
        await link.request([(b"PING",)], raw)  # connected
        requests = [link.request([(b"PING",)], lambda _: Answer()) for _ in range(3)]
        kept = [weakref.ref(await request) for request in requests]  # one write
        del requests
        await asyncio.sleep(0)  # (the handle that woke this task holds the last)
        gc.collect()
        assert [ref() for ref in kept] == [None, None, None]
    finally:
        await link.aclose()


async def test_a_push_goes_to_on_push_not_to_a_request(server: RedisServer) -> None:
    pushes: List[Push] = []
    link = Link(
        parse_url(server.url),
        timeout=1.0,
        handshake=lambda resp3: [
            (b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"lctest:p:")
        ],
        on_push=pushes.append,
    )
    other = Link(parse_url(server.url), timeout=1.0)
    try:
        await link.request([(b"PING",)], raw)
        await other.request([(b"SET", b"lctest:p:1", b"x")], raw)
        assert await link.request([(b"GET", b"lctest:p:1")], raw) == [b"x"]
        for _ in range(100):
            if pushes:
                break
            await asyncio.sleep(0.01)
        assert pushes and pushes[0][0] == b"invalidate"
        assert pushes[0][1] == [b"lctest:p:1"]
    finally:
        await link.aclose()
        await other.aclose()


async def test_a_reply_parse_refuses_closes_the_connection_and_fails_the_rest(
    server: RedisServer,
) -> None:
    link = Link(parse_url(server.url), timeout=1.0)

    def refuse(replies: List[Any]) -> Any:
        raise Unusable("not an answer to this")

    try:
        await link.request([(b"PING",)], raw)
        first = link.request([(b"PING",)], refuse)
        second = link.request([(b"PING",)], raw)
        for future in (first, second):
            with pytest.raises(RoundTripError) as caught:
                await future
            assert caught.value.reason == "unusable"
        assert await link.request([(b"PING",)], raw) == ["PONG"]  # a new one
        assert link.connects == 2
    finally:
        await link.aclose()


async def test_a_frame_after_the_hello_reply_fails_the_connection_not_the_load() -> (
    None
):
    # Found hanging: the connection failed inside its handshake and was used
    # anyway, and requests written to it never settled.
    async with Scripted(lambda data: HELLO + b"+OK\r\n") as url:
        link = Link(parse_url(url), timeout=0.25)
        started = time.monotonic()
        with pytest.raises(RoundTripError):
            await asyncio.wait_for(link.request([(b"PING",)], raw), 5)
        assert time.monotonic() - started < 1
        await link.aclose()


async def test_a_server_that_goes_quiet_times_out_after_the_timeout() -> None:
    answers = iter([HELLO])

    def answer(data: bytes) -> bytes:
        return next(answers, b"")  # then silence

    async with Scripted(answer) as url:
        link = Link(parse_url(url), timeout=0.25)
        started = time.monotonic()
        with pytest.raises(RoundTripError) as caught:
            await asyncio.wait_for(link.request([(b"PING",)], raw), 5)
        assert caught.value.reason == "timeout"
        assert 0.2 < time.monotonic() - started < 1
        await link.aclose()


async def test_a_server_without_hello_is_spoken_to_in_resp2() -> None:
    def answer(data: bytes) -> bytes:
        if b"HELLO" in data:
            return b"-ERR unknown command 'HELLO'\r\n"
        setname = b"+OK\r\n" * data.count(b"SETNAME")
        return setname + b"+PONG\r\n" * data.count(b"PING")

    async with Scripted(answer) as url:
        link = Link(parse_url(url), timeout=1.0)
        assert await link.request([(b"PING",)], raw) == ["PONG"]
        assert not link.resp3
        await link.aclose()


async def test_connection_refused_and_closed_mid_reply() -> None:
    link = Link(parse_url("redis://127.0.0.1:1/0"), timeout=0.25)
    with pytest.raises(RoundTripError) as caught:
        await link.request([(b"PING",)], raw)
    assert caught.value.reason == "connect"
    await link.aclose()

    def answer(data: bytes) -> Optional[bytes]:
        return HELLO if b"HELLO" in data else None  # then hang up

    async with Scripted(answer) as url:
        link = Link(parse_url(url), timeout=1.0)
        with pytest.raises(RoundTripError) as caught:
            await asyncio.wait_for(link.request([(b"PING",)], raw), 5)
        assert caught.value.reason == "closed"
        await link.aclose()


async def test_password_and_database_from_the_url(tmp_path: Any) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        good = Link(
            parse_url(f"redis://:s3cret@127.0.0.1:{server.port}/3"), timeout=1.0
        )
        await good.request([(b"SET", b"lctest:db3", b"x")], raw)
        assert await good.request([(b"GET", b"lctest:db3")], raw) == [b"x"]
        await good.aclose()
        bad = Link(parse_url(f"redis://:wrong@127.0.0.1:{server.port}/0"), timeout=1.0)
        with pytest.raises(RoundTripError):
            await bad.request([(b"PING",)], raw)
        await bad.aclose()
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://localhost", "localhost:6379/0"),
        ("rediss://u:p@cache:6380/2", "cache:6380/2"),
        ("unix:///tmp/redis.sock?db=4", "/tmp/redis.sock/4"),
        ("redis://h:6379?db=5", "h:6379/5"),
    ],
)
def test_urls(url: str, where: str) -> None:
    assert repr(parse_url(url)).endswith(where)


@pytest.mark.parametrize("url", ["http://x", "redis://h/x", "unix://", "redis://h:x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)
