"""What a stored value looks like in Redis: the serializer's bytes in an envelope.

Every value is stored as ::

    "L" | generation token (8) | crc32(Redis key) (4) | [HMAC (16)] | payload

or, for a store with ``stale_if_error`` or ``refresh_ahead``, a *timed*
value::

    "M" | token (8) | crc32 (4) | [HMAC (16)] | stale at (8) | load ms (4) | payload

* The **token** is the generation of the namespace the value was loaded under
  (see :mod:`loadercache.backends.redis._namespace`): a value of any other
  generation is a miss, which is how ``clear_all`` forgets a namespace in one
  command.
* The **key binding** is the CRC-32 of the full Redis key (prefix, version,
  namespace and encoded key).  A value read under another key than the one it
  was written under is refused: a connection whose replies ran out of step
  with its requests (a reply for another key, another namespace) can never
  hand one key's value to another.  Such a value is counted as a decode error
  and the store closes the connection that produced it.
* With ``secret=``, an **HMAC-SHA256** (its first 16 bytes) of the token, the
  Redis key and the payload: a value written by anyone without the secret,
  or altered, is a miss.  It does not stop a writer who can reach the server
  from deleting keys or storing an old value again (a replay): that needs
  access control on the server (ACLs, a private network, TLS).
* The **payload** is what the serializer's ``dumps`` returned.

A namespace's generation key holds ``"G" | token (8) | crc32(its key) (4)``,
bound to its key in the same way.

Values longer than ``max_bytes`` (the store's ``max_value_bytes``) are
neither written nor read: a value of tens of megabytes would block the
connection every request of the process shares.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from loadercache.backends.redis._resp import TOO_LARGE
from loadercache.backends.serializers import Serializer
from loadercache.loader import _speedups

__all__ = [
    "LEASE_SIZE",
    "Envelope",
    "LeaseMark",
    "Mismatch",
    "Opened",
    "TooLarge",
    "lease_marker",
    "new_token",
    "timing",
]

TOKEN_SIZE = 8
_VALUE = b"L"
_TIMED = b"M"
_GENERATION = b"G"
# A timed value's timing: when it goes stale (ms since the epoch), and how
# long its load took (ms): for stale_if_error and refresh-ahead.
_TIMING = struct.Struct(">QI")
_LEASE = b"?"
#: A lease: "?" | generation token (8) | holder (8) | nonce (4).
LEASE_SIZE = 1 + TOKEN_SIZE + 8 + 4
_CRC = struct.Struct(">I")
_MAC_SIZE = 16
_HEADER = 1 + TOKEN_SIZE + _CRC.size


#: A value of :func:`_open_plain` that :meth:`Envelope.open_all` opens itself.
_LATER: Any = object()


def _open_plain_py(
    prefix: bytes,
    header: int,
    rkeys: List[bytes],
    raws: List[Any],
    loads: Optional[Callable[[bytes], Any]],
    miss: Any,
    later: Any,
) -> Tuple[List[Any], int]:
    """The values every read is made of, opened in one pass (in C when built).

    For each raw: *miss* if it is ``None``; the payload (decoded by *loads*,
    unless it is ``None``) of a raw that starts with *prefix*, holds its
    *header* and is bound to its rkey; *later* for anything else, and for a
    payload *loads* refused, which :meth:`Envelope.open_all` opens (or
    refuses) itself.  Returns the values and how many are *later*.
    ``_speedups._open_plain`` is this, line for line.
    """
    values: List[Any] = []
    laters = 0
    append = values.append
    crc32 = zlib.crc32
    bound_at = len(prefix)
    for rkey, raw in zip(rkeys, raws):
        if raw is None:
            append(miss)
        elif (
            type(raw) is bytes
            and type(rkey) is bytes
            and len(raw) >= header
            and raw.startswith(prefix)
            and int.from_bytes(raw[bound_at : bound_at + 4], "big") == crc32(rkey)
        ):
            if loads is None:
                append(raw[header:])
            else:
                try:
                    append(loads(raw[header:]))
                except Exception:
                    append(later)
                    laters += 1
        else:
            append(later)
            laters += 1
    return values, laters


_open_plain: Callable[..., Tuple[List[Any], int]] = (
    _open_plain_py if _speedups is None else _speedups._open_plain
)


def new_token() -> bytes:
    """A new generation token: 8 random bytes."""
    return os.urandom(TOKEN_SIZE)


def timing(stale_at_ms: int, load_ms: int) -> bytes:
    """The timing a timed value carries (see :meth:`Envelope.seal`)."""
    return _TIMING.pack(max(0, stale_at_ms), min(max(0, load_ms), 0xFFFFFFFF))


def lease_marker(token: bytes, holder: bytes, nonce: int) -> bytes:
    """What a key holds while *holder* has leased it in generation *token*."""
    return _LEASE + token + holder + (nonce & 0xFFFFFFFF).to_bytes(4, "big")


class LeaseMark:
    """A key that holds a lease of the current generation (in a read's answer)."""

    __slots__ = ("marker",)

    def __init__(self, marker: bytes) -> None:
        self.marker = marker

    @property
    def holder(self) -> bytes:
        """Who holds it: the holder id of the store that leased it."""
        return self.marker[1 + TOKEN_SIZE : 1 + TOKEN_SIZE + 8]


class TooLarge(Exception):
    """A value whose envelope is longer than the store's ``max_value_bytes``."""


class Mismatch(Exception):
    """A stored value or generation bound to another key than the one read."""


class Opened:
    """How each value of a read opened: counts, for the store's stats; and
    ``unanswered``: how many values of the last :meth:`Envelope.open_all`
    are a miss or a :class:`LeaseMark` (-1: unknown), so that a read which
    found every key need not look at its values again."""

    __slots__ = ("corrupt", "forged", "too_large", "unanswered")

    def __init__(self) -> None:
        self.corrupt = 0
        self.forged = 0
        self.too_large = 0
        self.unanswered = -1

    @property
    def errors(self) -> int:
        return self.corrupt + self.forged + self.too_large


class Envelope:
    """Seals payloads into envelopes and opens them (see the module docs).

    >>> envelope = Envelope(MsgpackSerializer())
    >>> token = new_token()
    >>> raw = envelope.seal(token, b"lc:3:v1:{users}:i:1", envelope.dumps({"id": 1}))
    >>> envelope.open_all(token, [b"lc:3:v1:{users}:i:1"], [raw], Opened(), MISS)
    [{'id': 1}]
    """

    __slots__ = ("_header", "_loads", "dumps", "max_bytes", "secret", "serializer")

    def __init__(
        self,
        serializer: Serializer,
        *,
        secret: Optional[bytes] = None,
        max_bytes: Optional[int] = None,
    ) -> None:
        self.serializer = serializer
        self.dumps: Callable[[Any], bytes] = serializer.dumps
        self._loads = serializer.loads
        self.secret = secret
        self.max_bytes = max_bytes
        self._header = _HEADER + (_MAC_SIZE if secret is not None else 0)

    @property
    def overhead(self) -> int:
        """The bytes an envelope adds to a payload."""
        return self._header

    @property
    def max_reply(self) -> Optional[int]:
        """The longest bulk reply a read needs to see whole."""
        return self.max_bytes

    def seal(
        self, token: bytes, rkey: bytes, payload: bytes, meta: bytes = b""
    ) -> bytes:
        """The envelope of *payload* stored at *rkey* under generation *token*.

        *meta* (from :func:`timing`) makes it a timed value, which says when
        it goes stale and how long it took to load.  Raises
        :class:`TooLarge` past ``max_bytes``.
        """
        body = meta + payload
        head = (_TIMED if meta else _VALUE) + token + _CRC.pack(zlib.crc32(rkey))
        if self.secret is not None:
            head += self._mac(token, rkey, body)
        if self.max_bytes is not None and len(head) + len(body) > self.max_bytes:
            raise TooLarge(
                f"the value takes {len(head) + len(body)} bytes, more than "
                f"max_value_bytes={self.max_bytes}"
            )
        return head + body

    def open_all(
        self,
        token: Optional[bytes],
        rkeys: Sequence[bytes],
        raws: Sequence[Any],
        opened: Opened,
        miss: Any,
        *,
        decode: bool = True,
        timings: Optional[Dict[int, Tuple[int, int]]] = None,
    ) -> List[Any]:
        """The values of *raws* read at *rkeys*; *miss* for each one that is not.

        A raw of another generation, or one that does not decode, is *miss*
        (counted in *opened*); a lease of this generation is a
        :class:`LeaseMark`; one bound to another key raises :class:`Mismatch`:
        the reply is not an answer to this read.  Without *decode*, a value is
        its serialized payload (its signature checked), not decoded.  For each
        timed value, *timings* gets its position: (stale at, load time), in
        milliseconds (see :func:`timing`).
        """
        if token is None:
            # No generation: nothing stored can be current.
            opened.too_large += sum(raw is TOO_LARGE for raw in raws)
            opened.unanswered = len(raws)
            return [miss] * len(raws)
        prefix = _VALUE + token
        loads = self._loads
        secret = self.secret
        if secret is None:
            # The plain values of this generation in one pass (_open_plain);
            # each other raw, below.
            values, laters = _open_plain(
                prefix,
                self._header,
                rkeys if type(rkeys) is list else list(rkeys),
                raws if type(raws) is list else list(raws),
                loads if decode else None,
                miss,
                _LATER,
            )
            # (a list's count compares by identity first: None is None,
            # and None with anything else RESP parses is False.)
            unanswered = raws.count(None) if type(raws) is list else -1
            if not laters:
                opened.unanswered = unanswered
                return values
        else:
            values = [_LATER] * min(len(rkeys), len(raws))
            unanswered = -1
        timed_prefix = _TIMED + token
        header = self._header
        crc32 = zlib.crc32
        unpack_crc = _CRC.unpack_from
        later = [i for i, value in enumerate(values) if value is _LATER]
        for position in later:
            rkey = rkeys[position]
            raw = raws[position]
            if raw is None:
                values[position] = miss
                continue
            if type(raw) is not bytes:
                if raw is TOO_LARGE:
                    opened.too_large += 1
                else:
                    opened.corrupt += 1
                values[position] = miss
                continue
            # Where the payload starts: after the header, and after the
            # timing of a timed value; 0 for what is not of this generation.
            if raw.startswith(prefix):
                body = header
            elif raw.startswith(timed_prefix):
                body = header + _TIMING.size
            else:
                body = 0
            if body:
                if len(raw) < body:
                    # This generation, but too short to hold its header.
                    if secret is not None:
                        opened.forged += 1
                    else:
                        opened.corrupt += 1
                    values[position] = miss
                    continue
                if unpack_crc(raw, 9)[0] != crc32(rkey):
                    raise Mismatch(f"the value at {rkey!r} is bound to another key")
                if secret is not None and not hmac.compare_digest(
                    raw[_HEADER:header], self._mac(token, rkey, raw[header:])
                ):
                    opened.forged += 1
                    values[position] = miss
                    continue
                if body != header and timings is not None:
                    timings[position] = _TIMING.unpack_from(raw, header)
                if not decode:
                    values[position] = raw[body:]
                    continue
                try:
                    values[position] = loads(raw[body:])
                except Exception:
                    opened.corrupt += 1
                    values[position] = miss
            elif raw[:1] in (_VALUE, _TIMED) and len(raw) >= _HEADER:
                values[position] = miss  # another generation: cleared
            elif raw[:1] == _LEASE and len(raw) == LEASE_SIZE:
                # Being loaded by a store holding its lease; of another
                # generation, the lease is as cleared as a value.
                values[position] = LeaseMark(raw) if raw[1:9] == token else miss
            else:
                opened.corrupt += 1
                values[position] = miss
        if unanswered >= 0:
            for position in later:
                value = values[position]
                unanswered += value is miss or type(value) is LeaseMark
        opened.unanswered = unanswered
        return values

    def generation(self, gen_key: bytes, token: bytes) -> bytes:
        """What the generation key *gen_key* holds for *token*."""
        return _GENERATION + token + _CRC.pack(zlib.crc32(gen_key))

    def open_generation(self, gen_key: bytes, raw: Any) -> Tuple[Optional[bytes], bool]:
        """The token held at *gen_key* (``None`` if none) and whether it was valid.

        Raises :class:`Mismatch` for the generation of another key.
        """
        if raw is None:
            return None, True
        if (
            type(raw) is not bytes
            or len(raw) != 1 + TOKEN_SIZE + _CRC.size
            or raw[:1] != _GENERATION
        ):
            return None, False
        if _CRC.unpack_from(raw, 1 + TOKEN_SIZE)[0] != zlib.crc32(gen_key):
            raise Mismatch(f"the generation read at {gen_key!r} is another key's")
        return raw[1 : 1 + TOKEN_SIZE], True

    def _mac(self, token: bytes, rkey: bytes, payload: bytes) -> bytes:
        assert self.secret is not None
        message = b"%d:%s%s%s" % (len(rkey), rkey, token, payload)
        return hmac.new(self.secret, message, hashlib.sha256).digest()[:_MAC_SIZE]
