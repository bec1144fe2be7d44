"""The envelope: a value opens only under the key and generation it was sealed with."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

from loadercache import MISS
from loadercache.backends.redis._envelope import (
    Envelope,
    Mismatch,
    Opened,
    TooLarge,
    lease_marker,
    new_token,
    timing,
)
from loadercache.backends.redis._resp import TOO_LARGE
from loadercache.backends.serializers import MsgpackSerializer

KEY = b"lc:3:v1:{users}:i:1"
OTHER = b"lc:3:v1:{users}:i:2"


def open_one(envelope: Envelope, token: Any, key: bytes, raw: Any) -> Any:
    opened = Opened()
    (value,) = envelope.open_all(token, [key], [raw], opened, MISS)
    return value, opened


def test_a_value_opens_under_its_key_and_generation() -> None:
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    raw = envelope.seal(token, KEY, envelope.dumps({"id": 1}))
    assert open_one(envelope, token, KEY, raw)[0] == {"id": 1}
    # Another generation: cleared, a miss, and no error.
    value, opened = open_one(envelope, new_token(), KEY, raw)
    assert value is MISS and opened.errors == 0
    # No generation at all: a miss.
    assert open_one(envelope, None, KEY, raw)[0] is MISS


def test_a_value_read_under_another_key_is_refused() -> None:
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    raw = envelope.seal(token, KEY, envelope.dumps("one"))
    with pytest.raises(Mismatch):
        open_one(envelope, token, OTHER, raw)
    with pytest.raises(Mismatch):
        envelope.open_generation(OTHER, envelope.generation(KEY, token))


@pytest.mark.parametrize(
    "corrupt",
    [b"", b"garbage", b"L" + b"\x00" * 5, TOO_LARGE],
    ids=["empty", "garbage", "short", "too-large"],
)
def test_what_does_not_open_is_a_counted_miss(corrupt: Any) -> None:
    envelope = Envelope(MsgpackSerializer())
    value, opened = open_one(envelope, new_token(), KEY, corrupt)
    assert value is MISS and opened.errors == 1


def test_a_payload_that_does_not_decode_is_a_counted_miss() -> None:
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    value, opened = open_one(
        envelope, token, KEY, envelope.seal(token, KEY, b"\x02\xc1")
    )
    assert value is MISS and opened.corrupt == 1


def test_a_signed_value_opens_only_with_its_secret() -> None:
    signed = Envelope(MsgpackSerializer(), secret=b"s" * 32)
    token = new_token()
    raw = signed.seal(token, KEY, signed.dumps([1, 2]))
    assert open_one(signed, token, KEY, raw)[0] == [1, 2]
    other = Envelope(MsgpackSerializer(), secret=b"t" * 32)
    value, opened = open_one(other, token, KEY, raw)
    assert value is MISS and opened.forged == 1
    # Written without the secret, or altered: a miss.
    unsigned = Envelope(MsgpackSerializer()).seal(token, KEY, signed.dumps([1, 2]))
    assert open_one(signed, token, KEY, unsigned + b"\x00" * 16)[1].forged == 1
    tampered: List[int] = list(raw)
    tampered[-1] ^= 1
    assert open_one(signed, token, KEY, bytes(tampered))[1].forged == 1


def test_values_past_the_limit_are_not_sealed() -> None:
    envelope = Envelope(MsgpackSerializer(), max_bytes=100)
    with pytest.raises(TooLarge):
        envelope.seal(new_token(), KEY, b"x" * 100)
    assert envelope.seal(new_token(), KEY, b"x" * (100 - envelope.overhead))


def test_generations() -> None:
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    assert envelope.open_generation(KEY, envelope.generation(KEY, token)) == (
        token,
        True,
    )
    assert envelope.open_generation(KEY, None) == (None, True)
    assert envelope.open_generation(KEY, b"16 hex digits!!!") == (None, False)


def test_a_timed_value_opens_with_its_timing() -> None:
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    raw = envelope.seal(token, KEY, envelope.dumps("one"), timing(1234, 56))
    assert raw[:1] == b"M"
    plain = envelope.seal(token, OTHER, envelope.dumps("two"))
    timings: Dict[int, Tuple[int, int]] = {}
    opened = Opened()
    values = envelope.open_all(
        token, [OTHER, KEY], [plain, raw], opened, MISS, timings=timings
    )
    assert values == ["two", "one"] and timings == {1: (1234, 56)}
    # Another generation: a miss, as for an untimed value.
    assert open_one(envelope, new_token(), KEY, raw)[0] is MISS


def test_the_timing_is_signed_with_the_value() -> None:
    envelope = Envelope(MsgpackSerializer(), secret=b"s" * 16)
    token = new_token()
    raw = envelope.seal(token, KEY, envelope.dumps("one"), timing(1234, 56))
    assert open_one(envelope, token, KEY, raw)[0] == "one"
    # Pushing its stale time out is forging it.
    at = 1 + 8 + 4 + 16
    forged = raw[:at] + timing(10**12, 56)[:8] + raw[at + 8 :]
    value, opened = open_one(envelope, token, KEY, forged)
    assert value is MISS and opened.forged == 1


def test_a_timed_value_too_short_for_its_timing_is_corrupt() -> None:
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    raw = envelope.seal(token, KEY, b"", timing(1, 1))
    value, opened = open_one(envelope, token, KEY, raw[:-3])
    assert value is MISS and opened.corrupt == 1


def test_timing_clamps_what_it_cannot_hold() -> None:
    assert timing(-5, -1) == timing(0, 0)
    assert timing(0, 1 << 40)[8:] == b"\xff" * 4


# -- the C fast path (_speedups._open_plain) against the Python it stands in for


def _refusing_loads(payload: bytes) -> Any:
    # A serializer that refuses some payloads: those open_all opens itself.
    if payload.endswith(b"!"):
        raise ValueError("refused")
    return ("decoded", payload)


def _raws(token: bytes, keys: List[bytes]) -> Any:
    from hypothesis import strategies as st

    envelope = Envelope(MsgpackSerializer())
    sealed = st.builds(
        lambda i, payload, meta: envelope.seal(
            token, keys[i % len(keys)], payload, meta
        ),
        st.integers(0, 10),
        st.binary(max_size=12).map(lambda b: b + st_tail(b)),
        st.sampled_from([b"", timing(1, 2)]),
    )
    return st.one_of(
        st.none(),
        sealed,
        sealed.map(lambda raw: raw[: len(raw) // 2]),  # cut short
        sealed.map(lambda raw: raw[:1] + new_token() + raw[9:]),  # other generation
        st.binary(max_size=30),
        st.sampled_from([TOO_LARGE, 7, "L", bytearray(b"L")]),
    )


def st_tail(payload: bytes) -> bytes:
    return b"!" if len(payload) % 3 == 0 else b""


@pytest.mark.skipif(
    __import__("loadercache.backends.redis._envelope", fromlist=["x"])._open_plain
    is __import__(
        "loadercache.backends.redis._envelope", fromlist=["x"]
    )._open_plain_py,
    reason="the C extension is not built (or LOADERCACHE_NO_EXTENSIONS=1)",
)
def test_the_c_fast_path_opens_as_the_python_does() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from loadercache.backends.redis import _envelope

    token = new_token()
    keys = [b"lc:3:v1:{users}:i:%d" % i for i in range(3)]
    later = object()

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(st.integers(0, 5), max_size=8).map(
            lambda picks: [keys[p % 3] if p < 5 else b"" for p in picks]
        ),
        st.lists(_raws(token, keys), max_size=8),
        st.sampled_from([None, _refusing_loads]),
        st.sampled_from([14, 13, 20]),
    )
    def compare(rkeys: List[bytes], raws: List[Any], loads: Any, header: int) -> None:
        args = (b"L" + token, header, rkeys, raws, loads, MISS, later)
        assert _envelope._open_plain(*args) == _envelope._open_plain_py(*args)

    compare()


@pytest.mark.parametrize("fast", [True, False], ids=["c", "python"])
def test_open_all_gives_the_same_answer_with_either_fast_path(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadercache.backends.redis import _envelope

    if not fast:
        monkeypatch.setattr(_envelope, "_open_plain", _envelope._open_plain_py)
    envelope = Envelope(MsgpackSerializer())
    token = new_token()
    keys = [b"lc:3:v1:{users}:i:%d" % i for i in range(6)]
    raws: List[Any] = [
        envelope.seal(token, keys[0], envelope.dumps({"id": 0})),
        None,
        envelope.seal(token, keys[2], envelope.dumps(2), timing(5, 6)),
        b"L" + token + b"\x00",  # this generation, too short
        envelope.seal(token, keys[4], b"\x02\xc1"),  # does not decode
        envelope.seal(new_token(), keys[5], envelope.dumps(5)),  # cleared
    ]
    opened = Opened()
    timings: Dict[int, Tuple[int, int]] = {}
    values = envelope.open_all(token, keys, raws, opened, MISS, timings=timings)
    assert values == [{"id": 0}, MISS, 2, MISS, MISS, MISS]
    assert (opened.corrupt, opened.forged, opened.too_large) == (2, 0, 0)
    assert timings == {2: (5, 6)}
    assert opened.unanswered == 4
    # What a read that found every key (or none) counts, on either path.
    lease = lease_marker(token, b"holder..", 1)
    for found, unanswered in ([raws[0], raws[2]], 0), ([None, lease, raws[5]], 3):
        envelope.open_all(token, [keys[0], keys[2], keys[5]], found, opened, MISS)
        assert opened.unanswered == unanswered
    # A plain value bound to another key is refused whole, on either path.
    with pytest.raises(Mismatch):
        envelope.open_all(token, keys[1:2], raws[:1], Opened(), MISS)


def test_a_serializer_interrupted_in_the_fast_path_is_not_swallowed() -> None:
    class Interrupting(MsgpackSerializer):
        def loads(self, data: bytes) -> Any:
            raise KeyboardInterrupt

    envelope = Envelope(Interrupting())
    token = new_token()
    raw = envelope.seal(token, KEY, envelope.dumps(1))
    with pytest.raises(KeyboardInterrupt):
        envelope.open_all(token, [KEY], [raw], Opened(), MISS)
