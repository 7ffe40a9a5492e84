"""Arrival processes: seeded synthetic ones and replay of production traces with time scaling.

Every function returns arrival times in seconds as a sorted float64 numpy array whose first
arrival is at 0; ``n`` arrivals span ``n - 1`` inter-arrival gaps, so the mean rate of a result is
``(n - 1) / arrivals[-1]``.

- ``poisson(rate, n, seed)``: exponential gaps (CV 1).
- ``gamma(rate, cv, n, seed)``: Gamma gaps with shape ``1 / cv**2``: CV > 1 is burstier than
  Poisson, CV < 1 smoother.
- ``load_trace(name_or_path)`` + ``trace_arrivals(trace, n, ...)``: the gaps of a real trace.
  Built-in traces (bundled, CC-BY-4.0, see ``loadgen/data/ATTRIBUTION.md``): ``azure-conv`` and
  ``azure-code``. Files: Azure LLM inference CSV (``TIMESTAMP, ContextTokens, GeneratedTokens``)
  and Mooncake JSONL (``timestamp`` in ms, ``input_length``, ``output_length``), gzipped or not.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proxy_model.jsonl import json_lines

DATA_DIR = Path(__file__).parent / "data"
BUILTIN_TRACES: dict[str, str] = {
    "azure-conv": "AzureLLMInferenceTrace_conv.csv.gz",
    "azure-code": "AzureLLMInferenceTrace_code.csv.gz",
}

SeedLike = int | np.random.Generator | np.random.SeedSequence | None


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (number of arrivals) must be an int >= 1, got {n!r}")


def _check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float, np.floating)) and np.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0 requests/s, got {rate!r}")


def _times_from_gaps(gaps: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(gaps, dtype=np.float64)))


def poisson(rate: float, n: int, seed: SeedLike = 0) -> np.ndarray:
    """``n`` arrival times of a Poisson process of ``rate`` requests/s."""
    _check_rate(rate)
    _check_n(n)
    rng = np.random.default_rng(seed)
    return _times_from_gaps(rng.exponential(1.0 / rate, size=n - 1))


def gamma(rate: float, cv: float, n: int, seed: SeedLike = 0) -> np.ndarray:
    """``n`` arrival times with Gamma gaps of mean ``1 / rate`` and coefficient of variation ``cv``."""
    _check_rate(rate)
    _check_n(n)
    if not (isinstance(cv, (int, float, np.floating)) and np.isfinite(cv) and cv > 0):
        raise ValueError(f"cv (coefficient of variation of the gaps) must be > 0, got {cv!r}")
    shape = 1.0 / cv**2
    rng = np.random.default_rng(seed)
    return _times_from_gaps(rng.gamma(shape, 1.0 / (rate * shape), size=n - 1))


@dataclass(frozen=True)
class Trace:
    """A recorded arrival sequence: times in seconds from its first request, with the lengths
    the trace recorded (token counts of its own tokenizer; not used to size our requests)."""

    name: str
    arrival_s: np.ndarray = field(repr=False)
    input_tokens: np.ndarray | None = field(default=None, repr=False)
    output_tokens: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.arrival_s) < 2:
            raise ValueError(f"trace {self.name!r} needs at least 2 requests, has {len(self.arrival_s)}")
        if np.any(np.diff(self.arrival_s) < 0):
            raise ValueError(f"trace {self.name!r}: arrival times must be sorted")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def mean_rate(self) -> float:
        """Requests per second over the whole trace."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _sorted_trace(name: str, seconds: np.ndarray, inputs, outputs) -> Trace:
    order = np.argsort(seconds, kind="stable")
    seconds = seconds[order] - seconds[order][0]
    return Trace(name, seconds.astype(np.float64),
                 None if inputs is None else np.asarray(inputs)[order],
                 None if outputs is None else np.asarray(outputs)[order])


