"""Summaries of runs and the one place their numbers are computed and laid out.

- :func:`stats` (mean, percentiles, max of the finite values) and :func:`summarize` (one run's
  per-request times: JCT percentiles, queueing delay, TTFT, throughput). Shared by
  ``loadgen simulate``, the live load generator and the benchmarks, so all report the same fields:
  ``mean_jct_s``, ``p50_jct_s``, ``p90_jct_s``, ``p99_jct_s``, ``mean_queue_delay_s``, ... and
  ``throughput_rps`` = completed requests per second over the whole run (first arrival to last
  completion; not the paper's "jobs done by the 25th percentile"). Times in seconds; requests that
  never finished (NaN finish) count as failures, not as zeros.
- :func:`slo_attainment`: the share of requests with an SLO that met all of theirs (shed and failed
  requests missed theirs), for the simulator and the live report alike.
- :func:`ratio`, :func:`gain`, :func:`share_of_gain` and :func:`ratios_to_baseline`: one run's
  numbers against a baseline's (a missing or zero baseline gives None, never a crash or inf).
- :func:`text_table` and :func:`markdown_row`: the fixed-width and markdown tables printed by the
  commands and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def stats(values, percentiles: Sequence[float] = PERCENTILES) -> dict[str, float | None]:
    """``{"mean", "p<q>" for each q, "max"}`` of the finite ``values``; all None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, **{f"p{q:g}": None for q in percentiles}, "max": None}
    qs = np.percentile(v, list(percentiles)) if len(percentiles) else []
    return {"mean": float(v.mean()), **{f"p{q:g}": float(x) for q, x in zip(percentiles, qs, strict=True)},
            "max": float(v.max())}


def add_stats(out: dict, name: str, values, percentiles: Sequence[float] = PERCENTILES) -> None:
    """Put :func:`stats` of ``values`` into ``out`` as ``mean_<name>``, ``p<q>_<name>``, ``max_<name>``."""
    out.update({f"{key}_{name}": value for key, value in stats(values, percentiles).items()})


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
    add_stats(out, "jct_s", jct)
    if started_at is not None:
        add_stats(out, "queue_delay_s", np.asarray(started_at, dtype=np.float64) - arrival)
    if first_token_at is not None:
        add_stats(out, "ttft_s", np.asarray(first_token_at, dtype=np.float64) - arrival)
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
        tail = stats(jct[long & ok], (99,))
        out["mean_jct_long_s"], out["p99_jct_long_s"] = tail["mean"], tail["p99"]
        out["long_quantile"] = long_quantile
    return out


def _per_request(value, n: int) -> np.ndarray:
    """An SLO argument as ``n`` floats (NaN: no objective): None, one value for all, or one per request."""
    if value is None:
        return np.full(n, np.nan)
    v = np.asarray(value, dtype=np.float64)  # a None inside a list becomes NaN
    return np.broadcast_to(v, (n,)).astype(np.float64)


def slo_attainment(arrival_at, first_token_at, finished_at, slo_ttft_s, slo_jct_s, *, shed=None) -> dict:
    """How many requests met their latency objectives.

    Per request (times in seconds): ``slo_ttft_s`` and ``slo_jct_s`` are its objectives, measured from
    ``arrival_at`` (None, NaN or a None entry: no such objective; a single number: the same for all).
    A request *with an SLO* has at least one; it *met* it when it finished (finite ``finished_at``),
    its first token came within ``slo_ttft_s`` (a missing first-token time misses a TTFT objective)
    and it finished within ``slo_jct_s``. Requests that never finished (shed, failed, timed out) missed.
    ``shed``: a bool per request, the ones the scheduler refused (counted in ``num_shed``; None:
    unknown, ``num_shed`` None).

    Returns ``slo_attainment`` (met / with an SLO; None when none has one), ``num_with_slo``,
    ``num_slo_met``, ``num_shed`` (among those with an SLO) and, per kind of objective,
    ``ttft_slo_attainment`` / ``jct_slo_attainment`` (None when no request has that kind).
    """
    arrival = np.asarray(arrival_at, dtype=np.float64)
    n = len(arrival)
    finished = np.asarray(finished_at, dtype=np.float64)
    first = np.full(n, np.nan) if first_token_at is None else np.asarray(first_token_at, dtype=np.float64)
    if finished.shape != arrival.shape or first.shape != arrival.shape:
        raise ValueError(f"arrival_at, first_token_at and finished_at must have one entry per request "
                         f"({arrival.shape}, {first.shape}, {finished.shape})")
    ttft, jct = _per_request(slo_ttft_s, n), _per_request(slo_jct_s, n)
    has_ttft, has_jct = ~np.isnan(ttft), ~np.isnan(jct)
    with_slo = has_ttft | has_jct
    done = np.isfinite(finished)
    with np.errstate(invalid="ignore"):
        ttft_ok = done & np.isfinite(first) & (first - arrival <= ttft)
        jct_ok = done & (finished - arrival <= jct)
    met = with_slo & done & (~has_ttft | ttft_ok) & (~has_jct | jct_ok)
    num = int(with_slo.sum())
    out = {
        "slo_attainment": float(met.sum()) / num if num else None,
        "num_with_slo": num,
        "num_slo_met": int(met.sum()),
        "num_shed": None if shed is None else int((np.asarray(shed, dtype=bool) & with_slo).sum()),
        "ttft_slo_attainment": float(ttft_ok[has_ttft].mean()) if has_ttft.any() else None,
        "jct_slo_attainment": float(jct_ok[has_jct].mean()) if has_jct.any() else None,
    }
    return out


