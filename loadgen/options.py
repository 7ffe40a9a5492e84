"""Workload options shared by ``loadgen simulate``, ``run`` and ``bench``.

One click decorator (:func:`workload_options`) adds the options; :meth:`WorkloadOptions.from_kwargs`
pops them back out of the command's keyword arguments as one typed, validated object, so every
command reads the same flags the same way. Rate and load are alternatives: ``--rate`` is requests
per second; ``--load`` is a fraction of the cluster's capacity, which only a command that knows the
cluster (simulate, bench) can turn into a rate, via :meth:`WorkloadOptions.resolve_rate`.

This module imports only click (the workload builder is imported when a workload is built), so
``loadgen --help`` and the simulator stay fast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import click

DEFAULT_NUM_REQUESTS = 200

# Option name -> keyword argument name, in the order they are added.
_KEYS = ("dataset", "trace", "rate", "load", "num_requests", "duration", "seed", "max_tokens")


@dataclass
class WorkloadOptions:
    """The workload flags, validated. ``rate`` and ``load`` may both be None until a command resolves one."""

    dataset: str = field(default="arena", metadata={"help": "Built-in dataset name or a dataset file path."})
    trace: str = field(default="azure-conv", metadata={"help": "Arrival process: azure-conv, poisson, gamma:CV or a trace path."})
    rate: float | None = field(default=None, metadata={"help": "Mean arrival rate, requests per second."})
    load: float | None = field(default=None, metadata={"help": "Arrival rate as a fraction of the cluster's capacity."})
    num_requests: int | None = field(default=None, metadata={"help": "Number of requests."})
    duration_s: float | None = field(default=None, metadata={"help": "Length of the arrival window; the count becomes ceil(rate * duration)."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompt draw and the arrival process."})
    max_tokens: int | None = field(default=None, metadata={"help": "Cap on output tokens per request (truth capped, and sent as max_tokens)."})

    def __post_init__(self):
        if self.rate is not None and self.load is not None:
            raise ValueError(f"give --rate or --load, not both (got rate={self.rate}, load={self.load})")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.load is not None and not self.load > 0:
            raise ValueError(f"load must be > 0, got {self.load}")
        if self.num_requests is not None and self.duration_s is not None:
            raise ValueError(
                f"give --num-requests or --duration, not both (got {self.num_requests} and {self.duration_s})"
            )
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> WorkloadOptions:
        """Pop the workload options out of a command's kwargs; a bad combination is a click usage error."""
        values = {key: kwargs.pop(key, None) for key in _KEYS}
        values["duration_s"] = values.pop("duration")
        values = {k: v for k, v in values.items() if v is not None}
        try:
            return cls(**values)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc

    def resolve_rate(self, capacity_rps: float | None = None) -> float:
        """Requests per second: ``rate`` as given, or ``load * capacity_rps``."""
        if self.rate is not None:
            return self.rate
        if self.load is not None:
            if capacity_rps is None:
                raise click.UsageError("--load needs a known cluster capacity here; give --rate (requests/s)")
            return self.load * capacity_rps
        raise click.UsageError("give an arrival rate: --rate REQUESTS_PER_S" + (" or --load FRACTION" if capacity_rps else ""))

    def resolve_num_requests(self, rate: float) -> int:
        if self.num_requests is not None:
            return self.num_requests
        if self.duration_s is not None:
            return max(1, math.ceil(rate * self.duration_s))
        return DEFAULT_NUM_REQUESTS

    def build(self, capacity_rps: float | None = None):
        """Build the workload table (``loadgen.workload.build_workload``) at the resolved rate."""
        from loadgen.workload import WorkloadSpec, build_workload

        rate = self.resolve_rate(capacity_rps)
        spec_args = dict(
            dataset=self.dataset, trace=self.trace, rate=rate,
            num_requests=self.resolve_num_requests(rate), seed=self.seed,
        )
        if self.max_tokens is not None:
            spec_args["max_tokens_cap"] = self.max_tokens
        try:
            spec = WorkloadSpec(**spec_args)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        return build_workload(spec)

    def to_dict(self) -> dict:
        return asdict(self)


def workload_options(f=None, *, with_load: bool = True):
    """Click decorator adding the shared workload options.

    Use as ``@workload_options`` or ``@workload_options(with_load=False)`` (``run`` talks to a
    cluster whose capacity it does not know, so it takes only ``--rate``).
    """

    def decorate(func):
        options = [
            click.option("--dataset", default="arena", show_default=True,
                         help="Prompts: built-in dataset name ('arena') or a dataset file path."),
            click.option("--trace", default="azure-conv", show_default=True,
                         help="Arrivals: 'azure-conv', 'poisson', 'gamma:CV' or a trace file path."),
            click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="Mean arrival rate in requests per second."),
        ]
        if with_load:
            options.append(click.option(
                "--load", type=click.FloatRange(min=0, min_open=True), default=None,
                help="Arrival rate as a fraction of the cluster's capacity (alternative to --rate)."))
        options += [
            click.option("--num-requests", type=click.IntRange(min=1), default=None,
                         help=f"Number of requests [default: {DEFAULT_NUM_REQUESTS}]."),
            click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="Arrival window in seconds instead of a count: ceil(rate * duration) requests."),
            click.option("--seed", type=int, default=0, show_default=True,
                         help="Seed of the prompt draw and the arrival process."),
            click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                         help="Cap on output tokens per request."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate(f) if f is not None else decorate
