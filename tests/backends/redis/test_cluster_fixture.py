"""The LocalCluster fixture, checked with redis-py's own cluster client.

Tests that rely on the fixture to fail over, kill or reshard need to know it
does what it says; these tests check it from outside, with redis-py's
synchronous ``RedisCluster`` and raw clients on single nodes, against Redis
7.0 and Valkey 9.
"""

from __future__ import annotations

from typing import Dict, Iterator, List

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from ...redis_cluster import SLOTS, LocalCluster
from ...redis_servers import RedisServer


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = fresh_client(cluster)
    try:
        yield client
    finally:
        client.close()


def fresh_client(cluster: LocalCluster) -> RedisCluster:
    """A cluster client that learns the topology now, from the live nodes."""
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return RedisCluster(startup_nodes=nodes, decode_responses=False)


def keys_on(cluster: LocalCluster, master: RedisServer, n: int) -> Dict[bytes, bytes]:
    """*n* keys (with their values) whose slots *master* serves."""
    ranges = cluster.slots_of(master)
    found: Dict[bytes, bytes] = {}
    for index in range(100 * n):  # a master serves a third of the slots
        key = b"key:%d" % index
        if any(cluster.slot_of(key) in slots for slots in ranges):
            found[key] = b"value:%d" % index
            if len(found) == n:
                return found
    raise AssertionError(f"fewer than {n} keys of {100 * n} fall on {master!r}")


def write_replicated(master: RedisServer, values: Dict[bytes, bytes]) -> None:
    """SET *values* on *master* and wait until its replica has them.

    WAIT counts the replicas that acknowledged this connection's writes, so
    the SETs and the WAIT go down one connection, in one pipeline.
    """
    with master.client() as raw:
        pipe = raw.pipeline(transaction=False)
        for key, value in values.items():
            pipe.set(key, value)
        pipe.execute_command("WAIT", 1, 1000)
        assert pipe.execute()[-1] == 1


def test_the_cluster_forms_with_three_masters_of_a_third_of_the_slots_each(
    cluster: LocalCluster, client: RedisCluster
) -> None:
    masters = cluster.masters()
    assert len(masters) == 3 and len(cluster.replicas()) == 3
    assert {cluster.replica_of(master).port for master in masters} == {
        node.port for node in cluster.replicas()
    }
    sizes = [sum(map(len, cluster.slots_of(master))) for master in masters]
    assert sum(sizes) == SLOTS and max(sizes) - min(sizes) <= 1
    # redis-py sees the same shape.
    assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3


def test_a_key_lands_on_the_master_of_its_slot(
    cluster: LocalCluster, client: RedisCluster
) -> None:
    values = {b"key:%d" % index: b"value:%d" % index for index in range(30)}
    client.mset_nonatomic(values)
    for key, value in values.items():
        slot = cluster.slot_of(key)
        assert slot == client.keyslot(key)
        with cluster.master_of_slot(slot).client() as raw:
            assert raw.get(key) == value


def test_failover_swaps_master_and_replica_and_keeps_the_data(
    cluster: LocalCluster, client: RedisCluster
) -> None:
    master = cluster.masters()[0]
    replica = cluster.replica_of(master)
    values = keys_on(cluster, master, 10)
    client.mset_nonatomic(values)
    cluster.failover(replica)
    assert replica in cluster.masters() and master in cluster.replicas()
    assert cluster.replica_of(replica) is master
    slot = cluster.slot_of(next(iter(values)))
    assert cluster.master_of_slot(slot) is replica
    # The old client follows the MOVED; a new one asks the new topology.
    assert client.mget_nonatomic(list(values)) == list(values.values())
    with fresh_client(cluster) as again:
        assert again.mget_nonatomic(list(values)) == list(values.values())


def test_a_killed_master_is_replaced_by_its_replica_which_has_its_keys(
    cluster: LocalCluster,
) -> None:
    master = cluster.masters()[1]
    replica = cluster.replica_of(master)
    values = keys_on(cluster, master, 10)
    write_replicated(master, values)
    cluster.kill(master)
    assert cluster.wait_promoted(master) is replica
    assert master not in cluster.live() and replica in cluster.masters()
    assert cluster.master_of_slot(cluster.slot_of(next(iter(values)))) is replica
    with fresh_client(cluster) as client:
        assert client.mget_nonatomic(list(values)) == list(values.values())


def test_a_migration_half_way_splits_the_keys_and_finishing_moves_the_slot(
    cluster: LocalCluster, client: RedisCluster
) -> None:
    # One hash tag: every key in one slot.
    values = {b"{moving}:%d" % index: b"value:%d" % index for index in range(10)}
    client.mset_nonatomic(values)
    slot = cluster.slot_of(b"{moving}")
    source = cluster.master_of_slot(slot)
    target = next(node for node in cluster.masters() if node is not source)

    moved = cluster.begin_migration(slot, source, target, keys=4)
    stayed: List[bytes] = [key for key in values if key not in moved]
    assert len(moved) == 4 and len(stayed) == 6
    assert cluster.master_of_slot(slot) is source
    with source.client() as raw:
        assert [raw.get(key) for key in stayed] == [values[key] for key in stayed]
        with pytest.raises(redis.exceptions.AskError) as asked:
            raw.get(moved[0])
        # redis-py strips the "ASK" of the reply: "<slot> <host>:<port>" is left.
        assert (asked.value.slot_id, asked.value.port) == (slot, target.port)
    with target.client() as raw:
        with pytest.raises(redis.exceptions.MovedError):
            raw.get(moved[0])  # not without ASKING: the slot is not its own yet
        pipe = raw.pipeline(transaction=False)
        pipe.execute_command("ASKING").get(moved[0])
        assert pipe.execute() == [True, values[moved[0]]]
    # A multi-key command on keys split between the two is refused until the
    # migration ends (a cluster client retries it until it gives up) ...
    with source.client() as raw, pytest.raises(redis.exceptions.TryAgainError):
        raw.mget([stayed[0], moved[0]])
    # ... while one key at a time, a cluster client follows the ASKs.
    assert [client.get(key) for key in values] == list(values.values())

    cluster.finish_migration(slot, source, target)
    assert cluster.master_of_slot(slot) is target
    with source.client() as raw:
        with pytest.raises(redis.exceptions.MovedError) as redirected:
            raw.get(stayed[0])
        assert (redirected.value.slot_id, redirected.value.port) == (slot, target.port)
    with target.client() as raw:
        assert raw.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 10
    assert client.mget_nonatomic(list(values)) == list(values.values())
