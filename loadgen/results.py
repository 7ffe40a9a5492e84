"""A run's results directory: per-request records (Parquet), the resolved config and the summary (JSON).

Layout of ``--out DIR``: ``records.parquet`` (one row per request, :data:`RECORD_SCHEMA`),
``config.json`` (everything needed to repeat the run), ``summary.json`` (:func:`summarize`).
The summary builds on ``loadgen.summary`` (shared with the simulator), so live runs and simulations
report the same keys: ``mean_jct_s``, ``p50_jct_s``, ``p90_jct_s``, ``p99_jct_s`` and so on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loadgen.client import SHED_CODE, RequestRecord
from loadgen.summary import add_stats, slo_attainment, stats
from loadgen.summary import summarize as summarize_times

RECORDS_FILE = "records.parquet"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"

# Arrow type of each annotation a ``RequestRecord`` field may carry (None: a null in the column).
_ARROW_TYPES = {"str": pa.string(), "str | None": pa.string(), "float": pa.float64(), "float | None": pa.float64(),
                "int": pa.int64(), "int | None": pa.int64()}


def _record_schema() -> pa.Schema:
    """One column per ``RequestRecord`` field, in its order: the record class is the one definition."""
    columns = []
    for f in fields(RequestRecord):
        if f.type not in _ARROW_TYPES:
            raise TypeError(f"RequestRecord.{f.name}: no Arrow type for annotation {f.type!r}")
        columns.append((f.name, _ARROW_TYPES[f.type]))
    return pa.schema(columns)


RECORD_SCHEMA = _record_schema()

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


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)


def summarize(table: pa.Table) -> dict:
    """Summary of one run's records, with the keys of ``loadgen.summary`` (shared with simulate).

    A request's arrival is its send time (the server cannot see it earlier; lateness of the client
    is reported apart as send lag); requests that did not end ``ok`` count as failed, not as zeros.
    Added for the live client: errors vs timeouts, TPOT, longest token gap, output tokens/s.
    Throughput is completed requests per second over the whole run, not the paper's
    "done by the 25th percentile".
    """
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    sent = _floats(table, "sent_at")
    arrival = np.where(np.isnan(sent), _floats(table, "scheduled_at"), sent)
    finished = np.where(ok, _floats(table, "done_at"), np.nan)
    first = np.where(ok, _floats(table, "first_token_at"), np.nan)
    truth = _floats(table, "expected_output_tokens")
    if truth.size == 0 or not np.all(np.isfinite(truth)):
        truth = None  # long-request JCT needs every request's true length
    out = summarize_times(arrival, finished, first_token_at=first, output_tokens=truth)
    out["num_errors"] = int((status == "error").sum())
    out["num_timeouts"] = int((status == "timeout").sum())
    add_stats(out, "tpot_s", np.where(ok, _floats(table, "tpot_s"), np.nan))
    add_stats(out, "max_gap_s", np.where(ok, _floats(table, "max_gap_s"), np.nan))
    tokens = np.where(ok, _floats(table, "num_output_tokens"), np.nan)
    out["num_output_tokens"] = int(np.nansum(tokens)) if tokens.size else 0
    span = out.get("duration_s") or 0.0
    out["output_tokens_per_s"] = out["num_output_tokens"] / span if span > 0 else None
    lag = stats(_floats(table, "send_lag_s"), (99,))
    out["p99_send_lag_s"], out["max_send_lag_s"] = lag["p99"], lag["max"]
    if "error_code" in table.column_names:  # (records written before SLOs have no such column)
        out["num_shed"] = int(_shed(table).sum())
    if any(name in table.column_names and table.column(name).null_count < table.num_rows
           for name in ("slo_ttft_s", "slo_jct_s")):
        out.update(score_slo(table))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _shed(table: pa.Table) -> np.ndarray:
    """Per record: the server shed it for its SLO (an error answer with code ``slo_unattainable``)."""
    if "error_code" not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    return np.asarray([code == SHED_CODE for code in table.column("error_code").to_pylist()], dtype=bool)


def score_slo(table: pa.Table, slo_ttft_s: float | None = None, slo_jct_s: float | None = None) -> dict:
    """``loadgen.summary.slo_attainment`` of a run's records: each request against the objectives it
    carried (its ``slo_ttft_s`` / ``slo_jct_s``), or, given here, against these for every request (a
    run scored against an SLO it did not send). Times from the send (the server's arrival); a request
    that did not end ok (shed: 503 slo_unattainable, failed, timed out) missed; a TTFT objective needs
    a streamed first token."""
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    sent = _floats(table, "sent_at")
    arrival = np.where(np.isnan(sent), _floats(table, "scheduled_at"), sent)
    finished = np.where(ok, _floats(table, "done_at"), np.nan)
    first = np.where(ok, _floats(table, "first_token_at"), np.nan)
    if slo_ttft_s is None and slo_jct_s is None:  # the records' own (a null: no such objective)
        names = table.column_names
        slo_ttft_s = _floats(table, "slo_ttft_s") if "slo_ttft_s" in names else None
        slo_jct_s = _floats(table, "slo_jct_s") if "slo_jct_s" in names else None
    return slo_attainment(arrival, first, finished, slo_ttft_s, slo_jct_s, shed=_shed(table))
