"""Remaining-length prediction: example generation, splits, features, metrics, and a tiny end-to-end run."""

import json

import numpy as np
import pytest

from proxy_model.data import prepare, read_prepared
from proxy_model.remaining import (
    BASELINE,
    BASELINE_UNCLIPPED,
    REMAINING,
    RemainingConfig,
    Reply,
    ReplyTokenizer,
    baseline_remaining,
    cap_of,
    evaluate_points,
    make_examples,
    progress_points,
    read_replies,
    remaining_metrics,
    tail_stats,
)

CAP = 60
WORDS = "history science music art python france code ideas list step".split()


def _reply(total, capped, split="train", pid="p"):
    return Reply(prompt_id=pid, prompt="q", split=split, tokens=tuple(f"w{i}" for i in range(total)), total=total,
                 capped=capped, source="s")


def _logs(path, n=40):
    """Logs schema with reply text. 'briefly' prompts get ~8 words; 'essay' prompts get ~35 varied words,
    or (every other one, with the same prompt template) a loop that runs to the 60-word cap: only the
    reply itself tells a looping reply from a finishing one."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            out = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6 + i % 4))
            finished = True
        elif i % 3 == 1:
            out = " ".join(f"{WORDS[(i + j) % len(WORDS)]}{j}" for j in range(30 + i % 7))
            finished = True
        else:
            out = " ".join(["intro", "words", "here"] + ["no"] * (CAP - 3))
            finished = False
        prompt = f"please answer briefly what is {WORDS[i % 10]} {i}" if i % 3 == 0 else f"write an essay about {WORDS[i % 10]} {i}"
        rows.append({"prompt_id": f"p{i}", "messages": [{"role": "user", "content": prompt}], "model": "tiny",
                     "output": out, "output_tokens": len(out.split()), "finished": finished, "source": "synthetic"})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# ---------------------------------------------------------------- examples

def test_examples_only_while_running_and_censored_at_the_cap():
    tok = ReplyTokenizer("whitespace")
    replies = [_reply(10, False), _reply(CAP, True)]
    ex = make_examples(replies, [0, 1], tok, points=(0, 16, 32), tail_tokens=4)
    short = [(e.k, e.remaining, e.censored) for e in ex if e.reply == 0]
    capped = [(e.k, e.remaining, e.censored) for e in ex if e.reply == 1]
    assert short == [(0, 10, False)]  # finished at 10 tokens: not running at k = 16
    assert capped == [(0, 60, True), (16, 44, True), (32, 28, True)]  # remaining >= cap - k
    tails = {(e.reply, e.k): e.tail for e in ex}
    assert tails[(1, 0)] == "" and tails[(1, 16)] == "w12 w13 w14 w15" and tails[(1, 32)] == "w28 w29 w30 w31"


def test_random_points_lie_inside_the_reply_and_are_seeded():
    r = _reply(20, False)
    a = progress_points(r, (0, 32), 6, np.random.default_rng(3))
    b = progress_points(r, (0, 32), 6, np.random.default_rng(3))
    assert a == b and a[0] == 0 and 32 not in a
    assert all(1 <= k <= 19 for k in a[1:]) and len(a) >= 2
    assert progress_points(_reply(1, False), (0,), 5, np.random.default_rng(0)) == [0]  # nothing left to cut


def test_read_replies_uses_prepares_split_and_checks_token_counts(tmp_path):
    logs = _logs(tmp_path / "logs.jsonl", n=60)
    replies, summary = read_replies(logs, ReplyTokenizer("whitespace"), val_frac=0.2, test_frac=0.3, seed=1)
    prepare([str(logs)], tmp_path / "p.parquet", tokenizer="whitespace", val_frac=0.2, test_frac=0.3, seed=1)
    prepared = {r["prompt_id"]: r["split"] for r in read_prepared(tmp_path / "p.parquet").to_pylist()}
    assert {r.prompt_id: r.split for r in replies} == prepared  # test prompts of the proxy stay test prompts here
    assert set(prepared.values()) == {"train", "val", "test"}
    assert summary["token_count_check"]["exact_share"] == 1.0 and summary["capped"] == 20
    assert cap_of(replies) == CAP


def test_examples_of_one_split_never_share_a_prompt_with_another(tmp_path):
    logs = tmp_path / "logs.jsonl"
    rows = [{"prompt_id": f"c{i}-{t}", "model": "m", "output": "a b c d e", "output_tokens": 5, "finished": True,
             "messages": [{"role": "user", "content": f"topic {i}"}, {"role": "assistant", "content": "x"},
                          {"role": "user", "content": f"more {t}"}]} for i in range(30) for t in range(2)]
    logs.write_text("\n".join(json.dumps(r) for r in rows))
    replies, _ = read_replies(logs, ReplyTokenizer("whitespace"), val_frac=0.2, test_frac=0.3)
    split_of_conv = {}
    for r in replies:  # every turn of a conversation lands in one split (keyed on its first user turn)
        assert split_of_conv.setdefault(r.prompt_id.split("-")[0], r.split) == r.split


def test_read_replies_needs_the_reply_text(tmp_path):
    f = tmp_path / "l.jsonl"
    f.write_text(json.dumps({"model": "m", "prompt": "hi", "output_tokens": 3}) + "\n")
    with pytest.raises(ValueError, match="'output' column"):
        read_replies(f, ReplyTokenizer("whitespace"))


# ---------------------------------------------------------------- features

def test_tail_stats_see_loops():
    loop, varied = tail_stats([7, 8] * 10), tail_stats(list(range(20)))
    assert loop[0] == pytest.approx(0.1) and loop[1] == pytest.approx(16 / 18)  # 18 trigrams, the first 2 new
    assert varied == [1.0, 0.0]
    assert tail_stats([]) == [1.0, 0.0]


def test_progress_feature_is_log_k_over_log_cap():
    torch = pytest.importorskip("torch")
    from proxy_model.remaining import assemble, progress_feature

    f = progress_feature([0, 15, 511], 511).flatten().tolist()
    assert f[0] == 0.0 and f[2] == pytest.approx(1.0) and f[1] == pytest.approx(np.log(16) / np.log(512))
    x = assemble(torch.zeros(3, 4), torch.ones(3, 4), torch.full((3, 2), 0.5), [0, 15, 511], 511)
    assert x.shape == (3, 11) and x[:, -1].tolist() == pytest.approx(f)
    assert assemble(torch.zeros(3, 4), torch.ones(3, 4), torch.zeros(3, 2), [0, 1, 2], 511,
                    use_tail_stats=False).shape == (3, 9)


# ---------------------------------------------------------------- metrics

def test_baseline_is_prompt_prediction_minus_k_never_negative():
    assert baseline_remaining([100, 100, 30], [0, 64, 64]).tolist() == [100, 36, 0]


def test_remaining_metrics_on_hand_made_cases():
    m = remaining_metrics(pred=[10, 20, 30, 100], remaining=[5, 15, 25, 60], censored=[False, False, False, True],
                          p_cap=[0.1, 0.2, 0.6, 0.9])
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["mae_finished_tokens"] == pytest.approx(5.0) and m["finished_rows"] == 3
    assert m["censored_underestimate_tokens"] == 0.0  # 100 >= the lower bound 60: no known error
    assert m["cap_accuracy"] == 0.75 and m["cap_recall"] == 1.0 and m["cap_precision"] == 0.5
    assert m["majority_cap_accuracy"] == 0.75 and m["censored_share"] == 0.25
    m = remaining_metrics(pred=[30, 20, 40], remaining=[5, 15, 60], censored=[False, False, True], p_cap=[0, 0, 0])
    assert m["kendall_tau"] == pytest.approx(1 / 3)  # one of three pairs discordant
    assert m["censored_underestimate_tokens"] == 20.0 and m["cap_recall"] == 0.0 and m["cap_precision"] is None
    with pytest.raises(ValueError, match="differ in length"):
        remaining_metrics([1], [1, 2], [False], [0.1])


def test_evaluate_points_scores_each_point_over_its_examples_only():
    ks = [0, 0, 0, 32, 32, 32, 7]  # 7: a random point, in no fixed-point block
    rem = [50, 20, 10, 18, 8, 28, 3]
    cens = [False] * 7
    good = (np.asarray(rem, float), np.zeros(7))
    # Right at k = 0, reversed at k = 32 (true 18, 8, 28 against 1, 2, 0).
    mixed = (np.asarray([50, 20, 10, 1, 2, 0, 99], float), np.zeros(7))
    out = evaluate_points(ks, rem, cens, {"good": good, "mixed": mixed}, points=(0, 32, 64))
    assert set(out["per_point"]) == {"0", "32"}  # nothing runs at 64
    assert out["per_point"]["0"]["mixed"]["kendall_tau"] == pytest.approx(1.0)
    assert out["per_point"]["32"]["mixed"]["kendall_tau"] == pytest.approx(-1.0)
    assert out["per_point"]["32"]["good"]["rows"] == 3
    assert out["all_points"]["good"]["rows"] == 6 and out["all_points"]["good"]["kendall_tau"] == pytest.approx(1.0)


def test_config_rejects_bad_points():
    with pytest.raises(ValueError, match="points"):
        RemainingConfig(points=[32, 0])
    with pytest.raises(ValueError, match="tail_tokens"):
        RemainingConfig(tail_tokens=0)


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from proxy_model.cli import main
    from proxy_model.testing import make_tiny_encoder

    d = tmp_path_factory.mktemp("remaining")
    enc = make_tiny_encoder(d / "enc")
    logs = _logs(d / "logs.jsonl", n=45)
    args = ["train-remaining", str(logs), "-o", str(d / "art"), "--encoder", str(enc), "--tokenizer", "whitespace",
            "--points", "0,16,32", "--random-per-reply", "3", "--tail-tokens", "12", "--epochs", "60",
            "--batch-size", "32", "--hidden-size", "32", "--lr", "3e-3", "--val-frac", "0", "--test-frac", "0.4",
            "--eval-out", str(d / "eval.json"), "--tau-table", str(d / "tau.json"), "--cache", str(d / "cache.pt")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return d, json.loads((d / "eval.json").read_text()), json.loads((d / "tau.json").read_text())


def test_end_to_end_report_and_tau_table(trained):
    d, report, table = trained
    assert report["cap"] == CAP and report["examples"]["test"] > 0
    assert set(report["per_point"]) == {"0", "16", "32"}
    for block in report["per_point"].values():
        assert set(block) == {REMAINING, BASELINE, BASELINE_UNCLIPPED}
    assert table["points"] == [0, 16, 32] and set(table["tau"]) == {REMAINING, BASELINE, BASELINE_UNCLIPPED}
    assert table["tau"][REMAINING]["16"] == pytest.approx(report["per_point"]["16"][REMAINING]["kendall_tau"], abs=1e-4)
    assert not any(w in json.dumps(table) for w in ("essay", "briefly", "intro"))  # numbers only, no data rows
    assert (d / "cache.pt").is_file() and (d / "art" / "remaining_config.json").is_file()


def test_generated_tokens_catch_the_loops_the_prompt_cannot(trained):
    """Looping and finishing essay replies share one prompt template: once 16 tokens are out, the tail
    shows the loop, so the re-predictor calls the cap better than the prompt-only baseline."""
    _, report, _ = trained
    at16 = report["per_point"]["16"]
    assert at16[REMAINING]["cap_accuracy"] >= 0.9
    assert at16[REMAINING]["cap_accuracy"] > at16[BASELINE]["cap_accuracy"]


def test_artifact_round_trip_predicts_from_text_and_k(trained):
    from proxy_model.remaining import RemainingPredictor

    d, _, _ = trained
    pred = RemainingPredictor.load(d / "art")
    loop = " ".join(["intro", "words", "here"] + ["no"] * 9)
    varied = " ".join(f"{w}{j}" for j, w in enumerate(WORDS[:12]))
    rem, p_cap = pred.predict(["write an essay about art 7"] * 2, [loop, varied], [16, 16])
    assert p_cap[0] > 0.5 > p_cap[1] and rem[0] > rem[1]
    again, _ = RemainingPredictor.load(d / "art").predict(["write an essay about art 7"], [loop], [16])
    assert again[0] == pytest.approx(rem[0], rel=1e-5)
    with pytest.raises(ValueError, match="one of each"):
        pred.predict(["a"], [], [0])
