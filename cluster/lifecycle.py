"""Start and stop a serving cluster on a local (or given) Ray: the one lifecycle that ``ssjf-cluster
bench``, the demo and the integration-test fixtures share.

:func:`serve_cluster` deploys ``deployments.app.build_app(config)`` and yields its base URL;
:func:`wait_ready` polls ``/healthz`` until every LLM replica has registered with the router.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from contextlib import contextmanager

import httpx

from deployments.app import build_app, shutdown_router
from deployments.config import AppConfig


class ClusterNotReady(RuntimeError):
    """The cluster did not answer ``/healthz`` with every replica registered in time."""



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpus_needed(config: dict) -> float:
    need = 1.0  # the router actor and slack
    for section, default_cpus in (("llm", 1.0), ("proxy", 1.0), ("ingress", 0.5)):
        part = config.get(section) or {}
        replicas = part.get("num_replicas", 2 if section == "llm" else 1)
        need += replicas * part.get("num_cpus", default_cpus)
    return need


def wait_ready(url: str, timeout_s: float, num_replicas: int | None = None) -> dict:
    """Poll ``/healthz`` until it answers 200 and (when given) reports ``num_replicas`` LLM replicas
    registered, so no policy starts measuring on a half-registered cluster."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/healthz", timeout=2.0)
            if resp.status_code == 200:
                health = resp.json()
                have = health.get("num_replicas")
                if num_replicas is None or have is None or have >= num_replicas:
                    return health
                last = f"{have} of {num_replicas} LLM replicas registered"
            else:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise ClusterNotReady(f"cluster at {url} not ready within {timeout_s:g} s (last: {last}); "
                          "raise --ready-timeout or check the config")


@contextmanager
def serve_cluster(config: dict, *, ray_address: str | None, num_cpus: float | None, ready_timeout_s: float):
    """Deploy the app and yield its base URL; remove it after.

    Without a Ray in this process (and no ``ray_address``) everything is ours: a fresh local Ray,
    Serve on a free loopback port, the app at ``/``; all of it is shut down after. On a Ray that is
    already there (``--ray-address``, or a test session) the app goes under ``/<app name>`` of the
    running Serve (started on a free port if there is none), and only the app and its router actor
    are removed after.
    """
    import ray
    from ray import serve

    started_ray = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if ray_address:
            kwargs["address"] = ray_address
        else:
            # Logical CPUs: the replay engine sleeps, so more replicas than cores is fine.
            kwargs["num_cpus"] = num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed(config)))
        ray.init(**kwargs)
        started_ray = True
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # keep bench's stderr readable
    app_name = config.get("name", "ssjf")
    base = running_serve_url()
    started_serve = base is None
    if started_serve:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
    route = "/" if started_serve else f"/{app_name}"
    url = base if route == "/" else base + route
    try:
        serve.run(build_app(config), name=app_name, route_prefix=route)
        wait_ready(url, ready_timeout_s, AppConfig.from_dict(config).llm.num_replicas)
        yield url
    finally:
        try:
            # serve.shutdown even when Ray goes down next: it also drops Serve's cached controller
            # client, which a next local Ray session (same job id) would otherwise reuse, dead.
            if started_serve:
                serve.shutdown()
            else:
                serve.delete(app_name)
        finally:
            if started_ray:
                ray.shutdown()  # the router actor goes with it
            else:
                shutdown_router(config)  # detached: on a shared Ray it would outlive the app


def running_serve_url() -> str | None:
    """The HTTP address of a Serve instance already running on this Ray, or None if there is none.

    Ray has no public call for this: the controller client's ``http_config`` is private API,
    used only where bench shares a Ray with others.
    """
    from ray.serve import context

    try:
        client = context._get_global_client(raise_if_no_controller_running=False)
    except Exception:
        return None
    if client is None:
        return None
    try:
        http = client.http_config
        host = "127.0.0.1" if http.host in (None, "", "0.0.0.0", "::") else http.host
        return f"http://{host}:{http.port}"
    except AttributeError as exc:
        raise RuntimeError(f"Serve is running on this Ray but its HTTP address is unknown ({exc})") from None
