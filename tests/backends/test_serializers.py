"""The serializers give back every supported value with its type, or fail loudly.

A warm cache read must hand a resolver exactly what the batch function
returned: same value, same type, all the way down.  Anything that cannot be
stored raises SerializationError; anything that cannot be read raises
DeserializationError, and nothing else escapes either.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import decimal
import doctest
import enum
import importlib.util
import math
import subprocess
import sys
import threading
import uuid
import zoneinfo
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, NamedTuple

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadercache.backends import serializers
from loadercache.backends.serializers import (
    DeserializationError,
    MsgpackSerializer,
    SerializationError,
    Serializer,
    UnsafePickleSerializer,
)

# --- deep, type-exact equality ---------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type, recursively; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        # Exact: Decimal("1.0") and Decimal("1.00") are different values here.
        return bool(a.as_tuple() == b.as_tuple())
    if isinstance(a, (datetime, time)):
        return (
            (a.tzinfo is None) == (b.tzinfo is None)
            and a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.utcoffset() == b.utcoffset()
            and a.fold == b.fold
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        # Insertion order survives the round trip, which also lets NaN keys
        # be compared.
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, (set, frozenset)):
        # `same` is an equivalence, so greedy matching is exact.
        unmatched = list(b)
        for item in a:
            match = next(
                (i for i, other in enumerate(unmatched) if same(item, other)), None
            )
            if match is None:
                return False
            del unmatched[match]
        return not unmatched
    return bool(a == b)


def roundtrip(serializer: Serializer, value: Any) -> Any:
    data = serializer.dumps(value)
    assert type(data) is bytes
    return serializer.loads(data)


@pytest.fixture(params=[MsgpackSerializer, UnsafePickleSerializer])
def serializer(request: pytest.FixtureRequest) -> Serializer:
    factory: Callable[[], Serializer] = request.param
    return factory()


# --- the contract, for every serializer -------------------------------------

PLUS_2 = timezone(timedelta(hours=2))
ODD_OFFSET = timezone(-timedelta(hours=9, minutes=30, seconds=15, microseconds=7))

SUPPORTED_VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int": 42,
    "negative int": -7,
    "int64 max": 2**63 - 1,
    "int64 min": -(2**63),
    "uint64 max": 2**64 - 1,
    "past uint64": 2**64,
    "past int64 min": -(2**63) - 1,
    "huge int": 10**400,
    "huge negative int": -(10**400) + 1,
    "float": 0.1,
    "negative zero": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "str": "héllo ☃ \U0001f600",
    "empty str": "",
    "bytes": b"\x00\xffbinary",
    "empty bytes": b"",
    "list": [1, "a", None],
    "empty list": [],
    "dict": {"a": 1, "b": [2]},
    "int keys": {1: "one", 2: "two", -3: "minus three"},
    "tuple keys": {(1, "a"): "x", (2, (3, 4)): "y", (): "empty"},
    "mixed keys": {None: 0, b"k": 1, 1.5: 2, frozenset({1}): 3, date(2024, 1, 1): 4},
    "tuple": (1, "a", None),
    "empty tuple": (),
    "nested tuples": ((1, (2, (3,))), [()], ([],)),
    "list vs tuple": [[1, 2], (1, 2), [(1, 2)], ([1, 2],)],
    "set": {1, 2, 3},
    "empty set": set(),
    "set of tuples": {(1, 2), (3, 4)},
    "frozenset": frozenset({"a", "b"}),
    "frozenset of frozensets": frozenset({frozenset({1}), frozenset()}),
    "naive datetime": datetime(2024, 2, 29, 23, 59, 58, 999_999),
    "utc datetime": datetime(2024, 2, 29, 23, 59, 58, 123_456, tzinfo=timezone.utc),
    "+02:00 datetime": datetime(2024, 5, 1, 12, 30, tzinfo=PLUS_2),
    "odd offset datetime": datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=ODD_OFFSET),
    "max datetime": datetime.max,
    "folded datetime": datetime(2024, 10, 27, 2, 30, fold=1),
    "date": date(2024, 5, 1),
    "min date": date.min,
    "naive time": time(23, 59, 59, 999_999),
    "aware time": time(8, 0, tzinfo=PLUS_2),
    "odd offset time": time(0, 0, 0, 1, tzinfo=ODD_OFFSET),
    "timedelta": timedelta(days=-3, seconds=5, microseconds=7),
    "max timedelta": timedelta.max,
    "min timedelta": timedelta.min,
    "decimal": Decimal("0.10"),
    "decimal exponent": Decimal("1.2E+1000"),
    "decimal negative zero": Decimal("-0.000"),
    "decimal long": Decimal("3.14159265358979323846264338327950288419716939937510"),
    "decimal nan": Decimal("NaN"),
    "decimal negative snan": Decimal("-sNaN123"),
    "decimal inf": Decimal("Infinity"),
    "decimal -inf": Decimal("-Infinity"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "uuid4": uuid.uuid4(),
    "everything nested": {
        "user": {
            "id": uuid.UUID(int=7),
            "balance": Decimal("12.50"),
            "seen": datetime(2024, 1, 1, tzinfo=timezone.utc),
            "tags": ("a", "b"),
            "roles": {"admin"},
        },
        (1, date(2024, 1, 1)): [timedelta(seconds=1), None, {b"raw": 2**70}],
    },
}


@pytest.mark.parametrize("value", SUPPORTED_VALUES.values(), ids=SUPPORTED_VALUES)
def test_supported_values_round_trip_with_their_type(
    serializer: Serializer, value: Any
) -> None:
    assert same(roundtrip(serializer, value), value)


def test_serializers_satisfy_the_protocol(serializer: Serializer) -> None:
    assert isinstance(serializer, Serializer)


def test_an_object_without_loads_is_not_a_serializer() -> None:
    class OnlyDumps:
        def dumps(self, value: Any) -> bytes:
            return b""

    assert not isinstance(OnlyDumps(), Serializer)


# --- MsgpackSerializer: the property ----------------------------------------

MAX_OFFSET = timedelta(hours=24) - timedelta(microseconds=1)
fixed_offsets = st.builds(
    timezone, st.timedeltas(min_value=-MAX_OFFSET, max_value=MAX_OFFSET)
)
try:
    zoneinfo.ZoneInfo("Europe/Paris")
    tzinfos = st.none() | fixed_offsets | st.timezones()
except zoneinfo.ZoneInfoNotFoundError:  # no tz database on this machine
    tzinfos = st.none() | fixed_offsets

hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text()
    | st.binary()
    | st.datetimes(timezones=tzinfos)
    | st.dates()
    | st.times(timezones=st.none() | fixed_offsets)
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.uuids()
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: (
        st.lists(inner, max_size=4).map(tuple) | st.frozensets(inner, max_size=4)
    ),
    max_leaves=8,
)
values = st.recursive(
    hashables | st.decimals(allow_nan=True),  # NaN Decimals are not all hashable
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(hashables, inner, max_size=5)
        | st.sets(hashables, max_size=5)
        | st.frozensets(hashables, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_any_nesting_of_supported_values_round_trips_exactly(value: Any) -> None:
    assert same(roundtrip(MsgpackSerializer(), value), value)


@settings(max_examples=400, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_decode_or_raise_deserialization_error(data: bytes) -> None:
    serializer = MsgpackSerializer()
    for payload in (data, bytes([MsgpackSerializer.FORMAT_VERSION]) + data):
        with contextlib.suppress(DeserializationError):
            serializer.loads(payload)


# --- MsgpackSerializer: decided edge cases ----------------------------------


def test_ints_in_the_64_bit_range_are_plain_msgpack() -> None:
    # Any msgpack reader can read them; only larger ints use an extension.
    for value in (0, -1, 2**63 - 1, -(2**63), 2**64 - 1):
        data = MsgpackSerializer().dumps(value)
        assert msgpack.unpackb(data[1:]) == value


def test_ints_of_any_size_round_trip() -> None:
    for exponent in (64, 65, 100, 1000, 10_000):
        for value in (2**exponent, -(2**exponent), 2**exponent - 1, -(2**exponent) + 1):
            assert same(roundtrip(MsgpackSerializer(), value), value)


def test_bytearray_and_memoryview_come_back_as_bytes() -> None:
    value = [bytearray(b"ab"), memoryview(b"cd")]
    assert same(roundtrip(MsgpackSerializer(), value), [b"ab", b"cd"])


def test_aware_datetime_keeps_its_offset_and_wall_clock() -> None:
    value = datetime(2024, 7, 1, 9, 15, 30, 250_001, tzinfo=PLUS_2)
    result = roundtrip(MsgpackSerializer(), value)
    assert result.utcoffset() == timedelta(hours=2)
    assert (result.hour, result.minute, result.microsecond) == (9, 15, 250_001)
    assert result == value


def test_naive_datetime_stays_naive() -> None:
    result = roundtrip(MsgpackSerializer(), datetime(2024, 7, 1, 9, 15, 30, 1))
    assert result.tzinfo is None
    assert result == datetime(2024, 7, 1, 9, 15, 30, 1)


def test_zoneinfo_datetime_comes_back_with_the_same_fixed_offset() -> None:
    try:
        paris = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database on this machine")
    for value in (
        datetime(2024, 1, 15, 12, tzinfo=paris),
        datetime(2024, 7, 15, 12, tzinfo=paris),
        datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris),
    ):
        result = roundtrip(MsgpackSerializer(), value)
        offset = value.utcoffset()
        assert offset is not None
        assert result.tzinfo == timezone(offset)
        # Not `result == value`: Python never calls a time in a fold equal to
        # one in another zone (PEP 495), so compare the instants.
        assert result.timestamp() == value.timestamp()
        assert result.replace(tzinfo=None) == value.replace(tzinfo=None)
        assert result.fold == value.fold


def test_aware_and_naive_time() -> None:
    aware = roundtrip(MsgpackSerializer(), time(6, 30, 0, 5, tzinfo=PLUS_2))
    assert aware.utcoffset() == timedelta(hours=2)
    naive = roundtrip(MsgpackSerializer(), time(6, 30, 0, 5))
    assert naive.tzinfo is None
    assert naive == time(6, 30, 0, 5)


def test_decimal_is_exact() -> None:
    text = "-1234567890.123456789012345678901234567890E-50"
    with decimal.localcontext() as context:
        context.prec = 3  # the reader's context must not round
        result = roundtrip(MsgpackSerializer(), Decimal(text))
    assert str(result) == str(Decimal(text))


def test_dict_keeps_insertion_order() -> None:
    value = {3: "c", (1,): "a", "b": "b", None: "n"}
    assert list(roundtrip(MsgpackSerializer(), value)) == [3, (1,), "b", None]


# --- MsgpackSerializer: what cannot be encoded ------------------------------


class Color(enum.IntEnum):
    RED = 1


class Row(NamedTuple):
    id: int


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        ({"nested": [1, (2, {3: object()})]}, "object"),
        ({5, Color.RED}, "Color"),
        ([Color.RED], "Color"),
        (Row(1), "Row"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (collections.defaultdict(list), "defaultdict"),
        (complex(1, 2), "complex"),
        (lambda: None, "function"),
    ],
    ids=[
        "object",
        "nested object",
        "IntEnum in a set",
        "IntEnum in a list",
        "NamedTuple",
        "OrderedDict",
        "defaultdict",
        "complex",
        "function",
    ],
)
def test_unsupported_type_raises_serialization_error_naming_it(
    value: Any, type_name: str
) -> None:
    with pytest.raises(SerializationError, match=type_name) as caught:
        MsgpackSerializer().dumps(value)
    assert isinstance(caught.value, TypeError)
    assert caught.value.value_type.__name__ == type_name
    assert "register" in str(caught.value)


def test_str_that_is_not_unicode_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="str") as caught:
        MsgpackSerializer().dumps(["\ud800"])
    assert caught.value.value_type is str


def test_value_that_contains_itself_raises_serialization_error() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(SerializationError):
        MsgpackSerializer().dumps(value)
    tupled: list[Any] = []
    tupled.append((tupled,))
    with pytest.raises(SerializationError):
        MsgpackSerializer().dumps(tupled)


def nested(depth: int, wrap: Callable[[Any], Any]) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = wrap(value)
    return value


WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "list": lambda value: [value],
    "dict": lambda value: {"k": value},
    "tuple": lambda value: (value,),
    # A set's items are hashable: a set at every level, beside the next one.
    "set": lambda value: ({1, 2}, value),
    "frozenset": lambda value: frozenset({value}),
}


@pytest.mark.parametrize("wrap", WRAPPERS.values(), ids=WRAPPERS)
def test_values_nested_200_deep_round_trip(wrap: Callable[[Any], Any]) -> None:
    # Format version 1 decoded each tuple or set through a nested msgpack
    # call, and 200 levels overflowed the C stack (SIGSEGV).
    # Compared by their encodings, which are type-exact: comparing values
    # this deep would recurse past Python's limit.
    serializer = MsgpackSerializer()
    data = serializer.dumps(nested(200, wrap))
    assert serializer.dumps(serializer.loads(data)) == data


def test_dumps_refuses_exactly_the_depths_loads_refuses() -> None:
    serializer = MsgpackSerializer()
    data = serializer.dumps(nested(serializers.MAX_DEPTH, lambda value: (value,)))
    assert serializer.dumps(serializer.loads(data)) == data
    with pytest.raises(SerializationError, match="levels deep"):
        serializer.dumps(nested(serializers.MAX_DEPTH + 1, lambda value: (value,)))
    with pytest.raises(DeserializationError):
        serializer.loads(V + b"\x91" * (serializers.MAX_DEPTH + 1) + b"\x01")


def test_a_msgpack_timestamp_is_refused_at_dumps() -> None:
    with pytest.raises(SerializationError, match="Timestamp") as caught:
        MsgpackSerializer().dumps({"at": [msgpack.Timestamp(1, 0)]})
    assert caught.value.value_type is msgpack.Timestamp


@pytest.mark.parametrize(
    "value",
    [b"\xd6\xff\x00\x00\x00\x00", "\xd7\xff", [b"\xc7\x0c\xff" * 3, -1, -1.5]],
    ids=["bytes", "str", "list"],
)
def test_bytes_that_look_like_a_timestamp_header_still_round_trip(value: Any) -> None:
    assert same(roundtrip(MsgpackSerializer(), value), value)


# --- MsgpackSerializer: what cannot be decoded ------------------------------

RICH_PAYLOAD = MsgpackSerializer().dumps(SUPPORTED_VALUES["everything nested"])


V = bytes([MsgpackSerializer.FORMAT_VERSION])
TUPLE_MARKER = msgpack.ExtType(1, b"")


def ext_payload(code: int, data: bytes) -> bytes:
    packed: bytes = msgpack.packb(msgpack.ExtType(code, data))
    return V + packed


def raw_payload(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value)
    return V + packed


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(V, id="version byte only"),
        pytest.param(V + b"\xc1", id="never-used msgpack byte"),
        pytest.param(V + b"\x92\x01", id="truncated array"),
        pytest.param(RICH_PAYLOAD[:-1], id="truncated"),
        pytest.param(RICH_PAYLOAD + b"\x00", id="trailing byte"),
        pytest.param(V + b"\x01\x02", id="two values"),
        pytest.param(b"\x03" + RICH_PAYLOAD[1:], id="next format version"),
        pytest.param(b"\x01" + RICH_PAYLOAD[1:], id="format version 1"),
        pytest.param(b"\x00" + RICH_PAYLOAD[1:], id="format version 0"),
        pytest.param(msgpack.packb([1, 2]), id="bare msgpack"),
        pytest.param(raw_payload([msgpack.ExtType(99, b"")]), id="unknown user code"),
        pytest.param(ext_payload(20, b""), id="reserved unused code"),
        pytest.param(ext_payload(1, b""), id="a marker alone"),
        pytest.param(raw_payload([1, TUPLE_MARKER]), id="a marker not first"),
        pytest.param(raw_payload({"k": TUPLE_MARKER}), id="a marker as a value"),
        pytest.param(ext_payload(1, msgpack.packb([1])), id="a marker with data"),
        pytest.param(raw_payload([msgpack.ExtType(2, b""), [1]]), id="set of a list"),
        pytest.param(ext_payload(5, b"\x07\xe8\x0d" + bytes(9)), id="month 13"),
        pytest.param(ext_payload(5, b"\x07"), id="short datetime"),
        pytest.param(ext_payload(5, b""), id="empty datetime"),
        pytest.param(ext_payload(6, b"\x07\xe8\x02\x1e"), id="30 February"),
        pytest.param(ext_payload(7, bytes(20)), id="long time"),
        pytest.param(ext_payload(8, bytes(3)), id="short timedelta"),
        pytest.param(ext_payload(9, b"12,5"), id="malformed decimal"),
        pytest.param(ext_payload(9, b"\xff"), id="non-ascii decimal"),
        pytest.param(ext_payload(10, bytes(15)), id="short uuid"),
        pytest.param(V + b"\xa2\xff\xfe", id="invalid utf-8 str"),
        pytest.param(V + b"\x81\x91\x01\x02", id="list as a map key"),
        pytest.param(raw_payload(msgpack.Timestamp(1, 2)), id="msgpack Timestamp"),
        pytest.param(
            raw_payload({"when": [msgpack.Timestamp(2**40, 5)]}), id="nested Timestamp"
        ),
        pytest.param(V + b"\x91" * 1025 + b"\x01", id="arrays 1025 deep"),
        pytest.param(V + b"\x91" * 100_000 + b"\x01", id="arrays 100000 deep"),
        pytest.param(V + b"\x92\xc7\x00\x01" * 5000 + b"\x01", id="tuples 5000 deep"),
        pytest.param(V + b"\xdd\xff\xff\xff\xff", id="an array claiming 4G items"),
        pytest.param(V + b"\xc6\xff\xff\xff\xff", id="a bin claiming 4 GB"),
    ],
)
def test_corrupt_bytes_raise_deserialization_error(data: bytes) -> None:
    with pytest.raises(DeserializationError):
        MsgpackSerializer().loads(data)


def test_a_payload_that_fails_inside_a_container_leaves_no_marker_behind() -> None:
    # The tuple's marker is made, then the payload ends before its array is
    # built; the next payloads of the thread are judged on their own.
    serializer = MsgpackSerializer()
    with pytest.raises(DeserializationError):
        serializer.loads(V + b"\x92\xc7\x00\x01")
    assert serializer.loads(serializer.dumps({"a": [1]})) == {"a": [1]}
    assert serializer.loads(serializer.dumps((1, 2))) == (1, 2)


def test_a_stray_marker_is_refused_in_any_thread() -> None:
    serializer = MsgpackSerializer()
    outcomes: list[Any] = []

    def decode() -> None:
        for data in (raw_payload([1, TUPLE_MARKER]), serializer.dumps((1, (2,)))):
            try:
                outcomes.append(serializer.loads(data))
            except DeserializationError as error:
                outcomes.append(type(error))

    thread = threading.Thread(target=decode)
    thread.start()
    thread.join(10)
    assert outcomes == [DeserializationError, (1, (2,))]


def test_a_stray_marker_is_refused_as_the_first_payload_of_a_process() -> None:
    # Before any marker is made, loads reads no count: the first one made
    # must still be seen.
    script = (
        "import msgpack\n"
        "from loadercache.backends.serializers import DeserializationError, "
        "MsgpackSerializer\n"
        "try:\n"
        "    MsgpackSerializer().loads(b'\\x02' + msgpack.packb("
        "{'k': msgpack.ExtType(1, b'')}))\n"
        "except DeserializationError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "refused", done.stderr


def test_every_truncation_of_a_payload_is_rejected() -> None:
    serializer = MsgpackSerializer()
    for end in range(len(RICH_PAYLOAD)):
        with pytest.raises(DeserializationError):
            serializer.loads(RICH_PAYLOAD[:end])


def test_wrong_version_names_both_versions() -> None:
    with pytest.raises(DeserializationError, match=r"format version 1.*version 2"):
        MsgpackSerializer().loads(b"\x01\xc0")


def test_malformed_decimal_is_rejected_even_when_the_context_does_not_trap() -> None:
    with decimal.localcontext() as context:
        context.traps[decimal.InvalidOperation] = False
        with pytest.raises(DeserializationError):
            MsgpackSerializer().loads(ext_payload(9, b"12,5"))


def test_str_instead_of_bytes_points_at_decode_responses() -> None:
    with pytest.raises(DeserializationError, match="decode_responses=False"):
        MsgpackSerializer().loads("\x01\xc0")  # type: ignore[arg-type]


def test_deserialization_error_is_a_value_error() -> None:
    assert issubclass(DeserializationError, ValueError)
    assert not issubclass(DeserializationError, SerializationError)


# --- MsgpackSerializer.register ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    created: datetime


def identity(value: Any) -> Any:
    return value


def point_serializer() -> MsgpackSerializer:
    serializer = MsgpackSerializer()
    serializer.register(Point, 32, lambda p: [p.x, p.y], lambda xy: Point(*xy))
    return serializer


def test_registered_dataclass_round_trips_anywhere_in_a_value() -> None:
    serializer = point_serializer()
    value = {Point(1, 2): [Point(3, 4)], "path": (Point(0, 0),), "set": {Point(5, 6)}}
    assert same(roundtrip(serializer, value), value)


def test_registered_types_nest_through_their_own_hooks() -> None:
    serializer = point_serializer()
    serializer.register(
        Shape,
        33,
        lambda s: {f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
        lambda fields: Shape(**fields),
    )
    value = Shape(
        "tri", [Point(0, 0), Point(1, 0)], datetime(2024, 1, 1, tzinfo=PLUS_2)
    )
    result = roundtrip(serializer, [value])
    assert result == [value]
    assert type(result[0].points[0]) is Point
    assert result[0].created.utcoffset() == timedelta(hours=2)


def test_registered_enum_round_trips() -> None:
    serializer = MsgpackSerializer()
    serializer.register(Color, 40, lambda color: color.value, Color)
    assert same(roundtrip(serializer, [Color.RED]), [Color.RED])


def test_a_reader_without_the_registration_sees_corrupt_data() -> None:
    data = point_serializer().dumps(Point(1, 2))
    with pytest.raises(DeserializationError, match="extension code 32"):
        MsgpackSerializer().loads(data)


def test_registration_is_per_instance() -> None:
    point_serializer()
    with pytest.raises(SerializationError, match="Point"):
        MsgpackSerializer().dumps(Point(1, 2))


def test_subclass_of_a_registered_type_is_not_encoded_as_its_base() -> None:
    @dataclasses.dataclass(frozen=True)
    class Point3(Point):
        z: int = 0

    with pytest.raises(SerializationError, match="Point3"):
        point_serializer().dumps(Point3(1, 2, 3))


def test_failing_user_encoder_raises_serialization_error() -> None:
    serializer = MsgpackSerializer()
    serializer.register(Point, 32, lambda p: 1 / 0, lambda xy: Point(*xy))
    with pytest.raises(SerializationError, match="Point") as caught:
        serializer.dumps(Point(1, 2))
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_failing_user_decoder_raises_deserialization_error() -> None:
    serializer = MsgpackSerializer()
    serializer.register(Point, 32, lambda p: [p.x], lambda xy: Point(*xy))
    data = serializer.dumps(Point(1, 2))
    with pytest.raises(DeserializationError):
        serializer.loads(data)


@pytest.mark.parametrize("code", [0, 1, 10, 20, 31])
def test_register_rejects_reserved_codes(code: int) -> None:
    with pytest.raises(ValueError, match=r"reserved.*32 to 127"):
        MsgpackSerializer().register(Point, code, identity, identity)


@pytest.mark.parametrize("code", [-1, -128, 128, 1000])
def test_register_rejects_codes_out_of_range(code: int) -> None:
    with pytest.raises(ValueError, match="32 to 127"):
        MsgpackSerializer().register(Point, code, identity, identity)


def test_register_rejects_a_code_already_taken() -> None:
    serializer = point_serializer()
    with pytest.raises(ValueError, match=r"already taken by .*Point"):
        serializer.register(Shape, 32, identity, identity)


def test_register_rejects_a_type_already_registered() -> None:
    serializer = point_serializer()
    with pytest.raises(ValueError, match="already registered with code 32"):
        serializer.register(Point, 33, identity, identity)


@pytest.mark.parametrize("cls", [int, str, list, dict, tuple, set, datetime, Decimal])
def test_register_rejects_built_in_types(cls: type) -> None:
    with pytest.raises(ValueError, match="built-in type"):
        MsgpackSerializer().register(cls, 50, identity, identity)


def test_register_rejects_a_bad_class_or_code() -> None:
    serializer = MsgpackSerializer()
    with pytest.raises(TypeError, match="class"):
        serializer.register(Point(1, 2), 40, identity, identity)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int code"):
        serializer.register(Point, "40", identity, identity)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int code"):
        serializer.register(Point, True, identity, identity)


# --- UnsafePickleSerializer --------------------------------------------------


def test_pickle_round_trips_what_msgpack_cannot() -> None:
    value = [Point(1, 2), collections.OrderedDict(a=1), Color.RED, bytearray(b"x")]
    assert same(roundtrip(UnsafePickleSerializer(), value), value)


def test_pickle_errors_are_the_same_two_exceptions() -> None:
    with pytest.raises(SerializationError, match="function"):
        UnsafePickleSerializer().dumps(lambda: None)
    with pytest.raises(DeserializationError):
        UnsafePickleSerializer().loads(b"\x80\x05garbage")


# --- the module --------------------------------------------------------------


def test_import_without_msgpack_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    spec = importlib.util.spec_from_file_location(
        "serializers_without_msgpack", serializers.__file__
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"pip install 'loadercache\[redis\]'"):
        spec.loader.exec_module(module)


def test_docstring_examples() -> None:
    result = doctest.testmod(serializers, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
