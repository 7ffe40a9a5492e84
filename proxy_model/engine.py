"""Torch inference for a proxy artifact: tokenise (head + tail), length-sorted batches, fast dtypes.

Speed levers on CPU (measured by benchmarks/proxy_speed.py): bf16 weights where the CPU has
native bf16 (AMX / AVX512-BF16) roughly triple batched throughput over fp32; prompts are sorted
by token length so a batch pads little; ``max_length`` caps the tokens per prompt; int8 dynamic
quantization is available for CPUs without bf16.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from proxy_model.config import UNKNOWN_MODEL
from proxy_model.model import LengthModel
from proxy_model.pooling import chat_affixes
from proxy_model.predictor import normalize_model_name
from proxy_model.text import head_tail_chars, head_tail_ids

logger = logging.getLogger(__name__)
DTYPES = ("auto", "fp32", "bf16", "int8")
SUMMARY_FILE = "training_summary.json"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device != "cpu":
        return "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (e.g. [CLS] ... [SEP])."""
    bare = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return list(full[:k]), list(full[k + len(bare):])
    raise ValueError(f"cannot locate the text inside its special tokens: {full} vs {bare}")


class Tokenize:
    """Prompt strings -> id lists of at most ``max_length`` (special tokens included).
    ``chat_template``: the text goes inside the tokenizer's chat template as one user message,
    followed by the assistant's turn header (``proxy_model.pooling.chat_affixes``)."""

    def __init__(self, tokenizer, max_length: int, chat_template: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix, self.suffix = chat_affixes(tokenizer) if chat_template else special_affixes(tokenizer)
        if len(self.prefix) + len(self.suffix) >= max_length:
            raise ValueError(f"max_length {max_length} leaves no room for the text inside "
                             f"{len(self.prefix) + len(self.suffix)} template tokens")
        self.num_special = len(self.prefix) + len(self.suffix)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # 16 characters per token: more than any word piece of an English vocabulary, so the cheap
        # pre-cut never drops text that the head + tail ids would keep.
        self.max_chars = max_length * 16

    def __call__(self, prompts: list[str]) -> list[list[int]]:
        texts = [head_tail_chars(p, self.max_chars) for p in prompts]
        raw = self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
        budget = self.max_length - self.num_special
        return [self.prefix + head_tail_ids(ids, budget) + self.suffix for ids in raw]

    def pad(self, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class InferenceEngine:
    def __init__(self, model: LengthModel, tokenizer, doc: dict, *, path: str = "", batch_size: int = 32,
                 dtype: str = "auto", device: str = "cpu", num_threads: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}")
            torch.set_num_threads(num_threads)
        self.path = path
        self.doc = doc
        self.cfg = model.cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, device)
        model = model.eval()
        if self.dtype == "bf16":
            model.encoder.to(torch.bfloat16)
        elif self.dtype == "int8":
            if device != "cpu":
                raise ValueError("dtype int8 (dynamic quantization) runs on CPU only")
            model.encoder = torch.ao.quantization.quantize_dynamic(model.encoder, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device)
        self.tok = Tokenize(tokenizer, self.cfg.max_length, self.cfg.chat_template)
        self.known_models = list(self.cfg.models)
        self._exact = {m: i + 1 for i, m in enumerate(self.known_models)}
        self._lower = {m.lower(): i + 1 for i, m in enumerate(self.known_models)}
        self._loose = {normalize_model_name(m): i + 1 for i, m in enumerate(self.known_models)}
        summary = doc.get("summary") or {}
        self.median_tokens = float(summary.get("median_tokens", 128.0))
        self.median_tokens_per_model = {k: float(v) for k, v in (summary.get("median_tokens_per_model") or {}).items()}
        self.max_history_chars = self.cfg.max_history_chars
        self.head_type = self.cfg.head

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> InferenceEngine:
        path = Path(path)
        model, tokenizer, doc = LengthModel.load(path)
        summary_path = path / SUMMARY_FILE
        if summary_path.is_file():
            doc = dict(doc, summary=json.loads(summary_path.read_text()))
        return cls(model, tokenizer, doc, path=str(path), **kwargs)

    def model_index(self, name: str) -> int:
        """Row of the head for a model name; 0 (``<unk>``) when unknown."""
        if name in self._exact:
            return self._exact[name]
        if name.lower() in self._lower:
            return self._lower[name.lower()]
        return self._loose.get(normalize_model_name(name), 0)

    def describe(self) -> dict:
        return {"path": self.path, "head": self.cfg.head, "dtype": self.dtype, "batch_size": self.batch_size,
                "max_length": self.cfg.max_length, "models": self.known_models, "unknown_model": UNKNOWN_MODEL}

    def predict(self, prompts: list[str], models: list[str]) -> list[float]:
        return self.predict_detail(prompts, models)[0]

    @torch.inference_mode()
    def predict_detail(self, prompts: list[str], models: list[str]) -> tuple[list[float], list[float] | None]:
        """(predicted tokens, P(the reply hits the generation cap) per request, or None when the
        artifact's head has no cap output)."""
        if not prompts:
            return [], None
        # Each distinct prompt is encoded once, whatever number of models it is asked for.
        uniq: dict[str, int] = {}
        where = [uniq.setdefault(p, len(uniq)) for p in prompts]
        pooled = self.encode(list(uniq))
        model_ids = torch.tensor([self.model_index(m) for m in models], dtype=torch.long, device=self.device)
        rows = pooled[torch.tensor(where, dtype=torch.long, device=self.device)]
        logits = self.model.head(rows, model_ids)
        p_cap = self.model.cap_probability(logits)
        tokens = self.model.tokens(logits, model_ids).float().cpu().tolist()
        return tokens, (p_cap.cpu().tolist() if p_cap is not None else None)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Pooled encoder output per prompt (fp32), in length-sorted batches (little padding)."""
        seqs = self.tok(prompts)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = torch.empty(len(seqs), self.cfg.encoder_dim, dtype=torch.float32, device=self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = {k: v.to(self.device) for k, v in self.tok.pad([seqs[i] for i in idx]).items()}
            out[idx] = self.model.pool(batch["input_ids"], batch["attention_mask"]).float()
        return out
