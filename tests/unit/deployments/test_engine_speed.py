"""benchmarks/engine_speed.py on a tiny Llama: every mode runs through the real HFEngine, the
deadline reports what finished, and the run list parses."""

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from proxy_model.testing import make_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("engine_speed", ROOT / "benchmarks" / "engine_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


def test_runs_parse_and_grid(bench):
    runs = bench.parse_runs("none:1:8,static:32:64,continuous:128::50", default_requests=4, default_deadline=10.0)
    assert [(r["mode"], r["slots"], r["requests"], r["deadline_s"]) for r in runs] == [
        ("none", 1, 8, 10.0), ("static", 32, 64, 10.0), ("continuous", 128, 4, 50.0)]
    for bad in ("none:2", "fast:4", "static", "static:0", "static:4:8:-1"):
        with pytest.raises(ValueError):
            bench.parse_runs(bad, 4, None)
    grid = bench.grid(["none", "continuous"], [1, 4], 8, None)
    assert [(r["mode"], r["slots"]) for r in grid] == [("none", 1), ("continuous", 1), ("continuous", 4)]
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and bench.percentile([], 50) is None


def test_every_mode_runs_the_same_greedy_tokens(bench, tiny, tmp_path):
    out = tmp_path / "speed.json"
    rc = bench.main(["--model", tiny, "--device", "cpu", "--modes", "none,static,continuous", "--slots", "2",
                     "--requests", "3", "--max-tokens", "5", "--threads", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert rc == 0 and data["meta"]["dtype"] == "float32" and data["meta"]["device"] == "cpu"
    results = data["results"]
    assert [(r["mode"], r["slots"]) for r in results] == [("none", 1), ("static", 2), ("continuous", 2)]
    for r in results:
        assert r["done"] == 3 and not r["deadline_hit"] and r["tokens"] > 0 and r["ttft_p50_s"] is not None
    assert results[0]["tokens_per_request"] == results[1]["tokens_per_request"] == results[2]["tokens_per_request"]
    sizing = results[2]["cb_sizing"]
    assert sizing["slots"] == 2 and sizing["kv_pages"] * 0.85 >= 2 * sizing["tokens_per_slot"] / sizing["page_size"]


class _Stalled:
    """An engine whose requests never produce a token: only the deadline ends the run."""

    async def generate(self, req):
        import asyncio

        await asyncio.sleep(3600)
        yield None


def test_deadline_reports_what_finished(bench):
    import asyncio

    run = {"mode": "continuous", "slots": 2, "requests": 3, "deadline_s": 0.2}
    result = asyncio.run(bench.run_one(_Stalled(), run, [[1, 2]] * 3, 4))
    assert result["deadline_hit"] and result["done"] == 0 and result["tokens"] == 0
    assert 0.2 <= result["seconds"] < 2 and result["ttft_p50_s"] is None


def test_continuous_runs_128_slots_at_once_without_evictions(bench, tiny, tmp_path):
    """128 requests of ~180 tokens (23,000 in all) decode together in the auto-sized KV pages; the
    fixed default of before (256 pages x 64 tokens = 16,384) had to evict some of them."""
    results = {}
    for name, extra in (("auto", []), ("old", ["--kv-pages", "256", "--max-batch-tokens", "2048"])):
        out = tmp_path / f"{name}.json"
        rc = bench.main(["--model", tiny, "--device", "cpu", "--runs", "continuous:128:128", "--max-tokens", "160",
                         "--threads", "1", "--json", str(out), *extra])
        (results[name],) = json.loads(out.read_text())["results"]
        assert rc == 0 and results[name]["done"] == 128
    auto, old = results["auto"], results["old"]
    # Replies long enough to outlive the admission of all 128, so the peak speaks of the pages.
    assert min(auto["tokens_per_request"]) >= 100, auto["tokens_per_request"]
    assert auto["peak_streaming"] == 128 and auto["offloaded"] == 0, auto
    assert old["cb_sizing"]["kv_pages"] == 256 and old["offloaded"] > 0, old
    assert old["tokens_per_request"] == auto["tokens_per_request"]  # evicted requests are recomputed exactly
