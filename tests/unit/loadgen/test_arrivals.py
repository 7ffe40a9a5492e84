"""Arrival processes: empirical rate and CV, trace formats, replay scaling, wrap-around, seeds."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from loadgen.arrivals import Trace, gamma, load_trace, parse_arrival_kind, poisson, trace_arrivals


def rate_and_cv(times):
    gaps = np.diff(times)
    return 1.0 / gaps.mean(), gaps.std() / gaps.mean()


def test_poisson_rate_and_cv():
    times = poisson(5.0, 20000, seed=1)
    assert times[0] == 0 and np.all(np.diff(times) >= 0) and len(times) == 20000
    rate, cv = rate_and_cv(times)
    assert rate == pytest.approx(5.0, rel=0.03)
    assert cv == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_cv(cv):
    rate, got_cv = rate_and_cv(gamma(3.0, cv, 20000, seed=7))
    assert rate == pytest.approx(3.0, rel=0.03 * cv)
    assert got_cv == pytest.approx(cv, rel=0.1)


def test_seeds_are_deterministic_and_distinct():
    assert np.array_equal(poisson(2.0, 100, seed=3), poisson(2.0, 100, seed=3))
    assert not np.array_equal(poisson(2.0, 100, seed=3), poisson(2.0, 100, seed=4))
    assert np.array_equal(gamma(2.0, 3.0, 100, seed=3), gamma(2.0, 3.0, 100, seed=3))


@pytest.mark.parametrize("call, match", [
    (lambda: poisson(0, 10), "rate"),
    (lambda: poisson(1.0, 0), "n"),
    (lambda: gamma(1.0, 0, 10), "cv"),
    (lambda: gamma(float("nan"), 1, 10), "rate"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def write_azure(path, seconds, gz=False):
    base = np.datetime64("2023-11-16T18:15:46.6805900")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i, s in enumerate(seconds):
        ts = str(base + np.timedelta64(int(round(s * 1e9)), "ns")).replace("T", " ")
        lines.append(f"{ts},{100 + i},{10 + i}")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_azure_csv_parses_datetimes(tmp_path):
    trace = load_trace(write_azure(tmp_path / "t.csv", [0.0, 0.5, 2.0, 2.25]))
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.5, 2.0, 2.25], atol=1e-6)
    assert trace.output_tokens.tolist() == [10, 11, 12, 13]
    assert trace.mean_rate == pytest.approx(3 / 2.25)
    # gzipped, with an unhelpful name: detected from the content
    again = load_trace(write_azure(tmp_path / "t.data", [0.0, 0.5, 2.0, 2.25], gz=True))
    np.testing.assert_allclose(again.arrival_s, trace.arrival_s)


def test_mooncake_jsonl_ms_timestamps(tmp_path):
    recs = [{"timestamp": t, "input_length": 10, "output_length": o, "hash_ids": [0]}
            for t, o in [(0, 5), (0, 6), (1500, 7), (4000, 8)]]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 0.0, 1.5, 4.0]
    assert trace.output_tokens.tolist() == [5, 6, 7, 8]


def test_builtin_traces():
    conv = load_trace("azure-conv")
    assert len(conv) == 19366
    assert conv.mean_rate == pytest.approx(5.5, rel=0.05)
    assert len(load_trace("azure-code")) == 8819


def test_unknown_trace_errors(tmp_path):
    with pytest.raises(ValueError, match="azure-conv"):
        load_trace("azure")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="TIMESTAMP"):
        load_trace(tmp_path / "x.csv")


TRACE = Trace("t", np.array([0.0, 1.0, 1.5, 4.0]))  # gaps 1, 0.5, 2.5; mean gap 4/3


def test_replay_keeps_times_and_scales():
    np.testing.assert_allclose(trace_arrivals(TRACE, 4), [0.0, 1.0, 1.5, 4.0])
    np.testing.assert_allclose(trace_arrivals(TRACE, 4, time_scale=2.0), [0.0, 2.0, 3.0, 8.0])
    times = trace_arrivals(TRACE, 4, rate=3.0)
    assert (len(times) - 1) / times[-1] == pytest.approx(3.0)
    # rescaling keeps the shape of the gaps
    np.testing.assert_allclose(np.diff(times) / np.diff(times)[0], [1.0, 0.5, 2.5])


def test_replay_wraps_around_shifted_in_time():
    times = trace_arrivals(TRACE, 9)
    # after the last request the trace repeats one mean gap (4/3 s) later
    np.testing.assert_allclose(np.diff(times), [1.0, 0.5, 2.5, 4 / 3, 1.0, 0.5, 2.5, 4 / 3])
    long = trace_arrivals(load_trace("azure-conv"), 50000, rate=2.0, seed=1)
    assert len(long) == 50000 and np.all(np.diff(long) >= 0)
    assert (len(long) - 1) / long[-1] == pytest.approx(2.0)


def test_replay_seed_picks_window():
    trace = load_trace("azure-conv")
    a = trace_arrivals(trace, 200, rate=1.0, seed=5)
    assert np.array_equal(a, trace_arrivals(trace, 200, rate=1.0, seed=5))
    assert not np.allclose(a, trace_arrivals(trace, 200, rate=1.0, seed=6))
    # burstier than Poisson? at least not constant
    assert rate_and_cv(a)[1] > 0.1


def test_replay_simultaneous_window_with_rate():
    trace = Trace("zeros", np.array([0.0, 0.0, 0.0, 0.0, 10.0]))
    np.testing.assert_allclose(trace_arrivals(trace, 3, rate=2.0), [0.0, 0.5, 1.0])


def test_replay_argument_errors():
    with pytest.raises(ValueError, match="not both"):
        trace_arrivals(TRACE, 3, rate=1.0, time_scale=2.0)
    with pytest.raises(ValueError, match="time_scale"):
        trace_arrivals(TRACE, 3, time_scale=0)
    with pytest.raises(ValueError, match="sorted"):
        Trace("bad", np.array([1.0, 0.0]))


def test_parse_arrival_kind():
    assert parse_arrival_kind("poisson") == ("poisson", None)
    assert parse_arrival_kind("gamma:2.5") == ("gamma", 2.5)
    assert parse_arrival_kind("azure-conv") == ("trace", None)
    assert parse_arrival_kind("gamma_trace.csv") == ("trace", None)
    for bad in ["gamma", "gamma:x", "gamma:-1", ""]:
        with pytest.raises(ValueError, match="gamma|trace"):
            parse_arrival_kind(bad)
