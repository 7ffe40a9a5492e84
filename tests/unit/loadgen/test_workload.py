"""WorkloadSpec validation and build_workload: columns, seeds, sampling, max_tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadgen.workload import WORKLOAD_SCHEMA, WorkloadSpec, build_workload
from proxy_model.datasets import load_dataset


def test_default_workload_columns_and_order():
    w = build_workload(WorkloadSpec(rate=2.0, num_requests=300, seed=1))
    assert w.schema.equals(WORKLOAD_SCHEMA, check_metadata=False)
    assert w.num_rows == 300
    assert len(set(w["request_id"].to_pylist())) == 300
    arrivals = w["arrival_s"].to_numpy()
    assert arrivals[0] == 0 and np.all(np.diff(arrivals) >= 0)
    assert 299 / arrivals[-1] == pytest.approx(2.0)
    assert set(w["max_tokens"].to_pylist()) == {4096}
    assert w.schema.metadata[b"tokenizer"] == b"smollm2"
    assert json.loads(w.schema.metadata[b"workload_spec"])["rate"] == 2.0
    # without replacement while the dataset is large enough
    pairs = list(zip(w["prompt_id"].to_pylist(), w["model"].to_pylist(), strict=True))
    assert len(set(pairs)) == 300


def test_same_seed_same_workload_other_seed_differs():
    spec = WorkloadSpec(trace="gamma:2", rate=5.0, num_requests=50, seed=3)
    assert build_workload(spec).equals(build_workload(spec))
    other = build_workload(WorkloadSpec(trace="gamma:2", rate=5.0, num_requests=50, seed=4))
    assert other["prompt_id"].to_pylist() != build_workload(spec)["prompt_id"].to_pylist()


def test_arrival_process_does_not_change_prompts():
    a = build_workload(WorkloadSpec(trace="poisson", rate=1.0, num_requests=40, seed=9))
    b = build_workload(WorkloadSpec(trace="azure-conv", rate=1.0, num_requests=40, seed=9))
    assert a["prompt_id"].to_pylist() == b["prompt_id"].to_pylist()
    assert not np.allclose(a["arrival_s"].to_numpy(), b["arrival_s"].to_numpy())


def test_with_replacement_when_more_requests_than_rows(tmp_path):
    recs = [{"model": "m", "dataset": "d", "instruction": f"q{i}", "output": "a " * (i + 1)} for i in range(5)]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    spec = WorkloadSpec(dataset=str(path), tokenizer="whitespace", trace="poisson", rate=1.0, num_requests=20)
    w = build_workload(spec)
    assert w.num_rows == 20 and set(w["prompt"].to_pylist()) <= {f"q{i}" for i in range(5)}
    assert w.schema.metadata[b"tokenizer"] == b"whitespace"


def test_max_tokens_drops_longer_replies_and_keeps_truth():
    table = load_dataset("arena")
    w = build_workload(WorkloadSpec(rate=1.0, num_requests=500, max_tokens=300), dataset=table)
    out = w["output_tokens"].to_numpy()
    assert out.max() <= 300 and set(w["max_tokens"].to_pylist()) == {300}
    kept = int(w.schema.metadata[b"rows_available"])
    assert kept == int((table["output_tokens"].to_numpy() <= 300).sum())


def test_models_filter():
    w = build_workload(WorkloadSpec(rate=1.0, num_requests=30, models=("claude-2", "gpt-4-0314")))
    assert set(w["model"].to_pylist()) <= {"claude-2", "gpt-4-0314"}
    with pytest.raises(ValueError, match="not in dataset"):
        build_workload(WorkloadSpec(rate=1.0, num_requests=3, models=("nope",)))


def test_trace_time_scale_and_own_rate():
    own = build_workload(WorkloadSpec(num_requests=50, seed=2))
    slow = build_workload(WorkloadSpec(num_requests=50, seed=2, time_scale=2.0))
    np.testing.assert_allclose(slow["arrival_s"].to_numpy(), 2 * own["arrival_s"].to_numpy())


def test_max_tokens_cap_alias():
    assert WorkloadSpec(max_tokens_cap=512).max_tokens == 512


@pytest.mark.parametrize("kwargs, match", [
    ({"trace": "poisson"}, "needs a rate"),
    ({"trace": "gamma:0", "rate": 1.0}, "CV"),
    ({"num_requests": 0}, "num_requests"),
    ({"rate": -2.0}, "rate"),
    ({"trace": "poisson", "rate": 1.0, "time_scale": 2.0}, "trace replay only"),
    ({"rate": 1.0, "time_scale": 2.0}, "not both"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"trace": "azure"}, "azure-conv"),
    ({"dataset": "no-such"}, "arena"),
    ({"models": ()}, "models"),
])
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorkloadSpec(**kwargs)
