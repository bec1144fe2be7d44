"""Serializers that turn resolved values into bytes for a shared cache, and back.

The Redis cache map stores every resolved value through a :class:`Serializer`:
an object with ``dumps(value) -> bytes`` and ``loads(data) -> value``.  The
default, :class:`MsgpackSerializer`, gives back what a batch function returned
*with its type*: a tuple stays a tuple, a ``Decimal`` stays exact, an aware
``datetime`` keeps its UTC offset.  A warm read must not hand a resolver a
value that looks right and compares wrong.

Two exceptions make the contract with the cache map:

- :class:`SerializationError` (a ``TypeError``) from ``dumps``: this value
  cannot be stored.  The caller still gets the value; it is only not cached.
- :class:`DeserializationError` (a ``ValueError``) from ``loads``: these bytes
  are not a value this serializer wrote (corrupt, truncated, another format
  version, a user type this process has not registered).  The cache map
  counts it as a miss and overwrites the entry.

``loads`` is safe on *any* bytes: whatever is stored under a key (written by
an older version, by another program, by an attacker), it returns a value of
a supported type or raises :class:`DeserializationError`, within bounded time,
memory and stack.  ``dumps`` refuses what ``loads`` would refuse.

Every payload starts with one format-version byte, so a change of the
encoding is detected instead of decoded wrongly.

Wire format of :class:`MsgpackSerializer` (format version 2)
-------------------------------------------------------------
``bytes([2]) + msgpack(value)``.  ``None``, ``bool``, ``int`` (64-bit),
``float``, ``str``, ``bytes``, ``list`` and ``dict`` are plain msgpack, so any
msgpack reader can decode those.  The other types use msgpack extension types
in two ways.

*Containers* (tuple, set, frozenset, and every registered user type) are a
msgpack array whose first element is an empty *marker* extension of the
type's code, followed by the items (for a user type: one item, what its
``encode`` returned): ``(1, "a")`` is ``[ExtType(1, b""), 1, "a"]``.  Their
items are ordinary msgpack inside the same stream, so decoding a value is one
pass of msgpack's own unpacker, which keeps nesting on an explicit stack:
however deeply a payload nests, decoding it neither recurses nor can exhaust
the C stack.  (Format version 1 wrapped each container's items in a nested
msgpack payload; decoding a tuple nested a few hundred levels deep then
overflowed the C stack.)

*Scalars* are extensions whose data is the value:

====  ============  =========================================================
code  type          payload
====  ============  =========================================================
1     tuple         marker: an array ``[marker, *items]``
2     set           marker: an array ``[marker, *items]``
3     frozenset     marker: an array ``[marker, *items]``
4     int           signed big-endian two's complement, for ints outside
                    ``-2**63 .. 2**64 - 1`` (msgpack's native range)
5     datetime      ``>HBBBBBIB`` year .. microsecond, fold; aware ones add
                    ``>q`` UTC offset in microseconds
6     date          ``>HBB`` year, month, day
7     time          ``>BBBIB`` hour .. microsecond, fold; aware ones add
                    ``>q`` UTC offset in microseconds
8     timedelta     ``>iII`` days, seconds, microseconds
9     Decimal       ``str(value)`` as ASCII (exact, also NaN and Infinity)
10    UUID          the 16 bytes of ``value.bytes``
====  ============  =========================================================

Codes 0 to 31 are reserved for loadercache's own types (so a later version can
add one without breaking a user's stored values); :meth:`MsgpackSerializer.register`
takes codes 32 to 127, as markers.  A marker anywhere but first in an array,
an unknown code and msgpack's own Timestamp extension (code -1, which this
serializer never writes) make a payload invalid.

Limits: values nest at most :data:`MAX_DEPTH` (1024) levels, the limit of
msgpack's packer and of its unpacker alike, so ``dumps`` refuses exactly the
depths ``loads`` would.  Sizes are bounded by the payload: an array or string
header claiming more than the payload holds is refused before anything is
allocated.  The Redis store adds a limit on the size of a stored value
(``max_value_bytes``).
"""

from __future__ import annotations

import decimal
import pickle
import re
import struct
import threading
import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    Protocol,
    Tuple,
    Type,
    TypeVar,
    runtime_checkable,
)

try:
    import msgpack  # type: ignore[import-untyped, unused-ignore]
