"""The proxy model end to end on a tiny encoder built from a config: prepare, train, save/load, predict."""

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from proxy_model.cli import main  # noqa: E402
from proxy_model.config import HeadConfig, TrainConfig  # noqa: E402
from proxy_model.data import prepare, read_prepared  # noqa: E402
from proxy_model.predictor import LengthPredictor  # noqa: E402
from proxy_model.testing import make_tiny_encoder  # noqa: E402
from tests.unit.proxy_model.conftest import synthetic_logs  # noqa: E402


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, encoder_dir, prepared):
    from proxy_model.train import train

    out = tmp_path_factory.mktemp("artifact")
    cfg = TrainConfig(encoder=str(encoder_dir), epochs=12, batch_size=4, max_length=32, learning_rate=1e-3,
                      head_learning_rate=3e-3, hidden_size=32, bf16="no", rank_loss_weight=0.5)
    summary = train(prepared, out, cfg, progress=False)
    return out, summary


def test_training_loss_falls_and_model_learns_the_pattern(trained):
    out, summary = trained
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert len(losses) >= 4
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    pred = LengthPredictor.load(out, timeout_s=None, dtype="fp32")
    short, long = pred.predict(["please answer briefly in one word what is music 99",
                                "write a long detailed essay about music step by step 99"], ["m-short", "m-short"])
    assert long > 3 * short
    a, b = pred.predict(["write a long detailed essay about art 5"] * 2, ["m-short", "m-long"])
    assert b > a  # the target model is an input


