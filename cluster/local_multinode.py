"""A multi-node Ray cluster on one machine: real raylets started with ``ray start``, one per node,
each with its own custom resources, so placement and cross-node calls are real.

Each node is a ``ray start --block`` process in its own process group with its own temp dir and
free ports; stopping a node signals exactly that group (never ``ray stop``, which would stop
every Ray of this user on the machine, other people's included). Ray's children die with their
``ray start`` parent (Linux fate sharing), and the group signal catches any that linger.

On one machine every node has the same IP, so Serve's HTTP proxy must run on the head only
(``proxy_location: HeadOnly``): one proxy per node would all bind the same port.

    python -m cluster.cli local up            # default topology; Ctrl-C stops it
    python -m cluster.cli local up --detach   # prints the address; `local down` stops it
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.lifecycle import free_port

# `ray start --block` prints this once every process of the node is up.
_READY_MARK = "This command will now block forever"
STATE_FILE_NAME = "cluster.json"
# Node label carrying the local node's name, so a Ray node id maps back to "gpu-a" etc.
NODE_NAME_LABEL = "ssjf.local/node-name"


@dataclass(frozen=True)
class NodeSpec:
    """One local Ray node: its name, what it offers, and the node type it stands for."""

    name: str = field(metadata={"help": "Unique name of this node in the local cluster (e.g. gpu-a)."})
    node_type: str = field(metadata={"help": "The ray_cluster.yaml node type it stands for (label ray.io/node-group)."})
    num_cpus: int = field(default=1, metadata={"help": "Logical CPUs (scheduling tokens, not cores)."})
    num_gpus: int = field(default=0, metadata={"help": "Logical GPUs; >0 pretends GPUs exist (no CUDA)."})
    resources: Mapping[str, float] = field(default_factory=dict, metadata={"help": "Custom resources."})
    head: bool = field(default=False, metadata={"help": "The head node (GCS, dashboard, Serve controller)."})

    def __post_init__(self):
        if not self.name or any(c in self.name for c in "/ "):
            raise ValueError(f"node name must be non-empty without '/' or spaces, got {self.name!r}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"node {self.name}: num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        bad = {k: v for k, v in self.resources.items() if v < 0 or k in ("CPU", "GPU")}
        if bad:
            raise ValueError(f"node {self.name}: custom resources must be >= 0 and not CPU/GPU, got {bad}")


def default_topology() -> list[NodeSpec]:
    """Head (router), a CPU node (ingress + proxy pool), two "GPU" nodes (one LLM replica each):
    the shape of ray_cluster.yaml in miniature; two LLM nodes so one can die while one serves."""
    return [
        NodeSpec("head", "head", num_cpus=1, resources={"router_node": 1}, head=True),
        NodeSpec("cpu", "cpu_worker", num_cpus=2, resources={"ingress_node": 4, "proxy_node": 4}),
        NodeSpec("gpu-a", "gpu_worker", num_cpus=1, resources={"llm_node": 1}),
        NodeSpec("gpu-b", "gpu_worker", num_cpus=1, resources={"llm_node": 1}),
    ]


def as_cluster_config(specs: Sequence[NodeSpec]) -> dict:
    """The topology in ``ray up`` shape (node types by ``node_type``), for ``cluster.tools.check``."""
    types: dict[str, dict] = {}
    for s in specs:
        t = types.setdefault(s.node_type, {"resources": {"CPU": s.num_cpus, **({"GPU": s.num_gpus} if s.num_gpus else {}),
                                                         **dict(s.resources)},
                                           "node_config": {}, "min_workers": 0, "max_workers": 0})
        if not s.head:
            t["min_workers"] += 1
            t["max_workers"] += 1
    head = next(s.node_type for s in specs if s.head)
    return {"available_node_types": types, "head_node_type": head}


@dataclass
class LocalNode:
    spec: NodeSpec
    temp_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None
    pid: int | None = None  # also the process group id (start_new_session)

    @property
    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and _group_alive(self.pid)


class LocalCluster:
    """Start, inspect and stop a multi-node Ray cluster made of local ``ray start`` processes.

    Use as a context manager so every node is stopped however the block ends.
    """

    def __init__(self, nodes: Sequence[NodeSpec] | None = None, *, root_dir: str | Path | None = None,
                 include_dashboard: bool = True, env: Mapping[str, str] | None = None,
                 startup_timeout_s: float = 120.0, keep_logs: bool = False):
        self.specs = list(nodes or default_topology())
        heads = [s for s in self.specs if s.head]
        if len(heads) != 1:
            raise ValueError(f"exactly one node must be the head, got {[s.name for s in heads]}")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        # Short root: Ray's Unix socket paths live under it and must stay below ~107 bytes.
        self.root_dir = Path(root_dir) if root_dir else Path(tempfile.mkdtemp(prefix="ssjf-mn-", dir="/tmp"))
        self._own_root = root_dir is None
        self.include_dashboard = include_dashboard
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.keep_logs = keep_logs
        self.gcs_port = free_port()
        self.dashboard_port = free_port() if include_dashboard else None
        self.nodes: dict[str, LocalNode] = {}

    # ---- addresses ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str | None:
        return f"http://127.0.0.1:{self.dashboard_port}" if self.dashboard_port else None

    @property
    def head(self) -> LocalNode:
        return next(n for n in self.nodes.values() if n.spec.head)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Start the head, then all workers at once (each joins the head on its own)."""
        try:
            self.start_node(next(s for s in self.specs if s.head))
            workers = [self.start_node(s, wait=False) for s in self.specs if not s.head]
            for node in workers:
                try:
                    self._wait_ready(node)
                except RuntimeError as exc:
                    # On a loaded machine a worker's raylet can miss the GCS deadline while its
                    # siblings start beside it ("Failed to get node info ... Deadline Exceeded");
                    # it exits, and a second try, alone, succeeds. A second failure is final.
                    print(f"local cluster: retrying node {node.spec.name!r} once: {str(exc).splitlines()[0]}",
                          file=sys.stderr)
                    _kill_group(node.pid, signal.SIGKILL)
                    self.start_node(node.spec)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, spec: NodeSpec, *, wait: bool = True) -> LocalNode:
        if spec.name in self.nodes and self.nodes[spec.name].running:
            raise ValueError(f"node {spec.name!r} is already running")
        temp_dir = self.root_dir / spec.name
        temp_dir.mkdir(parents=True, exist_ok=True)
        node = LocalNode(spec=spec, temp_dir=temp_dir, log_path=self.root_dir / f"{spec.name}.log")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env,
               # Ray turns this into the node label ray.io/node-group, as `ray up` does.
               "RAY_NODE_TYPE_NAME": spec.node_type,
               "RAY_OVERRIDE_LABELS": json.dumps({NODE_NAME_LABEL: spec.name})}
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(self._command(spec, temp_dir), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        node.pid = node.process.pid
        self.nodes[spec.name] = node
        if wait:
            self._wait_ready(node)
        return node

    def _command(self, spec: NodeSpec, temp_dir: Path) -> list[str]:
        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [ray_cli, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
               f"--num-cpus={spec.num_cpus}", f"--num-gpus={spec.num_gpus}",
               f"--resources={json.dumps(dict(spec.resources))}",
               # Random ports everywhere another Ray on this machine could already listen.
               "--min-worker-port=0", "--max-worker-port=0",
               f"--dashboard-agent-listen-port={free_port()}"]
        if spec.head:
            cmd += ["--head", f"--port={self.gcs_port}", f"--ray-client-server-port={free_port()}",
                    f"--include-dashboard={str(self.include_dashboard).lower()}"]
            if self.include_dashboard:
                cmd += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        else:
            cmd += [f"--address={self.address}"]
        return cmd

    def _wait_ready(self, node: LocalNode) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"ray start for node {node.spec.name!r} exited with {node.process.returncode}; "
                                   f"log {node.log_path}:\n{_tail(node.log_path)}")
            if _READY_MARK in _tail(node.log_path, 4000):
                return
            time.sleep(0.25)
        raise TimeoutError(f"node {node.spec.name!r} not up after {self.startup_timeout_s:.0f}s "
                           f"(startup_timeout_s); log {node.log_path}:\n{_tail(node.log_path)}")

    def stop_node(self, name: str, *, graceful: bool = True, timeout_s: float = 15.0) -> None:
        """Stop one node: SIGTERM to its process group (Ray shuts the node down and tells the GCS),
        SIGKILL after ``timeout_s``; ``graceful=False`` kills at once, like a machine lost."""
        node = self.nodes.get(name)
        if node is None:
            raise ValueError(f"no node named {name!r}; nodes: {sorted(self.nodes)}")
        if node.pid is None:
            return
        _kill_group(node.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(node.pid):
            if node.process is not None:
                node.process.poll()  # reap, so the group leader does not linger as a zombie
            time.sleep(0.2)
        if _group_alive(node.pid):
            _kill_group(node.pid, signal.SIGKILL)
        if node.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=5)

    def stop(self) -> None:
        """Stop every node, workers first, then remove the temp dirs (unless keep_logs)."""
        for name in sorted(self.nodes, key=lambda n: self.nodes[n].spec.head):
            try:
                # The whole cluster goes: no need to wait long for the head's graceful shutdown.
                self.stop_node(name, timeout_s=4.0)
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping node {name}: {e}", file=sys.stderr)
        if self._own_root and not self.keep_logs:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- state file (for `local up --detach` / `local down`) --------------------------------
    def write_state(self, path: Path | None = None) -> Path:
        path = path or self.root_dir / STATE_FILE_NAME
        path.write_text(json.dumps({
            "address": self.address, "dashboard_url": self.dashboard_url, "root_dir": str(self.root_dir),
            "nodes": [{"pid": n.pid, "spec": {**asdict(n.spec), "resources": dict(n.spec.resources)}}
                      for n in self.nodes.values()],
        }, indent=2))
        return path


def stop_from_state(path: str | Path, *, remove_dir: bool = True) -> list[str]:
    """Stop the nodes a detached ``local up`` recorded in its state file; returns their names."""
    state = json.loads(Path(path).read_text())
    stopped = []
    nodes = sorted(state["nodes"], key=lambda n: n["spec"]["head"])  # workers first
    for n in nodes:
        pid = n["pid"]
        if pid and _group_alive(pid) and _is_ray_start(pid):
            _kill_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(pid):
                time.sleep(0.2)
            if _group_alive(pid):
                _kill_group(pid, signal.SIGKILL)
            stopped.append(n["spec"]["name"])
    if remove_dir:
        shutil.rmtree(state["root_dir"], ignore_errors=True)
    return stopped


# ---- process helpers --------------------------------------------------------------------------
def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the group?"""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the group leader only
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _is_ray_start(pid: int) -> bool:
    """Guard for state files: only signal a group whose leader is still our `ray start`."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # leader gone (its group lingers) or no /proc: trust the state file
    if not raw:
        return True  # a zombie leader
    cmdline = raw.split(b"\0")
    return any(part.endswith(b"ray") for part in cmdline) and b"start" in cmdline


def _tail(path: Path, n: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode(errors="replace")
