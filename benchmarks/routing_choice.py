"""Where the replica is chosen (issue 11, item 5): the SSJF dispatch wait in the ingress (today)
or inside Serve's request router (a prototype, benchmark-only). Written up in docs/routing.md.

Two shapes of the same request path, both on a live local Ray + Serve with ``replay`` replicas:

- ``pin`` (production): the ingress awaits the router actor (``BatchedEnqueuer.enqueue``), which
  answers with a replica id when the policy dispatches the request; the call is then pinned to
  that replica by ``router.serve_router.PinnedRequestRouter``. The exact production code runs:
  ``deployments.ingress._Run`` (dispatch, pinned call, retries) with a stand-in for the ingress.
- ``wait`` (prototype, :class:`CentralWaitRouter` below): the ingress calls the LLM deployment at
  once; Serve's request router awaits the router actor inside ``choose_replicas`` (the SSJF wait
  moves there) and returns the dispatched replica. Replica changes reach the central router from
  Serve's hooks (``update_replicas``, ``on_replica_actor_died``) instead of the ingress's
  ``remove_replica`` report after a bounced or failed call. ``wait`` lifts Serve's cap on routing
  tasks (``max_num_routing_tasks``: by default min(50, 2 x replicas) per handle) and counts the
  requests still waiting for its ``target_num_routing_tasks``; ``wait-lazy`` keeps Serve's lazy
  count (routing tasks started per request: printed), ``wait-cap`` keeps both, to show what the
  cap does to the order.

Measured, all in one run (a ratio of shapes is meaningful, an absolute number less so):

1. added latency, free slot: sequential 1-token requests; call -> "started" (the replica's first
   chunk), per shape, against Serve picking the replica itself (no central router): median, p99;
2. decisions per second: ``--concurrency`` loops of 1-token requests on 2 x 4 slots (requests queue);
3. order: all slots held by blockers, a burst of ``--burst`` requests in descending predicted
   length, then the blockers cancelled; the share of dispatched pairs in SSJF order (1.0 = SSJF,
   0.0 = arrival order);
4. ``wait`` only: queue full (429's answer reaches the caller) and cancel while queued;
5. a replica killed mid-burst (16 requests, half "streaming") with steady load going on until
   Serve's replacement has joined: completed / errored / hung, retries, slowest starts.

    .venv/bin/python benchmarks/routing_choice.py                  # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/routing_choice.py --skip fault --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from typing import NamedTuple

for _k, _v in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica  # noqa: E402

from deployments.config import AppConfig  # noqa: E402
from deployments.engines.base import Delta  # noqa: E402
from router.actor import BatchedEnqueuer, Reporter, RouterClient  # noqa: E402
from router.messages import Cancelled, Dispatched, Report  # noqa: E402
from router.serve_router import TARGET_KWARG  # noqa: E402


def _answer(answer) -> tuple[str, str | None, int | None]:
    """``(kind, replica_id, batch_id)`` of an ``enqueue`` answer; kind: dispatched, cancelled, refused."""
    if isinstance(answer, Dispatched):
        return "dispatched", answer.replica_id, answer.batch_id
    return ("cancelled" if isinstance(answer, Cancelled) else "refused"), None, None


def _report(reporter: Reporter, kind: str, ident: str) -> None:
    """``reporter.report`` of a cancel or remove_replica."""
    reporter.report(getattr(Report, kind)(ident))


def _pending_meta() -> dict:
    """request id -> {"meta": RequestMeta, "requeue": bool}: how the prototype's caller hands a
    call's SSJF metadata to ``CentralWaitRouter`` (both run in the caller's process; a production
    version would pass it with the call). Process-wide, benchmark only."""
    return sys.__dict__.setdefault("_routing_choice_meta", {})


def _request_id(request) -> str | None:
    """The request id of a call's first argument (a GenerationRequest)."""
    return getattr(request, "request_id", None)


def _with_batch_id(request, batch_id: int):
    import dataclasses

    return dataclasses.replace(request, batch_id=batch_id)


def _event(ev) -> tuple[str, int, object]:
    """``(kind, num_tokens, finish_reason)`` of a ``_Run`` event (Started / Delta / Restart)."""
    if isinstance(ev, Delta):
        return "delta", ev.num_tokens, ev.finish_reason
    name = type(ev).__name__
    return ("restart" if name == "Restart" else name.lower()), 0, None


SERVE_CHOOSES = "serve-chooses"  # the wait shape's target until CentralWaitRouter sets the real one


class _NoTarget(NamedTuple):
    """What ``_WaitRun._dispatch`` answers: no replica yet (Serve's router chooses it, and then
    writes the chosen id into the call's ``target_replica_id``). Reads like ``Dispatched``. ``_Run`` reports a failed call's
    replica as removed: under this placeholder id, which the router actor does not know."""

    replica_id: str = SERVE_CHOOSES
    batch_id: int | None = None


class RouterAnswer(Exception):
    """The central router refused the request (queue full, no replica): the caller gets this."""

    def __init__(self, answer):
        super().__init__(f"router answered {answer!r}")
        self.answer = answer


