"""Discrete-event simulation of LLM replicas driven by the router's own scheduling core.

The :class:`router.Scheduler` decides (same code as the cluster, with a simulated clock); this
module plays the engines. Events happen only where a batch changes, never per token:

- Each replica runs *segments*: stretches of iterations with a fixed set of sequences. A segment
  starts at an iteration boundary; its first iteration prefills the prompts of the sequences that
  join there. With the engine's closed form (:meth:`EngineProfile.span_s`) the replica's next
  event is "the iteration at which its first member ends", computed in O(1).
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
import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from router import BatchingMode, Policy, RequestMeta, Scheduler, SchedulerConfig
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

    def with_arrivals(self, arrival_s: np.ndarray) -> SimWorkload:
        return SimWorkload(self.request_id, arrival_s, self.num_prompt_tokens, self.output_tokens,
                           self.predicted_tokens, self.max_tokens, self.model)

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
    # The run allocates millions of small objects that live until it ends; the cyclic garbage
    # collector would rescan them again and again (quadratic-ish at a million requests). Nothing
    # here forms cycles that must be freed early, so pause it for the run.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(workload, config, engine, num_replicas, record_first_token)
    finally:
        if was_enabled:
            gc.enable()


def _simulate(workload: SimWorkload, config: SchedulerConfig, engine: EngineProfile, num_replicas: int,
              record_first_token: bool) -> SimResult:
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    n = len(workload)
    wall0 = time.perf_counter()

    rids = workload.request_id
    arrival = workload.arrival_s.tolist()
    prompt = workload.num_prompt_tokens.tolist()
    out = workload.output_tokens.tolist()
    pred = workload.predicted_tokens.tolist()
    maxtok = workload.max_tokens.tolist()
    models = workload.model
    index = {rid: i for i, rid in enumerate(rids)}

    now = 0.0

    def clock() -> float:
        return now

    truth = None
    if config.policy is Policy.ORACLE:
        def truth(meta: RequestMeta) -> float:
            return out[index[meta.request_id]]

    sched = Scheduler(config, clock=clock, truth=truth)
    batching = config.batching
    static = batching is BatchingMode.STATIC

    # Replica state, as parallel lists (index = replica) for speed.
    R = num_replicas
    names = [f"r{r}" for r in range(R)]
    rindex = {name: r for r, name in enumerate(names)}
    seg_t0 = [0.0] * R  # start of the current segment (an iteration boundary)
    seg_k0 = [0] * R  # absolute iteration index of the segment's first iteration
    seg_p = [0] * R  # prompt tokens prefilled in the segment's first iteration
    seg_b = [0] * R  # sequences in the batch during the segment
    seg_c = [0] * R  # KV-cache tokens of the members that did not join at the segment start
    members: list[list] = [[] for _ in range(R)]  # heap of (last iteration index, request)
    pending: list[list] = [[] for _ in range(R)]  # requests waiting for the next iteration boundary
    ev_k = [0] * R  # iterations into the segment at which the scheduled event falls
    version = [0] * R
    events: list = []  # (time, replica, version)

    dispatched_at = np.full(n, np.nan)
    started_at = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    last_tok = np.full(n, np.nan)
    finished = np.full(n, np.nan)
    replica_of = np.full(n, -1, dtype=np.int64)

    span = engine.span_s
    it_time = engine.iteration_time_s
    iters_done = engine.iterations_done
    heappush, heappop = heapq.heappush, heapq.heappop
    num_events = 0

    for name in names:
        if sched.add_replica(name):  # nothing is queued yet
            raise AssertionError("a new replica cannot take work before any request arrives")

    def schedule(r: int) -> None:
        """(Re)compute replica r's next event: its first member's end, or an earlier boundary where
        pending requests join."""
        version[r] += 1
        mem = members[r]
        if not mem:
            return
        k = mem[0][0] - seg_k0[r] + 1
        ev_k[r] = k
        heappush(events, (seg_t0[r] + span(k, seg_p[r], seg_b[r], seg_c[r]), r, version[r]))

    def start_segment(r: int, t: float, ctx: int, joiners: list) -> None:
        mem = members[r]
        k0 = seg_k0[r]
        p = 0
        for j in joiners:
            p += prompt[j]
        b = len(mem) + len(joiners)
        if static:
            # The batch returns when its longest member ends; shorter ones are padding until then.
            last = k0 + max(out[j] for j in joiners) - 1
        seg_t0[r] = t
        seg_p[r] = p
        seg_b[r] = b
        seg_c[r] = ctx
        if record_first_token and joiners:
            t1 = t + it_time(p, b, ctx)
        for j in joiners:
            started_at[j] = t
            if record_first_token:
                first_tok[j] = t1
            own_last = k0 + out[j] - 1
            if static:
                last_tok[j] = t + span(out[j], p, b, ctx)
                heappush(mem, (last, j))
            else:
                heappush(mem, (own_last, j))
        schedule(r)

    def apply(assignments, t: float) -> None:
        """Perform the scheduler's decisions made at time t."""
        starts: dict[int, list] = {}
        for a in assignments:
            j = index[a.request_id]
            r = rindex[a.replica_id]
            dispatched_at[j] = t
            replica_of[j] = r
            if not members[r] and not pending[r]:
                starts.setdefault(r, []).append(j)
                continue
            if r in starts:
                starts[r].append(j)
                continue
            if t == seg_t0[r] and not static:
                # The segment starts this very instant: join its first iteration.
                seg_p[r] += prompt[j]
                seg_b[r] += 1
                started_at[j] = t
                if record_first_token:
                    first_tok[j] = t + it_time(seg_p[r], seg_b[r], seg_c[r])
                heappush(members[r], (seg_k0[r] + out[j] - 1, j))
                schedule(r)
                continue
            # Busy (continuous): join at the next iteration boundary.
            pending[r].append(j)
            k = iters_done(t - seg_t0[r], seg_p[r], seg_b[r], seg_c[r])
            if k < ev_k[r]:
                ev_k[r] = k
                version[r] += 1
                heappush(events, (seg_t0[r] + span(k, seg_p[r], seg_b[r], seg_c[r]), r, version[r]))
        for r, joiners in starts.items():
            start_segment(r, t, 0, joiners)

    i = 0
    next_arrival = arrival[0] if n else INF
    while True:
        if events and events[0][0] <= next_arrival:
            t, r, ver = heappop(events)
            if ver != version[r]:
                continue
            num_events += 1
            now = t
            k = ev_k[r]
            b = seg_b[r]
            ctx = seg_c[r] + seg_p[r] + k * b
            end_iter = seg_k0[r] + k - 1
            mem = members[r]
            done = []
            while mem and mem[0][0] <= end_iter:
                _, j = heappop(mem)
                done.append(j)
                ctx -= prompt[j] + out[j]
                finished[j] = t
                if not static:
                    last_tok[j] = t
            seg_k0[r] = end_iter + 1
            if static:
                ctx = 0
            assignments = []
            for j in done:
                assignments += sched.complete(rids[j], out[j])
            joiners = pending[r]
            pending[r] = []
            # Decisions for this replica start now with the pending joiners; others are applied normally.
            mine = []
            others = []
            for a in assignments:
                (mine if a.replica_id == names[r] else others).append(a)
            for a in mine:
                j = index[a.request_id]
                dispatched_at[j] = t
                replica_of[j] = r
                joiners.append(j)
            if joiners or mem:
                start_segment(r, t, ctx, joiners)
            else:
                version[r] += 1
            if others:
                apply(others, t)
        elif i < n:
            now = next_arrival
            j = i
            i += 1
            next_arrival = arrival[i] if i < n else INF
            meta = RequestMeta(rids[j], models[j], prompt[j], pred[j], maxtok[j], now)
            assignments = sched.enqueue(meta)
            if assignments:
                apply(assignments, now)
        else:
            break

    if sched.num_queued or sched.num_running:
        raise AssertionError(f"simulation ended with {sched.num_queued} queued and {sched.num_running} running")
    return SimResult(
        arrival_at=workload.arrival_s.copy(), dispatched_at=dispatched_at, started_at=started_at,
        first_token_at=first_tok, last_token_at=last_tok, finished_at=finished, replica=replica_of,
        num_events=num_events, wall_s=time.perf_counter() - wall0,
    )


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
