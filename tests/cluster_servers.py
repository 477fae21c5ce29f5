"""A real Redis Cluster on loopback: three private ``redis-server`` processes, no replicas.

``RedisClusterServers`` starts three cluster-enabled servers in a temporary directory,
joins them with ``redis-cli --cluster create`` and waits until every node reports
``cluster_state:ok``. Nothing is kept on disk beyond the nodes' own cluster config files,
which go with the directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.redis_servers import REDIS_SERVER_BINARY, RedisServer, free_port

__all__ = ["REDIS_CLI_BINARY", "RedisClusterServers"]

#: The redis-cli executable (it creates the cluster), or None when none is installed.
REDIS_CLI_BINARY = shutil.which("redis-cli")

_NODES = 3
_CREATE_DEADLINE = 30.0
_POLL_INTERVAL = 0.05


class RedisClusterServers:
    """Three cluster-enabled ``redis-server`` processes on free loopback ports, joined into
    one cluster that covers all 16384 slots.

    Example (illustrative: it starts processes)::

        cluster = RedisClusterServers().start()
        RedisCache.from_url(cluster.url, cluster=True)
        cluster.stop()
    """

    def __init__(self) -> None:
        if REDIS_SERVER_BINARY is None or REDIS_CLI_BINARY is None:
            raise RuntimeError("redis-server and redis-cli must both be installed (on PATH)")
        self._dir = Path(tempfile.mkdtemp(prefix="limpet-cluster-"))
        self.nodes: list[RedisServer] = []
        for index in range(_NODES):
            config = self._dir / f"nodes-{index}.conf"
            self.nodes.append(
                RedisServer(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(config),
                        # An explicit bus port: port + 10000 may be taken or out of range.
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-node-timeout",
                        "5000",
                        "--dir",
                        str(self._dir),
                    ]
                )
            )

    def __repr__(self) -> str:
        return f"RedisClusterServers(ports={self.ports})"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one node: a seed from which a cluster client finds the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def cache_url(self) -> str:
        """The ``redis+cluster://`` URL ``RedisCache.from_url`` takes for this cluster."""
        return self.url.replace("redis://", "redis+cluster://", 1)

    def start(self) -> RedisClusterServers:
        """Start the nodes, create the cluster, wait for ``cluster_state:ok`` everywhere.

        Raises:
            RuntimeError: a node did not start, or the cluster did not form in time.
        """
        try:
            for node in self.nodes:
                node.start()
            assert REDIS_CLI_BINARY is not None
            created = subprocess.run(
                [
                    REDIS_CLI_BINARY,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=_CREATE_DEADLINE,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(
                    "redis-cli --cluster create failed: "
                    + created.stdout.decode(errors="replace")[-500:]
                    + created.stderr.decode(errors="replace")[-500:]
                )
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every node and remove the directory."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def clients(self) -> list[redis.Redis]:
        """A plain (non-cluster) client per node, to look at each node's own keys."""
        return [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + _CREATE_DEADLINE
        for client in self.clients():
            with client:
                while _cluster_state(client) != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self!r} did not reach cluster_state:ok")
                    # Polling for the cluster's readiness, not synchronising with code
                    # under test.
                    time.sleep(_POLL_INTERVAL)


def _cluster_state(client: redis.Redis) -> object:
    # redis-py parses the reply into a dict of str.
    info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    return info.get("cluster_state")