def test_artifact_layout_and_round_trip_identical(trained):
    out, _ = trained
    for name in ("proxy_config.json", "head.safetensors", "training_summary.json", "encoder/config.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "proxy_config.json").read_text())
    assert doc["head"]["models"] == ["m-long", "m-short"] and doc["head"]["bucket_edges"]
    prompts = ["please answer briefly what is code 1", "write a long detailed essay about france 2", "yes"]
    models = ["m-short", "m-long", "m-long"]
    first = LengthPredictor.load(out, timeout_s=None, dtype="fp32").predict(prompts, models)
    second = LengthPredictor.load(out, timeout_s=None, dtype="fp32").predict(prompts, models)
    assert first == second
    # Batching and order do not change a prompt's answer (beyond float noise of padding).
    single = LengthPredictor.load(out, timeout_s=None, dtype="fp32").predict(prompts[1:2], models[1:2])
    assert single[0] == pytest.approx(first[1], rel=1e-4)


def test_unknown_model_and_empty_prompt_fall_back(trained):
    out, summary = trained
    pred = LengthPredictor.load(out, timeout_s=None, dtype="fp32")
    values = pred.predict(["write a long detailed essay about art 1", "   "], ["never-seen-model", "m-short"])
    assert all(v > 0 for v in values)
    assert pred.stats["num_unknown_model"] == 1 and pred.stats["num_empty_prompt"] == 1
    assert values[1] == summary["median_tokens_per_model"]["m-short"]
    with pytest.raises(ValueError, match="model per prompt"):
        pred.predict(["a"], [])


def test_timeout_returns_fallback_and_counts(trained):
    out, _ = trained
    pred = LengthPredictor.load(out, timeout_s=1.0, dtype="fp32")
    import threading

    gate = threading.Event()
    real = pred._engine.predict

    def slow(prompts, models):
        gate.wait(5)
        return real(prompts, models)

    pred._engine.predict = slow
    pred.timeout_s = 0.05
    values = pred.predict(["write a long detailed essay about art 1"], ["m-long"])
    assert pred.stats["num_timeouts"] == 1 and values == pred.fallback.predict(["x"], ["m-long"])
    again = pred.predict(["yes"], ["m-long"])  # the worker is still busy: no queueing behind it
    assert pred.stats["num_busy"] == 1 and len(again) == 1
    gate.set()


def test_the_artifact_carries_the_history_cut_of_its_training_text(encoder_dir, tmp_path):
    """``prepare --max-history-chars`` renders the training text; serving and the simulator must render
    requests with the same cut, so training records it in the artifact."""
    from proxy_model.train import train

    data = tmp_path / "prepared.parquet"
    prepare([str(synthetic_logs(tmp_path / "logs.jsonl", n_prompts=4))], data, tokenizer="whitespace", max_history_chars=50,
            val_frac=0.0, test_frac=0.0)
    cfg = TrainConfig(encoder=str(encoder_dir), epochs=1, batch_size=8, max_length=32, hidden_size=8, bf16="no",
                      freeze_encoder=True)
    train(data, tmp_path / "artifact", cfg, progress=False)
    assert LengthPredictor.load(tmp_path / "artifact", dtype="fp32").max_history_chars == 50


def test_group_by_length_fine_tunes_and_learns_the_pattern(encoder_dir, prepared, tmp_path):
    """``group_by_length``: the Trainer's LengthGroupedSampler reads each example's token ids (it
    fails when it cannot measure them) and the model still learns short vs long."""
    from proxy_model.train import train

    cfg = TrainConfig(encoder=str(encoder_dir), epochs=12, batch_size=4, max_length=32, learning_rate=1e-3,
                      head_learning_rate=3e-3, hidden_size=32, bf16="no", group_by_length=True)
    summary = train(prepared, tmp_path, cfg, progress=False)
    assert summary["train_config"]["group_by_length"] is True
    pred = LengthPredictor.load(tmp_path, timeout_s=None, dtype="fp32")
    short, long = pred.predict(["please answer briefly in one word what is music 99",
                                "write a long detailed essay about music step by step 99"], ["m-short", "m-short"])
    assert long > 3 * short


@pytest.mark.parametrize("head", ["classes", "binary"])
def test_classes_and_binary_heads_train_and_predict(encoder_dir, prepared, tmp_path, head):
    from proxy_model.train import train

    cfg = TrainConfig(encoder=str(encoder_dir), head=head, epochs=8, batch_size=8, max_length=32, learning_rate=1e-3,
                      head_learning_rate=3e-3, hidden_size=16, bf16="no", freeze_encoder=True,
                      bucket_edges=[20.0, 100.0, 500.0] if head == "classes" else [])
    train(prepared, tmp_path, cfg, progress=False)
    doc = json.loads((tmp_path / "proxy_config.json").read_text())
    if head == "classes":
        assert doc["head"]["bucket_edges"] == [20.0, 100.0, 500.0] and len(doc["head"]["bucket_values"]) == 4
    pred = LengthPredictor.load(tmp_path, timeout_s=None, dtype="fp32")
    vals = pred.predict(["please answer briefly what is art 1", "write a long detailed essay about art 1"], ["m-long"] * 2)
    assert all(v > 0 for v in vals)


def test_head_config_validation():
    with pytest.raises(ValueError, match="unknown head 'tree'"):
        HeadConfig(head="tree")
    with pytest.raises(ValueError, match="strictly increasing"):
        HeadConfig(head="classes", bucket_edges=[100.0, 50.0])
    with pytest.raises(ValueError, match="reserved"):
        HeadConfig(models=["<unk>"])


def test_missing_column_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "model": ["m"]}), bad)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['output_tokens'\]"):
        read_prepared(bad)
    result = CliRunner().invoke(main, ["train", str(bad), "-o", str(tmp_path / "a"), "--no-progress"])
    assert result.exit_code == 2 and "output_tokens" in result.output


def test_prepare_splits_by_prompt_never_straddle(tmp_path):
    logs = synthetic_logs(tmp_path / "logs.jsonl", n_prompts=40)
    out = tmp_path / "p.parquet"
    summary = prepare([str(logs)], out, tokenizer="whitespace", val_frac=0.2, test_frac=0.3)
    t = read_prepared(out).to_pylist()
    split_of = {}
    for r in t:
        assert split_of.setdefault(r["prompt_id"], r["split"]) == r["split"]
    assert set(split_of.values()) == {"train", "val", "test"}
    assert summary["rows"] == 80 and summary["prompts"] == 40


