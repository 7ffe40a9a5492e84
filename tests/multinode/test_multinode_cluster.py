"""Three roles on four real Ray nodes of this machine: head (router), "cpu" (ingress + proxy
pool), two "gpu" nodes (one emulated LLM replica each), placed by custom resources. The app is
deployed from cluster/serve_multinode_replay.yaml with `serve deploy`, as a cloud head does;
placement is read back through the state API (cluster CLI); requests flow end to end over HTTP;
then one LLM node is stopped and the cluster keeps serving from the other."""

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.lifecycle import free_port
from cluster.local_multinode import NODE_NAME_LABEL

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


def _llm_replicas(cluster) -> list[dict]:
    """Serve's replica details of the llm deployment (state, node_id, ...), via the dashboard."""
    return app_status(cluster).get("deployments", {}).get("llm", {}).get("replicas", [])


def _llm_replica_states(cluster) -> list[str]:
    return sorted(r["state"] for r in _llm_replicas(cluster))


def _running_llm_nodes(cluster) -> list[str]:
    return sorted(r["node_id"] for r in _llm_replicas(cluster) if r["state"] == "RUNNING")


def complete(url: str, n: int, stream: bool = False, predict: int = 100, timeout: float = 60) -> httpx.Response:
    body = {"model": "any-model", "prompt": f"[[predict:{predict}]] count to {n}", "max_tokens": 256,
            "replay_output_tokens": n, "stream": stream}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=timeout)


def concurrently(url: str, lengths: list[int]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(lengths)) as pool:
        return list(pool.map(lambda n: complete(url, n), lengths))


