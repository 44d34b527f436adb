"""The `synth` command line.

synth demo-data --out data/demo --scale default --seed 0 --workers 2
synth --help

Each subcommand's module is imported when that subcommand runs (or `--help` lists them): a render
helper process re-imports this module on start-up, and needs `synth.render` alone.
"""

from __future__ import annotations

import importlib
import logging

import click

# Subcommand name -> module holding its `command`.
COMMANDS = {"demo-data": "synth.demo", "render": "synth.render", "inspect": "synth.inspect"}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        return None if module is None else importlib.import_module(module).command


@click.group(
    name="synth",
    cls=_LazyGroup,
    help="Synthesis stage: demo data, cut-transform-paste rendering into shards, shard inspection.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
def main(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
