"""`proxy-model collect` on a tiny Llama built from a config with a freshly trained tokenizer."""

import json

import pytest

torch = pytest.importorskip("torch")

from proxy_model.collect import CollectConfig, collect  # noqa: E402
from proxy_model.testing import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


CONVS = [
    {"prompt_id": "a", "messages": [{"role": "user", "content": "what is the capital of france"}]},
    {"prompt_id": "b", "messages": [{"role": "user", "content": "write a long essay"},
                                    {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "now explain code step by step in python"}]},
]


def test_collect_records_capped_lengths_in_logs_schema(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    out = tmp_path / "c.jsonl"
    summary = collect(CONVS, out, CollectConfig(model=str(path), model_name="tiny", max_new_tokens=6, batch_size=2),
                      model=model, tokenizer=tok, progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == ["a", "b"]
    for r in rows:
        assert r["model"] == "tiny" and 0 <= r["output_tokens"] <= 6
        assert r["finished"] == (r["output_tokens"] < 6)
    assert summary["capped"] == sum(not r["finished"] for r in rows)


def test_collect_stops_at_eos_and_counts_tokens_before_it(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    # Greedy decoding is deterministic: find the tokens the model emits, then declare its 3rd
    # token the EOS. The recorded length must be the position of that token's first occurrence.
    ids = tok.apply_chat_template(CONVS[0]["messages"], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    gen = model.generate(torch.tensor([list(ids)]), max_new_tokens=8, do_sample=False,
                         eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    eos = gen[2]
    model.generation_config.eos_token_id = eos
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    out = tmp_path / "e.jsonl"
    collect(CONVS[:1], out, CollectConfig(model=str(path), max_new_tokens=8), model=model, tokenizer=tok, progress=False)
    row = json.loads(out.read_text())
    assert row["finished"] is True and row["output_tokens"] == gen.index(eos)


def test_collect_config_and_input_errors(tiny_llm, tmp_path):
    with pytest.raises(ValueError, match="max_new_tokens"):
        CollectConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        CollectConfig(temperature=-1)
    _, model, tok = tiny_llm
    bad = [{"prompt_id": "x", "messages": [{"role": "assistant", "content": "hi"}]}]
    with pytest.raises(ValueError, match="must end with a user turn"):
        collect(bad, tmp_path / "x.jsonl", CollectConfig(), model=model, tokenizer=tok, progress=False)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_collect_resumes_skipping_prompts_already_written(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    out = tmp_path / "r.jsonl"
    cfg = CollectConfig(model=str(path), model_name="tiny", max_new_tokens=4, batch_size=2)
    first = collect(CONVS[:1], out, cfg, model=model, tokenizer=tok, progress=False)
    assert first["rows"] == 1 and first["skipped"] == 0
    second = collect(CONVS, out, cfg, model=model, tokenizer=tok, progress=False)
    assert second["rows"] == 1 and second["skipped"] == 1 and second["remaining"] == 0
    assert [r["prompt_id"] for r in _rows(out)] == ["a", "b"]
    # Nothing left: no model needed, nothing written.
    third = collect(CONVS, out, cfg, model=None, tokenizer=None, progress=False)
    assert third["rows"] == 0 and third["skipped"] == 2 and len(_rows(out)) == 2
    # --overwrite starts afresh.
    fresh = collect(CONVS[1:], out, cfg, model=model, tokenizer=tok, progress=False, resume=False)
    assert fresh["rows"] == 1 and [r["prompt_id"] for r in _rows(out)] == ["b"]


def test_collect_resume_cuts_a_torn_last_line_and_refuses_another_models_rows(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    out = tmp_path / "t.jsonl"
    cfg = CollectConfig(model=str(path), model_name="tiny", max_new_tokens=4)
    collect(CONVS[:1], out, cfg, model=model, tokenizer=tok, progress=False)
    with open(out, "a") as f:
        f.write('{"prompt_id": "b", "mod')  # a run killed while writing
    summary = collect(CONVS, out, cfg, model=model, tokenizer=tok, progress=False)
    assert summary["rows"] == 1 and [r["prompt_id"] for r in _rows(out)] == ["a", "b"]
    other = CollectConfig(model=str(path), model_name="other", max_new_tokens=4)
    with pytest.raises(ValueError, match="holds model 'tiny'"):
        collect(CONVS, out, other, model=model, tokenizer=tok, progress=False)


class _ClockModel:
    """The tiny model, but each generate takes ``sleep_s``; ``cut_to`` imitates generate stopped
    by max_time: that many tokens, no EOS."""

    def __init__(self, model, sleep_s=0.0, cut_to=None):
        self._model, self.sleep_s, self.cut_to, self.calls = model, sleep_s, cut_to, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, **kwargs):
        import time

        self.calls.append(kwargs.get("max_time"))
        if self.cut_to is not None:
            kwargs.update(max_new_tokens=self.cut_to, min_new_tokens=self.cut_to)
        out = self._model.generate(**kwargs)
        time.sleep(self.sleep_s)
        return out


def test_collect_deadline_keeps_finished_batches_then_resume_completes(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    out = tmp_path / "d.jsonl"
    slow = _ClockModel(model, sleep_s=1.2)
    cfg = CollectConfig(model=str(path), model_name="tiny", max_new_tokens=4, batch_size=1, deadline_s=1.0)
    summary = collect(CONVS, out, cfg, model=slow, tokenizer=tok, progress=False)
    assert summary["deadline_hit"] and summary["rows"] == 1 and summary["remaining"] == 1
    assert len(slow.calls) == 1 and 0 < slow.calls[0] <= 1.0  # generate was bounded by what was left
    assert [r["prompt_id"] for r in _rows(out)] == ["a"]  # shortest prompt first
    rest = collect(CONVS, out, CollectConfig(model=str(path), model_name="tiny", max_new_tokens=4),
                   model=model, tokenizer=tok, progress=False)
    assert rest["rows"] == 1 and rest["skipped"] == 1 and not rest["deadline_hit"]
    assert sorted(r["prompt_id"] for r in _rows(out)) == ["a", "b"]


def test_collect_deadline_drops_replies_cut_short_by_the_clock(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    out = tmp_path / "cut.jsonl"
    cut = _ClockModel(model, sleep_s=1.2, cut_to=2)  # 2 tokens, no EOS, under the cap of 6: length unknown
    cfg = CollectConfig(model=str(path), model_name="tiny", max_new_tokens=6, batch_size=2, deadline_s=1.0)
    summary = collect(CONVS, out, cfg, model=cut, tokenizer=tok, progress=False)
    assert summary["deadline_hit"] and summary["rows"] == 0 and summary["dropped_at_deadline"] == 2
    assert summary["remaining"] == 2 and out.read_text() == ""


def test_collect_deadline_already_past_writes_nothing(tiny_llm, tmp_path):
    path, model, tok = tiny_llm
    out = tmp_path / "p.jsonl"
    cfg = CollectConfig(model=str(path), model_name="tiny", max_new_tokens=4, deadline_s=1e-9)
    summary = collect(CONVS, out, cfg, model=model, tokenizer=tok, progress=False)
    assert summary["deadline_hit"] and summary["rows"] == 0 and summary["remaining"] == 2
    with pytest.raises(ValueError, match="deadline_s"):
        CollectConfig(deadline_s=0)
    with pytest.raises(ValueError, match="dtype"):
        CollectConfig(dtype="int8")
