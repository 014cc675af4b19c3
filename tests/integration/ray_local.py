"""Local Ray clusters for integration tests, on 127.0.0.1 only, that clean up exactly what they started.

Two shapes:

- :func:`multinode_cluster`: a head and N worker nodes in this process via ``ray.cluster_utils.Cluster`` (custom
  resources tell the nodes apart); the driver connects to it. Stop = ``Cluster.shutdown()``.
- :func:`ray_head`: ``ray start --head --block`` as a child process in its own session with its own temp dir, ports
  and auth token, for ``ray job submit`` tests. Stop = SIGTERM/SIGKILL to that process group, then any process whose
  command line names the cluster's private temp dir (all of them ours).

The machine is shared: nothing here calls ``ray stop``, uses default ports, or touches ``/tmp/ray`` (the default temp
dir whose ``ray_current_cluster`` file other people's ``ray.init()`` would connect to).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import ray

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray replaces 127.0.0.1 by the machine's routable address unless this is set (RAY_NOTES.md).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
VENV_BIN = str(Path(sys.executable).parent)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ports_and_worker_range(n: int, span: int = 200) -> tuple[list[int], int]:
    """``n`` free ports on 127.0.0.1 plus the low end ``lo`` of a worker-port range ``[lo, lo + span]`` that holds
    none of them. Ray refuses to start when a component's port falls inside the worker range ("port number ... that
    is used by other components"), and free ports drawn one by one from the ephemeral range land there by chance."""
    for _ in range(100):
        ports = free_ports(n + 1)
        lo = ports.pop()
        if lo + span <= 65535 and not any(lo <= p <= lo + span for p in ports):
            return ports, lo
    raise RuntimeError(f"no worker-port range of {span + 1} ports clear of {n} free ports after 100 draws")


