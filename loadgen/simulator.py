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

    def __post_init__(self):
        n = len(self.request_id)
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

    @classmethod
    def from_table(cls, table, predicted) -> SimWorkload:
        """The workload of a ``loadgen.workload`` table (one row per request) with these predictions."""
        return cls(
            request_id=table.column("request_id").to_pylist(),
            arrival_s=table.column("arrival_s").to_numpy(),
            num_prompt_tokens=table.column("num_prompt_tokens").to_numpy(),
            output_tokens=table.column("output_tokens").to_numpy(),
            predicted_tokens=predicted,
            max_tokens=table.column("max_tokens").to_numpy(),
            model=table.column("model").to_pylist(),
        )

    def __len__(self) -> int:
        return len(self.request_id)

    @classmethod
    def synthetic(cls, arrival_s, output_tokens, *, num_prompt_tokens=0, predicted_tokens=None,
                  max_tokens=None, model="m") -> SimWorkload:
        """A workload from arrays (tests, benchmarks); predictions default to the truth."""
        out = np.asarray(output_tokens, dtype=np.int64)
        n = len(out)
        return cls(
            request_id=[f"q{i}" for i in range(n)],
            arrival_s=np.asarray(arrival_s, dtype=np.float64),
            num_prompt_tokens=np.broadcast_to(np.asarray(num_prompt_tokens, dtype=np.int64), (n,)),
            output_tokens=out,
            predicted_tokens=out.astype(np.float64) if predicted_tokens is None else predicted_tokens,
            max_tokens=int(max(out.max(initial=1), 1)) if max_tokens is None else max_tokens,
            model=model,
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

    @property
    def jct_s(self) -> np.ndarray:
        return self.finished_at - self.arrival_at

    @property
    def queue_delay_s(self) -> np.ndarray:
        return self.started_at - self.arrival_at


def simulate(workload: SimWorkload, config: SchedulerConfig, engine: EngineProfile, num_replicas: int,
             *, record_first_token: bool = True) -> SimResult:
    """Run every request of ``workload`` through a :class:`Scheduler` on ``num_replicas`` engines."""
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    # The run allocates millions of small objects that live until it ends; the cyclic garbage
    # collector would rescan them again and again (quadratic-ish at a million requests). Nothing
    # here forms cycles that must be freed early, so pause it for the run.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Simulation(workload, config, engine, num_replicas, record_first_token).run()
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
                 record_first_token: bool):
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
        return SimResult(
            arrival_at=w.arrival_s.copy(), dispatched_at=self.dispatched_at, started_at=self.started_at,
            first_token_at=self.first_tok, last_token_at=self.last_tok, finished_at=self.finished,
            replica=self.replica_of, num_events=self.num_events, wall_s=time.perf_counter() - wall0,
        )

    def _arrive(self, j: int, t: float) -> None:
        w = self.workload
        meta = RequestMeta(self.rids[j], w.model[j], self.prompt[j], float(w.predicted_tokens[j]),
                           int(w.max_tokens[j]), t)
        assignments = self.sched.enqueue(meta)
        if assignments:
            self._dispatch(assignments, t)

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
        index, prompt, out = self.index, self.prompt, self.out
        by_name, engine = self.by_name, self.engine
        starts: dict[_Replica, list] = {}
        for a in assignments:
            j = index[a.request_id]
            rep = by_name[a.replica_id]
            self.dispatched_at[j] = t
            self.replica_of[j] = rep.index
            if rep in starts or (not rep.members and not rep.pending):
                starts.setdefault(rep, []).append(j)
            elif t == rep.t0 and not self.keep_finished:
                # The segment starts this very instant: join its first iteration.
                rep.seg = rep.seg.next(0, joined=1, joined_prompt=prompt[j])
                self.started_at[j] = t
                if self.record_first_token:
                    self.first_tok[j] = t + rep.seg.iteration_s(engine, 0)
                heappush(rep.members, (rep.k0 + out[j] - 1, j))
                self._schedule(rep)
            else:
                rep.pending.append(j)
                k = rep.seg.iterations_done(engine, t - rep.t0)
                if k < rep.ev_k:
                    rep.ev_k = k
                    rep.version += 1
                    heappush(self.events, (rep.t0 + rep.seg.span_s(engine, k), rep.index, rep.version))
        for rep, joiners in starts.items():
            rep.seg = rep.seg.next(0, joined=len(joiners), joined_prompt=sum(prompt[j] for j in joiners))
            self._start_segment(rep, t, joiners)

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
