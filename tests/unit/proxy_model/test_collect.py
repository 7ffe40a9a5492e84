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
