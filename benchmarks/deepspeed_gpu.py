"""DeepSpeed inference on a GPU: decode tokens per second with and without kernel injection.

Run on a GPU host (one replica's worth of GPUs), from the repo root:

    python benchmarks/deepspeed_gpu.py --model lmsys/vicuna-7b-v1.5 --dtype float16
    deepspeed --num_gpus 2 benchmarks/deepspeed_gpu.py --model lmsys/vicuna-7b-v1.5 --tensor-parallel 2

For each mode (plain DeepSpeed inference, then kernel injection) the model is loaded fresh,
wrapped with ``deepspeed.init_inference``, warmed up, and asked to generate exactly
``--new-tokens`` tokens (greedy, ``min_new_tokens`` = ``max_new_tokens``, so the count is
exact) for batches of real chat prompts from the bundled arena sample. Reported per batch size:
tokens/s (batch x new tokens / wall time), time to the first token (a 1-token generate), and
peak GPU memory. The resolved configuration and the environment are written next to the numbers.
Injection needs an architecture DeepSpeed has a policy for (Llama, GPT-2/J/NeoX, OPT, BLOOM...).

``--allow-cpu`` runs the same code on CPU (DS_ACCELERATOR=cpu, no injection) with a small model,
only to smoke-test the script; its numbers mean nothing.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class BenchConfig:
    model: str = field(default="lmsys/vicuna-7b-v1.5", metadata={"help": "Hub name, local path or alias (smollm2)."})
    dtype: str = field(default="float16", metadata={"help": "float16 or bfloat16 (float32 on CPU)."})
    tensor_parallel: int = field(default=1, metadata={"help": "GPUs per model (launch with `deepspeed --num_gpus N`)."})
    batch_sizes: tuple[int, ...] = field(default=(1, 8), metadata={"help": "Batch sizes to measure."})
    new_tokens: int = field(default=128, metadata={"help": "Tokens generated per sequence."})
    prompt_tokens: int = field(default=256, metadata={"help": "Prompts are cut to at most this many tokens."})
    repeats: int = field(default=3, metadata={"help": "Timed runs per batch size (median reported)."})
    modes: tuple[str, ...] = field(default=("plain", "inject"), metadata={"help": "plain and/or inject."})
    allow_cpu: bool = field(default=False, metadata={"help": "Smoke-test on CPU (no injection)."})

    def __post_init__(self):
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        if self.tensor_parallel < 1:
            raise ValueError(f"tensor_parallel must be >= 1, got {self.tensor_parallel}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if self.new_tokens < 2 or self.prompt_tokens < 1 or self.repeats < 1:
            raise ValueError(f"new_tokens >= 2, prompt_tokens >= 1 and repeats >= 1 needed, got "
                             f"{self.new_tokens}, {self.prompt_tokens}, {self.repeats}")
        bad = [m for m in self.modes if m not in ("plain", "inject")]
        if bad or not self.modes:
            raise ValueError(f"modes must be among plain, inject; got {list(self.modes)}")


def load_prompts(n: int) -> list[list[dict]]:
    """Chat conversations from the bundled arena sample (no external data needed)."""
    try:
        from proxy_model.datasets import load_dataset

        table = load_dataset("arena", limit=max(n, 1))
        msgs = table.column("messages").to_pylist()
    except Exception:  # the sample is missing: fixed prompts keep the script usable
        msgs = [[{"role": "user", "content": f"Explain topic number {i} in detail."}] for i in range(n)]
    return [msgs[i % len(msgs)] for i in range(n)]


def encode(tokenizer, conversations: list[list[dict]], max_tokens: int, device):
    texts = []
    for conv in conversations:
        if getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
        else:
            texts.append("\n".join(f"{m['role']}: {m['content']}" for m in conv) + "\nassistant:")
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at its prompt
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
    return {k: v.to(device) for k, v in batch.items()}


def run_mode(cfg: BenchConfig, mode: str, device: str, local_rank: int) -> dict:
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from proxy_model.offline_models import resolve_model_name

    path, extra = resolve_model_name(cfg.model)
    dtype = getattr(torch, cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    model.eval()
    if "gguf_file" in extra:
        # transformers dequantizes GGUF weights into plain tensors at load but still flags the model
        # as quantized, which makes DeepSpeed's dtype cast refuse it.
        model.is_quantized = False
    t0 = time.perf_counter()
    engine = deepspeed.init_inference(model, tensor_parallel={"tp_size": cfg.tensor_parallel}, dtype=dtype,
                                      replace_with_kernel_inject=(mode == "inject"))
    init_s = time.perf_counter() - t0
    module = engine.module
    if device == "cuda":
        module.to(f"cuda:{local_rank}")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def generate(batch, new_tokens):
        with torch.inference_mode():
            out = module.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
        return out.shape[1] - batch["input_ids"].shape[1]

    dev = f"cuda:{local_rank}" if device == "cuda" else "cpu"
    rows = []
    for bs in cfg.batch_sizes:
        batch = encode(tokenizer, load_prompts(bs), cfg.prompt_tokens, dev)
        generate(batch, 4)  # warm-up: kernels built/compiled, caches allocated
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ttft_s, wall_s = _median_times(generate, sync, batch, cfg.new_tokens, cfg.repeats)
        rows.append({
            "mode": mode, "batch_size": bs, "prompt_tokens": int(batch["input_ids"].shape[1]),
            "new_tokens": cfg.new_tokens, "wall_s": wall_s, "tokens_per_s": bs * cfg.new_tokens / wall_s,
            "ttft_s": ttft_s, "init_inference_s": init_s,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        })
    return {"rows": rows}  # the model goes with this frame; main() empties the CUDA cache


def _median_times(generate, sync, batch, new_tokens: int, repeats: int) -> tuple[float, float]:
    """Median over ``repeats`` of the time to the first token (a 1-token generate) and of the
    time to generate ``new_tokens`` tokens; ``sync`` waits for the device around each timing."""
    ttft, wall = [], []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        generate(batch, 1)
        sync()
        ttft.append(time.perf_counter() - t)
        t = time.perf_counter()
        made = generate(batch, new_tokens)
        sync()
        wall.append(time.perf_counter() - t)
        assert made == new_tokens, f"generated {made} tokens, asked {new_tokens}"
    return sorted(ttft)[len(ttft) // 2], sorted(wall)[len(wall) // 2]


def environment(device: str) -> dict:
    import deepspeed
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
           "transformers": transformers.__version__, "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["num_gpus_visible"] = torch.cuda.device_count()
    return env


@click.command()
@click.option("--model", default=BenchConfig.model, show_default=True, help="Hub name, local path or alias (smollm2).")
@click.option("--dtype", default=None, help="float16 (GPU default), bfloat16, float32 (CPU default).")
@click.option("--tensor-parallel", default=1, show_default=True, type=int, help="GPUs per model; launch with `deepspeed --num_gpus N`.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--new-tokens", default=128, show_default=True, type=int)
@click.option("--prompt-tokens", default=256, show_default=True, type=int)
@click.option("--repeats", default=3, show_default=True, type=int)
@click.option("--modes", default="plain,inject", show_default=True, help="plain and/or inject.")
@click.option("--out", default="results/deepspeed_gpu.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--allow-cpu", is_flag=True, help="Smoke-test on CPU (no injection; numbers are meaningless).")
@click.option("--local_rank", "--local-rank", "local_rank", default=int(os.environ.get("LOCAL_RANK", 0)), type=int,
              hidden=True, help="Set by the deepspeed launcher.")
def main(model, dtype, tensor_parallel, batch_sizes, new_tokens, prompt_tokens, repeats, modes, out, allow_cpu, local_rank):
    """Decode tokens/s of DeepSpeed inference with and without kernel injection."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are fetched at setup, never here
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not allow_cpu:
        raise click.UsageError("no CUDA GPU visible: run this on a GPU host (or --allow-cpu to smoke-test the script)")
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        cfg = BenchConfig(model=model, dtype=dtype or ("float16" if on_gpu else "float32"), tensor_parallel=tensor_parallel,
                          batch_sizes=tuple(int(b) for b in batch_sizes.split(",") if b), new_tokens=new_tokens,
                          prompt_tokens=prompt_tokens, repeats=repeats,
                          modes=tuple(m for m in modes.split(",") if m), allow_cpu=allow_cpu)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    if not on_gpu and "inject" in cfg.modes:
        raise click.UsageError("kernel injection needs a GPU; on CPU use --modes plain")
    if on_gpu:
        torch.cuda.set_device(local_rank)

    rows = []
    for mode in cfg.modes:
        rows += run_mode(cfg, mode, "cuda" if on_gpu else "cpu", local_rank)["rows"]
        if on_gpu:
            import gc

            gc.collect()
            torch.cuda.empty_cache()  # the next mode loads the model afresh
    if local_rank != 0:
        return
    result = {"config": {**asdict(cfg), "batch_sizes": list(cfg.batch_sizes), "modes": list(cfg.modes)},
              "environment": environment("cuda" if on_gpu else "cpu"), "rows": rows,
              "note": None if on_gpu else "CPU smoke test: numbers are meaningless"}
    by = {(r["mode"], r["batch_size"]): r for r in rows}
    click.echo(f"{'mode':<8}{'batch':>6}{'tokens/s':>12}{'TTFT s':>10}{'peak GiB':>10}")
    for r in rows:
        mem = f"{r['peak_gpu_mem_gib']:.1f}" if r["peak_gpu_mem_gib"] is not None else "-"
        click.echo(f"{r['mode']:<8}{r['batch_size']:>6}{r['tokens_per_s']:>12.1f}{r['ttft_s']:>10.3f}{mem:>10}")
    for bs in cfg.batch_sizes:
        if ("plain", bs) in by and ("inject", bs) in by:
            ratio = by[("inject", bs)]["tokens_per_s"] / by[("plain", bs)]["tokens_per_s"]
            click.echo(f"batch {bs}: kernel injection = {ratio:.2f}x plain tokens/s")
            result.setdefault("inject_over_plain", {})[str(bs)] = ratio
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
