"""A real two-node Ray cluster on loopback for the Ray engine's tests, and the processes it started.

`ray start --head` and `ray start --address` daemonise their processes, so they are found again by the
cluster's own temp directory (unique per fixture) in their command lines and stopped by PID; `ray stop` is
never used, since it stops every Ray process on the machine, other users' clusters included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLUSTER_ENV = {
    # Serve's autoscaler sees load within a second instead of ten (its default push interval).
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    # On a loaded 2-core machine the HTTP proxy takes longer than its default 5 s to start.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
    "RAY_USAGE_STATS_ENABLED": "0",
}
NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Ray replaces 127.0.0.1 in an address by the host's network address (for other hosts to reach): the nodes use
# other loopback addresses, which it keeps, so that every connection stays on the loopback interface.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    head_ip: str = HEAD_IP

    def pids(self) -> list[int]:
        """Every live process whose command line names this cluster's temp directory or its GCS address (the
        Ray client server names only the address)."""
        markers = (str(self.temp_dir).encode(), f"={self.address}".encode())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if any(marker in cmdline for marker in markers):
                    found.append(int(entry.name))
        return found


def _ray_start(args: list[str], ip: str, temp_dir: Path, cpus: int) -> None:
    ports = [arg for flag in NODE_PORT_FLAGS for arg in (flag, str(free_port()))]
    command = [
        str(Path(sys.executable).parent / "ray"), "start", *args, "--node-ip-address", ip,
        "--num-cpus", str(cpus), "--num-gpus", "0", "--object-store-memory", str(150 * 1024 * 1024),
        "--temp-dir", str(temp_dir), "--disable-usage-stats", *ports,
    ]  # fmt: skip
    result = subprocess.run(command, env={**os.environ, **CLUSTER_ENV}, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{result.stdout}\n{result.stderr}")


def stop(cluster: Cluster, timeout_s: float = 20) -> None:
    for pid in cluster.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    give_up = time.monotonic() + timeout_s
    while cluster.pids() and time.monotonic() < give_up:
        time.sleep(0.2)
    for pid in cluster.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int = 2) -> Iterator[Cluster]:
    """A head and a second node on loopback addresses; every process of both is stopped by PID afterwards."""
    # Short: Ray's unix sockets live under the temp dir and their paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    cluster = Cluster(f"{HEAD_IP}:{port}", temp_dir)
    try:
        _ray_start(["--head", "--port", str(port), "--include-dashboard", "false",
                    "--ray-client-server-port", str(free_port())], HEAD_IP, temp_dir, cpus_per_node)  # fmt: skip
        _ray_start(["--address", cluster.address], WORKER_IP, temp_dir, cpus_per_node)
        yield cluster
    finally:
        stop(cluster)
