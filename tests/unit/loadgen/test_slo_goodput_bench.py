"""benchmarks/slo_goodput.py: goodput is the largest load whose attainment, and every smaller load's,
reaches the target; a tiny sweep runs every policy row and scores it."""

import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("slo_goodput", ROOT / "benchmarks" / "slo_goodput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_goodput_stops_at_the_first_load_that_misses(bench):
    assert bench.goodput([(0.3, 0.99), (0.5, 0.95), (0.4, 0.97), (0.6, 0.8), (0.7, 0.93)], 0.9) == 0.5
    assert bench.goodput([(0.3, 0.5), (0.4, 0.95)], 0.9) is None
    assert bench.goodput([(0.3, 0.95), (0.4, None)], 0.9) == 0.3


def test_a_tiny_sweep_scores_every_policy(bench):
    args = Namespace(dataset="arena", trace="poisson", num_requests=150, seed=0, predictor="noisy:0.6",
                     policies=list(bench.POLICIES), loads=[0.4, 3.0], slo_x=10.0, slo_ttft_s=None, target=0.9,
                     guard_x=1.0, aging="slo", aging_x=0.5)
    result = bench.run_scenario("paper-like", args)
    assert set(result["rows"]) == set(bench.POLICIES)
    assert result["slo_jct_s"] == pytest.approx(10 * result["mean_unloaded_s"])
    for rows in result["rows"].values():
        assert [x["load"] for x in rows] == [0.4, 3.0]
        assert all(0 <= x["attainment"] <= 1 for x in rows)
    shed = result["rows"]["slo shed"]
    assert shed[1]["num_shed"] > 0 and result["rows"]["slo defer"][1]["num_shed"] == 0
    # three times the capacity: nobody sustains it; fcfs misses most
    assert result["rows"]["fcfs"][1]["attainment"] < 0.5
    assert "slo shed" in bench.markdown(result, 0.9)