def short_temp_dir(prefix: str) -> str:
    """A private temp dir with a short path (Ray's Unix socket paths must stay under 107 characters)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring the previous values afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------------------------------------------
# Several nodes in this process


@dataclass
class LocalCluster:
    cluster: ray.cluster_utils.Cluster
    workers: list  # ray._private.node.Node, in the order of the ``workers`` argument
    temp_dir: str
    node_ids: list[str] = field(default_factory=list)  # Ray node ids of ``workers``, same order

    @property
    def address(self) -> str:
        return self.cluster.address


@contextlib.contextmanager
def multinode_cluster(
    workers: Sequence[dict],
    head_cpus: float = 0,
    connect: bool = True,
    object_store_mb: int = 100,
    env: dict[str, str] | None = None,
) -> Iterator[LocalCluster]:
    """A head (``head_cpus`` CPUs, default 0: no work lands there) plus one worker node per entry of ``workers``
    (``ray.cluster_utils.Cluster.add_node`` keyword arguments, e.g. ``{"num_cpus": 2, "resources": {"node_a": 1}}``),
    all on 127.0.0.1, with a private temp dir. The driver is connected when ``connect``; everything is shut down on
    exit, also when the block raises.
    """
    from ray.cluster_utils import Cluster

    temp_dir = short_temp_dir("rc")
    gcs_port, agent_port = free_ports(2)
    common = {"temp_dir": temp_dir, "node_ip_address": LOOPBACK, "object_store_memory": object_store_mb << 20}
    head_args = {
        **common,
        "num_cpus": head_cpus,
        "gcs_server_port": gcs_port,
        "dashboard_agent_listen_port": agent_port,
        "include_dashboard": False,
    }
    cluster = None
    # Cluster writes/deletes the *default* /tmp/ray/ray_current_cluster, which other people's ray.init() reads:
    # keep that file out of it.
    with (
        patched_env({**LOOPBACK_ENV, **(env or {})}),
        # ... and this process read the variable when it imported ray: patch the constant too
        mock.patch("ray._private.ray_constants.ENABLE_RAY_CLUSTER", False),
        mock.patch("ray._private.utils.write_ray_address"),
        mock.patch("ray._common.utils.reset_ray_address"),
    ):
        try:
            cluster = Cluster(initialize_head=True, connect=False, head_node_args=head_args, shutdown_at_exit=False)
            nodes = [cluster.add_node(**{**common, **spec}) for spec in workers]
            cluster.wait_for_nodes(timeout=120)
            local = LocalCluster(cluster, nodes, temp_dir, [n.node_id for n in nodes])
            if connect:
                ray.init(address=cluster.address, log_to_driver=False)
            logger.info("local cluster at %s: head + %d worker nodes (%s)", cluster.address, len(nodes), temp_dir)
            yield local
        finally:
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def node_of_resource(resource: str) -> str:
    """The node id of the (single) node that offers ``resource`` (a custom resource naming a node)."""
    ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
    if len(ids) != 1:
        raise LookupError(f"expected one live node with resource '{resource}', found {len(ids)}")
    return ids[0]


# ----------------------------------------------------------------------------------------------------------------
# A `ray start --head` cluster for job submission


@dataclass
class RayHead:
    process: subprocess.Popen
    temp_dir: str
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]  # environment for the `ray` CLI (auth token, loopback) talking to this head
    log_path: Path
    python: str = ""  # the interpreter that runs the head (``ray start``'s process), as it was invoked
    prefix: str = ""  # that interpreter's ``sys.prefix``: the environment the head runs in

    @property
    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for the job API (explicit, so this process's cached Ray auth config does not matter)."""
        return {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}

    def cli(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None
    ) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` against this head (``--address`` is the caller's business); never raises on rc.
        A command still running after ``timeout`` seconds raises ``subprocess.TimeoutExpired`` (fails the test)."""
        return subprocess.run(
            [os.path.join(VENV_BIN, "ray"), *args],
            env=env or self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _processes_naming(text: str) -> list[int]:
    """PIDs of processes whose command line contains ``text`` (a private temp dir: only ours match)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_group(process: subprocess.Popen, temp_dir: str, grace_s: float = 5) -> None:
    """SIGTERM the head's process group, give it ``grace_s`` (GCS and dashboard stop at once; raylet and the
    autoscaler monitor linger, and ``ray start --block`` does not exit on SIGTERM), then SIGKILL the group and any
    process whose command line names our private temp dir. A throw-away test cluster needs no orderly shutdown."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and process.poll() is None:
        if not [pid for pid in _processes_naming(temp_dir) if pid != process.pid]:
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    left = _processes_naming(temp_dir)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        logger.warning("killed %d leftover processes of %s", len(left), temp_dir)


@contextlib.contextmanager
def ray_head(num_cpus: int = 4, startup_timeout_s: float = 180) -> Iterator[RayHead]:
    """``ray start --head --block`` on 127.0.0.1 with token auth (a fresh random token, not ~/.ray/auth_token), the
    dashboard on 127.0.0.1 only, every port picked free, a private temp dir, and this virtualenv's ``bin`` first on
    PATH (a job's ``python`` resolves there). Yields once the job API answers, with the interpreter and environment
    (``python``, ``prefix``) the head runs in read from its process; always stops what it started."""
    temp_dir = short_temp_dir("rh")
    ports, worker_lo = ports_and_worker_range(9, span=200)
    gcs, dash, client, agent_listen, agent_grpc, runtime_env, node_mgr, obj_mgr, metrics = ports
    token = uuid.uuid4().hex + uuid.uuid4().hex
    env = {
        **os.environ,
        **LOOPBACK_ENV,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    log_path = Path(temp_dir) / "ray_start.log"
    cmd = [
        os.path.join(VENV_BIN, "ray"), "start", "--head", "--block",
        f"--node-ip-address={LOOPBACK}", f"--port={gcs}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}", f"--metrics-export-port={metrics}",
        f"--min-worker-port={worker_lo}", f"--max-worker-port={worker_lo + 200}",
        f"--temp-dir={temp_dir}", "--object-store-memory=150000000", "--disable-usage-stats",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(process, temp_dir, f"{LOOPBACK}:{gcs}", f"http://{LOOPBACK}:{dash}", env, log_path)
    try:
        _wait_for_job_api(head, startup_timeout_s)
        head.python, head.prefix = _interpreter_of(process.pid)
        logger.info("ray head at %s, dashboard %s (%s)", head.gcs_address, head.dashboard_url, temp_dir)
        yield head
    finally:
        _kill_group(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _interpreter_of(pid: int) -> tuple[str, str]:
    """(interpreter, its ``sys.prefix``) of the Python process ``pid``: ``argv[0]`` of a script the kernel started
    through its shebang (``ray`` is one), asked for its prefix. Read from the process itself, not from where this
    test expects the environment to live."""
    argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    python = argv[0].decode()
    out = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"cannot ask the head's interpreter {python!r} (pid {pid}) for its prefix: {out.stderr}")
    return python, out.stdout.strip()


def _wait_for_job_api(head: RayHead, timeout_s: float) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.process.returncode}:\n{head.log_path.read_text()}")
        try:
            JobSubmissionClient(head.dashboard_url, headers=head.auth_headers).list_jobs()
            return
        except Exception as err:  # noqa: BLE001 - not up yet; the last error is reported on timeout
            last_error = err
            time.sleep(1.0)
    raise TimeoutError(f"job API at {head.dashboard_url} not up after {timeout_s:.0f} s: {last_error}")
