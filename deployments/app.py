"""The application builder: ``build_app(config)`` for Python and for ``serve run cluster/*.yaml``.

The config is validated here (``deployments.config.AppConfig``), before any replica starts. Three
deployments: ``ingress`` (HTTP), ``proxy`` (length predictions) and ``llm`` (engines, with the
pinning request router). The central router actor is not a deployment: the first ingress or LLM
replica to start creates it (a detached named actor); :func:`shutdown_router` removes it.

With ``router.mode: serve-default`` (the baseline) there is no router actor and no proxy pool: the
``llm`` deployment keeps Serve's default request router, with ``max_ongoing_requests`` at its slots.
"""

from __future__ import annotations

from pathlib import Path

from ray.serve.config import BackpressureConfig, RequestRouterConfig

from deployments.config import AppConfig, RoutingMode
from deployments.ingress import Ingress
from deployments.llm import LLMServer
from deployments.proxy_pool import ProxyPool
from router.serve_router import PinnedRequestRouter


def resolve_config(config: dict | AppConfig | None) -> AppConfig:
    """Validate, and make relative paths absolute here (replicas may run in another directory)."""
    cfg = config if isinstance(config, AppConfig) else AppConfig.from_dict(config)
    if not Path(cfg.proxy.artifact_path).is_absolute():
        cfg.proxy.artifact_path = str(Path(cfg.proxy.artifact_path).resolve())
    if cfg.llm.profile and not Path(cfg.llm.profile).is_absolute():
        cfg.llm.profile = str(Path(cfg.llm.profile).resolve())
    model = Path(cfg.llm.model)
    if model.exists() and not model.is_absolute():
        cfg.llm.model = str(model.resolve())
    return cfg


def build_app(config: dict | None = None):
    """The Serve application for ``config`` (a dict shaped like ``AppConfig``; see docs/serving.md)."""
    cfg = resolve_config(config)
    d = cfg.to_dict()
    central = cfg.routing_mode is RoutingMode.CENTRAL
    # serve-default: Serve's own request router (power of two choices on queue length), as a user
    # who picks Serve without our router gets it.
    routing = {} if not central else {"request_router_config": RequestRouterConfig(
        request_router_class=PinnedRequestRouter,
        request_router_kwargs={"pin_grace_s": cfg.ingress.pin_grace_s},
    )}
    llm = LLMServer.options(
        num_replicas=cfg.llm.num_replicas,
        max_ongoing_requests=cfg.llm_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.llm.num_cpus, "num_gpus": cfg.llm.num_gpus},
        **routing,
        # check_health runs the engine's checks and the stall watchdog (llm.stall_timeout_s); Serve
        # replaces a replica after 3 failures in a row. The check itself is cheap: the long timeout
        # allows for an event loop slowed by a CPU-bound engine (and model loading) on a busy box; a
        # loop wedged for that long fails it too.
        health_check_period_s=cfg.llm.health_check_period_s,
        health_check_timeout_s=60,
        # Each ingress holds at most ingress.max_in_flight requests, each with one LLM call at a
        # time: a bound on the calls its handle may queue (beyond it: BackPressureError, a 503).
        max_queued_requests=cfg.ingress.max_in_flight,
    ).bind(d)
    # The baseline predicts nothing: it neither deploys nor waits for the proxy pool.
    proxy = None if not central else ProxyPool.options(
        num_replicas=cfg.proxy.num_replicas,
        max_ongoing_requests=max(64, 4 * cfg.proxy.max_batch_size),
        ray_actor_options={"num_cpus": cfg.proxy.num_cpus, "num_gpus": cfg.proxy.num_gpus},
    ).bind(d)
    return Ingress.options(
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        # The queue at each HTTP proxy: bounded, answered 429 with Retry-After by Serve itself beyond it
        # (a plain-text body). Serve counts a request as queued until it is assigned to a replica, so
        # a burst of simultaneous arrivals counts whole even while every replica has room: below what
        # the replicas take at once, a burst got Serve's 429 instead of the ingress's OpenAI-style one
        # (the fault matrix, tests/integration/test_fault_matrix.py). Serve's 429 is for replicas
        # that are all full (ingress.max_in_flight has the chain).
        max_queued_requests=cfg.ingress.num_replicas * cfg.ingress.max_ongoing_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=cfg.router.retry_after_s),
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
    ).bind(d, proxy, llm)


def shutdown_router(config: dict | AppConfig | None = None) -> bool:
    """Kill the app's router actor and metrics store (after ``serve.delete``); True if the router was running."""
    import ray

    cfg = config if isinstance(config, AppConfig) else AppConfig.from_dict(config)
    # The ingress's metrics store (deployments/metrics.py) is detached too: a next app of the same
    # name must not start from this one's counts.
    try:
        ray.kill(ray.get_actor(cfg.metrics_actor_name, namespace=cfg.router.namespace), no_restart=True)
    except ValueError:
        pass
    try:
        actor = ray.get_actor(cfg.router_actor_name, namespace=cfg.router.namespace)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    return True
