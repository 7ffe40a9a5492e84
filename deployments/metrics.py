"""Prometheus metrics of one ingress replica (``GET /metrics``), in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class IngressMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ssjf_requests", "Requests answered, by endpoint and HTTP status (499: client left).",
                                ["endpoint", "status"], registry=r)
        self.retries = Counter("ssjf_retries", "Re-dispatches and router re-enqueues, by reason.", ["reason"], registry=r)
        self.proxy_fallbacks = Counter("ssjf_proxy_fallbacks", "Predictions that are not the proxy model's own, by "
                                       "reason: timeout (past proxy.timeout_s) or error at the ingress, which then "
                                       "asks the heuristic; or the pool's own fallback: busy, timeout, error, "
                                       "load_failed.", ["reason"], registry=r)
        self.queue_wait = Histogram("ssjf_queue_wait_seconds", "Arrival to start on a replica (proxy + router queue).",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("ssjf_time_to_first_token_seconds", "Arrival to first streamed text.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("ssjf_request_seconds", "Arrival to last byte of successful requests.",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.predicted = Histogram("ssjf_predicted_tokens", "Predicted output tokens per request.",
                                   buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), registry=r)
        self.router_queued = Gauge("ssjf_router_queued", "Requests waiting in the router.", registry=r)
        self.router_running = Gauge("ssjf_router_running", "Requests running on replicas (router's view).", registry=r)
        self.router_replicas = Gauge("ssjf_router_replicas", "LLM replicas registered with the router.", registry=r)
        self.router_work = Gauge("ssjf_router_outstanding_tokens", "Predicted tokens queued or running.", registry=r)

    def observe_router(self, snap: dict) -> None:
        self.router_queued.set(snap["num_queued"])
        self.router_running.set(snap["num_running"])
        self.router_replicas.set(len(snap["replicas"]))
        self.router_work.set(sum(r["outstanding_work"] for r in snap["replicas"]))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
