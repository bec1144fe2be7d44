"""The Redis key of every cached value: scheme, namespaces, and key encoding.

Key scheme (version 3)
----------------------
A value lives at ``<prefix>:3:v<version>:{<namespace>}:<encoded key>``, e.g.
``lc:3:v1:{users}:i:42`` or ``lc:3:v1:{tenant:7:users}:s:alice``, and the
namespace's generation (see :mod:`loadercache.backends.redis._namespace`) at
``...:{<namespace>}:gen``.  ``3`` is the version of this scheme and of the
value envelope: a deploy of a loadercache that writes another layout reads
and writes other keys, so old and new deploys never read each other's
values.  ``<version>`` is the user's (``RedisStore(version=...)``): bump it
when the shape of the cached values changes.  The namespace is in braces, the
Redis Cluster *hash tag*: on one server, every key of a namespace lives in one
slot, so one ``MGET`` serves a whole batch.

On a cluster a namespace is *spread* over ``buckets`` hash tags, so that its
keys (and its load) spread over every node: a key lives at
``<prefix>:3:v<version>:b<buckets>:{<bucket>.<salt>:<namespace>}:<encoded
key>``, with ``<bucket>`` the CRC-32 of the encoded key modulo ``buckets``
and ``<salt>`` what spreads the buckets' slots evenly (see
:func:`bucket_tag`).  Each
bucket is a namespace of its own to the store (its own generation, leases and
fenced writes, all in one slot); ``clear_all`` gives every bucket a new
generation.  The bucket count is part of the prefix, so stores that spread a
namespace differently never share (or miss each other's clears of) a key.
The bucket comes first in the tag: a namespace may hold ``:``, a bucket and a
salt never do, so no two (bucket, namespace) pairs give one tag.

Key encoding
------------
The encoding of a cache key is injective and type-aware: ``1``, ``"1"``,
``b"1"``, ``(1,)`` and ``frozenset({1})`` are five different Redis keys
(``s:`` for str, ``i:`` for int, ``f:`` for a non-integral float, ``b:`` for
bytes, ``u:`` for a UUID, ``t:`` and ``z:`` for tuples and frozensets, whose
items are length-prefixed).  Keys that are *equal in Python* share a Redis
key: ``True``, ``1`` and ``1.0`` are one key, as they are one key of the
local dict, so the answer never depends on which tier gave it.  NaN is
refused: ``float("nan") != float("nan")``, so each NaN is a key of its own to
a dict, while any encoding would give them one Redis key.  A cache key of any
other type (or an int of more digits than ``sys.get_int_max_str_digits()``)
raises ``TypeError``; map it with ``cache_key_fn=``.
"""

from __future__ import annotations

import binascii
import functools
import math
import uuid
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from loadercache._repr import short_repr
from loadercache.loader import _speedups

__all__ = [
    "SCHEME",
    "bucket_of",
    "bucket_tag",
    "check_namespace",
    "check_prefix",
    "check_version",
    "key_slot",
    "namespace_base",
    "redis_key",
    "redis_keys",
    "short_repr",
    "store_prefix",
]

#: The version of the key scheme and of the value envelope.
SCHEME = "3"

# An int this short is written in decimal under any int_max_str_digits (at
# least 640 digits): a key needs no encoding to know it can be stored.
SHORT_INT_BITS = 2000
#: The short ints are those strictly between these two.
SHORT_INT_LOW = -(1 << SHORT_INT_BITS)
SHORT_INT_HIGH = 1 << SHORT_INT_BITS


def check_namespace(namespace: object) -> str:
    """Return *namespace* if it can name a namespace; raise otherwise.

    >>> check_namespace("tenant:7:users")
    'tenant:7:users'
    """
    if not isinstance(namespace, str):
        raise TypeError(
            f"namespace must be a str such as 'users' or 'tenant:42:users', but "
            f"got {short_repr(namespace)}."
        )
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(
            f"namespace must be a non-empty str without braces (it becomes the "
            f"Redis hash tag {{namespace}}), but got {namespace!r}."
        )
    return namespace


