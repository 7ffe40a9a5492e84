"""Conversation datasets as one Arrow table: prompts with the real reply length of a named model.

Every reader turns a file into rows "conversation so far -> one real reply": the reply's token
count is the truth a length predictor learns and the replay engine generates. Formats are detected
from the content (gzip by magic bytes, JSON array vs JSON lines, record keys), not the file name:

- ``sharegpt``: ``{id?, conversations: [{from: human|gpt|system, value}]}`` per line. Each ``gpt``
  reply directly after a ``human`` turn is a row; its messages are the conversation before it.
  ShareGPT holds ChatGPT conversations, so the model is recorded as ``gpt-3.5-turbo``.
- ``alpaca_eval``: ``{model, dataset, instruction, output}`` per line (model outputs).
- ``arena``: ``{bench, question_id, model, prompt_turns, answer_turns}`` per line (arena-hard-auto
  answers). Answer turn ``i`` is a row when prompt turn ``i`` exists; the history holds the earlier
  prompt and answer turns. (arena-bench-v1 stores only the first user turn, so its 18 follow-up
  answers have no prompt and are skipped.)
- ``alpaca``: a JSON array of ``{instruction, input, output}``; model ``alpaca-reference``.
- ``codealpaca``: a JSON array of ``{instruction, input, response}``; model ``codealpaca-reference``.
- ``logs``: JSON lines ``{model, messages, output_tokens, prompt_id?, source?, ...}``: the logs
  schema of ``proxy_model.data``, which ``proxy-model collect`` writes (a served model's real
  replies to prompts). ``output_tokens`` is kept as given (counted by the serving model's own
  tokenizer), not recounted; rows with ``output_tokens < 1`` are dropped.
- ``table``: a Parquet file written from a table of this module (e.g. the bundled sample).

Token counts: ``num_prompt_tokens`` sums the tokens of every message's text, each encoded alone
without special tokens and WITHOUT a chat template (templates differ per serving model; the
scheduler only needs a consistent size). ``output_tokens`` is the reply's text encoded the same
way. Rows whose reply or last user turn is empty are dropped.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_TOKENIZER = "smollm2"

# name -> bundled Parquet file (see proxy_model/data/ATTRIBUTION.md and scripts/make_bundled_data.py)
BUILTIN_DATASETS: dict[str, str] = {"arena": "arena_bench_v1_answers.parquet"}

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("num_prompt_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("source", pa.string()),
    ]
)
SHAREGPT_MODEL = "gpt-3.5-turbo"
ALPACA_MODEL = "alpaca-reference"
CODEALPACA_MODEL = "codealpaca-reference"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                   "assistant": "assistant", "system": "system"}
# The bundle stores counts for these tokenizers, not reply text (keeps the repo small).
_BUNDLED_COUNT_COLUMNS = {"smollm2": ("num_prompt_tokens", "output_tokens"),
                          "whitespace": ("num_prompt_words", "output_words")}


@dataclass(frozen=True)
class Row:
    """One reply before token counting: the reply text is kept only until it is counted."""

    prompt_id: str
    messages: list[dict[str, str]]
    model: str
    reply: str
    source: str
    output_tokens: int | None = None  # a count given by the file (logs); None: count ``reply``


# ---------------------------------------------------------------- tokenizers

def _whitespace_count(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


@functools.lru_cache(maxsize=4)
def _hf_counter(name: str) -> Callable[[list[str]], list[int]]:
    # Loading the SmolLM2 tokenizer from its GGUF takes seconds: cached once per process.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from proxy_model.offline_models import resolve_model_name

    path, kwargs = resolve_model_name(name)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer: fast batches, no max-length warnings
        def count(texts: list[str]) -> list[int]:
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    else:
        def count(texts: list[str]) -> list[int]:
            return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    return count


def get_token_counter(tokenizer: str = DEFAULT_TOKENIZER) -> Callable[[list[str]], list[int]]:
    """A function texts -> token counts. ``"whitespace"`` counts words (no dependency);
    ``"smollm2"`` is SmolLM2-135M's tokenizer from the offline GGUF; anything else is a HF
    tokenizer name or local path (offline)."""
    if not tokenizer:
        raise ValueError("tokenizer must be a non-empty name: 'smollm2', 'whitespace' or a HF path")
    if tokenizer == "whitespace":
        return _whitespace_count
    return _hf_counter(tokenizer)


def count_tokens(texts: list[str], tokenizer: str = DEFAULT_TOKENIZER) -> list[int]:
    """Token counts of ``texts`` (no special tokens, no chat template)."""
    return get_token_counter(tokenizer)(list(texts))


# ---------------------------------------------------------------- raw readers

def _hash_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def _open_text(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_records(path: Path) -> Iterator[dict]:
    """JSON objects of a JSON array or JSON-lines file (gzipped or not)."""
    with _open_text(path) as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):
            data = json.load(f)
            yield from data
            return
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not JSON ({e}); expected JSON lines") from None


def _sharegpt_rows(records: Iterable[dict]) -> Iterator[Row]:
    for rec in records:
        conv = rec.get("conversations") or []
        history: list[dict[str, str]] = []
        turn = 0
        for msg in conv:
            role = _SHAREGPT_ROLES.get(str(msg.get("from", "")).lower())
            text = msg.get("value") or ""
            if role is None:
                continue
            # A reply is a row only when it answers a user turn (truncated chats start with gpt).
            if role == "assistant" and history and history[-1]["role"] == "user":
                conv_id = rec.get("id")
                pid = f"sharegpt:{conv_id}:{turn}" if conv_id else "sharegpt:" + _hash_id(
                    *(m["role"] + ":" + m["content"] for m in history))
                yield Row(pid, list(history), SHAREGPT_MODEL, text, "sharegpt")
                turn += 1
            history.append({"role": role, "content": text})


def _alpaca_eval_rows(records: Iterable[dict]) -> Iterator[Row]:
    for rec in records:
        instr = rec["instruction"]
        yield Row("alpaca_eval:" + _hash_id(instr), [{"role": "user", "content": instr}],
                  str(rec["model"]), rec.get("output") or "", "alpaca_eval")


def _arena_rows(records: Iterable[dict]) -> Iterator[Row]:
    for rec in records:
        history: list[dict[str, str]] = []
        prompts, answers = rec.get("prompt_turns") or [], rec.get("answer_turns") or []
        for turn, (prompt, answer) in enumerate(zip(prompts, answers, strict=False)):
            history.append({"role": "user", "content": _turn_text(prompt)})
            answer = _turn_text(answer)
            pid = str(rec["question_id"]) if turn == 0 else f"{rec['question_id']}:{turn}"
            yield Row(pid, list(history), str(rec["model"]), answer, "arena")
            history.append({"role": "assistant", "content": answer})


def _turn_text(turn) -> str:
    # arena-hard-auto stores plain strings; tolerate {"content": ...} dicts of other versions.
    if isinstance(turn, dict):
        return str(turn.get("content", ""))
    return str(turn)


def _instruction_rows(records: Iterable[dict], reply_key: str, model: str, source: str) -> Iterator[Row]:
    for rec in records:
        instr, inp = rec.get("instruction") or "", rec.get("input") or ""
        text = f"{instr}\n\n{inp}" if inp.strip() else instr
        yield Row(f"{source}:" + _hash_id(instr, inp), [{"role": "user", "content": text}],
                  model, rec.get(reply_key) or "", source)


def _logs_rows(records: Iterable[dict]) -> Iterator[Row]:
    for rec in records:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in rec["messages"]]
        pid = rec.get("prompt_id") or "logs:" + _hash_id(*(m["role"] + ":" + m["content"] for m in messages))
        yield Row(str(pid), messages, str(rec["model"]), rec.get("output") or "", str(rec.get("source") or "logs"),
                  output_tokens=int(rec["output_tokens"]))


# format -> (keys that identify it in a record, rows from records)
_FORMATS: dict[str, tuple[frozenset[str], Callable[[Iterable[dict]], Iterator[Row]]]] = {
    "sharegpt": (frozenset({"conversations"}), _sharegpt_rows),
    "arena": (frozenset({"question_id", "model", "prompt_turns", "answer_turns"}), _arena_rows),
    "alpaca_eval": (frozenset({"model", "instruction", "output"}), _alpaca_eval_rows),
    "codealpaca": (frozenset({"instruction", "input", "response"}),
                   lambda recs: _instruction_rows(recs, "response", CODEALPACA_MODEL, "codealpaca")),
    "alpaca": (frozenset({"instruction", "input", "output"}),
               lambda recs: _instruction_rows(recs, "output", ALPACA_MODEL, "alpaca")),
    "logs": (frozenset({"model", "messages", "output_tokens"}), _logs_rows),
}


def detect_format(record: dict) -> str:
    """The format of a file from its first record's keys (first match in ``_FORMATS`` order)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected JSON objects, got {type(record).__name__}")
    keys = set(record)
    for name, (required, _) in _FORMATS.items():
        if required <= keys:
            return name
    raise ValueError(
        f"unknown dataset format: first record has keys {sorted(keys)}; known formats: "
        + "; ".join(f"{n} {sorted(req)}" for n, (req, _) in _FORMATS.items())
    )


