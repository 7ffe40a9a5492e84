"""Cluster tooling a user would otherwise script by hand.

``check``: does a Serve config fit a ``ray up`` cluster config? Every resource a deployment (or
an actor option in the app's args, such as the router's) asks for must be offered by some node
type, or its replicas stay pending forever with no error. ``placement``: where each replica of a
live cluster runs (node id, ip, node type). Ray is imported lazily: ``check`` never starts Ray.
"""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployments.config import AppConfig

# Resources Ray defines for itself; everything else in a node type is a custom resource.
BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
# Label Ray sets from RAY_NODE_TYPE_NAME, which `ray up` (autoscaler v2) and
# cluster.local_multinode export before `ray start`.
NODE_TYPE_LABEL = "ray.io/node-group"
SERVE_REPLICA_PREFIX = "SERVE_REPLICA::"


class ConfigError(ValueError):
    """A config file that does not parse or does not validate."""


class Level(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str


# ---- cluster config (ray up) ---------------------------------------------------------------
@dataclass(frozen=True)
class NodeType:
    """A node type of a ``ray up`` config: what one node offers and how many may run."""

    name: str
    resources: Mapping[str, float]
    min_workers: int
    max_workers: int
    is_head: bool = False

    @property
    def custom_resources(self) -> dict[str, float]:
        return {k: v for k, v in self.resources.items() if k not in BUILTIN_RESOURCES}

    @property
    def max_nodes(self) -> int:
        return 1 if self.is_head else self.max_workers

    def fits(self, demand: Mapping[str, float]) -> bool | None:
        """True if one node of this type can hold ``demand``; None if that depends on a CPU/GPU
        count the config leaves to auto-detection (AWS and GCP detect them from the instance)."""
        unknown = False
        for name, amount in demand.items():
            if amount <= 0:
                continue
            if name not in self.resources:
                if name in ("CPU", "GPU"):
                    unknown = True
                    continue
                return False
            if self.resources[name] < amount:
                return False
        return None if unknown else True

    def copies(self, demand: Mapping[str, float]) -> int | None:
        """How many replicas of ``demand`` one node holds (None: unknown CPU/GPU count)."""
        n = math.inf
        for name, amount in demand.items():
            if amount <= 0:
                continue
            if name not in self.resources:
                return None if name in ("CPU", "GPU") else 0
            n = min(n, math.floor(self.resources[name] / amount + 1e-9))
        return None if n is math.inf else int(n)


def load_cluster_config(path: str | Path) -> dict:
    """Read a ``ray up`` config and validate it the way ``ray up`` does before it touches a cloud:
    Ray's defaults for the provider are filled in, then the result is checked against Ray's own
    JSON schema (``ray/autoscaler/ray-schema.json``) and Ray's cross-field rules."""
    import logging

    from ray.autoscaler._private.util import prepare_config, validate_config

    # prepare_config logs routine defaults ("setting max workers for head node type to 0").
    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except Exception as e:  # jsonschema.ValidationError, ValueError, KeyError from Ray
        raise ConfigError(f"{path}: not a valid Ray cluster config: {first_line(e)}") from e
    return prepared


def node_types(cluster_config: Mapping) -> dict[str, NodeType]:
    head = cluster_config.get("head_node_type")
    out = {}
    for name, spec in (cluster_config.get("available_node_types") or {}).items():
        out[name] = NodeType(
            name=name,
            resources={k: float(v) for k, v in (spec.get("resources") or {}).items()},
            min_workers=int(spec.get("min_workers", 0)),
            max_workers=int(spec.get("max_workers", 0)),
            is_head=(name == head),
        )
    return out


def head_serve_configs(cluster_config: Mapping) -> list[str]:
    """Serve config paths that the head's start commands deploy (``serve deploy|run X.yaml``)."""
    paths = []
    for cmd in cluster_config.get("head_start_ray_commands") or []:
        words = str(cmd).replace(";", " ").replace("&&", " ").split()
        for i, word in enumerate(words[:-1]):
            if word == "serve" and words[i + 1] in ("deploy", "run"):
                paths += [w for w in words[i + 2:] if w.endswith((".yaml", ".yml"))][:1]
    return paths


# ---- Serve config --------------------------------------------------------------------------
@dataclass(frozen=True)
class Demand:
    """What one replica (or one actor) asks of a node, and how many of them may exist."""

    source: str
    resources: Mapping[str, float]
    max_copies: int = 1
    # Placement-group bundles of one replica, when it uses them (tensor-parallel workers).
    bundles: tuple[Mapping[str, float], ...] = ()
    bundle_strategy: str = "PACK"


def load_serve_config(path: str | Path) -> dict:
    """Read a Serve config file (``serve run``/``serve deploy``) and validate it with Serve's own
    schema, so a typo in a deployment option is caught here rather than at deploy time."""
    from ray.serve.schema import ServeDeploySchema

    raw = _read_yaml(path)
    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as e:
        raise ConfigError(f"{path}: not a valid Serve config: {e}") from e
    return raw


def actor_options_demand(options: Mapping | None, *, default_cpus: float = 1.0) -> dict[str, float]:
    """Resources of one actor from Ray actor options (num_cpus, num_gpus, resources)."""
    options = options or {}
    # Serve gives a replica 1 CPU unless num_cpus is set (None counts as unset there too).
    cpus = options.get("num_cpus")
    out = {"CPU": float(default_cpus if cpus is None else cpus)}
    if options.get("num_gpus"):
        out["GPU"] = float(options["num_gpus"])
    for k, v in (options.get("resources") or {}).items():
        out[k] = float(v)
    return out


def _max_replicas(options: Mapping) -> int:
    auto = options.get("autoscaling_config")
    if isinstance(auto, Mapping):
        return int(auto.get("max_replicas", 1))
    n = options.get("num_replicas", 1)
    return int(n) if isinstance(n, int) else 1


def _deployment_demand(source: str, opts: Mapping) -> Demand:
    bundles = tuple({k: float(v) for k, v in b.items()} for b in (opts.get("placement_group_bundles") or []))
    return Demand(
        source=source,
        resources=actor_options_demand(opts.get("ray_actor_options")),
        max_copies=_max_replicas(opts),
        bundles=bundles,
        bundle_strategy=str(opts.get("placement_group_strategy") or "PACK"),
    )


def _options_from_deployment(dep) -> dict:
    """The options of a built ``serve.Deployment`` in Serve-config shape."""
    cfg = dep._deployment_config
    rc = dep._replica_config
    opts: dict[str, Any] = {"ray_actor_options": dict(rc.ray_actor_options or {})}
    if cfg.autoscaling_config is not None:
        opts["autoscaling_config"] = {"max_replicas": cfg.autoscaling_config.max_replicas}
    else:
        opts["num_replicas"] = cfg.num_replicas
    if rc.placement_group_bundles:
        opts["placement_group_bundles"] = rc.placement_group_bundles
        opts["placement_group_strategy"] = rc.placement_group_strategy
    return opts


def build_deployments(import_path: str, args: Mapping | None, app_name: str) -> dict[str, dict]:
    """Run the application builder offline (as ``serve build`` does) and return each deployment's
    options as the code sets them. Needs the app's modules importable; starts no Ray."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    builder = import_attr(import_path)
    app = call_user_app_builder_with_args_if_necessary(builder, dict(args or {}))
    built = build_app(app, name=app_name)
    return {d.name: _options_from_deployment(d) for d in built.deployments}


def find_resource_options(obj: Any, path: str = "args") -> list[tuple[str, dict]]:
    """Actor options nested in an app's ``args`` (e.g. ``router: {resources: {router_node: 1}}``):
    any mapping holding a ``resources`` mapping. Such actors are not Serve deployments, so only
    their args tell where they must run."""
    found = []
    if isinstance(obj, Mapping):
        res = obj.get("resources")
        if isinstance(res, Mapping) and res and all(isinstance(v, (int, float)) for v in res.values()):
            found.append((path, actor_options_demand(obj, default_cpus=float(obj.get("num_cpus", 0) or 0))))
        for k, v in obj.items():
            if k != "resources":
                found += find_resource_options(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += find_resource_options(v, f"{path}[{i}]")
    return found


def serve_demands(serve_config: Mapping, *, build: bool = True) -> tuple[list[Demand], list[Finding]]:
    """Every resource demand of a Serve config. With ``build``, the app builder runs offline so
    deployments that the YAML does not mention are included with the options their code sets;
    the YAML's ``deployments`` entries override them as Serve does (``ray_actor_options`` as a
    whole)."""
    demands: list[Demand] = []
    notes: list[Finding] = []
    for app in serve_config.get("applications") or []:
        app_name = app.get("name", "default")
        by_name: dict[str, dict] = {}
        if build:
            try:
                by_name = build_deployments(app["import_path"], app.get("args"), app_name)
            except Exception as e:
                notes.append(Finding(Level.WARNING, f"app {app_name!r}: could not build {app['import_path']} "
                                                    f"offline ({first_line(e)}); checking only what the YAML lists"))
        for override in app.get("deployments") or []:
            name = override["name"]
            merged = dict(by_name.get(name, {}))
            for key, value in override.items():
                if key == "autoscaling_config" and isinstance(value, Mapping):
                    merged[key] = {**(merged.get(key) or {}), **value}
                    merged.pop("num_replicas", None)
                elif key != "name":
                    merged[key] = value
            if build and by_name and name not in by_name:
                notes.append(Finding(Level.ERROR, f"app {app_name!r}: the YAML configures deployment {name!r}, "
                                                  f"which the app does not have (it has {sorted(by_name)})"))
            by_name[name] = merged
        for name, opts in by_name.items():
            demands.append(_deployment_demand(f"app {app_name!r} deployment {name!r}", opts))
        for path, res in find_resource_options(app.get("args") or {}):
            demands.append(Demand(source=f"app {app_name!r} {path}", resources=res, max_copies=1))
    return demands, notes


# ---- the check -----------------------------------------------------------------------------
def check(cluster_config: Mapping, serve_config: Mapping, *, build: bool = True) -> list[Finding]:
    """Findings about whether ``serve_config`` can be placed on ``cluster_config``'s node types."""
    types = node_types(cluster_config)
    demands, findings = serve_demands(serve_config, build=build)
    offered = {r for t in types.values() for r in t.resources}

    for d in demands:
        per_node = [d.resources] if not d.bundles else _bundle_groups(d)
        for need in per_node:
            missing = sorted(r for r, v in need.items() if v > 0 and r not in BUILTIN_RESOURCES and r not in offered)
            if missing:
                findings.append(Finding(Level.ERROR, f"{d.source} asks for {fmt_resources(need)} but no node type offers "
                                                     f"{', '.join(missing)} (node types offer: {fmt_node_types(types)})"))
                continue
            fits = {t.name: t.fits(need) for t in types.values()}
            hosts = [n for n, ok in fits.items() if ok]
            maybe = [n for n, ok in fits.items() if ok is None]
            if not hosts and not maybe:
                findings.append(Finding(Level.ERROR, f"{d.source} asks for {fmt_resources(need)} per replica, which no single "
                                                     f"node type holds ({fmt_node_types(types)})"))
                continue
            if not hosts:
                findings.append(Finding(Level.WARNING, f"{d.source} ({fmt_resources(need)}) fits {maybe} only if their "
                                                       "auto-detected CPU/GPU counts suffice; write CPU/GPU in their "
                                                       "resources to check"))
                continue
            capacity = sum((types[n].copies(need) or 0) * types[n].max_nodes for n in hosts)
            if len(per_node) == 1 and capacity < d.max_copies:
                findings.append(Finding(Level.WARNING, f"{d.source}: up to {d.max_copies} replicas of {fmt_resources(need)} "
                                                       f"but node types {hosts} hold at most {capacity} at their "
                                                       "max_workers"))
            else:
                findings.append(Finding(Level.OK, f"{d.source} ({fmt_resources(need)}) -> {', '.join(hosts)}"))
    return findings


