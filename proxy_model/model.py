"""The proxy network: a BERT-like encoder, mean pooling, and a head conditioned on the target model.

Head: ``pooled -> dropout -> Linear(d, H) + model_embedding[m] -> GELU -> Linear(H, K)``. The
target LLM enters as a learned embedding added to the hidden layer, so one proxy serves several
LLMs and an unseen name uses row 0 (``<unk>``). Row 0 is trained on every reply of every model
(its loss compares it with each observed target), so it predicts a typical reply for the prompt.

Training examples are prompts, not (prompt, model) rows: the encoder runs once per prompt and
the head scores every model row at once (``targets`` holds one log length per model, NaN where
that model did not answer). With 15-19 models per prompt this is 15-19x less encoder work.

The censored head also takes ``capped`` (B, M): the fraction of a prompt's replies by that model
that hit the generation cap (NaN where none); its ``targets`` then hold the log length of the
FINISHED replies only (NaN where every reply was capped), since a capped reply's length is only a
lower bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from proxy_model.config import HeadConfig, HeadType
from proxy_model.pooling import pool

HEAD_WEIGHTS = "head.safetensors"
CONFIG_FILE = "proxy_config.json"
ENCODER_DIR = "encoder"


class LengthHead(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.encoder_dim, cfg.hidden_size)
        self.model_emb = nn.Embedding(cfg.num_model_rows, cfg.hidden_size)
        nn.init.normal_(self.model_emb.weight, std=0.02)
        self.out = nn.Linear(cfg.hidden_size, cfg.num_outputs)

    def forward(self, pooled: torch.Tensor, model_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M+1, K) scores for every model row, or (B, K) for the given row per prompt."""
        h = self.proj(self.dropout(pooled.float()))
        if model_ids is None:
            h = h.unsqueeze(1) + self.model_emb.weight.unsqueeze(0)
        else:
            h = h + self.model_emb(model_ids)
        return self.out(F.gelu(h))


class HeadEnsemble(nn.Module):
    """``cfg.members`` heads trained side by side, each on its own loss, answering with the mean of
    their logits; with ``cfg.feature_norm``, features are standardised first (the training
    features' mean and spread, kept as buffers). A decoder's hidden states have a few dimensions
    hundreds of times larger than the rest: unscaled, they swamp the head's first layer.

    Why members: on frozen features a head overfits within 2-3 epochs and single seeds land
    0.01 apart in Kendall tau; the mean of 5 is steadier and a little better (docs/proxy_model.md)."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList([LengthHead(cfg) for _ in range(cfg.members)])
        self.register_buffer("feat_mean", torch.zeros(cfg.encoder_dim))
        self.register_buffer("feat_std", torch.ones(cfg.encoder_dim))

    def set_feature_stats(self, features: torch.Tensor) -> None:
        self.feat_mean.copy_(features.float().mean(0))
        self.feat_std.copy_(features.float().std(0).clamp(min=1e-4))

    def forward(self, pooled: torch.Tensor, model_ids: torch.Tensor | None = None, each: bool = False) -> torch.Tensor:
        """The members' mean logits (shapes as ``LengthHead``), or all of them stacked first (``each``)."""
        x = pooled.float()
        if self.cfg.feature_norm:
            x = (x - self.feat_mean) / self.feat_std
        out = torch.stack([m(x, model_ids) for m in self.members])
        return out if each else out.mean(0)


def build_head(cfg: HeadConfig) -> nn.Module:
    """A single ``LengthHead`` (the layout of every artifact before members and feature norm), or
    a ``HeadEnsemble``."""
    return HeadEnsemble(cfg) if cfg.members > 1 or cfg.feature_norm else LengthHead(cfg)


