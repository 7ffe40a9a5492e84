"""`proxy-model`: collect, prepare, train, evaluate and query the output-length proxy.

Heavy modules (torch, transformers) are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time; pass local paths


def _increasing(cast, noun: str):
    """A click callback: a comma-separated list of positive, strictly increasing ``cast`` values
    (empty: [])."""
    def parse(ctx, param, value):
        if not value:
            return []
        try:
            out = [cast(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {noun}, got {value!r}") from None
        if any(b <= a for a, b in zip(out, out[1:], strict=False)) or any(x <= 0 for x in out):
            raise click.BadParameter(f"need positive, strictly increasing {noun}, got {value!r}")
        return out

    return parse


_floats = _increasing(float, "numbers")
_ints = _increasing(int, "integers")


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _bad(exc: Exception, hint: str | None = None):
    raise click.BadParameter(str(exc), param_hint=hint) from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose):
    """Output-length proxy for speculative shortest-job-first scheduling."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output Parquet file.")
@click.option("--tokenizer", default="smollm2", show_default=True, help="Tokenizer for token counts.")
@click.option("--max-history-chars", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Characters of earlier turns kept before the last user turn (cut from the left).")
@click.option("--val-frac", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--test-frac", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--seed", default=0, show_default=True, help="Salt of the prompt-hash split.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Rows per input (first in file order).")
def prepare(inputs, out, tokenizer, max_history_chars, val_frac, test_frac, seed, limit):
    """Turn dataset files (or logs-schema JSONL/Parquet) into the proxy's Parquet table.

    INPUTS: dataset files (sharegpt, arena, alpaca_eval, alpaca, codealpaca), the built-in name 'arena', or your own logs
    (columns model, messages|prompt, output_tokens|output; see proxy_model/data.py).
    """
    from proxy_model.data import prepare as run

    try:
        summary = run(list(inputs), out, tokenizer=tokenizer, max_history_chars=max_history_chars,
                      val_frac=val_frac, test_frac=test_frac, seed=seed, limit=limit)
    except (ValueError, FileNotFoundError) as exc:
        _bad(exc, "INPUTS")
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output JSON lines (logs schema).")
@click.option("--model", default="smollm2", show_default=True, help="Causal LM path/name, or alias 'smollm2'.")
@click.option("--model-name", default=None, help="Name written to the 'model' column (default: from --model).")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Generation cap; capped replies are recorded with finished=false.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="0 = greedy decoding; > 0 samples.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Distinct prompts to run per input.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]), help="auto: bfloat16 on cuda, float32 on cpu.")
@click.option("--weights", default="dense", show_default=True, type=click.Choice(["dense", "packed"]),
              help="GGUF models: dense (dequantized at load) or packed (transformers' default).")
@click.option("--deadline-s", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Wall-clock budget (loading included): stop then, keeping every finished reply.")
@click.option("--resume/--overwrite", default=True, show_default=True,
              help="Skip prompts already in OUT (append) or start OUT afresh.")
def collect(inputs, out, model, model_name, max_new_tokens, temperature, top_p, batch_size, limit, seed, device,
            dtype, weights, deadline_s, resume):
    """Run a real LLM over the prompts of INPUTS and record its actual output lengths.

    Rows are appended batch by batch, so an interrupted or deadline-bound run keeps its work and a
    rerun with the same OUT continues where it stopped.
    """
    from proxy_model.collect import CollectConfig
    from proxy_model.collect import collect as run
    from proxy_model.data import read_input

    try:
        cfg = CollectConfig(model=model, model_name=model_name, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, device=device,
                            dtype=dtype, weights=weights, deadline_s=deadline_s)
        convs, seen = [], set()
        for name in inputs:
            count = 0
            for r in read_input(name):
                if r["prompt_id"] in seen:  # one generation per prompt, whichever model answered it
                    continue
                seen.add(r["prompt_id"])
                convs.append({"prompt_id": r["prompt_id"], "messages": r["messages"], "source": r["source"]})
                count += 1
                if limit and count >= limit:
                    break
        summary = run(convs, out, cfg, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        _bad(exc)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Artifact directory.")
@click.option("--encoder", default="minilm", show_default=True, help="HF encoder path/name, or alias 'minilm'.")
@click.option("--head", type=click.Choice(["regression", "classes", "binary", "censored"]), default="regression",
              show_default=True, help="censored: P(hits the cap) + log length of finished replies (logs with "
              "'finished' flags, e.g. from `proxy-model collect`).")
@click.option("--bucket-edges", callback=_floats, default="", help="Classes head: token edges, e.g. 64,128,256,512 "
              "(default: quantiles of the training lengths, --num-buckets of them).")
@click.option("--num-buckets", default=5, show_default=True, type=click.IntRange(min=2))
@click.option("--freeze-encoder", is_flag=True, help="Train only the head on cached encoder features (fast CPU path).")
@click.option("--pooling", type=click.Choice(["mean", "last-layers"]), default="mean", show_default=True,
              help="mean: BERT-like encoders. last-layers: a causal LM (e.g. --encoder smollm2, the served model "
              "itself) read at the last token of several layers, the prompt in its chat template.")
@click.option("--pool-layers", callback=_ints, default="", help="last-layers: the layers read, e.g. 6,12,18,24,30 "
              "(default: 5 spread up to the top).")
@click.option("--members", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --freeze-encoder: heads trained side by side on the same features, answers averaged.")
@click.option("--epochs", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--lr", "learning_rate", default=5e-5, show_default=True, type=float, help="Encoder learning rate.")
@click.option("--head-lr", "head_learning_rate", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Prompts per step.")
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=8), help="Encoder tokens per prompt.")
@click.option("--group-by-length", is_flag=True, help="Fine-tuning: batch prompts of similar token length "
              "(less padding; on the SmolLM2 data about half the encoder work at --max-length 256).")
@click.option("--hidden-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--dropout", default=0.1, show_default=True, type=click.FloatRange(min=0, max=1, max_open=True),
              help="Dropout on the features the head reads.")
@click.option("--rank-loss-weight", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the pairwise within-model ranking loss.")
@click.option("--source", "sources", multiple=True, help="Train only on rows of this source (repeatable).")
@click.option("--deepspeed", default=None, type=click.Path(exists=True, dir_okay=False),
              help="DeepSpeed config JSON, passed to the Trainer (GPU clusters).")
@click.option("--bf16", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True)
@click.option("--init-from", default=None, type=click.Path(exists=True, file_okay=False),
              help="Start from this artifact's encoder and head (fine-tune a general proxy for one model); "
              "--encoder is then ignored.")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(data, out, no_progress, sources, **kwargs):
    """Train the proxy on DATA (a table from `proxy-model prepare`) and write an artifact to OUT."""
    from proxy_model.config import TrainConfig

    try:
        cfg = TrainConfig(sources=list(sources), **kwargs)
    except ValueError as exc:
        _bad(exc)
    from proxy_model.train import train as run

    try:
        summary = run(data, out, cfg, progress=not no_progress)
    except (ValueError, FileNotFoundError) as exc:
        _bad(exc, "DATA")
    keep = ("train_rows", "train_prompts", "val_prompts", "train_loss", "train_seconds")
    click.echo(json.dumps({"artifact": out, **{k: summary[k] for k in keep}}, indent=2))


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "int8"]))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--baseline-artifact", "baseline_artifacts", multiple=True, metavar="NAME=PATH",
              help="Another proxy artifact scored next to ARTIFACT as a baseline (repeatable), "
              "e.g. general_proxy=artifacts/proxy-default.")
def evaluate(artifact, data, split, as_json, out, dtype, batch_size, baseline_artifacts):
    """Score ARTIFACT on a split of DATA: tau, Spearman, MAE, bucket, short/long and cap accuracy vs baselines."""
    from proxy_model.evaluate import evaluate as run
    from proxy_model.evaluate import format_report

    _quiet_transformers()
    extra = {}
    for item in baseline_artifacts:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {item!r}", param_hint="--baseline-artifact")
        if name in ("proxy", "per_model_mean", "prompt_length") or name in extra:
            raise click.BadParameter(f"baseline name {name!r} is taken", param_hint="--baseline-artifact")
        extra[name] = path
    try:
        report = run(artifact, data, split=split, batch_size=batch_size, dtype=dtype, baseline_artifacts=extra)
    except (ValueError, FileNotFoundError) as exc:
        _bad(exc)
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeatable); default: JSON lines on stdin.")
@click.option("--model", "model_name", default="<unk>", show_default=True, help="Target LLM of --prompt.")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16", "int8"]))
@click.option("--timeout-s", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Latency bound per call; past it the fallback answers.")
def predict(artifact, prompts, model_name, dtype, timeout_s):
    """Predict output tokens. Stdin lines: {"prompt": ..., "model": ...} or {"messages": [...], "model": ...}."""
    from proxy_model.predictor import LengthPredictor, text_for
    from proxy_model.text import proxy_text

    _quiet_transformers()
    rows = [{"prompt": p, "conversation": p, "model": model_name} for p in prompts]
    if not rows:
        for i, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise click.BadParameter(f"stdin line {i} is not JSON: {e}") from None
            if "prompt" not in rec and "messages" not in rec:
                raise click.BadParameter(f"stdin line {i} needs 'prompt' or 'messages', has {sorted(rec)}")
            conversation = rec["prompt"] if "prompt" in rec else rec["messages"]
            try:
                proxy_text(conversation)  # a malformed conversation is the caller's mistake: say which line
            except (ValueError, TypeError) as exc:
                raise click.BadParameter(f"stdin line {i}: {exc}") from None
            rows.append({**rec, "conversation": conversation, "model": rec.get("model", model_name)})
    if not rows:
        raise click.UsageError("no prompts: pass --prompt or JSON lines on stdin")
    try:
        pred = LengthPredictor.load(artifact, timeout_s=timeout_s, dtype=dtype)
        values = pred.predict([text_for(pred, r["conversation"]) for r in rows], [str(r["model"]) for r in rows])
    except (ValueError, FileNotFoundError) as exc:
        _bad(exc)
    for r, v in zip(rows, values, strict=True):
        out = {k: r[k] for k in r if k not in ("prompt", "messages", "conversation")}
        out["predicted_tokens"] = round(v, 1)
        click.echo(json.dumps(out))


def _points(ctx, param, value):
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(k < 0 for k in out) or sorted(set(out)) != out:
        raise click.BadParameter(f"need distinct, increasing integers >= 0, got {value!r}")
    return out


@main.command("train-remaining")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Artifact directory.")
@click.option("--eval-out", default=None, type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--tau-table", default=None, type=click.Path(dir_okay=False),
              help="Write the per-k tau table (numbers only, for the simulator) here.")
@click.option("--cache", default=None, type=click.Path(dir_okay=False), help="Encoder feature cache file (reruns).")
@click.option("--encoder", default="minilm", show_default=True, help="Frozen encoder: HF path/name or alias 'minilm'.")
@click.option("--tokenizer", default="smollm2", show_default=True, help="The served model's tokenizer (cuts replies).")
@click.option("--points", callback=_points, default="0,32,64,128,256,384", show_default=True,
              help="Fixed progress points k (evaluated; also trained on).")
@click.option("--random-per-reply", default=3, show_default=True, type=click.IntRange(min=0),
              help="Extra random progress points per training reply.")
@click.option("--tail-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="Generated tokens the predictor reads (the last N).")
@click.option("--tail-stats/--no-tail-stats", "use_tail_stats", default=True, show_default=True,
              help="Repetition statistics of the tail as head inputs.")
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", "learning_rate", default=3e-4, show_default=True, type=float)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--hidden-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--dropout", default=0.3, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--weight-decay", default=0.05, show_default=True, type=click.FloatRange(min=0))
@click.option("--rank-loss-weight", default=0.5, show_default=True, type=click.FloatRange(min=0))
@click.option("--val-frac", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--test-frac", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--seed", default=0, show_default=True, help="Salt of the prompt-hash split (as prepare's) and seed.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]),
              help="Split scored (val: for choosing settings; it also picks the epoch).")
@click.option("--cap", default=None, type=click.IntRange(min=1), help="Generation cap (default: the longest capped reply).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="First N rows of DATA only.")
def train_remaining(data, out, eval_out, tau_table, cache, split, **kwargs):
    """Train and evaluate a remaining-length predictor on DATA: logs-schema replies WITH their text
    ('output'), e.g. from `proxy-model collect`. Scored on the test split against the prompt-only
    prediction minus the tokens so far; see docs/proxy_model.md, "Remaining-length prediction"."""
    from proxy_model.remaining import RemainingConfig
    from proxy_model.remaining import tau_table as make_table
    from proxy_model.remaining import train_remaining as run

    _quiet_transformers()
    try:
        cfg = RemainingConfig(**kwargs)
        report = run(data, out, cfg, cache_path=cache, split=split, log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as exc:
        _bad(exc, "DATA")
    for path, doc in ((eval_out, report), (tau_table, make_table(report) if tau_table else None)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
    click.echo(json.dumps({"artifact": out, "tau": report["tau"], "seconds": report["seconds"]}, indent=2))


if __name__ == "__main__":
    main()