def _bundle_groups(d: Demand) -> list[dict[str, float]]:
    if d.bundle_strategy.upper() in ("STRICT_PACK",):
        total: dict[str, float] = {}
        for b in d.bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + float(v)
        return [total]
    return [dict(b) for b in d.bundles]


# ---- live cluster --------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    alive: bool
    node_type: str
    is_head: bool
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ActorPlacement:
    """One actor of the live cluster and the node it runs on."""

    name: str  # Serve replica: "<app>#<deployment>#<replica id>"; other actors: their name
    app: str | None
    deployment: str | None
    state: str
    node_id: str | None
    node_ip: str | None
    node_type: str | None


def classify_node(resources: Mapping[str, float], labels: Mapping[str, str] | None, is_head: bool,
                  types: Mapping[str, NodeType] | None = None) -> str:
    """A node's type: the ``ray.io/node-group`` label when set, else the node type of the cluster
    config whose custom resources match, else a name made of the node's custom resources."""
    if labels and labels.get(NODE_TYPE_LABEL):
        return labels[NODE_TYPE_LABEL]
    custom = {k: v for k, v in resources.items() if k not in BUILTIN_RESOURCES and not k.startswith("node:")}
    if types:
        for t in types.values():
            if t.is_head == is_head and t.custom_resources and set(t.custom_resources) == set(custom):
                return t.name
    if custom:
        return "+".join(sorted(custom))
    return "head" if is_head else "worker"


