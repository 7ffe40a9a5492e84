"""Discrete-event simulation of LLM replicas driven by the router's own scheduling core.

The :class:`router.Scheduler` decides (same code as the cluster, with a simulated clock); this
module plays the engines, with the batching rules and iteration costs of ``router.batching``
(which the replay engine steps through too). Events happen only where a batch changes, never per token:

- Each replica runs *segments* (:class:`router.batching.Segment`): stretches of iterations with a
  fixed set of sequences. A segment starts at an iteration boundary; its first iteration prefills
  the prompts of the sequences that join there. With its closed form (``Segment.span_s``) the
  replica's next event is "the iteration at which its first member ends", computed in O(1).
- ``continuous``: a member leaves at the end of its last iteration; a request the scheduler
  assigns while the replica is busy joins at the next iteration boundary (found by inverting the
  closed form), where a new segment starts. ``static``: the batch keeps its size (finished members
  are padding) and every member returns when the longest ends. ``none``: one request at a time.

The truth (true output length) is used only to compute run times here and, for the ``oracle``
policy, through the ``truth`` lookup the scheduler gets; predictions reach the scheduler as
``RequestMeta.predicted_tokens``.

Preemption (``srpt``, docs/preemption.md): a running member also has an event every ``K`` generated
tokens (``repredict_every_tokens``), its *progress point*: the replica reports it with the
re-predicted remaining length (``loadgen.repredict_sim``) through ``Scheduler.progress``, which
preempts only there, only that member: it leaves at that boundary like one that ended, keeping the
tokens it generated, and the request that takes its slot joins there. When it is dispatched again it rejoins as a sequence whose prompt is its prompt
plus those tokens: their KV cache was dropped, so the first iteration re-prefills them (the resume
cost), unless ``resume_keeps_kv`` and it resumes on the replica that kept them. The non-preemptive
policies run the same code as before (one flag test per boundary).

SLOs (``slo`` policy, docs/slo.md): a request carries its objectives (``SimWorkload.slo_ttft_s`` /
``slo_jct_s``, NaN: none) to the scheduler in its ``RequestMeta``. A :class:`router.Rejection` ends
the request unrun: ``SimResult.shed`` marks it, and its dispatch, start, token and finish times stay
NaN (reports count it as not completed, and as a missed SLO).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from heapq import heappop, heappush

import numpy as np

from router import Policy, RequestMeta, Scheduler, SchedulerConfig
from router.batching import Segment, keeps_finished
from router.cost_model import EngineProfile
from router.request import Preemption, Rejection

INF = math.inf


@dataclass
class SimWorkload:
    """What the simulator needs per request, as columns (index = request)."""

    request_id: list[str]
    arrival_s: np.ndarray
    num_prompt_tokens: np.ndarray
    output_tokens: np.ndarray  # the truth: run time and the oracle only
    predicted_tokens: np.ndarray
    max_tokens: np.ndarray
    model: list[str]
    # Per-request objectives in seconds from arrival (NaN: none); None: no request has one.
    slo_ttft_s: np.ndarray | None = None
    slo_jct_s: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.request_id)
        for name in ("slo_ttft_s", "slo_jct_s"):
            value = getattr(self, name)
            if value is not None:
                value = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
                if np.any(value[~np.isnan(value)] <= 0):
                    raise ValueError(f"workload column {name} must be > 0 seconds (NaN: none)")
                setattr(self, name, value)
        self.arrival_s = np.asarray(self.arrival_s, dtype=np.float64)
        self.num_prompt_tokens = np.asarray(self.num_prompt_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(self.output_tokens, dtype=np.int64)
        self.predicted_tokens = np.asarray(self.predicted_tokens, dtype=np.float64)
        self.max_tokens = np.broadcast_to(np.asarray(self.max_tokens, dtype=np.int64), (n,)).copy()
        if isinstance(self.model, str):
            self.model = [self.model] * n
        for name in ("arrival_s", "num_prompt_tokens", "output_tokens", "predicted_tokens", "max_tokens", "model"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"workload column {name} has {len(getattr(self, name))} rows, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("workload arrival_s must be sorted ascending")
        if n and (self.output_tokens.min() < 1 or self.num_prompt_tokens.min() < 0):
            raise ValueError("output_tokens must be >= 1 and num_prompt_tokens >= 0")
        if n and np.any(self.output_tokens > self.max_tokens):
            raise ValueError("output_tokens exceed max_tokens: cap the truth at max_tokens first")
        if len(set(self.request_id)) != n:
            raise ValueError("request_id values must be unique")

    @property
    def has_slo(self) -> bool:
        return self.slo_ttft_s is not None or self.slo_jct_s is not None

    @classmethod
    def from_table(cls, table, predicted) -> SimWorkload:
        """The workload of a ``loadgen.workload`` table (one row per request) with these predictions
        (and its SLO columns ``slo_ttft_s`` / ``slo_jct_s`` where it has them; null: none)."""
        slo = {}
        for name in ("slo_ttft_s", "slo_jct_s"):
            if name in table.column_names:
                slo[name] = np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        return cls(
            request_id=table.column("request_id").to_pylist(),
            arrival_s=table.column("arrival_s").to_numpy(),
            num_prompt_tokens=table.column("num_prompt_tokens").to_numpy(),
            output_tokens=table.column("output_tokens").to_numpy(),
            predicted_tokens=predicted,
            max_tokens=table.column("max_tokens").to_numpy(),
            model=table.column("model").to_pylist(),
            **slo,
        )

    def __len__(self) -> int:
        return len(self.request_id)

    @classmethod
    def synthetic(cls, arrival_s, output_tokens, *, num_prompt_tokens=0, predicted_tokens=None,
                  max_tokens=None, model="m", slo_ttft_s=None, slo_jct_s=None) -> SimWorkload:
        """A workload from arrays (tests, benchmarks); predictions default to the truth; SLOs (a value
        for all or an array, NaN: none) default to none."""
        out = np.asarray(output_tokens, dtype=np.int64)
        n = len(out)
        return cls(
            request_id=[f"q{i}" for i in range(n)],
            arrival_s=np.asarray(arrival_s, dtype=np.float64),
            num_prompt_tokens=np.broadcast_to(np.asarray(num_prompt_tokens, dtype=np.int64), (n,)),
            output_tokens=out,
            predicted_tokens=out.astype(np.float64) if predicted_tokens is None else predicted_tokens,
            max_tokens=int(max(out.max(initial=1), 1)) if max_tokens is None else max_tokens,
            model=model, slo_ttft_s=slo_ttft_s, slo_jct_s=slo_jct_s,
        )


@dataclass
class SimResult:
    """Per-request times (seconds, index = request) and run facts."""

    arrival_at: np.ndarray
    dispatched_at: np.ndarray  # the scheduler assigned a replica
    started_at: np.ndarray  # the request joined the engine's batch (next iteration boundary)
    first_token_at: np.ndarray
    last_token_at: np.ndarray  # its own last token
    finished_at: np.ndarray  # returned to the client (static: when its batch ends)
    replica: np.ndarray
    num_events: int = 0
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)
    shed: np.ndarray | None = None  # bool: the scheduler rejected it (slo policy, shed mode); it never ran

    @property
    def jct_s(self) -> np.ndarray:
        return self.finished_at - self.arrival_at

    @property
    def queue_delay_s(self) -> np.ndarray:
        return self.started_at - self.arrival_at


def simulate(workload: SimWorkload, config: SchedulerConfig, engine: EngineProfile, num_replicas: int,
             *, record_first_token: bool = True, repredictor=None, resume_keeps_kv: bool = False) -> SimResult:
    """Run every request of ``workload`` through a :class:`Scheduler` on ``num_replicas`` engines.

    ``srpt`` only: ``repredictor`` (a ``loadgen.repredict_sim.RepredictorSpec`` or its spec string;
    default ``measured``) gives the remaining length re-predicted at each progress point, seeded by
    ``config.seed``; ``resume_keeps_kv``: a preempted request that resumes on the same replica finds
    its KV cache kept (no re-prefill; the memory it holds meanwhile is not modelled). The result's
    ``extra`` then holds per request ``num_preemptions``, ``resume_tokens`` (generated tokens
    prefilled again) and ``resume_s`` (what those re-prefills cost, each timed alone: prefilling
    prompt + generated tokens minus the decode iteration it replaces)."""
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    # The run allocates millions of small objects that live until it ends; the cyclic garbage
    # collector would rescan them again and again (quadratic-ish at a million requests). Nothing
    # here forms cycles that must be freed early, so pause it for the run.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Simulation(workload, config, engine, num_replicas, record_first_token, repredictor,
                           resume_keeps_kv).run()
    finally:
        if was_enabled:
            gc.enable()


class _Replica:
    """One simulated engine: the segment (:class:`router.batching.Segment`) it runs and its members."""

    __slots__ = ("index", "name", "t0", "k0", "seg", "members", "pending", "ev_k", "version")

    def __init__(self, index: int):
        self.index = index
        self.name = f"r{index}"
        self.t0 = 0.0  # start of the current segment (an iteration boundary)
        self.k0 = 0  # absolute iteration index of the segment's first iteration
        self.seg = Segment()  # an idle replica runs the empty segment
        self.members: list = []  # heap of (absolute index of the member's last iteration, request)
        self.pending: list = []  # requests dispatched while it is busy: they join at the next boundary
        self.ev_k = 0  # iterations into the segment at which its scheduled event falls
        self.version = 0  # bumped to invalidate the scheduled event


class _Simulation:
    """One run: the scheduler, the replicas, the event heap and the per-request times.

    Two kinds of event, earliest first: an arrival (the scheduler enqueues it) and a replica's
    boundary (members end, pending requests join). Requests are indices into the workload's columns.
    """

    def __init__(self, workload: SimWorkload, config: SchedulerConfig, engine: EngineProfile, num_replicas: int,
                 record_first_token: bool, repredictor=None, resume_keeps_kv: bool = False):
        self.workload = workload
        self.engine = engine
        self.record_first_token = record_first_token
        self.keep_finished = keeps_finished(config.batching)
        self.rids = workload.request_id
        self.prompt = workload.num_prompt_tokens.tolist()
        self.out = out = workload.output_tokens.tolist()
        self.index = index = {rid: i for i, rid in enumerate(self.rids)}
        self.now = 0.0

        truth = None
        if config.policy is Policy.ORACLE:
            def truth(meta: RequestMeta) -> float:
                return out[index[meta.request_id]]

        self.sched = Scheduler(config, clock=self.clock, truth=truth)
        self.slo = config.policy is Policy.SLO
        self.shed = np.zeros(len(workload), dtype=bool)
        ttft, jct = workload.slo_ttft_s, workload.slo_jct_s
        self.slo_ttft = None if ttft is None else [None if math.isnan(v) else v for v in ttft.tolist()]
        self.slo_jct = None if jct is None else [None if math.isnan(v) else v for v in jct.tolist()]
        self.replicas = [_Replica(r) for r in range(num_replicas)]
        self.by_name = {rep.name: rep for rep in self.replicas}
        for rep in self.replicas:
            if self.sched.add_replica(rep.name):  # nothing is queued yet
                raise AssertionError("a new replica cannot take work before any request arrives")
        self.events: list = []  # (time, replica index, version)
        self.num_events = 0
        n = len(workload)
        self.dispatched_at = np.full(n, np.nan)
        self.started_at = np.full(n, np.nan)
        self.first_tok = np.full(n, np.nan)
        self.last_tok = np.full(n, np.nan)
        self.finished = np.full(n, np.nan)
        self.replica_of = np.full(n, -1, dtype=np.int64)
        # What a joining request prefills and still generates: its prompt and its whole reply, except
        # for a request that resumes after a preemption (srpt), which lists of its own then record.
        self.pre, self.rem = self.prompt, out
        self.preemptive = config.policy is Policy.SRPT
        if self.preemptive:
            self._init_preemption(config, repredictor, resume_keeps_kv)

    def _init_preemption(self, config: SchedulerConfig, repredictor, resume_keeps_kv: bool) -> None:
        from loadgen.repredict_sim import RepredictorSpec, remaining_predictions

        n = len(self.out)
        self.pre, self.rem = list(self.prompt), list(self.out)
        self.every = every = config.repredict_every_tokens
        self.checkpoints = None
        if every:
            spec = RepredictorSpec("measured") if repredictor is None else repredictor
            self.checkpoints = remaining_predictions(self.out, every, spec, config.seed)
            self.cp_offset = self.checkpoints.offset.tolist()
            self.cp_values = self.checkpoints.values.tolist()
        self.keep_kv = resume_keeps_kv
        self.join_k = [0] * n  # absolute iteration of its first iteration in its current run
        self.done_at_join = [0] * n  # tokens it had generated when its current run began
        self.kv_home = [-1] * n  # the replica holding its kept KV cache (resume_keeps_kv)
        self.num_preemptions = np.zeros(n, dtype=np.int64)
        self.resume_tokens = np.zeros(n, dtype=np.int64)
        self.resume_s = np.zeros(n)
        self._boundary = self._boundary_preemptive

    def clock(self) -> float:
        return self.now

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        w = self.workload
        arrival = w.arrival_s.tolist()
        n = len(arrival)
        events, replicas = self.events, self.replicas
        i = 0
        next_arrival = arrival[0] if n else INF
        while True:
            if events and events[0][0] <= next_arrival:
                t, r, ver = heappop(events)
                rep = replicas[r]
                if ver == rep.version:
                    self.num_events += 1
                    self.now = t
                    self._boundary(rep, t)
            elif i < n:
                self.now = next_arrival
                self._arrive(i, next_arrival)
                i += 1
                next_arrival = arrival[i] if i < n else INF
            else:
                break
        sched = self.sched
        if sched.num_queued or sched.num_running:
            raise AssertionError(f"simulation ended with {sched.num_queued} queued and {sched.num_running} running")
        extra = {}
        if self.preemptive:
            extra = {"num_preemptions": self.num_preemptions, "resume_tokens": self.resume_tokens,
                     "resume_s": self.resume_s, "checkpoints": self.checkpoints}
        if self.slo:
            est = sched.estimate
            extra = {"seconds_per_token": est.learned_seconds_per_token,
                     "seconds_per_token_start": self.sched.config.slo_seconds_per_token,
                     "num_rejected": sched.num_rejected}
        return SimResult(
            arrival_at=w.arrival_s.copy(), dispatched_at=self.dispatched_at, started_at=self.started_at,
            first_token_at=self.first_tok, last_token_at=self.last_tok, finished_at=self.finished,
            replica=self.replica_of, num_events=self.num_events, wall_s=time.perf_counter() - wall0, extra=extra,
            shed=self.shed,
        )

    def _arrive(self, j: int, t: float) -> None:
        w = self.workload
        meta = RequestMeta(self.rids[j], w.model[j], self.prompt[j], float(w.predicted_tokens[j]),
                           int(w.max_tokens[j]), t,
                           None if self.slo_ttft is None else self.slo_ttft[j],
                           None if self.slo_jct is None else self.slo_jct[j])
        assignments = self.sched.enqueue(meta)
        if self.slo and assignments:
            assignments = self._reject(assignments)
        if assignments:
            self._dispatch(assignments, t)

    def _reject(self, decisions: list) -> list:
        """Mark the requests the scheduler rejected as shed (they end here, unrun); the other decisions."""
        rest = []
        for d in decisions:
            if type(d) is Rejection:
                self.shed[self.index[d.request_id]] = True
            else:
                rest.append(d)
        return rest

    def _boundary(self, rep: _Replica, t: float) -> None:
        """``rep``'s scheduled event at ``t``: the members whose last iteration just ended leave (static:
        the whole batch, when its longest member ends), the scheduler fills the freed slots, and a new
        segment starts with the requests that join here."""
        prompt, out, index = self.prompt, self.out, self.index
        keep = self.keep_finished
        k = rep.ev_k
        end_iter = rep.k0 + k - 1
        mem = rep.members
        done = []
        left_kv = 0
        while mem and mem[0][0] <= end_iter:
            _, j = heappop(mem)
            done.append(j)
            # Its KV cache: the prompt plus one token per iteration it ran (static: the whole batch).
            left_kv += prompt[j] + (k if keep else out[j])
            self.finished[j] = t
            if not keep:
                self.last_tok[j] = t
        rep.k0 = end_iter + 1
        complete = self.sched.complete
        assignments = []
        for j in done:
            assignments += complete(self.rids[j], out[j])
        if self.slo and assignments:
            assignments = self._reject(assignments)
        # Decisions for this replica join now with the pending requests; others are dispatched as usual.
        joiners = rep.pending
        rep.pending = []
        others = []
        for a in assignments:
            if a.replica_id == rep.name:
                j = index[a.request_id]
                self.dispatched_at[j] = t
                self.replica_of[j] = rep.index
                joiners.append(j)
            else:
                others.append(a)
        rep.seg = rep.seg.next(k, left=len(done), left_kv=left_kv, joined=len(joiners),
                               joined_prompt=sum(prompt[j] for j in joiners))
        if rep.seg.batch_size:
            self._start_segment(rep, t, joiners)
        else:
            rep.version += 1  # idle
        if others:
            self._dispatch(others, t)

    def _dispatch(self, assignments, t: float) -> None:
        """Carry out the scheduler's decisions made at ``t``: an idle replica starts a segment with its
        requests; a busy one (continuous) takes them at its next iteration boundary."""
        index, pre, rem = self.index, self.pre, self.rem
        by_name, engine = self.by_name, self.engine
        preemptive = self.preemptive
        starts: dict[_Replica, list] = {}
        for a in assignments:
            j = index[a.request_id]
            rep = by_name[a.replica_id]
            resumed = False
            if preemptive:
                if type(a) is Preemption:
                    raise AssertionError(f"{a}: the scheduler preempts only at the request's own progress point")
                resumed = rem[j] != self.out[j]  # it ran before: it keeps its first dispatch and start
            if not resumed:
                self.dispatched_at[j] = t
            self.replica_of[j] = rep.index
            if rep in starts or (not rep.members and not rep.pending):
                starts.setdefault(rep, []).append(j)
            elif t == rep.t0 and not self.keep_finished:
                # The segment starts this very instant: join its first iteration.
                prefill, kept = self._join_cost(j, rep) if preemptive else (pre[j], 0)
                rep.seg = rep.seg.next(0, joined=1, joined_prompt=prefill)
                if kept:
                    rep.seg = rep.seg._replace(context_tokens=rep.seg.context_tokens + kept)
                if not resumed:
                    self.started_at[j] = t
                    if self.record_first_token:
                        self.first_tok[j] = t + rep.seg.iteration_s(engine, 0)
                heappush(rep.members, (self._join_event(j, rep.k0) if preemptive else rep.k0 + rem[j] - 1, j))
                self._schedule(rep)
            else:
                self._join_pending(rep, j, t)
        for rep, joiners in starts.items():
            if preemptive:
                prefill, kept = self._joiners_cost(joiners, rep)
                rep.seg = rep.seg.next(0, joined=len(joiners), joined_prompt=prefill)
                if kept:
                    rep.seg = rep.seg._replace(context_tokens=rep.seg.context_tokens + kept)
            else:
                rep.seg = rep.seg.next(0, joined=len(joiners), joined_prompt=sum(pre[j] for j in joiners))
            self._start_segment(rep, t, joiners)

    def _join_pending(self, rep: _Replica, j: int, t: float) -> None:
        """``j`` joins busy ``rep`` at its next iteration boundary (an event there, if none is sooner)."""
        rep.pending.append(j)
        self._event_at_next_boundary(rep, t)

    def _event_at_next_boundary(self, rep: _Replica, t: float) -> None:
        engine = self.engine
        k = rep.seg.iterations_done(engine, t - rep.t0)
        if k < rep.ev_k:
            rep.ev_k = k
            rep.version += 1
            heappush(self.events, (rep.t0 + rep.seg.span_s(engine, k), rep.index, rep.version))

    def _start_segment(self, rep: _Replica, t: float, joiners: list) -> None:
        """``rep.seg`` starts at ``t``; ``joiners`` prefill in its first iteration."""
        out, engine, seg = self.out, self.engine, rep.seg
        mem, k0 = rep.members, rep.k0
        keep = self.keep_finished
        rep.t0 = t
        if keep:
            # The batch returns when its longest member ends; shorter ones are padding until then.
            last = k0 + max(out[j] for j in joiners) - 1
        record = self.record_first_token and joiners
        if record:
            t1 = t + seg.iteration_s(engine, 0)
        started_at, first_tok, last_tok = self.started_at, self.first_tok, self.last_tok
        if self.preemptive:
            rem = self.rem
            for j in joiners:
                if rem[j] == out[j]:  # its first run (a resumed one keeps its first start)
                    started_at[j] = t
                    if record:
                        first_tok[j] = t1
                heappush(mem, (self._join_event(j, k0), j))
            self._schedule(rep)
            return
        for j in joiners:
            started_at[j] = t
            if record:
                first_tok[j] = t1
            if keep:
                last_tok[j] = t + seg.span_s(engine, out[j])
                heappush(mem, (last, j))
            else:
                heappush(mem, (k0 + out[j] - 1, j))
        self._schedule(rep)

    # ---- srpt: progress points, preemption, resume ------------------------------------------
    def _next_event(self, j: int, tokens: int) -> int:
        """Absolute iteration index of ``j``'s next event after it has ``tokens`` tokens: its next
        progress point, or its last iteration."""
        stop = self.out[j]
        every = self.every
        if every:
            point = (tokens // every + 1) * every
            if point < stop:
                stop = point
        return self.join_k[j] + stop - self.done_at_join[j] - 1

    def _join_event(self, j: int, k0: int) -> int:
        """``j`` starts a run at absolute iteration ``k0``: its first event there."""
        self.join_k[j] = k0
        done = self.done_at_join[j] = self.out[j] - self.rem[j]
        return self._next_event(j, done)

    def _join_cost(self, j: int, rep: _Replica) -> tuple[int, int]:
        """(tokens ``j`` prefills as it joins ``rep``, KV-cache tokens it brings in kept)."""
        done = self.out[j] - self.rem[j]
        if not done:
            return self.pre[j], 0
        if self.keep_kv and self.kv_home[j] == rep.index:
            self.kv_home[j] = -1
            return 0, self.pre[j]
        # A resume: the KV cache of prompt + generated tokens is built again by a prefill.
        p = self.pre[j]
        self.resume_tokens[j] += done
        self.resume_s[j] += self.engine.iteration_time_s(p, 1, 0) - self.engine.iteration_time_s(0, 1, p)
        self.kv_home[j] = -1
        return p, 0

    def _joiners_cost(self, joiners: list, rep: _Replica) -> tuple[int, int]:
        prefill = kept = 0
        for j in joiners:
            p, k = self._join_cost(j, rep)
            prefill += p
            kept += k
        return prefill, kept

    def _boundary_preemptive(self, rep: _Replica, t: float) -> None:
        """:meth:`_boundary` under ``srpt``: members end or reach a progress point, reported to the
        scheduler with their re-predicted remaining length; one it preempts leaves, keeping its tokens."""
        prompt, out, index, rids = self.prompt, self.out, self.index, self.rids
        join_k, done_at_join = self.join_k, self.done_at_join
        k = rep.ev_k
        end_iter = rep.k0 + k - 1
        mem = rep.members
        done, points = [], []
        while mem and mem[0][0] <= end_iter:
            _, j = heappop(mem)
            tokens = done_at_join[j] + end_iter - join_k[j] + 1
            if tokens >= out[j]:
                done.append(j)
            else:
                points.append(j)
        left: dict[int, int] = {}  # preempted here -> tokens it has
        left_kv = 0
        for j in done:
            left_kv += prompt[j] + out[j]
            self.finished[j] = t
            self.last_tok[j] = t
        rep.k0 = end_iter + 1
        decisions = []
        complete, progress = self.sched.complete, self.sched.progress
        for j in done:
            decisions += complete(rids[j], out[j])
        if self.checkpoints is not None:
            offset, values, every = self.cp_offset, self.cp_values, self.every
            for j in points:
                tokens = done_at_join[j] + end_iter - join_k[j] + 1
                decisions += progress(rids[j], tokens, values[offset[j] + tokens // every - 1])
        joiners = rep.pending
        rep.pending = []
        others = []
        name = rep.name
        for d in decisions:
            j = index[d.request_id]
            if type(d) is Preemption:
                if d.replica_id != name or j not in points:
                    raise AssertionError(f"{d}: the scheduler preempts only at the request's own progress point")
                # At once: a later decision of this boundary may dispatch it again (resumed).
                tokens = left[j] = done_at_join[j] + end_iter - join_k[j] + 1
                left_kv += prompt[j] + tokens
                self.pre[j] = prompt[j] + tokens
                self.rem[j] = out[j] - tokens
                self.num_preemptions[j] += 1
                self.kv_home[j] = rep.index if self.keep_kv else -1
            elif d.replica_id == name:
                if self.rem[j] == out[j]:
                    self.dispatched_at[j] = t
                self.replica_of[j] = rep.index
                joiners.append(j)
            else:
                others.append(d)
        # Members that stay: the ones at a progress point get their next event.
        for j in points:
            if j not in left:
                heappush(mem, (self._next_event(j, done_at_join[j] + end_iter - join_k[j] + 1), j))
        prefill, kept = self._joiners_cost(joiners, rep)
        rep.seg = rep.seg.next(k, left=len(done) + len(left), left_kv=left_kv, joined=len(joiners),
                               joined_prompt=prefill)
        if kept:
            rep.seg = rep.seg._replace(context_tokens=rep.seg.context_tokens + kept)
        if rep.seg.batch_size:
            self._start_segment(rep, t, joiners)
        else:
            rep.version += 1  # idle
        if others:
            self._dispatch(others, t)

    def _schedule(self, rep: _Replica) -> None:
        """(Re)compute ``rep``'s next event: the end of its first member's last iteration (an earlier
        boundary where pending requests join is set by :meth:`_dispatch`)."""
        rep.version += 1
        mem = rep.members
        if not mem:
            return
        k = mem[0][0] - rep.k0 + 1
        rep.ev_k = k
        heappush(self.events, (rep.t0 + rep.seg.span_s(self.engine, k), rep.index, rep.version))


def measure_saturation(workload: SimWorkload, config: SchedulerConfig, engine: EngineProfile,
                       num_replicas: int, *, max_requests: int | None = None) -> dict:
    """Saturation throughput (requests/s) of this workload's lengths on this cluster.

    Method: every request arrives at t=0 (an endless backlog) and runs under FCFS with the given
    balancer and batching. While the backlog lasts every slot is busy, so the rate of completions
    until the last request is dispatched is the cluster's capacity for this mix of lengths.
    (FCFS, because capacity is a property of the cluster; SJF in static batching can raise it.)
    """
    n = len(workload) if max_requests is None else min(len(workload), max_requests)
    if n < 1:
        raise ValueError("saturation needs at least one request")
    sub = SimWorkload(
        workload.request_id[:n], np.zeros(n), workload.num_prompt_tokens[:n], workload.output_tokens[:n],
        workload.predicted_tokens[:n], workload.max_tokens[:n], workload.model[:n],
    )
    fcfs = SchedulerConfig(**{**config.to_dict(), "policy": "fcfs", "max_queued": None})
    res = simulate(sub, fcfs, engine, num_replicas, record_first_token=False)
    t_last = float(np.max(res.dispatched_at))
    if t_last <= 0:
        # Everything fit into the free slots at once: the backlog never formed; use the makespan.
        t_end = float(np.max(res.finished_at))
        return {"saturation_rps": n / t_end, "method": "makespan (no backlog formed)", "num_requests": n,
                "window_s": t_end}
    done = int(np.sum(res.finished_at <= t_last))
    return {"saturation_rps": done / t_last, "method": "all arrive at t=0 under fcfs; completions per second "
            "until the last dispatch", "num_requests": n, "window_s": t_last}
