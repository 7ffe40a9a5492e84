"""The simulator under the slo policy: requests carry their SLOs to the scheduler, a rejected request
ends unrun (``SimResult.shed``, NaN times), and the report scores attainment (docs/slo.md)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from loadgen.cli import main
from loadgen.options import WorkloadOptions
from loadgen.simulator import SimWorkload, simulate
from loadgen.summary import slo_attainment
from router import SchedulerConfig
from router.cost_model import EngineProfile

ENGINE = EngineProfile.proportional(0.01)  # 10 ms per output token, nothing else


def slo_config(**kw):
    # the estimate starts exact for this engine: predicted service = predicted tokens x 10 ms
    config = dict(policy="slo", batching="none", slo_seconds_per_token=0.01, slo_first_token_s=0.0,
                  slo_guard_s=0.5)
    config.update(kw)
    return SchedulerConfig(**config)


def blocked_workload():
    """A 10 s request at 0, then at 1 s: one predicted to need 5 s that must be done by 4 s (it cannot
    make it), one with no SLO, and a short one with a generous SLO."""
    return SimWorkload.synthetic([0.0, 1.0, 1.0, 1.0], [1000, 500, 300, 100],
                                 slo_jct_s=[np.nan, 3.0, np.nan, 100.0])


def test_a_rejected_request_ends_unrun_and_the_others_run():
    res = simulate(blocked_workload(), slo_config(slo_infeasible="shed"), ENGINE, 1)
    assert res.shed.tolist() == [False, True, False, False]
    assert np.isnan(res.finished_at[1]) and np.isnan(res.dispatched_at[1]) and np.isnan(res.first_token_at[1])
    # the rest in SSJF order behind the first: the short one, then the one without an SLO
    np.testing.assert_allclose(res.finished_at[[0, 3, 2]], [10.0, 11.0, 14.0])
    assert res.extra["num_rejected"] == 1


def test_defer_mode_runs_the_infeasible_request_last():
    res = simulate(blocked_workload(), slo_config(slo_infeasible="defer"), ENGINE, 1)
    assert not res.shed.any()
    np.testing.assert_allclose(res.finished_at, [10.0, 19.0, 14.0, 11.0])


def test_an_urgent_request_is_served_before_shorter_ones_and_meets_its_slo():
    # Behind a 10 s request, a 3 s request due at 14 s (so it must start by 11 s) competes with many
    # short ones; ssjf serves the short ones first and it misses, slo serves it first and it meets it.
    arrivals = [0.0] + [1.0] * 11
    out = [1000, 300] + [50] * 10
    slo = [np.nan, 13.0] + [np.nan] * 10
    work = SimWorkload.synthetic(arrivals, out, slo_jct_s=slo)
    met = {}
    for policy in ("ssjf", "slo"):
        res = simulate(work, slo_config(policy=policy), ENGINE, 1)
        met[policy] = slo_attainment(res.arrival_at, res.first_token_at, res.finished_at, None, work.slo_jct_s,
                                     shed=res.shed)["slo_attainment"]
    assert met == {"ssjf": 0.0, "slo": 1.0}


def test_without_slos_the_slo_policy_runs_as_ssjf():
    rng = np.random.default_rng(3)
    n = 400
    arrivals = np.sort(rng.uniform(0, 300, n))
    out = rng.integers(1, 400, n)
    predicted = np.maximum(out * rng.lognormal(0, 0.5, n), 1.0)
    work = SimWorkload.synthetic(arrivals, out, predicted_tokens=predicted)
    for batching, slots in (("none", 1), ("continuous", 4)):
        a = simulate(work, SchedulerConfig(policy="ssjf", batching=batching, max_batch=slots), ENGINE, 2)
        b = simulate(work, SchedulerConfig(policy="slo", batching=batching, max_batch=slots), ENGINE, 2)
        np.testing.assert_array_equal(a.finished_at, b.finished_at)
        assert not b.shed.any()


def test_the_workload_carries_its_slo_columns_to_the_scheduler():
    opts = WorkloadOptions(trace="poisson", rate=1.0, num_requests=5, slo_jct_s=30.0)
    table = opts.build()
    assert table.column("slo_jct_s").to_pylist() == [30.0] * 5
    assert table.column("slo_ttft_s").null_count == 5
    work = SimWorkload.from_table(table, table.column("output_tokens").to_numpy())
    assert work.slo_jct_s.tolist() == [30.0] * 5 and np.isnan(work.slo_ttft_s).all()
    plain = WorkloadOptions(trace="poisson", rate=1.0, num_requests=5).build()
    assert "slo_jct_s" not in plain.column_names
    assert not SimWorkload.from_table(plain, plain.column("output_tokens").to_numpy()).has_slo
    with pytest.raises(ValueError, match="slo_ttft_s"):
        WorkloadOptions(slo_ttft_s=0.0)


def test_simulate_reports_attainment_and_marks_shed_requests(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "simulate", "--trace", "poisson", "--rate", "2", "--num-requests", "120", "--replicas", "1",
        "--policies", "fcfs,slo", "--slo-jct-s", "10", "--slo-infeasible", "shed", "--predictor", "oracle",
        "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    fcfs, slo = summary["policies"]["fcfs"], summary["policies"]["slo"]
    assert fcfs["num_with_slo"] == slo["num_with_slo"] == 120
    assert slo["num_shed"] == slo["num_rejected"] > 0 and fcfs["num_shed"] == 0
    assert slo["slo_attainment"] > fcfs["slo_attainment"]  # an overloaded replica: fcfs misses nearly all
    rows = pq.read_table(out / "requests.parquet").to_pylist()
    shed = [r for r in rows if r["status"] == "shed"]
    assert len(shed) == slo["num_shed"] and all(r["policy"] == "slo" for r in shed)
    assert all(r["finished_at"] != r["finished_at"] for r in shed)  # NaN: never ran
    assert all(r["slo_jct_s"] == 10.0 and r["slo_ttft_s"] is None for r in rows)
