"""``proxy-model prepare``: conversation data -> one Parquet table the proxy trains and evaluates on.

Inputs: any file ``proxy_model.datasets.load_dataset`` reads (its formats, or the built-in name
"arena"), or a team's own logs in the **logs schema** (JSON lines or Parquet), one
row per served reply:

=============== ======== =====================================================================
column          required what
=============== ======== =====================================================================
model           yes      name of the LLM that wrote the reply (the served model)
messages        one of   ``[{role, content}, ...]``, the conversation up to the reply (last: user)
prompt          one of   the user's prompt text, when there is no history
output_tokens   one of   length of the reply in tokens of the serving model's tokenizer
output          one of   the reply text (counted with ``--tokenizer``)
prompt_id       no       stable id of the prompt (default: hash of the conversation)
source          no       where the row came from (default: the file's name)
finished        no       false when the reply hit the generation cap (a censored length: the
                         true length is at least ``output_tokens``); absent: unknown (null)
=============== ======== =====================================================================

``proxy-model collect`` writes this schema too.

Output columns: ``prompt_id, prompt, model, output_tokens, num_prompt_tokens, num_turns,
source, split, finished`` (``finished`` null where the input does not say). ``prompt`` is ``proxy_model.text.proxy_text(messages, max_history_chars)``: the
last user turn whole, with at most ``max_history_chars`` of earlier turns cut from the left (the
rule that serving and the simulator apply too; ``train`` carries ``max_history_chars`` into the
artifact from the table's metadata, see :func:`max_history_chars_of`).

Splits are by prompt: the split of a row is a seeded hash of its conversation's FIRST user turn
(normalised: lower case, collapsed white space). So every model's reply to one prompt, every turn
of one conversation, and the same prompt found in two files all land in the same split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from proxy_model.jsonl import json_lines
from proxy_model.text import DEFAULT_MAX_HISTORY_CHARS, proxy_text

SPLITS = ("train", "val", "test")
PREPARED_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("model", pa.string()),
    ("output_tokens", pa.int32()),
    ("num_prompt_tokens", pa.int32()),
    ("num_turns", pa.int32()),
    ("source", pa.string()),
    ("split", pa.string()),
    ("finished", pa.bool_()),
])
REQUIRED_PREPARED = ("prompt", "model", "output_tokens")
_WS = re.compile(r"\s+")


def split_of(key_text: str, *, seed: int, val_frac: float, test_frac: float) -> str:
    norm = _WS.sub(" ", key_text.strip().lower())
    h = int(hashlib.sha256(f"{seed}\x1f{norm}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    if h < test_frac:
        return "test"
    if h < test_frac + val_frac:
        return "val"
    return "train"


def _is_logs_record(rec: dict) -> bool:
    return "model" in rec and ("messages" in rec or "prompt" in rec) and ("output_tokens" in rec or "output" in rec)


def read_records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    import gzip

    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return json.loads(text)
    out = []
    for i, line in json_lines(text):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not JSON ({e})") from None
    return out


def read_logs(path: str | Path, *, tokenizer: str = "smollm2") -> list[dict]:
    """Rows of the logs schema as dicts with messages, model, output_tokens, prompt_id, source."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no rows")
    to_count = [i for i, r in enumerate(records) if r.get("output_tokens") is None]
    if to_count:
        if any(records[i].get("output") is None for i in to_count):
            raise ValueError(f"{path}: rows need 'output_tokens' or 'output' (the reply text)")
        from proxy_model.datasets import count_tokens

        counts = count_tokens([str(records[i]["output"]) for i in to_count], tokenizer)
        for i, c in zip(to_count, counts, strict=True):
            records[i] = dict(records[i], output_tokens=c)
    rows = []
    for i, r in enumerate(records):
        missing = [c for c in ("model",) if c not in r] + ([] if ("messages" in r or "prompt" in r) else ["messages|prompt"])
        if missing:
            raise ValueError(f"{path}: row {i} lacks column(s) {missing}; see the logs schema in proxy_model/data.py")
        messages = r.get("messages") or [{"role": "user", "content": str(r.get("prompt") or "")}]
        pid = r.get("prompt_id") or hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        finished = r.get("finished")
        rows.append({"prompt_id": str(pid), "messages": messages, "model": str(r["model"]),
                     "output_tokens": int(r["output_tokens"]), "source": str(r.get("source") or path.stem),
                     "finished": None if finished is None else bool(finished)})
    return rows


