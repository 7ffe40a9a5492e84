"""Typed configuration of the serving cluster: one dataclass per part, every knob documented.

``AppConfig.from_dict`` is what ``deployments.app.build_app(config)`` and the ``args:`` of the
Serve YAML files in ``cluster/`` go through: unknown keys and bad values fail at build time with a
message that shows them, not later inside a replica. Pure Python: no Ray, no torch.
"""

from __future__ import annotations

import enum
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from router.config import BatchingMode, SchedulerConfig, scheduler_knobs
from router.policies import Policy, parse_enum


class EngineKind(enum.Enum):
    """What generates the tokens on an LLM replica."""

    HF = "hf"  # transformers
    DEEPSPEED = "deepspeed"  # the hf model wrapped by deepspeed.init_inference
    REPLAY = "replay"  # emulated: exact benchmark lengths at a profile's per-iteration cost

    @classmethod
    def parse(cls, name) -> EngineKind:
        return parse_enum(cls, name, "engine")


class PredictorKind(enum.Enum):
    """Which length predictor the proxy pool runs."""

    AUTO = "auto"  # learned if artifact_path exists, else heuristic
    LEARNED = "learned"  # proxy_model.predictor.LengthPredictor.load(artifact_path)
    HEURISTIC = "heuristic"  # prompt-length heuristic, pure Python
    CONSTANT = "constant"  # every request predicts constant_tokens (SSJF degenerates to FCFS)
    MARKER = "marker"  # tests/demos: "[[predict:N]]" in the prompt predicts N tokens

    @classmethod
    def parse(cls, name) -> PredictorKind:
        return parse_enum(cls, name, "predictor")


class RoutingMode(enum.Enum):
    """Who decides when and where each request runs.

    ``central``: the router actor (``router.policy``: FCFS, SSJF, ...) queues every request and
    dispatches it to a replica; the call is pinned there. ``serve-default``: no router actor and no
    proxy pool: the ingress calls the LLM deployment through Ray Serve's own request router (power of
    two choices on the replicas' queue lengths), and each replica runs what reaches it in arrival
    order. The baseline that ``ssjf-cluster bench --policies serve-default,...`` compares against
    (docs/routing.md, "Baseline: Ray Serve's default routing")."""

    CENTRAL = "central"
    SERVE_DEFAULT = "serve-default"

    @classmethod
    def parse(cls, name) -> RoutingMode:
        return parse_enum(cls, name, "router.mode")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _from_dict(cls, data: dict | None, section: str):
    """Build dataclass ``cls`` from ``data``, refusing unknown keys with the valid ones listed."""
    data = dict(data or {})
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section {section!r}; valid keys: {names}")
    return cls(**data)


# The router section's scheduling knobs are the scheduling core's own (SchedulerConfig: names, order,
# defaults, help), declared there once; the replicas' batching and slots come from the llm section,
# and a served cluster caps its queue by default.
RouterKnobs = scheduler_knobs("RouterKnobs", module=__name__, exclude=("batching", "max_batch"),
                              defaults={"max_queued": 1000})


