"""Re-predictions of a running request's remaining length, for the simulator's ``srpt`` policy.

Under ``srpt`` a replica reports a running request's progress every ``K`` generated tokens
(``SchedulerConfig.repredict_every_tokens``) and a remaining-length predictor re-predicts how many
tokens it still has to go. The simulator needs those re-predictions without running a model, so,
as ``noisy:TAU`` does for the prompt-only prediction (``loadgen.predictors_sim``), they are
synthetic with a given rank quality:

- ``measured`` (default) / ``measured:PATH``: at progress point ``k`` (tokens generated so far),
  among the requests still running there (true length > ``k``), the predicted remaining length has
  Kendall's tau against the true remaining length equal to the *measured* tau of the project's
  remaining-length predictor at ``k`` (linear interpolation between measured points, the end values
  beyond them). The table is ``proxy_model/data/remaining_tau.json`` once it exists; until then
  :data:`PLACEHOLDER_TAU`, a labelled placeholder (see there).
- ``noisy:TAU``: the same with one tau at every ``k``.
- ``oracle``: the true remaining length (a labelled ceiling, like the ``oracle`` policy).

Gaussian copula per progress point, as ``noisy:TAU``: the predictions at ``k`` have the marginal of
the true remaining lengths of the requests alive at ``k`` and only their ranking is degraded. The
noise of one request persists between its progress points: consecutive points ``K`` tokens apart
share it with correlation ``exp(-K / noise_tokens)`` (a predictor that reads the prompt and the
prefix so far sees nearly the same input at ``k`` and ``k + K``, so its error does not start afresh;
``noise_tokens=0``: independent draws, ``inf``: one error for the request's whole life). Seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadgen.predictors_sim import copula_predictions

# The measured table, written by the remaining-length predictor's evaluation (proxy_model).
MEASURED_TAU_PATH = Path(__file__).resolve().parents[1] / "proxy_model" / "data" / "remaining_tau.json"
# The predictor of that table whose tau is used (the other is the prompt-only baseline).
MEASURED_NAME = "remaining"
# Placeholder while no measurement exists: the prompt-only tau of the reference scenarios
# (``noisy:0.6``) at every progress point, i.e. re-prediction no better ranked than the first
# prediction (it only learns that the request has survived ``k`` tokens). Conservative by design.
PLACEHOLDER_TAU = {0: 0.6}
# How many generated tokens apart two re-predictions of one request have noise correlated 1/e.
DEFAULT_NOISE_TOKENS = 256.0
KINDS = ("measured", "measured:PATH", "noisy:TAU", "oracle")


@dataclass(frozen=True)
class TauTable:
    """Kendall's tau of the remaining-length prediction by progress point ``k`` (tokens generated)."""

    ks: tuple[float, ...]
    taus: tuple[float, ...]
    source: str = ""

    def __post_init__(self):
        if not self.ks or len(self.ks) != len(self.taus):
            raise ValueError(f"a tau table needs one tau per progress point, got {len(self.ks)} points "
                             f"and {len(self.taus)} taus")
        if any(b <= a for a, b in zip(self.ks, self.ks[1:], strict=False)) or self.ks[0] < 0:
            raise ValueError(f"tau table progress points must be >= 0 and strictly increasing, got {self.ks}")
        bad = [t for t in self.taus if not (isinstance(t, (int, float)) and -1 <= t <= 1)]
        if bad:
            raise ValueError(f"tau table values must lie in [-1, 1], got {bad}")

    def at(self, k: float) -> float:
        """The tau at progress point ``k``: interpolated between measured points, the end values beyond."""
        return float(np.interp(k, self.ks, self.taus))

    @classmethod
    def from_mapping(cls, mapping: dict, source: str = "") -> TauTable:
        items = sorted((float(k), float(v)) for k, v in mapping.items())
        return cls(tuple(k for k, _ in items), tuple(v for _, v in items), source)

    @classmethod
    def placeholder(cls) -> TauTable:
        return cls.from_mapping(PLACEHOLDER_TAU, source="placeholder: prompt-only tau 0.6 at every k (no measurement yet)")

    @classmethod
    def load(cls, path: str | Path) -> TauTable:
        """A measured table from JSON: ``proxy_model.remaining.tau_table``'s document (its
        ``tau.remaining`` by k), ``{"points": [{"k": 0, "tau": 0.5}, ...]}``, a list of such points,
        ``{"k": [...], "tau": [...]}``, or ``{"tau_by_k": {"0": 0.5, ...}}``."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ValueError(f"remaining-length tau table not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"remaining-length tau table {path} is not valid JSON: {exc}") from None
        try:
            mapping = _tau_mapping(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"remaining-length tau table {path}: expected points of (k, tau), {exc}") from None
        return cls.from_mapping(mapping, source=str(path))

    @classmethod
    def default(cls) -> TauTable:
        """The measured table when it exists, else the placeholder."""
        return cls.load(MEASURED_TAU_PATH) if MEASURED_TAU_PATH.is_file() else cls.placeholder()


def _tau_mapping(data) -> dict:
    if isinstance(data, dict) and isinstance(data.get("tau"), dict):
        # proxy_model.remaining.tau_table: {"tau": {"remaining": {k: tau}, "prompt_only_minus_k": {...}}}
        taus = data["tau"]
        data = taus[MEASURED_NAME] if MEASURED_NAME in taus else taus
    if isinstance(data, dict) and "points" in data:
        data = data["points"]
    if isinstance(data, list):
        return {float(p["k"]): float(p["tau"]) for p in data}
    if isinstance(data, dict) and "k" in data and "tau" in data:
        return dict(zip(map(float, data["k"]), map(float, data["tau"]), strict=True))
    if isinstance(data, dict) and "tau_by_k" in data:
        data = data["tau_by_k"]
    if isinstance(data, dict):
        return {float(k): float(v) for k, v in data.items()}
    raise ValueError(f"got a {type(data).__name__}")


@dataclass(frozen=True)
class RepredictorSpec:
    """Which re-predictor: ``measured`` [``:PATH``], ``noisy:TAU`` or ``oracle`` (module docstring)."""

    kind: str  # measured, noisy, oracle
    tau: float | None = None
    path: str | None = None
    noise_tokens: float = DEFAULT_NOISE_TOKENS

    def __post_init__(self):
        if not self.noise_tokens >= 0:
            raise ValueError(f"noise_tokens must be >= 0 (0: independent noise per progress point), got {self.noise_tokens}")

    @classmethod
    def parse(cls, spec: str, *, noise_tokens: float = DEFAULT_NOISE_TOKENS) -> RepredictorSpec:
        s = spec.strip()
        head, sep, arg = s.partition(":")
        if s in ("oracle", "measured"):
            return cls(s, noise_tokens=noise_tokens)
        if sep and head == "measured" and arg:
            return cls("measured", path=arg, noise_tokens=noise_tokens)
        if sep and head == "noisy":
            try:
                tau = float(arg)
            except ValueError:
                raise ValueError(f"noisy:TAU needs a number, got {spec!r}") from None
            if not -1 <= tau <= 1:
                raise ValueError(f"noisy:TAU needs -1 <= TAU <= 1, got {tau}")
            return cls("noisy", tau=tau, noise_tokens=noise_tokens)
        raise ValueError(f"unknown re-predictor {spec!r}; choose one of: {', '.join(KINDS)}")

    def table(self) -> TauTable | None:
        """The tau by progress point (None for the oracle)."""
        if self.kind == "oracle":
            return None
        if self.kind == "noisy":
            return TauTable((0.0,), (self.tau,), source=f"noisy:{self.tau:g}")
        return TauTable.load(self.path) if self.path else TauTable.default()

    def __str__(self) -> str:
        if self.kind == "noisy":
            return f"noisy:{self.tau:g}"
        if self.path:
            return f"measured:{self.path}"
        return self.kind


@dataclass
class Checkpoints:
    """Request ``j``'s predicted remaining length at its progress points ``k = every, 2 every, ...``
    (those with ``k`` below its true length): ``values[offset[j] + k // every - 1]``."""

    every: int
    offset: np.ndarray  # int64, n + 1
    values: np.ndarray  # float64, one per (request, progress point)

    def of(self, j: int) -> np.ndarray:
        return self.values[self.offset[j]:self.offset[j + 1]]


def remaining_predictions(out, every: int, spec: RepredictorSpec | str, seed: int) -> Checkpoints:
    """Predicted remaining tokens of every request at each of its progress points (see the module
    docstring); ``out`` holds the true lengths."""
    if isinstance(spec, str):
        spec = RepredictorSpec.parse(spec)
    if every < 1:
        raise ValueError(f"progress points need every >= 1 token, got {every}")
    out = np.asarray(out, dtype=np.int64)
    n = len(out)
    counts = np.maximum(out - 1, 0) // every  # progress points k = every * i < out
    offset = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offset[1:])
    total = int(offset[-1])
    # Index of each value within its request (0, 1, ...), hence its progress point.
    within = np.arange(total, dtype=np.int64) - np.repeat(offset[:-1], counts)
    true_left = (np.repeat(out, counts) - (within + 1) * every).astype(np.float64)
    table = spec.table()
    if table is None:
        return Checkpoints(every, offset, true_left)
    values = np.empty(total)
    rng = np.random.default_rng([seed, 14])
    corr = 0.0 if spec.noise_tokens == 0 else math.exp(-every / spec.noise_tokens)
    fresh = math.sqrt(max(0.0, 1 - corr * corr))
    eps = rng.standard_normal(n)
    for i in range(1, int(counts.max(initial=0)) + 1):
        alive = np.flatnonzero(counts >= i)
        if i > 1:
            eps[alive] = corr * eps[alive] + fresh * rng.standard_normal(len(alive))
        at = offset[alive] + (i - 1)
        values[at] = copula_predictions(true_left[at], table.at(i * every), rng.random(len(alive)), eps[alive])
    return Checkpoints(every, offset, values)


def realised_taus(out, checkpoints: Checkpoints, ks, *, max_n: int = 20000, seed: int = 0) -> dict[int, float]:
    """Kendall's tau of the predicted vs true remaining length at each progress point in ``ks``
    (multiples of ``checkpoints.every``), over the requests alive there: what a run actually got."""
    from proxy_model.metrics import kendall_tau

    out = np.asarray(out, dtype=np.int64)
    every = checkpoints.every
    result = {}
    for k in ks:
        if k % every or k < every:
            raise ValueError(f"progress point {k} is not a positive multiple of {every}")
        alive = np.flatnonzero(out > k)
        pred = checkpoints.values[checkpoints.offset[alive] + (k // every - 1)]
        result[int(k)] = kendall_tau(pred, (out[alive] - k).astype(np.float64), max_n=max_n, seed=seed)
    return result
