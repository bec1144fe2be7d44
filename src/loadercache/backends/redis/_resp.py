"""The Redis wire protocol (RESP2 and RESP3): commands out, replies in.

:func:`encode` turns a command into bytes.  :class:`Parser` turns the bytes a
server sends into replies, one complete top-level reply per :meth:`Parser.gets`:

============  ===================================  ==========================
RESP type     example                              parsed as
============  ===================================  ==========================
simple        ``+OK``                              ``str`` (``"OK"``)
error         ``-ERR unknown``, ``!<len>`` (RESP3) :class:`ReplyError`
integer       ``:42``, big number ``(`` (RESP3)    ``int``
bulk          ``$3 foo``                           ``bytes``
null          ``$-1``, ``*-1``, ``_`` (RESP3)      ``None``
array, set    ``*2 ...``, ``~2 ...`` (RESP3)       ``list``
map           ``%1 ...`` (RESP3)                   ``dict`` (``list`` of
                                                   pairs if a key is
                                                   unhashable)
push          ``>3 ...`` (RESP3)                   :class:`Push`
boolean       ``#t`` (RESP3)                       ``bool``
double        ``,1.5`` (RESP3)                     ``float``
verbatim      ``=8 txt:text`` (RESP3)              ``bytes`` (``b"text"``)
attribute     ``|1 ...`` (RESP3)                   dropped; the reply it
                                                   annotates is returned
============  ===================================  ==========================

Simple strings and bulk strings parse to different types (``str`` and
``bytes``), so a caller checking a reply's shape can tell ``+OK`` from a value.

Why a parser of our own rather than redis-py's: it is fed by an
``asyncio.Protocol`` (no task, no ``await`` per reply), it resumes where it
stopped when a large reply arrives in pieces (each byte is parsed once), and it
is bounded: a bulk string longer than ``max_bulk`` is skipped as it arrives
and parsed as :data:`TOO_LARGE`, never buffered whole, and an aggregate
claiming more than ``max_items`` elements, a header line longer than 64
bytes or an unknown type byte raise :class:`ProtocolError`: the connection
is then out of step with the server and must be closed.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from loadercache.loader import _speedups

#: The leading bulk strings of an array, parsed in C (None: no extension).
_bulks: Optional[Callable[[bytes, int, int, int], Tuple[List[Any], int]]] = (
    None if _speedups is None else _speedups._bulks
)
#: encode for commands of bytes, in C (None: no extension); it answers None
#: for any other command.
_encode: Optional[Callable[[Sequence[Any]], Optional[bytes]]] = (
    None if _speedups is None else _speedups._encode
)

__all__ = [
    "NOT_ENOUGH",
    "TOO_LARGE",
    "Parser",
    "ProtocolError",
    "Push",
    "ReplyError",
    "encode",
]

Arg = Union[bytes, str, int, float]

_CRLF = b"\r\n"
# The longest header line a server sends (type byte, a 64-bit length, CRLF).
_MAX_LINE = 64


class ReplyError(Exception):
    """An error reply from the server (``-ERR ...``): the command failed, the
    connection is fine.  ``code`` is its first word, e.g. ``"OOM"``.

    >>> ReplyError("OOM command not allowed when used memory > 'maxmemory'.").code
    'OOM'
    """

    @property
    def code(self) -> str:
        """The error's first word (``ERR``, ``OOM``, ``MOVED``, ``NOSCRIPT``...)."""
        message = str(self)
        return message.split(" ", 1)[0] if message else ""


class ProtocolError(Exception):
    """Bytes that are not RESP: the connection is out of step and must close.

    >>> Parser().feed(b"?garbage\\r\\n")  # doctest: +SKIP
    """


class Push(list):  # type: ignore[type-arg]
    """A RESP3 push frame (an invalidation, a pub/sub message): not a reply.

    >>> Push([b"invalidate", [b"key"]])[0]
    b'invalidate'
    """

    __slots__ = ()


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: :meth:`Parser.gets` found no complete reply yet: feed more bytes.
NOT_ENOUGH: Any = _Marker("NOT_ENOUGH")
#: A bulk string longer than the parser's ``max_bulk``, skipped unread.
TOO_LARGE: Any = _Marker("TOO_LARGE")


def encode(command: Sequence[Arg]) -> bytes:
    """One command as RESP: an array of bulk strings.

    >>> encode((b"GET", b"k"))
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
    """
    if _encode is not None:
        data = _encode(command)
        if data is not None:
            return data
    parts = [b"*%d\r\n" % len(command)]
    append = parts.append
    for arg in command:
        if type(arg) is not bytes:
            arg = _arg_bytes(arg)
        append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _arg_bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bool):
        raise TypeError(f"a Redis command argument cannot be a bool: {arg!r}")
    if isinstance(arg, (int, float)):
        return repr(arg).encode("ascii")
    raise TypeError(f"a Redis command argument cannot be a {type(arg).__name__}")


