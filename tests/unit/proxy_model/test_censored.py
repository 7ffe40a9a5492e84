"""Censored reply lengths (replies cut at the generation cap) and the metrics that stay meaningful
when many lengths tie at that cap: the censored head's loss and expected length, its training
statistics, the tie-safe short/long split and the "hits the cap" accuracy."""

import gzip
import json
import math
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from proxy_model.config import HeadConfig, TrainConfig  # noqa: E402
from proxy_model.data import prepare, read_prepared  # noqa: E402
from proxy_model.metrics import balanced_cut, cap_accuracy, length_metrics, ranked_binary_accuracy  # noqa: E402
from proxy_model.model import LengthModel  # noqa: E402
from proxy_model.train import group_by_prompt, head_statistics  # noqa: E402

CAP = 512.0


def _model(rank_loss_weight=0.0, log_mean=4.0, log_std=1.0):
    cfg = HeadConfig(head="censored", hidden_size=4, encoder_dim=3, models=["m"], cap_values=[CAP, CAP],
                     log_mean=log_mean, log_std=log_std)
    return LengthModel(None, cfg, rank_loss_weight=rank_loss_weight)


# ------------------------------------------------------------------ config

def test_censored_head_config():
    cfg = HeadConfig(head="censored", models=["a", "b"], cap_values=[512.0, 512.0, 256.0])
    assert cfg.num_outputs == 2
    with pytest.raises(ValueError, match="one cap per model row"):
        HeadConfig(head="censored", models=["a"], cap_values=[512.0])
    with pytest.raises(ValueError, match="cap_values"):
        HeadConfig(head="censored", models=["a"], cap_values=[512.0, float("nan")])
    assert TrainConfig(head="censored").head == "censored"


# ------------------------------------------------------------------ loss

def test_censored_loss_is_cap_logistic_plus_regression_on_finished_replies_only():
    m = _model()
    # 2 prompts x (<unk>, m) x (cap logit, standardised log length)
    logits = torch.tensor([[[0.3, -0.2], [1.0, 0.5]], [[-0.4, 0.1], [-2.0, 0.7]]])
    targets = torch.tensor([[float("nan")], [math.log1p(100.0)]])  # prompt 0 capped: no finished length
    capped = torch.tensor([[1.0], [0.0]])
    z = math.log1p(100.0) - 4.0

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    want = ((bce(1.0, 1) + bce(0.3, 1) + bce(-2.0, 0) + bce(-0.4, 0)) / 2
            + ((0.7 - z) ** 2 + (0.1 - z) ** 2) / 1)
    assert m.loss(logits, targets, capped).item() == pytest.approx(want, rel=1e-5)


def test_a_capped_reply_never_pulls_the_length_regression():
    m = _model()
    logits = torch.zeros(2, 2, 2, requires_grad=True)
    targets = torch.tensor([[float("nan")], [math.log1p(50.0)]])
    capped = torch.tensor([[1.0], [0.0]])
    m.loss(logits, targets, capped).backward()
    g = logits.grad
    assert torch.all(g[0, :, 1] == 0)  # capped prompt: no gradient into its length output
    assert torch.all(g[0, :, 0] < 0)  # ... but its P(cap) is pushed up
    assert torch.all(g[1, :, 1] != 0) and torch.all(g[1, :, 0] > 0)
    with pytest.raises(ValueError, match="capped"):
        m.loss(logits, targets)


def test_rank_loss_puts_a_capped_reply_above_a_finished_one():
    m = _model(rank_loss_weight=1.0)
    targets = torch.tensor([[float("nan")], [math.log1p(30.0)]])
    capped = torch.tensor([[1.0], [0.0]])
    # Same cap/length losses in both orders: swap which prompt looks likely to cap.
    right = torch.tensor([[[3.0, 0.0], [3.0, 0.0]], [[-3.0, 0.0], [-3.0, 0.0]]])
    wrong = torch.tensor([[[-3.0, 0.0], [-3.0, 0.0]], [[3.0, 0.0], [3.0, 0.0]]])
    plain = _model(rank_loss_weight=0.0)
    rank_right = m.loss(right, targets, capped) - plain.loss(right, targets, capped)
    rank_wrong = m.loss(wrong, targets, capped) - plain.loss(wrong, targets, capped)
    assert rank_right.item() < rank_wrong.item()