def ratio(value, base) -> float | None:
    """``value / base``; None when either is missing or the base is 0."""
    if value is None or not base:
        return None
    return value / base


def gain(value, base) -> float | None:
    """The fraction by which ``value`` is below ``base`` (``1 - value / base``; 0.2 = 20% lower)."""
    r = ratio(value, base)
    return None if r is None else 1 - r


def share_of_gain(value, best, base) -> float | None:
    """How much of ``best``'s reduction from ``base`` ``value`` achieves: ``(base - value) / (base - best)``."""
    if value is None or best is None or base is None or base == best:
        return None
    return (base - value) / (base - best)


def ratios_to_baseline(summaries: dict[str, dict], keys: Sequence[str], baseline: str | None = None
                       ) -> dict[str, dict[str, float | None]]:
    """``{run: {key: run's value / baseline's}}`` for every run but the baseline (default: the first run)."""
    if not summaries:
        return {}
    baseline = next(iter(summaries)) if baseline is None else baseline
    base = summaries[baseline]
    return {name: {k: ratio(s.get(k), base.get(k)) for k in keys} for name, s in summaries.items() if name != baseline}


def compare(summaries: dict[str, dict], baseline: str = "fcfs",
            keys=("mean_jct_s", "p50_jct_s", "p90_jct_s", "p99_jct_s", "mean_queue_delay_s")) -> dict:
    """Ratios of each run's metrics to the baseline's, the baseline's own included, as
    ``{name: {key_ratio: value}}`` with the undefined ones left out (the shape of the JSON summaries)."""
    if baseline not in summaries:
        return {}
    base = summaries[baseline]
    return {name: {f"{k}_ratio": r for k in keys if (r := ratio(s.get(k), base.get(k))) is not None}
            for name, s in summaries.items()}


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, min_widths: Sequence[int] = (),
               sep: str = "  ") -> str:
    """A fixed-width table: the first column left-aligned, the others right-aligned, a dashed rule under
    the header. Each column is as wide as its widest cell, and at least ``min_widths[i]``."""
    table = [list(header), *(list(r) for r in rows)]
    widths = [max([min_widths[i] if i < len(min_widths) else 0] + [len(str(r[i])) for r in table])
              for i in range(len(header))]

    def line(cells) -> str:
        return sep.join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(table[0]), sep.join("-" * w for w in widths), *(line(r) for r in table[1:])])


def markdown_row(cells: Sequence) -> str:
    """One row of a markdown table (its header: ``markdown_row(names)``, then ``markdown_rule(len(names))``)."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_rule(num_columns: int) -> str:
    """The line under a markdown table's header."""
    return "|" + "---|" * num_columns


def fmt(value, spec: str = "{:.3f}") -> str:
    """``spec.format(value)``, or "-" for a missing or NaN value (tables show gaps, not "None"/"nan")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return spec.format(value)


def format_table(summaries: dict[str, dict], baseline: str | None = "fcfs") -> str:
    """One row per run (policy): mean, p50, p90, p99 JCT, mean wait, throughput, and mean JCT / baseline's;
    where runs scored SLOs (:func:`slo_attainment`), also the share that met theirs and the number shed."""
    cols = [("mean_jct_s", "mean JCT"), ("p50_jct_s", "p50"), ("p90_jct_s", "p90"), ("p99_jct_s", "p99"),
            ("mean_queue_delay_s", "mean wait"), ("throughput_rps", "req/s")]
    if any(s.get("slo_attainment") is not None for s in summaries.values()):
        cols += [("slo_attainment", "SLO met"), ("num_shed", "shed")]
    with_ratio = baseline in summaries
    header = ["policy"] + [label for _, label in cols] + (["vs " + baseline] if with_ratio else [])
    rows = []
    for name, s in summaries.items():
        row = [name] + [fmt(s.get(key), "{}" if key == "num_shed" else "{:.3f}") for key, _ in cols]
        if with_ratio:
            row.append(fmt(ratio(s.get("mean_jct_s"), summaries[baseline].get("mean_jct_s"))))
        rows.append(row)
    return text_table(header, rows, min_widths=[24] + [11] * len(cols) + [10], sep="")