# Aggregate kinds on the parser's stack.
_ARRAY, _MAP, _PUSH, _ATTRIBUTE = range(4)


class Parser:
    """Parse the bytes a server sends into replies, one at a time.

    >>> parser = Parser()
    >>> parser.feed(b"*2\\r\\n$1\\r\\na\\r\\n$-1")
    >>> parser.gets() is NOT_ENOUGH
    True
    >>> parser.feed(b"\\r\\n+OK\\r\\n")
    >>> parser.gets(), parser.gets(), parser.gets() is NOT_ENOUGH
    ([b'a', None], 'OK', True)

    ``max_bulk`` bounds the bulk strings it buffers (longer ones parse as
    :data:`TOO_LARGE`) and ``max_items`` the elements of one aggregate.
    """

    __slots__ = (
        "_buf",
        "_chunks",
        "_have",
        "_max_bulk",
        "_max_items",
        "_need",
        "_pos",
        "_skip",
        "_skipped",
        "_stack",
    )

    def __init__(
        self, *, max_bulk: Optional[int] = None, max_items: int = 1 << 20
    ) -> None:
        self._max_bulk = max_bulk
        self._max_items = max_items
        self._buf = b""
        self._pos = 0
        # Bytes fed but not yet joined onto _buf, and how many: a reply
        # arriving in many pieces is joined once, when enough has arrived.
        self._chunks: List[bytes] = []
        self._have = 0
        self._need = 0
        # The bytes of a too-large bulk string still to discard (data and
        # CRLF), and whether one has been discarded and awaits completing.
        self._skip = 0
        self._skipped = False
        # Aggregates being filled: [kind, items, remaining].
        self._stack: List[List[Any]] = []

    def feed(self, data: bytes) -> None:
        """Add bytes received from the server."""
        if self._skip:
            if len(data) < self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
            self._skipped = True
        if data:
            self._chunks.append(data)
            self._have += len(data)

    def gets(self) -> Any:
        """The next complete reply, or :data:`NOT_ENOUGH`.

        Raises :class:`ProtocolError` for bytes that are not RESP.
        """
        buf = self._buf
        pos = self._pos
        if self._chunks:
            if len(buf) - pos + self._have < self._need:
                return NOT_ENOUGH
            buf = self._buf = buf[pos:] + b"".join(self._chunks)
            pos = self._pos = 0
            self._chunks.clear()
            self._have = 0
        if self._skip:
            return NOT_ENOUGH
        if self._skipped:
            self._skipped = False
            value = self._complete(TOO_LARGE)
            if value is not NOT_ENOUGH:
                return value
        stack = self._stack
        end = len(buf)
        while True:
            # One element: a header line, and for a bulk string its data.
            if pos >= end:
                self._need = 0
                self._pos = pos
                return NOT_ENOUGH
            nl = buf.find(_CRLF, pos)
            if nl < 0:
                if end - pos > _MAX_LINE:
                    raise ProtocolError(
                        f"no line end within {_MAX_LINE} bytes: {buf[pos : pos + 16]!r}"
                    )
                self._need = end - pos + 1
                self._pos = pos
                return NOT_ENOUGH
            kind = buf[pos]
            if kind == 36:  # $ bulk string
                length = self._length(buf, pos, nl)
                if length < 0:
                    value = None
                    pos = nl + 2
                else:
                    start = nl + 2
                    stop = start + length
                    max_bulk = self._max_bulk
                    if max_bulk is not None and length > max_bulk:
                        if stop + 2 > end:
                            # Discard it as it arrives (feed), unbuffered.
                            self._skip = stop + 2 - end
                            self._buf, self._pos, self._need = b"", 0, 0
                            return NOT_ENOUGH
                        value = TOO_LARGE
                    elif stop + 2 > end:
                        self._need = stop + 2 - pos
                        self._pos = pos
                        return NOT_ENOUGH
                    else:
                        if buf[stop : stop + 2] != _CRLF:
                            raise ProtocolError("a bulk string does not end in CRLF")
                        value = buf[start:stop]
                    pos = stop + 2
            elif kind == 42 or kind == 126:  # * array, ~ set
                count = self._length(buf, pos, nl)
                pos = nl + 2
                if count < 0:
                    value = None
                elif count == 0:
                    value = []
                else:
                    items: List[Any] = []
                    if _bulks is not None:
                        # The bulk strings and nulls that lead it (an MGET's
                        # values), in C; what follows, whatever it is, below.
                        max_bulk = self._max_bulk
                        items, pos = _bulks(
                            buf, pos, count, -1 if max_bulk is None else max_bulk
                        )
                        if len(items) == count:
                            value = self._complete(items)
                            if value is not NOT_ENOUGH:
                                self._pos = pos
                                self._need = 0
                                return value
                            continue
                    stack.append([_ARRAY, items, count - len(items)])
                    continue
            elif kind == 43:  # + simple string
                value = buf[pos + 1 : nl].decode("utf-8", "replace")
                pos = nl + 2
            elif kind == 58:  # : integer
                value = self._integer(buf, pos, nl)
                pos = nl + 2
            elif kind == 45:  # - error
                value = ReplyError(buf[pos + 1 : nl].decode("utf-8", "replace"))
                pos = nl + 2
            elif kind == 95:  # _ null
                value = None
                pos = nl + 2
            elif kind == 37 or kind == 62 or kind == 124:  # % map, > push, | attr
                count = self._length(buf, pos, nl)
                pos = nl + 2
                if count < 0:
                    raise ProtocolError("a map, push or attribute of negative size")
                aggregate = _MAP if kind == 37 else _PUSH if kind == 62 else _ATTRIBUTE
                size = count * 2 if aggregate in (_MAP, _ATTRIBUTE) else count
                if size == 0:
                    if aggregate == _ATTRIBUTE:
                        continue
                    value = {} if aggregate == _MAP else Push()
                else:
                    if size > self._max_items:
                        raise ProtocolError(f"an aggregate of {count} elements")
                    stack.append([aggregate, [], size])
                    continue
            elif kind == 35:  # # boolean
                flag = buf[pos + 1 : nl]
                if flag not in (b"t", b"f"):
                    raise ProtocolError(f"a boolean of {flag!r}")
                value = flag == b"t"
                pos = nl + 2
            elif kind == 44:  # , double
                try:
                    value = float(buf[pos + 1 : nl])
                except ValueError:
                    raise ProtocolError("a double that is not a number") from None
                pos = nl + 2
            elif kind == 40:  # ( big number
                value = self._integer(buf, pos, nl)
                pos = nl + 2
            elif kind == 33 or kind == 61:  # ! blob error, = verbatim string
                length = self._length(buf, pos, nl)
                start = nl + 2
                stop = start + length
                if length < 0:
                    raise ProtocolError("a blob of negative size")
                if stop + 2 > end:
                    self._need = stop + 2 - pos
                    self._pos = pos
                    return NOT_ENOUGH
                blob = buf[start:stop]
                pos = stop + 2
                if kind == 33:
                    value = ReplyError(blob.decode("utf-8", "replace"))
                else:
                    value = blob[4:]  # "txt:" or "mkd:"
            else:
                raise ProtocolError(f"unknown reply type {bytes([kind])!r}")
            value = self._complete(value)
            if value is not NOT_ENOUGH:
                self._pos = pos
                self._need = 0
                return value

    def _complete(self, value: Any) -> Any:
        """Add a finished element to the aggregates open; return the reply if
        it finished the outermost, else NOT_ENOUGH."""
        stack = self._stack
        while stack:
            frame = stack[-1]
            frame[1].append(value)
            frame[2] -= 1
            if frame[2]:
                return NOT_ENOUGH
            stack.pop()
            kind, items = frame[0], frame[1]
            if kind == _ARRAY:
                value = items
            elif kind == _PUSH:
                value = Push(items)
            elif kind == _MAP:
                pairs = list(zip(items[::2], items[1::2]))
                try:
                    value = dict(pairs)
                except TypeError:
                    value = pairs
            else:
                # An attribute annotates the element that follows: drop it.
                return NOT_ENOUGH
        return value

    def _length(self, buf: bytes, pos: int, nl: int) -> int:
        try:
            length = int(buf[pos + 1 : nl])
        except ValueError:
            raise ProtocolError(f"a length of {buf[pos + 1 : nl]!r}") from None
        if length < -1:
            raise ProtocolError(f"a length of {length}")
        if length > self._max_items and buf[pos] != 36:
            raise ProtocolError(f"an aggregate of {length} elements")
        return length

    def _integer(self, buf: bytes, pos: int, nl: int) -> int:
        try:
            return int(buf[pos + 1 : nl])
        except ValueError:
            raise ProtocolError(f"an integer of {buf[pos + 1 : nl]!r}") from None
