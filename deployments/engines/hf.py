"""The ``hf`` engine: a transformers causal LM, streaming tokens, in three batching modes.

- ``none``: one request at a time (``model.generate`` on a worker thread).
- ``static``: the calls of one router batch (arriving within ``static_batch_wait_s``) run as one
  padded ``generate``; rows stream independently, the batch's slots free when it ends.
- ``continuous``: transformers' continuous batching manager (paged KV cache, a background
  generation thread); requests join and leave at every step, cancellation frees their pages.

Preemption (``srpt``, none and continuous): the replica closes the request's ``generate``, which
stops it like a cancel (continuous: ``ContinuousBatchingManager.cancel_request``, which frees its KV
pages: transformers 5.25 has no public call that sets a request aside keeping its pages, only its
own offloading under memory pressure); :meth:`HFEngine.resume_token_ids` gives the ids streamed so
far. A resumed request is admitted again with prompt + those ids as its prompt, so their KV cache is
recomputed by a prefill, and generates at most ``max_tokens - resume_tokens`` more; its text is
decoded after the earlier tokens (``DeltaStream``), so the stream goes on where it stopped.

Per-request ``temperature``/``top_p`` are honoured in ``none`` and ``static``; ``continuous``
decodes greedily (the manager applies one generation config to all requests).

Loading: ``dtype: auto`` is bfloat16 on CUDA and float32 on CPU. A GGUF checkpoint loads dense
(``GgufConfig(dequantize=True)``) unless ``gguf_weights: packed``; docs/engine_speed.md has the
measurements. The continuous manager's KV pages and per-step token budget scale with the slots
(:func:`continuous_sizing`), so ``max_batch`` requests really run at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from deployments.config import LLMSettings
from deployments.engines.base import Delta, DeltaStream, Engine, GenerationRequest
from proxy_model.causal_lm import disable_cudnn_attention, from_pretrained, resolve_dtype
from router.config import BatchingMode

logger = logging.getLogger(__name__)


class _Seq:
    """One request inside a ``generate`` batch (none/static modes)."""

    __slots__ = ("req", "prompt_ids", "stream", "cancelled", "finished", "arrived_at", "num_out", "budget")

    def __init__(self, req: GenerationRequest, prompt_ids: list[int], stream: DeltaStream, arrived_at: float):
        self.req = req
        self.prompt_ids = prompt_ids
        self.stream = stream
        self.cancelled = False
        self.finished = False
        self.arrived_at = arrived_at
        self.num_out = 0
        self.budget = req.max_tokens - req.resume_tokens  # new tokens it may still generate


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_gguf_weights(weights: str, device: str) -> str:
    """``auto`` is ``dense`` on every device.

    transformers 5.25 keeps GGUF blocks packed only for the architectures of its new loader (qwen35,
    qwen35moe, lfm2) and only where a matmul kernel loads from the Hub; otherwise it unpacks them
    itself. Llama-family files (SmolLM2) go through its legacy loader, which unpacks every tensor
    either way, so the two settings run the same dense ``nn.Linear`` layers; ``packed`` only leaves
    the quantizer attached (``is_quantized``, which DeepSpeed refuses to cast). Measured speeds are
    in docs/engine_speed.md. ``device`` is kept for a per-device choice.
    """
    del device
    return "dense" if weights == "auto" else weights


# The FIFO scheduler of transformers' continuous batching stops admitting prompts when fewer than
# this fraction of KV pages is free (FIFOScheduler's default safety margin).
CB_SAFETY_MARGIN = 0.15
AUTO_TOKENS_PER_SLOT = 2048


def continuous_sizing(slots: int, page_size: int, kv_pages: int | None, max_batch_tokens: int | None,
                      tokens_per_slot: int) -> tuple[int, int]:
    """(KV pages, tokens per step) for the continuous batching manager; explicit values win.

    Pages: every slot can hold ``tokens_per_slot`` tokens (prompt + reply) at once, on top of the
    scheduler's free margin, so ``slots`` requests decode together instead of being offloaded and
    recomputed. Tokens per step: every slot decodes one token in each step and prompts still
    prefill at least 1024 tokens a step.
    """
    if kv_pages is None:
        pages_per_slot = math.ceil(tokens_per_slot / page_size)
        kv_pages = math.ceil(slots * pages_per_slot / (1 - CB_SAFETY_MARGIN)) + 1
    if max_batch_tokens is None:
        max_batch_tokens = max(2048, slots + 1024)
    return kv_pages, max_batch_tokens


class HFEngine(Engine):
    """transformers generation behind the :class:`Engine` interface."""

    kind = "hf"
    supports_preemption = True  # none and continuous (srpt refuses static batching)

    gpu_dtype = "bfloat16"  # what dtype "auto" means on CUDA

    def __init__(self, settings: LLMSettings, *, model=None, tokenizer=None):
        """``model``/``tokenizer``: already loaded (benchmarks reuse one model across engines)."""
        self.settings = settings
        self.batching = settings.batching_mode
        self.num_slots = settings.max_batch
        self.tokenizer = tokenizer
        self.model = model
        self.device = "cpu"
        self.dtype_name = settings.dtype
        self.weights = settings.gguf_weights
        self.cb_sizing: dict | None = None  # what the continuous manager was given
        self.eos_ids: set[int] = set()
        self.pad_id = 0
        self._manager = None
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []  # the batch on the worker thread (none/static)
        self._batcher: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._streams: dict[tuple[str, int], DeltaStream] = {}  # (request id, attempt) -> its stream

    # ---- loading -----------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        if self.batching is BatchingMode.CONTINUOUS:
            await asyncio.to_thread(self._start_manager)
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="hf-generate")
            self._wake = asyncio.Event()
            self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    def _load(self) -> None:
        import torch
        from transformers import AutoTokenizer

        from proxy_model.offline_models import resolve_model_name

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        if self.model is not None and self.tokenizer is not None:  # handed over already loaded
            self.device = str(self.model.device.type)
            self.dtype_name = str(self.model.dtype).removeprefix("torch.")
            if self.device == "cuda":
                disable_cudnn_attention()
        else:
            path, kwargs = resolve_model_name(self.settings.model)
            self.device = resolve_device(self.settings.device)
            self.dtype_name = resolve_dtype(self.settings.dtype, self.device, self.gpu_dtype)
            self.weights = resolve_gguf_weights(self.settings.gguf_weights, self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            self.model = self._load_model(path, kwargs)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (eos[0] if eos else 0)

    def _load_model(self, path: str, kwargs: dict):
        return from_pretrained(path, kwargs, self.device, self.dtype_name, self.weights)

    def _start_manager(self) -> None:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        s = self.settings
        context = s.context_length or min(getattr(self.model.config, "max_position_embeddings", None)
                                          or AUTO_TOKENS_PER_SLOT, AUTO_TOKENS_PER_SLOT)
        kv_pages, max_batch_tokens = continuous_sizing(s.max_batch, s.cb_page_size, s.kv_pages, s.max_batch_tokens,
                                                       context)
        self.cb_sizing = {"slots": s.max_batch, "page_size": s.cb_page_size, "kv_pages": kv_pages,
                          "max_batch_tokens": max_batch_tokens, "tokens_per_slot": context}
        gen = GenerationConfig(do_sample=False, max_new_tokens=256, pad_token_id=self.pad_id,
                               eos_token_id=sorted(self.eos_ids) or -1)
        cb = ContinuousBatchingConfig(page_size=s.cb_page_size, num_blocks=kv_pages, max_batch_tokens=max_batch_tokens,
                                      max_requests_per_batch=s.max_batch, allow_block_sharing=False)
        self._manager = self.model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        self._manager.start()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        """What the model reads: the prompt, and a resumed request's tokens so far after it."""
        ids = list(req.prompt_token_ids) if req.prompt_token_ids is not None else self.tokenizer(req.prompt)["input_ids"]
        if req.resume_tokens:
            if req.resume_token_ids is None:
                raise ValueError(f"request {req.request_id!r} resumes after {req.resume_tokens} tokens without their "
                                 "ids (resume_token_ids): the hf engine re-prefills them")
            ids += list(req.resume_token_ids)
        return ids

    def _stream(self, request: GenerationRequest) -> DeltaStream:
        stream = DeltaStream(asyncio.get_running_loop(), self._decode, request.max_tokens,
                             request.resume_token_ids or (), request.resume_text)
        self._streams[(request.request_id, request.attempt)] = stream
        return stream

    def _forget(self, request: GenerationRequest, stream: DeltaStream) -> None:
        key = (request.request_id, request.attempt)
        if self._streams.get(key) is stream:
            del self._streams[key]

    def resume_token_ids(self, request: GenerationRequest) -> tuple[int, ...] | None:
        stream = self._streams.get((request.request_id, request.attempt))
        return None if stream is None else stream.sent_ids()

    # ---- generation --------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._manager is not None:
            async for d in self._generate_continuous(request):
                yield d
            return
        prompt_ids = self.prompt_ids(request)
        stream = self._stream(request)
        seq = _Seq(request, prompt_ids, stream, time.monotonic())
        self._waiting.append(seq)
        self._wake.set()
        try:
            async for d in stream.deltas(self.eos_ids):
                yield d
        finally:
            seq.cancelled = True  # stops its row (or its whole generate when alone)
            if seq in self._waiting:
                self._waiting.remove(seq)
            self._forget(request, stream)

    async def _generate_continuous(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        manager = self._manager
        stream = self._stream(request)
        cb_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"  # a retry may land on the same replica
        seen = 0

        def on_output(output) -> None:  # runs on this event loop (call_soon_threadsafe)
            nonlocal seen
            tokens = output.generated_tokens
            new, seen = tokens[seen:], len(tokens)
            error = output.error if output.error else None
            stream.push(new, finished=output.is_finished(), error=error)

        manager.register_result_handler(cb_id, on_output)
        finished = False
        try:
            added = await asyncio.to_thread(manager.add_request, self.prompt_ids(request), request_id=cb_id,
                                            max_new_tokens=request.max_tokens - request.resume_tokens, streaming=True)
            if added is None:
                raise RuntimeError("the continuous batching manager refused the request (stopping or failed)")
            async for d in stream.deltas(self.eos_ids):
                finished = d.finish_reason is not None
                yield d
        finally:
            if not finished:
                manager.cancel_request(cb_id)
            # A cancelled request gets no final output, so its handler would never be dropped.
            with manager.output_router._lock:
                manager.output_router.result_handlers.pop(cb_id, None)
            self._forget(request, stream)

    async def _batch_loop(self) -> None:
        """none/static: start a batch whenever the engine is idle and requests wait."""
        loop = asyncio.get_running_loop()
        static = self.batching is BatchingMode.STATIC
        while True:
            self._waiting = [s for s in self._waiting if not s.cancelled]
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            if static and self.settings.static_batch_wait_s > 0:
                wait = self._waiting[0].arrived_at + self.settings.static_batch_wait_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch = [s for s in self._waiting if not s.cancelled][: self.num_slots]
            self._waiting = [s for s in self._waiting if s not in batch]
            if not batch:
                continue
            self._running = batch
            try:
                await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as e:
                logger.exception("generation failed for %s", [s.req.request_id for s in batch])
                for s in batch:
                    s.stream.push([], finished=True, error=repr(e))
            finally:
                self._running = []

    def _run_batch(self, batch: list[_Seq]) -> None:
        """One padded ``generate`` on the worker thread; each row streams to its own request."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        width = max(len(s.prompt_ids) for s in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):  # left padding: every row's next token is at the end
            n = len(s.prompt_ids)
            if n:
                input_ids[i, width - n:] = torch.tensor(s.prompt_ids, dtype=torch.long)
                mask[i, width - n:] = 1
        sampling = any(s.req.temperature > 0 for s in batch)
        seed = batch[0].req.seed
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = dict(
            max_new_tokens=max(s.budget for s in batch), pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None, streamer=_RowStreamer(batch, self.eos_ids),
            stopping_criteria=StoppingCriteriaList([_RowsDone(batch)]), do_sample=sampling,
        )
        if sampling:
            kwargs.update(temperature=1.0, top_p=1.0, top_k=None,
                          logits_processor=LogitsProcessorList([_PerRowSampling(batch)]))
        try:
            with torch.inference_mode():
                self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        finally:
            for s in batch:
                if not s.finished:
                    s.finished = True
                    s.stream.push([], finished=True)

    def check_health(self) -> None:
        m = self._manager
        if m is not None and (not m.is_running() or m.background_thread_status.fatal_error is not None):
            raise RuntimeError("the continuous batching manager stopped")
        if self._batcher is not None and self._batcher.done():
            raise RuntimeError("the batching loop stopped")

    async def stop(self) -> None:
        if self._manager is not None:
            await asyncio.to_thread(self._manager.stop, True, 5.0)
        for seq in [*self._waiting, *self._running]:
            seq.cancelled = True  # a running generate stops after its current step
        if self._batcher is not None:
            self._batcher.cancel()
        if self._executor is not None:
            # Wait for that step, so nothing else uses the model once stop returns.
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


class _RowStreamer:
    """A transformers streamer that routes each row's new token to its request."""

    def __init__(self, batch: list[_Seq], eos_ids: set[int]):
        self.batch = batch
        self.eos_ids = eos_ids
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        tokens = value.reshape(len(self.batch), -1)[:, -1].tolist()
        for s, t in zip(self.batch, tokens, strict=True):
            if s.finished or s.cancelled:
                continue
            s.num_out += 1
            s.finished = t in self.eos_ids or s.num_out >= s.budget
            s.stream.push([t], finished=s.finished)

    def end(self) -> None:
        pass


class _RowsDone:
    """Stopping criterion per row: finished, cancelled or at its own max_tokens."""

    def __init__(self, batch: list[_Seq]):
        self.batch = batch

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.tensor([s.finished or s.cancelled for s in self.batch], device=input_ids.device)


class _PerRowSampling:
    """Per-row temperature and top-p (temperature 0: that row decodes greedily)."""

    def __init__(self, batch: list[_Seq]):
        self.temps = [s.req.temperature for s in batch]
        self.top_ps = [s.req.top_p for s in batch]

    def __call__(self, input_ids, scores):
        import torch

        device = scores.device
        temps = torch.tensor(self.temps, device=device, dtype=scores.dtype).unsqueeze(1)
        greedy = temps.squeeze(1) <= 0
        scores = scores / temps.clamp(min=1e-5)
        top_p = torch.tensor(self.top_ps, device=device, dtype=scores.dtype).unsqueeze(1)
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) > top_p  # always keeps the top token
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
        if greedy.any():
            best = scores[greedy].argmax(dim=-1, keepdim=True)
            scores[greedy] = torch.full_like(scores[greedy], float("-inf")).scatter(-1, best, 0.0)
        return scores
