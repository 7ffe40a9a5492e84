"""Engine cost model: how long one iteration of an LLM engine takes.

One iteration prefills some new prompt tokens and decodes one token for each running sequence:

    t = overhead_s + per_seq_s * b + hypot(weights_floor_s, per_token_s * (p + b)) + per_context_token_s * ctx

- ``overhead_s + per_seq_s * b``: CPU work per iteration (scheduling, input preparation, sampling,
  output processing), growing with the batch.
- ``hypot(floor, per_token * n)``: the linear layers over ``n = p + b`` tokens. At small ``n`` they
  are bound by reading the weights once (the floor); at large ``n`` by compute (per token). The
  hypotenuse is a smooth roofline; on the published profile it is within 5% at n = 1..4096.
- ``per_context_token_s * ctx``: decode attention reads the KV cache of every running sequence.

Prefill attention (quadratic in the prompt) is left out: for prompts of a few thousand tokens on a
7B model it is under 5% of the prefill's linear layers. The model is affine in the context, and the
context grows by ``b`` tokens per iteration, so the time of ``k`` iterations with a fixed batch has
a closed form (:meth:`EngineProfile.span_s`) and its inverse (:meth:`EngineProfile.iterations_done`):
the simulator jumps from one batch change to the next instead of stepping tokens.

The default profile is a 7B model (Llama-2-7B, fp16, one A100, no tensor parallelism), fitted to the
published measurements of the Vidur simulator (microsoft/vidur, MIT licence); see
:meth:`EngineProfile.default` and docs/simulator.md for the derivation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

_SOURCE_DEFAULT = (
    "Llama-2-7B fp16 on one A100 (TP1). Linear layers: Vidur profiling data "
    "microsoft/vidur data/profiling/compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv (commit bee57da), sum of the "
    "per-layer mean times x 32 layers: 9.31 ms at 1 token, 255.1 ms at 4096 tokens (62.28 us/token). "
    "CPU overhead: microsoft/vidur data/profiling/a100/cpu_overheads.csv (Llama-2-7b-hf, TP1; schedule + "
    "sampler_e2e + prepare_inputs_e2e + process_model_outputs means): 2.98 ms at batch 8, 12.56 ms at batch 64, "
    "fitted as 1.615 ms + 0.171 ms per sequence. KV-cache read: 512 KiB per token (2 x 32 layers x 4096 x fp16) "
    "at 80% of the A100-80GB's 2,039 GB/s HBM bandwidth = 0.32 us per context token (derived, not measured)."
)


@dataclass(frozen=True)
class EngineProfile:
    """Per-iteration cost of one LLM engine replica (seconds); see the module docstring for the formula."""

    overhead_s: float = field(default=1.615e-3, metadata={"help": "Fixed CPU time per iteration."})
    per_seq_s: float = field(default=1.71e-4, metadata={"help": "CPU time per running sequence per iteration."})
    weights_floor_s: float = field(default=9.31e-3, metadata={"help": "Linear layers at 1 token (weight reads)."})
    per_token_s: float = field(default=6.228e-5, metadata={"help": "Linear layers per token when compute bound."})
    per_context_token_s: float = field(default=3.2e-7, metadata={"help": "Decode attention per KV-cache token."})
    name: str = field(default="llama-2-7b-a100", metadata={"help": "Short label."})
    source: str = field(default=_SOURCE_DEFAULT, metadata={"help": "Where the numbers come from."})

    def __post_init__(self):
        for f in fields(self):
            if f.type in ("float", float):
                value = getattr(self, f.name)
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"engine profile {f.name} must be a finite number >= 0, got {value!r}")
        if self.overhead_s + self.weights_floor_s + self.per_token_s + self.per_seq_s <= 0:
            raise ValueError("engine profile has zero cost per iteration: set overhead_s, per_seq_s, "
                             "weights_floor_s or per_token_s > 0")

    # ---- the contract -----------------------------------------------------------------------
    def iteration_time_s(self, num_prefill_tokens: int, batch_size: int, num_context_tokens: int) -> float:
        """One iteration: prefill ``num_prefill_tokens`` new prompt tokens and decode one token for each of
        ``batch_size`` running sequences holding ``num_context_tokens`` KV-cache tokens in total."""
        n = num_prefill_tokens + batch_size
        return (self.overhead_s + self.per_seq_s * batch_size
                + math.hypot(self.weights_floor_s, self.per_token_s * n)
                + self.per_context_token_s * num_context_tokens)

    # ---- closed forms for the simulator -----------------------------------------------------
    def decode_step_s(self, batch_size: int) -> float:
        """Iteration time of ``batch_size`` decoding sequences, excluding the KV-cache term."""
        return (self.overhead_s + self.per_seq_s * batch_size
                + math.hypot(self.weights_floor_s, self.per_token_s * batch_size))

    def span_s(self, k: int, num_prefill_tokens: int, batch_size: int, num_context_tokens: int) -> float:
        """Time of ``k`` iterations of a fixed batch: the first prefills ``num_prefill_tokens`` (with
        ``num_context_tokens`` cached for the others); afterwards the context is
        ``num_context_tokens + num_prefill_tokens + i * batch_size`` at iteration ``i``."""
        if k <= 0:
            return 0.0
        # Inlined (the simulator's hot path): first iteration, then k - 1 decode-only iterations.
        fixed = self.overhead_s + self.per_seq_s * batch_size
        floor, per_token, per_ctx = self.weights_floor_s, self.per_token_s, self.per_context_token_s
        first = (fixed + math.hypot(floor, per_token * (num_prefill_tokens + batch_size))
                 + per_ctx * num_context_tokens)
        m = k - 1
        if m == 0:
            return first
        step = fixed + math.hypot(floor, per_token * batch_size) + per_ctx * (num_context_tokens + num_prefill_tokens)
        return first + m * step + per_ctx * batch_size * m * (m + 1) / 2

    def iterations_done(self, elapsed_s: float, num_prefill_tokens: int, batch_size: int,
                        num_context_tokens: int) -> int:
        """The smallest ``k >= 1`` with ``span_s(k, ...) >= elapsed_s``: the index of the first
        iteration boundary at or after ``elapsed_s`` into the batch (where a new request can join)."""
        first = self.iteration_time_s(num_prefill_tokens, batch_size, num_context_tokens)
        if elapsed_s <= first:
            return 1
        # span(1 + m) = first + m * a + c * m (m + 1) / 2, increasing in m; solve for the real root.
        a = self.decode_step_s(batch_size) + self.per_context_token_s * (num_context_tokens + num_prefill_tokens)
        c = self.per_context_token_s * batch_size
        rest = elapsed_s - first
        if c > 0:
            h = a + c / 2
            m = (-h + math.sqrt(h * h + 2 * c * rest)) / c
        else:
            m = rest / a
        k = 1 + max(0, math.ceil(m - 1e-9))
        # Guard against floating point at the boundary: the formula is exact up to rounding.
        while k > 1 and self.span_s(k - 1, num_prefill_tokens, batch_size, num_context_tokens) >= elapsed_s:
            k -= 1
        while self.span_s(k, num_prefill_tokens, batch_size, num_context_tokens) < elapsed_s:
            k += 1
        return k

    def request_time_s(self, num_prompt_tokens: int, num_output_tokens: int) -> float:
        """Service time of a request that runs alone (batching ``none``)."""
        return self.span_s(max(1, num_output_tokens), num_prompt_tokens, 1, 0)

    # ---- I/O ----------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> EngineProfile:
        """Llama-2-7B fp16 on one A100 (published profiling numbers; see ``source``)."""
        return cls()

    @classmethod
    def proportional(cls, seconds_per_token: float, name: str = "proportional") -> EngineProfile:
        """A synthetic engine whose iteration costs ``seconds_per_token`` regardless of batch and
        context: a request alone runs ``num_output_tokens * seconds_per_token`` (queueing tests)."""
        return cls(overhead_s=seconds_per_token, per_seq_s=0.0, weights_floor_s=0.0, per_token_s=0.0,
                   per_context_token_s=0.0, name=name, source="synthetic: constant time per iteration")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineProfile:
        """Coefficients (the keys of :meth:`to_dict`), or ``{"measurements": [...]}`` to fit."""
        if "measurements" in d:
            return fit_profile(d["measurements"], name=d.get("name", "measured"), source=d.get("source", ""))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown engine profile keys {unknown}; valid keys: {sorted(known)} or 'measurements'")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        """Read a profile from JSON: coefficients, or measured iterations to fit (see docs/simulator.md)."""
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"engine profile file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"engine profile {path} is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError(f"engine profile {path} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def fit_profile(measurements: list[dict], *, name: str = "measured", source: str = "") -> EngineProfile:
    """Fit coefficients to measured iterations by non-negative least squares.

    Each measurement is ``{"num_prefill_tokens", "batch_size", "num_context_tokens", "time_s"}``.
    The weights floor is taken as the smallest decode-only time (the fit is then linear in the rest).
    """
    import numpy as np
    from scipy.optimize import nnls

    rows = []
    for i, m in enumerate(measurements):
        try:
            rows.append((float(m["num_prefill_tokens"]), float(m["batch_size"]),
                         float(m["num_context_tokens"]), float(m["time_s"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"measurement {i} needs numeric num_prefill_tokens, batch_size, "
                             f"num_context_tokens and time_s: {m!r} ({exc})") from None
    if len(rows) < 4:
        raise ValueError(f"need at least 4 measurements to fit an engine profile, got {len(rows)}")
    a = np.array(rows)
    p, b, ctx, t = a.T
    # Linear-layer time above the floor is ~per_token * n once compute bound; fit the affine model
    # t = overhead + per_seq * b + per_token * n + per_ctx * ctx and keep a zero floor: measured
    # engines (CPU replicas, small models) rarely show a flat region worth modelling.
    design = np.column_stack([np.ones_like(t), b, p + b, ctx])
    coef, _ = nnls(design, t)
    return EngineProfile(overhead_s=float(coef[0]), per_seq_s=float(coef[1]), weights_floor_s=0.0,
                         per_token_s=float(coef[2]), per_context_token_s=float(coef[3]), name=name,
                         source=source or f"fitted to {len(rows)} measured iterations")