def _registry() -> dict:
    # The RequestRouter lives in Serve's router thread of the calling process; the benchmark's
    # caller reads its counters through this process-wide dict (benchmark only).
    return sys.__dict__.setdefault("_routing_choice_routers", {})


class CentralWaitRouter(RequestRouter):
    """Prototype: ``choose_replicas`` awaits the central router's dispatch of this request.

    The request's ``RequestMeta`` is looked up by request id (:func:`_pending_meta`); the answer's
    replica is returned as the only choice. A dispatched replica that this handle saw leave
    (``update_replicas``) or die (``on_replica_actor_died``) is reported to the central router at
    once and the request is queued again in its own place; one this handle has never seen (newer
    than its replica list) is waited for, up to ``grace_s``, then treated as gone.
    """

    def initialize_state(self, router_name: str, namespace: str, scheduler_config: dict,
                         actor_kwargs: dict | None = None, task_cap: int | None = None, live_target: bool = False,
                         grace_s: float = 3.0, router_timeout_s: float = 60.0):
        self._client = RouterClient(router_name, namespace, scheduler_config, actor_kwargs=actor_kwargs)
        self._enqueuer: BatchedEnqueuer | None = None
        self._reporter: Reporter | None = None
        self._task_cap = task_cap
        self._live_target = live_target
        self._grace_s = grace_s
        self._router_timeout_s = router_timeout_s
        self._gone: set[str] = set()
        self._unknown_since: dict[str, tuple[str, float]] = {}  # request id -> (target, first seen)
        self.stats = Counter()
        _registry().setdefault(self._deployment_id.app_name, []).append(self)

    @property
    def max_num_routing_tasks(self) -> int:
        # One routing task waits per request inside choose_replicas; Serve's default cap
        # (min(50, 2 x replicas)) would leave the rest in Serve's FIFO queue, unseen by SSJF.
        cap = getattr(self, "_task_cap", None)
        return cap if cap else super().max_num_routing_tasks

    @property
    def target_num_routing_tasks(self) -> int:
        # Serve counts pending requests with a lazily cleaned deque (done entries leave only from
        # its front). Under SSJF a long request waits at the front while later, shorter ones are
        # served, so the count keeps every request served since, and each arrival starts that many
        # routing tasks, which find nothing to do and exit. ``live_target``: count the requests
        # still waiting (Serve's private index of them) instead.
        if getattr(self, "_live_target", False):
            return min(len(self._pending_requests_by_id), self.max_num_routing_tasks)
        return super().target_num_routing_tasks

    def _maybe_start_routing_tasks(self):
        before = len(self._routing_tasks)
        super()._maybe_start_routing_tasks()
        if hasattr(self, "stats"):
            self.stats["routing_tasks_started"] += max(0, len(self._routing_tasks) - before)

    # ---- replica changes: Serve's view goes to the central router ------------------------------
    def update_replicas(self, replicas: list[RunningReplica]):
        before = {rid.unique_id for rid in self._replica_id_set}
        super().update_replicas(replicas)
        after = {rid.unique_id for rid in self._replica_id_set}
        for uid in before - after:
            self._mark_gone(uid, "gone_by_update_replicas")

    def on_replica_actor_died(self, replica_id):
        super().on_replica_actor_died(replica_id)
        self._mark_gone(replica_id.unique_id, "gone_by_actor_died")

    def _mark_gone(self, uid: str, why: str) -> None:
        if not hasattr(self, "stats") or uid in self._gone:
            return
        self._gone.add(uid)
        self.stats[why] += 1
        try:
            _report(self._tools()[1], "remove_replica", uid)
        except RuntimeError:  # no running loop (not expected: Serve calls hooks on its loop)
            self.stats["remove_not_sent"] += 1

    def _tools(self) -> tuple[BatchedEnqueuer, Reporter]:
        if self._enqueuer is None:  # created on Serve's router loop, where they run
            self._enqueuer, self._reporter = BatchedEnqueuer(self._client), Reporter(self._client)
        return self._enqueuer, self._reporter

    def _refuse(self, pending_request: PendingRequest, error: BaseException, candidates):
        # Raising here would strand the request (Serve has already taken it off its routing
        # queue and only logs the error): fail its future instead, which the caller then sees.
        if not pending_request.future.done():
            pending_request.future.set_exception(error)
        self.stats["refused"] += 1
        return [candidates]  # non-empty: Serve's routing loop then sees the future done and stops

    # ---- the choice ------------------------------------------------------------------------
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True
        request = pending_request.args[0] if pending_request.args else None
        entry = _pending_meta().get(_request_id(request))
        if entry is None:  # not an SSJF call (e.g. the baseline): Serve chooses
            return [candidate_replicas]
        meta = entry["meta"]
        if pending_request.future.done():
            return [candidate_replicas]
        if meta.request_id in self._unknown_since:  # last time the target was not in this handle's list yet
            choice = self._recheck_unknown_target(entry, candidate_replicas, pending_request)
            if choice is not None:
                return choice
        return await self._await_dispatch(entry, request, candidate_replicas, pending_request)

    def _recheck_unknown_target(self, entry: dict, candidate_replicas: list[RunningReplica],
                                pending_request: PendingRequest) -> list[list[RunningReplica]] | None:
        """The request's last target was not in this handle's list: route to it once it is, back off
        while within ``grace_s``, then treat it as gone (None: queue the request again)."""
        rid = entry["meta"].request_id
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        target, since = self._unknown_since[rid]
        if target in by_id:
            del self._unknown_since[rid]
            self.stats["dispatched_after_wait"] += 1
            pending_request.kwargs[TARGET_KWARG] = target
            return [[by_id[target]]]
        if target not in self._gone and time.time() - since < self._grace_s:
            return []  # Serve backs off (up to max_backoff_s) and asks again
        del self._unknown_since[rid]
        self.stats["unknown_target_given_up"] += 1
        self._mark_gone(target, "gone_by_grace")
        entry["requeue"] = True
        return None

    async def _await_dispatch(self, entry: dict, request, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest) -> list[list[RunningReplica]]:
        """Enqueue at the central router and wait for its dispatch (the SSJF wait), retrying while
        the router restarts; returns the choice for Serve."""
        meta = entry["meta"]
        enqueuer, reporter = self._tools()
        deadline = time.time() + self._router_timeout_s
        delay = 0.05
        while True:
            requeue = bool(entry.get("requeue"))
            try:
                answer = await enqueuer.enqueue(meta, requeue)
            except asyncio.CancelledError:
                _report(reporter, "cancel", meta.request_id)  # the caller went away while queued
                raise
            except Exception as e:
                if not RouterClient.is_actor_failure(e):
                    return self._refuse(pending_request, e, candidate_replicas)
                self.stats["router_restart"] += 1
                if time.time() > deadline:
                    return self._refuse(pending_request, e, candidate_replicas)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
                continue
            entry["requeue"] = False
            choice = self._place(answer, entry, request, candidate_replicas, pending_request, reporter)
            if choice is not None:
                return choice

    def _place(self, answer, entry: dict, request, candidate_replicas: list[RunningReplica],
               pending_request: PendingRequest, reporter: Reporter) -> list[list[RunningReplica]] | None:
        """The choice for the router's answer; None: enqueue again (cancelled, or its replica is gone)."""
        kind, target, batch_id = _answer(answer)
        if kind == "cancelled":
            return None
        if kind != "dispatched":  # queue full, no replica: the ingress maps it to 429/503
            return self._refuse(pending_request, RouterAnswer(answer), candidate_replicas)
        if batch_id is not None:  # static batching: the id reaches the replica in the call itself
            pending_request.args[0] = _with_batch_id(request, batch_id)
        # Serve may have updated its list while we waited: look in the current one.
        current = {r.replica_id.unique_id: r for r in self._replicas.values()}
        if target in current:
            self.stats["dispatched"] += 1
            # The replica checks the call was meant for it: name the replica chosen here.
            pending_request.kwargs[TARGET_KWARG] = target
            return [[current[target]]]
        if target in self._gone:  # the central router has not heard yet: tell it, queue again
            self.stats["requeued_gone_target"] += 1
            _report(reporter, "remove_replica", target)
            entry["requeue"] = True
            return None
        self.stats["unknown_target_wait"] += 1
        self._unknown_since[entry["meta"].request_id] = (target, time.time())
        return []


