"""Regenerate the small data bundled in the repo (proxy_model/data/, loadgen/data/) from the shared data folder.

    .venv/bin/python scripts/make_bundled_data.py [--data-dir ../shared/data]

Only Apache-2.0 / CC-BY files are bundled (see the ATTRIBUTION.md beside each):
- proxy_model/data/arena_bench_v1_answers.parquet: every row of arena-hard-auto's arena-bench-v1 answers as the
  table of ``proxy_model.datasets`` with counts for the smollm2 tokenizer, plus whitespace word counts
  (``num_prompt_words``, ``output_words``); reply texts are left out to keep the repo small.
- proxy_model/data/smollm2_replies_apache.jsonl.gz: the rows of smollm2_replies.jsonl.gz whose prompts come from
  Apache-2.0 sets (arena_bench_v1_answers, sharegpt_zh_1K_format), logs schema without the reply text; earlier turns
  cut to the last ``HISTORY_KEEP_CHARS`` characters (the proxy reads at most 1,000 of them: checked row by row).
- loadgen/data/AzureLLMInferenceTrace_{conv,code}.csv.gz: the Azure LLM inference traces, gzipped unchanged.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.arrivals import DATA_DIR as TRACE_DIR  # noqa: E402
from proxy_model.datasets import DATA_DIR, iter_rows, rows_to_table  # noqa: E402
from proxy_model.text import DEFAULT_MAX_HISTORY_CHARS, proxy_text  # noqa: E402

ARENA = "arena_bench_v1_answers.jsonl.gz"
SMOLLM2 = "smollm2_replies.jsonl.gz"
SMOLLM2_BUNDLE = "smollm2_replies_apache.jsonl.gz"
# Sources of smollm2_replies whose prompts are Apache-2.0 (the rest is research use only: never bundled).
SMOLLM2_APACHE_SOURCES = ("arena_bench_v1_answers", "sharegpt_zh_1K_format")
# Earlier turns kept per row: a margin over the proxy's default history cut (its text stays the same).
HISTORY_KEEP_CHARS = 1200
SMOLLM2_FIELDS = ("prompt_id", "messages", "model", "output_tokens", "finished", "source")
TRACES = ["AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv"]


@click.command()
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=ROOT.parent / "shared" / "data", show_default=True, help="Folder of the shared data files.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=DATA_DIR,
              show_default=True, help="Where the dataset bundle goes.")
@click.option("--trace-dir", type=click.Path(file_okay=False, path_type=Path), default=TRACE_DIR,
              show_default=True, help="Where the trace bundle goes.")
def main(data_dir: Path, out_dir: Path, trace_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_dir.mkdir(parents=True, exist_ok=True)
    _, rows = iter_rows(data_dir / ARENA)
    started = time.perf_counter()
    table = rows_to_table(rows, "smollm2")
    click.echo(f"smollm2 counts of {len(rows)} rows in {time.perf_counter() - started:.1f}s (with tokenizer load)")
    words = rows_to_table(rows, "whitespace")
    table = table.append_column("num_prompt_words", words["num_prompt_tokens"])
    table = table.append_column("output_words", words["output_tokens"])
    table = table.replace_schema_metadata({"tokenizer": "smollm2", "origin": f"lm-sys/arena-hard-auto {ARENA}"})
    out = out_dir / ARENA.replace(".jsonl.gz", ".parquet")
    pq.write_table(table, out, compression="zstd", compression_level=19)
    out_tokens = table["output_tokens"]
    click.echo(
        f"{out.name}: {out.stat().st_size / 1e6:.2f} MB, {table.num_rows} rows, "
        f"{pc.count_distinct(table['model']).as_py()} models, output tokens mean "
        f"{pc.mean(out_tokens).as_py():.1f} median {pc.approximate_median(out_tokens).as_py():.0f} "
        f"p99 {pc.quantile(pa.array(out_tokens.to_numpy()), q=0.99)[0].as_py():.0f}"
    )
    write_smollm2_bundle(data_dir / SMOLLM2, out_dir / SMOLLM2_BUNDLE)
    for name in TRACES:
        dest = trace_dir / (name + ".gz")
        # mtime=0: identical bytes on every run, so git sees no change when nothing changed.
        with open(data_dir / name, "rb") as src, open(dest, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            shutil.copyfileobj(src, gz)
        click.echo(f"{dest.name}: {dest.stat().st_size / 1e6:.2f} MB")


def trim_history(messages: list[dict], keep_chars: int = HISTORY_KEEP_CHARS) -> list[dict]:
    """The messages with the turns before the last user turn cut to about the last ``keep_chars``
    characters of their ``role: text`` rendering (whole messages, the oldest kept one cut from the left)."""
    turn = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
    kept: list[dict] = []
    total = 0
    for m in reversed(messages[:turn]):
        line = len(m["role"]) + 2 + len(m["content"]) + 1  # "role: text\n"
        if total + line >= keep_chars:
            kept.append({"role": m["role"], "content": m["content"][-(keep_chars - total):]})
            break
        kept.append(m)
        total += line
    return kept[::-1] + messages[turn:]


def write_smollm2_bundle(src: Path, dest: Path) -> None:
    rows = []
    with gzip.open(src, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["source"] not in SMOLLM2_APACHE_SOURCES:
                continue
            out = {k: r[k] for k in SMOLLM2_FIELDS}
            out["messages"] = trim_history(r["messages"])
            if proxy_text(out["messages"], DEFAULT_MAX_HISTORY_CHARS) != proxy_text(r["messages"], DEFAULT_MAX_HISTORY_CHARS):
                raise SystemExit(f"{r['prompt_id']}: the cut history changes the proxy's text")
            rows.append(out)
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    capped = sum(not r["finished"] for r in rows)
    click.echo(f"{dest.name}: {dest.stat().st_size / 1e6:.2f} MB, {len(rows)} rows, {capped} at the cap")


if __name__ == "__main__":
    main()
