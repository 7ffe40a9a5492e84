"""``loadgen report`` (one run) and ``loadgen compare`` (several runs, ratios to the first), with plots.

Plots (matplotlib, Agg backend, imported only when asked for) hold three panels: the JCT CDF, mean
JCT by output-length bucket, and the client's queue delay over time. The client cannot see the
server's queue, so queue delay is approximated by TTFT (time from send to the first token), which
is the wait in the queue plus one prefill.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import pyarrow as pa

from loadgen.results import read_records, resolve_results, run_label, summarize
from loadgen.summary import fmt, ratios_to_baseline, stats, text_table

# Rows of the summary table: (key, label, format).
TABLE_ROWS = (
    ("num_requests", "requests", "{:d}"),
    ("num_completed", "completed (ok)", "{:d}"),
    ("num_errors", "errors", "{:d}"),
    ("num_timeouts", "timeouts", "{:d}"),
    ("throughput_rps", "throughput (req/s)", "{:.3f}"),
    ("output_tokens_per_s", "output tokens/s", "{:.1f}"),
    ("mean_jct_s", "mean JCT (s)", "{:.3f}"),
    ("p50_jct_s", "p50 JCT (s)", "{:.3f}"),
    ("p90_jct_s", "p90 JCT (s)", "{:.3f}"),
    ("p99_jct_s", "p99 JCT (s)", "{:.3f}"),
    ("mean_jct_long_s", "mean JCT, longest 10% (s)", "{:.3f}"),
    ("p99_jct_long_s", "p99 JCT, longest 10% (s)", "{:.3f}"),
    ("mean_ttft_s", "mean TTFT (s)", "{:.3f}"),
    ("p50_ttft_s", "p50 TTFT (s)", "{:.3f}"),
    ("p99_ttft_s", "p99 TTFT (s)", "{:.3f}"),
    ("mean_tpot_s", "mean TPOT (s)", "{:.4f}"),
    ("p99_tpot_s", "p99 TPOT (s)", "{:.4f}"),
    ("p99_max_gap_s", "p99 max token gap (s)", "{:.3f}"),
    ("p99_send_lag_s", "p99 send lag (s)", "{:.4f}"),
)
# Metrics whose ratio to the baseline is reported by compare (lower is better for all but throughput).
RATIO_KEYS = tuple(k for k, _, _ in TABLE_ROWS if k.endswith("_s") or k.endswith("_per_s") or k == "throughput_rps")

BUCKET_EDGES = (0, 32, 64, 128, 256, 512, 1024, math.inf)


def format_summary(summaries: dict[str, dict], ratios: dict[str, dict] | None = None) -> str:
    """A metrics x runs table; with ``ratios`` ({label: {key: ratio}}) one ``label/baseline`` column per run."""
    labels = list(summaries)
    header = ["metric", *labels]
    baseline = labels[0]
    ratio_labels = [lab for lab in labels[1:] if ratios and lab in ratios]
    header += [f"{lab}/{baseline}" for lab in ratio_labels]
    rows = []
    for key, name, spec in TABLE_ROWS:
        row = [name] + [fmt(summaries[lab].get(key), spec) for lab in labels]
        row += [fmt(ratios[lab].get(key)) for lab in ratio_labels]
        rows.append(row)
    return text_table(header, rows)


def length_column(table: pa.Table) -> tuple[np.ndarray, str]:
    """Output length used for bucketing: the true length when the workload knew it (the same for
    every policy, so buckets match across runs), else the tokens the server produced."""
    for name, what in (("expected_output_tokens", "true output tokens"), ("num_output_tokens", "output tokens")):
        col = np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)
        if col.size and not np.all(np.isnan(col)):
            return col, what
    return np.full(table.num_rows, np.nan), "output tokens"


def jct_by_bucket(table: pa.Table) -> list[dict]:
    """Per output-length bucket: count, mean and p99 JCT of the requests that ended ok."""
    lengths, _ = length_column(table)
    ok = np.asarray(table.column("status").to_pylist(), dtype=object) == "ok"
    jct = np.asarray(table.column("jct_s").to_numpy(zero_copy_only=False), dtype=float)
    rows = []
    for lo, hi in zip(BUCKET_EDGES[:-1], BUCKET_EDGES[1:], strict=True):
        mask = ok & (lengths > lo) & (lengths <= hi) & ~np.isnan(jct)
        if lo == 0:
            mask |= ok & (lengths == 0) & ~np.isnan(jct)
        if not mask.any():
            continue
        jct_stats = stats(jct[mask], (99,))
        rows.append({"bucket": _bucket_name(lo, hi), "count": int(mask.sum()),
                     "mean_jct_s": jct_stats["mean"], "p99_jct_s": jct_stats["p99"]})
    return rows


def _bucket_name(lo, hi) -> str:
    return f">{lo}" if math.isinf(hi) else f"{lo + 1 if lo else 0}-{hi}"


def format_buckets(per_run: dict[str, list[dict]]) -> str:
    labels = list(per_run)
    names = [_bucket_name(lo, hi) for lo, hi in zip(BUCKET_EDGES[:-1], BUCKET_EDGES[1:], strict=True)]
    header = ["output tokens"] + [f"{lab} n" for lab in labels] + [f"{lab} mean JCT" for lab in labels]
    rows = []
    for name in names:
        cells = [next((b for b in per_run[lab] if b["bucket"] == name), None) for lab in labels]
        if not any(cells):
            continue
        rows.append([name] + [str(c["count"]) if c else "0" for c in cells]
                    + [fmt(c["mean_jct_s"]) if c else "-" for c in cells])
    return text_table(header, rows) if rows else "(no completed requests)"


def _load(paths) -> tuple[dict[str, pa.Table], dict[str, dict]]:
    tables, summaries = {}, {}
    for path in paths:
        try:
            resolve_results(path)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="RESULTS") from exc
        label = run_label(path)
        base, n = label, 2
        while label in tables:  # two runs with one label stay apart
            label, n = f"{base}#{n}", n + 1
        tables[label] = read_records(path)
        summaries[label] = summarize(tables[label])
    return tables, summaries


def _ok_floats(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(which requests ended ok, the column as floats)."""
    ok = np.asarray(table.column("status").to_pylist(), dtype=object) == "ok"
    return ok, np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)