# ---- the caller: the ingress's request path, with the production code where it exists --------
_TYPED_REQUESTS: bool | None = None


def _generation_request(rid: str, max_tokens: int, tokens: int):
    """The call's first argument as the LLM replica takes it: a GenerationRequest, or (before
    the typed API) the payload dict."""
    global _TYPED_REQUESTS
    if _TYPED_REQUESTS is None:
        import inspect

        from deployments.llm import LLMServer

        cls = getattr(LLMServer, "func_or_class", LLMServer)
        _TYPED_REQUESTS = "payload" not in inspect.signature(cls.generate).parameters
    if _TYPED_REQUESTS:
        from deployments.engines.base import GenerationRequest

        return GenerationRequest(request_id=rid, prompt="x", max_tokens=max_tokens, num_prompt_tokens=8,
                                 temperature=0.0, top_p=1.0, replay_output_tokens=tokens)
    return dict(request_id=rid, prompt="x", prompt_token_ids=None, num_prompt_tokens=8, max_tokens=max_tokens,
                temperature=0.0, top_p=1.0, seed=None, replay_output_tokens=tokens)


class _Counter:
    def __init__(self):
        self.counts = Counter()

    def labels(self, reason):
        counts = self.counts

        class _One:
            @staticmethod
            def inc(n: int = 1):
                counts[reason] += n

        return _One


