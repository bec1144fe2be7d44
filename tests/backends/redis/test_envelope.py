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
