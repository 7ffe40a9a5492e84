"""Proxy prediction speed on this machine: batched throughput and single-prompt latency.

End to end through ``LengthPredictor.predict`` (tokenising included), on prompts of exactly
``--prompt-tokens`` encoder tokens (default 128, special tokens included). Each configuration is
measured ``--repeats`` times; best and median are printed (other processes share the CPU, so the
best is the machine's capability and the median what a busy box gives).

    .venv/bin/python benchmarks/proxy_speed.py --artifact artifacts/proxy-default
    .venv/bin/python benchmarks/proxy_speed.py --dtypes fp32,bf16,int8 --batch-sizes 16,64

Without ``--artifact`` a randomly initialised head on the default encoder (MiniLM-L6) is used:
the same compute as a trained artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def untrained_artifact(path: Path, max_length: int) -> Path:
    from transformers import AutoModel, AutoTokenizer

    from proxy_model.config import HeadConfig
    from proxy_model.model import LengthModel
    from proxy_model.offline_models import minilm_encoder_dir

    enc = str(minilm_encoder_dir())
    encoder = AutoModel.from_pretrained(enc)
    cfg = HeadConfig(encoder_dim=encoder.config.hidden_size, models=["model-a"], max_length=max_length,
                     log_mean=5.0, log_std=1.0)
    LengthModel(encoder, cfg).save(path, tokenizer=AutoTokenizer.from_pretrained(enc))
    return path


def make_prompts(tokenizer, n: int, num_tokens: int, seed: int = 0) -> list[str]:
    """n prompts that tokenise to exactly ``num_tokens`` ids with special tokens."""
    rng = random.Random(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2]
    words.sort()
    body = num_tokens - 2
    prompts = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(body * 2))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        k = body
        for _ in range(10):  # decode/re-encode may merge or split pieces: adjust until exact
            prompt = tokenizer.decode(ids[:k])
            n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if n == body:
                break
            k += body - n
        prompts.append(prompt)
    return prompts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--dtypes", default="bf16,fp32,int8")
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--num-batched", type=int, default=512, help="prompts per batched measurement")
    ap.add_argument("--num-single", type=int, default=100, help="single-prompt calls per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args(argv)

    import torch

    from proxy_model.engine import cpu_has_native_bf16
    from proxy_model.predictor import LengthPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    artifact = args.artifact
    if artifact is None:
        tmp = tempfile.TemporaryDirectory()
        artifact = str(untrained_artifact(Path(tmp.name) / "proxy", max_length=max(128, args.prompt_tokens)))
    results = {"artifact": artifact, "prompt_tokens": args.prompt_tokens, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "native_bf16": cpu_has_native_bf16(),
               "loadavg_at_start": os.getloadavg(), "runs": []}
    for dtype in args.dtypes.split(","):
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
            pred = LengthPredictor.load(artifact, timeout_s=None, batch_size=bs, dtype=dtype)
            model = pred.known_models[0] if pred.known_models else "any"
            prompts = make_prompts(pred._engine.tok.tokenizer, args.num_batched, args.prompt_tokens)
            lens = {len(s) for s in pred._engine.tok(prompts[:32])}
            pred.predict(prompts[:bs], [model] * bs)  # warm up
            batched = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                pred.predict(prompts, [model] * len(prompts))
                batched.append(len(prompts) / (time.perf_counter() - t0))
            single = []
            for _ in range(args.repeats):
                lat = []
                for p in prompts[: args.num_single]:
                    t0 = time.perf_counter()
                    pred.predict([p], [model])
                    lat.append((time.perf_counter() - t0) * 1000)
                single.append(statistics.median(lat))
            run = {"dtype": pred.config["dtype"], "batch_size": bs, "encoder_tokens": sorted(lens),
                   "batched_per_s_best": round(max(batched), 1), "batched_per_s_median": round(statistics.median(batched), 1),
                   "single_median_ms_best": round(min(single), 2), "single_median_ms_median": round(statistics.median(single), 2),
                   "loadavg": os.getloadavg()}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            pred.close()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