class _IngressStandIn:
    """What ``deployments.ingress._Run`` reads from the ingress."""

    def __init__(self, cfg: AppConfig, llm_handle, wait: bool):
        from types import SimpleNamespace

        r = cfg.router
        self.cfg = cfg
        self.wait = wait
        self.router = RouterClient(cfg.router_actor_name, r.namespace, cfg.scheduler_config().to_dict(),
                                   max_restarts=r.max_restarts)
        self.enqueuer = BatchedEnqueuer(self.router)
        self.reporter = Reporter(self.router)
        self.metrics = SimpleNamespace(retries=_Counter())
        self.llm = llm_handle.options(stream=True)


class Caller:
    """A Ray actor standing in for one ingress replica (its handles route in Serve's router thread)."""

    def __init__(self, configs: dict[str, dict]):
        from ray import serve

        from deployments.ingress import _Run

        class _WaitRun(_Run):
            async def _dispatch(self, requeue: bool):
                # No answer to wait for here: the wait happens inside Serve's routing of the call.
                _pending_meta()[self.meta.request_id]["requeue"] = requeue
                return _NoTarget()

        self._Run, self._WaitRun = _Run, _WaitRun
        self.ings = {}
        for shape, cfg in configs.items():
            app_cfg = AppConfig.from_dict(cfg)
            handle = serve.get_deployment_handle("llm", app_cfg.name)
            self.ings[shape] = _IngressStandIn(app_cfg, handle, wait=shape.startswith("wait"))

    def _new_run(self, shape: str, predicted: float, tokens: int, restart_after_output: bool = True):
        from router.request import RequestMeta

        ing = self.ings[shape]
        rid = f"{shape}-{uuid.uuid4().hex[:12]}"
        # max_tokens stays above every prediction: the scheduler caps a prediction at max_tokens.
        max_tokens = max(tokens, 4096)
        meta = RequestMeta(rid, "m", 8, float(predicted), max_tokens, time.time())
        request = _generation_request(rid, max_tokens, tokens)
        if ing.wait:
            _pending_meta()[rid] = {"meta": meta, "requeue": False}
        cls = self._WaitRun if ing.wait else self._Run
        return cls(ing, meta, request, restart_after_output)

    async def one(self, shape: str, predicted: float = 10.0, tokens: int = 1, restart_after_output: bool = True,
                  started: asyncio.Event | None = None) -> dict:
        from deployments.protocol import APIError

        run = self._new_run(shape, predicted, tokens, restart_after_output)
        events = run.events()
        t0 = time.perf_counter()
        out = {"rid": run.meta.request_id, "predicted": predicted}
        try:
            await events.__anext__()  # Started: dispatched and running
            out["start_s"] = time.perf_counter() - t0
            if started is not None:
                started.set()
            n = 0
            async for ev in events:
                kind, num_tokens, finish = _event(ev)
                if kind == "restart":
                    n = 0
                    continue
                n += num_tokens
                if finish is not None:
                    break
            out.update(outcome="ok", tokens=n)
        except APIError as e:
            out.update(outcome="error", status=e.status, code=e.body()["error"].get("code"))
        except asyncio.CancelledError:
            out.update(outcome="cancelled")
            raise
        except Exception as e:
            out.update(outcome="error", error=repr(e)[:200])
        finally:
            await events.aclose()
            _pending_meta().pop(run.meta.request_id, None)
            out["total_s"] = time.perf_counter() - t0
            out["retries"] = run.num_retries
        return out

    async def warm(self, n: int = 20) -> None:
        for shape in self.ings:
            for _ in range(n):
                r = await self.one(shape)
                assert r["outcome"] == "ok", r

    async def baseline_first_chunk(self, n: int) -> list[float]:
        """Serve picks the replica (no central router, no pin): call -> first chunk."""
        handle = self.ings["pin"].llm
        out = []
        for _ in range(n):
            request = _generation_request(f"base-{uuid.uuid4().hex[:8]}", 1, 1)
            t0 = time.perf_counter()
            gen = handle.generate.remote(request)
            await gen.__anext__()
            out.append(time.perf_counter() - t0)
            async for _ in gen:
                pass
        return out

    async def sequential(self, shape: str, n: int) -> list[float]:
        out = []
        for _ in range(n):
            r = await self.one(shape)
            assert r["outcome"] == "ok", r
            out.append(r["start_s"])
        return out

    async def load(self, shape: str, seconds: float, concurrency: int) -> dict:
        snap0 = await self.ings[shape].router.handle.snapshot.remote()
        stop_at = time.monotonic() + seconds
        done, errors, starts = 0, 0, []

        async def loop():
            nonlocal done, errors
            while time.monotonic() < stop_at:
                r = await self.one(shape, predicted=float(uuid.uuid4().int % 500))
                if r["outcome"] == "ok":
                    done += 1
                    starts.append(r["start_s"])
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*[loop() for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
        snap1 = await self.ings[shape].router.handle.snapshot.remote()
        return {"completed": done, "errors": errors, "elapsed_s": elapsed,
                "dispatched": snap1["counters"]["dispatched"] - snap0["counters"]["dispatched"],
                "start_median_s": statistics.median(starts) if starts else None}

    async def ordering(self, shape: str, burst: int, slots: int, blocker_tokens: int) -> dict:
        """Blockers hold every slot; a burst arrives in descending predicted length; blockers go."""
        router = self.ings[shape].router.handle
        events = [asyncio.Event() for _ in range(slots)]
        blockers = [asyncio.create_task(self.one(shape, 1.0, blocker_tokens, started=ev)) for ev in events]
        await asyncio.wait_for(asyncio.gather(*[ev.wait() for ev in events]), 30)
        tasks = []
        for i in range(burst):
            tasks.append(asyncio.create_task(self.one(shape, float((burst - i) * 10))))
            await asyncio.sleep(0.003)
        await asyncio.sleep(0.7)
        visible = (await router.snapshot.remote())["num_queued"]
        blockers_alive = sum(not b.done() for b in blockers)
        for b in blockers:
            b.cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await asyncio.gather(*blockers, return_exceptions=True)
        ids = {r["rid"]: r["predicted"] for r in results}
        log = (await router.snapshot.remote(True))["dispatch_log"]
        order = [ids[entry[0]] for entry in log if entry[0] in ids]
        pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
        in_order = sum(a < b for a, b in pairs) / len(pairs) if pairs else float("nan")
        return {"burst": burst, "visible_to_router": visible, "blockers_alive_at_release": blockers_alive,
                "ssjf_pair_share": in_order, "dispatch_order": order,
                "ok": sum(r["outcome"] == "ok" for r in results)}

    async def fault(self, shape: str, n: int, tokens: int, timeout_s: float, follow_s: float,
                    follow_concurrency: int) -> dict:
        """Kill a busy LLM replica while requests queue, with steady load going on until Serve's
        replacement has joined; classify every request (a hang times out)."""
        ing = self.ings[shape]
        router = ing.router.handle
        retries_before = Counter(ing.metrics.retries.counts)
        stats_before = Counter(self.router_stats().get(ing.cfg.name, {}))
        snap0 = await router.snapshot.remote()
        counters_before, replicas_before = snap0["counters"], {r["replica_id"] for r in snap0["replicas"]}
        tasks = [asyncio.create_task(self.one(shape, 50.0, tokens, restart_after_output=i % 2 == 0))
                 for i in range(n)]
        follow: list[dict] = []
        stop_at = 0.0

        async def steady():
            while time.monotonic() < stop_at:
                follow.append(await self.one(shape, predicted=float(uuid.uuid4().int % 100)))

        victim, at_kill = await _busiest_replica_while_queued(router)
        killed_at = time.monotonic()
        stop_at = killed_at + follow_s
        if victim is not None:
            _kill_replica(ing.cfg.name, victim)
        loops = [asyncio.create_task(steady()) for _ in range(follow_concurrency)]
        replaced_after = await _replacement_joined_after(router, replicas_before, killed_at, stop_at)
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        loops_done, loops_pending = await asyncio.wait(loops, timeout=timeout_s)
        for t in loops_pending:
            t.cancel()
        results = [t.result() for t in done]
        after = (await router.snapshot.remote())["counters"]
        retried = [r for r in results if r["retries"]]
        return {"victim": victim, "running_before": snap0["num_running"],
                "at_kill": at_kill and {k: at_kill[k] for k in ("num_queued", "num_running", "replicas")},
                "hung": len(pending), "outcomes": dict(Counter(r["outcome"] for r in results)),
                "errors": [r.get("code") or r.get("error") for r in results if r["outcome"] == "error"],
                "all_tokens": all(r["tokens"] == tokens for r in results if r["outcome"] == "ok"),
                "max_total_s_of_retried": max((r["total_s"] for r in retried), default=None),
                "replacement_registered_after_s": replaced_after,
                "follow": _follow_summary(follow, len(loops_pending)),
                "retries": dict(ing.metrics.retries.counts - retries_before),
                "prototype_router": dict(Counter(self.router_stats().get(ing.cfg.name, {})) - stats_before),
                "router_requeued": after["requeued"] - counters_before["requeued"],
                "router_replicas_removed": after["replicas_removed"] - counters_before["replicas_removed"]}

    async def edge(self, shape: str, slots: int, extra: int, blocker_tokens: int) -> dict:
        """Queue full and cancel-while-queued in a small app (max_queued = slots): blockers hold every
        slot, ``extra`` requests arrive: ``slots`` queue, the rest are refused; then the queued ones
        are cancelled by their callers (a client going away) and must leave the central router."""
        router = self.ings[shape].router.handle
        events = [asyncio.Event() for _ in range(slots)]
        blockers = [asyncio.create_task(self.one(shape, 1.0, blocker_tokens, started=ev)) for ev in events]
        await asyncio.wait_for(asyncio.gather(*[ev.wait() for ev in events]), 30)
        c0 = (await router.snapshot.remote())["counters"]
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(self.one(shape, 10.0 + i)) for i in range(extra)]
        done, _ = await asyncio.wait(tasks, timeout=3.0)
        refused = [t.result() for t in done]
        refused_s = time.perf_counter() - t0
        queued = (await router.snapshot.remote())["num_queued"]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left, deadline = None, time.monotonic() + 5
        while time.monotonic() < deadline:
            left = (await router.snapshot.remote())["num_queued"]
            if left == 0:
                break
            await asyncio.sleep(0.05)
        c1 = (await router.snapshot.remote())["counters"]
        for b in blockers:
            b.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
        return {"refused": len(refused), "refused_within_s": refused_s,
                "refusal_errors": sorted({r.get("error", r.get("code", ""))[:90] for r in refused}),
                "queued_before_cancel": queued, "queued_after_cancel": left,
                "router_cancelled": c1["cancelled"] - c0["cancelled"], "router_rejected": c1["rejected"] - c0["rejected"]}

    def pid(self) -> int:
        return os.getpid()

    def router_stats(self) -> dict:
        out = {}
        for app, routers in _registry().items():
            total = Counter()
            for r in routers:
                total.update(r.stats)
            out[app] = dict(total)
        return out