def live_nodes(types: Mapping[str, NodeType] | None = None) -> list[NodeInfo]:
    """Nodes of the Ray cluster this process is connected to (GCS only: no dashboard needed)."""
    import ray

    out = []
    for n in ray.nodes():
        res = n.get("Resources") or {}
        is_head = "node:__internal_head__" in res
        out.append(NodeInfo(node_id=n["NodeID"], ip=n.get("NodeManagerAddress", ""), alive=bool(n.get("Alive")),
                            node_type=classify_node(res, n.get("Labels"), is_head, types), is_head=is_head,
                            resources=res, labels=dict(n.get("Labels") or {})))
    return out


def parse_replica_actor_name(name: str) -> tuple[str, str, str] | None:
    """``SERVE_REPLICA::app#deployment#id`` -> (app, deployment, id); None for other actors."""
    if not name.startswith(SERVE_REPLICA_PREFIX):
        return None
    parts = name[len(SERVE_REPLICA_PREFIX):].split("#")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def placements(actors: Iterable[Mapping], nodes: Iterable[NodeInfo], *, include_serve_internal: bool = False
               ) -> list[ActorPlacement]:
    """Join actor records (``name``, ``state``, ``node_id``) with nodes. Keeps Serve replicas and
    named non-Serve actors (the router); Serve's controller and HTTP proxies only on request."""
    by_id = {n.node_id: n for n in nodes}
    out = []
    for a in actors:
        name = a.get("name") or ""
        if not name:
            continue
        rep = parse_replica_actor_name(name)
        internal = name.startswith("SERVE_") and rep is None
        if internal and not include_serve_internal:
            continue
        node = by_id.get(a.get("node_id") or "")
        out.append(ActorPlacement(
            name=name[len(SERVE_REPLICA_PREFIX):] if rep else name,
            app=rep[0] if rep else None, deployment=rep[1] if rep else None,
            state=str(a.get("state", "")), node_id=a.get("node_id"),
            node_ip=node.ip if node else None, node_type=node.node_type if node else None))
    return sorted(out, key=lambda p: (p.app is None, p.app or "", p.deployment or "", p.name))


