"""Where a decode step of SmolLM2-135M goes on a GPU: a torch.profiler table of three decode steps at
batch 128 (KV cache, SDPA), then plain ``generate`` with a static KV cache (transformers compiles
the forward with CUDA graphs on the first call) at batch 128 and 512, twice each.

Run on the GPU host with the PYTHONPATH that ``scripts/gpu_engine_speed.sh`` sets up:

    PYTHONPATH=/tmp/pydeps:/tmp/llm_pkgs:. HF_HUB_OFFLINE=1 python3 docs/engine_speed_h200/diagnose_step.py
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from proxy_model.offline_models import smollm2_gguf


def load():
    path, gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    return tok, model.cuda().eval()


@torch.no_grad()
def profile_decode(tok, model, batch: int = 128, steps: int = 3) -> None:
    inputs = tok(["hi"] * batch, return_tensors="pt", padding=True).to("cuda")
    out = model(**inputs, use_cache=True)
    cache, ids = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(steps):  # warm up
        ids = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            ids = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="cpu_time_total", row_limit=12))
    gpu_ms = sum(e.self_device_time_total for e in events) / steps / 1e3
    print(f"GPU time per decode step at batch {batch}: {gpu_ms:.2f} ms")


@torch.no_grad()
def static_cache_generate(tok, model, batch: int, new_tokens: int = 128) -> None:
    inputs = tok(["Write a long story about a cat."] * batch, return_tensors="pt", padding=True).to("cuda")
    for rep in range(2):  # the first call compiles
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       cache_implementation="static")
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"static cache, batch {batch}, call {rep}: {dt:.2f} s, {batch * new_tokens / dt:,.0f} tok/s, "
              f"{dt / new_tokens * 1e3:.1f} ms/step")


def main() -> None:
    tok, model = load()
    print("attention:", model.config._attn_implementation, "| torch threads:", torch.get_num_threads())
    profile_decode(tok, model)
    for batch in (128, 512):
        static_cache_generate(tok, model, batch)


if __name__ == "__main__":
    main()
