"""Typed scheduler configuration, validated at construction with messages that show the values."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

from router.batching import BatchingMode, num_slots
from router.policies import AgingRule, Policy, parse_enum


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
    policy: Policy | str = field(default=Policy.SSJF, metadata={"help": "fcfs, ssjf, ssjf-aging or oracle (benchmarks only)."})
    balancer: Balancer | str = field(default=Balancer.LEAST_WORK, metadata={"help": "round-robin, least-work, power-of-two or late-binding."})
    batching: BatchingMode | str = field(default=BatchingMode.NONE, metadata={"help": "none, static or continuous."})
    max_batch: int = field(default=1, metadata={"help": "Slots per replica for static/continuous batching (ignored for none)."})
    # Default rule from the aging frontier (docs/simulator.md): threshold keeps the most SSJF gain per
    # unit of p99 in the reference scenarios; set its budget to the tail wait you accept (an SLO).
    aging_rule: AgingRule | str = field(default=AgingRule.THRESHOLD, metadata={"help": "ssjf-aging rule: threshold (default), linear or response-ratio."})
    aging_rate: float = field(default=2.0, metadata={"help": "ssjf-aging (linear, response-ratio): predicted tokens forgiven per second of waiting; for linear, about the cluster's predicted-token throughput / 1000."})
    aging_threshold_s: float = field(default=30.0, metadata={"help": "ssjf-aging (threshold): a request waiting this long goes first, oldest first (your tail-wait budget)."})
    work_stealing: bool = field(default=True, metadata={"help": "A replica with a free slot and an empty queue takes the best request of the longest queue, so none idles while another has a queue."})
    max_queued: int | None = field(default=None, metadata={"help": "Cap on waiting requests across the cluster; past it enqueue raises QueueFullError (HTTP 429)."})
    seed: int = field(default=0, metadata={"help": "Seed of the power-of-two balancer's random draws."})

    def __post_init__(self):
        self.policy = Policy.parse(self.policy)
        self.balancer = Balancer.parse(self.balancer)
        self.batching = BatchingMode.parse(self.batching)
        self.aging_rule = AgingRule.parse(self.aging_rule)
        self.max_batch = num_slots(self.batching, self.max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.aging_rate < 0:
            raise ValueError(f"aging_rate must be >= 0, got {self.aging_rate}")
        if self.aging_threshold_s < 0:
            raise ValueError(f"aging_threshold_s must be >= 0, got {self.aging_threshold_s}")
        if self.max_queued is not None and self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0 or None, got {self.max_queued}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, enum.Enum):
                d[k] = v.value
        return d
