"""`evaluate`: score one init under one read-out; `evaluate report`: compare runs.

    evaluate --init random --data data/pidray --out runs/eval/random/probe      # eval.protocol
    evaluate --init runs/pretrain/segloc --protocol probe_mlp --out runs/eval/segloc/probe_mlp
    evaluate --init runs/pretrain/segloc --protocol finetune_10pct --out runs/eval/segloc/ft10
    evaluate --task instance --init random --out runs/instance/random
    evaluate report --runs 'runs/finetune/*' --pretrain 'runs/pretrain/*' --out reports
    torchrun --nproc_per_node 2 -m eval.cli --init random --out runs/finetune/random

The stages themselves live in `eval.probe`, `eval.finetune`, `eval.instance` and `eval.report`.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path

import click

from segloc.errors import UserError
from segloc.runlock import hold


@click.group(invoke_without_command=True)
@click.option(
    "--task",
    type=click.Choice(["semantic", "instance"]),
    default="semantic",
    show_default=True,
    help="semantic: probe or fine-tune (FCN/DeepLabV3/fused), mIoU; instance: Mask R-CNN, COCO AP/AR (eval.instance)",
)
@click.option(
    "--init",
    "init",
    metavar="SPEC",
    help="random | imagenet:PATH | exported backbone (backbone.pt or its run folder)",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    help="labeled set in PIDray layout; replaces data.foreground/data.test of params",
)
@click.option("--out", type=click.Path(file_okay=False), help="output folder")
@click.option(
    "--protocol",
    metavar="NAME",
    help="probe | probe_mlp | finetune | finetune_<N>pct (N % of the labeled scans) "
    "[default: eval.protocol]",
)
@click.option(
    "--params",
    type=click.Path(dir_okay=False),
    help="params file [default: params.yaml if present]",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a param, e.g. eval.finetune.steps=100 (repeatable)",
)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.pass_context
def main(ctx: click.Context, task, init, data, out, protocol, params, overrides, verbose) -> None:
    """Evaluate the backbone SPEC on segmentation and score it on every test split.

    --protocol chooses the read-out: probe trains a linear head on the frozen backbone's
    stride-8 features, probe_mlp a small conv head on them (with flips and turns), finetune
    trains the whole network (FCN, DeepLabV3 or fused) on every labeled scan, finetune_10pct
    on 10 % of them."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    given = init or data or out or protocol or params or overrides or task != "semantic"
    if ctx.invoked_subcommand is not None:
        if given:
            raise UserError(
                "--task/--init/--data/--out/--protocol/--params/--set go without a subcommand"
            )
        return
    if not init or not out:
        raise UserError("--init and --out are required (see evaluate --help)")
    rank0 = int(os.environ.get("RANK", "0")) == 0  # one lock per job, held by rank 0
    with hold(Path(out), "evaluate", beside=True) if rank0 else nullcontext():
        _run(task, init, data, out, protocol, params, overrides)


def _run(task, init, data, out, protocol, params, overrides) -> None:
    # torch is imported only when something is fine-tuned
    if task == "instance":
        from eval import instance as stage
    else:
        from eval.config import load_eval_config, load_run_params, parse_protocol

        cfg = load_eval_config(load_run_params(params, overrides))
        kind = parse_protocol(protocol, "--protocol").kind if protocol else None
        if (kind or parse_protocol(cfg.protocol).kind) == "finetune":
            from eval import finetune as stage
        else:
            from eval import probe as stage
        stage.main(init, out, data=data, params=params, overrides=overrides, protocol=protocol)
        return

    if protocol:
        raise UserError("--protocol: the instance task has its own recipe (eval.instance)")
    stage.main(init, out, data=data, params=params, overrides=overrides)


@main.command()
@click.option(
    "--runs",
    multiple=True,
    required=True,
    metavar="DIR|GLOB",
    help="fine-tuning output folder or glob (repeatable)",
)
@click.option(
    "--pretrain",
    multiple=True,
    metavar="DIR|GLOB",
    help="pretraining run folder or glob, for loss curves and settings (repeatable)",
)
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True)
def report(runs, pretrain, out) -> None:
    """Compare fine-tuning runs: results.md with tables and figures."""
    from eval import report as report_stage

    report_stage.main(runs, pretrain, out)


if __name__ == "__main__":
    main()
