"""Shared fixtures of the proxy model's tests: logs-schema data with a learnable length pattern."""

import json
import random

import pytest

TOPICS = ["history", "science", "music", "art", "python", "france", "code", "ideas"]


def synthetic_logs(path, n_prompts=24):
    """Logs-schema JSONL: 'briefly' prompts get short replies, 'essay' prompts long ones; two models."""
    rng = random.Random(0)
    rows = []
    for i in range(n_prompts):
        topic = TOPICS[i % len(TOPICS)]
        long = i % 2 == 0
        prompt = (f"write a long detailed essay about {topic} step by step {i}" if long
                  else f"please answer briefly in one word what is {topic} {i}")
        for model, scale in (("m-short", 0.5), ("m-long", 2.0)):
            base = 400 if long else 10
            rows.append({"prompt_id": f"p{i}", "prompt": prompt, "model": model,
                         "output_tokens": int(base * scale * rng.uniform(0.8, 1.2)), "source": "synthetic"})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    out = d / "prepared.parquet"
    # test_frac 0: every prompt trains (tiny data); the split rule is tested separately.
    from proxy_model.data import prepare

    prepare([str(synthetic_logs(d / "logs.jsonl"))], out, tokenizer="whitespace", val_frac=0.0, test_frac=0.0)
    return out