async def _busiest_replica_while_queued(router, timeout_s: float = 30.0) -> tuple[str | None, dict | None]:
    """Wait (up to ``timeout_s``) until requests queue and a replica runs some; returns the busiest
    replica's id and the router snapshot then (None, None: it never happened)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = await router.snapshot.remote()
        busy = sorted((r for r in snap["replicas"] if r["num_running"] > 0), key=lambda r: -r["num_running"])
        if snap["num_queued"] >= 4 and busy:
            return busy[0]["replica_id"], snap  # the busiest: its burst requests are running
        await asyncio.sleep(0.02)
    return None, None


def _kill_replica(app: str, replica_id: str) -> None:
    """Kill the LLM replica's actor for good (Serve then starts a replacement)."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].endswith(f"{app}#llm#{replica_id}"):
            ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]), no_restart=True)


async def _replacement_joined_after(router, replicas_before: set, killed_at: float, stop_at: float) -> float | None:
    """Watch the router's replicas until ``stop_at``; seconds after the kill when a new one joined."""
    replaced_after = None
    while time.monotonic() < stop_at:
        ids = {r["replica_id"] for r in (await router.snapshot.remote())["replicas"]}
        if replaced_after is None and ids - replicas_before:
            replaced_after = time.monotonic() - killed_at
        await asyncio.sleep(0.05)
    return replaced_after


