"""Nothing lost, nothing hung: random sequences of what an ingress, the replicas and the clock do to
the router (dispatches, requeues, stale and duplicate reports, cancels, replica removal and return,
a dead ingress, a router restart; srpt's preemptions; slo's sheds), then a drain. The router must end idle (nothing queued, running
or waiting) with its counters balanced; the identities hold after every step too."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.actor import RouterService
from router.config import SchedulerConfig
from router.messages import Cancelled, Dispatched, NoReplica, QueueFull, Report, Running, Shed
from router.request import RequestMeta, RequestStatus
from tests.factories import FakeClock, create_meta

REPLICAS = {"A": 1, "B": 2}
LEASE_S = 30.0


def check_balanced(svc: RouterService) -> None:
    c, snap = svc.counters, svc.snapshot()
    runs = c["completed"] + c["cancelled"] + c["failed"] + c["requeued"] + c["preempted"] + snap["num_running"]
    assert c["dispatched"] + c["adopted"] == runs, (c, snap["num_running"])
    # A preempted request waits again without a new enqueue; a shed one leaves the queue unrun.
    assert c["enqueued"] + c["preempted"] == c["dispatched"] + c["withdrawn"] + c["shed"] + snap["num_queued"], (
        c, snap["num_queued"])


class World:
    """The ingress (one batching client and direct calls) and the replicas, as the router sees them."""

    def __init__(self, policy: str = "ssjf"):
        self.policy = policy
        self.clock = FakeClock(1000.0)
        self.svc = self._router()
        self.client = "ing-0"
        self.metas = {}
        self.runs: dict[str, set[tuple[str, int]]] = {r: set() for r in REPLICAS}  # what replicas run
        self.current: dict[str, int] = {}  # request -> the attempt the ingress streams from
        self.batched: set[str] = set()  # requests waiting for a batched answer
        self.direct: dict[str, asyncio.Task] = {}  # requests waiting on a direct call
        self.requeue: set[str] = set()  # of those waiting, the ones whose last run failed
        self.reports: list[Report] = []  # every report sent, for duplicates
        self.late: dict[str, list[Running]] = {}  # a heartbeat built earlier that has not arrived yet
        # Runs the router may rightly have forgotten until the replica's next full heartbeat: it
        # restarted, dropped the replica, or a late heartbeat left them out past their lease.
        self.lost: set[tuple[str, int]] = set()
        self.shed: set[str] = set()  # requests answered Shed

    def _router(self) -> RouterService:
        # srpt: preempt whenever a waiting request is shorter at all (the fake clock starts far past
        # the arrivals, so the starvation guard is set out of reach).
        srpt = dict(preempt_margin=1.0, max_preemptions=2, preempt_min_remaining_tokens=0,
                    srpt_aging_threshold_s=1e9) if self.policy == "srpt" else {}
        # slo: shed what cannot meet its SLO; 0.1 s per predicted token, so waits of a few seconds matter.
        slo = dict(slo_infeasible="shed", slo_seconds_per_token=0.1, slo_first_token_s=0.1,
                   slo_guard_s=1.0) if self.policy == "slo" else {}
        return RouterService(SchedulerConfig(policy=self.policy, batching="continuous", max_batch=2, max_queued=12,
                                             **srpt, **slo), clock=self.clock, lease_s=LEASE_S, replica_timeout_s=15.0)

    def report(self, *reports: Report) -> None:
        self.reports.extend(reports)
        self.svc.report(list(reports))

    def all_runs(self) -> list[tuple[str, str, int]]:
        return sorted((rep, rid, att) for rep, runs in self.runs.items() for rid, att in runs)

    # ---- the ingress -------------------------------------------------------------------------
    def ask(self, rid: str, direct: bool, requeue: bool = False) -> None:
        if direct:
            self.direct[rid] = asyncio.ensure_future(self.svc.enqueue(self.metas[rid], requeue))
        else:
            self.batched.add(rid)
            self.svc.submit(self.client, [self.metas[rid]], [rid] if requeue else [])
        if requeue:
            self.requeue.add(rid)

    def answered(self, rid: str, answer) -> None:
        """The ingress acts on an answer, as ``_Run._dispatch`` and ``BatchedEnqueuer`` do."""
        waiting = rid in self.batched or rid in self.direct
        if isinstance(answer, Dispatched):
            if not waiting:
                if self.current.get(rid) != answer.attempt:  # nobody waits: give the slot back
                    self.report(Report.cancel(rid, attempt=answer.attempt))
                return  # else: an answer it already had
            self.runs[answer.replica_id].add((rid, answer.attempt))
            self.current[rid] = answer.attempt
        elif isinstance(answer, Cancelled) and waiting:
            self._stop_waiting(rid)
            self.ask(rid, direct=False)  # its place was dropped: ask again
            return
        else:
            assert isinstance(answer, Cancelled | QueueFull | NoReplica | Shed), answer
            if isinstance(answer, Shed) and waiting:
                self.shed.add(rid)
        self._stop_waiting(rid)

    def _stop_waiting(self, rid: str) -> None:
        self.batched.discard(rid)
        self.direct.pop(rid, None)
        self.requeue.discard(rid)

    async def deliver(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        for rid, task in list(self.direct.items()):
            if task.done() and self.direct.get(rid) is task:
                self.answered(rid, task.result())
        if self.batched:
            for polled in await self.svc.poll(self.client, timeout_s=0):
                self.answered(polled.request_id, polled.answer)

    def leave(self, rid: str) -> None:
        """The client goes away: the ingress stops waiting or streaming and cancels (no attempt)."""
        task = self.direct.get(rid)
        if task is not None:
            task.cancel()
        self._stop_waiting(rid)
        self.current.pop(rid, None)
        self.report(Report.cancel(rid))

    # ---- the replicas ------------------------------------------------------------------------
    def end_run(self, rep: str, rid: str, att: int, how: str) -> None:
        self.runs[rep].discard((rid, att))
        if how == "complete":
            self.report(Report.complete(rid, 7, attempt=att))
        else:
            self.report(Report.fail(rid, attempt=att) if how == "fail" else Report.cancel(rid, attempt=att))
        if self.current.get(rid) == att:
            del self.current[rid]
            if how == "fail":  # the stream failed before output: the ingress asks again
                self.ask(rid, direct=not self.direct and not self.batched, requeue=True)

    def listing(self, rep: str) -> list[Running]:
        return [Running(self.metas[rid], att) for rid, att in sorted(self.runs[rep])]

    def heartbeat(self, rep: str) -> None:
        self.svc.heartbeat(rep, REPLICAS[rep], self.listing(rep))
        self.lost -= self.runs[rep]

    def check_current(self, skip=frozenset()) -> None:
        requests = self.svc.scheduler.requests
        for rep, rid, att in self.all_runs():
            if self.current.get(rid) == att and (rid, att) not in skip:
                state = requests.get(rid)
                assert state is not None and (state.replica_id, state.attempt) == (rep, att), (rep, rid, att, state)

    async def audit(self) -> None:
        """After a fresh heartbeat from every replica, the router's runs are what the replicas run:
        every run an ingress streams from is running there under its attempt (no stale report ended
        it), and every run the router holds is one a replica runs or an answer not yet polled (no
        run that ended is adopted again). Before those heartbeats, so is every run it may not have
        lost (a heartbeat would adopt one that a stale report ended)."""
        self.check_current(skip=self.lost)
        for rep in REPLICAS:
            self.heartbeat(rep)
        await self.deliver()  # what the heartbeats dispatched reaches the ingress
        self.check_current()
        requests = self.svc.scheduler.requests
        unpolled = {(p.request_id, p.answer.attempt) for box in self.svc._outboxes.values() for p in box
                    if isinstance(p.answer, Dispatched)}
        for rid, state in requests.items():
            if state.status is RequestStatus.RUNNING:  # (a preempted request waits keeping its attempt)
                assert ((rid, state.attempt) in self.runs[state.replica_id]
                        or (rid, state.attempt) in unpolled), (rid, state, self.runs)

    # ---- steps -------------------------------------------------------------------------------
    async def step(self, op: str, a: int, b: int) -> None:
        runs = self.all_runs()
        if op == "new":
            rid = f"q{a}"
            if rid not in self.metas:
                if self.policy == "slo":
                    # Arriving now, with no SLO, one met easily, one met only if served soon, or one that
                    # cannot be met at all (shed on arrival).
                    jct = (None, 60.0, 6.0, 3.0, 0.2)[b % 5]
                    ttft = 2.0 if b % 7 == 0 else None
                    self.metas[rid] = RequestMeta(rid, "m", 10, 1 + b % 20, 4096, self.clock.now,
                                                  slo_ttft_s=ttft, slo_jct_s=jct)
                else:
                    self.metas[rid] = create_meta(rid, predicted=1 + b % 50, arrival=float(a))
                self.ask(rid, direct=not self.direct and not self.batched)
        elif op == "poll":
            pass
        elif op in ("progress", "progress_lost") and runs:
            # A replica reports a run's progress (srpt; other policies ignore it). Preempted: the
            # replica stops the run and reports nothing more for it, and the ingress streaming it asks
            # again. progress_lost: the replica never got the answer and completed the run at once.
            rep, rid, att = runs[a % len(runs)]
            if self.svc.progress(rid, att, 1 + a, float(b * 5)):
                if op == "progress_lost":
                    self.end_run(rep, rid, att, "complete")
                else:
                    self.runs[rep].discard((rid, att))
                    if self.current.get(rid) == att:
                        del self.current[rid]
                        self.ask(rid, direct=not self.direct and not self.batched)
        elif op in ("complete", "fail", "cancel") and runs:
            self.end_run(*runs[a % len(runs)], op)
        elif op == "timeout" and self.current:
            # No first chunk in time: the ingress asks again; the replica's run goes on until it ends.
            rid = sorted(self.current)[a % len(self.current)]
            del self.current[rid]
            self.ask(rid, direct=bool(b % 2) and not self.direct and not self.batched, requeue=True)
        elif op == "leave":
            live = sorted(set(self.current) | self.batched | set(self.direct))
            if live:
                rid = live[a % len(live)]
                for rep, runs_there in self.runs.items():
                    for run in [r for r in runs_there if r[0] == rid]:
                        self.end_run(rep, *run, "cancel")
                self.leave(rid)
        elif op == "resubmit" and self.batched:
            # A poll failed on the way: the client sends what it waits for again.
            for rid in sorted(self.batched):
                self.svc.submit(self.client, [self.metas[rid]], [rid] if rid in self.requeue else [])
        elif op == "duplicate" and self.reports:
            again = self.reports[a % len(self.reports)]
            self.svc.report([again])
            if again.replica_id is not None:  # a replica removed again
                self.lost |= self.runs[again.replica_id]
        elif op == "remove":
            rep = sorted(REPLICAS)[a % len(REPLICAS)]
            self.report(Report.remove_replica(rep))
            self.lost |= self.runs[rep]
        elif op == "heartbeat":
            rep = sorted(REPLICAS)[a % len(REPLICAS)]
            if b % 3 == 0:  # built now, arrives later (after reports sent in between)
                self.late[rep] = self.listing(rep)
            else:
                self.heartbeat(rep)
        elif op == "late_heartbeat" and self.late:
            rep = sorted(self.late)[a % len(self.late)]
            listed = self.late.pop(rep)
            self.svc.heartbeat(rep, REPLICAS[rep], listed)
            self.lost |= self.runs[rep] - {(r.meta.request_id, r.attempt) for r in listed}
        elif op == "audit":
            await self.audit()
        elif op == "advance":
            self.clock.advance(float(b % 20))
            await self.deliver()  # the client polls on
            self.svc.sweep()
            for rep in REPLICAS:
                if rep not in self.svc.scheduler.replicas:  # silent too long: dropped with its runs
                    self.lost |= self.runs[rep]
        elif op == "ingress_dies":
            # Its streams end (the replicas cancel them), its waits are gone; a new ingress takes over.
            for rep, rid, att in runs:
                self.end_run(rep, rid, att, "cancel")
            for rid in list(self.direct):
                self.direct[rid].cancel()
            for rid in set(self.current) | self.batched | set(self.direct):
                self._stop_waiting(rid)
            self.current.clear()
            self.client = f"ing-{a}-{b}"
        elif op == "router_restarts":
            # A new, empty router; calls in flight fail and the ingress makes them again.
            self.clock.advance(1.0 + b % 5)
            for task in self.direct.values():
                task.cancel()
            self.svc = self._router()
            self.late.clear()  # a call to the old router fails; it never reaches the new one
            self.lost |= {(rid, att) for _, rid, att in self.all_runs()}
            waiting = sorted(self.batched | set(self.direct))
            self.batched.clear()
            self.direct.clear()
            for rid in waiting:
                self.ask(rid, direct=False, requeue=rid in self.requeue)
        await self.deliver()
        check_balanced(self.svc)

    async def drain(self) -> None:
        for round_ in range(60):
            if round_ % 10 == 9:  # past every lease: what an ingress left behind is freed
                self.clock.advance(LEASE_S + 1)
                await self.deliver()  # a live ingress polls all along
            for rep in REPLICAS:
                self.heartbeat(rep)
            self.svc.sweep()
            await self.deliver()
            for run in self.all_runs():
                self.end_run(*run, "complete")
            await self.deliver()
            check_balanced(self.svc)
            snap = self.svc.snapshot()
            if not (snap["num_queued"] or snap["num_running"] or snap["num_waiters"] or self.all_runs()
                    or self.batched or self.direct):
                return
        raise AssertionError(f"the router never went idle: {self.svc.snapshot()}")


OPS = ["new", "new", "new", "poll", "progress", "progress", "progress_lost", "complete", "complete", "fail", "cancel", "timeout", "leave", "resubmit",
       "duplicate", "remove", "heartbeat", "heartbeat", "late_heartbeat", "advance", "ingress_dies",
       "router_restarts", "audit", "audit"]
STEPS = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 40), st.integers(0, 100)), max_size=80)


async def run_world(steps, policy: str = "ssjf") -> World:
    world = World(policy)
    for rep in REPLICAS:
        world.heartbeat(rep)
    for op, a, b in steps:
        await world.step(op, a, b)
    await world.drain()
    return world


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_random_operations_end_idle_with_balanced_counters(steps):
    world = asyncio.run(run_world(steps))
    snap = world.svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0)
    check_balanced(world.svc)


def test_seeded_random_walks_end_idle_and_reach_the_paths_they_test():
    """The same, over seeded walks (reproducible, and many short ones); they must exercise adoption,
    stale reports, requeues and lease expiry, or they would prove little."""
    import random

    rng = random.Random(7)
    totals = dict.fromkeys(["adopted", "stale_reports", "requeued", "leases_expired", "withdrawn"], 0)
    for _ in range(300):
        steps = [(rng.choice(OPS), rng.randint(0, 40), rng.randint(0, 100)) for _ in range(rng.randint(1, 30))]
        world = asyncio.run(run_world(steps))
        for k in totals:
            totals[k] += world.svc.counters[k]
    assert all(totals.values()), totals


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_random_operations_with_preemption_end_idle_with_balanced_counters(steps):
    """srpt: progress reports preempt runs (their ingress asks again and joins the request's new place),
    and a completion that raced its preemption finishes the request; the same invariants hold."""
    world = asyncio.run(run_world(steps, "srpt"))
    snap = world.svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0)
    check_balanced(world.svc)


def test_seeded_random_walks_with_preemption_reach_preemptions_and_races():
    import random

    rng = random.Random(11)
    totals = dict.fromkeys(["preempted", "preempt_races", "adopted", "requeued", "withdrawn"], 0)
    for _ in range(300):
        steps = [(rng.choice(OPS), rng.randint(0, 40), rng.randint(0, 100)) for _ in range(rng.randint(1, 30))]
        world = asyncio.run(run_world(steps, "srpt"))
        for k in totals:
            totals[k] += world.svc.counters[k]
    assert all(totals.values()), totals


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_random_operations_with_slo_shedding_end_idle_with_balanced_counters(steps):
    """slo with shedding: requests rejected on arrival, while waiting (at any decision, or the sweep) or
    when asked again leave the queue as ``shed``; every caller hears once, the same invariants hold."""
    world = asyncio.run(run_world(steps, "slo"))
    snap = world.svc.snapshot()
    assert (snap["num_queued"], snap["num_running"], snap["num_waiters"]) == (0, 0, 0)
    check_balanced(world.svc)


def test_seeded_random_walks_with_slo_shedding_reach_sheds_of_waiting_requests():
    import random

    rng = random.Random(13)
    totals = dict.fromkeys(["shed", "withdrawn", "requeued", "adopted"], 0)
    shed_waiting = 0  # shed after waiting: every SLO but 0.2 s can be met on arrival
    for _ in range(300):
        steps = [(rng.choice(OPS), rng.randint(0, 40), rng.randint(0, 100)) for _ in range(rng.randint(1, 30))]
        world = asyncio.run(run_world(steps, "slo"))
        for k in totals:
            totals[k] += world.svc.counters[k]
        shed_waiting += sum(1 for rid in world.shed if world.metas[rid].slo_jct_s != 0.2)
    assert all(totals.values()) and shed_waiting, (totals, shed_waiting)