class Load:
    """``workers`` clients sending requests back to back until the block ends; keeps every result."""

    def __init__(self, url: str, workers: int, tokens: int, predict: int):
        self.url, self.workers, self.tokens, self.predict = url, workers, tokens, predict
        self.results: list[tuple[float, int, int, str]] = []  # (done_at, status, completion tokens, replica)
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _client(self):
        while not self._stop.is_set():
            r = complete(self.url, self.tokens, predict=self.predict)
            used = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else -1
            with self._lock:
                self.results.append((time.monotonic(), r.status_code, used, r.headers.get("x-replica-id", "")))

    def replicas_since(self, t: float) -> set[str]:
        with self._lock:
            return {rep for at, _, _, rep in self.results if at > t}

    def __enter__(self):
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture(scope="module")
def deployed(local_cluster, tmp_path_factory):
    config = yaml.safe_load((ROOT / "cluster" / "serve_multinode_replay.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    # Slow enough that concurrent requests overlap (a few ms a token), so load builds up.
    app["args"]["llm"]["time_scale"] = 0.25
    # Predictions set by the prompt ("[[predict:N]]"), so the predicted work is known exactly.
    app["args"]["proxy"]["predictor"] = "marker"
    llm = next(d for d in app["deployments"] if d["name"] == "llm")
    # Serve's own rule (ongoing requests) could not scale up at this target: only the router's
    # predicted outstanding work can, so a scale-up below proves the custom policy drove it.
    llm["autoscaling_config"]["target_ongoing_requests"] = 1000
    llm["autoscaling_config"]["upscale_delay_s"] = 0
    path = tmp_path_factory.mktemp("serve") / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).with_name("serve"))
    res = subprocess.run([serve_cli, "deploy", str(path), "--address", local_cluster.dashboard_url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    wait_for(lambda: app_status(local_cluster).get("status") == "RUNNING", 150, "the app to be RUNNING", 2.0)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(url, 1), 60, "the LLM replica registered with the router")
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


def test_placement_autoscaling_requests_and_losing_an_llm_node(local_cluster, deployed):
    url = deployed
    # 1. At rest: every part on the node type its custom resource names (state API, via the CLI);
    #    one LLM replica, on a "gpu" node.
    status = cluster_status(local_cluster)
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert sorted(n["node_type"] for n in nodes.values()) == ["cpu_worker", "gpu_worker", "gpu_worker", "head"]
    where = placement_by_role(status)
    assert where["ingress"] == ["cpu_worker"]
    assert where["proxy"] == ["cpu_worker"]
    assert where[f"ssjf-router-{APP}"] == ["head"]
    assert where["llm"] == ["gpu_worker"]
    assert status["applications"][APP]["deployments"]["llm"]["replica_states"] == {"RUNNING": 1}

    # 2. Requests end to end: HTTP -> head's proxy -> ingress (cpu) -> proxy pool (cpu) ->
    #    router (head) -> the pinned LLM replica (gpu) and back, unary and streamed.
    for n, r in zip([7, 19, 3], concurrently(url, [7, 19, 3]), strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == n
    r = complete(url, 6, stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")

    # 3. Load: 8 clients x 400 predicted tokens = 3,200 tokens outstanding > 1,000 a replica, so
    #    the outstanding-work policy asks for a second replica, which lands on the other "gpu" node.
    with Load(url, workers=8, tokens=120, predict=400) as load:
        wait_for(lambda: _llm_replica_states(local_cluster).count("RUNNING") == 2, 90,
                 "Serve to scale the LLM deployment to 2 replicas", 1.0)
        scaled_at = time.monotonic()
        wait_for(lambda: len(load.replicas_since(scaled_at)) == 2, 30, "both replicas to serve the load")
    assert load.results and all(code == 200 and used == 120 for _, code, used, _ in load.results), load.results
    llm_nodes = set(_running_llm_nodes(local_cluster))
    assert len(llm_nodes) == 2  # one replica on each "gpu" node (llm_node: 1 each)
    assert {nodes[n]["node_type"] for n in llm_nodes} == {"gpu_worker"}

    # 4. Lose one "gpu" node (its raylet and every process on it); the other keeps serving.
    lost = sorted(llm_nodes)[0]
    local_cluster.stop_node(nodes[lost]["labels"][NODE_NAME_LABEL])  # "gpu-a" or "gpu-b"
    lengths = [8, 2, 11, 5, 20, 3]
    for n, r in zip(lengths, concurrently(url, lengths), strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == n
    wait_for(lambda: _healthy(url, 1), 30, "the router to drop the lost replica")
    # Serve sees the loss too: one replica RUNNING, on the node that remains; the replacement it
    # wants has no free llm_node (on a cloud the Ray autoscaler would launch a node), so it waits
    # rather than land elsewhere.
    wait_for(lambda: _running_llm_nodes(local_cluster) == sorted(llm_nodes - {lost}), 60,
             "Serve to see one running LLM replica, on the remaining node")
    # STOPPING: the lost node's replica (or one the autoscaler retires once the load is gone) on its
    # way out; seen on a loaded 2-core box. Any failed state still fails the test.
    assert set(_llm_replica_states(local_cluster)) <= {"RUNNING", "STARTING", "PENDING_MIGRATION", "RECOVERING",
                                                       "STOPPING"}

    # 5. Lose the last "gpu" node: the cluster says so plainly, at once: health shows no LLM
    #    replica and a request gets 503 "no_replica" with Retry-After, not a hang.
    local_cluster.stop_node(nodes[sorted(llm_nodes - {lost})[0]]["labels"][NODE_NAME_LABEL])
    wait_for(lambda: _healthy(url, 0), 30, "the router to report no LLM replica")
    t0 = time.monotonic()
    r = complete(url, 5, timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "no_replica" and int(r.headers["retry-after"]) >= 1
    assert time.monotonic() - t0 < 10  # answered, not left waiting (a bound, not a timing claim)
    # The cluster tool reports the same: both "gpu" nodes dead, no LLM replica alive anywhere.
    after = cluster_status(local_cluster)
    assert sorted(n["node_id"] for n in after["nodes"] if not n["alive"]) == sorted(llm_nodes)
    assert [a for a in after["actors"] if a["deployment"] == "llm"] == []
    assert placement_by_role(after)[f"ssjf-router-{APP}"] == ["head"]
