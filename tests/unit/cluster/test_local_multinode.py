"""cluster/local_multinode.py without starting Ray: node specs, the `ray start` command lines,
and the guard that keeps `local down` from signalling anything but our own `ray start` groups."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from cluster import local_multinode as lm
from cluster.local_multinode import LocalCluster, NodeSpec


def test_default_topology_is_head_cpu_and_two_llm_nodes():
    specs = lm.default_topology()
    assert [(s.name, s.node_type, s.head) for s in specs] == [
        ("head", "head", True), ("cpu", "cpu_worker", False), ("gpu-a", "gpu_worker", False), ("gpu-b", "gpu_worker", False)]
    assert specs[0].resources == {"router_node": 1}
    assert {"ingress_node", "proxy_node"} <= set(specs[1].resources)
    assert all(s.resources == {"llm_node": 1} for s in specs[2:])


@pytest.mark.parametrize("kw, msg", [({"name": ""}, "name"), ({"name": "a b"}, "name"),
                                     ({"num_cpus": -1}, "num_cpus"), ({"resources": {"GPU": 1}}, "custom resources"),
                                     ({"resources": {"x": -1}}, "custom resources")])
def test_node_spec_validation(kw, msg):
    base = {"name": "n", "node_type": "t"}
    with pytest.raises(ValueError, match=msg):
        NodeSpec(**{**base, **kw})


def test_cluster_needs_exactly_one_head_and_unique_names(tmp_path):
    with pytest.raises(ValueError, match="exactly one node must be the head"):
        LocalCluster([NodeSpec("a", "t")], root_dir=tmp_path)
    with pytest.raises(ValueError, match="unique"):
        LocalCluster([NodeSpec("a", "t", head=True), NodeSpec("a", "t")], root_dir=tmp_path)


def test_start_commands_use_own_temp_dirs_free_ports_and_custom_resources(tmp_path):
    c = LocalCluster(root_dir=tmp_path)
    head, cpu = c.specs[0], c.specs[1]
    hcmd = c._command(head, tmp_path / "head")
    wcmd = c._command(cpu, tmp_path / "cpu")
    assert hcmd[1:3] == ["start", "--block"] and "--head" in hcmd and f"--port={c.gcs_port}" in hcmd
    assert f"--temp-dir={tmp_path / 'head'}" in hcmd and f"--temp-dir={tmp_path / 'cpu'}" in wcmd
    assert f"--address=127.0.0.1:{c.gcs_port}" in wcmd and "--head" not in wcmd
    assert json.loads(next(a for a in wcmd if a.startswith("--resources="))[len("--resources="):]) == cpu.resources
    # Never Ray's fixed defaults, which another Ray on this machine may hold.
    joined = " ".join(hcmd + wcmd)
    for fixed in ("=6379", "=8265", "=10001", "=52365"):
        assert fixed not in joined
    assert "--min-worker-port=0" in wcmd and "--max-worker-port=0" in wcmd


def test_stop_node_of_unknown_name_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no node named 'x'"):
        LocalCluster(root_dir=tmp_path).stop_node("x")


def test_local_down_leaves_a_process_group_that_is_not_ray_start_alone(tmp_path):
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        # Until the child's exec shows in /proc its cmdline can read empty, which the guard
        # treats as a zombie leader of our own: wait for it (a loaded machine makes this visible).
        deadline = time.monotonic() + 10
        while b"sleep" not in Path(f"/proc/{other.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        state = tmp_path / "cluster.json"
        state.write_text(json.dumps({"root_dir": str(tmp_path / "gone"), "nodes": [
            {"pid": other.pid, "spec": {"name": "head", "head": True}}]}))
        assert lm._group_alive(other.pid)
        assert lm.stop_from_state(state) == []
        assert other.poll() is None  # still running: not ours to stop
    finally:
        other.kill()
        other.wait()
    assert not lm._group_alive(other.pid)


def test_multinode_serve_config_places_every_part_on_the_local_topology():
    from pathlib import Path

    from cluster import tools

    root = Path(__file__).resolve().parents[3]
    findings = tools.check(lm.as_cluster_config(lm.default_topology()),
                           tools.load_serve_config(root / "cluster" / "serve_multinode_replay.yaml"))
    assert all(f.level is tools.Level.OK for f in findings), findings
    assert sorted(f.message.rsplit("-> ", 1)[1] for f in findings) == ["cpu_worker", "cpu_worker", "gpu_worker", "head"]
