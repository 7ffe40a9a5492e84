"""Length predictors for the simulator, chosen by a short spec string.

- ``oracle``: the true length (an upper bound on what any predictor can do).
- ``noisy:TAU``: synthetic predictions whose Kendall's tau with the truth is about ``TAU`` (0..1].
  Gaussian copula: ranks of the truth become normal scores ``z``; the prediction's score is
  ``rho * z + sqrt(1 - rho^2) * eps`` with ``rho = sin(pi * TAU / 2)`` (for a bivariate normal,
  tau = 2/pi * arcsin(rho)), mapped back through the truth's own quantiles. So predictions have the
  truth's distribution and only their ranking is degraded. Seeded. Ties in the truth lower the
  realised tau slightly; the simulator reports the realised value.
- ``heuristic``: ``proxy_model.predictor.HeuristicPredictor`` (prompt-length heuristic).
- ``constant`` or ``constant:N``: every request predicted ``N`` tokens (default: the workload's
  median truth); SSJF then degenerates to FCFS (ties broken by arrival).
- ``file:PATH``: predictions from a Parquet/CSV/JSON-lines file with a ``predicted_tokens`` column
  keyed by ``request_id``, or by ``prompt_id`` (and ``model`` when present).
- ``proxy:PATH``: a trained proxy artifact, ``proxy_model.predictor.LengthPredictor.load(PATH)``
  (imports torch lazily). A bare PATH means ``proxy:`` for a directory and ``file:`` for a file.

``heuristic`` and ``proxy`` read each row's conversation through the proxy text rule
(:func:`predictor_inputs`), the text the serving cluster's proxy reads for the same chat request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proxy_model.predictor import HeuristicPredictor, LengthPredictor, text_for

KINDS = ("oracle", "noisy:TAU", "heuristic", "constant[:N]", "file:PATH", "proxy:PATH")
# A run's realised Kendall tau (``proxy_model.metrics.kendall_tau``) is measured on a seeded sample of
# at most this many requests: a million-request simulation then costs no more to score than 20,000.
TAU_MAX_N = 20000


@dataclass(frozen=True)
class PredictorSpec:
    kind: str  # oracle, noisy, heuristic, constant, file, proxy
    tau: float | None = None
    tokens: float | None = None
    path: str | None = None

    @classmethod
    def parse(cls, spec: str) -> PredictorSpec:
        s = spec.strip()
        if s == "oracle":
            return cls("oracle")
        if s == "heuristic":
            return cls("heuristic")
        if s == "constant":
            return cls("constant")
        head, sep, arg = s.partition(":")
        if sep and head == "noisy":
            try:
                tau = float(arg)
            except ValueError:
                raise ValueError(f"noisy:TAU needs a number, got {spec!r}") from None
            if not 0 < tau <= 1:
                raise ValueError(f"noisy:TAU needs 0 < TAU <= 1, got {tau}")
            return cls("noisy", tau=tau)
        if sep and head == "constant":
            try:
                tokens = float(arg)
            except ValueError:
                raise ValueError(f"constant:N needs a number of tokens, got {spec!r}") from None
            if not tokens >= 0:
                raise ValueError(f"constant:N needs N >= 0, got {tokens}")
            return cls("constant", tokens=tokens)
        if sep and head in ("file", "proxy"):
            if not arg:
                raise ValueError(f"{head}:PATH needs a path, got {spec!r}")
            return cls(head, path=arg)
        p = Path(s)
        if s and p.exists():
            return cls("proxy" if p.is_dir() else "file", path=s)
        raise ValueError(f"unknown predictor {spec!r}; choose one of: {', '.join(KINDS)} "
                         "(or an existing file or proxy artifact directory)")

    def __str__(self) -> str:
        if self.kind == "noisy":
            return f"noisy:{self.tau:g}"
        if self.kind == "constant" and self.tokens is not None:
            return f"constant:{self.tokens:g}"
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        return self.kind


def noisy_predictions(truth: np.ndarray, tau: float, seed: int) -> np.ndarray:
    """Predictions with Kendall's tau about ``tau`` against ``truth`` and the truth's marginal (copula)."""
    truth = np.asarray(truth, dtype=np.float64)
    n = len(truth)
    if n == 0:
        return truth.copy()
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(n)
    return copula_predictions(truth, tau, tiebreak, rng.standard_normal(n))


def copula_predictions(truth: np.ndarray, tau: float, tiebreak: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """The Gaussian copula of ``noisy:TAU`` with its random draws given: ``tiebreak`` (uniform, orders
    equal truths) and ``eps`` (standard normal noise per row). The re-predictor of the simulator
    (``loadgen.repredict_sim``) passes noise that persists across a request's progress points."""
    from scipy.special import ndtri

    truth = np.asarray(truth, dtype=np.float64)
    n = len(truth)
    if n == 0:
        return truth.copy()
    # Random tie-breaking so equal truths do not share a score (keeps the copula continuous).
    order = np.lexsort((tiebreak, truth))
    ranks = np.empty(n)
    ranks[order] = np.arange(1, n + 1)
    z = ndtri(ranks / (n + 1))
    rho = math.sin(math.pi * tau / 2)
    zp = rho * z + math.sqrt(max(0.0, 1 - rho * rho)) * eps
    # Map the prediction scores back onto the truth's quantiles.
    pred_rank = np.empty(n, dtype=np.int64)
    pred_rank[np.argsort(zp, kind="stable")] = np.arange(n)
    return np.sort(truth)[pred_rank]


