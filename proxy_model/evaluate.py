"""``proxy-model evaluate``: the proxy against two baselines on one split of a prepared table.

Baselines (fitted on the table's ``train`` split when it has one, else on the artifact's summary):
- ``per_model_mean``: every request predicted its model's mean training length (orders nothing
  within a model, so its within-model tau is 0 by construction);
- ``prompt_length``: ``HeuristicPredictor`` with ``base + ratio * prompt_tokens`` fitted by least
  squares on the training rows.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from proxy_model.data import read_prepared
from proxy_model.metrics import DEFAULT_EDGES, length_metrics
from proxy_model.predictor import ConstantPredictor, HeuristicPredictor
from proxy_model.text import approx_tokens


def fit_baselines(train_prompts, train_models, train_tokens) -> dict:
    tokens = np.asarray(train_tokens, dtype=float)
    per = defaultdict(list)
    for m, t in zip(train_models, tokens, strict=True):
        per[m].append(t)
    mean = ConstantPredictor(float(tokens.mean()), per_model={m: float(np.mean(v)) for m, v in per.items()})
    x = np.asarray([approx_tokens(p) for p in train_prompts], dtype=float)
    a = np.c_[np.ones_like(x), x]
    base, ratio = np.linalg.lstsq(a, tokens, rcond=None)[0]
    heur = HeuristicPredictor(ratio=max(0.0, float(ratio)), base=max(0.0, float(base)))
    return {"per_model_mean": mean, "prompt_length": heur}


def evaluate(artifact: str, data_path: str, *, split: str = "test", batch_size: int = 64, dtype: str = "auto",
             bucket_edges=DEFAULT_EDGES, by_source: bool = True) -> dict:
    from proxy_model.predictor import LengthPredictor

    table = read_prepared(data_path)
    has_split = "split" in table.column_names
    eval_t = read_prepared(data_path, (split,)) if has_split else table
    if eval_t.num_rows == 0:
        raise ValueError(f"{data_path}: no rows in split {split!r}")
    prompts = eval_t.column("prompt").to_pylist()
    models = eval_t.column("model").to_pylist()
    truth = np.asarray(eval_t.column("output_tokens").to_pylist(), dtype=float)
    sources = eval_t.column("source").to_pylist() if "source" in eval_t.column_names else ["all"] * len(prompts)

    predictor = LengthPredictor.load(artifact, timeout_s=None, batch_size=batch_size, dtype=dtype)
    # Each distinct prompt is encoded once per model it is asked for; dedupe (prompt, model) pairs.
    pairs = sorted(set(zip(prompts, models, strict=True)))
    t0 = time.perf_counter()
    values = predictor.predict([p for p, _ in pairs], [m for _, m in pairs])
    seconds = time.perf_counter() - t0
    lookup = dict(zip(pairs, values, strict=True))
    pred = np.asarray([lookup[(p, m)] for p, m in zip(prompts, models, strict=True)])

    if has_split and split != "train":
        train_t = read_prepared(data_path, ("train",))
    else:
        train_t = None
    if train_t is not None and train_t.num_rows:
        baselines = fit_baselines(train_t.column("prompt").to_pylist(), train_t.column("model").to_pylist(),
                                  train_t.column("output_tokens").to_pylist())
        baseline_fit = "train split of the evaluated table"
    else:
        summary = predictor._engine.doc.get("summary") or {}
        baselines = {"per_model_mean": ConstantPredictor(summary.get("mean_tokens", 128.0),
                                                         per_model=summary.get("mean_tokens_per_model")),
                     "prompt_length": HeuristicPredictor()}
        baseline_fit = "artifact training summary / defaults"
    base_pred = {name: np.asarray(b.predict(prompts, models)) for name, b in baselines.items()}

    def block(mask=None):
        sel = np.ones(len(truth), bool) if mask is None else mask
        ms = [models[i] for i in np.flatnonzero(sel)]
        out = {"proxy": length_metrics(pred[sel], truth[sel], ms, bucket_edges=bucket_edges)}
        for name, bp in base_pred.items():
            out[name] = length_metrics(bp[sel], truth[sel], ms, bucket_edges=bucket_edges)
        return out

    report = {
        "artifact": str(artifact), "data": str(data_path), "split": split, "rows": int(len(truth)),
        "prompts": len(set(prompts)), "head": predictor.config["head"], "dtype": predictor.config["dtype"],
        "baseline_fit": baseline_fit, "predict_seconds": round(seconds, 2),
        "unknown_model_rows": int(sum(1 for m in models if m not in set(predictor.known_models))),
        "all": block(),
    }
    if by_source and len(set(sources)) > 1:
        src = np.asarray(sources, dtype=object)
        report["by_source"] = {s: block(src == s) for s in sorted(set(sources))}
    return report


HEADLINE = ("kendall_tau_within_model", "spearman_within_model", "kendall_tau", "spearman", "binary_accuracy",
            "binary_accuracy_within_model", "bucket_accuracy", "mae_tokens")


def format_report(report: dict) -> str:
    lines = [f"{report['artifact']} on {report['data']} split={report['split']}: {report['rows']} rows, "
             f"{report['prompts']} prompts, head={report['head']}, dtype={report['dtype']}"]

    def table(name, block):
        names = list(block)
        lines.append(f"\n[{name}]  " + "  ".join(f"{n:>16}" for n in names))
        for key in HEADLINE:
            vals = [block[n][key] for n in names]
            lines.append(f"{key:>30}  " + "  ".join(f"{v:16.3f}" if v is not None else f"{'-':>16}" for v in vals))

    table("all", report["all"])
    for s, block in (report.get("by_source") or {}).items():
        table(s, block)
    return "\n".join(lines)