@dataclass
class RouterSettings(RouterKnobs):
    """The central router actor: the scheduling core's knobs (:data:`RouterKnobs`) plus the actor's own."""

    mode: str = field(default="central", metadata={"help": "central: the router actor orders (router.policy) and places every request; serve-default: no router actor and no proxy pool, Ray Serve's default request router (power of two on queue length) places each call and every replica runs its calls in arrival order, up to llm.max_ongoing_requests at once (default: its slots); the other router knobs are then unused. The baseline of ssjf-cluster bench (docs/routing.md)."})
    retry_after_s: float = field(default=1.0, metadata={"help": "Retry-After (seconds) sent with a 429 (queue full) or a 503 (no replica)."})
    replica_timeout_s: float = field(default=15.0, metadata={"help": "A replica silent for this long (no heartbeat) is dropped and its queue moves elsewhere."})
    lease_s: float = field(default=30.0, metadata={"help": "A dispatched request that its replica has not reported running within this long is freed (its ingress died)."})
    actor_name: str | None = field(default=None, metadata={"help": "Name of the detached router actor; default ssjf-router-<app name>."})
    namespace: str = field(default="ssjf", metadata={"help": "Ray namespace of the router actor."})
    max_restarts: int = field(default=-1, metadata={"help": "Restarts of the router actor after a crash (-1: forever)."})
    orphan_timeout_s: float = field(default=120.0, metadata={"help": "The router actor exits after this long with no LLM replica heartbeat (the app was deleted)."})
    resources: dict[str, float] | None = field(default=None, metadata={"help": "Custom resources the router actor asks for, to place it (e.g. {router_node: 0.01}: the head of ray_cluster.yaml)."})

    def __post_init__(self):
        RoutingMode.parse(self.mode)
        policy = Policy.parse(self.policy)
        _check(policy is not Policy.ORACLE,
               "policy 'oracle' needs the true lengths: it exists only in the simulator; choose fcfs, ssjf or ssjf-aging")
        for name in ("retry_after_s", "replica_timeout_s", "lease_s", "orphan_timeout_s"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and value > 0, f"router.{name} must be > 0, got {value!r}")
        _check(self.max_restarts >= -1, f"router.max_restarts must be >= -1, got {self.max_restarts}")
        _check(self.resources is None or (isinstance(self.resources, dict) and all(
            isinstance(v, (int, float)) and v >= 0 for v in self.resources.values())),
            f"router.resources must map resource names to amounts >= 0, got {self.resources!r}")
        # Validate the scheduler knobs now, with the core's own messages.
        self.scheduler_config(BatchingMode.NONE, 1)

    def scheduler_config(self, batching: BatchingMode | str, max_batch: int) -> SchedulerConfig:
        knobs = {f.name: getattr(self, f.name) for f in fields(RouterKnobs)}
        return SchedulerConfig(batching=batching, max_batch=max_batch, **knobs)