def _azure_csv(name: str, data: bytes) -> Trace:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
        column_types={"TIMESTAMP": pa.timestamp("ns")}))
    ns = table["TIMESTAMP"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    seconds = (ns - ns.min()) / 1e9
    cols = table.column_names
    return _sorted_trace(
        name, seconds,
        table["ContextTokens"].to_numpy() if "ContextTokens" in cols else None,
        table["GeneratedTokens"].to_numpy() if "GeneratedTokens" in cols else None,
    )


def _mooncake_jsonl(name: str, data: bytes) -> Trace:
    records = [json.loads(line) for _, line in json_lines(data.decode())]
    missing = [i for i, r in enumerate(records) if "timestamp" not in r]
    if missing:
        raise ValueError(f"{name}: JSONL record {missing[0] + 1} has no 'timestamp' (ms) field")
    seconds = np.array([r["timestamp"] for r in records], dtype=np.float64) / 1000.0
    ins = [r.get("input_length") for r in records]
    outs = [r.get("output_length") for r in records]
    return _sorted_trace(
        name, seconds,
        np.array(ins, dtype=np.int64) if None not in ins else None,
        np.array(outs, dtype=np.int64) if None not in outs else None,
    )


def load_trace(name_or_path: str | Path) -> Trace:
    """A built-in trace (``BUILTIN_TRACES``) or an Azure CSV / Mooncake JSONL file (format from content)."""
    name = str(name_or_path)
    path = DATA_DIR / BUILTIN_TRACES[name] if name in BUILTIN_TRACES else Path(name).expanduser()
    if not path.is_file():
        raise ValueError(
            f"trace {name!r} is neither a built-in trace {sorted(BUILTIN_TRACES)} nor an existing file "
            "(Azure CSV with a TIMESTAMP column, or Mooncake JSONL with 'timestamp' in ms)"
        )
    data = _read_bytes(path)
    head = data[:4096].lstrip()
    if head.startswith(b"{"):
        return _mooncake_jsonl(name, data)
    header = head.split(b"\n", 1)[0].decode(errors="replace")
    if "TIMESTAMP" in [c.strip() for c in header.split(",")]:
        return _azure_csv(name, data)
    raise ValueError(
        f"{path}: unknown trace format (header {header[:80]!r}); expected an Azure CSV with a "
        "TIMESTAMP column or Mooncake JSONL records with 'timestamp' (ms)"
    )


def _cyclic_gaps(trace: Trace) -> np.ndarray:
    # The gap from the last request back to the first (when replay wraps) is the trace's mean gap.
    gaps = np.diff(trace.arrival_s)
    return np.append(gaps, trace.duration_s / (len(trace) - 1))


def trace_arrivals(
    trace: Trace,
    n: int,
    rate: float | None = None,
    time_scale: float | None = None,
    seed: SeedLike = None,
) -> np.ndarray:
    """``n`` arrival times replaying the trace's inter-arrival gaps (its burstiness).

    - ``seed=None`` starts at the trace's first request; otherwise the start is a seeded random
      request, so different seeds replay different windows of the same trace.
    - When the window runs past the trace's end it wraps around: the trace repeats from its first
      request, shifted in time by one mean gap after its last.
    - ``time_scale`` multiplies every gap (2.0 = half the rate); ``rate`` instead rescales the
      gaps so the result's mean rate ``(n - 1) / arrivals[-1]`` equals ``rate`` exactly. Give at
      most one; with neither the trace's own times are kept.
    """
    _check_n(n)
    if rate is not None and time_scale is not None:
        raise ValueError(f"give rate or time_scale, not both (got rate={rate}, time_scale={time_scale})")
    if rate is not None:
        _check_rate(rate)
    if time_scale is not None and not (np.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    cyclic = _cyclic_gaps(trace)
    start = 0 if seed is None else int(np.random.default_rng(seed).integers(len(trace)))
    gaps = cyclic[(start + np.arange(n - 1)) % len(trace)]
    if time_scale is not None:
        gaps = gaps * time_scale
    elif rate is not None and n > 1:
        span = gaps.sum()
        if span > 0:
            gaps = gaps * ((n - 1) / rate / span)
        else:  # a window of simultaneous requests (ms-resolution traces): space them evenly
            gaps = np.full(n - 1, 1.0 / rate)
    return _times_from_gaps(gaps)


def parse_arrival_kind(trace: str) -> tuple[str, float | None]:
    """Parse a workload's arrival name: ``"poisson"``, ``"gamma:CV"`` or a trace name/path.

    Returns ``("poisson", None)``, ``("gamma", cv)`` or ``("trace", None)``.
    """
    if not isinstance(trace, str) or not trace:
        raise ValueError(f"trace must be 'poisson', 'gamma:CV', a built-in trace {sorted(BUILTIN_TRACES)} or a path; got {trace!r}")
    if trace == "poisson":
        return "poisson", None
    if trace == "gamma" or trace.startswith("gamma:"):
        _, _, cv_text = trace.partition(":")
        try:
            cv = float(cv_text)
        except ValueError:
            raise ValueError(f"gamma arrivals are written 'gamma:CV' with CV a number > 0 (e.g. 'gamma:2'), got {trace!r}") from None
        if not (np.isfinite(cv) and cv > 0):
            raise ValueError(f"gamma CV must be > 0, got {trace!r}")
        return "gamma", cv
    return "trace", None
