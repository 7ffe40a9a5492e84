"""The serving config: defaults, validation messages that show the values, and the shipped YAML files."""

from pathlib import Path

import pytest
import yaml

from cluster.config import AppConfig, LLMSettings, describe
from deployments.predictors import MarkerPredictor, heuristic_predictor, load_predictor
from router.config import BatchingMode

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def test_defaults_build_a_scheduler_config():
    cfg = AppConfig.from_dict({})
    sched = cfg.scheduler_config()
    assert sched.batching is BatchingMode.CONTINUOUS and sched.max_batch == 4
    assert cfg.router_actor_name == "ssjf-router-ssjf"
    assert cfg.llm.served_models == ["smollm2"]
    assert AppConfig.from_dict({"llm": {"engine": "replay"}}).llm.served_models == ["*"]


@pytest.mark.parametrize("data, words", [
    ({"routr": {}}, ["routr", "valid keys"]),
    ({"router": {"polcy": "ssjf"}}, ["polcy", "router"]),
    ({"router": {"policy": "sjf"}}, ["'sjf'", "fcfs, ssjf, ssjf-aging"]),
    ({"router": {"policy": "oracle"}}, ["oracle", "simulator"]),
    ({"router": {"balancer": "random"}}, ["'random'", "least-work"]),
    ({"router": {"max_queued": -1}}, ["max_queued", "-1"]),
    ({"llm": {"engine": "vllm"}}, ["'vllm'", "hf, deepspeed, replay"]),
    ({"llm": {"batching": "dynamic"}}, ["'dynamic'", "none, static, continuous"]),
    ({"llm": {"max_batch": 0}}, ["max_batch", "0"]),
    ({"llm": {"time_scale": 0}}, ["time_scale", "0"]),
    ({"llm": {"engine": "deepspeed", "batching": "continuous"}}, ["deepspeed", "continuous"]),
    ({"llm": {"engine": "hf", "served_models": ["*"]}}, ["'*'", "replay"]),
    ({"llm": {"max_batch": 4, "max_ongoing_requests": 4}}, ["max_ongoing_requests", "4"]),
    ({"proxy": {"predictor": "oracle"}}, ["'oracle'", "heuristic"]),
    ({"proxy": {"timeout_s": 0}}, ["proxy.timeout_s", "0"]),
    ({"ingress": {"max_retries": -1}}, ["max_retries", "-1"]),
    ({"name": "a b"}, ["name", "'a b'"]),
])
def test_bad_values_fail_with_the_value_in_the_message(data, words):
    with pytest.raises(ValueError) as e:
        AppConfig.from_dict(data)
    for w in words:
        assert w in str(e.value)


def test_batching_none_means_one_slot():
    s = LLMSettings(batching="none", max_batch=8)
    assert s.max_batch == 1 and s.serve_max_ongoing_requests > 1


def test_every_knob_is_documented():
    rows = describe()
    assert len(rows) > 40
    assert all(help_ for _, _, help_ in rows), [k for k, _, h in rows if not h]


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("serve_*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_validate(path):
    data = yaml.safe_load(path.read_text())
    apps = data["applications"]
    assert apps
    for app in apps:
        assert app["import_path"] == "deployments.app:build_app"
        cfg = AppConfig.from_dict(app.get("args"))
        assert cfg.name == app["name"]


def test_marker_predictor_reads_the_prompt():
    p = MarkerPredictor(default=7)
    assert p.predict(["a [[predict:42]] b", "plain", "[[predict:3.5]]"], ["m"] * 3) == [42.0, 7.0, 3.5]


def test_predictor_selection(tmp_path):
    from cluster.config import ProxySettings

    assert isinstance(load_predictor(ProxySettings(predictor="marker", constant_tokens=9)), MarkerPredictor)
    auto = load_predictor(ProxySettings(predictor="auto", artifact_path=str(tmp_path / "missing")))
    assert type(auto) is type(heuristic_predictor())
    const = load_predictor(ProxySettings(predictor="constant", constant_tokens=11))
    assert const.predict(["x", "y"], ["m", "m"]) == [11.0, 11.0]