def _follow_summary(follow: list[dict], hung_loops: int) -> dict:
    """The steady load during a fault: completed, outcomes, start latency median / p99 / max."""
    starts = sorted(r["start_s"] for r in follow if r["outcome"] == "ok")
    return {"completed": len(starts), "hung_loops": hung_loops,
            "outcomes": dict(Counter(r["outcome"] for r in follow)),
            "start_median_s": statistics.median(starts) if starts else None,
            "start_p99_s": starts[min(len(starts) - 1, int(0.99 * len(starts)))] if starts else None,
            "start_max_s": starts[-1] if starts else None}


# ---- the driver --------------------------------------------------------------------------------
def app_config(name: str, wait: bool, replicas: int = 2, max_queued: int | None = 1000) -> dict:
    cfg = {"name": name, "proxy": {"predictor": "heuristic", "num_cpus": 0},
           "llm": {"engine": "replay", "num_replicas": replicas, "batching": "continuous", "max_batch": 4,
                   "time_scale": 0.1, "num_cpus": 0, "heartbeat_s": 1.0},
           "router": {"policy": "ssjf", "balancer": "least-work", "max_queued": max_queued},
           "ingress": {"num_cpus": 0, "max_retries": 3}}
    if wait:
        # The first chunk now includes the SSJF queue wait: a lost-call timer can no longer be
        # told from a long wait, so it is off (see docs/routing.md).
        cfg["ingress"]["first_chunk_timeout_s"] = 3600.0
    return cfg


def llm_app(cfg_dict: dict, shape: str):
    """The LLM deployment as ``deployments.app.build_app`` sets it up, with the shape's router."""
    from ray.serve.config import RequestRouterConfig

    from deployments.app import resolve_config
    from deployments.llm import LLMServer
    from router.serve_router import PinnedRequestRouter

    cfg = resolve_config(cfg_dict)
    if shape == "pin":
        rrc = RequestRouterConfig(request_router_class=PinnedRequestRouter,
                                  request_router_kwargs={"pin_grace_s": cfg.ingress.pin_grace_s})
    else:
        r = cfg.router
        rrc = RequestRouterConfig(request_router_class=CentralWaitRouter, request_router_kwargs={
            "router_name": cfg.router_actor_name, "namespace": r.namespace,
            "scheduler_config": cfg.scheduler_config().to_dict(),
            "actor_kwargs": dict(retry_after_s=r.retry_after_s, replica_timeout_s=r.replica_timeout_s,
                                 lease_s=r.lease_s, orphan_timeout_s=r.orphan_timeout_s),
            "task_cap": None if shape == "wait-cap" else 100_000, "live_target": shape in ("wait", "wait-edge"), "grace_s": cfg.ingress.pin_grace_s,
            "router_timeout_s": cfg.ingress.router_timeout_s})
    return LLMServer.options(
        num_replicas=cfg.llm.num_replicas, max_ongoing_requests=cfg.llm.serve_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.llm.num_cpus, "num_gpus": cfg.llm.num_gpus},
        request_router_config=rrc, health_check_timeout_s=60,
    ).bind(cfg.to_dict())


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=60, help="latency: sequential requests per shape per round")
    ap.add_argument("--rounds", type=int, default=3, help="latency and load: interleaved rounds")
    ap.add_argument("--seconds", type=float, default=6.0, help="load: seconds per shape per round")
    ap.add_argument("--concurrency", type=int, default=48, help="load: concurrent request loops")
    ap.add_argument("--burst", type=int, default=24, help="order: requests in the burst")
    ap.add_argument("--follow-s", type=float, default=15.0, help="fault: steady load after the kill (s)")
    ap.add_argument("--follow-concurrency", type=int, default=4, help="fault: loops of the steady load")
    ap.add_argument("--fault-rounds", type=int, default=2, help="fault: kills per shape (interleaved)")
    ap.add_argument("--skip", action="append", default=[], choices=["latency", "load", "order", "edge", "fault"])
    ap.add_argument("--profile", help="load: record the caller's process with py-spy into this folder")
    ap.add_argument("--json", help="also write the raw results here")
    return ap.parse_args()


