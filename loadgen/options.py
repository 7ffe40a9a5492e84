"""Workload options shared by ``loadgen simulate``, ``run`` and ``bench``.

One click decorator (:func:`workload_options`) adds the options; :meth:`WorkloadOptions.from_kwargs`
pops them back out of the command's keyword arguments as one typed, validated object, so every
command reads the same flags the same way. Rate and load are alternatives: ``--rate`` is requests
per second; ``--load`` is a fraction of the cluster's capacity, which only a command that knows the
cluster (simulate, bench) can turn into a rate, via :meth:`WorkloadOptions.resolve_rate`.

:func:`scheduler_option` turns a field of ``router.config.SchedulerConfig`` into a click option,
so a command's scheduler flags have the core's names, choices, defaults and help.

This module imports only click and the router's config (the workload builder is imported when a
workload is built), so ``loadgen --help`` and the simulator stay fast.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields

import click

from router.config import SchedulerConfig
from router.policies import Policy

DEFAULT_NUM_REQUESTS = 200

# Option name -> keyword argument name, in the order they are added.
_KEYS = ("dataset", "trace", "rate", "load", "num_requests", "duration", "seed", "max_tokens", "temperature",
         "slo_ttft_s", "slo_jct_s")
# The per-request SLO columns a workload table gets from ``--slo-ttft-s`` / ``--slo-jct-s``.
SLO_COLUMNS = ("slo_ttft_s", "slo_jct_s")
MAX_TEMPERATURE = 2.0  # the OpenAI API's range, as the ingress validates it


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
    max_tokens: int | None = field(default=None, metadata={"help": "max_tokens sent with each request; dataset rows with longer true replies are dropped (None: the workload's default)."})
    temperature: float | None = field(default=None, metadata={"help": "temperature sent with each request, 0..2 (0: greedy); None: not sent (the server's default, 1 in the OpenAI API)."})
    slo_ttft_s: float | None = field(default=None, metadata={"help": "Time-to-first-token objective of every request (s from its arrival); None: none."})
    slo_jct_s: float | None = field(default=None, metadata={"help": "Completion-time objective of every request (s from its arrival); None: none."})

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
        if self.temperature is not None and not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0: greedy), got {self.temperature}")
        for name in SLO_COLUMNS:
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be > 0 seconds, got {value}")

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

    def needs_rate(self) -> bool:
        """Synthetic arrivals (poisson, gamma:CV) need a rate; a trace replays its own times without one."""
        return self.trace == "poisson" or self.trace.startswith("gamma")

    def resolve_rate(self, capacity_rps: float | None = None) -> float | None:
        """Requests per second: ``rate`` as given, or ``load * capacity_rps``; None replays a trace's own times."""
        if self.rate is not None:
            return self.rate
        if self.load is not None:
            if capacity_rps is None:
                raise click.UsageError("--load needs a known cluster capacity here; give --rate (requests/s)")
            return self.load * capacity_rps
        if self.needs_rate():
            hint = " or --load FRACTION" if capacity_rps else ""
            raise click.UsageError(f"--trace {self.trace} needs an arrival rate: give --rate REQUESTS_PER_S{hint}")
        return None

    def resolve_num_requests(self, rate: float | None) -> int:
        if self.num_requests is not None:
            return self.num_requests
        if self.duration_s is not None:
            if rate is None:
                raise click.UsageError("--duration needs a rate to turn into a request count: give --rate or --num-requests")
            return max(1, math.ceil(rate * self.duration_s))
        return DEFAULT_NUM_REQUESTS

    def spec(self, capacity_rps: float | None = None):
        """The ``loadgen.workload.WorkloadSpec`` of these options at the resolved rate."""
        from loadgen.workload import WorkloadSpec

        rate = self.resolve_rate(capacity_rps)
        spec_args = dict(dataset=self.dataset, trace=self.trace, rate=rate,
                         num_requests=self.resolve_num_requests(rate), seed=self.seed)
        if self.max_tokens is not None:
            spec_args["max_tokens"] = self.max_tokens
        try:
            return WorkloadSpec(**spec_args)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc

    @property
    def has_slo(self) -> bool:
        return self.slo_ttft_s is not None or self.slo_jct_s is not None

    def build(self, capacity_rps: float | None = None):
        """Build the workload table (``loadgen.workload.build_workload``) at the resolved rate. With an
        SLO option, the table also has the float columns ``slo_ttft_s`` and ``slo_jct_s`` (every
        request's objectives; null where that one is not given); without, it has neither."""
        from loadgen.workload import build_workload

        return with_slo_columns(build_workload(self.spec(capacity_rps)), self.slo_ttft_s, self.slo_jct_s)

    def to_dict(self) -> dict:
        return asdict(self)


