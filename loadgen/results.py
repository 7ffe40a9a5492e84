"""A run's results directory: per-request records (Parquet), the resolved config and the summary (JSON).

Layout of ``--out DIR``: ``records.parquet`` (one row per request, :data:`RECORD_SCHEMA`),
``config.json`` (everything needed to repeat the run), ``summary.json`` (:func:`summarize`).
The summary is kept here, in one place, so it can follow ``loadgen.summary`` (the simulator's) and
report the same keys: ``mean_jct_s``, ``p50_jct_s``, ``p90_jct_s``, ``p99_jct_s`` and so on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RECORDS_FILE = "records.parquet"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"

RECORD_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("prompt_id", pa.string()),
    ("model", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("http_status", pa.int32()),
    ("finish_reason", pa.string()),
    ("scheduled_at", pa.float64()),
    ("sent_at", pa.float64()),
    ("first_token_at", pa.float64()),
    ("last_token_at", pa.float64()),
    ("done_at", pa.float64()),
    ("send_lag_s", pa.float64()),
    ("ttft_s", pa.float64()),
    ("tpot_s", pa.float64()),
    ("max_gap_s", pa.float64()),
    ("jct_s", pa.float64()),
    ("num_output_tokens", pa.int64()),
    ("num_chunks", pa.int64()),
    ("num_output_chars", pa.int64()),
    ("num_prompt_tokens", pa.int64()),
    ("expected_output_tokens", pa.int64()),
])

PERCENTILES = (50, 90, 99)


def records_table(records: Iterable) -> pa.Table:
    """Records (``RequestRecord`` or dicts) -> an Arrow table of :data:`RECORD_SCHEMA`."""
    rows = [r if isinstance(r, dict) else r.to_dict() for r in records]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def write_results(out_dir: str | Path, records: Iterable, config: dict, summary: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(records_table(records), out / RECORDS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return out


def resolve_results(path: str | Path) -> Path:
    """A results directory or its ``records.parquet`` -> the records file; ValueError if neither."""
    p = Path(path)
    if p.is_dir():
        p = p / RECORDS_FILE
    if not p.is_file():
        raise ValueError(f"no results at {str(path)!r}: expected a directory holding {RECORDS_FILE} or a .parquet file")
    return p


def read_records(path: str | Path) -> pa.Table:
    return pq.read_table(resolve_results(path))


def read_config(path: str | Path) -> dict:
    p = resolve_results(path).parent / CONFIG_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def run_label(path: str | Path) -> str:
    """The run's name in tables and plots: its config ``label``, else the directory name."""
    label = read_config(path).get("label")
    return str(label) if label else resolve_results(path).parent.name


def _stats(prefix: str, values: np.ndarray, unit: str = "_s") -> dict:
    values = values[~np.isnan(values)]
    out = {f"mean_{prefix}{unit}": float(values.mean()) if values.size else None}
    for q in PERCENTILES:
        out[f"p{q}_{prefix}{unit}"] = float(np.percentile(values, q)) if values.size else None
    return out


def _column(table: pa.Table, name: str, mask: np.ndarray) -> np.ndarray:
    col = table.column(name).to_numpy(zero_copy_only=False)
    return np.asarray(col, dtype=float)[mask]


def summarize(table: pa.Table) -> dict:
    """Summary of one run's records: counts, throughput, JCT / TTFT / TPOT / max-gap percentiles.

    Latencies cover requests that ended ``ok``. Throughput is completed requests per second over
    the whole run (first send to last end), not the paper's "done by the 25th percentile".
    """
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    n = len(status)
    sent = np.asarray(table.column("sent_at").to_numpy(zero_copy_only=False), dtype=float)
    done = np.asarray(table.column("done_at").to_numpy(zero_copy_only=False), dtype=float)
    span = float(np.nanmax(done) - np.nanmin(sent)) if n and not np.all(np.isnan(sent)) else 0.0
    tokens = _column(table, "num_output_tokens", ok)
    num_tokens = int(np.nansum(tokens)) if tokens.size else 0
    summary = {
        "num_requests": n,
        "num_ok": int(ok.sum()),
        "num_errors": int((status == "error").sum()),
        "num_timeouts": int((status == "timeout").sum()),
        "duration_s": span,
        "throughput_rps": (int(ok.sum()) / span) if span > 0 else None,
        "output_tokens_per_s": (num_tokens / span) if span > 0 else None,
        "num_output_tokens": num_tokens,
    }
    summary.update(_stats("jct", _column(table, "jct_s", ok)))
    summary.update(_stats("ttft", _column(table, "ttft_s", ok)))
    summary.update(_stats("tpot", _column(table, "tpot_s", ok)))
    summary.update(_stats("max_gap", _column(table, "max_gap_s", ok)))
    lag = _column(table, "send_lag_s", ~np.isnan(sent))
    summary["p99_send_lag_s"] = float(np.percentile(lag, 99)) if lag.size else None
    summary["max_send_lag_s"] = float(lag.max()) if lag.size else None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
