"""The ingress's metrics added up over its replicas (``deployments/metrics.py``): a replica's state,
the sum of several, the store that keeps the newest state of each, and the publisher that feeds it
and reads the sum for ``/metrics``. The live check (two ingress replicas behind Serve's proxy) is
tests/integration/test_deployments_auth.py."""

import asyncio
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from deployments.metrics import IngressMetrics, MetricsPublisher, MetricsState, MetricsStore, merge


def parse(body: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def replica(ok: int, unauthorized: int = 0, waits=()) -> IngressMetrics:
    m = IngressMetrics()
    if ok:
        m.requests.labels("chat", "200").inc(ok)
    if unauthorized:
        m.requests.labels("chat", "401").inc(unauthorized)
    for w in waits:
        m.queue_wait.observe(w)
    return m


def test_a_replicas_state_holds_its_counts_but_no_creation_times_or_gauges():
    m = replica(3, waits=[0.2])
    m.router_replicas.set(2)
    state = m.state()
    assert state.value("ssjf_requests_total", endpoint="chat", status="200") == 3
    names = {s.name for f in state.families for s in f.samples}
    assert "ssjf_queue_wait_seconds_count" in names
    assert not any(n.endswith("_created") for n in names)  # timestamps do not add up
    assert "ssjf_router_replicas" not in names  # the router's gauges are read per scrape, not summed


def test_the_sum_of_two_replicas_adds_counters_and_histogram_buckets():
    a, b = replica(3, waits=[0.2, 20]), replica(2, unauthorized=1, waits=[0.2])
    total = merge([a.state(), b.state()])
    assert total.value("ssjf_requests_total", endpoint="chat", status="200") == 5
    assert total.value("ssjf_requests_total", endpoint="chat", status="401") == 1
    assert total.value("ssjf_queue_wait_seconds_count") == 3
    assert total.value("ssjf_queue_wait_seconds_bucket", le="0.25") == 2
    assert total.value("ssjf_queue_wait_seconds_bucket", le="+Inf") == 3
    assert merge([]) == MetricsState()


def test_the_rendered_sum_is_valid_prometheus_text_with_the_same_names():
    a, b = replica(3, waits=[0.2]), replica(2, waits=[7])
    a.observe_router({"num_queued": 4, "num_running": 1, "replicas": [{"outstanding_work": 10.0}]})
    body, content_type = a.render(merge([a.state(), b.state()]))
    assert content_type.startswith("text/plain")
    samples = parse(body)
    assert samples[("ssjf_requests_total", (("endpoint", "chat"), ("status", "200")))] == 5
    assert samples[("ssjf_queue_wait_seconds_count", ())] == 2
    assert samples[("ssjf_router_queued", ())] == 4 and samples[("ssjf_router_replicas", ())] == 1
    # Buckets stay in ascending order (a histogram out of order is rejected by Prometheus).
    les = [s.labels["le"] for f in text_string_to_metric_families(body.decode()) if f.name == "ssjf_queue_wait_seconds"
           for s in f.samples if s.name.endswith("_bucket")]
    assert les[-1] == "+Inf" and [float(x) for x in les[:-1]] == sorted(float(x) for x in les[:-1])
    # The counters bench reads keep their names.
    a.proxy_fallbacks.labels("timeout").inc()
    assert ("ssjf_proxy_fallbacks_total", (("reason", "timeout"),)) in parse(a.render()[0])


def test_the_store_keeps_each_replicas_newest_state_and_never_drops_one():
    store = MetricsStore()
    seen = []
    # (replica, push number, its cumulative count): push 2 of "a" arrives after push 3 and is ignored.
    for source, seq, count in [("a", 1, 2), ("b", 1, 1), ("a", 3, 5), ("a", 2, 4), ("b", 2, 3)]:
        store.push(source, seq, replica(count).state())
        seen.append(store.total().value("ssjf_requests_total", endpoint="chat", status="200"))
    assert seen == [2, 3, 6, 6, 8]  # monotonic, and the sum of each replica's newest count
    assert set(store.sources()) == {"a", "b"}  # a replica that stops pushing keeps its counts


def test_the_store_remembers_when_it_was_last_fed():
    now = [100.0]
    store = MetricsStore(clock=lambda: now[0])
    now[0] = 150.0
    store.push("a", 1, MetricsState())
    assert store.last_push_at == 150.0


class FakeStore:
    """A store behind ``.push.remote`` / ``.total.remote`` as a Ray handle has them."""

    def __init__(self, fail: bool = False):
        self.store = MetricsStore()
        self.fail = fail

        async def push(source, seq, state):
            if self.fail:
                raise ConnectionError("store gone")
            self.store.push(source, seq, state)

        async def total():
            if self.fail:
                raise ConnectionError("store gone")
            return self.store.total()

        self.push = SimpleNamespace(remote=push)
        self.total = SimpleNamespace(remote=total)


def test_the_publisher_pushes_before_it_reads_so_its_own_counts_are_current():
    metrics, other = replica(2), replica(7)
    fake = FakeStore()
    fake.store.push("other", 1, other.state())
    publisher = MetricsPublisher(metrics, lambda: fake, period_s=60, source="me")
    metrics.requests.labels("chat", "200").inc()  # after construction, before the scrape
    total = asyncio.run(publisher.total())
    assert total.value("ssjf_requests_total", endpoint="chat", status="200") == 10


def test_the_publisher_gives_none_when_the_store_is_gone_and_finds_it_again_later():
    created = []

    def factory():
        created.append(FakeStore(fail=len(created) == 0))
        return created[-1]

    publisher = MetricsPublisher(replica(1), factory, period_s=60, timeout_s=1.0)
    assert asyncio.run(publisher.total()) is None
    total = asyncio.run(publisher.total())  # looked up again: the new store answers
    assert len(created) == 2 and total.value("ssjf_requests_total", endpoint="chat", status="200") == 1
