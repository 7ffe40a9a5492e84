"""scripts/demo.py and scripts/demo_proxy.py (the README's main job): the pure parts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_proxy():
    return load_script("demo_proxy")


@pytest.fixture(scope="module")
def demo():
    return load_script("demo")


def test_recapped_cuts_replies_at_the_cap_as_a_request_of_that_cap_would(demo_proxy):
    long = {"messages": [], "output_tokens": 300, "finished": True, "output": "x"}
    assert demo_proxy.recapped(long, 64) == {"messages": [], "output_tokens": 64, "finished": False}
    # A reply of exactly the cap is cut there too: the request would end at its max_tokens.
    assert demo_proxy.recapped({**long, "output_tokens": 64}, 64)["finished"] is False
    short = {"messages": [], "output_tokens": 30, "finished": True}
    assert demo_proxy.recapped(short, 64) == short
    assert demo_proxy.recapped({**long, "output_tokens": 600, "finished": False}, 512)["output_tokens"] == 512


def test_training_rows_never_exceed_the_cap_and_apache_rows_are_opt_in(demo_proxy):
    own = demo_proxy.training_rows(64, use_apache=False)
    both = demo_proxy.training_rows(64, use_apache=True)
    assert len(own) == 150 and len(both) == 150 + 1620
    assert all(r["output_tokens"] <= 64 for r in both)
    assert all(r["finished"] is False for r in both if r["output_tokens"] == 64)
    assert not any("output" in r for r in both)


def test_every_stage_streams_and_sets_its_aging_threshold(demo, demo_proxy):
    for stage in demo.STAGES:
        src, overrides, args = demo.stage_settings(stage)
        assert Path(src).suffix == ".yaml"
        assert None not in args and "--no-stream" not in args
        threshold = overrides["router.aging_threshold_s"]
        assert isinstance(threshold, float) and threshold > 0
    _, _, real_args = demo.stage_settings("real")
    assert real_args[real_args.index("--num-requests") + 1] == str(demo.REAL_REQUESTS)
    # The real stage's proxy is trained on lengths cut at the stage's max_tokens.
    assert real_args[real_args.index("--max-tokens") + 1] == str(demo_proxy.CAP)
