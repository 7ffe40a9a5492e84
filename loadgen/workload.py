"""A workload: dataset prompts (with their true reply lengths) at the times of an arrival process.

``build_workload(spec)`` draws ``num_requests`` rows of the dataset with the seed (without
replacement when the dataset is large enough, else with replacement) and gives them the arrival
times of ``spec.trace``. The prompt draw and the arrival process use independent streams of the
same seed, so changing the arrival process keeps the prompts and vice versa.

``max_tokens`` is the limit sent with every request (the column ``max_tokens``). Rows whose true
reply is longer are dropped from the dataset before the draw, never truncated: the truth stays
the real reply length, and no request is cut short by its limit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadgen import arrivals
from proxy_model.datasets import BUILTIN_DATASETS, DEFAULT_TOKENIZER, SCHEMA, load_dataset

DEFAULT_MAX_TOKENS = 4096

WORKLOAD_SCHEMA = pa.schema(
    [pa.field("request_id", pa.string()), pa.field("arrival_s", pa.float64())]
    + [SCHEMA.field(name) for name in ("prompt_id", "prompt", "messages", "model",
                                       "num_prompt_tokens", "output_tokens", "source")]
    + [pa.field("max_tokens", pa.int32())]
)


@dataclass(frozen=True)
class WorkloadSpec:
    """What to send and when. All randomness comes from ``seed``."""

    dataset: str = field(default="arena", metadata={"help": "Built-in dataset ('arena') or a dataset file path."})
    trace: str = field(default="azure-conv", metadata={
        "help": "Arrivals: 'poisson', 'gamma:CV', a built-in trace ('azure-conv', 'azure-code') or a trace path."})
    rate: float | None = field(default=None, metadata={
        "help": "Mean arrival rate, requests/s. Required for poisson/gamma; for a trace it rescales the "
                "gaps to this mean rate (None: the trace's own times, times time_scale)."})
    num_requests: int = field(default=200, metadata={"help": "Number of requests."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompt draw, the arrival process and the trace window."})
    max_tokens: int = field(default=DEFAULT_MAX_TOKENS, metadata={
        "help": "max_tokens sent with each request; dataset rows with longer true replies are dropped."})
    time_scale: float | None = field(default=None, metadata={
        "help": "Trace replay only: multiply the trace's gaps (instead of giving a rate)."})
    models: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Keep only dataset rows answered by these models (None: all)."})
    tokenizer: str = field(default=DEFAULT_TOKENIZER, metadata={"help": "Tokenizer of the token counts."})
    # Alias of max_tokens kept for callers written against the first contract (not stored).
    max_tokens_cap: int | None = field(default=None, repr=False, compare=False, metadata={
        "help": "Deprecated alias of max_tokens."})

    def __post_init__(self):
        if self.max_tokens_cap is not None:
            if self.max_tokens not in (DEFAULT_MAX_TOKENS, self.max_tokens_cap):
                raise ValueError(f"give max_tokens or max_tokens_cap, not both (got {self.max_tokens}, {self.max_tokens_cap})")
            object.__setattr__(self, "max_tokens", self.max_tokens_cap)
            object.__setattr__(self, "max_tokens_cap", None)
        if isinstance(self.models, (list, str)):
            object.__setattr__(self, "models", (self.models,) if isinstance(self.models, str) else tuple(self.models))
        kind, _ = arrivals.parse_arrival_kind(self.trace)
        # Fail at the edge on a mistyped name, not after loading a dataset.
        if kind == "trace" and self.trace not in arrivals.BUILTIN_TRACES and not Path(self.trace).expanduser().is_file():
            raise ValueError(
                f"trace {self.trace!r} is not 'poisson', 'gamma:CV', a built-in trace "
                f"{sorted(arrivals.BUILTIN_TRACES)} or an existing file"
            )
        if self.dataset not in BUILTIN_DATASETS and not Path(self.dataset).expanduser().is_file():
            raise ValueError(
                f"dataset {self.dataset!r} is neither a built-in dataset {sorted(BUILTIN_DATASETS)} nor an existing file"
            )
        if not isinstance(self.num_requests, (int, np.integer)) or self.num_requests < 1:
            raise ValueError(f"num_requests must be an int >= 1, got {self.num_requests!r}")
        if self.rate is not None and not (isinstance(self.rate, (int, float)) and np.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate!r}")
        if kind in ("poisson", "gamma") and self.rate is None:
            raise ValueError(f"trace={self.trace!r} needs a rate (requests/s)")
        if self.time_scale is not None:
            if kind != "trace":
                raise ValueError(f"time_scale applies to trace replay only, not trace={self.trace!r}")
            if self.rate is not None:
                raise ValueError(f"give rate or time_scale, not both (got rate={self.rate}, time_scale={self.time_scale})")
            if not (np.isfinite(self.time_scale) and self.time_scale > 0):
                raise ValueError(f"time_scale must be > 0, got {self.time_scale!r}")
        if not isinstance(self.max_tokens, (int, np.integer)) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.models is not None and not self.models:
            raise ValueError("models must be None (all) or a non-empty list of model names")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("max_tokens_cap")
        d["models"] = list(self.models) if self.models is not None else None
        return d


def _seeds(spec: WorkloadSpec) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(prompt draw, arrivals): independent streams of the spec's seed."""
    prompt_seed, arrival_seed = np.random.SeedSequence(spec.seed).spawn(2)
    return prompt_seed, arrival_seed


