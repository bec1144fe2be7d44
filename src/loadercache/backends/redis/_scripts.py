"""The Lua scripts behind leases, and how to call them.

Each script touches the keys of one namespace only (one hash tag, so one
cluster slot), and works on Redis 7.0 and Valkey alike.  They are called with
``EVALSHA``; a server that does not know a script answers ``NOSCRIPT`` and the
call is sent again with ``EVAL`` (see :meth:`Script.command` and
:func:`is_noscript`).

The formats they read (see :mod:`loadercache.backends.redis._envelope`): a
value is ``"L" | token (8) | ...`` (``"M"`` for a timed one), a lease
``"?" | token (8) | holder (8) | nonce (4)``, a generation ``"G" | token (8) |
crc (4)``.  A value or a lease
whose token is not the namespace's current generation belongs to a
generation that was cleared: it is free to lease.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence, Tuple

from loadercache.backends.redis._resp import ReplyError

__all__ = ["ACQUIRE", "FENCED_SET", "RELEASE", "RENEW", "Script", "is_noscript"]


class Script:
    """A Lua script, called by its SHA-1 (``EVALSHA``) or its source (``EVAL``)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.strip()
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()

    def command(
        self, keys: Sequence[bytes], args: Sequence[Any], *, by_source: bool = False
    ) -> Tuple[Any, ...]:
        """The command that runs the script on *keys* with *args*."""
        if by_source:
            return (b"EVAL", self.source, len(keys), *keys, *args)
        return (b"EVALSHA", self.sha, len(keys), *keys, *args)


def is_noscript(reply: Any) -> bool:
    """Whether *reply* says the server does not have the script."""
    return isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"


#: Lease every key of KEYS[2..] that is free, in one atomic step.
#:
#: KEYS[1] is the namespace's generation key; when it holds no generation
#: (or something else), ARGV[1] becomes it, with expiry ARGV[2] ms ("" for
#: none).  A key is free when it is absent, or holds a value or a lease of
#: another generation; a free key gets the lease "?" .. token .. ARGV[3]
#: (the holder and a nonce) with expiry ARGV[4] ms.  The reply: the
#: generation, then per key 1 (leased now) or what the key holds (a value of
#: this generation, or another holder's lease of it).
ACQUIRE = Script(
    """
local gen = redis.call('GET', KEYS[1])
if not gen or #gen ~= 13 or string.sub(gen, 1, 1) ~= 'G' then
  gen = ARGV[1]
  if ARGV[2] == '' then
    redis.call('SET', KEYS[1], gen)
  else
    redis.call('SET', KEYS[1], gen, 'PX', ARGV[2])
  end
end
local token = string.sub(gen, 2, 9)
local lease = '?' .. token .. ARGV[3]
local out = {gen}
for i = 2, #KEYS do
  local held = redis.call('GET', KEYS[i])
  local kind = held and string.sub(held, 1, 1)
  local known = kind == 'L' or kind == 'M' or kind == '?'
  if not held or not known or string.sub(held, 2, 9) ~= token then
    redis.call('SET', KEYS[i], lease, 'PX', ARGV[4])
    out[i] = 1
  else
    out[i] = held
  end
end
return out
"""
)

#: For each key, store a value only if the key still holds the lease given:
#: ARGV holds (lease, value, expiry ms or "") for each key of KEYS.  The
#: reply is 1 (stored) or 0 (the lease was gone: cleared, primed, expired)
#: per key.  Where the server has ``SET ... IFEQ`` (Valkey 8.1, Redis 8.4)
#: the store sends that instead.
FENCED_SET = Script(
    """
local out = {}
for i = 1, #KEYS do
  local at = (i - 1) * 3
  if redis.call('GET', KEYS[i]) == ARGV[at + 1] then
    if ARGV[at + 3] == '' then
      redis.call('SET', KEYS[i], ARGV[at + 2])
    else
      redis.call('SET', KEYS[i], ARGV[at + 2], 'PX', ARGV[at + 3])
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
)

#: Delete each key of KEYS that still holds its lease ARGV[i]: a batch that
#: failed frees its keys at once.  Reply: the number deleted.
RELEASE = Script(
    """
local deleted = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    deleted = deleted + 1
  end
end
return deleted
"""
)

#: Extend to ARGV[1] ms each lease of KEYS that still holds ARGV[i + 1]: a
#: slow batch function keeps its keys.  Reply: how many were extended.
RENEW = Script(
    """
local renewed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    renewed = renewed + 1
  end
end
return renewed
"""
)
