"""Three roles on four real Ray nodes of this machine: head (router), "cpu" (ingress + proxy
pool), two "gpu" nodes (one emulated LLM replica each), placed by custom resources. The app is
deployed from cluster/serve_multinode_replay.yaml with `serve deploy`, as a cloud head does;
placement is read back through the state API (cluster CLI); requests flow end to end over HTTP;
then one LLM node is lost (killed at once) while a burst is in flight, and the cluster keeps serving
from the other: every request of the burst gets a whole answer or an OpenAI-style error, the router
settles with its counters balanced, and the next requests succeed."""

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from cluster.lifecycle import free_port
from cluster.local_multinode import NODE_NAME_LABEL

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(360)]

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


def one_request(url: str, i: int, n: int, stream: bool) -> tuple[str, str | None]:
    """Send request ``i`` and classify its answer: ("ok", None) for a whole answer, ("error", code) for an
    OpenAI-style error (in a stream: an error event followed by [DONE]), ("hung", None) for a client
    timeout, ("bad", what) for anything else (a plain-text error, a stream that just stops)."""
    body = {"model": "any-model", "prompt": f"[[predict:{n}]] burst {i}", "max_tokens": n,
            "replay_output_tokens": n, "stream": stream}
    try:
        if not stream:
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=90)
            payload = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
            if r.status_code == 200:
                ok = payload["usage"]["completion_tokens"] == n and len(payload["choices"][0]["text"].split()) == n
                return ("ok", None) if ok else ("bad", f"incomplete: {payload['usage']}")
            err = (payload or {}).get("error") or {}
            if {"message", "type", "param", "code"} <= set(err):
                return "error", err["code"]
            return "bad", f"{r.status_code} {r.text[:200]}"
        events, text, error = [], "", None
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=90) as r:
            if r.status_code != 200:
                r.read()
                err = r.json().get("error") or {}
                return ("error", err.get("code")) if {"message", "type", "param", "code"} <= set(err) else \
                    ("bad", f"{r.status_code} {r.text[:200]}")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if events[-1] != "[DONE]":
                        event = json.loads(events[-1])
                        if "error" in event:
                            error = event["error"]
                        elif event["choices"]:
                            text += event["choices"][0].get("text") or ""
        if events[-1:] != ["[DONE]"]:
            return "bad", f"stream without [DONE] ({len(text.split())} of {n} tokens)"
        if error is not None:
            return "error", error.get("code")
        return ("ok", None) if len(text.split()) == n else ("bad", f"{len(text.split())} of {n} tokens")
    except httpx.TimeoutException:
        return "hung", None


def router_settled(cluster, replicas: int, timeout_s: float = 60) -> dict:
    """The router's snapshot once nothing is queued, running or waiting and ``replicas`` are registered
    (read in a subprocess: this process never joins the cluster); AssertionError after ``timeout_s``."""
    script = f"""
import json, time, ray
ray.init(address={cluster.address!r}, logging_level="ERROR")
router = ray.get_actor("ssjf-router-{APP}", namespace="ssjf")
deadline = time.monotonic() + {timeout_s}
while True:
    snap = ray.get(router.snapshot.remote(), timeout=30)
    done = (snap["num_queued"], snap["num_running"], snap["num_waiters"], len(snap["replicas"])) == (0, 0, 0, {replicas})
    if done or time.monotonic() > deadline:
        print(json.dumps({{"settled": done, **snap}}, default=str))
        break
    time.sleep(0.2)
"""
    res = run_cli("-c", script, timeout=timeout_s + 60)
    assert res.returncode == 0, res.stderr[-3000:]
    snap = json.loads(res.stdout.strip().splitlines()[-1])
    assert snap["settled"], f"the router did not settle: {snap}"
    return snap


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
    # Deadlines of seconds, so that a call to a lost node's replica ends within the test's bounds
    # whatever Ray takes to declare the node dead.
    app["args"]["ingress"].update(first_token_timeout_s=8.0, token_timeout_s=8.0)
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

    # 4. Lose one "gpu" node mid-burst (its raylet and every process on it killed at once, as a machine
    #    lost); the other keeps serving. Every client of the burst gets a whole answer or an OpenAI-style
    #    error (a stream the lost replica had started: an error event, then [DONE]); none hangs.
    lost = sorted(llm_nodes)[0]
    burst = [(i, (200, 500, 900, 1400)[i % 4], i % 2 == 1) for i in range(16)]  # 0.5-4 s each
    with ThreadPoolExecutor(len(burst)) as pool:
        answers = [pool.submit(one_request, url, *req) for req in burst]
        # More running than one replica's 4 slots: both replicas are busy.
        wait_for(lambda: (h := _healthy(url, 2)) and h["num_running"] >= 5 and h, 60,
                 "the burst running on both replicas", 0.05)
        local_cluster.stop_node(nodes[lost]["labels"][NODE_NAME_LABEL], graceful=False)  # "gpu-a" or "gpu-b"
        outcomes = [a.result() for a in answers]
    print(f"[fault-matrix] worker node lost mid-burst: {len(outcomes)} requests, "
          f"{sum(o == 'ok' for o, _ in outcomes)} ok, errors {Counter(c for o, c in outcomes if o == 'error')}, "
          f"bad {sum(o == 'bad' for o, _ in outcomes)}, hung {sum(o == 'hung' for o, _ in outcomes)}")
    assert all(o in ("ok", "error") for o, _ in outcomes), outcomes
    assert any(o == "ok" for o, _ in outcomes), outcomes
    # The router: nothing queued, running or waiting, the lost replica dropped; its counters balance.
    snap = router_settled(local_cluster, replicas=1)
    c = snap["counters"]
    assert c["dispatched"] + c["adopted"] == c["completed"] + c["cancelled"] + c["failed"] + c["requeued"], c
    assert c["enqueued"] == c["dispatched"] + c["withdrawn"], c
    # The next requests succeed.
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
    # The cluster tool reports the same: both "gpu" nodes dead, no LLM replica alive anywhere. A node
    # killed without a goodbye (step 4) is marked dead only when the GCS's health checks of its raylet
    # run out (about 15 s by Ray's defaults, longer on a loaded box), so wait for that with a bound.
    def both_dead():
        status = cluster_status(local_cluster)
        return status if sorted(n["node_id"] for n in status["nodes"] if not n["alive"]) == sorted(llm_nodes) \
            else None

    after = wait_for(both_dead, 90, "the cluster status to list both lost gpu nodes as dead", period_s=3.0)
    assert [a for a in after["actors"] if a["deployment"] == "llm"] == []
    assert placement_by_role(after)[f"ssjf-router-{APP}"] == ["head"]
