"""Typed scheduler configuration, validated at construction with messages that show the values."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass

from router.batching import BatchingMode, num_slots
from router.policies import AgingRule, Policy, SLOInfeasible, parse_enum


class Balancer(enum.Enum):
    """Which replica's queue a new request joins.

    ``round-robin``: in turn. ``least-work``: the replica with the least predicted outstanding
    tokens per slot (queued + running). ``power-of-two``: two replicas drawn at random, the one with
    less work. ``late-binding``: one shared queue; a free slot takes the best request from it.
    """

    ROUND_ROBIN = "round-robin"
    LEAST_WORK = "least-work"
    POWER_OF_TWO = "power-of-two"
    LATE_BINDING = "late-binding"

    @classmethod
    def parse(cls, name) -> Balancer:
        return parse_enum(cls, name, "balancer")


@dataclass
class SchedulerConfig:
    """The scheduling core's knobs: the one declaration (with help) of what the router's config
    section and ``loadgen simulate``'s options set (see :func:`scheduler_knobs`)."""

    policy: Policy | str = field(default=Policy.SSJF, metadata={"help": "fcfs, ssjf, ssjf-aging, srpt (preemptive: shortest predicted remaining first; a running request is stopped at a progress point and resumed later, docs/serving.md, Preemption), slo (SSJF that serves first a request whose SLO deadline is near and defers or sheds one that cannot meet it, docs/slo.md) or oracle (true lengths: a labelled baseline, simulator only)."})
    balancer: Balancer | str = field(default=Balancer.LEAST_WORK, metadata={"help": "Which replica's queue a new request joins: round-robin, least-work, power-of-two or late-binding."})
    batching: BatchingMode | str = field(default=BatchingMode.NONE, metadata={"help": "none: one request at a time; static: a batch runs until its longest member ends; continuous: slots refill every iteration."})
    max_batch: int = field(default=1, metadata={"help": "Slots per replica for static/continuous batching (none: 1)."})
    # Default rule from the aging frontier (docs/simulator.md): threshold keeps the most SSJF gain per
    # unit of p99 in the reference scenarios; set its budget to the tail wait you accept (an SLO).
    aging_rule: AgingRule | str = field(default=AgingRule.THRESHOLD, metadata={"help": "ssjf-aging rule: threshold (default, chosen by the aging frontier study in docs/simulator.md), linear or response-ratio."})
    aging_rate: float = field(default=2.0, metadata={"help": "ssjf-aging (linear, response-ratio): predicted tokens forgiven per second of waiting; for linear, about the cluster's predicted-token throughput / 1000."})
    aging_threshold_s: float = field(default=30.0, metadata={"help": "ssjf-aging (threshold): a request waiting this long (s) goes first, oldest first. Set it to your tail-wait budget, about 1.3 x FCFS's p99 JCT."})
    # srpt (issue 14): limited preemption with re-predicted remaining lengths; defaults from the
    # preemption frontier (docs/preemption.md).
    repredict_every_tokens: int = field(default=32, metadata={"help": "srpt: a running request reports its progress, and its remaining length is re-predicted, every this many generated tokens; preemption is decided there (0: never, so srpt never preempts)."})
    preempt_margin: float = field(default=1.5, metadata={"help": "srpt: a running request is preempted only for a waiting one predicted at least this many times shorter (remaining tokens), >= 1."})
    max_preemptions: int = field(default=1, metadata={"help": "srpt: a request is preempted at most this many times (0: never, srpt is then SRPT order without preemption)."})
    preempt_min_remaining_tokens: int = field(default=32, metadata={"help": "srpt: a running request predicted to need at most this many more tokens (or that close to its max_tokens) is never preempted: its last tokens run through."})
    srpt_aging_threshold_s: float = field(default=30.0, metadata={"help": "srpt starvation guard: a request this long (s) past its arrival is never preempted and, waiting, goes first, oldest first (ssjf-aging's threshold rule)."})
    # slo (issue 14 item 4, docs/slo.md): SSJF order, except a request whose latest feasible start is
    # near goes first; the service-time estimate starts from these two and learns from completions.
    # Guard 0 by default: every guard > 0 lowered attainment in the goodput sweep (docs/slo.md).
    slo_seconds_per_token: float = field(default=0.02, metadata={"help": "slo: starting estimate of a request's decode time per output token (s); the router refines it from completions (finish - dispatch, reported tokens). Predicted service = slo_first_token_s + predicted tokens x this."})
    slo_first_token_s: float = field(default=0.1, metadata={"help": "slo: estimated time from dispatch to a request's first token (s: prefill and hand-off); used for TTFT objectives and added to the predicted service time. Not learned (the router never sees first tokens)."})
    slo_guard_s: float = field(default=0.0, metadata={"help": "slo: a request whose latest feasible start (deadline minus predicted service) is at most this far (s) away is urgent and goes before SSJF order, earliest latest start first (0, the default: no urgency, SSJF plus deferring or shedding the infeasible, which had the highest goodput in docs/slo.md)."})
    slo_infeasible: SLOInfeasible | str = field(default=SLOInfeasible.DEFER, metadata={"help": "slo: a request predicted to miss its SLO even if started now: defer (served after every feasible request, shortest first) or shed (dropped with a Rejection: HTTP 503 slo_unattainable)."})
    work_stealing: bool = field(default=True, metadata={"help": "A replica with a free slot and an empty queue takes the best request of the longest queue, so none idles while another has a queue."})
    max_queued: int | None = field(default=None, metadata={"help": "Cap on waiting requests across the cluster (None: no cap); past it enqueue raises QueueFullError, which the ingress answers with 429 and Retry-After."})
    seed: int = field(default=0, metadata={"help": "Seed of the power-of-two balancer's random draws."})

    def __post_init__(self):
        self.policy = Policy.parse(self.policy)
        self.balancer = Balancer.parse(self.balancer)
        self.batching = BatchingMode.parse(self.batching)
        self.aging_rule = AgingRule.parse(self.aging_rule)
        self.slo_infeasible = SLOInfeasible.parse(self.slo_infeasible)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        self.max_batch = num_slots(self.batching, self.max_batch)
        if self.aging_rate < 0:
            raise ValueError(f"aging_rate must be >= 0, got {self.aging_rate}")
        if (self.policy is Policy.SSJF_AGING and self.aging_rule is AgingRule.RESPONSE_RATIO
                and not self.aging_rate > 0):
            raise ValueError(f"the response-ratio aging rule needs aging_rate > 0, got {self.aging_rate}")
        if self.aging_threshold_s < 0:
            raise ValueError(f"aging_threshold_s must be >= 0, got {self.aging_threshold_s}")
        if self.repredict_every_tokens < 0:
            raise ValueError(f"repredict_every_tokens must be >= 0 (0: never), got {self.repredict_every_tokens}")
        if not self.preempt_margin >= 1:
            raise ValueError(f"preempt_margin must be >= 1 (a ratio of remaining lengths), got {self.preempt_margin}")
        if self.max_preemptions < 0:
            raise ValueError(f"max_preemptions must be >= 0, got {self.max_preemptions}")
        if self.preempt_min_remaining_tokens < 0:
            raise ValueError(f"preempt_min_remaining_tokens must be >= 0, got {self.preempt_min_remaining_tokens}")
        if not self.srpt_aging_threshold_s >= 0:
            raise ValueError(f"srpt_aging_threshold_s must be >= 0, got {self.srpt_aging_threshold_s}")
        if self.policy is Policy.SRPT and self.batching is BatchingMode.STATIC:
            raise ValueError("policy 'srpt' preempts one sequence to free its slot, and a static batch frees no slot "
                             "before its longest member ends: use batching none or continuous")
        for name in ("slo_seconds_per_token", "slo_first_token_s", "slo_guard_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.max_queued is not None and self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0 or None, got {self.max_queued}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, enum.Enum):
                d[k] = v.value
        return d


def scheduler_knobs(name: str, *, module: str, exclude: tuple[str, ...] = (), defaults: dict | None = None) -> type:
    """A dataclass named ``name`` (defined in ``module``) with :class:`SchedulerConfig`'s fields less
    ``exclude``: their order, defaults and help, ``defaults`` replacing some defaults. It holds plain
    values (an enum knob by its name), so a config file can carry it; ``SchedulerConfig(**values)``
    validates them. A settings class that subclasses it declares none of these knobs a second time."""
    known = [f.name for f in fields(SchedulerConfig)]
    defaults = dict(defaults or {})
    unknown = sorted((set(exclude) | set(defaults)) - set(known))
    if unknown:
        raise ValueError(f"unknown scheduler knob(s) {unknown}; valid: {known}")
    specs = []
    for f in fields(SchedulerConfig):
        if f.name in exclude:
            continue
        default = defaults.get(f.name, f.default)
        kind = f.type
        if isinstance(default, enum.Enum):
            default, kind = default.value, "str"
        specs.append((f.name, kind, field(default=default, metadata=f.metadata)))
    return make_dataclass(name, specs, namespace={"__module__": module})