def check_prefix(prefix: object) -> str:
    """Return *prefix* if it can start every key; raise otherwise."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'lc', but got {prefix!r}.")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(
            f"prefix must be a non-empty str without braces, but got {prefix!r}."
        )
    return prefix


def check_version(version: object) -> str:
    """Return *version* if it can be a key segment; raise otherwise."""
    if not isinstance(version, str):
        raise TypeError(f"version must be a str such as '1', but got {version!r}.")
    if not version or any(char in version for char in ":{}"):
        raise ValueError(
            "version must be a non-empty str without ':' or braces, such as "
            f"'1' or '2024-05', but got {version!r}."
        )
    return version


def store_prefix(prefix: str, version: str, buckets: int = 1) -> bytes:
    """The first bytes of every key of a store, whatever the namespace.

    >>> store_prefix("lc", "1")
    b'lc:3:v1:'
    >>> store_prefix("lc", "1", buckets=64)
    b'lc:3:v1:b64:'
    """
    spread = f"b{buckets}:" if buckets > 1 else ""
    return f"{prefix}:{SCHEME}:v{version}:{spread}".encode("utf-8", "surrogatepass")


def namespace_base(
    prefix: str,
    version: str,
    namespace: str,
    bucket: Optional[int] = None,
    buckets: int = 1,
) -> bytes:
    """The first bytes of every key of *namespace* (or of its *bucket* of
    *buckets*), up to the encoded key.

    >>> namespace_base("lc", "1", "users")
    b'lc:3:v1:{users}:'
    >>> namespace_base("lc", "1", "users", bucket=5, buckets=16)
    b'lc:3:v1:b16:{5.19:users}:'
    """
    tag = namespace if bucket is None else bucket_tag(namespace, bucket, buckets)
    return store_prefix(prefix, version, buckets) + f"{{{tag}}}:".encode(
        "utf-8", "surrogatepass"
    )


@functools.lru_cache(maxsize=16384)
def bucket_tag(namespace: str, bucket: int, buckets: int) -> str:
    """The hash tag of *bucket* of *namespace*: ``<bucket>.<salt>:<namespace>``.

    The salt is the first that puts the tag's slot in the bucket's own
    1/*buckets* of the 16,384 slots, so the buckets of every namespace cover
    the slots evenly, and every node of a cluster whose nodes serve even
    ranges of slots serves an even share of them (CRC16 alone leaves a node
    with a tenth of a namespace for one name in twenty).  The search costs
    about *buckets* CRCs per bucket, so tags are remembered (a service with
    many tenants' namespaces makes them again and again).

    >>> bucket_tag("users", 0, 16)
    '0.61:users'
    """
    encoded = namespace.encode("utf-8", "surrogatepass")
    for salt in range(1000 * buckets):
        tag = b"%d.%d:%s" % (bucket, salt, encoded)
        if key_slot(b"{" + tag + b"}") * buckets // 16384 == bucket:
            return tag.decode("utf-8", "surrogatepass")
    raise AssertionError("no salt found")  # CRC16 reaches every slot


def bucket_of(segment: bytes, buckets: int) -> int:
    """The bucket of the key whose encoding (after the base) is *segment*.

    Stable across processes and Python versions (no ``hash()``).

    >>> bucket_of(b"i:42", 64)
    36
    """
    return binascii.crc32(segment) % buckets


def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of *key*: CRC16 (XModem) of its hash tag, or
    of the whole key when it has none, modulo 16384.

    >>> key_slot(b"lc:3:v1:{users}:i:42") == key_slot(b"{users}")
    True
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % 16384


def redis_keys(
    base: bytes,
    keys: Sequence[Hashable],
    encoded: Optional[Dict[Hashable, bytes]] = None,
) -> List[bytes]:
    """The Redis keys of *keys* in the namespace whose keys start with *base*.

    *encoded* holds keys encoded already (by a cache map's ``set``); they are
    taken from it.  Raises ``TypeError`` for a key that cannot be stored.

    >>> redis_keys(b"lc:3:v1:{users}:", [42, "ada", (1, "a")])
    [b'lc:3:v1:{users}:i:42', b'lc:3:v1:{users}:s:ada', b'lc:3:v1:{users}:t:i1;s1:a']
    """
    # The encodings of str and int, the keys of nearly every loader, made in
    # one pass (_short_keys); every other type goes through _segment.
    rkeys, others = _short_keys(
        base + b"s:", base + b"i:", keys if type(keys) is list else list(keys)
    )
    if others:
        for i, rkey in enumerate(rkeys):
            if rkey is None:
                key = keys[i]
                rkey = encoded.pop(key, None) if encoded else None
                rkeys[i] = rkey if rkey is not None else base + _segment(key)
    return rkeys  # type: ignore[return-value]


def _short_keys_py(
    str_base: bytes, int_base: bytes, keys: List[Hashable]
) -> Tuple[List[Optional[bytes]], int]:
    """The Redis keys of the str and short int *keys*, None for the others.

    Returns them and how many are None.  ``_speedups._short_keys`` is this,
    line for line.
    """
    rkeys: List[Optional[bytes]] = []
    append = rkeys.append
    others = 0
    for key in keys:
        cls = type(key)
        if cls is str:
            append(str_base + str.encode(key, "utf-8", "surrogatepass"))  # type: ignore[arg-type]
        elif cls is int and key.bit_length() <= SHORT_INT_BITS:  # type: ignore[attr-defined]
            append(int_base + b"%d" % key)  # type: ignore[str-format]
        else:
            append(None)
            others += 1
    return rkeys, others


_short_keys: Callable[
    [bytes, bytes, List[Hashable]], Tuple[List[Optional[bytes]], int]
] = _short_keys_py if _speedups is None else _speedups._short_keys


def redis_key(base: bytes, key: Hashable) -> bytes:
    """The Redis key of one *key* (see :func:`redis_keys`).

    >>> redis_key(b"lc:3:v1:{users}:", True)
    b'lc:3:v1:{users}:i:1'
    """
    return redis_keys(base, (key,))[0]


def _digits(value: int) -> bytes:
    try:
        return b"%d" % value
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        raise _unencodable(
            value, "it is an int too large to write in decimal"
        ) from None


def _float(value: float, int_tag: bytes, float_tag: bytes, end: bytes) -> bytes:
    # 1.0 == 1 in Python, and so in the local dict: give them one Redis key.
    if value.is_integer():
        return int_tag + _digits(int(value)) + end
    if math.isnan(value):
        raise _unencodable(
            value,
            "NaN is not equal to itself, so every NaN is a different key to the "
            "local dict, while Redis would give them one",
        )
    return float_tag + float.__repr__(value).encode("ascii") + end


def _item(item: Any) -> bytes:
    # A prefix-free code for an item of a tuple or frozenset, so that the
    # concatenation of the items' codes decodes in exactly one way.
    if item is None:
        return b"n"
    if isinstance(item, str):
        data = str.encode(item, "utf-8", "surrogatepass")
        return b"s%d:%s" % (len(data), data)
    if isinstance(item, bytes):
        return b"b%d:%s" % (len(item), item)
    if isinstance(item, int):
        return b"i" + _digits(item) + b";"
    if isinstance(item, float):
        return _float(item, b"i", b"f", b";")
    if isinstance(item, tuple):
        return b"t%d:" % len(item) + b"".join(map(_item, item))
    if isinstance(item, frozenset):
        return b"z%d:" % len(item) + b"".join(sorted(map(_item, item)))
    if isinstance(item, uuid.UUID):
        return b"u" + item.hex.encode("ascii")
    raise _unencodable(item, f"it holds a {type(item).__name__}")


def _segment(key: Any) -> bytes:
    """The last segment of the Redis key of *key*; TypeError if there is none."""
    try:
        if isinstance(key, str):
            return b"s:" + str.encode(key, "utf-8", "surrogatepass")
        if isinstance(key, int):  # bool too: True == 1
            return b"i:" + _digits(key)
        if isinstance(key, bytes):
            return b"b:" + key
        if isinstance(key, float):
            return _float(key, b"i:", b"f:", b"")
        if isinstance(key, tuple):
            return b"t:" + b"".join(map(_item, key))
        if isinstance(key, frozenset):
            return b"z:" + b"".join(sorted(map(_item, key)))
        if isinstance(key, uuid.UUID):
            return b"u:" + key.hex.encode("ascii")
    except RecursionError:
        raise _unencodable(key, "it is nested too deeply") from None
    raise _unencodable(key, f"it is a {type(key).__name__}")


def _unencodable(key: Any, why: str) -> TypeError:
    return TypeError(
        f"cache key {short_repr(key)} cannot be stored in Redis: {why}. "
        "RedisCacheMap stores keys that are str, int, float (not NaN), bool, "
        "bytes, uuid.UUID, or tuples and frozensets of those (None allowed "
        "inside); pass cache_key_fn= to map the key to one, e.g. "
        "cache_key_fn=lambda key: (key.tenant_id, key.id)."
    )