def test_expected_tokens_combine_cap_probability_and_finished_length():
    m = _model(log_mean=0.0, log_std=1.0)
    fin = math.log1p(100.0)
    logits = torch.tensor([[0.0, fin], [20.0, fin], [-20.0, fin], [0.0, 10.0]])
    got = m.tokens(logits, torch.tensor([1, 1, 1, 1])).tolist()
    assert got[0] == pytest.approx(0.5 * CAP + 0.5 * 100.0, rel=1e-4)
    assert got[1] == pytest.approx(CAP, rel=1e-4)
    assert got[2] == pytest.approx(100.0, rel=1e-4)
    assert got[3] == pytest.approx(CAP, rel=1e-4)  # a finished reply is shorter than the cap
    assert m.cap_probability(logits)[0].item() == pytest.approx(0.5)
    # Ranks sensibly: more likely to cap -> longer, longer finished length -> longer.
    a, b, c = m.tokens(torch.tensor([[-1.0, 3.0], [1.0, 3.0], [1.0, 4.0]]), torch.tensor([1, 1, 1])).tolist()
    assert a < b < c
    assert _model().cfg.head_type.value == "censored"
    regression = LengthModel(None, HeadConfig(hidden_size=4, encoder_dim=3, models=["m"]))
    assert regression.cap_probability(torch.zeros(1, 1)) is None


# ------------------------------------------------------------------ training statistics

def test_group_by_prompt_keeps_finished_lengths_and_cap_fraction():
    prompts, targets, frac = group_by_prompt(["a", "a", "b", "c"], ["m", "m", "m", "m"], [512, 100, 512, 40], ["m"],
                                             [True, False, True, False])
    assert prompts == ["a", "b", "c"]
    assert targets[0, 0] == pytest.approx(math.log1p(100))  # the capped 512 is left out
    assert math.isnan(targets[1, 0]) and targets[2, 0] == pytest.approx(math.log1p(40))
    assert frac[:, 0].tolist() == [0.5, 1.0, 0.0]
    # without flags: the plain mean over every reply (the other heads)
    _, plain = group_by_prompt(["a", "a"], ["m", "m"], [512, 100], ["m"])
    assert plain[0, 0] == pytest.approx((math.log1p(512) + math.log1p(100)) / 2)


def test_head_statistics_fit_finished_rows_and_read_caps():
    tokens = np.array([512.0, 100.0, 10.0, 256.0, 30.0])
    model_of_row = np.array([0, 0, 0, 1, 1])
    capped = np.array([True, False, False, True, False])
    st = head_statistics(TrainConfig(head="censored"), ["big", "small"], tokens, model_of_row, capped)
    assert st["log_mean"] == pytest.approx(np.log1p([100.0, 10.0, 30.0]).mean())
    assert st["cap_values"] == [384.0, 512.0, 256.0]  # <unk>: median of the models' caps
    with pytest.raises(ValueError, match="finished replies"):
        head_statistics(TrainConfig(head="censored"), ["big"], tokens[:1], model_of_row[:1], capped[:1])


# ------------------------------------------------------------------ tie-safe metrics

def test_balanced_cut_is_the_median_on_untied_data_and_splits_off_a_tied_cap():
    assert balanced_cut([1, 2, 3, 4]) == 2.5
    assert balanced_cut([5, 1, 3]) == 3.0
    # Most replies at the cap: the median is the cap and "truth > median" would be empty.
    truth = [10, 20, 512, 512, 512]
    assert np.median(truth) == 512
    cut = balanced_cut(truth)
    assert 20 < cut < 512
    assert balanced_cut([7, 7, 7]) == 7.0
    with pytest.raises(ValueError):
        balanced_cut([])


def test_binary_accuracies_under_ties_at_the_cap():
    truth = np.array([10, 20, 512, 512, 512], float)
    models = ["m"] * 5
    constant = length_metrics([200.0] * 5, truth, models, min_rows=1)
    assert constant["binary_accuracy"] == pytest.approx(0.4)  # was 1.0 with the median (= the cap) as cut
    assert constant["binary_accuracy_ranked"] == pytest.approx(0.4)
    # Expected lengths below the cap, in the right order: right by rank, wrong by threshold.
    ordered = length_metrics([50.0, 60.0, 200.0, 220.0, 250.0], truth, models, min_rows=1)
    assert ordered["binary_accuracy_ranked"] == 1.0
    assert ordered["binary_accuracy"] == pytest.approx(0.4)
    assert ordered["binary_accuracy_ranked_within_model"] == 1.0


