"""Prometheus metrics of the ingress (``GET /metrics``), added up over its replicas.

Each ingress replica counts in its own registry (:class:`IngressMetrics`: no lock, no call on the
request path). Serve's HTTP proxies spread ``GET /metrics`` over the ingress replicas like any other
request, so a scrape answered from one replica's registry alone would see that replica's counts,
and a counter would seem to jump back between scrapes. Instead:

- every replica sends the cumulative state of its counters and histograms to one actor per app, the
  :class:`MetricsStore` (``ssjf-metrics-<app>``, detached, beside the router actor), every
  ``ingress.metrics_push_s`` and right before it answers a scrape (:class:`MetricsPublisher`);
- the store keeps the newest state of each replica (by sequence number) and answers their sum;
- whichever replica answers ``/metrics`` renders that sum, plus the router's gauges it reads then.

A replica's counts only grow and the store never forgets a replica (a replica that died keeps its
last state), so every scrape sees counters that only grow, and they equal the requests answered by
all replicas up to each one's last push. Cumulative states rather than deltas: a lost or repeated
push changes nothing. If the store itself restarts, the replicas' next pushes fill it again; what
dead replicas had counted is then gone, which Prometheus treats as a counter reset.

Metric names are the ones ``ssjf-cluster bench`` and the docs read (``ssjf_requests_total``,
``ssjf_proxy_fallbacks_total``, ``ssjf_retries_total``, ...).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

logger = logging.getLogger("ray.serve")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ADDITIVE = ("counter", "histogram")  # what sums over replicas; gauges stay per scrape


@dataclass(frozen=True)
class Sample:
    name: str  # e.g. ssjf_requests_total, ssjf_request_seconds_bucket
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    name: str  # e.g. ssjf_requests (prometheus_client's family name)
    type: str  # counter or histogram
    help: str
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class MetricsState:
    """The cumulative counters and histograms of one ingress replica, or their sum."""

    families: tuple[Family, ...] = ()

    def value(self, sample_name: str, **labels: str) -> float:
        """The sample's value (0.0 if absent); for tests and reports."""
        want = tuple(sorted(labels.items()))
        for family in self.families:
            for s in family.samples:
                if s.name == sample_name and s.labels == want:
                    return s.value
        return 0.0


def merge(states: Iterable[MetricsState]) -> MetricsState:
    """The sum of several replicas' states, sample by sample (in the order first seen, which keeps a
    histogram's buckets in order)."""
    heads: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, tuple], float]] = {}
    for state in states:
        for family in state.families:
            heads.setdefault(family.name, (family.type, family.help))
            bucket = sums.setdefault(family.name, {})
            for s in family.samples:
                key = (s.name, s.labels)
                bucket[key] = bucket.get(key, 0.0) + s.value
    return MetricsState(tuple(
        Family(name, heads[name][0], heads[name][1],
               tuple(Sample(sname, labels, value) for (sname, labels), value in samples.items()))
        for name, samples in sums.items()))


class _Frozen:
    """A prometheus_client collector that yields a :class:`MetricsState` as it is."""

    def __init__(self, state: MetricsState):
        self.state = state

    def collect(self):
        for family in self.state.families:
            metric = Metric(family.name, family.help, family.type)
            for s in family.samples:
                metric.add_sample(s.name, dict(s.labels), s.value)
            yield metric


class IngressMetrics:
    def __init__(self):
        # Additive metrics (counters, histograms): summed over the replicas by the metrics store.
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ssjf_requests", "Requests answered, by endpoint and HTTP status (499: client left).",
                                ["endpoint", "status"], registry=r)
        self.retries = Counter("ssjf_retries", "Re-dispatches and router re-enqueues, by reason.", ["reason"], registry=r)
        self.preemptions = Counter("ssjf_preemptions", "srpt: streams whose run was preempted and resumed on a later "
                                   "dispatch (the client's stream goes on).", registry=r)
        self.preempted_tokens = Counter("ssjf_preempted_tokens", "srpt: output tokens generated before a preemption "
                                        "(their KV cache is rebuilt by a prefill where the request resumes).",
                                        registry=r)
        self.slo_shed = Counter("ssjf_slo_shed", "router.policy slo: requests answered 503 slo_unattainable (predicted "
                                "to miss their SLO even if started at once; also in ssjf_requests_total as 503).",
                                registry=r)
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
        # The router's view, read when a scrape comes: the same for every replica, never summed.
        g = self.gauge_registry = CollectorRegistry()
        self.router_queued = Gauge("ssjf_router_queued", "Requests waiting in the router.", registry=g)
        self.router_running = Gauge("ssjf_router_running", "Requests running on replicas (router's view).", registry=g)
        self.router_replicas = Gauge("ssjf_router_replicas", "LLM replicas registered with the router.", registry=g)
        self.router_work = Gauge("ssjf_router_outstanding_tokens", "Predicted tokens queued or running.", registry=g)

    def observe_router(self, snap: dict) -> None:
        self.router_queued.set(snap["num_queued"])
        self.router_running.set(snap["num_running"])
        self.router_replicas.set(len(snap["replicas"]))
        self.router_work.set(sum(r["outstanding_work"] for r in snap["replicas"]))

    def state(self) -> MetricsState:
        """This replica's counters and histograms as they are now (cumulative)."""
        families = []
        for metric in self.registry.collect():
            if metric.type not in _ADDITIVE:
                continue
            # *_created is a creation timestamp, not a count: it does not add up over replicas.
            samples = tuple(Sample(s.name, tuple(sorted(s.labels.items())), float(s.value))
                            for s in metric.samples if not s.name.endswith("_created"))
            families.append(Family(metric.name, metric.type, metric.documentation, samples))
        return MetricsState(tuple(families))

    def render(self, total: MetricsState | None = None) -> tuple[bytes, str]:
        """Prometheus text: ``total`` (default: this replica's own state) and the router's gauges."""
        frozen = CollectorRegistry(auto_describe=False)
        frozen.register(_Frozen(self.state() if total is None else total))
        return generate_latest(frozen) + generate_latest(self.gauge_registry), CONTENT_TYPE_LATEST