def read_input(name_or_path: str, *, tokenizer: str = "smollm2", limit: int | None = None) -> list[dict]:
    """Rows from a dataset name/file (via proxy_model.datasets) or a logs-schema file."""
    path = Path(name_or_path)
    if path.is_file():
        first = None
        if path.suffix == ".parquet":
            names = set(pq.read_schema(path).names)
            first = {n: 1 for n in names}
        else:
            try:
                recs = _peek(path)
                first = recs if isinstance(recs, dict) else None
            except ValueError:
                first = None
        if first is not None and _is_logs_record(first):
            rows = read_logs(path, tokenizer=tokenizer)
            return rows[:limit] if limit else rows
    from proxy_model.datasets import load_dataset

    table = load_dataset(name_or_path, tokenizer=tokenizer, limit=limit)
    cols = table.select(["prompt_id", "messages", "model", "output_tokens", "source"]).to_pydict()
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def _peek(path: Path) -> dict | None:
    import gzip

    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith("["):
        data = read_records(path)  # a JSON array: parse it whole (small files in practice)
        return data[0] if data else None
    line = head.split("\n", 1)[0]
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON lines ({e})") from None


def prepare(inputs: list[str], out_path: str | Path, *, tokenizer: str = "smollm2",
            max_history_chars: int = DEFAULT_MAX_HISTORY_CHARS, val_frac: float = 0.1, test_frac: float = 0.2,
            seed: int = 0, limit: int | None = None) -> dict:
    """Write the prepared Parquet table; returns a summary (rows per split/source, dropped rows)."""
    if not inputs:
        raise ValueError("no inputs given")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"need 0 <= val_frac, test_frac and val_frac + test_frac < 1, got {val_frac}, {test_frac}")
    from proxy_model.datasets import count_tokens

    rows: list[dict] = []
    dropped = Counter()
    for name in inputs:
        for r in read_input(name, tokenizer=tokenizer, limit=limit):
            msgs = r["messages"]
            if not msgs or not str(msgs[-1].get("content") or "").strip():
                dropped["empty_prompt"] += 1
                continue
            if msgs[-1].get("role", "user") != "user":
                dropped["last_turn_not_user"] += 1
                continue
            if r["output_tokens"] is None or r["output_tokens"] < 1:
                dropped["empty_reply"] += 1
                continue
            first_user = next((m["content"] for m in msgs if m.get("role", "user") == "user"), msgs[-1]["content"])
            rows.append({
                "prompt_id": r["prompt_id"], "prompt": proxy_text(msgs, max_history_chars),
                "model": r["model"], "output_tokens": int(r["output_tokens"]), "num_turns": len(msgs),
                "source": r["source"], "finished": r.get("finished"),
                "split": split_of(str(first_user), seed=seed, val_frac=val_frac, test_frac=test_frac),
            })
    if not rows:
        raise ValueError(f"no usable rows in {inputs} (dropped: {dict(dropped)})")
    unique = sorted({r["prompt"] for r in rows})
    counts = dict(zip(unique, count_tokens(unique, tokenizer), strict=True))
    for r in rows:
        r["num_prompt_tokens"] = counts[r["prompt"]]
    table = pa.Table.from_pylist(rows, schema=PREPARED_SCHEMA)
    summary = {
        "rows": table.num_rows,
        "prompts": len({r["prompt_id"] for r in rows}),
        "rows_per_split": dict(Counter(r["split"] for r in rows)),
        "rows_per_source": dict(Counter(r["source"] for r in rows)),
        "models": len({r["model"] for r in rows}),
        "capped_rows": sum(1 for r in rows if r.get("finished") is False),
        "dropped": dict(dropped),
        "tokenizer": tokenizer, "max_history_chars": max_history_chars,
        "val_frac": val_frac, "test_frac": test_frac, "seed": seed, "inputs": [str(i) for i in inputs],
    }
    meta = {"tokenizer": tokenizer, "proxy_prepare": json.dumps(summary, sort_keys=True)}
    table = table.replace_schema_metadata(meta)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path)
    return summary


def read_prepared(path: str | Path, splits: tuple[str, ...] | None = None) -> pa.Table:
    """A prepared table, checked for the columns training and evaluation need."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prepared data not found: {path}")
    table = pq.read_table(path)
    missing = [c for c in REQUIRED_PREPARED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; expected the output of `proxy-model prepare` "
                         f"(columns {PREPARED_SCHEMA.names})")
    if splits is not None:
        if "split" not in table.column_names:
            raise ValueError(f"{path} has no 'split' column; cannot select splits {list(splits)}")
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; choose from {list(SPLITS)}")
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(list(splits))))
    return table


def max_history_chars_of(table: pa.Table) -> int:
    """The history cut a prepared table's prompts were rendered with (``prepare`` records it in the
    table's metadata; a table without it was rendered with the default)."""
    meta = (table.schema.metadata or {}).get(b"proxy_prepare")
    if not meta:
        return DEFAULT_MAX_HISTORY_CHARS
    return int(json.loads(meta).get("max_history_chars", DEFAULT_MAX_HISTORY_CHARS))
