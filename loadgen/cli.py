"""`loadgen`: the load-generator and simulator CLI.

Each subcommand lives in its own module (``loadgen/cmd_*.py``) and is imported lazily, so
``loadgen simulate`` never imports Ray or torch and ``loadgen --help`` stays fast.

``loadgen bench`` is an alias: starting clusters is the cluster tooling's job (``ssjf-cluster
bench``, ``cluster/bench.py``), and the load generator is only a client of HTTP and of the
scheduling core, so the alias runs that command as a process with the same arguments.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

# name -> (module, attribute, one-line help). Modules are imported only when the command runs.
_COMMANDS = {
    "simulate": ("loadgen.cmd_simulate", "simulate", "Discrete-event simulation of a workload through the router core."),
    "run": ("loadgen.cmd_run", "run", "Drive a live cluster over HTTP and record what clients see."),
    "report": ("loadgen.cmd_report", "report", "Summarise one run's results (table, optional plots)."),
    "compare": ("loadgen.cmd_report", "compare", "Compare several runs side by side (ratios per metric)."),
}
_ALIASES = {
    "bench": (["-m", "cluster.cli", "bench"], "Alias of `ssjf-cluster bench`: a local cluster per policy, the same workload, compared."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted([*_COMMANDS, *_ALIASES])

    def get_command(self, ctx, name):
        if name in _ALIASES:
            return _alias(name, *_ALIASES[name])
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, (_COMMANDS.get(name) or _ALIASES[name])[-1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _alias(name: str, argv: list[str], help_text: str) -> click.Command:
    """A command that runs ``python argv...`` with every argument it was given, and exits with its code."""

    @click.command(name=name, help=help_text, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def run_alias(ctx):
        ctx.exit(subprocess.call([sys.executable, *argv, *ctx.args]))

    return run_alias


@click.group(cls=LazyGroup)
def main():
    """SSJF load generator: simulate, run against a live cluster, report, compare, bench."""


if __name__ == "__main__":
    main()
