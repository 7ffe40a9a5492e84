"""Length-prediction metrics (numpy/scipy only): ranking, error, bucket and short/long accuracy.

- ``kendall_tau`` / ``spearman``: over all rows ("overall") and within each model (the scheduler
  only compares requests, and requests to one model are what one queue holds). The within-model
  headline is the unweighted mean over models with at least ``min_rows`` rows.
- ``mae_tokens``: mean absolute error in tokens.
- ``bucket_accuracy``: predicted and true tokens fall into the same bucket of ``bucket_edges``.
- ``binary_accuracy``: short/long agreement, the truth split at :func:`balanced_cut` of the true
  lengths of the evaluated rows (the median, unless ties at the median make it degenerate, e.g.
  half the replies at a generation cap), one threshold for truth and prediction;
  ``binary_accuracy_within_model`` splits each model at its own cut.
- ``binary_accuracy_ranked``: the same truth split, but the predictions split by rank: the rows
  with the k highest predictions are called long, k = the number of truly long rows (ties at the
  k-th prediction are called short). It asks only whether the ORDER is right, which is all a
  scheduler uses, so it stays meaningful for predictors whose numbers sit on another scale (an
  expected length never reaches the cap); a constant predictor calls every row short.
- ``cap_accuracy`` (given which replies hit the generation cap): predicted "hits the cap" (P(cap)
  > 0.5, or, for predictors without a cap probability, predicted tokens >= the cap) vs the truth.
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


def balanced_cut(truth) -> float:
    """The short/long threshold of the true lengths, safe under ties: ``truth > cut`` is long.

    Among the cuts between distinct values, the one whose short share is closest to one half (the
    higher cut on a tie of distances). The value reported is the median when the median splits the
    rows the same way (untied data: the plain median rule), else the midpoint between the two
    distinct values around the cut. On SmolLM2 replies, 51% at the 512-token cap, the median IS the
    cap and ``truth > median`` is empty; this cut separates the capped replies from the rest.
    With a single distinct value there is nothing to split: that value (every row short).
    """
    truth = np.asarray(truth, dtype=float)
    if len(truth) == 0:
        raise ValueError("balanced_cut: no values")
    values, counts = np.unique(truth, return_counts=True)
    if len(values) == 1:
        return float(values[0])
    share = np.cumsum(counts)[:-1] / len(truth)  # short share when cutting after values[i]
    dist = np.abs(share - 0.5)
    i = len(dist) - 1 - int(np.argmin(dist[::-1]))
    median = float(np.median(truth))
    if np.array_equal(truth > median, truth > values[i]):
        return median
    return float((values[i] + values[i + 1]) / 2)


def ranked_binary_accuracy(pred, truth, cut: float) -> float:
    """Share of rows on the right side when the k highest predictions are called long (k = rows
    with ``truth > cut``); see the module doc."""
    pred, truth = np.asarray(pred, dtype=float), np.asarray(truth, dtype=float)
    long = truth > cut
    k = int(long.sum())
    if k == 0:
        called = np.zeros(len(pred), bool)
    elif k == len(pred):
        called = np.ones(len(pred), bool)
    else:
        # rows above the (n-k)-th smallest prediction: at most k, fewer where predictions tie there
        called = pred > np.sort(pred)[len(pred) - k - 1]
    return float(np.mean(called == long))


def cap_accuracy(capped, pred, caps, p_cap=None) -> float:
    """Agreement on "hits the generation cap": ``p_cap > 0.5`` where a cap probability is given,
    else ``pred >= caps`` (the predicted tokens reach the row's cap)."""
    capped = np.asarray(capped, dtype=bool)
    called = (np.asarray(p_cap, dtype=float) > 0.5) if p_cap is not None else (
        np.asarray(pred, dtype=float) >= np.asarray(caps, dtype=float))
    if called.shape != capped.shape:
        raise ValueError(f"cap_accuracy: {called.shape} predictions for {capped.shape} rows")
    return float(np.mean(called == capped))


def length_metrics(pred, truth, models, *, bucket_edges=DEFAULT_EDGES, min_rows: int = 10,
                   capped=None, caps=None, p_cap=None) -> dict:
    """Every metric of the module doc. ``capped`` (bool per row: the reply hit the generation cap),
    ``caps`` (the row's cap in tokens) and ``p_cap`` (the predictor's P(cap) per row, or None)
    add ``cap_accuracy``; without ``capped`` it is None."""
    pred = np.asarray(pred, dtype=float)
    truth = np.asarray(truth, dtype=float)
    models = np.asarray(models, dtype=object)
    if not (len(pred) == len(truth) == len(models)):
        raise ValueError(f"lengths differ: {len(pred)} predictions, {len(truth)} truths, {len(models)} models")
    if len(pred) == 0:
        raise ValueError("no rows to evaluate")
    edges = np.asarray(bucket_edges, dtype=float)
    median = balanced_cut(truth)
    per_model = {}
    groups = defaultdict(list)
    for i, m in enumerate(models):
        groups[m].append(i)
    for m, idx in sorted(groups.items()):
        idx = np.asarray(idx)
        p, t = pred[idx], truth[idx]
        med_m = balanced_cut(t)
        per_model[m] = {
            "rows": int(len(idx)),
            "kendall_tau": kendall_tau(p, t), "spearman": spearman(p, t),
            "mae_tokens": float(np.mean(np.abs(p - t))),
            "binary_accuracy": float(np.mean((p > med_m) == (t > med_m))),
            "binary_accuracy_ranked": ranked_binary_accuracy(p, t, med_m),
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
        "binary_accuracy_ranked": ranked_binary_accuracy(pred, truth, median),
        "binary_accuracy_ranked_within_model": (float(np.mean([v["binary_accuracy_ranked"] for v in eligible]))
                                                if eligible else None),
        "cap_rate": float(np.mean(capped)) if capped is not None else None,
        "cap_accuracy": cap_accuracy(capped, pred, caps, p_cap) if capped is not None else None,
        "per_model": per_model,
    }
