"""Three roles on four real Ray nodes of this machine: head (router), "cpu" (ingress + proxy
pool), two "gpu" nodes (one emulated LLM replica each), placed by custom resources. The app is
deployed from cluster/serve_multinode_replay.yaml with `serve deploy`, as a cloud head does;
placement is read back through the state API (cluster CLI); requests flow end to end over HTTP;
then one LLM node is stopped and the cluster keeps serving from the other."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.local_multinode import NODE_NAME_LABEL, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
APP = "ssjf"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def cluster_status(cluster) -> dict:
    res = run_cli("-m", "cluster.cli", "status", "--address", cluster.address,
                  "--dashboard-url", cluster.dashboard_url, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def wait_for(predicate, timeout_s: float, what: str, period_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(period_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


def app_status(cluster) -> dict:
    """Serve's view through the dashboard REST API (what `serve status` prints)."""
    try:
        r = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=5)
        return r.json().get("applications", {}).get(APP, {}) if r.status_code == 200 else {}
    except httpx.HTTPError:
        return {}


def _llm_replica_states(cluster) -> list[str]:
    deployments = app_status(cluster).get("deployments", {})
    return sorted(r["state"] for r in deployments.get("llm", {}).get("replicas", []))


def complete(url: str, n: int, stream: bool = False) -> httpx.Response:
    body = {"model": "any-model", "prompt": f"count to {n}", "max_tokens": 256, "replay_output_tokens": n,
            "stream": stream}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def concurrently(url: str, lengths: list[int]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(lengths)) as pool:
        return list(pool.map(lambda n: complete(url, n), lengths))


@pytest.fixture(scope="module")
def deployed(local_cluster, tmp_path_factory):
    config = yaml.safe_load((ROOT / "cluster" / "serve_multinode_replay.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    # Slow enough that concurrent requests overlap (about 5 ms a token), so both replicas work.
    config["applications"][0]["args"]["llm"]["time_scale"] = 0.25
    path = tmp_path_factory.mktemp("serve") / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).with_name("serve"))
    res = subprocess.run([serve_cli, "deploy", str(path), "--address", local_cluster.dashboard_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    wait_for(lambda: app_status(local_cluster).get("status") == "RUNNING", 150, "the app to be RUNNING", 2.0)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(url, 2), 60, "both LLM replicas registered with the router")
    return url


def _healthy(url: str, replicas: int):
    try:
        r = httpx.get(f"{url}/healthz", timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json().get("num_replicas") == replicas and r.json()


def placement_by_role(status: dict) -> dict[str, list[str]]:
    """{deployment or actor name: [node type of each alive replica]}."""
    out: dict[str, list[str]] = {}
    for a in status["actors"]:
        key = a["deployment"] or a["name"]
        out.setdefault(key, []).append(a["node_type"])
    return {k: sorted(v) for k, v in out.items()}


def test_placement_requests_and_losing_an_llm_node(local_cluster, deployed):
    url = deployed
    # 1. Every part sits on the node type its custom resource names (state API, via the CLI).
    status = cluster_status(local_cluster)
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert sorted(n["node_type"] for n in nodes.values()) == ["cpu_worker", "gpu_worker", "gpu_worker", "head"]
    where = placement_by_role(status)
    assert where["ingress"] == ["cpu_worker"]
    assert where["proxy"] == ["cpu_worker"]
    assert where["llm"] == ["gpu_worker", "gpu_worker"]
    assert where[f"ssjf-router-{APP}"] == ["head"]
    llm_nodes = {a["node_id"] for a in status["actors"] if a["deployment"] == "llm"}
    assert len(llm_nodes) == 2  # one replica on each "gpu" node
    assert status["applications"][APP]["deployments"]["llm"]["replica_states"] == {"RUNNING": 2}

    # 2. Requests flow end to end: HTTP -> head's proxy -> ingress (cpu) -> proxy pool (cpu) ->
    #    router (head) -> the pinned LLM replica (gpu) and back; both LLM nodes serve.
    lengths = [130, 90, 125, 112, 140, 104, 118, 133]
    responses = concurrently(url, lengths)  # 8 at once: more than one replica's 4 slots
    for n, r in zip(lengths, responses, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == n
    assert len({r.headers["x-replica-id"] for r in responses}) == 2  # both LLM nodes served
    r = complete(url, 6, stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")

    # 3. Lose one "gpu" node (its raylet and every process on it); the other keeps serving.
    gpu_a = sorted(llm_nodes)[0]
    victim = nodes[gpu_a]["labels"][NODE_NAME_LABEL]  # "gpu-a" or "gpu-b"
    local_cluster.stop_node(victim)
    lengths = [8, 2, 11, 5, 20, 3]
    for n, r in zip(lengths, concurrently(url, lengths), strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == n
    wait_for(lambda: _healthy(url, 1), 30, "the router to drop the lost replica")
    after = cluster_status(local_cluster)
    dead = [n for n in after["nodes"] if not n["alive"]]
    assert [n["node_id"] for n in dead] == [gpu_a]
    alive_llm = [a for a in after["actors"] if a["deployment"] == "llm"]
    assert [a["node_id"] for a in alive_llm] == [next(iter(llm_nodes - {gpu_a}))]
    # Serve sees the loss too: one replica RUNNING; the replacement it wants has no free llm_node
    # (the Ray autoscaler would launch a node on a cloud), so it waits rather than land elsewhere.
    states = wait_for(lambda: _llm_replica_states(local_cluster) if _llm_replica_states(local_cluster).count("RUNNING") == 1
                      else None, 60, "Serve to see one running LLM replica")
    assert set(states) <= {"RUNNING", "STARTING", "PENDING_MIGRATION", "RECOVERING"}, states
