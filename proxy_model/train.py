"""``proxy-model train``: fit encoder + head with the transformers Trainer and write an artifact.

- Examples are prompts with one target per known model (see ``proxy_model.model``).
- ``freeze_encoder``: the encoder's pooled outputs are computed once per prompt (no grad, bf16
  where the CPU has it) and cached; the Trainer then fits only the head on those features, which
  takes seconds on a CPU. Otherwise the whole encoder is fine-tuned (encoder and head have their
  own learning rates).
- ``deepspeed``: a DeepSpeed config path handed to ``TrainingArguments(deepspeed=...)`` as is,
  for GPU clusters (see configs/deepspeed_zero2.json).

Artifact layout (``out_dir``): ``encoder/`` (weights + tokenizer, HF format), ``head.safetensors``,
``proxy_config.json`` (head type, model names, normalisation, bucket edges and values, binary
thresholds, truncation), ``training_summary.json`` (rows, prompts, per-model and per-source
counts and length statistics, the resolved train config, losses, time).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from proxy_model.config import HeadConfig, TrainConfig
from proxy_model.data import max_history_chars_of, read_prepared
from proxy_model.engine import SUMMARY_FILE, Tokenize, cpu_has_native_bf16
from proxy_model.model import LengthModel
from proxy_model.offline_models import resolve_model_name
from proxy_model.pooling import default_layers, pool, pooled_dim

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- examples

def group_by_prompt(prompts: list[str], models: list[str], tokens: list[int], known: list[str],
                    capped: list[bool] | None = None):
    """(unique prompts, targets (P, M) of mean log1p(tokens), NaN where a model has no reply).

    With ``capped`` (one flag per row: the reply hit the generation cap), for the censored head:
    (unique prompts, targets of mean log1p(tokens) over FINISHED replies only (NaN where none
    finished), fraction of replies at the cap (P, M), NaN where a model has no reply).
    """
    col = {m: i for i, m in enumerate(known)}
    flags = capped if capped is not None else [False] * len(prompts)
    sums: dict[str, dict[int, list[tuple[float, bool]]]] = defaultdict(lambda: defaultdict(list))
    for p, m, t, c in zip(prompts, models, tokens, flags, strict=True):
        if m in col:
            sums[p][col[m]].append((math.log1p(t), bool(c)))
    uniq = list(sums)
    targets = np.full((len(uniq), len(known)), np.nan, dtype=np.float32)
    cap_frac = np.full((len(uniq), len(known)), np.nan, dtype=np.float32)
    for i, p in enumerate(uniq):
        for j, vals in sums[p].items():
            finished = [v for v, c in vals if not c]
            cap_frac[i, j] = sum(c for _, c in vals) / len(vals)
            if capped is None:
                targets[i, j] = float(np.mean([v for v, _ in vals]))
            elif finished:
                targets[i, j] = float(np.mean(finished))
    if capped is None:
        return uniq, targets
    return uniq, targets, cap_frac


class PromptDataset(Dataset):
    def __init__(self, targets: np.ndarray, ids: list[list[int]] | None = None, features: torch.Tensor | None = None,
                 capped: np.ndarray | None = None):
        self.targets = torch.from_numpy(targets)
        self.capped = torch.from_numpy(capped) if capped is not None else None
        self.ids, self.features = ids, features

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        item = {"targets": self.targets[i]}
        if self.capped is not None:
            item["capped"] = self.capped[i]
        if self.features is not None:
            item["features"] = self.features[i]
        else:
            item["input_ids"] = self.ids[i]
        return item


class Collate:
    def __init__(self, tok: Tokenize | None):
        self.tok = tok

    def __call__(self, items):
        batch = {"targets": torch.stack([it["targets"] for it in items])}
        if "capped" in items[0]:
            batch["capped"] = torch.stack([it["capped"] for it in items])
        if "features" in items[0]:
            batch["features"] = torch.stack([it["features"] for it in items])
        else:
            batch.update(self.tok.pad([it["input_ids"] for it in items]))
        return batch


# ---------------------------------------------------------------- head statistics

def head_statistics(cfg: TrainConfig, models: list[str], tokens: np.ndarray, model_of_row: np.ndarray,
                    capped: np.ndarray | None = None) -> dict:
    """Normalisation, bucket edges/values and binary thresholds from the training rows; for the
    censored head (``capped``: a flag per row), the log normalisation of the finished rows and the
    cap of each model row."""
    censored = cfg.head == "censored"
    if censored:
        if capped is None:
            raise ValueError("the censored head needs each row's 'finished' flag")
        if capped.all():
            raise ValueError("the censored head needs finished replies to fit their length; every row hit the cap")
    logs = np.log1p(tokens[~capped] if censored else tokens)
    out = {"log_mean": float(logs.mean()), "log_std": float(max(logs.std(), 1e-3))}
    if censored:
        out["cap_values"] = cap_values(len(models), tokens, model_of_row, capped)
    edges = sorted(cfg.bucket_edges) or sorted({float(round(q)) for q in
                                                np.quantile(tokens, np.linspace(0, 1, cfg.num_buckets + 1)[1:-1])})
    edges = [e for e in edges if e > 0]
    idx = np.searchsorted(np.asarray(edges), tokens, side="left")
    values = []
    for b in range(len(edges) + 1):
        in_b = tokens[idx == b]
        if len(in_b):
            values.append(float(np.median(in_b)))
        else:  # an empty bucket: its midpoint (or an edge) keeps the expectation well defined
            lo = edges[b - 1] if b > 0 else 1.0
            hi = edges[b] if b < len(edges) else lo * 2
            values.append(float((lo + hi) / 2))
    out["bucket_edges"], out["bucket_values"] = [float(e) for e in edges], [max(v, 1.0) for v in values]
    thr, short, long = [], [], []
    for j in range(len(models) + 1):
        t = tokens if j == 0 else tokens[model_of_row == j - 1]
        med = float(np.median(t))
        s, lo = t[t <= med], t[t > med]
        thr.append(med)
        short.append(float(max(np.median(s) if len(s) else med, 1.0)))
        long.append(float(max(np.median(lo) if len(lo) else med * 2, 1.0)))
    out.update(binary_thresholds=thr, binary_short_values=short, binary_long_values=long)
    return out


def cap_values(num_models: int, tokens: np.ndarray, model_of_row: np.ndarray, capped: np.ndarray) -> list[float]:
    """The generation cap of each model row (index 0: <unk>): the largest length among that model's
    capped replies (collect records a capped reply at the cap). A model none of whose training
    replies hit a cap gets its longest reply (P(cap) learns ~0 there, so the value barely counts);
    <unk> gets the median of the models' caps."""
    caps = []
    for j in range(num_models):
        mine = model_of_row == j
        hit = tokens[mine & capped]
        caps.append(float(max(hit.max() if len(hit) else tokens[mine].max(), 1.0)))
    return [float(np.median(caps))] + caps


