"""Pure-Python parts of the proxy: text rule, fallback predictors, metrics, input checks."""

import subprocess
import sys

import pytest

from proxy_model.metrics import length_metrics
from proxy_model.predictor import ConstantPredictor, HeuristicPredictor, check_inputs
from proxy_model.text import head_tail_ids, render_messages


def test_predictor_module_imports_without_torch():
    code = "import sys, proxy_model.predictor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_render_keeps_last_turn_and_cuts_history_from_left():
    msgs = [{"role": "user", "content": "A" * 50}, {"role": "assistant", "content": "B" * 50},
            {"role": "user", "content": "final question"}]
    text = render_messages(msgs, max_history_chars=30)
    assert text.endswith("user: final question")
    assert "A" not in text  # the oldest turn went first
    assert text.startswith("...") and "B" * 10 in text
    assert render_messages([{"role": "user", "content": "hi"}]) == "hi"


def test_render_rejects_conversation_not_ending_with_user():
    with pytest.raises(ValueError, match="last message must be the user"):
        render_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    with pytest.raises(ValueError, match="empty"):
        render_messages([])


def test_head_tail_ids_keeps_both_ends():
    assert head_tail_ids(list(range(10)), 4) == [0, 1, 8, 9]
    assert head_tail_ids([1, 2], 4) == [1, 2]


def test_constant_predictor_per_model_and_loose_names():
    p = ConstantPredictor(100, per_model={"mistralai/Mistral-7B": 50})
    assert p.predict(["a", "b", "c"], ["mistralai/Mistral-7B", "MISTRAL-7b", "other"]) == [50, 50, 100]
    with pytest.raises(ValueError, match=">= 0"):
        ConstantPredictor(-1)


def test_heuristic_predictor_orders_by_prompt_length():
    p = HeuristicPredictor(ratio=1.0, base=0.0, max_tokens=1e9)
    short, long = p.predict(["x" * 40, "x" * 4000], ["m", "m"])
    assert short < long


def test_check_inputs_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 prompts but 1 model"):
        check_inputs(["a", "b"], ["m"])
    with pytest.raises(ValueError, match="not a single string"):
        check_inputs("abc", ["m"])
    with pytest.raises(ValueError, match="expected str"):
        check_inputs([None], ["m"])


def test_metrics_perfect_and_constant():
    truth = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]
    models = ["a"] * 6 + ["b"] * 6
    good = length_metrics(truth, truth, models)
    assert good["kendall_tau"] == pytest.approx(1.0)
    assert good["kendall_tau_within_model"] == pytest.approx(1.0) or good["kendall_tau_within_model"] is None
    assert good["binary_accuracy"] == 1.0 and good["mae_tokens"] == 0.0
    flat = length_metrics([50] * 12, truth, models, min_rows=1)
    assert flat["kendall_tau_within_model"] == 0.0
    with pytest.raises(ValueError, match="lengths differ"):
        length_metrics([1], [1, 2], ["a", "a"])
