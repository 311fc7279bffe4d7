"""A real Redis Cluster on loopback (three masters, three replicas), that a test can fail over
and kill parts of.

Six ``redis-server`` processes in cluster mode, joined by ``redis-cli --cluster create`` as an
operator would, so slot routing, ``MOVED`` replies, ``CROSSSLOT`` refusals and replica elections
are the server's own, never a mock's. Every wait is a bounded poll, never a fixed sleep.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis

from .redis_server import RedisServer
from .servers import free_port, require_binary

NODES = 6
REPLICAS_PER_MASTER = 1
POLL = 0.05
MANUAL_FAILOVER_SECONDS = 5.0
"""How long Redis 7.0 lets a ``CLUSTER FAILOVER`` run before it abandons it (CLUSTER_MF_TIMEOUT)."""

CLUSTER_SETTINGS: tuple[str, ...] = (
    # One second without an answer marks a node PFAIL; once most masters report it, it is FAIL
    # and its replica runs for election: a SIGKILLed master is replaced in about 2 s instead of
    # the default 15 s + election. Lower values invite false failures on a loaded machine.
    "--cluster-node-timeout", "1000",
    # A replica may always run for election however long ago it last heard from its master. With
    # the default factor (10), a replica whose link was down for a while refuses to fail over,
    # and whether it does depends on timing: 0 makes failover deterministic.
    "--cluster-replica-validity-factor", "0",
    # Spelled-out defaults, so a test knows what it gets: a cluster missing a slot's master is
    # down for every slot, and a node that thinks the cluster is down refuses reads as well as
    # writes, so cluster_state:ok means all 16384 slots are served and a test sees a real outage.
    "--cluster-require-full-coverage", "yes",
    "--cluster-allow-reads-when-down", "no",
    # Redis 7.0 holds a diskless full sync 5 s by default, in case more replicas come to share
    # it: every start would wait 5 s before the replicas' master_link_status is up.
    "--repl-diskless-sync-delay", "0",
    # No persistence, as RedisServer: data lives in memory only (nodes.conf, the cluster's own
    # state, is still written, in each node's own directory).
    "--save", "", "--appendonly", "no",
)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds or ``timeout`` passes. A Redis error counts as "not yet": a
    node that is mid-election or just started refuses commands for a moment."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if check():
                return
        except redis.RedisError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} after {timeout} s" + (f" (last error: {last!r})"
                                                            if last else ""))
        time.sleep(POLL)


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct free ports outside ``taken``: the kernel may hand the same ephemeral
    port out twice, and a node's client and bus ports must all differ."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


class ClusterNode:
    """One ``redis-server --cluster-enabled yes`` with its own directory and nodes.conf.

    The bus port is chosen too (``--cluster-port``): the default, port + 10000, overflows 65535
    for most of Linux's ephemeral range (32768-60999) that ``free_port`` draws from.
    """

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.dir.mkdir()
        self.port = 0
        self.bus_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ClusterNode(port={self.port}, pid={self.pid}, running={self.running})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        """A plain client to this node alone: a key of another node's slot gets ``MOVED``."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def admin(self) -> redis.Redis:
        """A client with decoded replies, for the fixture's own CLUSTER/INFO/ROLE questions."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           decode_responses=True)

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                "--cluster-config-file", str(self.dir / "nodes.conf"),
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
                *CLUSTER_SETTINGS]

    def start(self, port: int, bus_port: int, timeout: float = 10.0) -> bool:
        """Start on these ports; False if the process exited (a port taken meanwhile, e.g. by
        a test running in parallel), so the caller can try other ports."""
        self.port, self.bus_port = port, bus_port
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                if self.client().ping():
                    return True
            except redis.RedisError:
                time.sleep(POLL)
        self.kill()
        raise RuntimeError(f"redis-server on {port} did not answer:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, as a crash or a lost machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def ask(self, subcommand: str, *args: str | bytes | int) -> Any:
        """``CLUSTER <subcommand>`` on this node, its reply decoded."""
        return self.admin().cluster(subcommand, *args)

    def _role(self) -> list[Any]:
        """``ROLE``: ``[master, offset, replicas]`` or ``[slave, host, port, state, offset]``."""
        return self.admin().role()

    def role(self) -> str:
        """``master`` or ``slave``, as the node itself says: the one authority on its role
        while the others' slot maps may lag behind."""
        return str(self._role()[0])

    def master_port(self) -> int | None:
        """The port of the master this node replicates, or None for a master."""
        reply = self._role()
        return int(reply[2]) if reply[0] == "slave" else None

    def cluster_ok(self) -> bool:
        return bool(self.ask("INFO")["cluster_state"] == "ok")

    def link_up(self) -> bool:
        """A replica whose replication link is up (full sync done), so it can take over."""
        return bool(self.admin().info("replication").get("master_link_status") == "up")

    def slots(self) -> list[list[Any]]:
        """``CLUSTER SLOTS``: ``[start, end, [host, port, id], replicas...]`` per range."""
        return cast(list[list[Any]], self.ask("SLOTS"))

    def slot_masters(self) -> set[int]:
        """The ports this node's slot map names as masters."""
        return {int(entry[2][1]) for entry in self.slots()}

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class RedisCluster:
    """Three masters with one replica each, on 127.0.0.1, no persistence."""

    def __init__(self) -> None:
        self.binary = require_binary("redis-server")
        self.cli = require_binary("redis-cli")
        self.dir = Path(tempfile.mkdtemp(prefix="axrisi-redis-cluster-"))
        self.nodes = [ClusterNode(self.binary, self.dir / f"node-{i}") for i in range(NODES)]
        self.seed: ClusterNode | None = None

    @property
    def url(self) -> str:
        """The one node the service is given (the first master at start), as a deploy would
        give one address; a cluster client learns the rest from it. It stays that node even
        if it is killed later, as the service's setting would."""
        if self.seed is None:
            raise RuntimeError("the cluster is not started")
        return f"redis://127.0.0.1:{self.seed.port}/0"

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "AXRISI_REDIS_CLUSTER": "1"}

    def client(self) -> redis.RedisCluster:
        """A cluster client seeded with a live master, so it works after a kill too."""
        masters = self.masters()
        if not masters:
            raise RuntimeError("no live master")
        return redis.RedisCluster(host="127.0.0.1", port=masters[0].port, socket_timeout=2)

    def start(self, timeout: float = 20.0) -> RedisCluster:
        self._start_nodes()
        self._create()
        try:
            self.wait_ready(timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from exc
        self.seed = self.masters()[0]
        return self

    def _start_nodes(self, attempts: int = 3) -> None:
        taken: set[int] = set()
        for node in self.nodes:
            for _ in range(attempts):
                port, bus_port = _free_ports(2, taken)
                taken |= {port, bus_port}
                if node.start(port, bus_port):
                    break
            else:
                raise RuntimeError(f"redis-server found no free port:\n{node.log()}")

    def _create(self) -> None:
        """``redis-cli --cluster create``: slots in three ranges, a replica for each master."""
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        result = subprocess.run(
            [self.cli, "--cluster", "create", *addresses,
             "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"],
            capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}"
                               f"{result.stderr}")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Every node ok and every replica's link up: a failover right after start can
        succeed (a replica that never synced has nothing to take over)."""
        _wait(lambda: all(node.cluster_ok() for node in self.nodes), timeout,
              "cluster_state is not ok on every node")
        _wait(lambda: len(self.replicas()) == NODES // 2
              and all(node.link_up() for node in self.replicas()), timeout,
              "the replicas' master links are not all up")
        self.wait_ok(timeout)

    def live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def masters(self) -> list[ClusterNode]:
        """The live nodes that say they are masters."""
        return [node for node in self.live() if node.role() == "master"]

    def replicas(self) -> list[ClusterNode]:
        """The live nodes that say they are replicas."""
        return [node for node in self.live() if node.role() == "slave"]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        return [node for node in self.replicas() if node.master_port() == master.port]

    def node_at(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, key: str | bytes) -> ClusterNode:
        """The node serving the key's slot, as a live node's slot map says right now."""
        node = self.live()[0]
        slot = int(node.ask("KEYSLOT", key))
        for start, end, master, *_ in node.slots():
            if int(start) <= slot <= int(end):
                return self.node_at(int(master[1]))
        raise LookupError(f"no node serves slot {slot}")

    def failover(self, replica: ClusterNode, timeout: float = 20.0,
                 force: bool = False) -> ClusterNode:
        """``CLUSTER FAILOVER`` on a replica (its master alive; ``force`` when it is not), then
        wait until it is master and every live node's slot map names it instead of its old
        master. Its own ``role:master`` comes first: for a moment the old master still says
        master too, and the other nodes still route its slots to the old one."""
        old = replica.master_port()
        if old is None:
            raise ValueError(f"{replica} is not a replica")
        deadline = time.monotonic() + timeout
        try:
            self._promote(replica, deadline, force)
            _wait(lambda: all(replica.port in node.slot_masters()
                              and old not in node.slot_masters() for node in self.live()),
                  max(0.0, deadline - time.monotonic()),
                  f"the slot maps do not all name {replica} instead of port {old}")
            self.wait_ok(max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from exc
        return replica

    def _promote(self, replica: ClusterNode, deadline: float, force: bool) -> None:
        """Ask until the replica says master. Redis drops a manual failover that has not
        finished within its window (5 s: the master's offset or a vote went missing) and
        leaves the replica a replica for good, so the request is repeated after that window."""
        while True:
            try:
                replica.ask("FAILOVER", *(["FORCE"] if force else []))
            except redis.ResponseError:
                if replica.role() != "master":  # a refusal, not "promoted since the last look"
                    raise
                return
            window = min(MANUAL_FAILOVER_SECONDS + 1, deadline - time.monotonic())
            try:
                _wait(lambda: replica.role() == "master", max(0.0, window),
                      f"{replica} did not become master")
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise

    def kill_master_of(self, key: str | bytes) -> ClusterNode:
        """SIGKILL the master serving the key; the cluster's own election replaces it."""
        master = self.master_of(key)
        master.kill()
        return master

    def wait_ok(self, timeout: float = 15.0) -> None:
        """Until every live node says cluster_state:ok and its slot map names only live nodes
        that say they are master: the cluster has noticed any kill and finished electing."""
        def settled() -> bool:
            live = self.live()
            masters = {node.port for node in live if node.role() == "master"}
            return all(node.cluster_ok() and node.slot_masters() <= masters for node in live)

        _wait(settled, timeout, "the cluster did not settle")

    def logs(self) -> str:
        """Every node's log tail, for a failure message."""
        return "\n".join(f"--- {node!r}\n{node.log()}" for node in self.nodes)

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> RedisCluster:
        try:
            return self.start()
        except BaseException:
            self.__exit__()  # six servers that never formed a cluster must not outlive the test
            raise

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


SharedRedis = RedisServer | RedisCluster
"""What the shared-state tests run on (the ``shared_redis`` fixture): one Redis or a cluster."""
