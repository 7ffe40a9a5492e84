"""``loadgen run``: drive a live OpenAI-compatible cluster with a workload and record what clients see."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from loadgen.client import (
    ClientConfig,
    LoadClient,
    OpenLoopRun,
    default_model,
    is_replay_server,
    plan_requests,
)
from loadgen.options import WorkloadOptions, with_slo_columns, workload_options
from loadgen.progress import Progress
from loadgen.results import records_table, summarize, write_results

# Workload flags that make no sense with a prebuilt --workload file (its arrivals are used as they are).
_BUILD_ONLY = ("dataset", "trace", "rate", "num_requests", "duration", "seed")


@dataclass
class RunSettings:
    """How requests are addressed; ``model`` None means the first model the server lists."""

    model: str | None = None
    model_from_dataset: bool = False
    replay_lengths: bool | None = None  # None: on when /v1/models says the server replays
    # srpt on replay replicas (with replay_lengths): send each request's EMULATED re-predicted remaining
    # length at its progress points, the simulator's re-predictor (loadgen.repredict_sim spec string)
    # every ``repredict_every`` tokens with the simulator's seed (the router's seed), so the live run
    # gets exactly the re-predictions ``loadgen simulate`` gives the same workload. None: not sent.
    replay_repredictor: str | None = None
    repredict_every: int = 0
    repredict_seed: int = 0
    max_tokens: int | None = None
    temperature: float | None = None  # None: not sent (the server's default)
    label: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.model is not None and self.model_from_dataset:
            raise ValueError(f"give --model or --model-from-dataset, not both (got --model {self.model!r})")


@dataclass
class RunOutcome:
    summary: dict
    out_dir: Path
    config: dict


def default_out_dir(prefix: str = "run") -> Path:
    return Path("results") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def execute_run(client_config: ClientConfig, workload: pa.Table, settings: RunSettings, out_dir: Path,
                workload_config: dict, extra_config: dict | None = None) -> RunOutcome:
    """Run one workload against one server, write its results directory, return the summary.

    Raises click exceptions for problems a user can fix (no model, server unreachable); writes the
    records of an interrupted run before re-raising KeyboardInterrupt.
    """
    models = asyncio.run(_list_models(client_config, need_model=settings.model is None and not settings.model_from_dataset))
    model, replay, planned = _plan(client_config, workload, settings, models)
    run, interrupted = _send_all(client_config, planned, settings.progress)
    records = run.records if run is not None else []
    summary = summarize(records_table(records))
    config = {
        "command": "run",
        "label": settings.label or out_dir.name,
        "url": client_config.url,
        "client": client_config.to_dict(),
        "workload": workload_config,
        "model": model,
        "model_from_dataset": settings.model_from_dataset,
        "replay_lengths": replay,
        "replay_repredictor": ({"spec": settings.replay_repredictor, "every": settings.repredict_every,
                                "seed": settings.repredict_seed, "emulated": True}
                               if replay and settings.replay_repredictor else None),
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "server_models": models,
        "started_at_unix": run.started_at_unix if run else None,
        "elapsed_s": run.elapsed_s if run else None,
        "interrupted": interrupted,
        **(extra_config or {}),
    }
    write_results(out_dir, records, config, summary)
    if interrupted:
        click.echo(f"interrupted: partial results written to {out_dir}", err=True)
        raise KeyboardInterrupt
    return RunOutcome(summary=summary, out_dir=out_dir, config=config)


def _plan(client_config: ClientConfig, workload: pa.Table, settings: RunSettings,
          models: list[dict]) -> tuple[str | None, bool, list]:
    """(the model sent, whether true lengths are sent for replay, the planned requests)."""
    model = settings.model or (None if settings.model_from_dataset else default_model(models))
    if model is None and not settings.model_from_dataset:
        raise click.UsageError(f"{client_config.url}/v1/models lists no concrete model; pass --model NAME or --model-from-dataset")
    replay = settings.replay_lengths
    if replay is None:
        replay = is_replay_server(models) and "output_tokens" in workload.column_names
    try:
        planned = plan_requests(workload, model=model, model_from_dataset=settings.model_from_dataset,
                                replay_lengths=replay, max_tokens=settings.max_tokens,
                                temperature=settings.temperature,
                                replay_remaining=replay_repredictions(workload, settings) if replay else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return model, replay, planned


def replay_repredictions(workload: pa.Table, settings: RunSettings):
    """The EMULATED re-predictions to send (``RunSettings.replay_repredictor``), or None."""
    if settings.replay_repredictor is None or settings.repredict_every < 1 or "output_tokens" not in workload.column_names:
        return None
    from loadgen.repredict_sim import RepredictorSpec, remaining_predictions

    return remaining_predictions(workload.column("output_tokens").to_numpy(), settings.repredict_every,
                                 RepredictorSpec.parse(settings.replay_repredictor), settings.repredict_seed)


def _send_all(client_config: ClientConfig, planned: list, show_progress: bool) -> tuple[OpenLoopRun | None, bool]:
    """Send the planned requests open loop: (the run, whose records survive a Ctrl-C, and whether it was one)."""
    progress = Progress(len(planned), enabled=show_progress)
    holder: dict = {}

    async def go():
        async with LoadClient(client_config) as client:
            run = holder["run"] = OpenLoopRun(client, planned, on_sent=progress.on_sent, on_done=progress.on_done)
            await run.run()

    interrupted = False
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    return holder.get("run"), interrupted


async def _list_models(cfg: ClientConfig, need_model: bool) -> list[dict]:
    async with LoadClient(cfg) as client:
        try:
            return await client.list_models()
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach {cfg.url}: {type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPStatusError, ValueError) as exc:
            if need_model:
                raise click.ClickException(f"cannot list models at {cfg.url}/v1/models ({exc}); pass --model NAME") from exc
            click.echo(f"warning: {cfg.url}/v1/models failed ({exc}); replay lengths stay off unless asked for", err=True)
            return []


def load_workload_file(path: str, num_requests: int | None = None) -> pa.Table:
    table = pq.read_table(path)
    if num_requests is not None:
        table = table.slice(0, num_requests)
    return table


@click.command()
@click.option("--url", required=True, envvar="LOADGEN_URL", show_envvar=True,
              help="Base URL of the cluster, e.g. http://127.0.0.1:8000.")
@workload_options(with_load=False, with_temperature=True, with_slo=True)
@click.option("--api-key", default=None, envvar="SSJF_API_KEY", show_envvar=True,
              help="API key sent as Authorization: Bearer (for a cluster with ingress API keys on).")
@click.option("--workload", "workload_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A prebuilt workload Parquet (build_workload columns): its arrival times are used as they are.")
@click.option("--model", default=None, help="Model name sent with every request [default: the first that /v1/models lists].")
@click.option("--model-from-dataset", is_flag=True,
              help="Send each row's dataset model (the LLM that wrote the reference reply); for replay clusters.")
@click.option("--endpoint", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
              help="chat: /v1/chat/completions with the messages; completions: /v1/completions with the last user turn.")
@click.option("--stream/--no-stream", default=True, show_default=True,
              help="Stream answers (SSE). Without streaming TTFT and TPOT are not measured.")
@click.option("--replay-lengths/--no-replay-lengths", default=None,
              help="Send each request's true output length as replay_output_tokens (replay engines only) "
                   "[default: on when /v1/models marks the server as a replay engine].")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Cap on requests in flight [default: no cap]; waiting for it shows as send lag.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Per-request limit in seconds from send to the end of the answer.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Results directory [default: results/run-TIMESTAMP].")
@click.option("--label", default=None, help="Name of this run in reports and comparisons [default: the directory name].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--progress/--no-progress", default=None, help="Live progress bar on stderr [default: when stderr is a terminal].")
def run(url, api_key, workload_path, model, model_from_dataset, endpoint, stream, replay_lengths, concurrency, timeout_s,
        out_dir, label, as_json, progress, **workload_kwargs):
    """Drive a live cluster over HTTP with a workload; write per-request records and a summary.

    Requests are sent open loop at the workload's arrival times. Every request ends as one record
    (ok, error or timeout) in OUT/records.parquet, beside OUT/config.json and OUT/summary.json.
    --slo-ttft-s / --slo-jct-s (or a workload file's slo_ttft_s / slo_jct_s columns) are sent as the
    x-slo-ttft-ms / x-slo-jct-ms headers; the summary then gives the share of requests that met them.
    """
    ctx = click.get_current_context()
    given = [n for n in _BUILD_ONLY if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]
    if workload_path and given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given if n != "num_requests")
        if flags:
            raise click.UsageError(f"--workload fixes the prompts and arrivals; drop {flags}")
    opts = WorkloadOptions.from_kwargs(workload_kwargs)
    try:
        client_config = ClientConfig(url=url, endpoint=endpoint, stream=stream, timeout_s=timeout_s,
                                     max_concurrency=concurrency, api_key=api_key)
        settings = RunSettings(model=model, model_from_dataset=model_from_dataset, replay_lengths=replay_lengths,
                               max_tokens=opts.max_tokens, temperature=opts.temperature, label=label,
                               progress=sys.stderr.isatty() if progress is None else progress)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    if workload_path:
        workload = load_workload_file(workload_path, opts.num_requests)
        workload_config = {"path": str(workload_path), "num_requests": workload.num_rows, "max_tokens": opts.max_tokens,
                           "slo_ttft_s": opts.slo_ttft_s, "slo_jct_s": opts.slo_jct_s}
    else:
        spec = opts.spec(None)
        workload = build_workload_or_fail(spec)
        workload_config = {"options": opts.to_dict(), "spec": spec.to_dict()}
    # The SLO options apply to a workload file too (replacing its own SLO columns, if it has them).
    workload = with_slo_columns(workload, opts.slo_ttft_s, opts.slo_jct_s)
    out = Path(out_dir) if out_dir else default_out_dir()
    outcome = execute_run(client_config, workload, settings, out, workload_config)
    print_outcome(outcome, as_json)


def build_workload_or_fail(spec) -> pa.Table:
    """``build_workload(spec)``; a dataset or trace that cannot be read is a usage error (exit 2)."""
    from loadgen.workload import build_workload

    try:
        return build_workload(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc


def print_outcome(outcome: RunOutcome, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**outcome.summary, "label": outcome.config["label"], "results_dir": str(outcome.out_dir)},
                              indent=2, sort_keys=True))
        return
    from loadgen.cmd_report import format_summary

    click.echo(format_summary({outcome.config["label"]: outcome.summary}))
    line = slo_line(outcome.summary)
    if line:
        click.echo(line)
    click.echo(f"results: {outcome.out_dir}")


def slo_line(summary: dict) -> str | None:
    """The SLO attainment of a run whose requests carried objectives (None: they carried none)."""
    if summary.get("slo_attainment") is None:
        return None
    return (f"SLO attainment {summary['slo_attainment']:.1%}: {summary['num_slo_met']} of {summary['num_with_slo']} "
            f"requests met their objectives; {summary.get('num_shed') or 0} shed by the server (503 slo_unattainable)")
