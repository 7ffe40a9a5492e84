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
                                "ingress": {"max_in_flight": 77}, "router": {"retry_after_s": 3.0}}))
    ingress, llm = d["ingress"], d["llm"]
    assert ingress.max_queued_requests == 77 and llm.max_queued_requests == 77
    # Past the proxy's queue Serve itself answers 429 with Retry-After, like the ingress's own refusals.
    backpressure = ingress._deployment_config.backpressure_config
    assert (backpressure.status_code, backpressure.retry_after_s) == (429, 3.0)
    assert llm._deployment_config.health_check_period_s == 2.5