def test_prepare_logs_schema_errors(tmp_path):
    f = tmp_path / "l.jsonl"
    f.write_text(json.dumps({"model": "m", "prompt": "hi"}) + "\n")  # neither output_tokens nor output
    with pytest.raises(ValueError):
        prepare([str(f)], tmp_path / "o.parquet", tokenizer="whitespace")
    f.write_text(json.dumps({"model": "m", "prompt": "  ", "output_tokens": 3}) + "\n")
    with pytest.raises(ValueError, match="no usable rows"):
        prepare([str(f)], tmp_path / "o.parquet", tokenizer="whitespace")


def test_cli_predict_json_lines(trained):
    out, _ = trained
    lines = "\n".join(json.dumps(r) for r in [
        {"prompt": "write a long detailed essay about art 1", "model": "m-long", "id": 1},
        {"messages": [{"role": "user", "content": "please answer briefly what is art"}], "model": "zzz", "id": 2}])
    result = CliRunner().invoke(main, ["predict", str(out), "--dtype", "fp32"], input=lines)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in result.stdout.strip().splitlines() if x.startswith("{")]
    assert [r["id"] for r in rows] == [1, 2] and all(r["predicted_tokens"] > 0 for r in rows)
    bad = CliRunner().invoke(main, ["predict", str(out)], input='{"model": "m"}\n')
    assert bad.exit_code == 2 and "needs 'prompt' or 'messages'" in bad.output


def test_prepare_reads_loadgen_datasets(tmp_path):
    # The bundled arena sample through proxy_model.datasets (no external data needed).
    out = tmp_path / "arena.parquet"
    summary = prepare(["arena"], out, tokenizer="whitespace", limit=60)
    t = read_prepared(out)
    assert summary["rows"] == t.num_rows == 60
    assert set(t.column("split").to_pylist()) <= {"train", "val", "test"}
    assert min(t.column("output_tokens").to_pylist()) >= 1


def test_init_from_carries_encoder_head_and_model_rows(trained, tmp_path):
    """--init-from: known models keep their rows, a new model starts from <unk>, scale is kept."""
    from proxy_model.train import train

    base, _ = trained
    rows = [json.loads(line) for line in synthetic_logs(tmp_path / "logs.jsonl").read_text().splitlines()]
    for r in rows:  # another team's logs: one model renamed, every reply 3x longer (other statistics)
        r["model"] = "m-new" if r["model"] == "m-short" else r["model"]
        r["output_tokens"] *= 3
    logs = tmp_path / "logs2.jsonl"
    logs.write_text("\n".join(json.dumps(r) for r in rows))
    data = tmp_path / "prepared.parquet"
    prepare([str(logs)], data, tokenizer="whitespace", val_frac=0.0, test_frac=0.0)
    out = tmp_path / "finetuned"
    # Learning rates of ~0: the fine-tuned artifact must predict exactly what its init does.
    cfg = TrainConfig(init_from=str(base), epochs=1, batch_size=4, max_length=32, learning_rate=1e-12,
                      head_learning_rate=1e-12, hidden_size=32, bf16="no", rank_loss_weight=0.0)
    train(data, out, cfg, progress=False)
    prompts = ["write a long detailed essay about art 5", "please answer briefly what is code 1"]
    old = LengthPredictor.load(base, timeout_s=None, dtype="fp32")
    new = LengthPredictor.load(out, timeout_s=None, dtype="fp32")
    assert new.predict(prompts, ["m-long"] * 2) == pytest.approx(old.predict(prompts, ["m-long"] * 2), rel=1e-3)
    assert new.predict(prompts, ["m-new"] * 2) == pytest.approx(old.predict(prompts, ["unseen"] * 2), rel=1e-3)
    with pytest.raises(ValueError, match="head is regression x 32"):
        train(data, tmp_path / "bad", TrainConfig(init_from=str(base), head="binary", hidden_size=32, bf16="no"),
              progress=False)
    result = CliRunner().invoke(main, ["train", str(data), "-o", str(tmp_path / "x"), "--init-from", str(tmp_path),
                                       "--no-progress"])
    assert result.exit_code == 2 and "not a proxy artifact" in result.output
