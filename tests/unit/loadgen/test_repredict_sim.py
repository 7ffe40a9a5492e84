"""The simulator's remaining-length re-predictor: the tau it is asked for, at each progress point."""

import json

import numpy as np
import pytest

from loadgen.repredict_sim import RepredictorSpec, TauTable, realised_taus, remaining_predictions


def lengths(n=8000, seed=0):
    return np.random.default_rng(seed).lognormal(5.0, 1.0, n).round().astype(np.int64) + 1


def test_oracle_predicts_the_true_remaining_length_at_every_progress_point():
    out = np.array([1, 10, 11, 25])
    cps = remaining_predictions(out, 10, "oracle", seed=0)
    # progress points k = 10, 20, ... strictly before the last token
    assert [cps.of(j).tolist() for j in range(4)] == [[], [], [1.0], [15.0, 5.0]]


@pytest.mark.parametrize("tau", [0.3, 0.7])
def test_noisy_remaining_has_the_asked_tau_among_the_requests_still_running(tau):
    out = lengths(20000)
    cps = remaining_predictions(out, 16, RepredictorSpec.parse(f"noisy:{tau}"), seed=1)
    for k, got in realised_taus(out, cps, [16, 128, 320]).items():
        assert got == pytest.approx(tau, abs=0.04), k
        alive = out > k
        # the marginal of the true remaining lengths there: only the ranking is noisy
        pred = cps.values[cps.offset[np.flatnonzero(alive)] + k // 16 - 1]
        np.testing.assert_array_equal(np.sort(pred), np.sort(out[alive] - k))


def test_measured_table_sets_the_tau_per_progress_point_by_interpolation(tmp_path):
    path = tmp_path / "remaining_tau.json"
    path.write_text(json.dumps({"points": [{"k": 0, "tau": 0.2}, {"k": 512, "tau": 0.8}]}))
    table = TauTable.load(path)
    assert table.at(0) == 0.2 and table.at(256) == pytest.approx(0.5) and table.at(4096) == 0.8
    out = lengths(12000)
    cps = remaining_predictions(out, 32, RepredictorSpec.parse(f"measured:{path}"), seed=0)
    got = realised_taus(out, cps, [32, 256, 512])
    assert got[32] == pytest.approx(table.at(32), abs=0.04)
    assert got[256] == pytest.approx(0.5, abs=0.04) and got[512] == pytest.approx(0.8, abs=0.05)


def test_noise_persists_between_progress_points_of_one_request():
    out = lengths(4000)
    spec = RepredictorSpec.parse("noisy:0.5", noise_tokens=1e9)
    steady = remaining_predictions(out, 16, spec, seed=0)
    fresh = remaining_predictions(out, 16, RepredictorSpec.parse("noisy:0.5", noise_tokens=0), seed=0)
    long = np.flatnonzero(out > 64)

    def step_corr(cps):  # rank correlation of consecutive re-predictions of the same requests
        a = cps.values[cps.offset[long] + 1]  # k = 32
        b = cps.values[cps.offset[long] + 2]  # k = 48
        return np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1]

    assert step_corr(steady) > 0.95 > step_corr(fresh)


def test_seeded_and_validated():
    out = lengths(500)
    a = remaining_predictions(out, 8, "noisy:0.5", seed=3)
    np.testing.assert_array_equal(a.values, remaining_predictions(out, 8, "noisy:0.5", seed=3).values)
    assert not np.array_equal(a.values, remaining_predictions(out, 8, "noisy:0.5", seed=4).values)
    with pytest.raises(ValueError, match="unknown re-predictor"):
        RepredictorSpec.parse("psychic")
    with pytest.raises(ValueError, match="every >= 1"):
        remaining_predictions(out, 0, "oracle", seed=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        TauTable((0.0, 0.0), (0.5, 0.6))


def test_reads_the_remaining_length_predictors_own_tau_table(tmp_path):
    # the shape proxy_model.remaining.tau_table writes: JSON keys are strings, one table per predictor
    doc = {"points": [16, 64, 256], "tau": {"remaining": {"16": 0.55, "64": 0.6, "256": 0.7},
                                            "prompt_only_minus_k": {"16": 0.4, "64": 0.4, "256": 0.4}}}
    path = tmp_path / "remaining_tau.json"
    path.write_text(json.dumps(doc))
    table = TauTable.load(path)
    assert table.ks == (16.0, 64.0, 256.0) and table.taus == (0.55, 0.6, 0.7) and table.at(0) == 0.55