@dataclass
class ProxySettings:
    """The proxy pool: replicas that predict output length, batched with ``@serve.batch``."""

    predictor: str = field(default="auto", metadata={"help": "auto, learned, heuristic, constant or marker (tests)."})
    artifact_path: str = field(default="artifacts/proxy-default", metadata={"help": "Trained LengthPredictor artifact (learned/auto); relative to the working directory."})
    constant_tokens: float = field(default=128.0, metadata={"help": "Prediction of the constant predictor and the marker predictor's default."})
    num_replicas: int = field(default=1, metadata={"help": "Proxy replicas."})
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per proxy replica."})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs (fractions allowed) per proxy replica."})
    max_batch_size: int = field(default=32, metadata={"help": "@serve.batch: most prompts per predictor call."})
    batch_wait_timeout_s: float = field(default=0.005, metadata={"help": "@serve.batch: longest wait to fill a batch."})
    timeout_s: float = field(default=0.5, metadata={"help": "The one prediction deadline: the ingress waits this long for the proxy pool, then uses the heuristic; a trained proxy stops waiting for its model after it too (answering its per-model median)."})

    def __post_init__(self):
        PredictorKind.parse(self.predictor)
        _check(self.num_replicas >= 1, f"proxy.num_replicas must be >= 1, got {self.num_replicas}")
        _check(self.max_batch_size >= 1, f"proxy.max_batch_size must be >= 1, got {self.max_batch_size}")
        _check(self.batch_wait_timeout_s >= 0, f"proxy.batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        _check(self.timeout_s > 0, f"proxy.timeout_s must be > 0, got {self.timeout_s}")
        _check(self.constant_tokens >= 0, f"proxy.constant_tokens must be >= 0, got {self.constant_tokens}")
        _check(self.num_cpus >= 0 and self.num_gpus >= 0,
               f"proxy.num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")


@dataclass
class LLMSettings:
    """The LLM replicas: engine, model, batching mode and slots."""

    engine: str = field(default="hf", metadata={"help": "hf, deepspeed or replay (emulated)."})
    model: str = field(default="smollm2", metadata={"help": "hf/deepspeed: built-in alias (smollm2), hub name or local path. replay: unused."})
    served_models: list[str] | None = field(default=None, metadata={"help": "Model names requests may ask for; default [model]. Replay: '*' accepts any name."})
    num_replicas: int = field(default=2, metadata={"help": "LLM replicas."})
    batching: str = field(default="continuous", metadata={"help": "none (one at a time), static (batch runs until its longest ends) or continuous."})
    max_batch: int = field(default=4, metadata={"help": "Slots per replica for static/continuous batching (none: 1)."})
    context_length: int | None = field(default=None, metadata={"help": "Prompt + max_tokens limit; default the model config's max_position_embeddings (replay: 8192)."})
    dtype: str = field(default="auto", metadata={"help": "hf/deepspeed weights dtype: auto (hf: bfloat16 on cuda; deepspeed: float16 on cuda; float32 on cpu), float32, bfloat16 or float16."})
    gguf_weights: str = field(default="auto", metadata={"help": "hf/deepspeed, GGUF models only: dense (GgufConfig(dequantize=True): plain tensors), packed (transformers' default: GGUF blocks where it has a kernel) or auto (dense; see docs/engine_speed.md)."})
    device: str = field(default="auto", metadata={"help": "hf/deepspeed device: auto (cuda if visible, else cpu), cpu or cuda."})
    torch_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads in each replica (None: torch's default)."})
    static_batch_wait_s: float = field(default=0.01, metadata={"help": "static batching: how long a replica gathers the calls of one router batch."})
    kv_pages: int | None = field(default=None, metadata={"help": "hf continuous: KV-cache pages of cb_page_size tokens per replica. None: enough for all max_batch slots to hold context_length tokens each (2048 when context_length is None) with the scheduler's 15% free margin."})
    cb_page_size: int = field(default=64, metadata={"help": "hf continuous: tokens per KV-cache page."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "hf continuous: most tokens (prefill + decode) per engine step. None: max(2048, max_batch + 1024), so every slot decodes in each step and prompts still prefill."})
    tensor_parallel: int = field(default=1, metadata={"help": "deepspeed: tensor-parallel degree (GPUs per replica)."})
    kernel_inject: bool | None = field(default=None, metadata={"help": "deepspeed: kernel injection (None: on GPU only; never on CPU)."})
    profile: str | None = field(default=None, metadata={"help": "replay: EngineProfile JSON path (None: EngineProfile.default(), 7B on A100)."})
    time_scale: float = field(default=1.0, metadata={"help": "replay: multiplies every emulated iteration time (0.01 runs 100x faster)."})
    num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per LLM replica."})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs per LLM replica (deepspeed TP: tensor_parallel)."})
    max_ongoing_requests: int | None = field(default=None, metadata={"help": "Serve's cap of calls in flight per replica. router.mode central: above the slots, default 4 x slots + 8 (the router, not Serve, admits work). serve-default: at least the slots, default the slots (calls past them wait in Serve's queue, in arrival order)."})
    heartbeat_s: float = field(default=1.0, metadata={"help": "How often a replica (re-)registers with the router actor."})
    stall_timeout_s: float = field(default=45.0, metadata={"help": "Engine watchdog: a replica that runs requests and gets no output from its engine for this long is stalled: it stops heartbeating (the router drops it after router.replica_timeout_s) and fails Serve's health check (Serve replaces it). Keep it below ingress.first_token_timeout_s, so a request stuck on a hung engine trips it before the ingress gives up on that request."})
    health_check_period_s: float = field(default=5.0, metadata={"help": "Serve's health check period of the LLM replicas (engine health and the stall watchdog); Serve replaces a replica after 3 failed checks in a row."})
    remaining_predictor: str | None = field(default=None, metadata={"help": "router.policy srpt, hf/deepspeed: a trained remaining-length artifact (proxy_model.remaining, proxy-model train-remaining) that re-predicts a running request's remaining length at each progress point from its prompt and reply so far. None: the prompt-only prediction minus the tokens generated so far. Replay engines use the EMULATED re-predictions a benchmark sends (replay_remaining_predictions, the simulator's calibrated noise), else the same fallback."})
    progress_timeout_s: float = field(default=1.0, metadata={"help": "router.policy srpt: how long a replica waits for the router's answer to a progress report (preempt or not) while the run streams on; past it the run goes on unpreempted (a preemption the router made meanwhile is undone by the run's completion)."})
    replay_faults: bool = field(default=False, metadata={"help": "replay, tests and fault drills only: honour [[replay:stall:K]] (the request stops after K tokens and holds its slot) and [[replay:fail:K]] (the engine raises after K tokens) in the prompt."})

    def __post_init__(self):
        kind = EngineKind.parse(self.engine)
        batching = BatchingMode.parse(self.batching)
        if batching is BatchingMode.NONE:
            self.max_batch = 1
        _check(self.max_batch >= 1, f"llm.max_batch must be >= 1, got {self.max_batch}")
        _check(self.num_replicas >= 1, f"llm.num_replicas must be >= 1, got {self.num_replicas}")
        if self.served_models is None:
            self.served_models = ["*"] if kind is EngineKind.REPLAY else [self.model]
        _check(isinstance(self.served_models, list) and self.served_models and all(isinstance(m, str) and m for m in self.served_models),
               f"llm.served_models must be a non-empty list of names, got {self.served_models!r}")
        _check(kind is EngineKind.REPLAY or "*" not in self.served_models,
               f"llm.served_models '*' (any name) is for the replay engine only, got engine {self.engine!r}")
        _check(self.context_length is None or self.context_length >= 2,
               f"llm.context_length must be >= 2 or None, got {self.context_length}")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"),
               f"llm.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        _check(self.gguf_weights in ("auto", "dense", "packed"),
               f"llm.gguf_weights must be auto, dense or packed, got {self.gguf_weights!r}")
        _check(self.device in ("auto", "cpu", "cuda"), f"llm.device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.time_scale > 0 and math.isfinite(self.time_scale), f"llm.time_scale must be > 0, got {self.time_scale}")
        _check(self.tensor_parallel >= 1, f"llm.tensor_parallel must be >= 1, got {self.tensor_parallel}")
        _check(self.static_batch_wait_s >= 0, f"llm.static_batch_wait_s must be >= 0, got {self.static_batch_wait_s}")
        _check((self.kv_pages is None or self.kv_pages >= 1) and self.cb_page_size >= 4
               and (self.max_batch_tokens is None or self.max_batch_tokens >= 1),
               f"llm.kv_pages >= 1 (or None), cb_page_size >= 4 and max_batch_tokens >= 1 (or None) needed, got "
               f"{self.kv_pages}, {self.cb_page_size}, {self.max_batch_tokens}")
        for name in ("heartbeat_s", "stall_timeout_s", "health_check_period_s", "progress_timeout_s"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and value > 0, f"llm.{name} must be > 0, got {value!r}")
        # Its bound against the slots depends on router.mode: AppConfig checks it.
        _check(self.max_ongoing_requests is None or (isinstance(self.max_ongoing_requests, int)
                                                     and self.max_ongoing_requests >= 1),
               f"llm.max_ongoing_requests must be an integer >= 1 or None, got {self.max_ongoing_requests!r}")
        if kind is EngineKind.DEEPSPEED:
            _check(batching is not BatchingMode.CONTINUOUS,
                   "llm.engine 'deepspeed' supports batching none or static (transformers' continuous batching "
                   "manager does not run DeepSpeed-injected kernels); use engine 'hf' for continuous")

    @property
    def engine_kind(self) -> EngineKind:
        return EngineKind.parse(self.engine)

    @property
    def batching_mode(self) -> BatchingMode:
        return BatchingMode.parse(self.batching)

    @property
    def serve_max_ongoing_requests(self) -> int:
        """Serve's cap under the central router (:attr:`AppConfig.llm_max_ongoing_requests` for any mode)."""
        return self.max_ongoing_requests or 4 * self.max_batch + 8

    def accepts(self, model: str) -> bool:
        return "*" in self.served_models or model in self.served_models


@dataclass
class IngressSettings:
    """The OpenAI-compatible HTTP ingress."""

    num_replicas: int = field(default=1, metadata={"help": "Ingress replicas."})
    num_cpus: float = field(default=0.5, metadata={"help": "CPUs reserved per ingress replica."})
    max_ongoing_requests: int = field(default=2000, metadata={"help": "Serve's cap of requests in flight per ingress replica."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer for counting and chat templates: 'approx' (4 characters a token), an hf name/path; default: the LLM's model (replay: approx)."})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens of a chat request that sets none (completions default to 16, as OpenAI)."})
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata={"help": "Largest request body accepted (bytes); larger: 413 (code request_too_large), refused from Content-Length before reading, or while reading."})
    max_messages: int = field(default=1024, metadata={"help": "Most messages a chat request may hold; more: 400 (param messages)."})
    max_retries: int = field(default=2, metadata={"help": "Re-dispatches of a request whose replica died before it streamed anything."})
    pin_grace_s: float = field(default=3.0, metadata={"help": "How long a call waits for its pinned replica to appear in Serve's replica list before it is sent elsewhere and bounced (then re-dispatched)."})
    router_timeout_s: float = field(default=60.0, metadata={"help": "How long a request waits for a restarting router actor before it gets a 503."})
    first_chunk_timeout_s: float = field(default=30.0, metadata={"help": "A pinned call that has not started on its replica within this long is treated as lost and re-dispatched (the first-token deadline bounds this wait too)."})
    first_token_timeout_s: float | None = field(default=60.0, metadata={"help": "Dispatch to first token: past it the call is cancelled, its replica dropped at the router (until its next heartbeat) and the request dispatched again, up to max_retries; then a 504 (code first_token_timeout). None: no limit."})
    token_timeout_s: float | None = field(default=30.0, metadata={"help": "Longest wait for the next output of a request that has produced some: past it the call is cancelled and the client gets a 504 (a started stream: an SSE error event, then [DONE]; code token_timeout). None: no limit."})
    request_timeout_s: float | None = field(default=None, metadata={"help": "Arrival to last token, queueing included: past it the request is cancelled wherever it is, with a 504 (code request_timeout). None (default): no limit, as a long queue under SJF is the policy at work; the other deadlines catch what hangs."})
    max_in_flight: int = field(default=1024, metadata={"help": "Requests one ingress replica admits at once (streams until their last byte); beyond it a 429 with Retry-After (code ingress_full), before the body is read. The chain: Serve's HTTP proxy holds at most num_replicas x max_ongoing_requests not yet assigned to an ingress replica (Serve's max_queued_requests, which counts a simultaneous burst whole; beyond: Serve's own plain-text 429), an ingress replica runs at most max_ongoing_requests (keep it above max_in_flight, so the OpenAI-style 429 comes first), the router queues at most router.max_queued (429 queue_full), and each ingress queues at most this many calls for the LLM replicas (their max_queued_requests)."})
    # Access control and metrics (docs/serving.md, "Security"; deployments/auth.py).
    api_keys: list[str] = field(default_factory=list, metadata={"help": "Literal API keys (Authorization: Bearer KEY). They travel in the Serve config, which serve status shows: for tests and laptops; elsewhere use api_keys_env. Any key configured (here or in the environment) turns the check on."})
    api_keys_env: str | None = field(default="SSJF_API_KEYS", metadata={"help": "Environment variable of the ingress replicas holding API keys (comma- or space-separated, several for rotation); null: none read."})
    require_api_key: bool = field(default=False, metadata={"help": "Refuse to start (the ingress replica fails, serve status says why) when no API key is configured. On in the cloud configs."})
    protect_metrics: bool = field(default=False, metadata={"help": "GET /metrics needs an API key too (then give Prometheus the key as a bearer token). /healthz is always open: it tells only ok/unavailable and counts."})
    accept_serve_hint_headers: bool = field(default=False, metadata={"help": "Accept client requests carrying x-request-timeout-seconds or x-request-disconnect-disabled (Serve's proxy obeys them: no timeout, no cancel on disconnect). Off: such a request gets 400 before any work is done."})
    metrics_push_s: float = field(default=1.0, metadata={"help": "How often each ingress replica sends its counters to the app's metrics store, which every /metrics answer reads (so counters add up over replicas)."})

    def __post_init__(self):
        _check(self.num_replicas >= 1, f"ingress.num_replicas must be >= 1, got {self.num_replicas}")
        self._check_access()
        _check(self.default_max_tokens >= 1, f"ingress.default_max_tokens must be >= 1, got {self.default_max_tokens}")
        for name in ("max_body_bytes", "max_messages"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"ingress.{name} must be an integer >= 1, got {value!r}")
        _check(self.max_retries >= 0, f"ingress.max_retries must be >= 0, got {self.max_retries}")
        for name in ("pin_grace_s", "router_timeout_s", "first_chunk_timeout_s"):
            value = getattr(self, name)
            _check(value > 0, f"ingress.{name} must be > 0, got {value!r}")
        for name in ("first_token_timeout_s", "token_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, (int, float)) and value > 0),
                   f"ingress.{name} must be > 0 or None (no limit), got {value!r}")
        _check(isinstance(self.max_in_flight, int) and self.max_in_flight >= 1,
               f"ingress.max_in_flight must be >= 1, got {self.max_in_flight!r}")

    def _check_access(self) -> None:
        from deployments.auth import check_env_name, check_key

        _check(isinstance(self.api_keys, list), f"ingress.api_keys must be a list of keys, got {type(self.api_keys).__name__}")
        for i, key in enumerate(self.api_keys):
            check_key(key, f"ingress.api_keys[{i}]")
        check_env_name(self.api_keys_env, "ingress.api_keys_env")
        _check(not self.require_api_key or bool(self.api_keys) or self.api_keys_env is not None,
               "ingress.require_api_key is true but there is nowhere to get a key from: set ingress.api_keys_env "
               "(an environment variable of the ingress replicas) or ingress.api_keys")
        _check(isinstance(self.metrics_push_s, (int, float)) and self.metrics_push_s > 0,
               f"ingress.metrics_push_s must be > 0, got {self.metrics_push_s!r}")


@dataclass
class AppConfig:
    """The whole application: ``build_app(AppConfig.from_dict(d).to_dict())``."""

    name: str = field(default="ssjf", metadata={"help": "Serve application name (also names the router actor)."})
    router: RouterSettings = field(default_factory=RouterSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    llm: LLMSettings = field(default_factory=LLMSettings)
    ingress: IngressSettings = field(default_factory=IngressSettings)

    def __post_init__(self):
        _check(isinstance(self.name, str) and self.name.replace("-", "").replace("_", "").isalnum(),
               f"name must be letters, digits, '-' or '_', got {self.name!r}")
        cap, slots = self.llm.max_ongoing_requests, self.llm.max_batch
        if self.routing_mode is RoutingMode.CENTRAL:
            # A pinned call to a full replica backs off (up to 0.5 s) in Serve: the router actor admits
            # work, so Serve's cap must never be what holds a dispatched call back.
            _check(cap is None or cap > slots,
                   f"llm.max_ongoing_requests must exceed max_batch ({slots}), got {cap}")
        else:
            _check(cap is None or cap >= slots,
                   f"llm.max_ongoing_requests must be at least max_batch ({slots}) with router.mode serve-default "
                   f"(fewer leaves slots idle), got {cap}")

    @property
    def routing_mode(self) -> RoutingMode:
        return RoutingMode.parse(self.router.mode)

    @property
    def llm_max_ongoing_requests(self) -> int:
        """Serve's ``max_ongoing_requests`` of the LLM deployment. Central: above the slots (the router
        admits work). serve-default: the slots, as a Serve user would set it for an engine with that
        many (Serve's own default is 5 whatever the engine): Serve then sends a replica no more than
        it can run, and the rest wait in Serve's queue, handed out oldest first as slots free."""
        if self.routing_mode is RoutingMode.SERVE_DEFAULT:
            return self.llm.max_ongoing_requests or self.llm.max_batch
        return self.llm.serve_max_ongoing_requests

    @classmethod
    def from_dict(cls, data: dict | None) -> AppConfig:
        data = dict(data or {})
        sections = {"router": RouterSettings, "proxy": ProxySettings, "llm": LLMSettings, "ingress": IngressSettings}
        valid = ["name", *sections]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {valid}")
        kwargs = {k: _from_dict(t, data.get(k), k) for k, t in sections.items()}
        return cls(name=data.get("name", "ssjf"), **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def router_actor_name(self) -> str:
        return self.router.actor_name or f"ssjf-router-{self.name}"

    @property
    def metrics_actor_name(self) -> str:
        """The app's metrics store (deployments/metrics.py), beside the router actor in its namespace."""
        return f"ssjf-metrics-{self.name}"

    def scheduler_config(self) -> SchedulerConfig:
        return self.router.scheduler_config(self.llm.batching_mode, self.llm.max_batch)


def describe(cls=AppConfig) -> list[tuple[str, str, str]]:
    """(key, default, help) for every knob: the source of docs/serving.md's table."""
    rows = []
    for f in fields(cls):
        if f.default_factory is not MISSING and f.name in ("router", "proxy", "llm", "ingress"):
            for sub in fields(f.default_factory):
                default = sub.default if sub.default is not MISSING else sub.default_factory()
                rows.append((f"{f.name}.{sub.name}", repr(default), sub.metadata.get("help", "")))
        else:
            rows.append((f.name, repr(f.default), f.metadata.get("help", "")))
    return rows
