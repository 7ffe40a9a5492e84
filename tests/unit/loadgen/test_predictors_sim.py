"""Simulation predictors (oracle, noisy:TAU, constant, files) and their spec strings."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadgen.predictors_sim import PredictorSpec, noisy_predictions, predict
from proxy_model.metrics import kendall_tau


@pytest.mark.parametrize("tau", [0.2, 0.6, 1.0])
def test_noisy_predictions_have_about_the_asked_kendall_tau_and_the_truth_distribution(tau):
    truth = np.random.default_rng(0).lognormal(5.5, 0.8, 6000).round() + 1
    pred = noisy_predictions(truth, tau, seed=1)
    assert kendall_tau(truth, pred) == pytest.approx(tau, abs=0.03)
    np.testing.assert_array_equal(np.sort(pred), np.sort(truth))  # same marginal: only the ranking is noisy


def test_noisy_predictions_are_seeded():
    truth = np.arange(1, 500, dtype=float)
    np.testing.assert_array_equal(noisy_predictions(truth, 0.5, 3), noisy_predictions(truth, 0.5, 3))
    assert not np.array_equal(noisy_predictions(truth, 0.5, 3), noisy_predictions(truth, 0.5, 4))


def test_oracle_and_constant_predictors():
    truth = np.array([5.0, 1.0, 9.0])
    np.testing.assert_array_equal(predict("oracle", None, truth=truth), truth)
    np.testing.assert_array_equal(predict("constant:7", None, truth=truth), [7, 7, 7])
    np.testing.assert_array_equal(predict("constant", None, truth=truth), [5, 5, 5])  # the median


def test_predictions_from_a_file_by_request_id_or_prompt_and_model(tmp_path):
    table = pa.table({"request_id": ["r1", "r2"], "prompt_id": ["p1", "p1"], "model": ["a", "b"],
                      "prompt": ["x", "y"]})
    by_id = tmp_path / "by_id.parquet"
    pq.write_table(pa.table({"request_id": ["r2", "r1"], "predicted_tokens": [20.0, 10.0]}), by_id)
    np.testing.assert_array_equal(predict(f"file:{by_id}", table, truth=np.ones(2)), [10, 20])
    by_prompt = tmp_path / "by_prompt.jsonl"
    by_prompt.write_text("\n".join(json.dumps(r) for r in [
        {"prompt_id": "p1", "model": "a", "predicted_tokens": 3}, {"prompt_id": "p1", "model": "b", "predicted_tokens": 4}]))
    np.testing.assert_array_equal(predict(str(by_prompt), table, truth=np.ones(2)), [3, 4])  # bare path
    partial = tmp_path / "partial.csv"
    partial.write_text("request_id,predicted_tokens\nr1,5\n")
    with pytest.raises(ValueError, match="no prediction for 1 of 2"):
        predict(f"file:{partial}", table, truth=np.ones(2))
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("request_id,guess\nr1,5\n")
    with pytest.raises(ValueError, match="'predicted_tokens' column"):
        predict(f"file:{nocol}", table, truth=np.ones(2))


@pytest.mark.parametrize("spec,message", [
    ("noisy", "unknown predictor"), ("noisy:abc", "needs a number"), ("noisy:1.5", "0 < TAU <= 1"),
    ("constant:-3", "N >= 0"), ("magic", "choose one of: oracle, noisy:TAU"), ("file:", "needs a path"),
])
def test_bad_predictor_specs_say_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        PredictorSpec.parse(spec)


def test_predictor_spec_round_trips_to_its_label():
    for s in ("oracle", "noisy:0.6", "heuristic", "constant", "constant:100", "file:x.csv", "proxy:dir"):
        assert str(PredictorSpec.parse(s)) == s