def test_ranked_binary_accuracy_calls_tied_predictions_short():
    truth = [1, 2, 3, 4]
    assert ranked_binary_accuracy([1, 2, 3, 4], truth, 2.5) == 1.0
    assert ranked_binary_accuracy([4, 3, 2, 1], truth, 2.5) == 0.0
    # top-2 by prediction would straddle the tie at 2: only the row above it is called long
    assert ranked_binary_accuracy([1, 2, 2, 4], truth, 2.5) == 0.75
    assert ranked_binary_accuracy([1, 2, 3, 4], truth, 10) == 1.0  # no long row: every row called short


def test_cap_accuracy_with_and_without_a_cap_probability():
    capped = [True, True, False, False]
    assert cap_accuracy(capped, [0, 0, 0, 0], [512] * 4, p_cap=[0.9, 0.6, 0.2, 0.7]) == 0.75
    assert cap_accuracy(capped, [512, 300, 100, 600], [512] * 4) == 0.5  # tokens reach the cap: "capped"
    m = length_metrics([300.0, 300.0, 40.0, 60.0], [512, 512, 30, 70], ["m"] * 4, min_rows=1,
                       capped=capped, caps=[512] * 4, p_cap=[0.8, 0.9, 0.1, 0.2])
    assert m["cap_accuracy"] == 1.0 and m["cap_rate"] == 0.5
    assert length_metrics([1.0, 2.0], [1, 2], ["m", "m"])["cap_accuracy"] is None


# ------------------------------------------------------------------ end to end

def _capped_logs(path, n_prompts=32):
    """'essay' prompts hit the cap (finished false), 'briefly' prompts finish short."""
    rng = random.Random(1)
    rows = []
    for i in range(n_prompts):
        long = i % 2 == 0
        prompt = (f"write a long detailed essay about music step by step {i}" if long
                  else f"please answer briefly in one word what is art {i}")
        rows.append({"prompt_id": f"p{i}", "messages": [{"role": "user", "content": prompt}], "model": "smol",
                     "output_tokens": 64 if long else rng.randint(3, 12), "finished": not long, "source": "t"})
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    return path


def test_censored_head_trains_predicts_and_evaluates(tmp_path):
    from proxy_model.evaluate import evaluate
    from proxy_model.predictor import LengthPredictor
    from proxy_model.testing import make_tiny_encoder
    from proxy_model.train import train

    enc = make_tiny_encoder(tmp_path / "enc")
    data = tmp_path / "prepared.parquet"
    summary = prepare([str(_capped_logs(tmp_path / "logs.jsonl.gz"))], data, tokenizer="whitespace",
                      val_frac=0.0, test_frac=0.0)
    assert summary["capped_rows"] == 16
    assert read_prepared(data).column("finished").to_pylist()[:2] == [False, True]
    cfg = TrainConfig(encoder=str(enc), head="censored", epochs=10, batch_size=8, max_length=32, hidden_size=16,
                      head_learning_rate=1e-2, bf16="no", freeze_encoder=True, rank_loss_weight=0.5)
    out = tmp_path / "artifact"
    stats = train(data, out, cfg, progress=False)
    assert stats["cap_fraction"] == 0.5
    doc = json.loads((out / "proxy_config.json").read_text())
    assert doc["head"]["cap_values"] == [64.0, 64.0]
    pred = LengthPredictor.load(out, timeout_s=None, dtype="fp32")
    tokens, p_cap = pred.predict_detail(["write a long detailed essay about music step by step 99",
                                         "please answer briefly in one word what is art 99"], ["smol", "smol"])
    assert p_cap[0] > 0.5 > p_cap[1] and tokens[0] > tokens[1]
    assert max(tokens) <= 64.0 + 1e-3  # an expected length never passes the cap
    report = evaluate(str(out), str(data), split="train", dtype="fp32", baseline_artifacts={"again": str(out)})
    block = report["all"]
    assert block["proxy"]["cap_accuracy"] >= 0.9 and block["proxy"]["cap_rate"] == 0.5
    assert block["again"]["cap_accuracy"] == block["proxy"]["cap_accuracy"]
    assert report["finished"]["proxy"]["rows"] == 16
