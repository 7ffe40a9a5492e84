"""``router.mode: serve-default`` on a live replay cluster (loopback): the baseline a user would pick
instead of the central router. The app serves with no router actor at all (Serve's default request
router places each call; a replica takes at most its slots), and ``ssjf-cluster bench`` runs it beside
SSJF on the same workload and reports SSJF as ratios to it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import ray
import yaml
from click.testing import CliRunner

from cluster.cli import main
from deployments.config import AppConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "replay-model"
TOKENS = 80


async def _completion(client: httpx.AsyncClient, i: int) -> tuple[int, str, int]:
    """One request (odd ones stream): (status, the replica that served it, completion tokens)."""
    body = {"model": MODEL, "prompt": f"job {i}", "max_tokens": TOKENS, "replay_output_tokens": TOKENS,
            "stream": i % 2 == 1}
    if not body["stream"]:
        r = await client.post("/v1/completions", json=body)
        tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else -1
        return r.status_code, r.headers.get("x-replica-id", ""), tokens
    tokens, done = -1, False
    async with client.stream("POST", "/v1/completions", json={**body, "stream_options": {"include_usage": True}}) as r:
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and (usage := json.loads(line[6:]).get("usage")):
                tokens = usage["completion_tokens"]
        return (r.status_code if done else -1), r.headers.get("x-replica-id", ""), tokens


def test_serve_default_serves_with_no_router_actor(deploy, replay_config):
    # One slot per replica: a replica takes one call at a time, so concurrent requests queue in Serve
    # and must be spread over both replicas by Serve's own request router.
    cfg = replay_config("servedefault", router={"mode": "serve-default"},
                        llm={"batching": "none", "time_scale": 0.1})
    app = deploy(cfg)
    names = AppConfig.from_dict(cfg)
    with pytest.raises(ValueError):
        ray.get_actor(names.router_actor_name, namespace=names.router.namespace)

    with httpx.Client(base_url=app.url, timeout=60) as http:
        health = http.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {"status": "ok", "mode": "serve-default", "num_replicas": 2}

    async def burst():
        async with httpx.AsyncClient(base_url=app.url, timeout=httpx.Timeout(120)) as client:
            return await asyncio.gather(*(_completion(client, i) for i in range(6)))

    results = asyncio.run(burst())
    assert [(status, tokens) for status, _, tokens in results] == [(200, TOKENS)] * 6, results
    assert len({replica for _, replica, _ in results}) == 2, results  # both replicas served

    with httpx.Client(base_url=app.url, timeout=60) as http:
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert 'ssjf_requests_total{endpoint="completions",status="200"} 6.0' in metrics.text
    # Still no router: nothing on the request path created one.
    with pytest.raises(ValueError):
        ray.get_actor(names.router_actor_name, namespace=names.router.namespace)


@pytest.mark.slow
def test_bench_compares_ssjf_with_serve_default(serve_url, replay_config, tmp_path):
    cfg = replay_config("sdbench", proxy={"predictor": "heuristic"},
                        llm={"num_replicas": 2, "batching": "none", "time_scale": 0.02})
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, [
        "bench", "--config", str(config_path), "--policies", "ssjf,serve-default", "--trace", "poisson",
        "--load", "0.8", "--num-requests", "8", "--seed", "5", "--warmup", "1", "--out", str(out), "--no-progress",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # serve-default is the baseline whenever listed: it runs first and every ratio is to it.
    assert "ssjf/serve-default" in result.stdout and "vs serve-default" in result.stdout
    summary = json.loads((out / "bench.json").read_text())
    assert list(summary["policies"]) == ["serve-default", "ssjf"] and summary["baseline"] == "serve-default"
    for policy in ("serve-default", "ssjf"):
        s = summary["policies"][policy]
        assert s["num_requests"] == 8 and s["num_completed"] == 8, s
    row = summary["vs_baseline"]["ssjf"]
    assert row["mean_jct_s"] > 0 and row["p99_jct_s"] > 0
    assert "mean_jct_s_ratio" in summary["ratios_vs_serve-default"]["ssjf"]
    assert summary["cluster"]["serve_default"] == {"llm_max_ongoing_requests": 1,
                                                   "simulated_as": "fcfs, late-binding, no work stealing"}
    assert set(summary["simulated"]["policies"]) == {"serve-default", "ssjf"}
    config = json.loads((out / "serve-default" / "config.json").read_text())
    assert config["policy"] == "serve-default"
