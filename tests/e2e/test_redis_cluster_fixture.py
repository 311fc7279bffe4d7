"""The RedisCluster fixture against the real thing: slots, hash tags, a manual failover and a
SIGKILLed master replaced by the cluster's own election. The service's cluster tests lean on
each of these; if one fails here, theirs would fail for the fixture's sake, not the service's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .redis_cluster import RedisCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """One cluster for the non-destructive tests (a manual failover leaves it whole)."""
    with RedisCluster() as started:
        yield started


def test_the_cluster_starts_with_three_masters_each_with_a_synced_replica(
        cluster: RedisCluster) -> None:
    masters = cluster.masters()
    assert len(masters) == 3 and len(cluster.replicas()) == 3
    for master in masters:
        replicas = cluster.replicas_of(master)
        assert len(replicas) == 1 and replicas[0].link_up()
    assert all(node.cluster_ok() for node in cluster.nodes)
    assert cluster.seed in masters
    assert cluster.env == {"REDIS_URL": cluster.url, "AXRISI_REDIS_CLUSTER": "1"}


def test_a_key_set_through_the_cluster_client_is_readable_on_its_master(
        cluster: RedisCluster) -> None:
    client = cluster.client()
    client.set("fixture:plain", "value")
    assert client.get("fixture:plain") == b"value"
    assert cluster.master_of("fixture:plain").client().get("fixture:plain") == b"value"


def test_keys_with_one_hash_tag_share_a_node_and_a_multi_key_command(
        cluster: RedisCluster) -> None:
    node = cluster.master_of("{x}a")
    assert cluster.master_of("{x}b") is node
    client = cluster.client()
    assert client.mset({"{x}a": "1", "{x}b": "2"})
    assert client.mget("{x}a", "{x}b") == [b"1", b"2"]
    # Without a shared tag, the node itself refuses (CROSSSLOT; redis-py drops the code from
    # the message): the slots are real.
    with pytest.raises(redis.ResponseError, match="same slot"):
        node.client().mget("{x}a", "{y}b")


def test_a_manual_failover_promotes_the_replica_and_the_key_is_still_there(
        cluster: RedisCluster) -> None:
    cluster.client().set("fixture:manual", "kept")
    master = cluster.master_of("fixture:manual")
    [replica] = cluster.replicas_of(master)
    assert cluster.failover(replica) is replica
    assert cluster.master_of("fixture:manual") is replica
    assert replica.role() == "master" and master.role() == "slave"
    assert replica.client().get("fixture:manual") == b"kept"
    assert cluster.client().get("fixture:manual") == b"kept"


def test_a_sigkilled_master_is_replaced_by_its_replica_with_the_data() -> None:
    """Destructive, so on a cluster of its own."""
    with RedisCluster() as cluster:
        client = cluster.client()
        client.set("fixture:killed", "kept")
        master = cluster.master_of("fixture:killed")
        [replica] = cluster.replicas_of(master)
        assert master.client().wait(1, 1000) == 1  # the write reached the replica
        assert cluster.kill_master_of("fixture:killed") is master
        assert not master.running
        cluster.wait_ok(timeout=15)
        assert cluster.master_of("fixture:killed") is replica
        assert replica.role() == "master"
        assert cluster.client().get("fixture:killed") == b"kept"
        directory, nodes = cluster.dir, cluster.nodes
    assert not any(node.running for node in nodes)
    assert not Path(directory).exists()
