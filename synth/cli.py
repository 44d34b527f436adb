"""The `synth` command line.

synth demo-data --out data/demo --scale default --seed 0 --workers 2
synth --help
"""

from __future__ import annotations

import logging

import click

import synth.demo
from synth import inspect, render


@click.group(
    name="synth",
    help="Synthesis stage: demo data, cut-transform-paste rendering into shards, shard inspection.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
def main(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


main.add_command(synth.demo.command, name="demo-data")
main.add_command(render.command, "render")
main.add_command(inspect.command, "inspect")
