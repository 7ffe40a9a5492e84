"""``proxy-model evaluate``: the proxy against two baselines on one split of a prepared table.

Baselines (fitted on the table's ``train`` split when it has one, else on the artifact's summary):
- ``per_model_mean``: every request predicted its model's mean training length (orders nothing
  within a model, so its within-model tau is 0 by construction);
- ``prompt_length``: ``HeuristicPredictor`` with ``base + ratio * prompt_tokens`` fitted by least
  squares on the training rows;
- optionally other artifacts (``baseline_artifacts``, e.g. the general proxy trained on other LLMs).

Where the table says which replies hit the generation cap (``finished`` false), "hits the cap"
accuracy is reported too: the proxy's P(cap) where its head is censored; the two fitted baselines
predict their model's majority class on the training rows; a predictor without P(cap) says
"capped" when its predicted tokens reach the cap. A ``finished`` block scores the finished replies alone.
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


def model_caps(models, tokens, capped) -> dict[str, float]:
    """The generation cap of each model in the logs: its longest capped reply (collect records a
    capped reply at the cap); models with no capped reply are absent."""
    caps: dict[str, float] = {}
    for m, t, c in zip(models, tokens, capped, strict=True):
        if c:
            caps[m] = max(caps.get(m, 0.0), float(t))
    return caps


def evaluate(artifact: str, data_path: str, *, split: str = "test", batch_size: int = 64, dtype: str = "auto",
             bucket_edges=DEFAULT_EDGES, by_source: bool = True, baseline_artifacts: dict[str, str] | None = None) -> dict:
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
    flags = eval_t.column("finished").to_pylist() if "finished" in eval_t.column_names else [None] * len(prompts)
    # Cap metrics only where the logs say which replies hit the cap; null counts as finished.
    has_caps = any(f is False for f in flags)
    capped = np.asarray([f is False for f in flags]) if has_caps else None
    if has_caps:
        all_flags = table.column("finished").to_pylist()
        caps_of = model_caps(table.column("model").to_pylist(), table.column("output_tokens").to_pylist(),
                             [f is False for f in all_flags])
        caps = np.asarray([caps_of.get(m, np.inf) for m in models])
    else:
        caps = None
    # Each distinct prompt is encoded once per model it is asked for; dedupe (prompt, model) pairs.
    pairs = sorted(set(zip(prompts, models, strict=True)))

    def run_artifact(path):
        pred_ = LengthPredictor.load(path, timeout_s=None, batch_size=batch_size, dtype=dtype)
        t0 = time.perf_counter()
        values, p_caps = pred_.predict_detail([p for p, _ in pairs], [m for _, m in pairs])
        secs = time.perf_counter() - t0
        at = {pm: i for i, pm in enumerate(pairs)}
        idx = [at[(p, m)] for p, m in zip(prompts, models, strict=True)]
        tokens = np.asarray(values)[idx]
        return pred_, tokens, (np.asarray(p_caps)[idx] if p_caps is not None else None), secs

    predictor, pred, pred_cap, seconds = run_artifact(artifact)

    if has_split and split != "train":
        train_t = read_prepared(data_path, ("train",))
    else:
        train_t = None
    base_cap = None
    if train_t is not None and train_t.num_rows:
        train_models = train_t.column("model").to_pylist()
        baselines = fit_baselines(train_t.column("prompt").to_pylist(), train_models,
                                  train_t.column("output_tokens").to_pylist())
        baseline_fit = "train split of the evaluated table"
        if has_caps:
            base_cap = cap_fractions(train_models, train_t.column("finished").to_pylist())
    else:
        summary = predictor._engine.doc.get("summary") or {}
        baselines = {"per_model_mean": ConstantPredictor(summary.get("mean_tokens", 128.0),
                                                         per_model=summary.get("mean_tokens_per_model")),
                     "prompt_length": HeuristicPredictor()}
        baseline_fit = "artifact training summary / defaults"
        base_cap = dict(summary.get("cap_fraction_per_model") or {})
    # (tokens, P(cap) or None) per scorer; a constant baseline's P(cap) is its model's training cap rate.
    scored = {"proxy": (pred, pred_cap)}
    for name, b in baselines.items():
        p_base = (np.asarray([(base_cap or {}).get(m, 0.0) for m in models]) if has_caps else None)
        scored[name] = (np.asarray(b.predict(prompts, models)), p_base)
    for name, path in (baseline_artifacts or {}).items():
        _, b_tokens, b_cap, _ = run_artifact(path)
        scored[name] = (b_tokens, b_cap)

    def block(mask=None):
        sel = np.ones(len(truth), bool) if mask is None else mask
        ms = [models[i] for i in np.flatnonzero(sel)]
        out = {}
        for name, (tokens, p_cap) in scored.items():
            cap_kw = ({"capped": capped[sel], "caps": caps[sel], "p_cap": p_cap[sel] if p_cap is not None else None}
                      if has_caps else {})
            out[name] = length_metrics(tokens[sel], truth[sel], ms, bucket_edges=bucket_edges, **cap_kw)
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
    if has_caps and (~capped).sum() >= 2:
        report["finished"] = block(~capped)
    return report


def cap_fractions(models, finished) -> dict[str, float]:
    """Share of each model's rows that hit the cap (``finished`` false; null counts as finished)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for m, f in zip(models, finished, strict=True):
        hits[m].append(f is False)
    return {m: float(np.mean(v)) for m, v in hits.items()}


HEADLINE = ("kendall_tau_within_model", "spearman_within_model", "kendall_tau", "spearman", "binary_accuracy",
            "binary_accuracy_within_model", "binary_accuracy_ranked", "cap_accuracy", "bucket_accuracy", "mae_tokens")


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
    if report.get("finished"):
        table("finished replies only", report["finished"])
    return "\n".join(lines)
