"""`pretrain`: self-supervised (or supervised) pretraining of a ResNet on rendered shards.

    pretrain --method segloc --shards data/shards --out runs/segloc
    pretrain --method insloc --shards data/shards --out runs/insloc --set pretrain.steps=500
    pretrain --method segloc --shards data/shards --out runs/segloc --resume     # after SIGTERM
    pretrain --nproc-per-node 2 --method segloc --shards data/shards --out runs/segloc  # DDP here
    torchrun --nproc_per_node 4 -m train.cli --method segloc --shards data/shards --out runs/segloc

Methods: segloc (mask pooling, one queue per class), insloc (box RoIAlign, one queue),
moco (image level, one queue), supervised (per-pixel cross-entropy on the label maps).
With --nproc-per-node N the ranks start on this machine (torch's elastic launcher); if one dies, the
others stop and the job ends in one line naming the rank, its step, the last checkpoint and the
resume command. A second run into an OUT that a live run holds is refused.
Params come from the `pretrain` section of params.yaml (cwd, or --params); without a params file
the built-in defaults apply. --set takes dotted keys (pretrain.lr=0.1) and may repeat.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from segloc import dist
from segloc.atomic import DiskFull
from segloc.params import DEFAULT_PARAMS, load_run_params
from segloc.runlock import hold
from train import ranks
from train.config import METHODS, PretrainConfig, load_pretrain_config
from train.loop import Interrupted, PeerLost, run

log = logging.getLogger(__name__)


def resolve_params(params_file: str | None, overrides: tuple[str, ...]) -> dict:
    """params.yaml (or --params) over the code defaults of `pretrain`, then --set overrides."""
    if params_file is None and not DEFAULT_PARAMS.is_file():
        log.info("no params.yaml here: using the built-in pretrain defaults")
    return load_run_params(params_file, overrides, {"pretrain": PretrainConfig})


def _setup_logging(verbose: bool) -> None:
    rank_zero = not dist.launched_by_torchrun() or int(os.environ.get("RANK", 0)) == 0
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if rank_zero else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--method", required=True, type=click.Choice(sorted(METHODS)), help="Pretraining method."
)
@click.option(
    "--shards",
    "shards_dir",
    required=True,
    help="Folder or URL (s3://BUCKET/PREFIX, gs://...) of train-*.tar shards and manifest.json "
    "(synth render output); credentials from the environment.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--params",
    "params_file",
    default=None,
    type=click.Path(),
    help="Params YAML (default: ./params.yaml, else built-in defaults).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a param, e.g. pretrain.steps=200 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option(
    "--nproc-per-node",
    "nproc",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="DDP ranks to start on this machine (gloo on CPU, NCCL on GPU).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(
    method: str,
    shards_dir: str,
    out: Path,
    params_file: str | None,
    overrides: tuple[str, ...],
    resume: bool,
    nproc: int,
    verbose: bool,
) -> None:
    """Pretrain a backbone on rendered two-view shards and export it for fine-tuning."""
    _setup_logging(verbose)
    cfg = load_pretrain_config(resolve_params(params_file, overrides))
    launcher = nproc > 1 and not dist.launched_by_torchrun()
    rank0 = not dist.launched_by_torchrun() or int(os.environ.get("RANK", 0)) == 0
    # One lock per job: the launcher's, or rank 0's when torchrun (or nothing) started the ranks.
    holder = launcher or (rank0 and not ranks.under_launcher())
    try:
        with hold(out, "pretrain") if holder else nullcontext():
            if launcher:
                sys.exit(ranks.launch(nproc, sys.argv[1:], out))
            run(cfg, method, shards_dir, out, resume=resume)
    except Interrupted as err:
        log.warning("%s", err)
        sys.exit(130)
    except PeerLost as err:
        if not ranks.under_launcher():  # the launcher names the rank that died
            click.echo(ranks.lost_peer_line(err.rank, err.step, err.ckpt, out), err=True)
        sys.stderr.flush()
        os._exit(ranks.PEER_LOST)  # no teardown: the process group has lost a member
    except DiskFull as err:
        if not (out / "checkpoint.pt").is_file():
            raise
        hint = "run the same command with --resume (training goes on from the last checkpoint)"
        raise DiskFull(err.path, hint) from err
    finally:
        dist.teardown()


if __name__ == "__main__":
    main()
