"""The Serve options build_app derives from the config: the health checks that run the LLM replicas'
stall watchdog, and the bounded queues in front of the ingress and the LLM replicas."""

from deployments.app import build_app


def _deployments(app) -> dict:
    ingress = app._bound_deployment
    found = {ingress.name: ingress}
    for arg in ingress.init_args:
        bound = getattr(arg, "_bound_deployment", None)
        if bound is not None:
            found[bound.name] = bound
    return found


def test_queues_are_bounded_and_the_llm_health_check_follows_the_config():
    d = _deployments(build_app({"llm": {"engine": "replay", "health_check_period_s": 2.5},
                                "ingress": {"max_in_flight": 77, "num_replicas": 2, "max_ongoing_requests": 300},
                                "router": {"retry_after_s": 3.0}}))
    ingress, llm = d["ingress"], d["llm"]
    assert llm.max_queued_requests == 77
    # Serve counts a request queued until it is assigned: its bound is what the ingress replicas take at
    # once, so a burst they have room for reaches the ingress (whose own 429 is OpenAI-shaped).
    assert ingress.max_queued_requests == 2 * 300
    # Past the proxy's queue Serve itself answers 429 with Retry-After, like the ingress's own refusals.
    backpressure = ingress._deployment_config.backpressure_config
    assert (backpressure.status_code, backpressure.retry_after_s) == (429, 3.0)
    assert llm._deployment_config.health_check_period_s == 2.5


def test_serve_default_mode_keeps_serves_own_request_router_and_drops_the_proxy_pool():
    """The baseline is what a Serve user gets: the default request router (power of two on queue length)
    and at most the engine's slots in flight per replica, so the rest queue in Serve in arrival order."""
    llm_cfg = {"engine": "replay", "batching": "continuous", "max_batch": 3}
    central = _deployments(build_app({"llm": llm_cfg}))
    baseline = _deployments(build_app({"llm": llm_cfg, "router": {"mode": "serve-default"}}))
    assert central["llm"]._deployment_config.request_router_config.request_router_class.endswith("PinnedRequestRouter")
    assert baseline["llm"]._deployment_config.request_router_config.request_router_class.endswith(
        "PowerOfTwoChoicesRequestRouter")
    assert central["llm"].max_ongoing_requests == 4 * 3 + 8 and baseline["llm"].max_ongoing_requests == 3
    assert "proxy" in central and "proxy" not in baseline
    # A Serve user may let more calls in than slots (the engine then queues them in arrival order).
    wider = _deployments(build_app({"llm": {**llm_cfg, "max_ongoing_requests": 8}, "router": {"mode": "serve-default"}}))
    assert wider["llm"].max_ongoing_requests == 8