def with_slo_columns(table, slo_ttft_s: float | None, slo_jct_s: float | None):
    """``table`` with the columns ``slo_ttft_s`` and ``slo_jct_s`` (the same objectives for every
    request; null where not given), or unchanged when neither is given."""
    if slo_ttft_s is None and slo_jct_s is None:
        return table
    import pyarrow as pa

    n = table.num_rows
    for name, value in zip(SLO_COLUMNS, (slo_ttft_s, slo_jct_s), strict=True):
        column = pa.array([value] * n, pa.float64())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


def workload_options(f=None, *, with_load: bool = True, with_temperature: bool = False, with_slo: bool = False):
    """Click decorator adding the shared workload options.

    Use as ``@workload_options`` or ``@workload_options(with_load=False)`` (``run`` talks to a
    cluster whose capacity it does not know, so it takes only ``--rate``). ``with_temperature``
    adds ``--temperature`` (commands that send requests: ``run``, ``bench``). ``with_slo`` adds
    ``--slo-ttft-s`` and ``--slo-jct-s`` (every request's objectives).
    """

    def decorate(func):
        options = [
            click.option("--dataset", default="arena", show_default=True,
                         help="Prompts: built-in dataset name ('arena') or a dataset file path."),
            click.option("--trace", default="azure-conv", show_default=True,
                         help="Arrivals: 'azure-conv', 'poisson', 'gamma:CV' or a trace file path."),
            click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
                         help="Mean arrival rate in requests per second (needed for poisson and gamma; "
                              "a trace without it replays its own times)."),
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
                         help="max_tokens of every request; dataset rows with longer replies are left out "
                              "[default: the workload's, 4096]."),
        ]
        if with_temperature:
            options.append(click.option(
                "--temperature", type=click.FloatRange(0, MAX_TEMPERATURE), default=None,
                help="Sampling temperature sent with every request, 0..2 (0: greedy, so a real engine's "
                     "reply lengths repeat between runs) [default: not sent: the server's default, 1]."))
        if with_slo:
            options += [
                click.option("--slo-ttft-s", type=click.FloatRange(min=0, min_open=True), default=None,
                             help="Time-to-first-token objective of every request, seconds from its arrival "
                                  "(the slo policy schedules by it; reports give the share met) [default: none]."),
                click.option("--slo-jct-s", type=click.FloatRange(min=0, min_open=True), default=None,
                             help="Completion-time objective of every request, seconds from its arrival "
                                  "[default: none]."),
            ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate(f) if f is not None else decorate


def scheduler_option(name: str, **overrides):
    """A click option for the :class:`SchedulerConfig` field ``name``: ``--name-with-dashes`` (a
    ``--x/--no-x`` switch for a bool), an enum's values as choices, the field's default and help;
    ``overrides`` replace any of these click settings (a command's own default, say). Values are
    validated by building the ``SchedulerConfig``."""
    spec = {f.name: f for f in fields(SchedulerConfig)}.get(name)
    if spec is None:
        raise ValueError(f"SchedulerConfig has no field {name!r}")
    flag = "--" + name.replace("_", "-")
    settings = dict(default=spec.default, show_default=True, help=spec.metadata["help"])
    if isinstance(spec.default, enum.Enum):
        settings.update(type=click.Choice([m.value for m in type(spec.default)]), default=spec.default.value)
    elif isinstance(spec.default, bool):
        flag = f"{flag}/--no-{flag[2:]}"
    else:
        settings["type"] = type(spec.default)
    settings.update(overrides)
    return click.option(flag, name, **settings)


def parse_policies(value: str, *, live: bool = False) -> list[Policy]:
    """``--policies``: a comma list of policy names, each once, in the order given. ``live``: for a
    real cluster, where ``oracle`` (it needs the true lengths) does not exist."""
    names = [p.strip() for p in value.split(",") if p.strip()]
    if not names:
        raise click.BadParameter("give at least one policy", param_hint="--policies")
    policies = []
    for name in names:
        try:
            policy = Policy.parse(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--policies") from None
        if live and policy is Policy.ORACLE:
            raise click.BadParameter("'oracle' needs the true lengths: it exists only in `loadgen simulate`",
                                     param_hint="--policies")
        if policy in policies:
            raise click.BadParameter(f"policy {name!r} is listed twice", param_hint="--policies")
        policies.append(policy)
    return policies

