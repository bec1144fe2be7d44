"""The RESP parser: every reply type, any chunking, bounded on hostile input."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadercache.backends.redis._resp import (
    NOT_ENOUGH,
    TOO_LARGE,
    Parser,
    ProtocolError,
    Push,
    ReplyError,
    encode,
)


def parse_all(data: bytes, parser: Parser) -> List[Any]:
    parser.feed(data)
    replies = []
    while (reply := parser.gets()) is not NOT_ENOUGH:
        replies.append(reply)
    return replies


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"+OK\r\n", "OK"),
        (b"$2\r\nOK\r\n", b"OK"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"_\r\n", None),
        (b":-42\r\n", -42),
        (b"(123456789012345678901234567890\r\n", 123456789012345678901234567890),
        (b"#t\r\n", True),
        (b"#f\r\n", False),
        (b",1.5\r\n", 1.5),
        (b"=8\r\ntxt:text\r\n", b"text"),
        (b"*0\r\n", []),
        (b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", [b"a", [1]]),
        (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
        (b"%1\r\n+k\r\n:1\r\n", {"k": 1}),
        (b"%0\r\n", {}),
        (b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n", b"v"),
        (b"*1\r\n|1\r\n+a\r\n+b\r\n:7\r\n", [7]),
    ],
)
def test_each_reply_type(data: bytes, reply: Any) -> None:
    assert parse_all(data, Parser()) == [reply]


def test_errors_and_pushes_are_their_own_types() -> None:
    error, push = parse_all(
        b"-OOM command not allowed\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
        Parser(),
    )
    assert isinstance(error, ReplyError) and error.code == "OOM"
    assert type(push) is Push and push == [b"invalidate", [b"k"]]
    (blob,) = parse_all(b"!10\r\nERR broken\r\n", Parser())
    assert isinstance(blob, ReplyError) and blob.code == "ERR"


def test_a_simple_string_and_a_bulk_string_differ() -> None:
    # A reply check tells +OK from a value that happens to be b"OK".
    assert parse_all(b"+OK\r\n$2\r\nOK\r\n", Parser()) == ["OK", b"OK"]


replies = st.recursive(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
        st.integers(-(2**70), 2**70).map(lambda i: b":%d\r\n" % i),
        st.just(b"$-1\r\n"),
        st.just(b"+OK\r\n"),
        st.just(b"-ERR no\r\n"),
    ),
    lambda inner: st.lists(inner, max_size=6).map(
        lambda items: b"*%d\r\n" % len(items) + b"".join(items)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(replies, min_size=1, max_size=8), st.data())
def test_any_chunking_gives_the_same_replies(frames: List[bytes], data: Any) -> None:
    stream = b"".join(frames)
    whole = parse_all(stream, Parser())
    assert len(whole) == len(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    parser = Parser()
    pieces: List[Any] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        pieces += parse_all(stream[start:cut], parser)
        start = cut
    assert repr(pieces) == repr(whole)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_protocol_error_and_nothing_else(data: bytes) -> None:
    parser = Parser(max_bulk=64, max_items=64)
    with contextlib.suppress(ProtocolError):
        parse_all(data, parser)


@pytest.mark.parametrize(
    "data",
    [
        b"?\r\n",
        b"$x\r\n",
        b"*-2\r\n",
        b"$3\r\nabcd\r\n",
        b"#x\r\n",
        b",nan-ish\r\n",
        b":1x\r\n",
        b"x" * 100,
        b"*2000000\r\n",
    ],
)
def test_what_is_not_resp(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_all(data, Parser(max_items=1 << 20))


def test_a_bulk_past_the_limit_is_skipped_as_it_arrives() -> None:
    size = 8 << 20
    body = b"x" * size
    stream = b"*3\r\n$1\r\na\r\n$%d\r\n%s\r\n$1\r\nb\r\n" % (size, body)
    parser = Parser(max_bulk=1024)
    tracemalloc.start()
    try:
        out: List[Any] = []
        for start in range(0, len(stream), 65536):
            out += parse_all(stream[start : start + 65536], parser)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [[b"a", TOO_LARGE, b"b"]]
    # The chunks themselves are the test's; the parser kept none of them.
    assert peak < 1 << 20, f"{peak} bytes at the peak"


@pytest.mark.parametrize("chunk", [1, 7, 65536, 65536 + 13])
def test_a_skipped_bulk_may_end_anywhere_in_a_chunk(chunk: int) -> None:
    # Including exactly at a chunk's end.
    size = 65536 * 2 - 4
    stream = b"*2\r\n+g\r\n$%d\r\n%s\r\n+next\r\n" % (size, b"x" * size)
    parser = Parser(max_bulk=100)
    out: List[Any] = []
    for start in range(0, len(stream), chunk):
        out += parse_all(stream[start : start + chunk], parser)
    assert out == [["g", TOO_LARGE], "next"]


def test_a_large_reply_in_many_pieces_is_parsed_once() -> None:
    values = [b"v%05d" % i for i in range(20_000)]
    stream = b"*%d\r\n" % len(values) + b"".join(
        b"$%d\r\n%s\r\n" % (len(v), v) for v in values
    )
    parser = Parser()
    out: List[Any] = []
    for start in range(0, len(stream), 1000):
        out += parse_all(stream[start : start + 1000], parser)
    assert out == [values]


def test_encode() -> None:
    assert encode((b"SET", "k", 1, 2.5)) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n2.5\r\n"
    )
    with pytest.raises(TypeError):
        encode((b"SET", True))
    with pytest.raises(TypeError):
        encode((b"SET", object()))  # type: ignore[arg-type]


# -- the C fast path (_speedups._bulks) against the Python it stands in for ---

near_resp = st.one_of(
    replies,
    # Bulk strings and nulls as Redis sends them, and near misses of them.
    st.lists(
        st.one_of(
            st.binary(max_size=80).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
            st.sampled_from(
                [
                    b"$-1\r\n",
                    b"_\r\n",
                    b"$-0\r\n\r\n",
                    b"$-2\r\n",
                    b"$+1\r\na\r\n",
                    b"$ 1\r\na\r\n",
                    b"$1_0\r\n0123456789\r\n",
                    b"$01\r\na\r\n",
                    b"$1\r\nab\r\n",
                    b"$1\r\na\n\r",
                    b"$1\r\na\rx",
                    b"$1\r\na\r",
                    b"$99999999999999999999\r\n",
                    b"$\r\n",
                    b":5\r\n",
                    b"*1\r\n$1\r\nz\r\n",
                    b"|1\r\n+a\r\n+b\r\n",
                ]
            ),
        ),
        max_size=10,
    ).map(lambda items: b"*%d\r\n" % len(items) + b"".join(items)),
    st.binary(max_size=60),
)


def _outcome(stream: bytes, cuts: List[int], max_bulk: Any) -> str:
    parser = Parser(max_bulk=max_bulk, max_items=64)
    replies: List[Any] = []
    start = 0
    try:
        for cut in [*cuts, len(stream)]:
            replies += parse_all(stream[start:cut], parser)
            start = cut
    except ProtocolError as error:
        return f"{replies!r} then {error}"
    return repr(replies)


@pytest.mark.skipif(
    __import__("loadercache.backends.redis._resp", fromlist=["_bulks"])._bulks is None,
    reason="the C extension is not built (or LOADERCACHE_NO_EXTENSIONS=1)",
)
@settings(max_examples=600, deadline=None)
@given(
    st.lists(near_resp, min_size=1, max_size=6),
    st.sampled_from([None, 0, 3, 40]),
    st.data(),
)
def test_the_c_fast_path_parses_as_the_python_does(
    frames: List[bytes], max_bulk: Any, data: Any
) -> None:
    from loadercache.backends.redis import _resp

    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    with_c = _outcome(stream, cuts, max_bulk)
    fast, _resp._bulks = _resp._bulks, None
    try:
        without = _outcome(stream, cuts, max_bulk)
    finally:
        _resp._bulks = fast
    assert with_c == without


@pytest.mark.skipif(
    __import__("loadercache.backends.redis._resp", fromlist=["_encode"])._encode
    is None,
    reason="the C extension is not built (or LOADERCACHE_NO_EXTENSIONS=1)",
)
@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.binary(min_size=9_990, max_size=10_010),
            st.sampled_from([b"", b"MGET", "str", 12, 1.5, bytearray(b"x")]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_the_c_encoder_writes_what_the_python_does(
    command: List[Any], as_tuple: bool
) -> None:
    from loadercache.backends.redis import _resp

    args = tuple(command) if as_tuple else command

    def outcome() -> Any:
        try:
            return _resp.encode(args)
        except TypeError as error:
            return str(error)

    with_c = outcome()
    fast, _resp._encode = _resp._encode, None
    try:
        without = outcome()
    finally:
        _resp._encode = fast
    assert with_c == without
    all_bytes = all(type(arg) is bytes for arg in command)
    assert (fast(args) is None) is not all_bytes
