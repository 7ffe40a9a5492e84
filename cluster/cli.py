"""Cluster tooling CLI.

    python -m cluster.cli check ray_cluster.yaml [cluster/serve_gpu_hf.yaml ...] [--no-build]
    python -m cluster.cli status --address HOST:PORT [--cluster-config ray_cluster.yaml] [--json]
    python -m cluster.cli local up [--llm-nodes 2] [--detach]     # a multi-node Ray on this machine
    python -m cluster.cli local down STATE_FILE
    python -m cluster.cli derive SRC DST [--proxy ARTIFACT] [--set router.aging_threshold_s=30 ...]
                                 [--tls-certfile CERT --tls-keyfile KEY]
    python -m cluster.cli bench --config CLUSTER.yaml [--policies serve-default,fcfs,ssjf,ssjf-aging] ...

``check`` exits 1 when a Serve config cannot be placed on the cluster, 2 on a usage error.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from cluster import tools
from cluster.bench import bench


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Check cluster configs, show where a live cluster runs what, start a local multi-node Ray,
    benchmark policies on a local cluster."""


main.add_command(bench)


# ---- derive --------------------------------------------------------------------------------

@main.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--proxy", "proxy_artifact", default=None, help="Set proxy.artifact_path (a trained proxy artifact).")
@click.option("--set", "pairs", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one knob; VALUE is read as YAML (30, true, [1, 2]). Repeatable.")
@click.option("--tls-certfile", default=None, metavar="PATH",
              help="HTTPS at Serve's HTTP proxies (http_options.ssl_certfile): the certificate's path on every "
                   "node. With --tls-keyfile; Serve configs only.")
@click.option("--tls-keyfile", default=None, metavar="PATH", help="The private key's path on every node (http_options.ssl_keyfile).")
def derive(src: Path, dst: Path, proxy_artifact: str | None, pairs: tuple[str, ...], tls_certfile: str | None,
           tls_keyfile: str | None):
    """Write DST: a copy of the cluster config SRC (a Serve config or build_app's dict) with the proxy
    artifact, overrides and TLS files set, validated (an unknown key or bad value exits 2 and names it)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected SECTION.KEY=VALUE, got {pair!r}", param_hint="--set")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        if (tls_certfile is None) != (tls_keyfile is None):
            raise click.UsageError("--tls-certfile and --tls-keyfile go together")
        tls = (tls_certfile, tls_keyfile) if tls_certfile is not None else None
        tools.derive_file(src, dst, proxy_artifact=proxy_artifact, overrides=overrides, tls=tls)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


# ---- check ---------------------------------------------------------------------------------
def _resolve(path: str, cluster_yaml: Path) -> Path | None:
    """A Serve config path from a head start command: relative to the repo root, which is the
    cluster yaml's directory or one of its parents (cluster/gcp/... lives two levels down)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for base in [Path.cwd(), *cluster_yaml.resolve().parents]:
        if (base / p).is_file():
            return base / p
    return None


@main.command()
@click.argument("cluster_yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("serve_yamls", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--build/--no-build", default=True, show_default=True,
              help="Run each app builder offline (as `serve build` does) so deployments the YAML does not "
                   "list are checked with their code defaults.")
def check(cluster_yaml: Path, serve_yamls: tuple[Path, ...], build: bool):
    """Validate CLUSTER_YAML as `ray up` would (Ray's schema), then check that every resource each
    Serve config asks for (deployments, and actor options in the app args such as the router's)
    is offered by a node type. With no SERVE_YAMLS, checks those the head's start commands deploy."""
    try:
        cluster_config = tools.load_cluster_config(cluster_yaml)
    except tools.ConfigError as e:
        raise click.UsageError(str(e)) from e
    types = tools.node_types(cluster_config)
    click.echo(f"{cluster_yaml}: valid Ray cluster config; node types:")
    for t in types.values():
        role = "head" if t.is_head else f"workers {t.min_workers}..{t.max_workers}"
        click.echo(f"  {t.name:<16} {role:<16} {tools.fmt_resources(t.resources)}")

    paths = list(serve_yamls)
    errors = 0
    if not paths:
        for ref in tools.head_serve_configs(cluster_config):
            found = _resolve(ref, cluster_yaml)
            if found is None:
                click.echo(f"ERROR   the head deploys {ref}, which does not exist", err=False)
                errors += 1
            else:
                paths.append(found)
        if not paths and not errors:
            raise click.UsageError("no Serve config given and the head's start commands deploy none")
    for path in paths:
        try:
            serve_config = tools.load_serve_config(path)
        except tools.ConfigError as e:
            raise click.UsageError(str(e)) from e
        click.echo(f"{path}:")
        for f in tools.check(cluster_config, serve_config, build=build):
            click.echo(f"  {f.level.value.upper():<8}{f.message}")
            errors += f.level is tools.Level.ERROR
    if errors:
        click.echo(f"{errors} error(s)")
        sys.exit(1)
    click.echo("ok")


# ---- status --------------------------------------------------------------------------------
@main.command()
@click.option("--address", default=lambda: os.environ.get("RAY_ADDRESS", "auto"), show_default="$RAY_ADDRESS or auto",
              help="GCS address of the Ray cluster (HOST:PORT).")
@click.option("--dashboard-url", default=None, help="Dashboard URL for the state API (default: the cluster's own).")
@click.option("--cluster-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ray_cluster.yaml, to name node types by their custom resources when nodes carry no label.")
@click.option("--all", "show_all", is_flag=True, help="Also list Serve's controller and HTTP proxies.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def status(address: str, dashboard_url: str | None, cluster_config: Path | None, show_all: bool, as_json: bool):
    """Nodes, Serve applications and deployments, and the node each replica (and the router) runs on."""
    import ray

    types = None
    if cluster_config is not None:
        try:
            types = tools.node_types(tools.load_cluster_config(cluster_config))
        except tools.ConfigError as e:
            raise click.UsageError(str(e)) from e
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as e:
        raise click.UsageError(f"cannot connect to Ray at {address!r}: {tools.first_line(e)}") from e
    try:
        nodes = tools.live_nodes(types)
        actors = tools.placements(tools.live_actors(dashboard_url), nodes, include_serve_internal=show_all)
        try:
            apps = tools.serve_status_summary()
        except Exception as e:  # Serve not running on this cluster
            apps = {"_error": tools.first_line(e)}
    finally:
        ray.shutdown()

    if as_json:
        click.echo(json.dumps({"nodes": [asdict(n) for n in nodes], "applications": apps,
                               "actors": [asdict(a) for a in actors]}, indent=2, default=str))
        return
    click.echo("NODES")
    for n in sorted(nodes, key=lambda n: (not n.is_head, n.node_type, n.node_id)):
        custom = {k: v for k, v in n.resources.items() if k not in tools.BUILTIN_RESOURCES and not k.startswith("node:")}
        click.echo(f"  {n.node_id[:12]}  {n.node_type:<14} {n.ip:<15} {'alive' if n.alive else 'DEAD':<6} "
                   f"CPU={n.resources.get('CPU', 0):g} GPU={n.resources.get('GPU', 0):g} {tools.fmt_resources(custom)}")
    click.echo("APPLICATIONS")
    if not apps:
        click.echo("  (none: Serve runs no application here)")
    for app, info in apps.items():
        if app == "_error":
            click.echo(f"  (Serve: {info})")
            continue
        click.echo(f"  {app}: {info['status']}")
        for dep, d in info["deployments"].items():
            states = ", ".join(f"{v} {k}" for k, v in d["replica_states"].items()) or "no replicas"
            click.echo(f"    {dep:<24} {d['status']:<10} {states}")
    click.echo("PLACEMENT")
    for a in actors:
        where = f"{a.node_type or '?'} {a.node_ip or '?'} {(a.node_id or '?')[:12]}"
        what = f"{a.app}/{a.deployment}" if a.deployment else "actor"
        click.echo(f"  {what:<28} {a.name:<48} {a.state:<8} {where}")


# ---- local multi-node cluster --------------------------------------------------------------
@main.group()
def local():
    """A multi-node Ray cluster on this machine (real `ray start` nodes with custom resources)."""


@local.command("up")
@click.option("--llm-nodes", default=2, show_default=True, type=click.IntRange(1, 8),
              help="How many 'GPU' nodes (custom resource llm_node: 1 each; no real GPU).")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="The dashboard serves the state API, `serve deploy` and `serve status`.")
@click.option("--detach", is_flag=True, help="Return once up; stop later with `local down STATE_FILE`.")
@click.option("--keep-logs", is_flag=True, help="Keep the nodes' temp dirs (logs) after stopping.")
def local_up(llm_nodes: int, dashboard: bool, detach: bool, keep_logs: bool):
    """Start head (router_node), cpu (ingress_node, proxy_node) and N llm nodes (llm_node)."""
    from cluster.local_multinode import LocalCluster, NodeSpec, default_topology

    specs = [s for s in default_topology() if s.node_type != "gpu_worker"]
    specs += [NodeSpec(f"gpu-{chr(ord('a') + i)}", "gpu_worker", num_cpus=1, resources={"llm_node": 1})
              for i in range(llm_nodes)]
    cluster = LocalCluster(specs, include_dashboard=dashboard, keep_logs=keep_logs or detach)
    cluster.start()
    state = cluster.write_state()
    click.echo(f"Ray at {cluster.address} (dashboard {cluster.dashboard_url or 'off'}); nodes: "
               f"{', '.join(cluster.nodes)}; logs in {cluster.root_dir}")
    click.echo(f"  RAY_ADDRESS={cluster.address} python -m cluster.cli status")
    if detach:
        click.echo(f"  python -m cluster.cli local down {state}")
        return
    click.echo("Ctrl-C stops every node.")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(n.running for n in cluster.nodes.values()):
            time.sleep(1)
        click.echo("a node exited; stopping the rest")
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


@local.command("down")
@click.argument("state_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def local_down(state_file: Path):
    """Stop the nodes recorded in STATE_FILE by `local up --detach` (only those processes)."""
    from cluster.local_multinode import stop_from_state

    stopped = stop_from_state(state_file)
    click.echo(f"stopped {', '.join(stopped) or 'nothing (already down)'}")


if __name__ == "__main__":
    main()
