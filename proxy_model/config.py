"""Typed, validated configuration of the proxy model and its training (pure Python)."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields

from proxy_model.text import DEFAULT_MAX_HISTORY_CHARS

POOLINGS = ("mean", "last-layers")  # proxy_model.pooling

UNKNOWN_MODEL = "<unk>"


class HeadType(enum.Enum):
    REGRESSION = "regression"  # standardised log(1 + tokens), MSE (+ optional pairwise rank loss)
    CLASSES = "classes"  # k length buckets, cross-entropy
    BINARY = "binary"  # short/long at each model's training median, logistic loss
    # Replies cut at the generation cap are censored (true length >= cap), not lengths equal to
    # it: output 0 is the logit of P(hits the cap), output 1 the standardised log length of a
    # finished reply (fitted on finished replies only); predicted tokens are the expected length
    # P(cap) * cap + (1 - P(cap)) * finished length, which is what a capped engine generates.
    CENSORED = "censored"

    @classmethod
    def parse(cls, value: str | HeadType) -> HeadType:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown head {value!r}; choose one of: {', '.join(h.value for h in cls)}") from None


@dataclass
class HeadConfig:
    """What the artifact needs to rebuild the head and turn its outputs into tokens."""

    head: str = field(default="regression", metadata={"help": "regression | classes | binary | censored"})
    hidden_size: int = field(default=256, metadata={"help": "width of the head's hidden layer"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the pooled encoder output"})
    encoder_dim: int = field(default=384, metadata={"help": "size of the encoder's pooled output"})
    models: list[str] = field(default_factory=list, metadata={"help": "known target models (row 0 is <unk>)"})
    # regression: prediction = expm1(log_mean + log_std * output)
    log_mean: float = 0.0
    log_std: float = 1.0
    # classes: bucket i holds edges[i-1] < tokens <= edges[i]; value = median tokens of the bucket
    bucket_edges: list[float] = field(default_factory=list)
    bucket_values: list[float] = field(default_factory=list)
    # binary: long iff tokens > threshold of that model (index 0: all models)
    binary_thresholds: list[float] = field(default_factory=list)
    binary_short_values: list[float] = field(default_factory=list)
    binary_long_values: list[float] = field(default_factory=list)
    # censored: the generation cap in tokens per model row (index 0: <unk>)
    cap_values: list[float] = field(default_factory=list)
    max_length: int = field(default=128, metadata={"help": "encoder tokens per prompt (head + tail)"})
    max_history_chars: int = field(default=DEFAULT_MAX_HISTORY_CHARS, metadata={
        "help": "history cut of the proxy text rule the training prompts were rendered with"})
    # How the encoder's states become features (proxy_model.pooling); the defaults are the layout of
    # every artifact written before these fields existed.
    pooling: str = field(default="mean", metadata={"help": "mean | last-layers"})
    pool_layers: list[int] = field(default_factory=list, metadata={"help": "last-layers: the depths read"})
    chat_template: bool = field(default=False, metadata={"help": "wrap the text in the encoder's chat template"})
    feature_norm: bool = field(default=False, metadata={"help": "standardise features before the head"})
    members: int = field(default=1, metadata={"help": "heads trained side by side, answers averaged"})

    def __post_init__(self):
        self.head = HeadType.parse(self.head).value
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if self.pooling == "last-layers" and (not self.pool_layers or min(self.pool_layers) < 1):
            raise ValueError(f"last-layers pooling needs pool_layers >= 1, got {self.pool_layers}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if self.log_std <= 0:
            raise ValueError(f"log_std must be > 0, got {self.log_std}")
        if UNKNOWN_MODEL in self.models:
            raise ValueError(f"{UNKNOWN_MODEL!r} is reserved and cannot be a model name")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"model names must be unique, got {self.models}")
        edges = self.bucket_edges
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or any(e <= 0 for e in edges):
            raise ValueError(f"bucket_edges must be positive and strictly increasing, got {edges}")
        if self.bucket_values and len(self.bucket_values) != len(edges) + 1:
            raise ValueError(f"need {len(edges) + 1} bucket_values for {len(edges)} edges, got {len(self.bucket_values)}")
        if self.head == "classes" and not edges:
            raise ValueError("the classes head needs bucket_edges (e.g. 64,128,256,512)")
        if self.head == "censored":
            if len(self.cap_values) != self.num_model_rows:
                raise ValueError(f"the censored head needs one cap per model row ({self.num_model_rows}, "
                                 f"<unk> first), got {len(self.cap_values)}")
            if any(not (math.isfinite(c) and c >= 1) for c in self.cap_values):
                raise ValueError(f"cap_values must be finite token counts >= 1, got {self.cap_values}")

    @property
    def head_type(self) -> HeadType:
        return HeadType(self.head)

    @property
    def num_outputs(self) -> int:
        if self.head == "classes":
            return len(self.bucket_edges) + 1
        return 2 if self.head == "censored" else 1

    @property
    def num_model_rows(self) -> int:
        return len(self.models) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown head config keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainConfig:
    """Options of ``proxy-model train`` (each maps onto a click option)."""

    encoder: str = field(default="minilm", metadata={"help": "HF encoder path/name or alias 'minilm'"})
    head: str = "regression"
    bucket_edges: list[float] = field(default_factory=list, metadata={"help": "classes head; default: training quintiles"})
    num_buckets: int = 5
    freeze_encoder: bool = False
    # mean: BERT-like encoders; last-layers: a causal LM (e.g. the served model itself), read at its
    # last token of several layers, the prompt wrapped in its chat template (proxy_model.pooling).
    pooling: str = "mean"
    pool_layers: list[int] = field(default_factory=list, metadata={"help": "last-layers; default: 5 spread depths"})
    members: int = 1
    epochs: float = 4.0
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3
    batch_size: int = 16
    max_length: int = 128
    # Fine-tuning only: batches of prompts of similar token length (transformers' LengthGroupedSampler),
    # so a batch pads to its own longest prompt rather than nearly always to max_length.
    group_by_length: bool = False
    hidden_size: int = 256
    dropout: float = 0.1
    rank_loss_weight: float = 0.5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 0
    bf16: str = "auto"
    deepspeed: str | None = None
    max_train_rows: int | None = None
    sources: list[str] = field(default_factory=list, metadata={"help": "train only on these sources"})
    init_from: str | None = field(default=None, metadata={"help": "start from this artifact's encoder and head"})

    def __post_init__(self):
        HeadType.parse(self.head)
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not (self.learning_rate > 0 and self.head_learning_rate > 0):
            raise ValueError(f"learning rates must be > 0, got {self.learning_rate}, {self.head_learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_buckets < 2:
            raise ValueError(f"num_buckets must be >= 2, got {self.num_buckets}")
        if self.rank_loss_weight < 0:
            raise ValueError(f"rank_loss_weight must be >= 0, got {self.rank_loss_weight}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.members > 1 and (not self.freeze_encoder or self.init_from):
            raise ValueError("members > 1 needs --freeze-encoder (the members share one frozen encoder) "
                             "and no --init-from (a single head to start from)")
        if self.init_from and self.pooling == "last-layers":
            raise ValueError("--init-from carries a mean-pooled encoder; it cannot be combined with --pooling last-layers")
        if any(k < 1 for k in self.pool_layers):
            raise ValueError(f"pool_layers must be >= 1 (1 = the first layer's output), got {self.pool_layers}")
        if self.bf16 not in ("auto", "yes", "no"):
            raise ValueError(f"bf16 must be auto, yes or no, got {self.bf16!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if any(not math.isfinite(e) or e <= 0 for e in self.bucket_edges):
            raise ValueError(f"bucket_edges must be positive numbers, got {self.bucket_edges}")

    def to_dict(self) -> dict:
        return asdict(self)
