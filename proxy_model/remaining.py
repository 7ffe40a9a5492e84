"""Remaining-length prediction: from the prompt and the tokens generated so far, the tokens still to come.

The prompt-only proxy guesses a reply's length before it starts. Once a reply is running, its own
tokens say more (a greedy small model that has started to loop will run to the cap). This module
trains and scores a re-predictor from replies that carry their full text (logs schema with an
``output`` column, e.g. ``../shared/data/smollm2_replies.jsonl.gz``):

- **Examples.** Each reply is tokenized with the served model's tokenizer and cut at progress
  points ``k`` (fixed points, plus random ones for training) where it is still running
  (``k < total``). An example reads the prompt (``proxy_text``), the last ``tail_tokens`` tokens of
  the reply so far (decoded) and ``k``; its target is ``total - k`` tokens, censored when the
  reply hit the cap (then only ``remaining >= cap - k`` is known).
- **Splits.** ``proxy-model prepare``'s rule (:func:`proxy_model.data.split_of` on the first user
  turn, same seed and fractions), so a test prompt is never trained on, by either model here or by
  a prompt-only proxy trained on ``prepare``'s table with the same settings.
- **Model.** A frozen encoder (MiniLM by default) gives cached mean-pooled features of the prompt
  and of the tail, encoded separately (the tail keeps its LAST tokens); the input of the head is
  ``[prompt features, tail features, tail repetition statistics, log1p(k) / log1p(cap)]``,
  standardised on the training examples. The head is the proxy's ``LengthHead`` with the censored
  output (P(hits the cap), log remaining length of finished replies); its prediction is the
  expected remaining length under the room left, ``cap - k``. Loss: the censored head's (logistic
  on the cap, squared error of the normalised log length on finished replies) plus the pairwise
  rank loss on log expected remaining length (across all examples of a batch, whatever their k:
  a scheduler compares running requests at different progress).
- **Baseline.** "Prompt-only prediction minus tokens so far": the same head on the prompt features
  alone, trained on ``k = 0`` (the frozen-encoder censored proxy), predicting ``max(total - k, 0)``
  and the same P(cap) at every k.
- **Evaluation** (test split, each fixed point, over the replies still running there): Kendall
  tau-b of predicted vs true remaining length (a capped reply's true remaining is its censored
  value ``cap - k``, as the proxy's evaluation counts a capped reply at the cap), MAE on finished
  replies, the underestimate of censored ones (``mean(max(0, (cap - k) - pred))``: their truth is
  only a lower bound), and "hits the cap" accuracy, recall and precision (P(cap) > 0.5).

Tail repetition statistics (:func:`tail_stats`) are computed on the encoder tokenizer's ids of the
tail text, so a trained artifact needs only text and ``k`` at serving time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from proxy_model.data import read_records, split_of
from proxy_model.metrics import kendall_tau
from proxy_model.text import DEFAULT_MAX_HISTORY_CHARS, proxy_text

logger = logging.getLogger(__name__)

DEFAULT_POINTS = (0, 32, 64, 128, 256, 384)
DEFAULT_TAIL_TOKENS = 64
CONFIG_FILE = "remaining_config.json"
HEAD_WEIGHTS = "remaining_head.safetensors"
ENCODER_DIR = "encoder"
NUM_TAIL_STATS = 2
REMAINING = "remaining"
BASELINE = "prompt_only_minus_k"
# The same minus k without the floor at 0: its order at one k is the prompt-only proxy's own order
# among the running replies (the floor ties every reply predicted to have ended already).
BASELINE_UNCLIPPED = "prompt_only_minus_k_unclipped"


# ---------------------------------------------------------------- replies and examples

@dataclass(frozen=True)
class Reply:
    """One served reply with its text as tokens of the served model's tokenizer."""

    prompt_id: str
    prompt: str  # proxy_text of the conversation
    split: str
    tokens: tuple  # token ids (or words for the whitespace tokenizer)
    total: int  # output_tokens: the true length; for a capped reply, the cap
    capped: bool
    source: str


@dataclass(frozen=True)
class Example:
    reply: int  # index into the replies
    k: int  # tokens generated so far
    tail: str  # the last tail_tokens of them, decoded
    remaining: int  # total - k; a lower bound when censored
    censored: bool  # the reply hit the cap: the true remaining length is at least ``remaining``


