"""Shared state on a real Redis Cluster, through failovers while streams run.

The resume, DELETE, usage and quota tests run on a cluster too (the ``shared_redis`` fixture);
this module adds what only a cluster has: a master replaced while clients stream, drop and
resume on the other instance. ``CLUSTER FAILOVER`` on a replica (a planned switch) and a
SIGKILLed master (the cluster's own election, about two seconds with a 1 s node timeout): every
stream arrives exact, resumes meanwhile are answered ``503`` with ``Retry-After`` (then exact),
never ``404`` for a live stream, and no reader is left waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from axrisi.shared import keys
from tests.fake_upstream import FakeUpstream

from .redis_cluster import RedisCluster
from .servers import Gunicorn
from .test_redis_faults import (
    check_killed_generating_worker,
    env_for,
    failure_report,
    run_scenario,
    summary,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as started:
        yield started


@pytest.fixture(scope="module")
def cluster_pair(upstream: FakeUpstream, cluster: RedisCluster
                 ) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    """Two instances, one gevent worker each, on the cluster."""
    env = env_for(upstream, **cluster.env)
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


def planned_failover(_proxy: Any, cluster: RedisCluster) -> None:
    """``CLUSTER FAILOVER`` on the replica of the master that holds the deployment's keys (the
    workers' leases), so every instance's heartbeat meets the switch."""
    master = cluster.master_of(keys.WORKERS)
    cluster.failover(cluster.replicas_of(master)[0])


def killed_master(_proxy: Any, cluster: RedisCluster) -> None:
    """SIGKILL of a master that holds streams' keys; its replica is elected by the cluster."""
    cluster.kill_master_of(keys.events(1))
    cluster.wait_ok(20)


def check_failover(pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream,
                   cluster: RedisCluster, fault: Any, seed: int) -> None:
    runs = run_scenario(pair, upstream, None, cluster, fault, seed)  # type: ignore[arg-type]
    exact = all(run.verdict() is None for run in runs)
    not_found = sum(run.not_found for run in runs)
    never_ended = sum(run.never_ended for run in runs)
    print(f"\n{fault.__name__}: {summary(runs)}")
    report = failure_report(runs, pair)
    assert exact and not_found == 0 and never_ended == 0, report


def test_streams_and_resumes_through_a_planned_failover(
        cluster_pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream,
        cluster: RedisCluster) -> None:
    check_failover(cluster_pair, upstream, cluster, planned_failover, seed=11)


def test_streams_and_resumes_through_a_killed_master(
        cluster_pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream,
        cluster: RedisCluster) -> None:
    """Runs after the planned failover (the module's cluster is not restored: a master that
    lost its replica is what a cluster looks like after a crash, and must still serve)."""
    check_failover(cluster_pair, upstream, cluster, killed_master, seed=12)


def test_killed_generating_worker_on_a_cluster(upstream: FakeUpstream) -> None:
    """The dead-worker rule without a multi-slot script: the follower ends with ``internal``
    once the lease lapses, a resume replays that end, the user's slot comes back."""
    with RedisCluster() as fresh:
        check_killed_generating_worker(upstream, fresh.env)