# ---------------------------------------------------------------- init from an artifact

def load_init(path: str | Path, cfg: TrainConfig) -> dict:
    """An artifact to start from (``--init-from``): its encoder directory, head config and weights.

    Use: fine-tune a general proxy (trained on many LLMs' logs) on the few replies of the model a
    team serves. The head type and width must match; models are matched by name.
    """
    from proxy_model.model import ENCODER_DIR

    model, _, doc = LengthModel.load(path, with_encoder=False)
    init_cfg = model.cfg
    if init_cfg.head != cfg.head or init_cfg.hidden_size != cfg.hidden_size:
        raise ValueError(f"--init-from {path}: its head is {init_cfg.head} x {init_cfg.hidden_size}, "
                         f"this run asks for {cfg.head} x {cfg.hidden_size}")
    return {"encoder_path": str(Path(path) / doc.get("encoder_dir", ENCODER_DIR)), "cfg": init_cfg,
            "state": model.head.state_dict()}


def copy_head(init: dict, head) -> int:
    """Copy the init head into ``head``; model rows by name, new models start from the ``<unk>`` row."""
    state = dict(init["state"])
    old_rows = state.pop("model_emb.weight")
    if state["out.weight"].shape != head.out.weight.shape:
        raise ValueError(f"--init-from: output shape {tuple(state['out.weight'].shape)} != "
                         f"{tuple(head.out.weight.shape)} (bucket count differs)")
    head.load_state_dict(state, strict=False)
    old_index = {m: i + 1 for i, m in enumerate(init["cfg"].models)}
    copied = 0
    with torch.no_grad():
        head.model_emb.weight[0] = old_rows[0]
        for j, m in enumerate(head.cfg.models):
            i = old_index.get(m)
            head.model_emb.weight[j + 1] = old_rows[i if i is not None else 0]
            copied += i is not None
    return copied


# ---------------------------------------------------------------- trainer

def _trainer_class():
    from transformers import Trainer

    class ProxyTrainer(Trainer):
        """Trainer with two learning rates: a small one for the encoder, a larger one for the head."""

        head_lr: float = 1e-3

        def create_optimizer(self, *args, **kwargs):
            if self.optimizer is None:
                enc = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("head.")]
                head = [p for n, p in self.model.named_parameters() if p.requires_grad and n.startswith("head.")]
                groups = [{"params": head, "lr": self.head_lr, "weight_decay": self.args.weight_decay}]
                if enc:
                    groups.append({"params": enc, "lr": self.args.learning_rate, "weight_decay": self.args.weight_decay})
                self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
            return self.optimizer

    return ProxyTrainer