def _measure_latency(caller, args, fmt_ms, pct) -> dict:
    """1. Added latency on a free slot, per shape against Serve choosing alone; prints it."""
    import ray

    lat = {"serve": [], "pin": [], "wait": []}
    for _ in range(args.rounds):
        lat["serve"] += ray.get(caller.baseline_first_chunk.remote(args.requests))
        lat["pin"] += ray.get(caller.sequential.remote("pin", args.requests))
        lat["wait"] += ray.get(caller.sequential.remote("wait", args.requests))
    base = statistics.median(lat["serve"])
    print("latency, free slot: call -> first chunk from the replica (sequential 1-token requests)")
    print(f"  Serve picks (no central router): {fmt_ms(lat['serve'])}")
    for s in ("pin", "wait"):
        print(f"  {s:<4} ({'enqueue, then pinned call' if s == 'pin' else 'wait inside choose_replicas'}): "
              f"{fmt_ms(lat[s])}; added over Serve: median {(statistics.median(lat[s]) - base) * 1e3:+.2f} ms, "
              f"p99 {(pct(lat[s], 0.99) - pct(lat['serve'], 0.99)) * 1e3:+.2f} ms")
    print(f"  ratio wait/pin: median {statistics.median(lat['wait']) / statistics.median(lat['pin']):.2f}, "
          f"p99 {pct(lat['wait'], 0.99) / pct(lat['pin'], 0.99):.2f}")
    return lat