class ReplyTokenizer:
    """The served model's tokenizer: ``encode(texts) -> token lists`` and ``decode(tokens) -> text``.

    ``whitespace`` (tests, no dependency) splits on white space and joins with one space; any other
    name resolves like ``--tokenizer`` of ``prepare`` (``smollm2``: the offline GGUF's tokenizer)."""

    def __init__(self, name: str):
        self.name = name
        if name == "whitespace":
            self._encode = lambda texts: [t.split() for t in texts]
            self._decode = lambda seqs: [" ".join(s) for s in seqs]
            return
        from transformers import AutoTokenizer

        from proxy_model.offline_models import resolve_model_name

        path, kwargs = resolve_model_name(name)
        backend = AutoTokenizer.from_pretrained(path, **kwargs).backend_tokenizer
        self._encode = lambda texts: [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
        self._decode = lambda seqs: backend.decode_batch([list(s) for s in seqs], skip_special_tokens=True)

    def encode(self, texts: Sequence[str]) -> list[list]:
        return self._encode(list(texts))

    def decode(self, seqs: Sequence[Sequence]) -> list[str]:
        return list(self._decode(seqs)) if seqs else []


def read_replies(path: str | Path, tokenizer: ReplyTokenizer, *, max_history_chars: int = DEFAULT_MAX_HISTORY_CHARS,
                 val_frac: float = 0.1, test_frac: float = 0.2, seed: int = 0,
                 limit: int | None = None) -> tuple[list[Reply], dict]:
    """Logs-schema rows WITH reply text -> (replies, summary). Rows are dropped by ``prepare``'s rules
    (empty prompt, last turn not the user's, empty reply); splits are ``prepare``'s. The summary
    says how well the re-tokenized text agrees with the logged ``output_tokens``."""
    path = Path(path)
    records = read_records(path)
    if limit:
        records = records[:limit]
    if not records:
        raise ValueError(f"{path}: no rows")
    if any(r.get("output") is None for r in records):
        raise ValueError(f"{path}: remaining-length training needs each reply's text ('output' column)")
    kept, dropped = [], Counter()
    for r in records:
        msgs = r.get("messages") or [{"role": "user", "content": str(r.get("prompt") or "")}]
        if not str(msgs[-1].get("content") or "").strip():
            dropped["empty_prompt"] += 1
        elif msgs[-1].get("role", "user") != "user":
            dropped["last_turn_not_user"] += 1
        elif not str(r["output"]):
            dropped["empty_reply"] += 1
        else:
            kept.append((r, msgs))
    if not kept:
        raise ValueError(f"{path}: no usable rows (dropped: {dict(dropped)})")
    token_lists = tokenizer.encode([str(r["output"]) for r, _ in kept])
    replies, rel = [], []
    for (r, msgs), toks in zip(kept, token_lists, strict=True):
        total = int(r["output_tokens"]) if r.get("output_tokens") is not None else len(toks)
        if total < 1:
            dropped["empty_reply"] += 1
            continue
        first_user = next((m["content"] for m in msgs if m.get("role", "user") == "user"), msgs[-1]["content"])
        pid = r.get("prompt_id") or hashlib.sha1(json.dumps(msgs, sort_keys=True).encode()).hexdigest()[:16]
        replies.append(Reply(prompt_id=str(pid), prompt=proxy_text(msgs, max_history_chars),
                             split=split_of(str(first_user), seed=seed, val_frac=val_frac, test_frac=test_frac),
                             tokens=tuple(toks), total=total, capped=r.get("finished") is False,
                             source=str(r.get("source") or path.stem)))
        rel.append((len(toks) - total) / total)
    rel = np.asarray(rel)
    summary = {
        "replies": len(replies), "capped": sum(r.capped for r in replies),
        "per_split": dict(Counter(r.split for r in replies)), "dropped": dict(dropped),
        # The logged count is the truth; the re-tokenized text gives the prefixes. They should agree.
        "token_count_check": {"tokenizer": tokenizer.name, "exact_share": float(np.mean(rel == 0)),
                              "mean_abs_rel_diff": float(np.mean(np.abs(rel))),
                              "p99_abs_rel_diff": float(np.quantile(np.abs(rel), 0.99))},
    }
    return replies, summary


def cap_of(replies: Sequence[Reply]) -> int:
    """The generation cap: the longest capped reply (collect records a capped reply at the cap);
    with no capped reply, the longest reply."""
    capped = [r.total for r in replies if r.capped]
    return max(capped) if capped else max(r.total for r in replies)


def progress_points(reply: Reply, points: Sequence[int], random_per_reply: int, rng: np.random.Generator) -> list[int]:
    """The k at which ``reply`` is cut: the fixed ``points`` where it is still running (k < total)
    and ``random_per_reply`` uniform draws from [1, total - 1] (a running request at a random moment
    sits at a uniform point of its reply)."""
    ks = {int(k) for k in points if 0 <= k < reply.total}
    if random_per_reply and reply.total > 1:
        ks.update(int(k) for k in rng.integers(1, reply.total, size=random_per_reply))
    return sorted(ks)


def make_examples(replies: Sequence[Reply], indices: Sequence[int], tokenizer: ReplyTokenizer, *,
                  points: Sequence[int] = DEFAULT_POINTS, random_per_reply: int = 0,
                  tail_tokens: int = DEFAULT_TAIL_TOKENS, seed: int = 0) -> list[Example]:
    """(prefix, remaining) examples of the replies at ``indices`` (see :func:`progress_points`)."""
    if tail_tokens < 1:
        raise ValueError(f"tail_tokens must be >= 1, got {tail_tokens}")
    rng = np.random.default_rng(seed)
    cuts = []
    for i in indices:
        r = replies[i]
        for k in progress_points(r, points, random_per_reply, rng):
            cuts.append((i, k))
    # The re-tokenized text can be a token or two shorter than the logged count: the tail then ends
    # at the text's end.
    tails = tokenizer.decode([replies[i].tokens[max(0, k - tail_tokens): k] for i, k in cuts])
    return [Example(reply=i, k=k, tail=t, remaining=replies[i].total - k, censored=replies[i].capped)
            for (i, k), t in zip(cuts, tails, strict=True)]


def baseline_remaining(total_pred, k) -> np.ndarray:
    """The prompt-only prediction minus the tokens so far, never below 0."""
    return np.maximum(np.asarray(total_pred, dtype=float) - np.asarray(k, dtype=float), 0.0)


# ---------------------------------------------------------------- features

def tail_stats(ids: Sequence[int]) -> list[float]:
    """Repetition in the tail: [share of distinct ids, share of trigrams seen earlier in the tail].
    A looping reply scores low on the first and high on the second. An empty tail: [1, 0]."""
    if not ids:
        return [1.0, 0.0]
    distinct = len(set(ids)) / len(ids)
    grams = [tuple(ids[i: i + 3]) for i in range(len(ids) - 2)]
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return [distinct, repeats / len(grams) if grams else 0.0]


class FeatureCache:
    """Mean-pooled encoder features by text, kept in a file between runs (the encoder pass is the
    slow part; ablations of the head reuse it). Keys: sha1 of (encoder, max_length, side, text)."""

    def __init__(self, path: str | Path | None):
        import torch

        self.path = Path(path) if path else None
        self.index: dict[str, int] = {}
        self.rows: list = []
        if self.path and self.path.is_file():
            doc = torch.load(self.path)
            self.index = {k: i for i, k in enumerate(doc["keys"])}
            self.rows = list(doc["feats"])

    @staticmethod
    def key(tag: str, text: str) -> str:
        return hashlib.sha1(f"{tag}\x1f{text}".encode()).hexdigest()

    def save(self) -> None:
        import torch

        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.index, key=self.index.get)
        torch.save({"keys": keys, "feats": torch.stack(self.rows) if self.rows else torch.empty(0)}, self.path)