def iter_rows(path: str | Path, limit: int | None = None) -> tuple[str, list[Row]]:
    """(format, rows with reply text) of a JSON/JSONL file, detected from its content."""
    path = Path(path)
    records = _iter_records(path)
    try:
        first = next(records)
    except StopIteration:
        raise ValueError(f"{path}: file holds no records") from None
    fmt = detect_format(first)

    def all_records():
        yield first
        yield from records

    rows: list[Row] = []
    for row in _FORMATS[fmt][1](all_records()):
        has_reply = row.output_tokens > 0 if row.output_tokens is not None else bool(row.reply.strip())
        if not has_reply or not row.messages or not row.messages[-1]["content"].strip():
            continue
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return fmt, rows


# ---------------------------------------------------------------- table

def rows_to_table(rows: list[Row], tokenizer: str = DEFAULT_TOKENIZER) -> pa.Table:
    """Count tokens (each distinct text once) and build the table of ``SCHEMA``."""
    texts: dict[str, int] = {}
    for row in rows:
        if row.output_tokens is None:
            texts.setdefault(row.reply, 0)
        for m in row.messages:
            texts.setdefault(m["content"], 0)
    unique = list(texts)
    counts = get_token_counter(tokenizer)(unique) if unique else []
    texts = dict(zip(unique, counts, strict=True))
    columns = {
        "prompt_id": [r.prompt_id for r in rows],
        "messages": [r.messages for r in rows],
        "prompt": [r.messages[-1]["content"] for r in rows],
        "model": [r.model for r in rows],
        "num_prompt_tokens": [sum(texts[m["content"]] for m in r.messages) for r in rows],
        "output_tokens": [texts[r.reply] if r.output_tokens is None else r.output_tokens for r in rows],
        "source": [r.source for r in rows],
    }
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    return table.replace_schema_metadata({"tokenizer": tokenizer})


