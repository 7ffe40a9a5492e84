"""Run summaries, ratios to a baseline and text tables: the one place loadgen, bench and the benchmarks
compute and lay out their numbers."""

import numpy as np
import pytest

from loadgen.summary import (
    compare,
    fmt,
    format_table,
    gain,
    markdown_row,
    markdown_rule,
    ratio,
    ratios_to_baseline,
    share_of_gain,
    slo_attainment,
    stats,
    summarize,
    text_table,
)


def test_stats_skip_non_finite_values_and_are_none_without_any():
    s = stats([1.0, 2.0, 3.0, 4.0, np.nan, np.inf])
    assert s["mean"] == pytest.approx(2.5) and s["p50"] == pytest.approx(2.5) and s["max"] == 4.0
    assert s["p99"] == pytest.approx(np.percentile([1, 2, 3, 4], 99))
    assert stats([np.nan], (99,)) == {"mean": None, "p99": None, "max": None}


def test_summary_reports_jct_percentiles_waits_and_whole_run_throughput():
    arrival = np.array([0.0, 1.0, 2.0, 3.0])
    started = np.array([0.0, 1.5, 2.0, 5.0])
    finished = np.array([1.0, 3.0, 4.0, np.nan])  # the last one failed
    s = summarize(arrival, finished, started_at=started, output_tokens=[1, 2, 3, 100])
    assert s["num_completed"] == 3 and s["num_failed"] == 1
    assert s["mean_jct_s"] == pytest.approx((1 + 2 + 2) / 3)
    assert s["p50_jct_s"] == pytest.approx(2.0)
    assert s["mean_queue_delay_s"] == pytest.approx((0 + 0.5 + 0 + 2) / 4)
    assert s["throughput_rps"] == pytest.approx(3 / 4.0)  # first arrival to last completion
    assert s["mean_jct_long_s"] is None  # the longest request never finished


def test_ratio_gain_and_share_are_none_when_undefined():
    assert ratio(3.0, 4.0) == pytest.approx(0.75) and gain(3.0, 4.0) == pytest.approx(0.25)
    assert ratio(None, 4.0) is None and ratio(3.0, 0.0) is None and gain(3.0, None) is None
    assert share_of_gain(8.0, best=6.0, base=10.0) == pytest.approx(0.5)  # half the best reduction
    assert share_of_gain(8.0, best=10.0, base=10.0) is None  # the best gained nothing: no share to take


def test_ratios_to_the_first_run():
    ratios = ratios_to_baseline({"fcfs": {"mean_jct_s": 4.0, "p99_jct_s": None},
                                 "ssjf": {"mean_jct_s": 3.0, "p99_jct_s": 9.0}}, ("mean_jct_s", "p99_jct_s"))
    assert list(ratios) == ["ssjf"]
    assert ratios["ssjf"]["mean_jct_s"] == pytest.approx(0.75)
    assert ratios["ssjf"]["p99_jct_s"] is None  # no baseline value: no ratio


def test_compare_and_table_show_ratios_to_fcfs():
    runs = {"fcfs": {"mean_jct_s": 10.0, "p99_jct_s": 50.0}, "ssjf": {"mean_jct_s": 6.0, "p99_jct_s": 80.0}}
    ratios = compare(runs)
    assert ratios["fcfs"]["mean_jct_s_ratio"] == 1.0
    assert ratios["ssjf"]["mean_jct_s_ratio"] == pytest.approx(0.6)
    assert ratios["ssjf"]["p99_jct_s_ratio"] == pytest.approx(1.6)
    assert "p50_jct_s_ratio" not in ratios["ssjf"]  # neither run has it
    table = format_table(runs)
    assert "vs fcfs" in table and "0.600" in table


def test_format_table_keeps_its_fixed_columns():
    runs = {"fcfs": {"mean_jct_s": 241.221, "p50_jct_s": 15.152, "p90_jct_s": 1067.212, "p99_jct_s": 1366.283,
                     "mean_queue_delay_s": 236.029, "throughput_rps": 0.663}}
    header, rule, row = format_table(runs).splitlines()
    assert header == "policy                     mean JCT        p50        p90        p99  mean wait      req/s   vs fcfs"
    assert rule == "-" * len(header)
    assert row == "fcfs                        241.221     15.152   1067.212   1366.283    236.029      0.663     1.000"


def test_text_table_aligns_columns_to_the_widest_cell():
    out = text_table(["metric", "a", "bb"], [["mean", "1.000", "-"], ["p99 long name", "12.5", "3"]])
    assert out.splitlines() == ["metric             a  bb",
                                "-------------  -----  --",
                                "mean           1.000   -",
                                "p99 long name   12.5   3"]


def test_markdown_and_missing_values():
    assert markdown_row(["a", 1, "-"]) == "| a | 1 | - |" and markdown_rule(3) == "|---|---|---|"
    assert fmt(None) == "-" and fmt(float("nan")) == "-" and fmt(0.5, "{:.1%}") == "50.0%"


def test_slo_attainment_counts_shed_and_unfinished_requests_as_missed():
    nan = np.nan
    arrival = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    first = [1.0, 5.0, 1.0, nan, nan, 1.0]
    finished = [8.0, 9.0, 20.0, nan, nan, 30.0]
    # met both; TTFT missed; JCT missed; shed; failed; no SLO at all (not counted)
    ttft = [2.0, 2.0, 2.0, 2.0, 2.0, None]
    jct = [10.0, 10.0, 10.0, 10.0, 10.0, None]
    shed = [False, False, False, True, False, False]
    out = slo_attainment(arrival, first, finished, ttft, jct, shed=shed)
    assert out["num_with_slo"] == 5 and out["num_slo_met"] == 1 and out["num_shed"] == 1
    assert out["slo_attainment"] == pytest.approx(1 / 5)
    assert out["ttft_slo_attainment"] == pytest.approx(2 / 5) and out["jct_slo_attainment"] == pytest.approx(2 / 5)


def test_slo_attainment_takes_one_objective_for_all_and_none_for_none():
    arrival, first, finished = [0.0, 1.0], [0.5, 9.0], [3.0, 12.0]
    only_jct = slo_attainment(arrival, first, finished, None, 5.0)
    assert only_jct["slo_attainment"] == 0.5 and only_jct["ttft_slo_attainment"] is None
    assert only_jct["num_shed"] is None  # not told which were shed
    assert slo_attainment(arrival, first, finished, None, None)["slo_attainment"] is None
    # a TTFT objective with no first-token time recorded is missed
    assert slo_attainment(arrival, None, finished, 100.0, None)["slo_attainment"] == 0.0


def test_format_table_adds_attainment_where_runs_scored_slos():
    runs = {"fcfs": {"mean_jct_s": 10.0, "slo_attainment": 0.5, "num_shed": 0},
            "slo": {"mean_jct_s": 6.0, "slo_attainment": 0.75, "num_shed": 12}}
    header, _, fcfs, slo = format_table(runs).splitlines()
    assert "SLO met" in header and "shed" in header
    assert slo.split()[-3:] == ["0.750", "12", "0.600"] and fcfs.split()[-3:] == ["0.500", "0", "1.000"]