def predict(spec: PredictorSpec | str, table, *, truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """Predicted output tokens for each row of ``table`` (a pyarrow Table or a dict of columns).

    ``truth`` is read only by ``oracle`` and ``noisy`` (both synthetic, labelled predictors).
    """
    if isinstance(spec, str):
        spec = PredictorSpec.parse(spec)
    truth = np.asarray(truth, dtype=np.float64)
    n = len(truth)
    if spec.kind == "oracle":
        return truth.copy()
    if spec.kind == "noisy":
        return noisy_predictions(truth, spec.tau, seed)
    if spec.kind == "constant":
        value = spec.tokens if spec.tokens is not None else (float(np.median(truth)) if n else 0.0)
        return np.full(n, value)
    if spec.kind in ("heuristic", "proxy"):
        # proxy: offline, it waits for its model however long it takes (a serving-time deadline would
        # silently swap in fallback answers on a busy machine and understate the proxy).
        model = HeuristicPredictor() if spec.kind == "heuristic" else LengthPredictor.load(spec.path, timeout_s=None)
        return _checked(model.predict(predictor_inputs(model, table), _column(table, "model")), n, spec)
    if spec.kind == "file":
        return _from_file(spec.path, table, n)
    raise ValueError(f"unknown predictor kind {spec.kind!r}")


def predictor_inputs(predictor, table) -> list[str]:
    """The text ``predictor`` reads for each row: the proxy text rule over the row's conversation
    (``messages``), as the serving cluster renders a chat request; a row without one gives its ``prompt``."""
    prompts = _column(table, "prompt")
    names = table.keys() if isinstance(table, dict) else table.column_names
    conversations = _column(table, "messages") if "messages" in names else [None] * len(prompts)
    return [text_for(predictor, conv if conv else prompt) for conv, prompt in zip(conversations, prompts, strict=True)]


def _column(table, name: str) -> list:
    if isinstance(table, dict):
        return list(table[name])
    return table.column(name).to_pylist()


def _checked(values, n: int, spec: PredictorSpec) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"predictor {spec} returned {arr.shape} predictions for {n} requests")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"predictor {spec} returned negative or non-finite predictions")
    return arr


def _read_table(path: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"predictions file not found: {path}")
    suffixes = "".join(p.suffixes).lower()
    try:
        if ".parquet" in suffixes:
            return pq.read_table(p)
        if ".csv" in suffixes:
            return pcsv.read_csv(p)
        if ".json" in suffixes:
            return pjson.read_json(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read predictions file {path}: {exc}") from None
    raise ValueError(f"predictions file {path}: use .parquet, .csv or .jsonl")


def _from_file(path: str, table, n: int) -> np.ndarray:
    preds = _read_table(path)
    cols = set(preds.column_names)
    if "predicted_tokens" not in cols:
        raise ValueError(f"predictions file {path} needs a 'predicted_tokens' column, has {sorted(cols)}")
    values = [float(v) for v in preds.column("predicted_tokens").to_pylist()]
    if "request_id" in cols:
        keys = [(k,) for k in preds.column("request_id").to_pylist()]
        want = [(k,) for k in _column(table, "request_id")]
    elif "prompt_id" in cols:
        if "model" in cols:
            keys = list(zip(preds.column("prompt_id").to_pylist(), preds.column("model").to_pylist(), strict=True))
            want = list(zip(_column(table, "prompt_id"), _column(table, "model"), strict=True))
        else:
            keys = [(k,) for k in preds.column("prompt_id").to_pylist()]
            want = [(k,) for k in _column(table, "prompt_id")]
    else:
        raise ValueError(f"predictions file {path} needs a 'request_id' or 'prompt_id' column")
    lookup = dict(zip(keys, values, strict=True))
    missing = [k for k in want if k not in lookup]
    if missing:
        raise ValueError(f"predictions file {path} has no prediction for {len(missing)} of {n} requests "
                         f"(first: {missing[0]})")
    arr = np.array([lookup[k] for k in want], dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"predictions file {path} holds negative or non-finite predictions")
    return arr


def predict_table(spec: PredictorSpec | str, table, seed: int = 0) -> np.ndarray:
    """:func:`predict` for a workload table, whose ``output_tokens`` column is the truth that only the
    synthetic ``oracle``/``noisy`` predictors read."""
    return predict(spec, table, truth=table.column("output_tokens").to_numpy(), seed=seed)