class Featurizer:
    """Text -> features with a frozen encoder: prompts cut head + tail (as the proxy), tails keep
    their last ids; tail repetition statistics from the same ids."""

    def __init__(self, encoder_path: str, *, prompt_max_length: int = 128, tail_max_length: int = 96,
                 encoder_kwargs: dict | None = None, bf16: bool = False, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        from proxy_model.engine import Tokenize

        self.encoder_path = str(encoder_path)
        self.tokenizer = AutoTokenizer.from_pretrained(encoder_path, **(encoder_kwargs or {}))
        self.encoder = AutoModel.from_pretrained(encoder_path, **(encoder_kwargs or {})).eval()
        self.prompt_tok = Tokenize(self.tokenizer, prompt_max_length)
        self.tail_tok = Tokenize(self.tokenizer, tail_max_length)
        self.prompt_max_length, self.tail_max_length = prompt_max_length, tail_max_length
        self.bf16, self.batch_size = bf16, batch_size
        self.dim = int(self.encoder.config.hidden_size)

    def tail_ids(self, tails: Sequence[str]) -> list[list[int]]:
        """Encoder ids of each tail, at most ``tail_max_length`` minus the special ids, from the end."""
        raw = self.tokenizer(list(tails), add_special_tokens=False, truncation=False)["input_ids"] if tails else []
        budget = self.tail_max_length - self.tail_tok.num_special
        return [ids[len(ids) - budget:] if len(ids) > budget else ids for ids in raw]

    def _encode(self, seqs: list[list[int]], tok, tag: str, texts: Sequence[str], cache: FeatureCache | None):
        import torch

        from proxy_model.train import encode_features

        keys = [FeatureCache.key(tag, t) for t in texts]
        cache = cache if cache is not None else FeatureCache(None)  # in memory: still encodes each text once
        first: dict[str, int] = {}  # texts repeat (empty tails at k = 0, loops): encode each once
        for i, k in enumerate(keys):
            if k not in cache.index:
                first.setdefault(k, i)
        todo = list(first.values())
        if todo:
            feats = encode_features(self.encoder, tok, [seqs[i] for i in todo], batch_size=self.batch_size,
                                    bf16=self.bf16)
            for j, i in enumerate(todo):
                cache.index[keys[i]] = len(cache.rows)
                cache.rows.append(feats[j].clone())
        out = torch.empty(len(seqs), self.dim)
        for i, k in enumerate(keys):
            out[i] = cache.rows[cache.index[k]]
        return out

    def prompts(self, prompts: Sequence[str], cache: FeatureCache | None = None):
        tag = f"{self.encoder_path}|prompt|{self.prompt_max_length}"
        return self._encode(self.prompt_tok(list(prompts)), self.prompt_tok, tag, prompts, cache)

    def tails(self, tails: Sequence[str], cache: FeatureCache | None = None):
        """(pooled features (n, dim), repetition statistics (n, NUM_TAIL_STATS))."""
        import torch

        ids = self.tail_ids(tails)
        seqs = [self.tail_tok.prefix + x + self.tail_tok.suffix for x in ids]
        tag = f"{self.encoder_path}|tail|{self.tail_max_length}"
        stats = torch.tensor([tail_stats(x) for x in ids], dtype=torch.float32).reshape(len(ids), NUM_TAIL_STATS)
        return self._encode(seqs, self.tail_tok, tag, tails, cache), stats


def progress_feature(k, cap: int):
    """log1p(k) / log1p(cap): the head's view of how far the reply has got."""
    import torch

    return (torch.log1p(torch.as_tensor(k, dtype=torch.float32)) / math.log1p(cap)).reshape(-1, 1)


def assemble(prompt_feats, tail_feats, stats, k, cap: int, *, use_tail_stats: bool = True):
    import torch

    parts = [prompt_feats, tail_feats] + ([stats] if use_tail_stats else []) + [progress_feature(k, cap)]
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------- head

@dataclass
class RemainingConfig:
    """Options of ``proxy-model train-remaining``."""

    encoder: str = "minilm"
    tokenizer: str = "smollm2"
    points: list[int] = field(default_factory=lambda: list(DEFAULT_POINTS))
    random_per_reply: int = 3
    tail_tokens: int = DEFAULT_TAIL_TOKENS
    prompt_max_length: int = 128
    tail_max_length: int = 96
    use_tail_stats: bool = True
    # The head overfits fast (many examples per reply): chosen on the val split, see docs/proxy_model.md.
    hidden_size: int = 128
    dropout: float = 0.3
    epochs: int = 15
    learning_rate: float = 3e-4
    weight_decay: float = 0.05
    batch_size: int = 256
    rank_loss_weight: float = 0.5
    max_history_chars: int = DEFAULT_MAX_HISTORY_CHARS
    val_frac: float = 0.1
    test_frac: float = 0.2
    seed: int = 0
    cap: int | None = None
    limit: int | None = None
    bf16: str = "auto"

    def __post_init__(self):
        if not self.points or any(k < 0 for k in self.points) or sorted(set(self.points)) != list(self.points):
            raise ValueError(f"points must be distinct, increasing and >= 0, got {self.points}")
        for name in ("tail_tokens", "hidden_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.random_per_reply < 0:
            raise ValueError(f"random_per_reply must be >= 0, got {self.random_per_reply}")
        if min(self.prompt_max_length, self.tail_max_length) < 8:
            raise ValueError("prompt_max_length and tail_max_length must be >= 8")
        if not (0 <= self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise ValueError(f"need 0 <= val_frac, test_frac and their sum < 1, got {self.val_frac}, {self.test_frac}")
        if self.bf16 not in ("auto", "yes", "no"):
            raise ValueError(f"bf16 must be auto, yes or no, got {self.bf16!r}")
        if self.cap is not None and self.cap < 1:
            raise ValueError(f"cap must be >= 1, got {self.cap}")


class RemainingHead:
    """The proxy's censored ``LengthHead`` on standardised inputs; predicts the expected remaining
    length under the room ``cap - k`` (per row) and P(the reply hits the cap)."""

    def __init__(self, head_cfg, feature_mean, feature_std):
        from proxy_model.model import LengthModel

        self.cfg = head_cfg
        self.model = LengthModel(None, head_cfg)  # for its head, expected_tokens and rank_loss
        self.feature_mean, self.feature_std = feature_mean, feature_std

    def logits(self, x):
        import torch

        z = (x - self.feature_mean) / self.feature_std
        return self.model.head(z, torch.zeros(len(z), dtype=torch.long))

    def expected(self, logits, room):
        return self.model.expected_tokens(logits, room)

    def loss(self, logits, remaining, censored, room, rank_weight: float):
        import torch
        import torch.nn.functional as F

        c = censored.float()
        per_cap = F.binary_cross_entropy_with_logits(logits[:, 0].float(), c)
        fin = ~censored
        z = (torch.log1p(remaining.float()) - self.cfg.log_mean) / self.cfg.log_std
        per_len = ((logits[:, 1].float() - z) ** 2 * fin).sum() / fin.sum().clamp(min=1)
        loss = per_cap + per_len
        if rank_weight > 0:
            score = torch.log1p(self.expected(logits, room)).unsqueeze(1)
            y = torch.log1p(remaining.float()).unsqueeze(1)
            loss = loss + rank_weight * self.model.rank_loss(score, y, torch.ones_like(y, dtype=torch.bool))
        return loss

    def predict(self, x, room, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        import torch

        self.model.eval()
        preds, caps = [], []
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                lg = self.logits(x[s: s + batch_size])
                preds.append(self.expected(lg, room[s: s + batch_size]))
                caps.append(torch.sigmoid(lg[:, 0].float()))
        return torch.cat(preds).numpy().astype(float), torch.cat(caps).numpy().astype(float)

    def state(self) -> dict:
        state = {f"head.{k}": v.detach().float().contiguous() for k, v in self.model.head.state_dict().items()}
        return {**state, "feature_mean": self.feature_mean.contiguous(), "feature_std": self.feature_std.contiguous()}

    @classmethod
    def from_state(cls, head_cfg, state: dict) -> RemainingHead:
        out = cls(head_cfg, state["feature_mean"], state["feature_std"])
        out.model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        out.model.eval()
        return out


def fit_head(x, remaining, censored, room, cap: int, cfg: RemainingConfig, val=None) -> tuple[RemainingHead, dict]:
    """Fit a censored head on inputs ``x`` (n, d) with targets ``remaining`` (n,), ``censored`` (n,),
    ``room`` = cap - k (n,). ``val``: the same four for validation; the epoch with the lowest
    validation loss is kept (the last one without ``val``)."""
    import torch

    from proxy_model.config import HeadConfig

    remaining = torch.as_tensor(remaining, dtype=torch.float32)
    censored = torch.as_tensor(censored, dtype=torch.bool)
    room = torch.as_tensor(room, dtype=torch.float32)
    finished = remaining[~censored]
    if len(finished) == 0:
        raise ValueError("every training example is censored: no finished reply to fit the length of")
    logs = torch.log1p(finished)
    log_std = max(logs.std().item(), 1e-3) if len(logs) > 1 else 1.0
    # One served model: the head's single model row (<unk>) is the only one.
    head_cfg = HeadConfig(head="censored", hidden_size=cfg.hidden_size, dropout=cfg.dropout, encoder_dim=x.shape[1],
                          models=[], log_mean=float(logs.mean()), log_std=float(log_std), cap_values=[float(cap)])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
    torch.manual_seed(cfg.seed)
    head = RemainingHead(head_cfg, mean, std)
    opt = torch.optim.AdamW(head.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=max(steps, 1),
                                                pct_start=0.1)
    if val is not None:
        vx, vrem, vcens, vroom = val
        val = (vx, torch.as_tensor(vrem, dtype=torch.float32), torch.as_tensor(vcens, dtype=torch.bool),
               torch.as_tensor(vroom, dtype=torch.float32))
    history, best, best_state = [], math.inf, None
    for epoch in range(cfg.epochs):
        head.model.train()
        order = torch.randperm(len(x), generator=gen)
        total, n = 0.0, 0
        for s in range(0, len(x), cfg.batch_size):
            idx = order[s: s + cfg.batch_size]
            loss = head.loss(head.logits(x[idx]), remaining[idx], censored[idx], room[idx], cfg.rank_loss_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.model.parameters(), 1.0)
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        entry = {"epoch": epoch + 1, "loss": total / n}
        if val is not None and len(val[0]):
            head.model.eval()
            with torch.no_grad():
                # The rank term on the whole validation set at once would be n^2: score it in chunks.
                vl = [head.loss(head.logits(val[0][s: s + 1024]), val[1][s: s + 1024], val[2][s: s + 1024],
                                val[3][s: s + 1024], cfg.rank_loss_weight).item() for s in range(0, len(val[0]), 1024)]
            entry["val_loss"] = float(np.mean(vl))
            if entry["val_loss"] < best:
                best = entry["val_loss"]
                best_state = {k: v.clone() for k, v in head.model.state_dict().items()}
        history.append(entry)
    if best_state is not None:
        head.model.load_state_dict(best_state)
    head.model.eval()
    best_epoch = (min(history, key=lambda h: h.get("val_loss", math.inf))["epoch"] if best_state is not None
                  else cfg.epochs)
    return head, {"history": history, "best_epoch": best_epoch, "examples": len(x)}


# ---------------------------------------------------------------- metrics

def remaining_metrics(pred, remaining, censored, p_cap) -> dict:
    """Scores of one predictor on examples at one progress point (or pooled over several).

    ``remaining``: true remaining tokens (a censored example's is its lower bound, ``cap - k``).
    Returns rows, censored share, Kendall tau-b of pred vs remaining (all rows), MAE and median
    absolute error on finished rows, the mean underestimate of censored rows
    (``max(0, remaining - pred)``), and "hits the cap" accuracy / recall / precision of
    ``p_cap > 0.5`` next to the majority class's accuracy."""
    pred, remaining = np.asarray(pred, dtype=float), np.asarray(remaining, dtype=float)
    censored, p_cap = np.asarray(censored, dtype=bool), np.asarray(p_cap, dtype=float)
    if not (len(pred) == len(remaining) == len(censored) == len(p_cap)):
        raise ValueError("remaining_metrics: inputs differ in length")
    if len(pred) == 0:
        raise ValueError("remaining_metrics: no rows")
    fin = ~censored
    called = p_cap > 0.5
    return {
        "rows": int(len(pred)),
        "censored_share": float(censored.mean()),
        "kendall_tau": kendall_tau(pred, remaining),
        "mae_finished_tokens": float(np.mean(np.abs(pred[fin] - remaining[fin]))) if fin.any() else None,
        "median_ae_finished_tokens": float(np.median(np.abs(pred[fin] - remaining[fin]))) if fin.any() else None,
        "finished_rows": int(fin.sum()),
        "censored_underestimate_tokens": (float(np.mean(np.maximum(remaining[censored] - pred[censored], 0.0)))
                                          if censored.any() else None),
        "cap_accuracy": float(np.mean(called == censored)),
        "cap_recall": float(np.mean(called[censored])) if censored.any() else None,
        "cap_precision": float(np.mean(censored[called])) if called.any() else None,
        "majority_cap_accuracy": float(max(censored.mean(), 1 - censored.mean())),
    }


def evaluate_points(ks, remaining, censored, scored: dict[str, tuple], points: Sequence[int]) -> dict:
    """Per fixed point k (the examples cut there: replies still running) and pooled over all of them,
    :func:`remaining_metrics` of each scorer; ``scored``: name -> (predicted remaining, P(cap))."""
    ks = np.asarray(ks)
    remaining, censored = np.asarray(remaining, dtype=float), np.asarray(censored, dtype=bool)
    at_points = np.isin(ks, list(points))
    per_point = {}
    for k in points:
        sel = ks == k
        if sel.sum() < 2:
            continue
        per_point[str(k)] = {name: remaining_metrics(np.asarray(p)[sel], remaining[sel], censored[sel],
                                                     np.asarray(c)[sel]) for name, (p, c) in scored.items()}
    pooled = {name: remaining_metrics(np.asarray(p)[at_points], remaining[at_points], censored[at_points],
                                      np.asarray(c)[at_points]) for name, (p, c) in scored.items()} if at_points.sum() >= 2 else {}
    return {"per_point": per_point, "all_points": pooled}


# ---------------------------------------------------------------- train + evaluate

def _x(feat: Featurizer, replies, examples, prompt_feats, prompt_row, cache, cfg, cap):
    import torch

    tail_feats, stats = feat.tails([e.tail for e in examples], cache)
    pf = prompt_feats[torch.tensor([prompt_row[replies[e.reply].prompt] for e in examples], dtype=torch.long)]
    return assemble(pf, tail_feats, stats, [e.k for e in examples], cap, use_tail_stats=cfg.use_tail_stats)


def _targets(examples, cap):
    rem = np.asarray([e.remaining for e in examples], dtype=np.float32)
    cens = np.asarray([e.censored for e in examples], dtype=bool)
    room = np.asarray([max(cap - e.k, 1) for e in examples], dtype=np.float32)
    return rem, cens, room


def train_remaining(data_path: str | Path, out_dir: str | Path, cfg: RemainingConfig, *,
                    cache_path: str | Path | None = None, split: str = "test",
                    log: Callable[[str], None] | None = None) -> dict:
    """Examples, features, the remaining-length head and the prompt-only baseline; evaluation on
    ``split``. Writes the artifact (encoder, head, config) to ``out_dir``; returns the report."""
    import torch
    from safetensors.torch import save_file

    from proxy_model.engine import cpu_has_native_bf16
    from proxy_model.offline_models import resolve_model_name

    say = log or logger.info
    t0 = time.time()
    tok = ReplyTokenizer(cfg.tokenizer)
    replies, data_summary = read_replies(data_path, tok, max_history_chars=cfg.max_history_chars,
                                         val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed,
                                         limit=cfg.limit)
    cap = cfg.cap or cap_of(replies)
    by_split = {s: [i for i, r in enumerate(replies) if r.split == s] for s in ("train", "val", "test")}
    if not by_split["train"]:
        raise ValueError(f"{data_path}: no replies in the train split")
    if not by_split[split]:
        raise ValueError(f"{data_path}: no replies in the {split} split")
    examples = {
        "train": make_examples(replies, by_split["train"], tok, points=cfg.points,
                               random_per_reply=cfg.random_per_reply, tail_tokens=cfg.tail_tokens, seed=cfg.seed),
        "val": make_examples(replies, by_split["val"], tok, points=cfg.points, tail_tokens=cfg.tail_tokens),
        split: make_examples(replies, by_split[split], tok, points=cfg.points, tail_tokens=cfg.tail_tokens),
    }
    say(f"{len(replies)} replies (cap {cap}), examples: " + ", ".join(f"{s} {len(v)}" for s, v in examples.items()))

    enc_path, enc_kwargs = resolve_model_name(cfg.encoder)
    use_bf16 = cfg.bf16 == "yes" or (cfg.bf16 == "auto" and cpu_has_native_bf16())
    feat = Featurizer(enc_path, prompt_max_length=cfg.prompt_max_length, tail_max_length=cfg.tail_max_length,
                      encoder_kwargs=enc_kwargs, bf16=use_bf16)
    cache = FeatureCache(cache_path)
    t1 = time.time()
    prompts = sorted({r.prompt for r in replies})
    prompt_row = {p: i for i, p in enumerate(prompts)}
    prompt_feats = feat.prompts(prompts, cache)
    xs = {s: _x(feat, replies, ex, prompt_feats, prompt_row, cache, cfg, cap) for s, ex in examples.items()}
    cache.save()
    feature_seconds = time.time() - t1
    say(f"features in {feature_seconds:.0f}s")

    tr = _targets(examples["train"], cap)
    va = _targets(examples["val"], cap) if examples["val"] else None
    head, fit = fit_head(xs["train"], *tr, cap, cfg, val=(xs["val"], *va) if va is not None else None)
    say(f"remaining head: best epoch {fit['best_epoch']} of {cfg.epochs}")

    # Baseline: the same head on the prompt alone, trained on the k = 0 examples (the reply's total length).
    def prompt_only(split_name):
        exs = [e for e in examples[split_name] if e.k == 0]
        x = prompt_feats[torch.tensor([prompt_row[replies[e.reply].prompt] for e in exs], dtype=torch.long)]
        return x, _targets(exs, cap)

    bx, bt = prompt_only("train")
    bval = prompt_only("val") if examples["val"] else None
    base_head, base_fit = fit_head(bx, *bt, cap, cfg, val=(bval[0], *bval[1]) if bval and len(bval[0]) else None)
    say(f"prompt-only head: best epoch {base_fit['best_epoch']} of {cfg.epochs}")

    ev = examples[split]
    rem, cens, room = _targets(ev, cap)
    pred, p_cap = head.predict(xs[split], torch.as_tensor(room))
    # The baseline's total length and P(cap) per reply, from its prompt only.
    ev_prompts = prompt_feats[torch.tensor([prompt_row[replies[e.reply].prompt] for e in ev], dtype=torch.long)]
    total_pred, base_cap = base_head.predict(ev_prompts, torch.full((len(ev),), float(cap)))
    ks = np.asarray([e.k for e in ev])
    scored = {REMAINING: (pred, p_cap), BASELINE: (baseline_remaining(total_pred, ks), base_cap),
              BASELINE_UNCLIPPED: (total_pred - ks, base_cap)}
    report = {
        "data": str(data_path), "split": split, "cap": int(cap), "points": list(cfg.points),
        "baseline": ("prompt-only censored head on the same frozen encoder's prompt features, trained on the "
                     "k = 0 examples of the train split; predicted remaining = max(expected total - k, 0)"),
        "data_summary": data_summary,
        "examples": {s: len(v) for s, v in examples.items()},
        **evaluate_points(ks, rem, cens, scored, cfg.points),
        "config": asdict(cfg),
        "fit": {REMAINING: fit, BASELINE: base_fit},
        "feature_seconds": round(feature_seconds, 1), "seconds": round(time.time() - t0, 1),
    }
    report["tau"] = {name: {k: v[name]["kendall_tau"] for k, v in report["per_point"].items()} for name in scored}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    feat.encoder.save_pretrained(out_dir / ENCODER_DIR)
    feat.tokenizer.save_pretrained(out_dir / ENCODER_DIR)
    save_file(head.state(), str(out_dir / HEAD_WEIGHTS))
    doc = {"format_version": 1, "head": head.cfg.to_dict(), "cap": int(cap), "tail_tokens": cfg.tail_tokens,
           "prompt_max_length": cfg.prompt_max_length, "tail_max_length": cfg.tail_max_length,
           "use_tail_stats": cfg.use_tail_stats, "reply_tokenizer": cfg.tokenizer,
           "max_history_chars": cfg.max_history_chars, "encoder_source": cfg.encoder, "encoder_dir": ENCODER_DIR}
    (out_dir / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return report


def tau_table(report: dict) -> dict:
    """The numbers a simulator needs (no data rows): per-k tau of both predictors, rows per k and
    cap accuracy, from a :func:`train_remaining` report."""
    per = report["per_point"]
    return {
        "what": "Kendall tau-b of predicted vs true remaining output tokens, over the test replies still "
                "running after k generated tokens (docs/proxy_model.md, 'Remaining-length prediction')",
        "data": Path(report["data"]).name, "split": report["split"], "cap": report["cap"],
        "points": [int(k) for k in per],
        "rows": {k: v[REMAINING]["rows"] for k, v in per.items()},
        "censored_share": {k: round(v[REMAINING]["censored_share"], 4) for k, v in per.items()},
        "tau": {name: {k: round(v[name]["kendall_tau"], 4) for k, v in per.items()}
                for name in (REMAINING, BASELINE, BASELINE_UNCLIPPED)},
        "cap_accuracy": {name: {k: round(v[name]["cap_accuracy"], 4) for k, v in per.items()}
                         for name in (REMAINING, BASELINE)},
        "tau_all_points": {name: round(report["all_points"][name]["kendall_tau"], 4)
                           for name in (REMAINING, BASELINE, BASELINE_UNCLIPPED)} if report.get("all_points") else None,
    }


class RemainingPredictor:
    """A trained remaining-length artifact: ``predict(prompts, tails, ks) -> (remaining, P(cap))``.

    ``prompts``: proxy texts (``proxy_model.text.proxy_text``); ``tails``: the last ``tail_tokens``
    generated tokens, decoded; ``ks``: tokens generated so far."""

    def __init__(self, featurizer: Featurizer, head: RemainingHead, doc: dict):
        self.featurizer, self.head, self.doc = featurizer, head, doc
        self.cap = int(doc["cap"])
        self.tail_tokens = int(doc["tail_tokens"])

    @classmethod
    def load(cls, path: str | Path, *, bf16: bool = False) -> RemainingPredictor:
        from safetensors.torch import load_file

        from proxy_model.config import HeadConfig

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a remaining-length artifact: {CONFIG_FILE} is missing")
        doc = json.loads((path / CONFIG_FILE).read_text())
        if doc.get("format_version") != 1:
            raise ValueError(f"{path / CONFIG_FILE}: unsupported format_version {doc.get('format_version')!r}")
        feat = Featurizer(str(path / doc["encoder_dir"]), prompt_max_length=doc["prompt_max_length"],
                          tail_max_length=doc["tail_max_length"], bf16=bf16)
        head = RemainingHead.from_state(HeadConfig.from_dict(doc["head"]), load_file(str(path / HEAD_WEIGHTS)))
        return cls(feat, head, doc)

    def predict(self, prompts: Sequence[str], tails: Sequence[str], ks: Sequence[int]) -> tuple[list[float], list[float]]:
        import torch

        if not (len(prompts) == len(tails) == len(ks)):
            raise ValueError(f"got {len(prompts)} prompts, {len(tails)} tails and {len(ks)} ks; need one of each per request")
        if any(k < 0 for k in ks):
            raise ValueError("ks must be >= 0")
        if not prompts:
            return [], []
        uniq = sorted(set(prompts))
        row = {p: i for i, p in enumerate(uniq)}
        pf = self.featurizer.prompts(uniq)[torch.tensor([row[p] for p in prompts], dtype=torch.long)]
        tf, stats = self.featurizer.tails(list(tails))
        x = assemble(pf, tf, stats, list(ks), self.cap, use_tail_stats=self.doc["use_tail_stats"])
        room = torch.tensor([max(self.cap - k, 1) for k in ks], dtype=torch.float32)
        pred, p_cap = self.head.predict(x, room)
        return pred.tolist(), p_cap.tolist()