class MetricsStore:
    """The newest cumulative state of each ingress replica of one app, summed on request. Pure Python;
    :class:`MetricsStoreActor` is its Ray actor."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._states: dict[str, tuple[int, MetricsState]] = {}
        self.last_push_at = clock()

    def push(self, source: str, seq: int, state: MetricsState) -> None:
        self.last_push_at = self.clock()
        current = self._states.get(source)
        # A replica numbers its pushes; an older one arriving late must not take counts back.
        if current is None or seq > current[0]:
            self._states[source] = (seq, state)

    def total(self) -> MetricsState:
        return merge(state for _, state in self._states.values())

    def sources(self) -> dict[str, MetricsState]:
        return {source: state for source, (_, state) in self._states.items()}


class MetricsStoreActor:
    """The app's metrics store as a detached Ray actor; it ends itself after ``orphan_timeout_s``
    without a push (the app was deleted; no ingress replica is left to push)."""

    def __init__(self, orphan_timeout_s: float = 120.0):
        self.store = MetricsStore()
        self.orphan_timeout_s = orphan_timeout_s
        self._watch: asyncio.Task | None = None

    def _ensure_watch(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.orphan_timeout_s / 4))
            if self.store.clock() - self.store.last_push_at > self.orphan_timeout_s:
                logger.warning("no metrics push for %.0f s: metrics store exits", self.orphan_timeout_s)
                import ray

                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def push(self, source: str, seq: int, state: MetricsState) -> None:
        self._ensure_watch()
        self.store.push(source, seq, state)

    async def total(self) -> MetricsState:
        return self.store.total()

    async def sources(self) -> dict[str, MetricsState]:
        return self.store.sources()


def metrics_store_options(name: str, namespace: str, resources: dict | None = None) -> dict:
    """Detached and named (every ingress replica finds the same one), restarted after a crash, no CPU."""
    options = dict(name=name, namespace=namespace, lifetime="detached", get_if_exists=True, max_restarts=-1,
                   max_task_retries=0, num_cpus=0)
    if resources:  # beside the router actor (e.g. {"router_node": 0.01}: the head)
        options["resources"] = dict(resources)
    return options


def get_metrics_store(name: str, namespace: str, *, orphan_timeout_s: float = 120.0, resources: dict | None = None):
    """The app's store, created if it does not exist yet."""
    import ray

    return ray.remote(MetricsStoreActor).options(**metrics_store_options(name, namespace, resources)).remote(
        orphan_timeout_s)


class MetricsPublisher:
    """One ingress replica's side: pushes its state every ``period_s`` and before each scrape, and
    reads the total for a scrape. ``store_factory()`` finds or creates the store (again after it died)."""

    def __init__(self, metrics: IngressMetrics, store_factory, period_s: float, source: str | None = None,
                 timeout_s: float = 2.0):
        self.metrics = metrics
        self.store_factory = store_factory
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.source = source or uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._store = None
        self._task: asyncio.Task | None = None

    @property
    def store(self):
        if self._store is None:
            self._store = self.store_factory()
        return self._store

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await self.push()
            await asyncio.sleep(self.period_s)

    async def push(self) -> bool:
        seq = next(self._seq)  # numbered when the state is taken: the store keeps the newest
        state = self.metrics.state()
        try:
            await asyncio.wait_for(self.store.push.remote(self.source, seq, state), timeout=self.timeout_s)
            return True
        except Exception as e:  # never let metrics break serving; look the store up again next time
            logger.warning("metrics push failed (%s); retrying in %.1f s", type(e).__name__, self.period_s)
            self._store = None
            return False

    async def total(self) -> MetricsState | None:
        """Every replica's counts summed (this one's pushed first); None if the store cannot be reached."""
        if not await self.push():
            return None  # a store found again after this may be a fresh, empty one: no total yet
        try:
            return await asyncio.wait_for(self.store.total.remote(), timeout=self.timeout_s)
        except Exception as e:
            logger.warning("metrics store unreachable (%s): /metrics answers 503", type(e).__name__)
            self._store = None
            return None
