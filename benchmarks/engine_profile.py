"""Measure the simulator's engine profile (``router.cost_model.EngineProfile``) of the real ``hf``
engine on this machine, in continuous batching.

``measure`` drives :class:`deployments.engines.hf.HFEngine` directly (no Ray, no Serve), greedy, and
records iterations (``{"kind", "num_prefill_tokens", "batch_size", "num_context_tokens", "time_s"}``):

- **prefill**: one request alone with a prompt of P tokens (a repeated sentence in the chat
  template) and ``max_tokens`` 1: its time to first token is one iteration that prefills P tokens;
- **decode**: k requests of one long-answer instruction at once, ``max_tokens`` M: after the last of
  them streamed its first token, every iteration decodes one token for each of the k; the time
  per iteration is the span to the first end divided by the tokens the slowest stream gave in it.

``fit`` turns the measurements of one or more ``measure`` runs into profile coefficients
(:func:`fit_continuous`): the prefill rows give the cost per prompt token (least-squares slope),
the decode rows the fixed cost per iteration and the cost per running sequence (least-squares line
in the batch size); no weights floor and no KV-cache term (on a CPU a decode step of a 135M model
is bound by per-layer work, and the decode rows, whose context grows with the batch, cannot tell a
context term from the per-sequence one). The generic ``fit_profile`` fits all four terms by
non-negative least squares, which on these rows put the whole decode cost on the context term.

Run two ``measure`` processes at once to measure what each of two replicas gets on a shared box
(``scripts/live_bench.sh hf``):

    .venv/bin/python benchmarks/engine_profile.py measure --slots 1,4 --out /tmp/raw.json
    .venv/bin/python benchmarks/engine_profile.py fit /tmp/raw.json --out /tmp/engine.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LONG_ANSWER = "Write a detailed essay about the history of the printing press."
FILLER = "The quick brown fox jumps over the lazy dog near the river bank. "


def chat_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


async def stream_times(engine, ids_list: list[list[int]], max_tokens: int) -> list[list[float]]:
    """Per request, the time (s from the start) of each streamed token."""
    from deployments.engines.base import GenerationRequest

    t0 = time.perf_counter()
    times: list[list[float]] = [[] for _ in ids_list]

    async def one(i: int) -> None:
        req = GenerationRequest(request_id=f"p{i}-{time.monotonic_ns()}", prompt="", prompt_token_ids=tuple(ids_list[i]),
                                max_tokens=max_tokens, temperature=0.0, num_prompt_tokens=len(ids_list[i]))
        stream = engine.generate(req)
        try:
            async for d in stream:
                now = time.perf_counter() - t0
                times[i].extend([now] * d.num_tokens)
        finally:
            await stream.aclose()

    await asyncio.gather(*(one(i) for i in range(len(ids_list))))
    return times


async def measure(args) -> dict:
    import torch

    from deployments.config import LLMSettings
    from deployments.engines.hf import HFEngine

    torch.set_num_threads(args.threads)
    engine = HFEngine(LLMSettings(engine="hf", model=args.model, batching="continuous", max_batch=max(args.slots),
                                  device="cpu", max_ongoing_requests=None))
    await engine.start()
    rows = []
    try:
        tok = engine.tokenizer
        await stream_times(engine, [chat_ids(tok, "Hi")], 2)  # warm-up
        for target in args.prefill_tokens:
            text = FILLER * max(1, target // 14)
            ids = chat_ids(tok, text)[-target:]  # the end keeps the assistant cue
            for _ in range(args.repeats):
                t = await stream_times(engine, [ids], 1)
                rows.append({"kind": "prefill", "num_prefill_tokens": len(ids), "batch_size": 0,
                             "num_context_tokens": 0, "time_s": t[0][0]})
        ids = chat_ids(tok, LONG_ANSWER)
        for k in args.slots:
            for _ in range(args.repeats):
                t = await stream_times(engine, [ids] * k, args.max_tokens)
                start = max(ts[0] for ts in t)
                end = min(ts[-1] for ts in t)
                steps = min(sum(start < x <= end for x in ts) for ts in t)
                if steps < 4:
                    continue  # a reply ended almost at once: no steady decode span to time
                rows.append({"kind": "decode", "num_prefill_tokens": 0, "batch_size": k,
                             "num_context_tokens": k * (len(ids) + args.max_tokens // 2),
                             "time_s": (end - start) / steps})
    finally:
        await engine.stop()
    return {"name": f"{args.model}-cpu-continuous-{args.threads}thread",
            "source": (f"benchmarks/engine_profile.py on {os.uname().nodename}: hf engine, continuous, "
                       f"{args.threads} torch thread(s), {time.strftime('%Y-%m-%d %H:%M')}"),
            "measurements": rows}


def fit_continuous(measurements: list[dict], *, name: str = "measured", source: str = "") -> dict:
    """Profile coefficients (``EngineProfile.from_dict`` keys) from prefill and decode iterations."""
    import numpy as np

    pre = [(m["num_prefill_tokens"], m["time_s"]) for m in measurements if m["kind"] == "prefill"]
    dec = [(m["batch_size"], m["time_s"]) for m in measurements if m["kind"] == "decode"]
    if len({p for p, _ in pre}) < 2 or len({b for b, _ in dec}) < 2:
        raise ValueError(f"need prefill rows at 2+ prompt lengths and decode rows at 2+ batch sizes, got "
                         f"{sorted({p for p, _ in pre})} and {sorted({b for b, _ in dec})}")
    pre_x, pre_t = np.array(pre, dtype=float).T
    dec_b, dec_t = np.array(dec, dtype=float).T
    per_token = max(float(np.polyfit(pre_x, pre_t, 1)[0]), 0.0)
    slope, base = (float(x) for x in np.polyfit(dec_b, dec_t, 1))
    # A decode iteration of b sequences runs b tokens through the linear layers (per_token each)
    # plus the per-sequence work: t(b) = overhead + (per_seq + per_token) * b.
    return {"name": name, "source": source or f"fitted to {len(pre)} prefill and {len(dec)} decode iterations",
            "overhead_s": max(base, 0.0), "per_seq_s": max(slope - per_token, 0.0), "weights_floor_s": 0.0,
            "per_token_s": per_token, "per_context_token_s": 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="time prefill and decode iterations; write them as JSON")
    m.add_argument("--model", default="smollm2")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--slots", default="1,4", help="comma-separated decode batch sizes")
    m.add_argument("--prefill-tokens", default="64,256,768", help="comma-separated prompt lengths")
    m.add_argument("--max-tokens", type=int, default=40, help="decode: tokens per request")
    m.add_argument("--repeats", type=int, default=2)
    m.add_argument("--out", required=True)
    f = sub.add_parser("fit", help="profile coefficients from one or more measure files")
    f.add_argument("measurements", nargs="+")
    f.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        args.slots = [int(x) for x in args.slots.split(",")]
        args.prefill_tokens = [int(x) for x in args.prefill_tokens.split(",")]
        doc = asyncio.run(measure(args))
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{args.out}: {len(doc['measurements'])} iterations")
        return 0
    docs = [json.loads(Path(p).read_text()) for p in args.measurements]
    rows = [r for d in docs for r in d["measurements"]]
    source = docs[0]["source"] + (f" ({len(docs)} processes at once)" if len(docs) > 1 else "")
    doc = fit_continuous(rows, name=docs[0]["name"], source=source)
    from router.cost_model import EngineProfile

    p = EngineProfile.from_dict(doc)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{args.out}: decode step {p.iteration_time_s(0, 1, 0) * 1e3:.0f} ms at 1 sequence, "
          f"{(p.per_seq_s + p.per_token_s) * 1e3:.1f} ms per further sequence; prefill {p.per_token_s * 1e3:.2f} ms "
          f"per prompt token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
