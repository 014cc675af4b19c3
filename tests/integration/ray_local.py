"""Local Ray clusters for integration tests, on 127.0.0.1 only, that clean up exactly what they started.

Three shapes:

- :func:`multinode_cluster`: a head and N worker nodes in this process via ``ray.cluster_utils.Cluster`` (custom
  resources tell the nodes apart); the driver connects to it. Stop = ``Cluster.shutdown()``.
- :func:`ray_head`: ``ray start --head --block`` as a child process in its own session with its own temp dir, ports
  and auth token, for ``ray job submit`` tests. Stop = SIGTERM/SIGKILL to that process group, then any process whose
  command line names the cluster's private temp dir (all of them ours).
- :func:`job_cluster`: a head with the job API plus N worker nodes, each node its own temp dir, held by a child
  process (this file run as a script) whose environment carries the auth token, the loopback setting and e.g. the
  object store's AWS variables before it imports Ray; the test talks to it through ``ray job submit`` and tells it
  to kill a node. Stop = ``stop`` on its stdin, then the same process-group clean-up as ``ray_head``.

The machine is shared: nothing here calls ``ray stop``, uses default ports, or touches ``/tmp/ray`` (the default temp
dir whose ``ray_current_cluster`` file other people's ``ray.init()`` would connect to).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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


# ----------------------------------------------------------------------------------------------------------------
# Several nodes in a child process, for `ray job submit`: the multi-node cluster of the README's cluster commands


@dataclass
class JobCluster:
    process: subprocess.Popen  # the child that holds the ``Cluster`` (it reads commands on stdin)
    root: str  # private temp root: ``head/`` and ``node<i>/``, each node's own Ray temp dir (nothing shared)
    gcs_address: str
    dashboard_url: str
    node_ids: list[str]  # Ray node ids of the worker nodes, in the order of the ``workers`` argument
    env: dict[str, str]  # environment for the `ray` CLI: token, loopback, PATH, RAY_ADDRESS = the job API
    log_path: Path
    _lines: queue.Queue = field(default_factory=queue.Queue, repr=False)

    def kill_node(self, index: int, timeout_s: float = 120) -> None:
        """Remove worker node ``index`` at once (no graceful shutdown: its raylet and workers are killed)."""
        self.process.stdin.write(f"kill {index}\n")
        self.process.stdin.flush()
        _expect(self, f"killed {index}", timeout_s)

    def cli(
        self, *args: str, timeout: float = 600, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None
    ) -> subprocess.CompletedProcess:
        """``ray <args>`` with this cluster's CLI environment plus ``env``; never raises on rc (a command still
        running after ``timeout`` raises ``subprocess.TimeoutExpired``)."""
        return subprocess.run(
            [os.path.join(VENV_BIN, "ray"), *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _expect(cluster: JobCluster, prefix: str, timeout_s: float) -> str:
    """The next line the child prints that starts with ``prefix`` (others are logged); fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = cluster._lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:  # closed, or nothing in time
            log = cluster.log_path.read_text(errors="replace")[-6000:]
            state = "exited" if cluster.process.poll() is not None else f"silent for {timeout_s:.0f} s"
            raise RuntimeError(f"cluster process {state} while waiting for {prefix!r}; its log ends with:\n{log}")
        if line.startswith(prefix):
            return line
        logger.info("cluster process: %s", line)


@contextlib.contextmanager
def job_cluster(
    workers: Sequence[dict],
    head_cpus: float = 0,
    env: dict[str, str] | None = None,
    object_store_mb: int = 100,
    startup_timeout_s: float = 300,
) -> Iterator[JobCluster]:
    """A head (``head_cpus``, the dashboard and job API on 127.0.0.1) plus one worker node per ``workers`` entry
    (``Cluster.add_node`` arguments), every node with its own temp dir, in a child process started with ``env`` (e.g.
    the object store's AWS variables: the nodes' environment, as on a real cluster), token auth and the loopback
    setting in its environment before it imports Ray (so every Ray process it starts has them too). Yields once the
    job API answers; stops exactly what it started."""
    root = short_temp_dir("jc")
    dashboard_port, gcs_port, agent_port = free_ports(3)
    token = uuid.uuid4().hex + uuid.uuid4().hex
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    path = {"PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}  # the jobs' `python` resolves here
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    spec = {
        "root": root,
        "head_cpus": head_cpus,
        "workers": list(workers),
        "ports": [dashboard_port, gcs_port, agent_port],
        "object_store_mb": object_store_mb,
    }
    log_path = Path(root) / "cluster.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, json.dumps(spec)],
            env={**base, **LOOPBACK_ENV, **path, **auth, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
    url = f"http://{LOOPBACK}:{dashboard_port}"
    cli_env = {**base, **LOOPBACK_ENV, **path, **auth, "RAY_ADDRESS": url}
    cluster = JobCluster(process, root, f"{LOOPBACK}:{gcs_port}", url, [], cli_env, log_path)
    reader = threading.Thread(target=_pump, args=(process.stdout, cluster._lines), daemon=True)
    reader.start()
    try:
        ready = json.loads(_expect(cluster, "READY ", startup_timeout_s)[len("READY ") :])
        cluster.node_ids = ready["node_ids"]
        logger.info("job cluster: head %s + %d nodes, job API %s (%s)", cluster.gcs_address, len(workers), url, root)
        yield cluster
    finally:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.stdin.write("stop\n")
                process.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        _kill_group(process, root)
        shutil.rmtree(root, ignore_errors=True)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _serve(spec: dict) -> None:
    """The child of :func:`job_cluster`: build the cluster, print ``READY {node_ids}``, then obey ``kill <i>`` and
    ``stop`` lines on stdin (EOF = stop)."""
    from ray.cluster_utils import Cluster

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    root, mb = spec["root"], spec["object_store_mb"] << 20
    dashboard_port, gcs_port, agent_port = spec["ports"]
    head_dir = os.path.join(root, "head")
    head_args = {
        "temp_dir": head_dir,
        "node_ip_address": LOOPBACK,
        "object_store_memory": mb,
        "num_cpus": spec["head_cpus"],
        "gcs_server_port": gcs_port,
        "dashboard_agent_listen_port": agent_port,
        "include_dashboard": True,
        "dashboard_host": LOOPBACK,
        "dashboard_port": dashboard_port,
    }
    # Cluster writes/deletes the default /tmp/ray/ray_current_cluster, which other people's ray.init() reads: keep
    # it out of that file. The job supervisor reads the address from the head's own temp dir, written below.
    with (
        mock.patch("ray._private.utils.write_ray_address"),
        mock.patch("ray._common.utils.reset_ray_address"),
    ):
        cluster = Cluster(initialize_head=True, connect=False, head_node_args=head_args, shutdown_at_exit=False)
        try:
            Path(head_dir, "ray_current_cluster").write_text(cluster.gcs_address)
            nodes = [
                cluster.add_node(temp_dir=os.path.join(root, f"node{i}"), node_ip_address=LOOPBACK,
                                 object_store_memory=mb, **w)
                for i, w in enumerate(spec["workers"])
            ]  # fmt: skip
            cluster.wait_for_nodes(timeout=300)
            print("READY " + json.dumps({"node_ids": [n.node_id for n in nodes]}), flush=True)
            for line in sys.stdin:
                command = line.split()
                if command[:1] == ["kill"]:
                    cluster.remove_node(nodes[int(command[1])], allow_graceful=False)
                    print(f"killed {command[1]}", flush=True)
                elif command[:1] == ["stop"]:
                    break
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
