"""Engine cost model: the formula, its closed forms, the cited default and loading profiles."""

import json
import math

import pytest

from router.cost_model import EngineProfile, fit_profile


def test_span_is_the_sum_of_its_iterations():
    e = EngineProfile.default()
    p, b, c = 300, 5, 2000
    total = e.iteration_time_s(p, b, c)
    ctx = c + p + b
    for k in range(2, 40):
        total_k = total + sum(e.iteration_time_s(0, b, c + p + i * b) for i in range(1, k))
        assert e.span_s(k, p, b, c) == pytest.approx(total_k, rel=1e-12)
    assert e.span_s(0, p, b, c) == 0.0
    assert ctx == c + p + b


@pytest.mark.parametrize("p,b,c", [(0, 1, 0), (500, 3, 100), (0, 8, 9000), (2000, 1, 0)])
def test_iterations_done_is_the_first_boundary_at_or_after_the_elapsed_time(p, b, c):
    e = EngineProfile.default()
    for k in range(1, 60):
        t = e.span_s(k, p, b, c)
        assert e.iterations_done(t, p, b, c) == k  # exactly on a boundary
        assert e.iterations_done(t - 1e-6, p, b, c) == k
        assert e.iterations_done(t + 1e-6, p, b, c) == k + 1
    assert e.iterations_done(0.0, p, b, c) == 1


def test_default_profile_matches_the_published_measurements_it_cites():
    e = EngineProfile.default()
    # Linear layers (Vidur mlp.csv, Llama-2-7b-hf on A100, TP1, x32 layers): 9.31 ms at 1 token,
    # 9.71 ms at 64, 12.27 ms at 128, 17.74 ms at 256, 255.1 ms at 4096.
    linear = {1: 9.31e-3, 64: 9.71e-3, 128: 12.27e-3, 256: 17.74e-3, 4096: 255.1e-3}
    for n, measured in linear.items():
        model = math.hypot(e.weights_floor_s, e.per_token_s * n)
        assert model == pytest.approx(measured, rel=0.05), n
    # CPU overhead (Vidur cpu_overheads.csv): 2.98 ms at batch 8, 12.56 ms at batch 64.
    assert e.overhead_s + 8 * e.per_seq_s == pytest.approx(2.98e-3, rel=0.02)
    assert e.overhead_s + 64 * e.per_seq_s == pytest.approx(12.56e-3, rel=0.02)
    assert "vidur" in e.source.lower()
    # A lone decode with 1,000 cached tokens: ~11 ms per token (~90 tokens/s), the usual 7B/A100 figure.
    assert 0.009 < e.iteration_time_s(0, 1, 1000) < 0.013


def test_batching_is_nearly_free_per_token_while_memory_bound():
    e = EngineProfile.default()
    one = e.iteration_time_s(0, 1, 500)
    eight = e.iteration_time_s(0, 8, 8 * 500)
    assert eight < 1.5 * one  # 8 tokens for < 1.5x the time of 1


def test_profile_round_trips_through_json(tmp_path):
    e = EngineProfile(overhead_s=1e-3, per_seq_s=1e-4, weights_floor_s=5e-3, per_token_s=2e-5,
                      per_context_token_s=1e-7, name="x", source="test")
    path = tmp_path / "p.json"
    e.save(path)
    assert EngineProfile.load(path) == e


def test_measured_profile_is_fitted(tmp_path):
    truth = EngineProfile(overhead_s=2e-3, per_seq_s=3e-4, weights_floor_s=0.0, per_token_s=5e-5,
                          per_context_token_s=2e-7)
    rows = []
    for p in (0, 100, 1000):
        for b in (1, 4, 16):
            for c in (0, 5000):
                rows.append({"num_prefill_tokens": p, "batch_size": b, "num_context_tokens": c,
                             "time_s": truth.iteration_time_s(p, b, c)})
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"name": "cpu-box", "measurements": rows}))
    fitted = EngineProfile.load(path)
    assert fitted.name == "cpu-box"
    for f in ("overhead_s", "per_seq_s", "per_token_s", "per_context_token_s"):
        assert getattr(fitted, f) == pytest.approx(getattr(truth, f), rel=1e-6)


def test_bad_profiles_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="per_token_s must be a finite number >= 0, got -1"):
        EngineProfile(per_token_s=-1)
    with pytest.raises(ValueError, match="zero cost"):
        EngineProfile(overhead_s=0, per_seq_s=0, weights_floor_s=0, per_token_s=0)
    bad = tmp_path / "bad.json"
    bad.write_text('{"overhead": 1}')
    with pytest.raises(ValueError, match="unknown engine profile keys"):
        EngineProfile.load(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        EngineProfile.load(bad)
    with pytest.raises(ValueError, match="not found"):
        EngineProfile.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="at least 4 measurements"):
        fit_profile([{"num_prefill_tokens": 0, "batch_size": 1, "num_context_tokens": 0, "time_s": 1}])


def test_proportional_engine_costs_the_same_every_iteration():
    e = EngineProfile.proportional(0.01)
    assert e.iteration_time_s(1000, 8, 10**6) == pytest.approx(0.01)
    assert e.request_time_s(500, 37) == pytest.approx(0.37)
