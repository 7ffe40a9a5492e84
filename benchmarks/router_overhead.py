"""Router overhead: the latency the central router adds per request, and the scheduling decisions
per second one router actor sustains (issue 4, item 5; aims: <= 3 ms median, >= 2,000/s).

Three measurements, each printed (timings depend on the machine and on what else runs on it):

- ``core``: ``RouterService`` in-process, no Ray: enqueue + complete cycles per second (the
  scheduling logic alone, with a queue, SSJF and least-work over the replicas).
- ``actor``: one ``RouterActor``; load-generator actors each run many concurrent loops of
  ``enqueue`` (answered at dispatch) then ``complete``. Reports dispatch decisions per second and
  the ``enqueue`` round trip (median, p99) when a slot is free: the router's added latency.
  ``--slots`` below the concurrency makes requests queue, so completions drive the dispatches.
- ``http``: a live replay cluster on Serve; sequential 1-token requests. The ingress reports, per
  request, the router round trip (``x-ssjf-router-ms``) and the pinned call's routing to its start
  on the replica (``x-ssjf-start-ms``); also the end-to-end latency seen by the client.

    .venv/bin/python benchmarks/router_overhead.py                    # all three
    .venv/bin/python benchmarks/router_overhead.py --only actor --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import threading
import time
import uuid

for _k, _v in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fmt_ms(values_s: list[float]) -> str:
    return (f"median {statistics.median(values_s) * 1e3:.2f} ms, p99 {pct(values_s, 0.99) * 1e3:.2f} ms "
            f"(n={len(values_s)})")


# ---- core ------------------------------------------------------------------------------------
def bench_core(n: int, replicas: int, slots: int) -> None:
    from router.actor import RouterService
    from router.config import SchedulerConfig
    from router.request import RequestMeta

    async def main():
        svc = RouterService(SchedulerConfig(policy="ssjf", balancer="least-work", batching="continuous",
                                            max_batch=slots))
        for r in range(replicas):
            svc.heartbeat(f"r{r}", slots)
        inflight = replicas * slots * 2  # half the requests wait: the queue is never empty
        pending: list[asyncio.Task] = []
        t0 = time.perf_counter()
        for i in range(n):
            meta = RequestMeta(f"q{i}", "m", 100, float((i * 7919) % 500), 1000, time.time())
            pending.append(asyncio.ensure_future(svc.enqueue(meta)))
            if len(pending) >= inflight:
                await asyncio.sleep(0)
                done = [t for t in pending if t.done()]
                for t in done:
                    pending.remove(t)
                running = [rid for rid, s in svc.scheduler.requests.items() if s.replica_id is not None
                           and s.status.value == "running"]
                for rid in running[: len(done) or 1]:
                    svc.complete(rid, 10)
        while svc.scheduler.requests:
            await asyncio.sleep(0)
            for rid in [rid for rid, s in svc.scheduler.requests.items() if s.status.value == "running"]:
                svc.complete(rid, 10)
        await asyncio.gather(*pending)
        return time.perf_counter() - t0, svc.counters["dispatched"]

    elapsed, dispatched = asyncio.run(main())
    print(f"core  : {dispatched} decisions in {elapsed:.2f} s = {dispatched / elapsed:,.0f} decisions/s "
          f"({replicas} replicas x {slots} slots, SSJF + least-work, no Ray)")


# ---- actor -----------------------------------------------------------------------------------
class LoadGen:
    """A Ray actor running ``concurrency`` loops of enqueue -> complete against the router, either
    one actor call each (``direct``) or through the ingress's batching clients (``batched``)."""

    def __init__(self, router_name: str, namespace: str, batched: bool):
        from router.actor import BatchedEnqueuer, Reporter, RouterClient

        client = RouterClient(router_name, namespace, {})
        self.router = client.handle
        self.batched = batched
        self.enqueuer = BatchedEnqueuer(client)
        self.reporter = Reporter(client)

    async def run(self, seconds: float, concurrency: int) -> tuple[int, list[float]]:
        from router.messages import Dispatched, Report
        from router.request import RequestMeta

        stop_at = time.monotonic() + seconds
        latencies: list[float] = []
        count = 0
        tag = uuid.uuid4().hex[:6]

        async def loop(k: int):
            nonlocal count
            i = 0
            while time.monotonic() < stop_at:
                meta = RequestMeta(f"{tag}-{k}-{i}", "m", 100, float((i * 7919 + k) % 500), 1000, time.time())
                t0 = time.perf_counter()
                if self.batched:
                    answer = await self.enqueuer.enqueue(meta)
                else:
                    answer = await self.router.enqueue.remote(meta)
                latencies.append(time.perf_counter() - t0)
                assert isinstance(answer, Dispatched), answer
                done = Report.complete(meta.request_id, 10)
                if self.batched:
                    self.reporter.report(done)
                else:
                    await self.router.report.remote([done])
                count += 1
                i += 1

        await asyncio.gather(*[loop(k) for k in range(concurrency)])
        return count, latencies


def _keep_registered(router, replicas: int, slots: int, stop: threading.Event, period_s: float = 2.0) -> None:
    """Heartbeat the fake replicas until ``stop``, as LLM replicas do: the router drops a replica
    silent for ``replica_timeout_s`` (15 s), which would end a longer run with NoReplica answers."""
    import ray

    while not stop.wait(period_s):
        ray.get([router.heartbeat.remote(f"r{r}", slots) for r in range(replicas)])


