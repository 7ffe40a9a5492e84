"""Summaries of one run's per-request times: JCT percentiles, queueing delay, TTFT, throughput.

Shared by ``loadgen simulate`` and the live load generator, so both report the same fields:
``mean_jct_s``, ``p50_jct_s``, ``p90_jct_s``, ``p99_jct_s``, ``mean_queue_delay_s``, ... and
``throughput_rps`` = completed requests per second over the whole run (first arrival to last
completion; DESIGN.md's honesty rules: not the paper's "jobs done by the 25th percentile").
Times in seconds; requests that never finished (NaN finish) count as failures, not as zeros.
"""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (50, 90, 99)


def _stats(name: str, values: np.ndarray, out: dict) -> None:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        out[f"mean_{name}"] = None
        for q in PERCENTILES:
            out[f"p{q}_{name}"] = None
        out[f"max_{name}"] = None
        return
    out[f"mean_{name}"] = float(v.mean())
    for q, value in zip(PERCENTILES, np.percentile(v, PERCENTILES), strict=True):
        out[f"p{q}_{name}"] = float(value)
    out[f"max_{name}"] = float(v.max())


def summarize(arrival_at, finished_at, *, started_at=None, first_token_at=None, output_tokens=None,
              long_quantile: float = 0.9) -> dict:
    """Summary dict of one run.

    ``arrival_at``/``finished_at``: per-request times (NaN finish = failed). ``started_at``: when the
    request began running (gives ``*_queue_delay_s``). ``first_token_at`` gives ``*_ttft_s``.
    ``output_tokens`` (the true lengths, known to the report only) adds the JCT of the longest
    ``1 - long_quantile`` of requests (``mean_jct_long_s``, ``p99_jct_long_s``): the ones SJF
    delays, so the tail cost of a policy is visible.
    """
    arrival = np.asarray(arrival_at, dtype=np.float64)
    finished = np.asarray(finished_at, dtype=np.float64)
    if arrival.shape != finished.shape:
        raise ValueError(f"arrival_at has {arrival.shape} entries but finished_at {finished.shape}")
    ok = np.isfinite(finished)
    n, n_ok = len(arrival), int(ok.sum())
    out: dict = {"num_requests": n, "num_completed": n_ok, "num_failed": n - n_ok}
    jct = finished - arrival
    _stats("jct_s", jct, out)
    if started_at is not None:
        _stats("queue_delay_s", np.asarray(started_at, dtype=np.float64) - arrival, out)
    if first_token_at is not None:
        _stats("ttft_s", np.asarray(first_token_at, dtype=np.float64) - arrival, out)
    if n_ok:
        span = float(finished[ok].max() - arrival.min())
        out["duration_s"] = span
        out["throughput_rps"] = n_ok / span if span > 0 else math.inf
    else:
        out["duration_s"] = 0.0
        out["throughput_rps"] = 0.0
    if output_tokens is not None and n:
        tokens = np.asarray(output_tokens, dtype=np.float64)
        long = tokens >= np.quantile(tokens, long_quantile)
        v = jct[long & ok]
        out["mean_jct_long_s"] = float(v.mean()) if len(v) else None
        out["p99_jct_long_s"] = float(np.percentile(v, 99)) if len(v) else None
        out["long_quantile"] = long_quantile
    return out


def compare(summaries: dict[str, dict], baseline: str = "fcfs",
            keys=("mean_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s", "mean_queue_delay_s")) -> dict:
    """Ratios of each run's metrics to the baseline's (``{name: {key_ratio: value}}``)."""
    if baseline not in summaries:
        return {}
    base = summaries[baseline]
    ratios = {}
    for name, s in summaries.items():
        r = {}
        for k in keys:
            a, b = s.get(k), base.get(k)
            if a is not None and b:
                r[f"{k}_ratio"] = a / b
        ratios[name] = r
    return ratios


def format_table(summaries: dict[str, dict], baseline: str | None = "fcfs") -> str:
    """A fixed-width text table, one row per run (policy)."""
    cols = [("mean_jct_s", "mean JCT"), ("p50_jct_s", "p50"), ("p90_jct_s", "p90"), ("p99_jct_s", "p99"),
            ("mean_queue_delay_s", "mean wait"), ("throughput_rps", "req/s")]
    head = f"{'policy':<24}" + "".join(f"{label:>11}" for _, label in cols)
    if baseline in summaries:
        head += f"{'vs ' + baseline:>10}"
    lines = [head, "-" * len(head)]
    for name, s in summaries.items():
        row = f"{name:<24}"
        for key, _ in cols:
            v = s.get(key)
            row += f"{v:>11.3f}" if isinstance(v, (int, float)) else f"{'-':>11}"
        if baseline in summaries:
            b = summaries[baseline].get("mean_jct_s")
            row += f"{s['mean_jct_s'] / b:>10.3f}" if b and s.get("mean_jct_s") is not None else f"{'-':>10}"
        lines.append(row)
    return "\n".join(lines)