def _read_bundled(path: Path, tokenizer: str, limit: int | None) -> pa.Table:
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    stored = meta.get(b"tokenizer", b"").decode()
    if tokenizer == stored:
        cols = ("num_prompt_tokens", "output_tokens")
    elif tokenizer in _BUNDLED_COUNT_COLUMNS and set(_BUNDLED_COUNT_COLUMNS[tokenizer]) <= set(table.column_names):
        cols = _BUNDLED_COUNT_COLUMNS[tokenizer]
    else:
        have = [stored] + [t for t, c in _BUNDLED_COUNT_COLUMNS.items()
                           if t != stored and set(c) <= set(table.column_names)]
        raise ValueError(
            f"{path.name} holds token counts for tokenizers {have}, not {tokenizer!r}; "
            "load the original JSON/JSONL file to count with another tokenizer"
        )
    if limit is not None:
        table = table.slice(0, limit)
    out = {name: table.column(name) for name in SCHEMA.names if name not in ("num_prompt_tokens", "output_tokens")}
    out["num_prompt_tokens"] = table.column(cols[0])
    out["output_tokens"] = table.column(cols[1])
    result = pa.table({name: out[name].cast(SCHEMA.field(name).type) for name in SCHEMA.names}, schema=SCHEMA)
    return result.replace_schema_metadata({"tokenizer": tokenizer})


def load_dataset(name_or_path: str | Path, *, tokenizer: str = DEFAULT_TOKENIZER,
                 limit: int | None = None) -> pa.Table:
    """Rows "conversation so far -> one real reply" with token counts (columns of ``SCHEMA``).

    ``name_or_path``: a built-in name (``BUILTIN_DATASETS``: "arena", bundled, works offline) or a
    file of a supported format (see the module docstring). ``limit`` keeps the first rows in file
    order. Schema metadata ``tokenizer`` names the tokenizer of the counts.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    name = str(name_or_path)
    if name in BUILTIN_DATASETS:
        return _read_bundled(DATA_DIR / BUILTIN_DATASETS[name], tokenizer, limit)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(
            f"dataset {name!r} is neither a built-in name {sorted(BUILTIN_DATASETS)} nor an existing file "
            f"(supported file formats: {', '.join(_FORMATS)}, or a Parquet table of this module)"
        )
    with open(path, "rb") as f:
        is_parquet = f.read(4) == b"PAR1"
    if is_parquet:
        return _read_bundled(path, tokenizer, limit)
    _, rows = iter_rows(path, limit)
    return rows_to_table(rows, tokenizer)