def bench_actor(seconds: float, generators: int, concurrency: int, replicas: int, slots: int) -> None:
    import ray

    from router.actor import RouterClient
    from router.config import SchedulerConfig

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        gen_cls = ray.remote(num_cpus=0)(LoadGen)
        for batched in (False, True):
            label = "batched submit/poll/report" if batched else "one call per enqueue and per complete"
            name = f"bench-router-{uuid.uuid4().hex[:6]}"
            config = SchedulerConfig(policy="ssjf", balancer="least-work", batching="continuous",
                                     max_batch=slots, max_queued=None).to_dict()
            router = RouterClient(name, "bench", config).handle
            ray.get([router.heartbeat.remote(f"r{r}", slots) for r in range(replicas)])
            stop = threading.Event()
            beats = threading.Thread(target=_keep_registered, args=(router, replicas, slots, stop), daemon=True)
            beats.start()
            try:
                solo = gen_cls.remote(name, "bench", batched)
                ray.get(solo.run.remote(0.5, 1))  # warm up
                _, lat = ray.get(solo.run.remote(min(3.0, seconds), 1))
                print(f"actor [{label}]: enqueue round trip, free slot, 1 caller: {fmt_ms(lat)}")
                gens = [gen_cls.remote(name, "bench", batched) for _ in range(generators)]
                ray.get([g.run.remote(0.5, 2) for g in gens])  # warm up
                before = ray.get(router.snapshot.remote())["counters"]["dispatched"]
                t0 = time.perf_counter()
                results = ray.get([g.run.remote(seconds, concurrency) for g in gens])
                elapsed = time.perf_counter() - t0
                after = ray.get(router.snapshot.remote())["counters"]["dispatched"]
                lat = [x for _, ls in results for x in ls]
                total = generators * concurrency
                queued = "requests queue" if total > replicas * slots else "slots always free"
                print(f"actor [{label}]: {after - before} decisions in {elapsed:.2f} s = "
                      f"{(after - before) / elapsed:,.0f} decisions/s ({generators} load generators x {concurrency} "
                      f"loops, {replicas} replicas x {slots} slots: {queued})")
                print(f"actor [{label}]: enqueue round trip under that load: {fmt_ms(lat)}")
            finally:
                stop.set()
                beats.join()
            for actor in (solo, *gens):
                ray.kill(actor)
            ray.kill(router, no_restart=True)
    finally:
        ray.shutdown()


# ---- http ------------------------------------------------------------------------------------
def bench_http(n: int) -> None:
    import httpx
    import ray
    from ray import serve

    from deployments.app import build_app, shutdown_router
    from deployments.engines import GenerationRequest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = {"name": "overhead", "proxy": {"predictor": "heuristic", "num_cpus": 0},
               "llm": {"engine": "replay", "num_replicas": 2, "batching": "continuous", "max_batch": 64,
                       "time_scale": 0.001, "num_cpus": 0},
               "ingress": {"num_cpus": 0}}
        serve.run(build_app(cfg), name="overhead", route_prefix="/")
        router_ms, start_ms, e2e = [], [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            body = {"model": "m", "prompt": "hello there", "max_tokens": 1, "replay_output_tokens": 1}
            for _ in range(20):
                client.post("/v1/completions", json=body)  # warm up
            for _ in range(n):
                t0 = time.perf_counter()
                r = client.post("/v1/completions", json=body)
                e2e.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
                router_ms.append(float(r.headers["x-ssjf-router-ms"]) / 1e3)
                start_ms.append(float(r.headers["x-ssjf-start-ms"]) / 1e3)
        # Pinning's own cost: the LLM deployment called from here, pinned to a replica or not.
        llm = serve.get_deployment_handle("llm", "overhead").options(stream=True)
        target = ray.get(ray.get_actor("ssjf-router-overhead", namespace="ssjf").snapshot.remote())["replicas"][0]

        async def first_chunk(pin: str | None) -> list[float]:
            out = []
            for i in range(n):
                request = GenerationRequest(f"b{i}", "hi", 1, replay_output_tokens=1)
                t0 = time.perf_counter()
                gen = llm.generate.remote(request, target_replica_id=pin)
                async for _ in gen:
                    out.append(time.perf_counter() - t0)
                    break
                gen.cancel()
            return out

        unpinned = asyncio.run(first_chunk(None))
        pinned = asyncio.run(first_chunk(target["replica_id"]))
        print(f"handle: call -> first chunk, Serve picks the replica:           {fmt_ms(unpinned)}")
        print(f"handle: call -> first chunk, pinned by PinnedRequestRouter:     {fmt_ms(pinned)}")
        print(f"http  : router round trip per request (enqueue at the actor):   {fmt_ms(router_ms)}")
        print(f"http  : pinned call, router answer -> start on the replica:     {fmt_ms(start_ms)}")
        print(f"http  : end to end, 1-token replay request (client view):       {fmt_ms(e2e)}")
        serve.delete("overhead")
        shutdown_router(cfg)
        serve.shutdown()
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["core", "actor", "http"], help="Run one measurement.")
    ap.add_argument("--core-requests", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="actor: measuring time.")
    ap.add_argument("--generators", type=int, default=2, help="actor: load-generator actors.")
    ap.add_argument("--concurrency", type=int, default=64, help="actor: concurrent loops per generator.")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--slots", type=int, default=8, help="Slots per replica (actor, core).")
    ap.add_argument("--http-requests", type=int, default=300)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; other work on it skews these numbers")
    if args.only in (None, "core"):
        bench_core(args.core_requests, args.replicas, args.slots)
    if args.only in (None, "actor"):
        bench_actor(args.seconds, args.generators, args.concurrency, args.replicas, args.slots)
    if args.only in (None, "http"):
        bench_http(args.http_requests)


if __name__ == "__main__":
    main()
