"""How well can any predictor rank one model's replies? An oracle that has seen the other answers.

For each (prompt, model) row of a split, predict the reply length by the geometric mean of the
*other* models' actual reply lengths to the same prompt, and score it with the proxy's metrics
(``proxy_model.metrics.length_metrics``). A prompt-only proxy cannot see those answers, so this is a
yardstick for its within-model Kendall tau, not a baseline it must beat.

    .venv/bin/python benchmarks/proxy_answer_oracle.py artifacts/data/arena_alpacaeval.parquet --split test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a table from `proxy-model prepare`")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    from proxy_model.data import read_prepared
    from proxy_model.metrics import length_metrics

    table = read_prepared(args.data)
    rows = [r for r in table.to_pylist() if r.get("split", args.split) == args.split]
    by_prompt = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt"]].append(r)
    out = defaultdict(lambda: ([], [], []))
    for r in rows:
        others = [math.log1p(o["output_tokens"]) for o in by_prompt[r["prompt"]] if o["model"] != r["model"]]
        if not others:
            continue  # a prompt answered by one model only has no other answers to look at
        guess = math.expm1(sum(others) / len(others))
        for key in ("all", r.get("source", "?")):
            pred, truth, models = out[key]
            pred.append(guess)
            truth.append(r["output_tokens"])
            models.append(r["model"])
    report = {}
    for key, (pred, truth, models) in out.items():
        m = length_metrics(pred, truth, models)
        report[key] = {k: m[k] for k in ("rows", "models", "kendall_tau_within_model", "kendall_tau", "binary_accuracy")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
