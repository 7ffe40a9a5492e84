"""Pure-Python parts of the proxy: fallback predictors, metrics, input checks."""

import subprocess
import sys
import threading

import pytest

from proxy_model.metrics import length_metrics
from proxy_model.predictor import (
    ConstantPredictor,
    HeuristicPredictor,
    LengthPredictor,
    check_inputs,
    text_for,
)


def test_predictor_module_imports_without_torch():
    code = "import sys, proxy_model.predictor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class GatedEngine:
    """The parts of a proxy engine that LengthPredictor uses (no torch); ``predict`` waits for ``gate``."""

    batch_size = 32
    max_history_chars = 20
    median_tokens = 100.0
    median_tokens_per_model = {"m": 60.0}
    path, head_type = "fake", "regression"

    def __init__(self):
        self.gate = threading.Event()
        self.seen = []

    def model_index(self, name):
        return 1

    def predict(self, prompts, models):
        self.gate.wait(10)
        self.seen += prompts
        return [7.0] * len(prompts)


def test_length_predictor_names_why_it_fell_back():
    engine = GatedEngine()
    proxy = LengthPredictor(engine, timeout_s=0.05)
    try:
        assert proxy.predict_with_fallback(["q"], ["m"]) == ([60.0], "timeout")
        assert proxy.predict_with_fallback(["q"], ["m"]) == ([60.0], "busy")  # the timed-out call holds the worker
        engine.gate.set()
        proxy._busy.result(timeout=5)
        assert proxy.predict_with_fallback(["q", "  "], ["m", "m"]) == ([7.0, 60.0], None)  # empty: no model call
        assert proxy.stats["num_timeouts"] == 1 and proxy.stats["num_busy"] == 1
    finally:
        engine.gate.set()
        proxy.close()


def test_length_predictor_waits_unless_given_a_deadline_and_renders_chats_with_its_history_cut():
    engine = GatedEngine()
    engine.gate.set()
    proxy = LengthPredictor(engine)
    assert proxy.timeout_s is None  # no hidden bound: serving passes proxy.timeout_s
    chat = [{"role": "user", "content": "an old question, long ago"}, {"role": "user", "content": "now"}]
    assert proxy.predict_messages([chat], ["m"]) == [7.0]
    assert engine.seen == [text_for(proxy, chat)] == ["...d question, long ago\n\nuser: now"]
    assert text_for(HeuristicPredictor(), "plain") == "plain"


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
