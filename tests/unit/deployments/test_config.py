"""The serving config: defaults, validation messages that show the values, and the shipped YAML files."""

from pathlib import Path

import pytest
import yaml

from deployments.config import AppConfig, LLMSettings, RoutingMode, describe
from deployments.predictors import MarkerPredictor, heuristic_predictor, load_predictor
from router.config import BatchingMode

CLUSTER = Path(__file__).resolve().parents[3] / "cluster"


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
    ({"router": {"mode": "serve-default"}, "llm": {"max_batch": 4, "max_ongoing_requests": 3}},
     ["max_ongoing_requests", "3", "serve-default"]),
    ({"router": {"mode": "pow2"}}, ["'pow2'", "central, serve-default"]),
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


def test_routing_mode_sets_serves_cap_of_calls_per_replica():
    central = AppConfig.from_dict({"llm": {"max_batch": 4}})
    assert central.routing_mode is RoutingMode.CENTRAL and central.llm_max_ongoing_requests == 4 * 4 + 8
    baseline = AppConfig.from_dict({"router": {"mode": "serve-default"}, "llm": {"max_batch": 4}})
    assert baseline.routing_mode is RoutingMode.SERVE_DEFAULT and baseline.llm_max_ongoing_requests == 4
    one = AppConfig.from_dict({"router": {"mode": "serve-default"}, "llm": {"batching": "none", "max_batch": 8}})
    assert one.llm_max_ongoing_requests == 1  # batching none: one slot
    # As many as the slots is a full replica in serve-default, where Serve admits the work.
    equal = AppConfig.from_dict({"router": {"mode": "serve-default"}, "llm": {"max_batch": 4, "max_ongoing_requests": 4}})
    assert equal.llm_max_ongoing_requests == 4


def test_batching_none_means_one_slot():
    s = LLMSettings(batching="none", max_batch=8)
    assert s.max_batch == 1 and s.serve_max_ongoing_requests > 1


def test_router_scheduling_knobs_are_the_scheduling_cores():
    from dataclasses import fields

    from deployments.config import RouterSettings
    from router.config import SchedulerConfig

    core = {f.name: f for f in fields(SchedulerConfig)}
    knobs = [f for f in fields(RouterSettings) if f.name in core]
    assert [f.name for f in knobs] == ["policy", "balancer", "aging_rule", "aging_rate", "aging_threshold_s",
                                       "repredict_every_tokens", "preempt_margin", "max_preemptions",
                                       "preempt_min_remaining_tokens", "srpt_aging_threshold_s",
                                       "slo_seconds_per_token", "slo_first_token_s", "slo_guard_s",
                                       "slo_infeasible", "work_stealing", "max_queued", "seed"]  # the config keys, in order
    assert [f.name for f in fields(RouterSettings)][:len(knobs)] == [f.name for f in knobs]
    assert all(f.metadata["help"] == core[f.name].metadata["help"] for f in knobs)
    router = AppConfig.from_dict({"router": {"policy": "ssjf-aging", "aging_threshold_s": 12.0, "seed": 3}}).router
    assert router.max_queued == 1000  # a served cluster caps its queue by default
    sched = router.scheduler_config("static", 4)
    assert sched.to_dict() == {**SchedulerConfig().to_dict(), "policy": "ssjf-aging", "aging_threshold_s": 12.0,
                               "seed": 3, "max_queued": 1000, "batching": "static", "max_batch": 4}


def test_every_knob_is_documented():
    rows = describe()
    assert len(rows) > 40
    assert all(help_ for _, _, help_ in rows), [k for k, _, h in rows if not h]


def test_the_knob_table_in_the_docs_is_what_describe_gives():
    """docs/serving.md's table is generated from describe(): a changed default or new knob must show."""
    docs = (CLUSTER.parent / "docs" / "serving.md").read_text().splitlines()
    table = [line for line in docs if line.startswith("| `")]
    want = [f"| `{key}` | `{default}` | {help_} |" for key, default, help_ in describe()]
    assert [line for line in table if line in want] == want, sorted(set(want) - set(table))


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
    from deployments.config import ProxySettings

    assert isinstance(load_predictor(ProxySettings(predictor="marker", constant_tokens=9)), MarkerPredictor)
    auto = load_predictor(ProxySettings(predictor="auto", artifact_path=str(tmp_path / "missing")))
    assert type(auto) is type(heuristic_predictor())
    const = load_predictor(ProxySettings(predictor="constant", constant_tokens=11))
    assert const.predict(["x", "y"], ["m", "m"]) == [11.0, 11.0]


def test_derive_config_keeps_a_serve_wrapper_and_sets_the_knobs():
    from cluster.tools import derive_config

    src = yaml.safe_load((CLUSTER / "demo.yaml").read_text())
    out = derive_config(src, proxy_artifact="artifacts/p", overrides={"router.aging_threshold_s": 12.5,
                                                                       "llm.time_scale": 0.5})
    args = out["applications"][0]["args"]
    assert args["proxy"]["artifact_path"] == "artifacts/p"
    assert args["router"]["aging_threshold_s"] == 12.5 and args["llm"]["time_scale"] == 0.5
    assert out["applications"][0]["import_path"] == src["applications"][0]["import_path"]
    assert src["applications"][0]["args"]["router"]["aging_threshold_s"] != 12.5  # the source is copied, not changed
    bare = derive_config({"llm": {"engine": "replay"}}, overrides={"router.policy": "ssjf"})
    assert bare == {"llm": {"engine": "replay"}, "router": {"policy": "ssjf"}}


@pytest.mark.parametrize("overrides, words", [
    ({"router.aging_treshold_s": 3}, ["aging_treshold_s", "router"]),
    ({"routr.policy": "ssjf"}, ["routr", "valid keys"]),
    ({"aging_threshold_s": 3}, ["section.key"]),
    ({"llm.time_scale": -1}, ["time_scale", "-1"]),
])
def test_derive_config_refuses_a_knob_that_would_be_ignored(overrides, words):
    from cluster.tools import derive_config

    with pytest.raises(ValueError) as exc:
        derive_config({}, overrides=overrides)
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_cli_derive_writes_the_copy_and_exits_2_on_a_bad_key(tmp_path):
    from click.testing import CliRunner

    from cluster.cli import main

    dst = tmp_path / "out" / "paper.yaml"
    runner = CliRunner()
    ok = runner.invoke(main, ["derive", str(CLUSTER / "bench_paper.yaml"), str(dst), "--proxy", "a/b",
                              "--set", "router.aging_threshold_s=14.7", "--set", "router.policy=ssjf"])
    assert ok.exit_code == 0, ok.output
    cfg = AppConfig.from_dict(yaml.safe_load(dst.read_text()))
    assert cfg.router.aging_threshold_s == 14.7 and cfg.proxy.artifact_path == "a/b"
    bad = runner.invoke(main, ["derive", str(CLUSTER / "bench_paper.yaml"), str(tmp_path / "x.yaml"),
                               "--set", "router.aging_threshold=1"])
    assert bad.exit_code == 2 and "aging_threshold" in bad.output and not (tmp_path / "x.yaml").exists()
    assert runner.invoke(main, ["derive", str(CLUSTER / "bench_paper.yaml"), str(dst), "--set", "nothing"]).exit_code == 2