except ImportError as _error:
    raise ImportError(
        "loadercache.backends.serializers needs msgpack; install it with: "
        "pip install 'loadercache[redis]'"
    ) from _error

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_ExtType = msgpack.ExtType
_Timestamp = msgpack.Timestamp

__all__ = [
    "MAX_DEPTH",
    "DeserializationError",
    "MsgpackSerializer",
    "SerializationError",
    "Serializer",
    "UnsafePickleSerializer",
]

T = TypeVar("T")

#: How deeply lists, dicts, tuples, sets and registered types may nest in a
#: value: msgpack's packer refuses deeper values and its unpacker deeper
#: payloads.  Decoding keeps nesting on msgpack's explicit stack (containers
#: are markers, not nested payloads), so no depth recurses in C.
MAX_DEPTH: int = 1024


@runtime_checkable
class Serializer(Protocol):
    """What the Redis cache map needs to store values: bytes out, value back.

    ``dumps`` raises :class:`SerializationError` for a value it cannot store;
    ``loads`` raises :class:`DeserializationError` for bytes it cannot read
    (and must never crash or hang on bytes it did not write: the store calls
    it on whatever Redis holds).  Any object with these two methods will do:

    >>> import json
    >>> class JSONSerializer:
    ...     def dumps(self, value):
    ...         return json.dumps(value).encode()
    ...     def loads(self, data):
    ...         return json.loads(data)
    >>> isinstance(JSONSerializer(), Serializer)
    True
    """

    def dumps(self, value: Any) -> bytes:
        """Encode *value*, or raise :class:`SerializationError`."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode what ``dumps`` returned, or raise :class:`DeserializationError`."""
        ...


class SerializationError(TypeError):
    """A value (or something inside it) has a type the serializer cannot encode.

    ``value_type`` is the offending type, so a caller can report each type
    once.  The cache map catches it: the value is returned, just not cached.

    >>> try:
    ...     MsgpackSerializer().dumps({"handle": object()})
    ... except SerializationError as error:
    ...     error.value_type
    <class 'object'>
    """

    def __init__(self, message: str, value_type: type) -> None:
        super().__init__(message)
        self.value_type = value_type


class DeserializationError(ValueError):
    """Bytes that this serializer did not write, or cannot read any more.

    Raised for truncated or garbage data, trailing bytes, another format
    version and extension codes this process has not registered.  The cache
    map treats it as a miss.

    >>> MsgpackSerializer().loads(b"\\x02\\xc1")
    Traceback (most recent call last):
      ...
    loadercache.backends.serializers.DeserializationError: ...
    """


# Extension type codes, see the table in the module docstring.  They are
# part of the stored format: never renumber one.
_EXT_TUPLE = 1
_EXT_SET = 2
_EXT_FROZENSET = 3
_EXT_BIGINT = 4
_EXT_DATETIME = 5
_EXT_DATE = 6
_EXT_TIME = 7
_EXT_TIMEDELTA = 8
_EXT_DECIMAL = 9
_EXT_UUID = 10
_RESERVED_CODES = range(0, 32)
_USER_CODES = range(32, 128)

_DATETIME_NAIVE = struct.Struct(">HBBBBBIB")
_DATETIME_AWARE = struct.Struct(">HBBBBBIBq")
_DATE = struct.Struct(">HBB")
_TIME_NAIVE = struct.Struct(">BBBIB")
_TIME_AWARE = struct.Struct(">BBBIBq")
_TIMEDELTA = struct.Struct(">iII")

# The types msgpack itself writes.  With strict_types=True it writes only
# these exact types (bool before int), and hands everything else, subclasses
# included, to our ``default`` hook.
_NATIVE_TYPES = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, list, dict}
)
_SUPPORTED = (
    "None, bool, int, float, str, bytes, list, dict, tuple, set, frozenset, "
    "datetime, date, time, timedelta, Decimal and UUID"
)

# msgpack's Timestamp extension (code -1) as msgpack writes it: fixext 4,
# fixext 8 or ext 8 of 12 bytes, each followed by the type byte 0xff.  A
# payload holding none of these byte pairs holds no Timestamp; one that does
# is decoded and searched (rarely: the bytes also occur inside strings).
_TIMESTAMP_HEADER = re.compile(rb"[\xd6\xd7]\xff|\xc7\x0c\xff")


