"""Tokens/s and time to first token of the real ``hf`` engine, per batching mode and slot count.

Drives :class:`deployments.engines.hf.HFEngine` directly (no Ray, no Serve, no router): N greedy
requests of fixed chat prompts (cycled), each capped at ``--max-tokens``, all arriving at once;
at most ``slots`` of them are in the engine at a time, as the router would admit them. For each
configuration it prints, and with ``--json`` writes:

- ``tok/s``: tokens streamed by all requests / seconds from the first arrival to the last token
  (or to the deadline);
- ``TTFT p50/p90``: seconds from arrival (t = 0 for every request, so queueing for a slot is
  included) to the first streamed token; ``in-engine`` is the same from when the request got its
  slot;
- ``peak``: the most requests streaming at once (first token out, last not yet), which shows
  whether ``slots`` requests really ran together; continuous mode also counts the requests the
  manager evicted because the KV pages ran out (they are recomputed or copied back later).

``--deadline-s`` bounds each configuration: what is still running then is cancelled and the
configuration reports what finished (``done`` < ``requests``). The model loads once and is shared
by every configuration (load time is printed apart).

    .venv/bin/python benchmarks/engine_speed.py --device cpu --slots 1,4,8 --requests 16 --max-tokens 32
    python benchmarks/engine_speed.py --device cuda --dtype bfloat16 --weights dense \\
        --runs none:1:8,static:32:64,continuous:32:64,continuous:128:256 --max-tokens 256 --deadline-s 50

Imports only torch, transformers and the project's pure-Python config (no Ray), so it runs on a
bare GPU host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Fixed instructions, short- and long-answer ones mixed; request i asks PROMPTS[i % len(PROMPTS)].
PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Write a detailed essay about the history of the printing press.",
    "Is 17 a prime number? Answer yes or no.",
    "Explain step by step how a refrigerator keeps food cold.",
    "Name three primary colors.",
    "Write a short story about a robot who learns to paint.",
    "Translate 'good morning' into Spanish.",
    "List ten ideas for a rainy weekend, with a sentence about each.",
]
MODES = ("none", "static", "continuous")


class OffloadCounter(logging.Handler):
    """Counts the requests transformers' continuous batching evicts for want of KV pages (they are
    copied to CPU or recomputed later): its "Offloaded N requests (...)" INFO lines."""

    LOGGER = "ContinuousBatchingLogger"

    def __init__(self):
        super().__init__(logging.INFO)
        self.requests = 0

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"Offloaded (\d+) requests", record.getMessage())
        if m:
            self.requests += int(m.group(1))

    def __enter__(self):
        log = logging.getLogger(self.LOGGER)
        self._level = log.level
        log.addHandler(self)
        if not log.isEnabledFor(logging.INFO):
            log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        log = logging.getLogger(self.LOGGER)
        log.removeHandler(self)
        log.setLevel(self._level)


def parse_runs(text: str, default_requests: int, default_deadline: float | None) -> list[dict]:
    """``MODE:SLOTS[:REQUESTS[:DEADLINE_S]]`` items, comma-separated."""
    runs = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if not 2 <= len(parts) <= 4 or parts[0] not in MODES:
            raise ValueError(f"bad run {item!r}: want MODE:SLOTS[:REQUESTS[:DEADLINE_S]] with MODE in {MODES}")
        slots = int(parts[1])
        requests = int(parts[2]) if len(parts) > 2 and parts[2] else default_requests
        deadline = float(parts[3]) if len(parts) > 3 and parts[3] else default_deadline
        if slots < 1 or requests < 1 or (deadline is not None and deadline <= 0):
            raise ValueError(f"bad run {item!r}: slots and requests must be >= 1, the deadline > 0")
        if parts[0] == "none" and slots != 1:
            raise ValueError(f"bad run {item!r}: mode none has one slot")
        runs.append({"mode": parts[0], "slots": slots, "requests": requests, "deadline_s": deadline})
    if not runs:
        raise ValueError("no runs")
    return runs


def grid(modes: list[str], slots: list[int], requests: int, deadline: float | None) -> list[dict]:
    """--modes x --slots; mode none runs once, with one slot."""
    runs = []
    for mode in modes:
        for n in ([1] if mode == "none" else slots):
            runs.append({"mode": mode, "slots": n, "requests": requests, "deadline_s": deadline})
    return runs


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def prompt_ids(tokenizer, n: int) -> list[list[int]]:
    out = []
    for text in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append(list(ids))
    return [out[i % len(out)] for i in range(n)]


async def run_one(engine, run: dict, ids: list[list[int]], max_tokens: int) -> dict:
    """All requests arrive at t = 0; a semaphore of ``slots`` admits them, as the router would."""
    from deployments.engines.base import GenerationRequest

    sem = asyncio.Semaphore(run["slots"])
    records = [{"tokens": 0, "ttft": None, "admitted": None, "end": None, "finish": None} for _ in ids]
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        rec = records[i]
        req = GenerationRequest(request_id=f"r{i}", prompt="", prompt_token_ids=tuple(ids[i]), max_tokens=max_tokens,
                                temperature=0.0, num_prompt_tokens=len(ids[i]))
        async with sem:
            rec["admitted"] = time.perf_counter() - t0
            stream = engine.generate(req)
            try:
                async for d in stream:
                    now = time.perf_counter() - t0
                    rec["tokens"] += d.num_tokens
                    if rec["ttft"] is None and (d.num_tokens or d.finish_reason):
                        rec["ttft"] = now
                    if d.finish_reason:
                        rec["end"], rec["finish"] = now, d.finish_reason.value
            finally:
                await stream.aclose()

    tasks = [asyncio.create_task(one(i)) for i in range(len(ids))]
    done, pending = await asyncio.wait(tasks, timeout=run["deadline_s"])
    elapsed = time.perf_counter() - t0
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    errors = [repr(t.exception()) for t in done if not t.cancelled() and t.exception() is not None]
    if not pending:
        elapsed = max((r["end"] for r in records if r["end"] is not None), default=elapsed)
    finished = [r for r in records if r["finish"] is not None]
    tokens = sum(r["tokens"] for r in records)
    # Most requests streaming at once (first token seen, last not yet): 128 slots should show 128.
    events = sorted([(r["ttft"], 1) for r in records if r["ttft"] is not None]
                    + [(r["end"], -1) for r in records if r["ttft"] is not None and r["end"] is not None])
    peak = running = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        running += step
        peak = max(peak, running)
    ttft = [r["ttft"] for r in records if r["ttft"] is not None]
    engine_ttft = [r["ttft"] - r["admitted"] for r in records if r["ttft"] is not None]
    return {
        **run, "done": len(finished), "deadline_hit": bool(pending), "errors": errors[:3], "tokens": tokens,
        "seconds": round(elapsed, 3), "tokens_per_s": round(tokens / elapsed, 2) if elapsed > 0 else None,
        "ttft_p50_s": _r(percentile(ttft, 50)), "ttft_p90_s": _r(percentile(ttft, 90)),
        "engine_ttft_p50_s": _r(percentile(engine_ttft, 50)), "engine_ttft_p90_s": _r(percentile(engine_ttft, 90)),
        "peak_streaming": peak,
        "finish_reasons": {k: sum(r["finish"] == k for r in finished) for k in ("stop", "length")},
        "tokens_per_request": [r["tokens"] for r in records],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


async def bench(args, runs: list[dict]) -> dict:
    import torch
    import transformers

    from deployments.config import LLMSettings
    from deployments.engines.hf import HFEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    model = tokenizer = None
    meta = {"model": args.model, "device": args.device, "dtype": args.dtype, "weights": args.weights,
            "max_tokens": args.max_tokens, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "host": platform.node()}
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
    results = []
    for run in runs:
        settings = LLMSettings(engine="hf", model=args.model, batching=run["mode"], max_batch=run["slots"],
                               device=args.device, dtype=args.dtype, gguf_weights=args.weights,
                               static_batch_wait_s=args.static_wait_s, max_ongoing_requests=None,
                               context_length=args.context_length, kv_pages=args.kv_pages,
                               max_batch_tokens=args.max_batch_tokens)
        engine = HFEngine(settings, model=model, tokenizer=tokenizer)
        label = f"{run['mode']} x{run['slots']}"
        t = time.perf_counter()
        try:
            await engine.start()
            if model is None:
                meta["load_s"] = round(time.perf_counter() - t, 2)
                meta.update(device=engine.device, dtype=engine.dtype_name, weights=engine.weights,
                            model_class=type(engine.model).__name__,
                            quantizer=type(getattr(engine.model, "hf_quantizer", None)).__name__)
                print(f"loaded {args.model} on {engine.device} ({engine.dtype_name}, weights {engine.weights}) "
                      f"in {meta['load_s']} s", flush=True)
            model, tokenizer = engine.model, engine.tokenizer
            ids = prompt_ids(tokenizer, run["requests"])
            await run_one(engine, {**run, "slots": 1, "deadline_s": run["deadline_s"]}, ids[:1], 2)  # warm-up
            with OffloadCounter() as offloads:
                result = await run_one(engine, run, ids, args.max_tokens)
            if engine.cb_sizing:
                result["cb_sizing"] = engine.cb_sizing
                result["offloaded"] = offloads.requests
        except Exception as e:  # one failing configuration (OOM, a missing kernel) must not lose the others
            result = {**run, "error": repr(e)}
        finally:
            try:
                await asyncio.wait_for(engine.stop(), timeout=30)
            except Exception as e:  # noqa: BLE001
                print(f"{label}: stop failed: {e!r}", file=sys.stderr)
        if torch.cuda.is_available():
            result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        results.append(result)
        print(row(result), flush=True)
        if args.json:
            write_json(args.json, meta, results)
    return {"meta": meta, "results": results}


HEADER = (f"{'mode':<11}{'slots':>6}{'done':>10}{'tokens':>8}{'s':>8}{'tok/s':>9}"
          f"{'TTFT p50':>10}{'p90':>8}{'in-engine p50':>15}{'p90':>8}{'peak':>6}  note")


def row(r: dict) -> str:
    def f(x, w, p=2):
        return f"{'-':>{w}}" if x is None else f"{x:>{w}.{p}f}"

    if "error" in r:
        return f"{r['mode']:<11}{r['slots']:>6}  error: {r['error'][:200]}"
    note = "deadline" if r["deadline_hit"] else ""
    if r.get("offloaded"):
        note += f" {r['offloaded']} requests evicted (KV pages ran out)"
    if r["errors"]:
        note += f" errors: {r['errors']}"
    done = f"{r['done']}/{r['requests']}"
    return (f"{r['mode']:<11}{r['slots']:>6}{done:>10}{r['tokens']:>8}{r['seconds']:>8.1f}{f(r['tokens_per_s'], 9, 1)}"
            f"{f(r['ttft_p50_s'], 10)}{f(r['ttft_p90_s'], 8)}{f(r['engine_ttft_p50_s'], 15)}"
            f"{f(r['engine_ttft_p90_s'], 8)}{r['peak_streaming']:>6}  {note}")


def write_json(path: str, meta: dict, results: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    tmp.replace(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="alias (smollm2), hub name or local path")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="auto: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--weights", default="auto", choices=["auto", "dense", "packed"], help="GGUF weights (auto: dense)")
    ap.add_argument("--modes", default="none,static,continuous", help="comma-separated: none, static, continuous")
    ap.add_argument("--slots", default="1,4,8", help="comma-separated slot counts (mode none: always 1)")
    ap.add_argument("--requests", type=int, default=16, help="requests per configuration")
    ap.add_argument("--max-tokens", type=int, default=64, help="token cap per request")
    ap.add_argument("--runs", default=None,
                    help="explicit configurations MODE:SLOTS[:REQUESTS[:DEADLINE_S]],... (replaces --modes x --slots)")
    ap.add_argument("--deadline-s", type=float, default=None, help="per configuration: cancel what still runs then")
    ap.add_argument("--context-length", type=int, default=None,
                    help="continuous: tokens each slot's KV pages must hold (default: the engine's auto)")
    ap.add_argument("--kv-pages", type=int, default=None, help="continuous: KV pages (default: auto from the slots)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="continuous: tokens per step (default: auto)")
    ap.add_argument("--static-wait-s", type=float, default=0.01, help="static: how long a batch gathers requests")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", default=None, help="write meta + results here (rewritten after each configuration)")
    args = ap.parse_args(argv)
    try:
        if args.runs:
            runs = parse_runs(args.runs, args.requests, args.deadline_s)
        else:
            modes = [m.strip() for m in args.modes.split(",") if m.strip()]
            bad = [m for m in modes if m not in MODES]
            if bad or not modes:
                raise ValueError(f"--modes: unknown {bad}; choose from {MODES}")
            slots = [int(x) for x in args.slots.split(",") if x.strip()]
            if not slots or min(slots) < 1:
                raise ValueError("--slots: positive integers")
            runs = grid(modes, slots, args.requests, args.deadline_s)
        if args.requests < 1 or args.max_tokens < 1:
            raise ValueError("--requests and --max-tokens must be >= 1")
    except ValueError as e:
        ap.error(str(e))
    print(HEADER, flush=True)
    out = asyncio.run(bench(args, runs))
    print(HEADER)
    for r in out["results"]:
        print(row(r))
    if args.json:
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in out["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
