"""`loadgen`: the load-generator and simulator CLI.

Each subcommand lives in its own module (``loadgen/cmd_*.py``) and is imported lazily, so
``loadgen simulate`` never imports Ray or torch and ``loadgen --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, one-line help). Modules are imported only when the command runs.
_COMMANDS = {
    "simulate": ("loadgen.cmd_simulate", "simulate", "Discrete-event simulation of a workload through the router core."),
    "run": ("loadgen.cmd_run", "run", "Drive a live cluster over HTTP and record what clients see."),
    "report": ("loadgen.cmd_report", "report", "Summarise one run's results (table, optional plots)."),
    "compare": ("loadgen.cmd_report", "compare", "Compare several runs side by side (ratios per metric)."),
    "bench": ("loadgen.cmd_bench", "bench", "Start a local cluster per policy, run the same workload, compare."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
def main():
    """SSJF load generator: simulate, run against a live cluster, report, compare, bench."""


if __name__ == "__main__":
    main()