class _Marker:
    """The first element of an array that encodes a container (see the module docs)."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"<marker {self.code}>"


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _ext(code: int, data: bytes) -> Any:
    # ExtType's own __new__ re-validates code and data on every value; ours
    # are valid by construction, and this runs once per non-native value.
    return tuple.__new__(msgpack.ExtType, (code, data))


def _offset_micros(offset: timedelta) -> int:
    return offset // _MICROSECOND


_MICROSECOND = timedelta(microseconds=1)


def _timezone(offset_micros: int) -> timezone:
    # Building a timezone costs more than the rest of decoding a datetime, and
    # a service sees a handful of offsets.  The cap keeps corrupt or hostile
    # data from growing the table.
    tzinfo = _TIMEZONES.get(offset_micros)
    if tzinfo is None:
        tzinfo = timezone(timedelta(microseconds=offset_micros))
        if len(_TIMEZONES) < 1024:
            _TIMEZONES[offset_micros] = tzinfo
    return tzinfo


_TIMEZONES: Dict[int, timezone] = {}


def _encode_bigint(value: int) -> Any:
    return _ext(
        _EXT_BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
    )


def _decode_bigint(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _encode_datetime(value: datetime) -> Any:
    offset = value.utcoffset()
    if offset is None:
        return _ext(
            _EXT_DATETIME,
            _DATETIME_NAIVE.pack(
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
                value.fold,
            ),
        )
    return _ext(
        _EXT_DATETIME,
        _DATETIME_AWARE.pack(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            value.fold,
            _offset_micros(offset),
        ),
    )


def _decode_datetime(data: bytes) -> datetime:
    if len(data) == _DATETIME_NAIVE.size:
        year, month, day, hour, minute, second, micro, fold = _DATETIME_NAIVE.unpack(
            data
        )
        return datetime(year, month, day, hour, minute, second, micro, fold=fold)
    year, month, day, hour, minute, second, micro, fold, offset = (
        _DATETIME_AWARE.unpack(data)
    )
    tzinfo = _timezone(offset)
    return datetime(year, month, day, hour, minute, second, micro, tzinfo, fold=fold)


def _encode_date(value: date) -> Any:
    return _ext(_EXT_DATE, _DATE.pack(value.year, value.month, value.day))


def _decode_date(data: bytes) -> date:
    return date(*_DATE.unpack(data))


def _encode_time(value: time) -> Any:
    offset = value.utcoffset()
    if offset is None:
        return _ext(
            _EXT_TIME,
            _TIME_NAIVE.pack(
                value.hour, value.minute, value.second, value.microsecond, value.fold
            ),
        )
    return _ext(
        _EXT_TIME,
        _TIME_AWARE.pack(
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            value.fold,
            _offset_micros(offset),
        ),
    )


def _decode_time(data: bytes) -> time:
    if len(data) == _TIME_NAIVE.size:
        hour, minute, second, micro, fold = _TIME_NAIVE.unpack(data)
        return time(hour, minute, second, micro, fold=fold)
    hour, minute, second, micro, fold, offset = _TIME_AWARE.unpack(data)
    tzinfo = _timezone(offset)
    return time(hour, minute, second, micro, tzinfo, fold=fold)


def _encode_timedelta(value: timedelta) -> Any:
    return _ext(
        _EXT_TIMEDELTA, _TIMEDELTA.pack(value.days, value.seconds, value.microseconds)
    )


def _decode_timedelta(data: bytes) -> timedelta:
    return timedelta(*_TIMEDELTA.unpack(data))


def _encode_decimal(value: decimal.Decimal) -> Any:
    return _ext(_EXT_DECIMAL, str(value).encode("ascii"))


def _decode_decimal(data: bytes) -> decimal.Decimal:
    text = data.decode("ascii")
    value = decimal.Decimal(text)
    # Under a context that does not trap InvalidOperation, Decimal() of a
    # malformed string is NaN instead of an error.  What we wrote is str() of
    # the value, so a real NaN reads back as the same text.
    if value.is_nan() and str(value) != text:
        raise DeserializationError(f"{text!r} is not a Decimal.")
    return value


def _encode_uuid(value: uuid.UUID) -> Any:
    return _ext(_EXT_UUID, value.bytes)


def _decode_uuid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise DeserializationError(f"A UUID is 16 bytes, but got {len(data)}.")
    # What UUID.__setstate__ (unpickling) does: UUID.__init__ spends most of
    # its time checking arguments that are valid by construction here.
    value = _new_object(uuid.UUID)
    _set_attribute(value, "int", _int_from_bytes(data, "big"))
    _set_attribute(value, "is_safe", uuid.SafeUUID.unknown)
    return value


_new_object = object.__new__
_set_attribute = object.__setattr__
_int_from_bytes = int.from_bytes


class MsgpackSerializer:
    """The default serializer: msgpack that gives every value back with its type.

    Round-trips, by exact type and nested in any way: ``None``, ``bool``,
    ``int`` (any size), ``float`` (also NaN, infinities and -0.0), ``str``,
    ``bytes``, ``list``, ``dict`` (keys of any supported hashable type: ints,
    tuples, ...), ``tuple``, ``set``, ``frozenset``, ``datetime``, ``date``,
    ``time``, ``timedelta``, ``Decimal`` and ``UUID``.

    >>> from datetime import date
    >>> from decimal import Decimal
    >>> serializer = MsgpackSerializer()
    >>> serializer.loads(serializer.dumps({(1, "a"): {2, 3}, 7: [Decimal("0.10")]}))
    {(1, 'a'): {2, 3}, 7: [Decimal('0.10')]}
    >>> serializer.loads(serializer.dumps((date(2024, 5, 1), 2**100)))
    (datetime.date(2024, 5, 1), 1267650600228229401496703205376)

    Edge cases, decided:

    - ``int``: ints in ``-2**63 .. 2**64 - 1`` are plain msgpack integers;
      larger ones are an extension type (code 4), so every Python int
      round-trips exactly whatever its size.
    - ``bytearray`` and ``memoryview`` are written by msgpack itself as binary
      data and come back as ``bytes``: the one deliberate change of type (a
      cached value shared by many callers is better immutable anyway).
    - An aware ``datetime`` or ``time`` comes back with a fixed-offset
      ``datetime.timezone`` of the same UTC offset: the wall-clock time, the
      offset and so the instant are kept, a zone's name and rules (zoneinfo,
      pytz) are not.  A naive one stays naive.  ``fold`` is kept.
    - Subclasses of supported types (``IntEnum``, ``OrderedDict``,
      ``defaultdict``, a ``NamedTuple``...) raise :class:`SerializationError`
      rather than come back as their base type; :meth:`register` them.
    - A ``str`` that is not valid Unicode (lone surrogates) cannot be
      encoded, nor can a value nested more than :data:`MAX_DEPTH` levels
      deep or one that contains itself, nor a ``msgpack.Timestamp`` (use
      ``datetime``).  Do not put
      ``msgpack.ExtType`` objects in values: msgpack writes them as they are.

    One instance is meant to be shared by a whole process and is safe to use
    from several threads once its types are registered.
    """

    FORMAT_VERSION: ClassVar[int] = 2
    """The first byte of every payload; ``loads`` rejects any other."""

    __slots__ = (
        "_decoders",
        "_default_hook",
        "_encoders",
        "_ext_hook",
        "_list_hook",
        "_markers",
        "_user_types",
    )

    def __init__(self) -> None:
        # Per type: how to encode it.  Scalars become an ExtType; containers
        # become the list [marker, *items] (see the module docs).
        self._encoders: Dict[type, Callable[[Any], Any]] = {
            int: _encode_bigint,
            tuple: _container_encoder(_EXT_TUPLE),
            set: _container_encoder(_EXT_SET),
            frozenset: _container_encoder(_EXT_FROZENSET),
            datetime: _encode_datetime,
            date: _encode_date,
            time: _encode_time,
            timedelta: _encode_timedelta,
            decimal.Decimal: _encode_decimal,
            uuid.UUID: _encode_uuid,
        }
        # Per scalar code: how to decode its data.
        self._decoders: Dict[int, Callable[[bytes], Any]] = {
            _EXT_BIGINT: _decode_bigint,
            _EXT_DATETIME: _decode_datetime,
            _EXT_DATE: _decode_date,
            _EXT_TIME: _decode_time,
            _EXT_TIMEDELTA: _decode_timedelta,
            _EXT_DECIMAL: _decode_decimal,
            _EXT_UUID: _decode_uuid,
        }
        # Per container code: its marker, and how to build it from its items.
        self._markers: Dict[int, Tuple[_Marker, Callable[[List[Any]], Any]]] = {
            _EXT_TUPLE: (_Marker(_EXT_TUPLE), _build_tuple),
            _EXT_SET: (_Marker(_EXT_SET), _build_set),
            _EXT_FROZENSET: (_Marker(_EXT_FROZENSET), _build_frozenset),
        }
        self._user_types: Dict[type, int] = {}
        # The hooks msgpack calls, bound once rather than on each call.
        self._default_hook: Callable[[Any], Any] = self._default
        self._ext_hook: Callable[[int, bytes], Any] = self._decode_ext
        self._list_hook: Callable[[List[Any]], Any] = self._decode_list

    def dumps(self, value: Any) -> bytes:
        """Encode *value*, prefixed by the format-version byte.

        Raises :class:`SerializationError` naming the first type it cannot
        encode, and for values ``loads`` would refuse (too deep, holding a
        ``msgpack.Timestamp``).

        >>> MsgpackSerializer().dumps((1, 2))
        b'\\x02\\x93\\xc7\\x00\\x01\\x01\\x02'
        """
        try:
            # strict_types makes msgpack hand tuples and subclasses of its
            # types to the default hook instead of writing them as their base
            # type; use_bin_type=True and datetime=False are msgpack 1.x
            # defaults.
            packed: bytes = _packb(value, default=self._default_hook, strict_types=True)
        except SerializationError:
            raise
        except UnicodeEncodeError as error:
            raise SerializationError(
                f"MsgpackSerializer cannot encode a str that is not valid "
                f"Unicode ({error}); only strs that encode to UTF-8 are supported.",
                str,
            ) from error
        except (ValueError, RecursionError) as error:
            raise _too_deep(value, error) from error
        payload = _VERSION_PREFIX + packed
        if 255 in packed and _TIMESTAMP_HEADER.search(packed):
            try:
                self.loads(payload)
            except DeserializationError as error:
                raise SerializationError(
                    f"MsgpackSerializer cannot encode this value: {error}",
                    _Timestamp,
                ) from None
        return payload

    def loads(self, data: bytes) -> Any:
        """Decode a payload written by :meth:`dumps` of a compatible serializer.

        Raises :class:`DeserializationError` for anything else.

        >>> MsgpackSerializer().loads(b"\\x02\\x93\\xc7\\x00\\x01\\x01\\x02")
        (1, 2)
        """
        if data[:1] != _VERSION_PREFIX:
            raise DeserializationError(_describe_bad_header(data))
        body = data[1:]
        try:
            value = _unpackb(
                body,
                ext_hook=self._ext_hook,
                list_hook=self._list_hook,
                strict_map_key=False,
            )
        except Exception as error:
            if _markers_made:
                _local.__dict__["markers"] = 0  # what this payload left
            if isinstance(error, DeserializationError):
                raise
            raise DeserializationError(
                f"MsgpackSerializer cannot decode this payload of {len(data)} "
                f"bytes: {type(error).__name__}: {error}. It is corrupt or "
                f"truncated, or was written with types this serializer has "
                f"not registered."
            ) from error
        # Each marker _decode_ext makes counts up and each container
        # _decode_list builds from one counts down, in this thread's count:
        # what is left are markers that did not start an array.  Until a
        # thread of the process has made one (payloads of dicts, lists and
        # scalars only), no count needs reading.
        if _markers_made:
            state = _local.__dict__
            if state.get("markers"):
                state["markers"] = 0
                raise DeserializationError(
                    "The payload holds a container marker that does not start "
                    "an array; it was not written by MsgpackSerializer."
                )
        # (255 in body: an int operand is a plain byte search; b"\xff" in
        # body would first try, and fail, to read its operand as an int.)
        if 255 in body and _TIMESTAMP_HEADER.search(body):
            _refuse_timestamps(value)
        return value

    def register(
        self,
        cls: Type[T],
        code: int,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> None:
        """Teach this serializer a type of your own, as extension *code*.

        ``encode(obj)`` returns any value this serializer can encode (a list,
        a dict, a str, other registered types...); ``decode`` gets that value
        back and rebuilds the object.  *code* is between 32 and 127 and
        becomes part of the stored format: every process sharing the cache
        must register the same type under the same code, and a process that
        has not registered it reads such entries as misses.  Only objects of
        exactly *cls* use the hook, not its subclasses.

        A dataclass:

        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Point:
        ...     x: int
        ...     y: int
        >>> serializer = MsgpackSerializer()
        >>> serializer.register(
        ...     Point, 32, lambda point: [point.x, point.y], lambda xy: Point(*xy)
        ... )
        >>> serializer.loads(serializer.dumps({"path": (Point(0, 0), Point(3, 4))}))
        {'path': (Point(x=0, y=0), Point(x=3, y=4))}

        Return the fields shallowly (as above, or ``{f.name: getattr(obj,
        f.name) for f in dataclasses.fields(obj)}``) rather than
        ``dataclasses.asdict(obj)``, which would turn nested dataclasses into
        dicts instead of letting their own hooks encode them.

        A pydantic model, through its own validation:

        >>> serializer.register(  # doctest: +SKIP
        ...     User, 33, lambda user: user.model_dump(), User.model_validate
        ... )

        An enum: ``serializer.register(Color, 34, lambda c: c.value, Color)``.

        Raises ``ValueError`` if *code* is reserved, out of range or taken, or
        if *cls* is a built-in type or is already registered.
        """
        if not isinstance(cls, type):
            raise TypeError(f"register() needs a class, but got {cls!r}.")
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"register() needs an int code, but got {code!r}.")
        if code in _RESERVED_CODES:
            raise ValueError(
                f"Extension code {code} is reserved for loadercache's built-in "
                f"types (codes 0 to 31); register {_type_name(cls)} with a code "
                f"from 32 to 127."
            )
        if code not in _USER_CODES:
            raise ValueError(
                f"Extension code {code} is out of range; register "
                f"{_type_name(cls)} with a code from 32 to 127."
            )
        if cls in _NATIVE_TYPES or (
            cls in self._encoders and cls not in self._user_types
        ):
            raise ValueError(
                f"{_type_name(cls)} is a built-in type of MsgpackSerializer and "
                f"cannot be registered again."
            )
        if cls in self._user_types:
            raise ValueError(
                f"{_type_name(cls)} is already registered with code "
                f"{self._user_types[cls]}."
            )
        if code in self._markers:
            taken_by = next(t for t, c in self._user_types.items() if c == code)
            raise ValueError(
                f"Extension code {code} is already taken by {_type_name(taken_by)}; "
                f"register {_type_name(cls)} with another code from 32 to 127."
            )

        marker_ext = _ext(code, b"")

        def encode_user(value: T) -> Any:
            return [marker_ext, encode(value)]

        def build_user(items: List[Any]) -> T:
            if len(items) != 2:
                raise DeserializationError(
                    f"A {_type_name(cls)} (extension code {code}) is one encoded "
                    f"value, but the payload holds {len(items) - 1}."
                )
            return decode(items[1])

        self._user_types[cls] = code
        self._encoders[cls] = encode_user
        self._markers[code] = (_Marker(code), build_user)

    def _default(self, value: Any) -> Any:
        # msgpack calls this for every value it does not write natively.
        encoder = self._encoders.get(type(value))
        if encoder is None:
            raise _unsupported(type(value))
        try:
            return encoder(value)
        except SerializationError:
            raise
        except Exception as error:
            raise SerializationError(
                f"MsgpackSerializer could not encode a {_type_name(type(value))}: "
                f"{type(error).__name__}: {error}",
                type(value),
            ) from error

    def _decode_ext(self, code: int, data: bytes) -> Any:
        # msgpack calls this for every extension value it reads.
        global _markers_made
        if not data:
            entry = self._markers.get(code)
            if entry is not None:
                _markers_made = True  # before the count: loads reads it after
                state = _local.__dict__
                state["markers"] = state.get("markers", 0) + 1
                return entry[0]
        decoder = self._decoders.get(code)
        if decoder is None:
            if code in self._markers:
                raise DeserializationError(
                    f"Extension code {code} is a container marker, which carries "
                    f"no data, but {len(data)} bytes follow it."
                )
            raise DeserializationError(
                f"The payload holds extension code {code}, which this "
                f"MsgpackSerializer does not know; register the same types "
                f"with the same codes in every process that shares the cache."
            )
        return decoder(data)

    def _decode_list(self, items: List[Any]) -> Any:
        # msgpack calls this for every array it reads, innermost first, so the
        # items of a container are decoded by the time it is built.
        if not items:
            return items
        marker = items[0]
        if type(marker) is not _Marker:
            return items
        state = _local.__dict__
        state["markers"] = state.get("markers", 0) - 1
        return self._markers[marker.code][1](items)


# Per thread, the markers made and not yet consumed by a container (see
# MsgpackSerializer.loads); and whether any thread has made one yet.
_local = threading.local()
_markers_made = False


def _container_encoder(code: int) -> Callable[[Any], List[Any]]:
    marker_ext = _ext(code, b"")

    def encode(value: Any) -> List[Any]:
        return [marker_ext, *value]

    return encode


def _build_tuple(items: List[Any]) -> Tuple[Any, ...]:
    return tuple(items[1:])


def _build_set(items: List[Any]) -> Any:
    return set(items[1:])


def _build_frozenset(items: List[Any]) -> Any:
    return frozenset(items[1:])


def _refuse_timestamps(value: Any) -> None:
    # Only when the payload holds the bytes of a Timestamp header (see
    # _TIMESTAMP_HEADER); an explicit stack, as the value may nest deeply.
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Timestamp:
            raise DeserializationError(
                "The payload holds a msgpack Timestamp (extension -1), which "
                "MsgpackSerializer never writes."
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)


def _too_deep(value: Any, error: BaseException) -> SerializationError:
    return SerializationError(
        f"MsgpackSerializer cannot encode this {_type_name(type(value))}: it "
        f"nests more than {MAX_DEPTH} levels deep, or contains itself "
        f"({error or type(error).__name__}).",
        type(value),
    )


_FORMAT_VERSION = MsgpackSerializer.FORMAT_VERSION
_VERSION_PREFIX = bytes([_FORMAT_VERSION])


def _unsupported(cls: type) -> SerializationError:
    name = _type_name(cls)
    return SerializationError(
        f"MsgpackSerializer cannot encode a value of type {name}. It encodes "
        f"{_SUPPORTED} by exact type (subclasses such as IntEnum, OrderedDict "
        f"or a NamedTuple would come back as their base type, so they are not "
        f"included). Convert the value, or teach the serializer the type with "
        f"serializer.register({cls.__qualname__}, code, encode, decode).",
        cls,
    )


def _describe_bad_header(data: Any) -> str:
    # Only on failure: the version check on the hot path is one comparison.
    if isinstance(data, str):
        return (
            "MsgpackSerializer.loads() needs bytes, but got a str; create the "
            "Redis client with decode_responses=False."
        )
    if not data:
        return "MsgpackSerializer.loads() got an empty payload."
    return (
        f"The payload has format version {data[0]}, but this MsgpackSerializer "
        f"reads version {MsgpackSerializer.FORMAT_VERSION}; it was written by an "
        f"incompatible version of loadercache, or is not a loadercache payload."
    )


class UnsafePickleSerializer:
    """Pickle, for values msgpack cannot hold.  UNSAFE with a shared Redis.

    ``loads`` executes arbitrary code chosen by whoever wrote the bytes: anyone
    who can write to the Redis server (any service sharing it, anyone who
    reaches its port) can run code in every process that reads the cache.  Use
    it only when every writer is trusted and the server is private to them.
    It is never a default.  Pickle protocol 5 (Python 3.8+) is used, so
    processes on different Python versions can share entries.

    >>> serializer = UnsafePickleSerializer()
    >>> serializer.loads(serializer.dumps({"id": 1, "tags": ("a", "b")}))
    {'id': 1, 'tags': ('a', 'b')}
    """

    __slots__ = ()

    def dumps(self, value: Any) -> bytes:
        """Pickle *value*, or raise :class:`SerializationError`.

        >>> UnsafePickleSerializer().dumps(None)[:2]
        b'\\x80\\x05'
        """
        try:
            return pickle.dumps(value, protocol=5)
        except Exception as error:
            raise SerializationError(
                f"UnsafePickleSerializer cannot pickle this "
                f"{_type_name(type(value))}: {type(error).__name__}: {error}",
                type(value),
            ) from error

    def loads(self, data: bytes) -> Any:
        """Unpickle *data*, running whatever code it names; see the class docs.

        >>> UnsafePickleSerializer().loads(b"\\x80\\x05N.")
        """
        try:
            return pickle.loads(data)
        except Exception as error:
            raise DeserializationError(
                f"UnsafePickleSerializer cannot unpickle this payload: "
                f"{type(error).__name__}: {error}"
            ) from error