def _plot_jct_cdf(ax, tables: dict[str, pa.Table]) -> None:
    all_jct = []
    for label, table in tables.items():
        ok, jct = _ok_floats(table, "jct_s")
        jct = np.sort(jct[ok & ~np.isnan(jct)])
        if jct.size:
            ax.plot(jct, np.arange(1, jct.size + 1) / jct.size, label=label)
            all_jct.append(jct)
    if all_jct:
        lo, hi = min(j[0] for j in all_jct), max(j[-1] for j in all_jct)
        if lo > 0 and hi / lo > 100:
            ax.set_xscale("log")
    ax.set(xlabel="JCT (s)", ylabel="fraction of requests", title="JCT CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_jct_by_bucket(ax, tables: dict[str, pa.Table]) -> None:
    per_run = {label: jct_by_bucket(table) for label, table in tables.items()}
    length_what = length_column(list(tables.values())[-1])[1] if tables else "output tokens"
    names = [_bucket_name(lo, hi) for lo, hi in zip(BUCKET_EDGES[:-1], BUCKET_EDGES[1:], strict=True)]
    names = [n for n in names if any(b["bucket"] == n for bs in per_run.values() for b in bs)]
    width = 0.8 / max(1, len(per_run))
    for i, (label, buckets) in enumerate(per_run.items()):
        means = [next((b["mean_jct_s"] for b in buckets if b["bucket"] == n), np.nan) for n in names]
        ax.bar(np.arange(len(names)) + i * width, means, width=width, label=label)
    ax.set_xticks(np.arange(len(names)) + width * (len(per_run) - 1) / 2, names, rotation=30)
    ax.set(xlabel=length_what, ylabel="mean JCT (s)", title="JCT by output length")
    ax.legend(fontsize=8)


def _plot_queue_delay(ax, tables: dict[str, pa.Table]) -> None:
    """TTFT against send time, with a rolling median per run (the client's view of the queue)."""
    for label, table in tables.items():
        ok, ttft = _ok_floats(table, "ttft_s")
        sent = np.asarray(table.column("sent_at").to_numpy(zero_copy_only=False), dtype=float)
        keep = ok & ~np.isnan(ttft)
        if not keep.any():
            continue
        order = np.argsort(sent[keep])
        xs, ys = sent[keep][order], ttft[keep][order]
        points = ax.scatter(xs, ys, s=4, alpha=0.25)
        window = max(1, xs.size // 50)
        smooth = np.array([np.median(ys[max(0, i - window): i + window + 1]) for i in range(xs.size)])
        ax.plot(xs, smooth, color=points.get_facecolor()[0][:3], label=f"{label} (rolling median)")
    ax.set(xlabel="send time (s from start)", ylabel="TTFT (s) ~ queue delay", title="Queue delay over time")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no TTFT (run without streaming?)", ha="center", va="center", transform=ax.transAxes)


def plot_runs(tables: dict[str, pa.Table], path: Path, title: str | None = None) -> Path:
    """One PNG, three panels: JCT CDF, mean JCT by output-length bucket, queue delay (TTFT) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_bucket, ax_queue) = plt.subplots(1, 3, figsize=(17, 4.8))
    _plot_jct_cdf(ax_cdf, tables)
    _plot_jct_by_bucket(ax_bucket, tables)
    _plot_queue_delay(ax_queue, tables)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_PLOT_HELP = "Write a PNG (JCT CDF, JCT by output length, queue delay over time); optional file name"


@click.command()
@click.argument("results", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary (and JCT by bucket) as JSON on stdout.")
@click.option("--plot", "plot_path", is_flag=False, flag_value="", default=None, type=click.Path(dir_okay=False),
              help=_PLOT_HELP + " [default: RESULTS/report.png].")
def report(results, as_json, plot_path):
    """Summarise one run: RESULTS is a `loadgen run` results directory (or its records.parquet)."""
    tables, summaries = _load([results])
    (label, table), = tables.items()
    buckets = jct_by_bucket(table)
    png = None
    if plot_path is not None:
        png = Path(plot_path) if plot_path else resolve_results(results).parent / "report.png"
        plot_runs(tables, png, title=label)
    if as_json:
        out = {**summaries[label], "label": label, "jct_by_bucket": buckets}
        if png:
            out["plot"] = str(png)
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(format_summary(summaries))
    click.echo()
    click.echo("JCT by output length (requests that ended ok):")
    click.echo(format_buckets({label: buckets}))
    if png:
        click.echo(f"plot: {png}")


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print summaries and ratios as JSON on stdout.")
@click.option("--plot", "plot_path", is_flag=False, flag_value="", default=None, type=click.Path(dir_okay=False),
              help=_PLOT_HELP + " [default: compare.png beside the first run].")
def compare(results, as_json, plot_path):
    """Compare runs side by side: the first of RESULTS is the baseline; ratios are run / baseline."""
    if len(results) < 2:
        raise click.UsageError(f"compare needs at least two results, got {len(results)}")
    tables, summaries = _load(results)
    ratios = ratios_to_baseline(summaries, RATIO_KEYS)
    png = None
    if plot_path is not None:
        png = Path(plot_path) if plot_path else resolve_results(results[0]).parent.parent / "compare.png"
        plot_runs(tables, png, title=" vs ".join(tables))
    emit_comparison(tables, summaries, ratios, as_json, png)


def emit_comparison(tables: dict[str, pa.Table], summaries: dict[str, dict], ratios: dict[str, dict], as_json: bool,
                    png: Path | None, extra: dict | None = None) -> None:
    baseline = next(iter(summaries))
    if as_json:
        out = {"baseline": baseline, "runs": summaries, "ratios": ratios,
               "jct_by_bucket": {lab: jct_by_bucket(t) for lab, t in tables.items()}, **(extra or {})}
        if png:
            out["plot"] = str(png)
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(format_summary(summaries, ratios))
    click.echo()
    click.echo("JCT by output length (requests that ended ok):")
    click.echo(format_buckets({lab: jct_by_bucket(t) for lab, t in tables.items()}))
    if png:
        click.echo(f"plot: {png}")