def live_actors(dashboard_address: str | None = None) -> list[dict]:
    """Alive actors with their node, from the state API (needs the dashboard); falls back to the
    GCS actor table when the cluster runs without a dashboard."""
    try:
        from ray.util.state import list_actors

        kw = {"address": dashboard_address} if dashboard_address else {}
        rows = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False, **kw)
        return [{"name": r.name, "state": r.state, "node_id": r.node_id} for r in rows]
    except Exception:
        import ray

        table = ray._private.state.actors(actor_state_name="ALIVE")  # GCS: works without the dashboard
        return [{"name": a.get("Name", ""), "state": a.get("State", ""), "node_id": (a.get("Address") or {}).get("NodeID")}
                for a in table.values()]


def serve_status_summary() -> dict:
    """{app: {"status": ..., "deployments": {name: {"status": ..., "replica_states": {...}}}}}."""
    from ray import serve

    st = serve.status()
    out = {}
    for app_name, app in st.applications.items():
        out[app_name] = {
            "status": str(getattr(app.status, "value", app.status)),
            "deployments": {
                d_name: {"status": str(getattr(d.status, "value", d.status)),
                         "replica_states": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()}}
                for d_name, d in app.deployments.items()
            },
        }
    return out


# ---- helpers -------------------------------------------------------------------------------
def _read_yaml(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def derive_config(data: dict, *, proxy_artifact: str | None = None, overrides: dict[str, object] | None = None,
                  tls: tuple[str, str] | None = None) -> dict:
    """A copy of a cluster config with ``proxy.artifact_path`` and ``section.key`` overrides set.

    ``data`` is either ``build_app``'s dict or a Serve config (``applications: [{args: ...}]``), whose
    first application's ``args`` is changed and whose wrapper is kept (the copy deploys as the original
    did). The changed app config is validated, so a misspelt key fails here with the valid ones listed
    instead of being ignored by a benchmark that then measures the wrong cluster.

    ``tls`` = (certificate file, key file), paths as they are on the cluster's nodes: Serve's HTTP
    proxies then serve HTTPS (``http_options.ssl_certfile``/``ssl_keyfile``, Serve's own options,
    checked with Serve's schema). Only a Serve config has ``http_options``.
    """
    out = copy.deepcopy(data or {})
    if tls is not None:
        _set_tls(out, *tls)
    if "applications" in out:
        apps = out["applications"] or []
        if not apps:
            raise ValueError("the Serve config lists no applications")
        cfg = apps[0].setdefault("args", {})
    else:
        cfg = out
    if proxy_artifact is not None:
        cfg.setdefault("proxy", {})["artifact_path"] = proxy_artifact
    for key, value in (overrides or {}).items():
        section, sep, name = key.partition(".")
        if not sep or not name or "." in name:
            raise ValueError(f"override keys look like section.key (e.g. router.aging_threshold_s), got {key!r}")
        if not isinstance(cfg.setdefault(section, {}), dict):
            raise ValueError(f"{section!r} is not a section of the config")
        cfg[section][name] = value
    AppConfig.from_dict(cfg)
    return out


def _set_tls(serve_config: dict, certfile: str, keyfile: str) -> None:
    from ray.serve.schema import HTTPOptionsSchema

    if "applications" not in serve_config:
        raise ValueError("TLS is set in a Serve config's http_options: this is a bare app config (no applications:)")
    if not certfile or not keyfile:
        raise ValueError("TLS needs both a certificate file and a key file")
    http = dict(serve_config.get("http_options") or {})
    http.update(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    HTTPOptionsSchema(**http)  # Serve's own check of http_options (both files, known keys)
    serve_config["http_options"] = http


def derive_file(src: str | Path, dst: str | Path, *, proxy_artifact: str | None = None,
                overrides: dict[str, object] | None = None, tls: tuple[str, str] | None = None) -> Path:
    """Write ``dst``: :func:`derive_config` of the config file ``src`` (``ssjf-cluster
    derive``, the demo and live_bench make their configs this way). ConfigError (a ValueError) names
    a missing file, bad YAML, or a knob that does not exist."""
    data = _read_yaml(src)
    if not isinstance(data, dict):
        raise ConfigError(f"{src} must hold a mapping, got {type(data).__name__}")
    try:
        out = derive_config(data, proxy_artifact=proxy_artifact, overrides=overrides, tls=tls)
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(out, sort_keys=False))
    return dst


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def fmt_resources(res: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items()) if v) + "}"


def fmt_node_types(types: Mapping[str, NodeType]) -> str:
    return "; ".join(f"{t.name} {fmt_resources(t.resources)}" for t in types.values())