class LengthModel(nn.Module):
    """Encoder + head (``build_head``). ``encoder`` may be None when training on cached pooled features."""

    def __init__(self, encoder: nn.Module | None, cfg: HeadConfig, rank_loss_weight: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.head = build_head(cfg)
        self.rank_loss_weight = rank_loss_weight

    def pool(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return pool(self.encoder, self.cfg.pooling, self.cfg.pool_layers, input_ids, attention_mask, token_type_ids)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, features=None, targets=None,
                capped=None):
        if features is None:
            if self.encoder is None:
                raise ValueError("this model has no encoder: pass cached 'features'")
            features = self.pool(input_ids, attention_mask, token_type_ids)
        if isinstance(self.head, HeadEnsemble):
            each = self.head(features, each=True)  # (E, B, M+1, K)
            logits = each.mean(0)
        else:
            each = None
            logits = self.head(features)  # (B, M+1, K)
        out = {"logits": logits}
        if targets is not None:
            if each is None:
                out["loss"] = self.loss(logits, targets, capped)
            else:  # each member learns on its own (the loss of the mean would train one wide head)
                out["loss"] = torch.stack([self.loss(e, targets, capped) for e in each]).mean()
        return out

    # ------------------------------------------------------------------ losses
    def loss(self, logits: torch.Tensor, targets: torch.Tensor, capped: torch.Tensor | None = None) -> torch.Tensor:
        """``targets``: (B, M) log1p(tokens) per known model, NaN where missing (censored head:
        finished replies only, and ``capped`` the fraction of replies at the cap, see the module doc)."""
        if self.cfg.head_type is HeadType.CENSORED:
            if capped is None:
                raise ValueError("the censored head's loss needs 'capped' (fraction of replies at the cap)")
            return self.censored_loss(logits, targets, capped)
        observed = ~torch.isnan(targets)
        y = torch.nan_to_num(targets)
        known = logits[:, 1:, :]
        # Row 0 (<unk>) faces every observed target of its prompt.
        unk = logits[:, :1, :].expand_as(known)
        head = self.cfg.head_type
        if head is HeadType.REGRESSION:
            z = (y - self.cfg.log_mean) / self.cfg.log_std
            per = (known[..., 0] - z) ** 2 + (unk[..., 0] - z) ** 2
        elif head is HeadType.CLASSES:
            edges = torch.tensor(self.cfg.bucket_edges, dtype=y.dtype, device=y.device)
            cls = torch.bucketize(torch.expm1(y), edges, right=False)  # edges[i-1] < t <= edges[i]
            k = known.shape[-1]
            per = (F.cross_entropy(known.reshape(-1, k).float(), cls.reshape(-1), reduction="none")
                   + F.cross_entropy(unk.reshape(-1, k).float(), cls.reshape(-1), reduction="none")).view_as(y)
        else:
            thr = torch.tensor(self.cfg.binary_thresholds[1:], dtype=y.dtype, device=y.device)
            label = (torch.expm1(y) > thr).to(y.dtype)
            per = (F.binary_cross_entropy_with_logits(known[..., 0].float(), label, reduction="none")
                   + F.binary_cross_entropy_with_logits(unk[..., 0].float(), label, reduction="none"))
        loss = (per * observed).sum() / observed.sum().clamp(min=1)
        if self.rank_loss_weight > 0:
            loss = loss + self.rank_loss_weight * self.rank_loss(self.score(known), y, observed)
        return loss

    def censored_loss(self, logits: torch.Tensor, targets: torch.Tensor, capped: torch.Tensor) -> torch.Tensor:
        """Cap probability (logistic) on every reply + log-length regression on finished replies only
        (+ the pairwise rank loss on the expected length, a capped reply ranking above every finished one)."""
        has_reply = ~torch.isnan(capped)
        has_finished = ~torch.isnan(targets)
        c = torch.nan_to_num(capped).float()
        y = torch.nan_to_num(targets).float()
        known, unk = logits[:, 1:, :].float(), logits[:, :1, :].float()
        unk = unk.expand_as(known)
        per_cap = (F.binary_cross_entropy_with_logits(known[..., 0], c, reduction="none")
                   + F.binary_cross_entropy_with_logits(unk[..., 0], c, reduction="none"))
        z = (y - self.cfg.log_mean) / self.cfg.log_std
        per_len = (known[..., 1] - z) ** 2 + (unk[..., 1] - z) ** 2
        loss = ((per_cap * has_reply).sum() / has_reply.sum().clamp(min=1)
                + (per_len * has_finished).sum() / has_finished.sum().clamp(min=1))
        if self.rank_loss_weight > 0:
            cap = self._caps(logits.device)[1:]
            # What the engine emits: the cap for a capped reply, the length for a finished one.
            y_rank = c * torch.log1p(cap) + (1 - c) * y
            score = torch.log1p(self.expected_tokens(known, cap))
            loss = loss + self.rank_loss_weight * self.rank_loss(score, y_rank, has_reply)
        return loss

    def _caps(self, device) -> torch.Tensor:
        return torch.tensor(self.cfg.cap_values, dtype=torch.float32, device=device)

    def expected_tokens(self, logits: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        """Censored head: ``P(cap) * cap + (1 - P(cap)) * min(finished length, cap)`` ((..., 2) -> (...)),
        ``cap`` broadcast against the leading dimensions. Differentiable (the rank loss uses it)."""
        p = torch.sigmoid(logits[..., 0].float())
        finished = torch.expm1(self.cfg.log_mean + self.cfg.log_std * logits[..., 1].float()).clamp(min=0.0)
        return p * cap + (1 - p) * torch.minimum(finished, cap)

    @torch.no_grad()
    def cap_probability(self, logits: torch.Tensor) -> torch.Tensor | None:
        """P(the reply hits the cap) per row for the censored head; None for heads that have no such output."""
        if self.cfg.head_type is not HeadType.CENSORED:
            return None
        return torch.sigmoid(logits[..., 0].float())

    @staticmethod
    def rank_loss(score: torch.Tensor, y: torch.Tensor, observed: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
        """Pairwise logistic loss between prompts of the batch, within each model (column)."""
        ds = score.unsqueeze(0) - score.unsqueeze(1)  # (B, B, M)
        dy = y.unsqueeze(0) - y.unsqueeze(1)
        pair = observed.unsqueeze(0) & observed.unsqueeze(1) & (dy.abs() > margin)
        if not pair.any():
            return score.sum() * 0.0
        return F.softplus(-torch.sign(dy) * ds)[pair].mean()

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """A monotone score per row: higher means a longer reply ((..., K) -> (...))."""
        head = self.cfg.head_type
        if head is HeadType.REGRESSION:
            return logits[..., 0].float()
        if head is HeadType.BINARY:
            return logits[..., 0].float()
        if head is HeadType.CENSORED:
            raise ValueError("the censored head's score needs each row's cap: use expected_tokens")
        values = torch.tensor(self.cfg.bucket_values, dtype=torch.float32, device=logits.device)
        return (logits.float().softmax(-1) * torch.log(values)).sum(-1)

    @torch.no_grad()
    def tokens(self, logits: torch.Tensor, model_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted output tokens from per-row logits ((B, K) with ``model_ids`` (B,))."""
        cfg = self.cfg
        head = cfg.head_type
        logits = logits.float()
        if head is HeadType.REGRESSION:
            return torch.expm1(cfg.log_mean + cfg.log_std * logits[..., 0]).clamp(min=0.0)
        if head is HeadType.CLASSES:
            values = torch.tensor(cfg.bucket_values, dtype=torch.float32, device=logits.device)
            # Geometric mean of bucket values weighted by probability: smooth, so it ranks well.
            return torch.exp((logits.softmax(-1) * torch.log(values)).sum(-1))
        if head is HeadType.CENSORED:
            return self.expected_tokens(logits, self._caps(logits.device)[model_ids])
        p = torch.sigmoid(logits[..., 0])
        short = torch.tensor(cfg.binary_short_values, dtype=torch.float32, device=logits.device)[model_ids]
        long = torch.tensor(cfg.binary_long_values, dtype=torch.float32, device=logits.device)[model_ids]
        return torch.exp(p * torch.log(long) + (1 - p) * torch.log(short))

    # --------------------------------------------------------------- save/load
    def save(self, path: str | Path, tokenizer=None, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.encoder is not None:
            self.encoder.save_pretrained(path / ENCODER_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(path / ENCODER_DIR)
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(state, str(path / HEAD_WEIGHTS))
        doc = {"format_version": 1, "head": self.cfg.to_dict(), "pooling": "mean", "encoder_dir": ENCODER_DIR}
        doc.update(extra or {})
        (path / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path, *, with_encoder: bool = True) -> tuple[LengthModel, object, dict]:
        """(model in eval mode, tokenizer or None, the artifact's config document)."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{path} is not a proxy artifact: {CONFIG_FILE} is missing")
        doc = json.loads(cfg_path.read_text())
        if doc.get("format_version") != 1:
            raise ValueError(f"{cfg_path}: unsupported format_version {doc.get('format_version')!r}")
        cfg = HeadConfig.from_dict(doc["head"])
        encoder = tokenizer = None
        if with_encoder:
            from transformers import AutoModel, AutoTokenizer

            enc_dir = path / doc.get("encoder_dir", ENCODER_DIR)
            encoder = AutoModel.from_pretrained(enc_dir)
            tokenizer = AutoTokenizer.from_pretrained(enc_dir)
        model = cls(encoder, cfg)
        model.head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
        model.eval()
        return model, tokenizer, doc