def _start_profiler(caller, args, shape: str):
    """py-spy on the caller's process for one load round: where its time goes."""
    import subprocess

    import ray

    os.makedirs(args.profile, exist_ok=True)
    return subprocess.Popen(
        ["py-spy", "record", "-p", str(ray.get(caller.pid.remote())), "-d",
         str(int(args.seconds)), "-r", "50", "--threads", "-f", "raw", "-o",
         os.path.join(args.profile, f"{shape}.txt")], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def _measure_load(caller, args, configs: dict) -> tuple[dict, dict]:
    """2. Decisions per second under queueing, interleaved rounds per shape; prints them. Returns
    the rounds per shape and Serve's routing tasks started per shape."""
    import ray

    load_shapes = ("pin", "wait", "wait-lazy")
    load = {s: [] for s in load_shapes}
    tasks_started = Counter()
    for k in range(args.rounds):
        for s in load_shapes:
            spy = _start_profiler(caller, args, s) if args.profile and k == 0 else None
            before = ray.get(caller.router_stats.remote()).get(configs[s]["name"], {})
            load[s].append(ray.get(caller.load.remote(s, args.seconds, args.concurrency)))
            after = ray.get(caller.router_stats.remote()).get(configs[s]["name"], {})
            tasks_started[s] += after.get("routing_tasks_started", 0) - before.get("routing_tasks_started", 0)
            if spy is not None:
                spy.wait(30)
    print(f"decisions/s: {args.concurrency} concurrent loops of 1-token requests, 2 replicas x 4 slots "
          f"(requests queue), {args.rounds} x {args.seconds:.0f} s per shape, interleaved")
    rates = {}
    for s in load_shapes:
        rs = [r["dispatched"] / r["elapsed_s"] for r in load[s]]
        rates[s] = statistics.median(rs)
        errs = sum(r["errors"] for r in load[s])
        n = sum(r["dispatched"] for r in load[s])
        extra = (f"; Serve routing tasks started per request {tasks_started[s] / n:.1f}"
                 if s != "pin" and n else "")
        print(f"  {s:<9}: median {rates[s]:,.0f} decisions/s (rounds: "
              f"{', '.join(f'{x:,.0f}' for x in rs)}), errors {errs}{extra}")
    for s in load_shapes[1:]:
        per_round = [w["dispatched"] / w["elapsed_s"] / (p["dispatched"] / p["elapsed_s"])
                     for p, w in zip(load["pin"], load[s], strict=True)]
        print(f"  ratio {s}/pin: {rates[s] / rates['pin']:.2f} (of medians); per round "
              f"{', '.join(f'{x:.2f}' for x in per_round)}")
    return load, dict(tasks_started)


def _measure_order(caller, args, slots: int) -> dict:
    """3. The share of dispatched pairs in SSJF order after a held burst, per shape; prints it."""
    import ray

    print(f"order: {slots} slots held, a burst of {args.burst} in descending predicted length, then released")
    order = {}
    for s in ("pin", "wait", "wait-cap"):
        o = ray.get(caller.ordering.remote(s, args.burst, slots, 3000))
        order[s] = o
        print(f"  {s:<8}: SSJF pair share {o['ssjf_pair_share']:.2f}; seen by the central router before "
              f"release {o['visible_to_router']}/{args.burst}; completed {o['ok']}/{args.burst}"
              f"{'' if o['blockers_alive_at_release'] == slots else ' (WARNING: blockers ended early)'}")
    return order


def _measure_edge(caller) -> dict:
    """4. The wait shape's queue full and cancel while queued; prints it."""
    import ray

    e = ray.get(caller.edge.remote("wait-edge", 4, 8, 3000))
    print(f"wait, queue full and cancel while queued (1 replica x 4 slots held, max_queued 4, 8 more "
          f"requests): refused {e['refused']} within {e['refused_within_s']:.2f} s {e['refusal_errors']}; "
          f"queued {e['queued_before_cancel']} -> {e['queued_after_cancel']} after their callers "
          f"cancelled (router counted {e['router_cancelled']} cancelled, {e['router_rejected']} rejected)")
    return e


def _measure_fault(caller, args) -> dict:
    """5. A replica killed mid-burst, per shape and round (interleaved); prints each round."""
    import ray

    print(f"replica killed mid-burst (16 requests x 300 tokens; even ones restart after output, odd "
          f"ones are streams), {args.follow_concurrency} loops of 1-token requests going on for "
          f"{args.follow_s:.0f} s, through Serve's replacement of the replica")
    fault = {"pin": [], "wait": []}
    for s in ("pin", "wait") * args.fault_rounds:
        f = ray.get(caller.fault.remote(s, 16, 300, 60.0, args.follow_s, args.follow_concurrency))
        fault[s].append(f)
        fo = f["follow"]
        print(f"  {s:<4}: burst {f['outcomes']}, hung {f['hung']}, errors {f['errors']}; slowest retried "
              f"request {f['max_total_s_of_retried'] or 0:.2f} s; steady load {fo['outcomes']}, hung loops "
              f"{fo['hung_loops']}, start median {fo['start_median_s'] * 1e3:.1f} ms, p99 "
              f"{fo['start_p99_s'] * 1e3:.1f} ms, max {fo['start_max_s'] * 1e3:.0f} ms; replacement "
              f"registered after {f['replacement_registered_after_s'] or float('nan'):.1f} s")
        print(f"        retries {f['retries']}, router requeued {f['router_requeued']}, replicas removed "
              f"{f['router_replicas_removed']}, prototype router {f['prototype_router']}")
    return fault


def main() -> None:
    args = _parse_args()

    import ray
    from ray import serve

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from router_overhead import fmt_ms, pct  # the existing benchmark's helpers

    from deployments.app import shutdown_router

    shapes = ["pin", "wait", "wait-lazy", "wait-cap"]
    configs = {s: app_config(f"rc-{s}", wait=s != "pin") for s in shapes}
    if "edge" not in args.skip:  # queue full / cancel while queued, prototype only (1 replica x 4 slots)
        configs["wait-edge"] = app_config("rc-wait-edge", wait=True, replicas=1, max_queued=4)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"other work on it skews absolute numbers: compare shapes (interleaved rounds)")
    results: dict = {"load_average_start": os.getloadavg()}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        for s in configs:
            serve.run(llm_app(configs[s], s), name=configs[s]["name"], route_prefix=None)
        caller = ray.remote(num_cpus=0)(Caller).remote(configs)
        ray.get(caller.warm.remote())
        slots = 2 * 4

        if "latency" not in args.skip:
            results["latency"] = _measure_latency(caller, args, fmt_ms, pct)
        if "load" not in args.skip:
            results["load"], results["routing_tasks_started"] = _measure_load(caller, args, configs)
        if "order" not in args.skip:
            results["order"] = _measure_order(caller, args, slots)
        if "edge" not in args.skip:
            results["edge"] = _measure_edge(caller)
        if "fault" not in args.skip:
            results["fault"] = _measure_fault(caller, args)
        stats = ray.get(caller.router_stats.remote())
        results["router_stats"] = stats
        print(f"prototype router counters (per app): {stats}")
        results["load_average_end"] = os.getloadavg()
        print(f"load average at end {os.getloadavg()[0]:.2f}")
        for s in configs:
            serve.delete(configs[s]["name"])
            shutdown_router(configs[s])
        serve.shutdown()
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
