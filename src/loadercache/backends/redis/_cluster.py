"""A Redis Cluster (or Valkey cluster) as the store sees it: a link per node.

A :class:`ClusterLink` has the interface of :class:`~._link.Link` (``request``,
``aclose``, ``resp3``, ``server``, ``connects``), so the store, the leases and
the tiers use it unchanged.  Behind it are one auto-pipelined :class:`Link`
per node and the *slot map* (which node serves each of the 16,384 slots, from
``CLUSTER SLOTS``).

*Routing.*  A request goes to the node that serves the slot of its first key.
The store builds its requests so that this is right: a read, a lease, a
renewal touches the keys of one bucket of one namespace (one hash tag, one
slot), and a write round trip holds only the buckets one node served when it
was planned.  Requests made in one turn of the event loop for one node share
that node's write, and requests for different nodes go out at once: a batch
costs one round trip per node, in parallel.

*Redirections.*  A command whose slot has moved answers ``MOVED`` (the slot
map is read again, and the command is sent to the new owner); one whose key
has already left a slot being migrated answers ``ASK`` (sent again to the
importing node, after ``ASKING``); a multi-key command whose keys are split
by a migration, or a cluster without a quorum, answers ``TRYAGAIN`` or
``CLUSTERDOWN`` (sent again after a pause).  Only the commands that were
redirected are sent again, so a command is never run twice; after
:data:`MAX_REDIRECTS` rounds the request fails with ``RoundTripError``
(``"redirected"``), which the store treats like any failure of Redis: its
keys are loaded, never answered wrong.  The request's ``parse`` sees the
replies of the commands as if the slot had never moved.

*Failures.*  A node that cannot be reached fails the requests sent to it
(and only those) and makes the link read the slot map again: after a
failover the replica that took over serves the slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from loadercache.backends.redis._keys import key_slot
from loadercache.backends.redis._link import (
    Address,
    Command,
    Link,
    RoundTripError,
    Unusable,
)
from loadercache.backends.redis._resp import ReplyError

__all__ = ["MAX_REDIRECTS", "ClusterLink", "first_key"]

T = TypeVar("T")

#: Rounds of redirections one request may take before it fails.
MAX_REDIRECTS = 5

#: Pause before a command answered TRYAGAIN or CLUSTERDOWN is sent again (s),
#: times the round.
_PAUSE = 0.02

#: The slot map is read again at most this often (s).
_REFRESH_EVERY = 0.1

SLOTS = 16384

# Where the first key of each command the store sends is.
_KEY_AT = {
    b"GET": 1,
    b"SET": 1,
    b"MGET": 1,
    b"DEL": 1,
    b"PEXPIRE": 1,
    b"PTTL": 1,
    b"EVALSHA": 3,
    b"EVAL": 3,
}

_REDIRECTS = (b"MOVED ", b"ASK ", b"TRYAGAIN", b"CLUSTERDOWN")

Node = Tuple[str, int]


def first_key(command: Command) -> Optional[bytes]:
    """The first key *command* touches, or None (``PING``, ``CLIENT ...``).

    >>> first_key((b"EVALSHA", b"ab12", 2, b"k1", b"k2", b"arg"))
    b'k1'
    """
    name = command[0]
    at = _KEY_AT.get(name if isinstance(name, bytes) else str(name).encode())
    if at is None or len(command) <= at:
        return None
    if at == 3 and int(command[2]) == 0:
        return None  # a script without keys
    key = command[at]
    return key if isinstance(key, bytes) else str(key).encode()


def _redirect(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).encode().startswith(_REDIRECTS)


class _Routed:
    """A request on its way through the cluster: replies merged so far."""

    __slots__ = ("commands", "future", "parse", "replies", "rounds", "slot")

    def __init__(
        self,
        commands: Sequence[Command],
        parse: Callable[[List[Any]], Any],
        future: asyncio.Future[Any],
        slot: Optional[int],
    ) -> None:
        self.commands = commands
        self.parse = parse
        self.future = future
        self.slot = slot
        self.replies: Optional[List[Any]] = None
        self.rounds = 0


class _Redirected:
    """What a node answered when some of its replies are redirections."""

    __slots__ = ("replies",)

    def __init__(self, replies: List[Any]) -> None:
        self.replies = replies


class ClusterLink:
    """The nodes of one cluster, reached from *seed* (see the module docs).

    ``make_link`` makes the :class:`Link` of a node's address (the store's
    hooks: handshake, pushes, losses, are the same for every node).
    """

    def __init__(self, seed: Address, make_link: Callable[[Address], Link]) -> None:
        if seed.unix_path is not None or seed.db:
            raise ValueError(
                "a cluster is reached over TCP and has only database 0, but the "
                f"URL names {seed!r}."
            )
        self.seed = seed
        self._make_link = make_link
        self._links: Dict[Node, Link] = {}
        self._slots: List[Optional[Node]] = [None] * SLOTS
        self._mapped = False
        self._refreshing: Optional[asyncio.Task[None]] = None
        self._refreshed_at = -float("inf")
        # Requests waiting for the first slot map.
        self._unmapped: List[_Routed] = []
        self._closed = False
        self.link((seed.host, seed.port))

    def __repr__(self) -> str:
        return f"<ClusterLink {self.seed!r}, {len(self._links)} nodes>"

    # -- what the store reads ----------------------------------------------

    @property
    def resp3(self) -> bool:
        return any(link.resp3 for link in self._links.values())

    @property
    def server(self) -> Tuple[str, Tuple[int, ...]]:
        for link in self._links.values():
            if link.server[0]:
                return link.server
        return ("", ())

    @property
    def connects(self) -> int:
        return sum(link.connects for link in self._links.values())

    @property
    def connected(self) -> bool:
        return any(link.connected for link in self._links.values())

    @property
    def nodes(self) -> List[Node]:
        """The nodes that serve slots, as the slot map says now."""
        return sorted({node for node in self._slots if node is not None})

    def node_of(self, key: bytes) -> Optional[Node]:
        """The node that serves *key*'s slot now; None before the first map."""
        return self._slots[key_slot(key)]

    def link(self, node: Node) -> Link:
        """The link to *node* (made on first use)."""
        link = self._links.get(node)
        if link is None:
            address = dataclasses.replace(self.seed, host=node[0], port=node[1])
            link = self._links[node] = self._make_link(address)
        return link

    # -- requests ------------------------------------------------------------

    def request(
        self, commands: Sequence[Command], parse: Callable[[List[Any]], T]
    ) -> asyncio.Future[T]:
        """Send *commands* to the node of their first key; a future of the parse."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(RoundTripError("closed", "the store is closed"))
            return future
        slot = None
        for command in commands:
            key = first_key(command)
            if key is not None:
                slot = key_slot(key)
                break
        routed = _Routed(commands, parse, future, slot)
        if not self._mapped:
            self._unmapped.append(routed)
            self._refresh()
            return future
        self._send(routed, range(len(commands)), None, asking=False)
        return future

    async def aclose(self) -> None:
        self._closed = True
        refreshing = self._refreshing
        if refreshing is not None and not refreshing.done():
            refreshing.cancel()
        self._fail_unmapped(RoundTripError("closed", "the store is closed"))
        for link in list(self._links.values()):
            await link.aclose()

    def _send(
        self,
        routed: _Routed,
        positions: Sequence[int],
        node: Optional[Node],
        *,
        asking: bool,
    ) -> None:
        if routed.future.done():
            return
        if node is None:
            if routed.slot is not None:
                node = self._slots[routed.slot]
            if node is None:
                node = (self.seed.host, self.seed.port)
        commands = routed.commands
        # The first round sends the request as it is; later ones, the
        # commands that were redirected.
        sent = commands if routed.replies is None else [commands[i] for i in positions]
        if asking:
            sent = [c for command in sent for c in ((b"ASKING",), command)]
        inner = self.link(node).request(
            sent, functools.partial(self._check, routed, asking)
        )
        inner.add_done_callback(
            functools.partial(self._answered, routed, list(positions))
        )

    def _check(self, routed: _Routed, asking: bool, replies: List[Any]) -> Any:
        # As the replies are read: parse them at once, unless some must be
        # sent elsewhere first (and then parse them when all are in).
        if asking:
            replies = replies[1::2]
        if routed.replies is None and not any(map(_redirect, replies)):
            return routed.parse(replies)
        return _Redirected(replies)

    def _answered(
        self, routed: _Routed, positions: List[int], inner: asyncio.Future[Any]
    ) -> None:
        future = routed.future
        if future.done():
            return
        if inner.cancelled():
            future.cancel()
            return
        error = inner.exception()
        if error is not None:
            self._refresh()  # a node that fails may have been failed over
            future.set_exception(error)
            return
        result = inner.result()
        if type(result) is not _Redirected:
            future.set_result(result)
            return
        if routed.replies is None:
            routed.replies = [None] * len(routed.commands)
        merged = routed.replies
        again: Dict[Tuple[Optional[Node], bool, bool], List[int]] = {}
        for position, reply in zip(positions, result.replies):
            merged[position] = reply
            if not _redirect(reply):
                continue
            text = str(reply)
            kind, _, rest = text.partition(" ")
            if kind in ("MOVED", "ASK"):
                target = _address(rest)
                if kind == "MOVED" and target is not None:
                    self._slots[int(rest.split()[0])] = target
                    self._refresh()
                again.setdefault((target, kind == "ASK", False), []).append(position)
            else:  # TRYAGAIN, CLUSTERDOWN: wait, and ask the owner again
                again.setdefault((None, False, True), []).append(position)
        if not again:
            try:
                future.set_result(routed.parse(merged))
            except Exception as error:  # as Link: a parse that rejects them
                future.set_exception(RoundTripError("unusable", error))
            return
        routed.rounds += 1
        if routed.rounds > MAX_REDIRECTS:
            future.set_exception(
                RoundTripError(
                    "redirected",
                    f"still redirected after {MAX_REDIRECTS} rounds: "
                    f"{merged[next(iter(again.values()))[0]]}",
                )
            )
            return
        loop = asyncio.get_running_loop()
        for (node, asking, pause), again_positions in again.items():
            if pause:
                loop.call_later(
                    _PAUSE * routed.rounds,
                    functools.partial(
                        self._send, routed, again_positions, None, asking=False
                    ),
                )
            else:
                self._send(routed, again_positions, node, asking=asking)

    # -- the slot map ------------------------------------------------------

    def _refresh(self) -> None:
        """Read the slot map again (in the background, at most so often)."""
        if self._closed or (
            self._refreshing is not None and not self._refreshing.done()
        ):
            return
        now = time.monotonic()
        if self._mapped and now - self._refreshed_at < _REFRESH_EVERY:
            return
        self._refreshed_at = now
        self._refreshing = asyncio.get_running_loop().create_task(self._read_map())

    async def _read_map(self) -> None:
        # Ask the nodes we know, the seed first, until one answers.
        seed = (self.seed.host, self.seed.port)
        candidates = [seed, *(node for node in self.nodes if node != seed)]
        error: Optional[BaseException] = None
        for node in candidates:
            try:
                slots = await self.link(node).request(
                    [(b"CLUSTER", b"SLOTS")],
                    functools.partial(_parse_slots, node),
                )
            except RoundTripError as failed:
                error = failed
                continue
            self._slots = slots
            self._mapped = True
            unmapped, self._unmapped = self._unmapped, []
            for routed in unmapped:
                self._send(routed, range(len(routed.commands)), None, asking=False)
            return
        failure = (
            error
            if isinstance(error, RoundTripError)
            else RoundTripError("connect", "no node of the cluster answered")
        )
        self._fail_unmapped(failure)

    def _fail_unmapped(self, error: RoundTripError) -> None:
        unmapped, self._unmapped = self._unmapped, []
        for routed in unmapped:
            if not routed.future.done():
                routed.future.set_exception(error)


def _address(text: str) -> Optional[Node]:
    # "3999 127.0.0.1:6381" -> ("127.0.0.1", 6381)
    parts = text.split()
    if len(parts) < 2:
        return None
    host, _, port = parts[1].rpartition(":")
    try:
        return (host.strip("[]"), int(port))
    except ValueError:
        return None


def _parse_slots(asked: Node, replies: List[Any]) -> List[Optional[Node]]:
    """The slot map in a ``CLUSTER SLOTS`` reply (a node that names no host
    is the one asked)."""
    (ranges,) = replies
    if isinstance(ranges, ReplyError) or not isinstance(ranges, list):
        raise Unusable(f"CLUSTER SLOTS answered {ranges!r}")
    slots: List[Optional[Node]] = [None] * SLOTS
    for entry in ranges:
        start, end, master = entry[0], entry[1], entry[2]
        host = master[0]
        host = host.decode() if isinstance(host, bytes) else str(host)
        if not host or host == "?":
            host = asked[0]
        node = (host, int(master[1]))
        for slot in range(int(start), int(end) + 1):
            slots[slot] = node
    return slots