def arrival_times(spec: WorkloadSpec) -> np.ndarray:
    """The ``num_requests`` arrival times (s, from 0) of the spec's arrival process, as in
    ``build_workload``. For a trace, the seed also picks the replayed window."""
    seed = _seeds(spec)[1]
    kind, cv = arrivals.parse_arrival_kind(spec.trace)
    n = spec.num_requests
    if kind == "poisson":
        return arrivals.poisson(spec.rate, n, seed)
    if kind == "gamma":
        return arrivals.gamma(spec.rate, cv, n, seed)
    trace = arrivals.load_trace(spec.trace)
    return arrivals.trace_arrivals(trace, n, rate=spec.rate, time_scale=spec.time_scale, seed=seed)


def build_workload(spec: WorkloadSpec, dataset: pa.Table | None = None) -> pa.Table:
    """The workload table (``WORKLOAD_SCHEMA``), sorted by arrival; ``output_tokens`` is the truth.

    ``dataset`` reuses an already loaded table of ``proxy_model.datasets`` instead of loading
    ``spec.dataset`` again.
    """
    table = load_dataset(spec.dataset, tokenizer=spec.tokenizer) if dataset is None else dataset
    total = table.num_rows
    if spec.models is not None:
        known = set(table["model"].to_pylist())
        unknown = sorted(set(spec.models) - known)
        if unknown:
            raise ValueError(f"models {unknown} are not in dataset {spec.dataset!r}; it has {sorted(known)}")
        table = table.filter(pc.is_in(table["model"], pa.array(list(spec.models))))
    table = table.filter(pc.less_equal(table["output_tokens"], spec.max_tokens))
    if table.num_rows == 0:
        raise ValueError(
            f"no row of dataset {spec.dataset!r} ({total} rows) fits models={spec.models} and "
            f"max_tokens={spec.max_tokens}"
        )
    rng = np.random.default_rng(_seeds(spec)[0])
    n = spec.num_requests
    picks = rng.choice(table.num_rows, size=n, replace=n > table.num_rows)
    rows = table.take(pa.array(picks))
    times = arrival_times(spec)
    width = max(6, len(str(n - 1)))
    columns = {
        "request_id": pa.array([f"req-{i:0{width}d}" for i in range(n)], pa.string()),
        "arrival_s": pa.array(times, pa.float64()),
        **{name: rows[name] for name in WORKLOAD_SCHEMA.names if name in rows.column_names},
        "max_tokens": pa.array(np.full(n, spec.max_tokens, dtype=np.int32)),
    }
    out = pa.table({name: columns[name] for name in WORKLOAD_SCHEMA.names}, schema=WORKLOAD_SCHEMA)
    meta = dict(table.schema.metadata or {})
    meta.update({b"workload_spec": json.dumps(spec.to_dict()).encode(),
                 b"rows_available": str(table.num_rows).encode()})
    return out.replace_schema_metadata(meta)

