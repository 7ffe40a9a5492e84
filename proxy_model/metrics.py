"""Length-prediction metrics (numpy/scipy only): ranking, error, bucket and short/long accuracy.

- ``kendall_tau`` / ``spearman``: over all rows ("overall") and within each model (the scheduler
  only compares requests, and requests to one model are what one queue holds). The within-model
  headline is the unweighted mean over models with at least ``min_rows`` rows.
- ``mae_tokens``: mean absolute error in tokens.
- ``bucket_accuracy``: predicted and true tokens fall into the same bucket of ``bucket_edges``.
- ``binary_accuracy``: short/long agreement, split at the median of the true lengths of the
  evaluated rows (one threshold for truth and prediction); ``binary_accuracy_within_model`` splits
  each model at its own median.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

DEFAULT_EDGES = (64.0, 128.0, 256.0, 512.0)


def kendall_tau(pred, truth, *, max_n: int | None = None, seed: int = 0) -> float:
    """Kendall's tau-b of two equally long sequences: how well ``pred`` orders ``truth`` (symmetric).

    Edge cases are defined, never NaN:

    - ties: tau-b's rule (a pair tied on either side is neither concordant nor discordant, and the
      denominator leaves out the pairs tied on each side);
    - a constant side (every pair tied there), or fewer than 2 points: 0.0, since nothing is
      ordered, rightly or wrongly (a constant predictor gets 0, not an undefined score);
    - lengths that differ, or a non-finite value: ValueError.

    ``max_n``: above this many points, tau of a seeded sample of ``max_n`` of them, drawn without
    replacement (bounds the cost on simulator-sized inputs); None: every point.
    """
    from scipy.stats import kendalltau

    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-d sequences of one length, got shapes {pred.shape} and {truth.shape}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(truth))):
        raise ValueError("kendall_tau: values must be finite")
    if max_n is not None and len(pred) > max_n:
        idx = np.random.default_rng(seed).choice(len(pred), max_n, replace=False)
        pred, truth = pred[idx], truth[idx]
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(truth) == 0:
        return 0.0
    return float(kendalltau(pred, truth).statistic)


def spearman(pred, truth) -> float:
    from scipy.stats import spearmanr

    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(truth) == 0:
        return 0.0
    return float(spearmanr(pred, truth).statistic)


def length_metrics(pred, truth, models, *, bucket_edges=DEFAULT_EDGES, min_rows: int = 10) -> dict:
    pred = np.asarray(pred, dtype=float)
    truth = np.asarray(truth, dtype=float)
    models = np.asarray(models, dtype=object)
    if not (len(pred) == len(truth) == len(models)):
        raise ValueError(f"lengths differ: {len(pred)} predictions, {len(truth)} truths, {len(models)} models")
    if len(pred) == 0:
        raise ValueError("no rows to evaluate")
    edges = np.asarray(bucket_edges, dtype=float)
    median = float(np.median(truth))
    per_model = {}
    groups = defaultdict(list)
    for i, m in enumerate(models):
        groups[m].append(i)
    for m, idx in sorted(groups.items()):
        idx = np.asarray(idx)
        p, t = pred[idx], truth[idx]
        med_m = float(np.median(t))
        per_model[m] = {
            "rows": int(len(idx)),
            "kendall_tau": kendall_tau(p, t), "spearman": spearman(p, t),
            "mae_tokens": float(np.mean(np.abs(p - t))),
            "binary_accuracy": float(np.mean((p > med_m) == (t > med_m))),
        }
    eligible = [v for v in per_model.values() if v["rows"] >= min_rows]
    return {
        "rows": int(len(pred)),
        "models": len(per_model),
        "kendall_tau": kendall_tau(pred, truth),
        "spearman": spearman(pred, truth),
        "kendall_tau_within_model": float(np.mean([v["kendall_tau"] for v in eligible])) if eligible else None,
        "spearman_within_model": float(np.mean([v["spearman"] for v in eligible])) if eligible else None,
        "mae_tokens": float(np.mean(np.abs(pred - truth))),
        "median_abs_error_tokens": float(np.median(np.abs(pred - truth))),
        "bucket_edges": [float(e) for e in edges],
        "bucket_accuracy": float(np.mean(np.searchsorted(edges, pred, side="left")
                                         == np.searchsorted(edges, truth, side="left"))),
        "binary_threshold_tokens": median,
        "binary_accuracy": float(np.mean((pred > median) == (truth > median))),
        "binary_accuracy_within_model": float(np.mean([v["binary_accuracy"] for v in eligible])) if eligible else None,
        "per_model": per_model,
    }
