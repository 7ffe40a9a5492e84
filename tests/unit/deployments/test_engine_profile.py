"""benchmarks/engine_profile.py: the fit recovers a known profile from its iterations, refuses rows
that cannot separate its terms, and ``measure`` times real prefill and decode iterations of the
HFEngine on a tiny Llama."""

import importlib.util
import json
from pathlib import Path

import pytest

from router.cost_model import EngineProfile

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def prof():
    spec = importlib.util.spec_from_file_location("engine_profile", ROOT / "benchmarks" / "engine_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(truth: EngineProfile) -> list[dict]:
    rows = [{"kind": "prefill", "num_prefill_tokens": p, "batch_size": 0, "num_context_tokens": 0,
             "time_s": truth.iteration_time_s(p, 0, 0)} for p in (64, 256, 768)]
    rows += [{"kind": "decode", "num_prefill_tokens": 0, "batch_size": b, "num_context_tokens": 60 * b,
              "time_s": truth.iteration_time_s(0, b, 0)} for b in (1, 2, 4)]
    return rows


def test_fit_recovers_the_profile_its_iterations_came_from(prof):
    truth = EngineProfile(overhead_s=0.06, per_seq_s=0.012, weights_floor_s=0.0, per_token_s=0.0025,
                          per_context_token_s=0.0)
    got = EngineProfile.from_dict(prof.fit_continuous(_rows(truth), name="t"))
    for name in ("overhead_s", "per_seq_s", "per_token_s"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=1e-6), name
    assert got.per_context_token_s == 0.0 and got.weights_floor_s == 0.0
    # What the simulator asks of it: a decode step of 4 and a 500-token prefill.
    assert got.iteration_time_s(0, 4, 240) == pytest.approx(truth.iteration_time_s(0, 4, 0))
    assert got.iteration_time_s(500, 0, 0) == pytest.approx(truth.iteration_time_s(500, 0, 0))


def test_fit_needs_two_prompt_lengths_and_two_batch_sizes(prof):
    rows = _rows(EngineProfile())
    with pytest.raises(ValueError, match="2\\+ batch sizes"):
        prof.fit_continuous([r for r in rows if r["kind"] == "prefill" or r["batch_size"] == 1])
    with pytest.raises(ValueError, match="2\\+ prompt lengths"):
        prof.fit_continuous([r for r in rows if r["kind"] == "decode" or r["num_prefill_tokens"] == 64])


def test_measure_then_fit_on_a_tiny_llama(prof, tmp_path):
    pytest.importorskip("torch")
    from proxy_model.testing import make_tiny_llama

    tiny = str(make_tiny_llama(tmp_path / "tiny"))
    raw = tmp_path / "raw.json"
    assert prof.main(["measure", "--model", tiny, "--slots", "1,2", "--prefill-tokens", "16,64", "--max-tokens", "12",
                      "--repeats", "1", "--out", str(raw)]) == 0
    rows = json.loads(raw.read_text())["measurements"]
    assert sorted(r["num_prefill_tokens"] for r in rows if r["kind"] == "prefill") == [16, 64]
    assert sorted(r["batch_size"] for r in rows if r["kind"] == "decode") == [1, 2]
    assert all(r["time_s"] > 0 for r in rows)
    out = tmp_path / "engine.json"
    assert prof.main(["fit", str(raw), str(raw), "--out", str(out)]) == 0
    profile = EngineProfile.load(out)  # what `loadgen simulate --engine-profile` reads
    assert profile.iteration_time_s(0, 1, 0) > 0 and "2 processes" in profile.source
