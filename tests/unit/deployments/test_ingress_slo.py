"""The ingress's side of SLO shedding (``deployments.ingress._Run``): a router answer :class:`Shed` is
the 503 ``slo_unattainable`` before any replica is called (so a streaming request gets a plain 503
too: its response has not started), counted; the request's SLOs travel to the router in its meta."""

import asyncio
from types import SimpleNamespace

import pytest

from deployments.engines.base import GenerationRequest
from deployments.ingress import _Run, shed_error
from deployments.protocol import APIError
from router.messages import Report, Shed
from router.request import RequestMeta


class ShedRouter:
    def __init__(self):
        self.metas = []
        self.events = []

    async def enqueue(self, meta, requeue):
        self.metas.append(meta)
        return Shed("slo_unattainable")

    def report(self, report: Report):
        self.events.append(report)


class NoReplicas:
    def __init__(self):
        self.calls = 0

    def remote(self, request, target_replica_id):
        self.calls += 1
        raise AssertionError("a shed request must not be sent to a replica")


class Count:
    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        self.value += n


def _ingress(router, replicas, shed: Count):
    metrics = SimpleNamespace(retries=SimpleNamespace(labels=lambda reason: Count()), slo_shed=shed)
    return SimpleNamespace(
        cfg=SimpleNamespace(ingress=SimpleNamespace(router_timeout_s=5.0, first_chunk_timeout_s=5.0, max_retries=2,
                                                    first_token_timeout_s=5.0, token_timeout_s=5.0,
                                                    request_timeout_s=None)),
        enqueuer=router, reporter=router, router=SimpleNamespace(reset=lambda: None),
        llm=SimpleNamespace(generate=replicas), metrics=metrics)


def test_a_shed_request_is_a_503_slo_unattainable_before_any_replica_call():
    router, replicas, shed = ShedRouter(), NoReplicas(), Count()
    meta = RequestMeta("r1", "m", 3, 500.0, 1024, 0.0, slo_ttft_s=0.25, slo_jct_s=2.0)
    run = _Run(_ingress(router, replicas, shed), meta, GenerationRequest("r1", "x", 16, num_prompt_tokens=3),
               restart_after_output=False)

    async def first_event():
        events = run.events()
        try:
            return await events.__anext__()
        finally:
            await events.aclose()

    with pytest.raises(APIError) as e:
        asyncio.run(first_event())
    assert e.value.status == 503 and not e.value.headers  # no Retry-After: later is only later for the SLO
    body = e.value.body()["error"]
    assert body["type"] == body["code"] == "slo_unattainable" and body["param"] is None
    assert "TTFT 250 ms, JCT 2000 ms" in body["message"]
    assert replicas.calls == 0 and shed.value == 1
    assert router.metas == [meta] and router.metas[0].slo_jct_s == 2.0  # the router saw the SLO


def test_the_shed_message_says_when_no_objective_was_given():
    # A shed request always has an SLO; the message still reads sensibly if one ever has none.
    e = shed_error(RequestMeta("r", "m", 1, 1.0, 1, 0.0), "slo_unattainable")
    assert "none given" in e.message and e.status == 503