def encode_features(encoder, tok: Tokenize, ids: list[list[int]], batch_size: int = 64, bf16: bool = False,
                    pooling: str = "mean", layers: list[int] = ()) -> torch.Tensor:
    """Pooled encoder outputs for every prompt (frozen encoder: computed once, cached)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), pooled_dim(pooling, encoder.config.hidden_size, list(layers)))
    encoder.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            b = tok.pad([ids[i] for i in idx])
            out[idx] = pool(encoder, pooling, list(layers), b["input_ids"], b["attention_mask"]).float()
    return out


def train(data_path: str | Path, out_dir: str | Path, cfg: TrainConfig, *, progress: bool = True) -> dict:
    from transformers import AutoModel, AutoTokenizer, TrainingArguments, set_seed

    t_start = time.time()
    set_seed(cfg.seed)
    table = read_prepared(data_path)
    if "split" in table.column_names:
        splits = table.column("split").to_pylist()
    else:
        splits = ["train"] * table.num_rows
    cols = {c: table.column(c).to_pylist() for c in ("prompt", "model", "output_tokens")}
    sources = table.column("source").to_pylist() if "source" in table.column_names else ["?"] * table.num_rows
    rows = [i for i, s in enumerate(splits) if s == "train" and (not cfg.sources or sources[i] in cfg.sources)]
    if cfg.max_train_rows is not None:
        rows = rows[: cfg.max_train_rows]
    if not rows:
        raise ValueError(f"{data_path}: no training rows (split == 'train'"
                         + (f", sources {cfg.sources}" if cfg.sources else "") + ")")
    val_rows = [i for i, s in enumerate(splits) if s == "val" and (not cfg.sources or sources[i] in cfg.sources)]
    models = sorted({cols["model"][i] for i in rows})
    mcol = {m: j for j, m in enumerate(models)}
    tokens = np.asarray([cols["output_tokens"][i] for i in rows], dtype=np.float64)
    if np.any(tokens < 0):
        raise ValueError("output_tokens must be >= 0")
    finished = table.column("finished").to_pylist() if "finished" in table.column_names else [None] * table.num_rows
    # A row is censored only when its log says so (finished false); unknown (null) counts as finished.
    capped_all = [f is False for f in finished]
    censored = cfg.head == "censored"
    if censored and not any(capped_all[i] for i in rows):
        logger.warning("censored head: no training row is marked finished=false; P(cap) will learn ~0")
    capped = np.asarray([capped_all[i] for i in rows], dtype=bool)
    stats = head_statistics(cfg, models, tokens, np.asarray([mcol[cols["model"][i]] for i in rows]), capped)

    init = load_init(cfg.init_from, cfg) if cfg.init_from else None
    if init is not None:
        enc_path, enc_kwargs = init["encoder_path"], {}
        if cfg.head in ("regression", "censored"):  # keep the init head's output scale, so its weights keep their meaning
            stats.update(log_mean=init["cfg"].log_mean, log_std=init["cfg"].log_std)
    else:
        enc_path, enc_kwargs = resolve_model_name(cfg.encoder)
    tokenizer = AutoTokenizer.from_pretrained(enc_path, **enc_kwargs)
    model_kwargs = dict(enc_kwargs)
    if "gguf_file" in model_kwargs:
        # A GGUF encoder (e.g. the served SmolLM2 itself) loads dense: a quantized model can be
        # neither cast to fp32 nor fine-tuned, and the artifact saves plain weights.
        from transformers import GgufConfig

        model_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    encoder = AutoModel.from_pretrained(enc_path, **model_kwargs)
    decoder = cfg.pooling == "last-layers"
    layers = (list(cfg.pool_layers) or default_layers(encoder.config.num_hidden_layers)) if decoder else []
    head_cfg = HeadConfig(head=cfg.head, hidden_size=cfg.hidden_size, dropout=cfg.dropout,
                          encoder_dim=pooled_dim(cfg.pooling, encoder.config.hidden_size, layers), models=models,
                          max_length=cfg.max_length, max_history_chars=max_history_chars_of(table),
                          pooling=cfg.pooling, pool_layers=layers, chat_template=decoder,
                          feature_norm=decoder and cfg.freeze_encoder, members=cfg.members, **stats)
    if cfg.head == "classes" and not head_cfg.bucket_edges:
        raise ValueError("could not derive bucket edges from the training data; pass --bucket-edges")
    tok = Tokenize(tokenizer, cfg.max_length, head_cfg.chat_template)

    def dataset(idx: list[int]):
        grouped = group_by_prompt([cols["prompt"][i] for i in idx], [cols["model"][i] for i in idx],
                                  [cols["output_tokens"][i] for i in idx], models,
                                  [capped_all[i] for i in idx] if censored else None)
        return grouped if censored else (*grouped, None)

    train_prompts, train_targets, train_capped = dataset(rows)
    val_prompts, val_targets, val_capped = dataset(val_rows) if val_rows else ([], None, None)
    use_bf16 = cfg.bf16 == "yes" or (cfg.bf16 == "auto" and (torch.cuda.is_available() or cpu_has_native_bf16()))
    logger.info("training on %d rows = %d prompts x %d models (val: %d prompts)", len(rows), len(train_prompts),
                len(models), len(val_prompts))
    train_ids, val_ids = tok(train_prompts), tok(val_prompts) if val_prompts else []
    if cfg.freeze_encoder:
        t0 = time.time()
        def features(ids):
            return encode_features(encoder, tok, ids, bf16=use_bf16, pooling=cfg.pooling, layers=layers)

        train_feats = features(train_ids)
        val_feats = features(val_ids) if val_ids else None
        logger.info("cached encoder features for %d prompts in %.1fs", len(train_ids) + len(val_ids), time.time() - t0)
        train_ds = PromptDataset(train_targets, features=train_feats, capped=train_capped)
        val_ds = PromptDataset(val_targets, features=val_feats, capped=val_capped) if val_ids else None
        model = LengthModel(None, head_cfg, rank_loss_weight=cfg.rank_loss_weight)
        if head_cfg.feature_norm:
            model.head.set_feature_stats(train_feats)
    else:
        train_ds = PromptDataset(train_targets, ids=train_ids, capped=train_capped)
        val_ds = PromptDataset(val_targets, ids=val_ids, capped=val_capped) if val_ids else None
        model = LengthModel(encoder, head_cfg, rank_loss_weight=cfg.rank_loss_weight)
    if init is not None:
        copied = copy_head(init, model.head)
        logger.info("initialised from %s: %d of %d model rows carried over", cfg.init_from, copied, len(models))

    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    out_dir = Path(out_dir)
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer_work"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 64),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 4),
        eval_strategy="epoch" if val_ds is not None else "no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=not progress,
        bf16=use_bf16 and not cfg.freeze_encoder,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        # Grouping needs token ids to measure; cached features have no length to group by.
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.freeze_encoder else "random",
        label_names=["targets"],
        seed=cfg.seed,
        dataloader_num_workers=0,
        deepspeed=cfg.deepspeed,
        max_grad_norm=1.0,
    )
    trainer_cls = _trainer_class()
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=Collate(tok))
    trainer.head_lr = cfg.head_learning_rate
    result = trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]

    model = trainer.model.float() if hasattr(trainer.model, "float") else model
    if cfg.freeze_encoder:
        final = LengthModel(encoder.float(), head_cfg)
        final.head.load_state_dict(model.head.state_dict())
    else:
        final = model
    final.eval()
    per_model = defaultdict(list)
    per_model_capped = defaultdict(list)
    per_source = defaultdict(int)
    for i in rows:
        per_model[cols["model"][i]].append(cols["output_tokens"][i])
        per_model_capped[cols["model"][i]].append(capped_all[i])
        per_source[sources[i]] += 1
    summary = {
        "train_rows": len(rows), "train_prompts": len(train_prompts), "val_prompts": len(val_prompts),
        "models": models, "rows_per_model": {m: len(v) for m, v in per_model.items()},
        "rows_per_source": dict(per_source),
        "median_tokens": float(np.median(tokens)), "mean_tokens": float(np.mean(tokens)),
        "median_tokens_per_model": {m: float(np.median(v)) for m, v in per_model.items()},
        "mean_tokens_per_model": {m: float(np.mean(v)) for m, v in per_model.items()},
        "cap_fraction": float(capped.mean()),
        "cap_fraction_per_model": {m: float(np.mean(v)) for m, v in per_model_capped.items()},
        "data": str(data_path), "train_config": cfg.to_dict(),
        "train_loss": float(result.training_loss), "train_seconds": round(time.time() - t_start, 1),
        "log_history": history, "bf16_training": bool(use_bf16 and not cfg.freeze_encoder),
    }
    final.save(out_dir, tokenizer=tokenizer, extra={"encoder_source": str(cfg.encoder)})
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    import shutil

    shutil.rmtree(out_dir / "trainer_work", ignore_errors=True)
    return summary
