"""The key encoding: injective, type-aware, equal keys share a Redis key."""

from __future__ import annotations

import math
import uuid
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadercache.backends.redis import _keys
from loadercache.backends.redis._keys import (
    check_namespace,
    namespace_base,
    redis_key,
    redis_keys,
)

BASE = namespace_base("lc", "1", "users")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.uuids(),
)
hashable_keys = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4).map(tuple) | st.frozensets(inner, max_size=4)
    ),
    max_leaves=12,
)
keys = hashable_keys.filter(lambda key: key is not None)


def same_key(a: Any, b: Any) -> bool:
    """Whether a dict would treat *a* and *b* as one key."""
    return {a: 1}.get(b) == 1


@settings(max_examples=500, deadline=None)
@given(keys, keys)
def test_redis_keys_are_equal_exactly_when_the_keys_are(a: Any, b: Any) -> None:
    assert (redis_key(BASE, a) == redis_key(BASE, b)) == same_key(a, b)


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, max_size=10))
def test_a_batch_encodes_each_key_as_one_key_alone_does(batch: List[Any]) -> None:
    assert redis_keys(BASE, batch) == [redis_key(BASE, key) for key in batch]


@pytest.mark.parametrize("namespace", ["100%", "x%%y", "%d", "%s:%b"])
def test_a_percent_in_a_namespace_changes_no_key(namespace: str) -> None:
    # Int keys were once %-formatted into the namespace's bytes.
    base = namespace_base("lc", "1", namespace)
    assert redis_keys(base, [5, "5"]) == [base + b"i:5", base + b"s:5"]
    assert redis_key(base, 5) == base + b"i:5"


@pytest.mark.parametrize(
    "key",
    [math.nan, -math.nan, (1, math.nan), frozenset({math.nan}), ((math.nan,),)],
    ids=repr,
)
def test_nan_is_refused(key: Any) -> None:
    with pytest.raises(TypeError, match="NaN"):
        redis_key(BASE, key)


@pytest.mark.parametrize(
    "key",
    [object(), (1, [2]), (1, object()), 10**5000, uuid],
    ids=["object", "tuple-with-list", "tuple-with-object", "long-int", "module"],
)
def test_keys_redis_cannot_hold(key: Any) -> None:
    with pytest.raises(TypeError, match="cache_key_fn"):
        redis_key(BASE, key)


def test_namespaces() -> None:
    assert check_namespace("tenant:7:users") == "tenant:7:users"
    with pytest.raises(ValueError):
        check_namespace("a{b}")
    with pytest.raises(TypeError):
        check_namespace(7)


# -- the C fast path (_speedups._short_keys) against the Python it stands in for

short_or_not = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["é", "\ud800", "\U0001f600", "", "s:1"]),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**66),
    st.sampled_from([2**1999, -(2**1999), 2**2000, -(2**2000), 2**2001]),
    st.booleans(),
    st.floats(allow_nan=False),
    st.binary(max_size=4),
    st.tuples(st.integers(), st.text(max_size=3)),
)


@pytest.mark.skipif(
    _keys._short_keys is _keys._short_keys_py,
    reason="the C extension is not built (or LOADERCACHE_NO_EXTENSIONS=1)",
)
@settings(max_examples=500, deadline=None)
@given(st.lists(short_or_not, max_size=10))
def test_the_c_fast_path_encodes_as_the_python_does(keys: List[Any]) -> None:
    args = (b"b:s:", b"b:i:", keys)
    assert _keys._short_keys(*args) == _keys._short_keys_py(*args)


@given(st.lists(short_or_not, max_size=10))
def test_a_batch_encodes_each_key_as_it_would_alone(keys: List[Any]) -> None:
    # (the short keys' encodings are _segment's, made in one pass)
    assert redis_keys(b"b:", keys) == [b"b:" + _keys._segment(key) for key in keys]
