"""Run by test_ddp under torchrun: score the test splits, then fine-tune, with 2 gloo processes.

torchrun --standalone --nproc_per_node 2 -m tests.eval.ddp_worker DATA OUT
"""

import sys
from pathlib import Path

import torch

from eval import finetune
from eval.config import EvalConfig, FinetuneConfig
from eval.data import load_sets, resolve_data
from eval.model import build_model
from segloc import dist
from segloc.atomic import write_json

SCORE_CFG = EvalConfig(base_size=64, finetune=FinetuneConfig(output_stride=32))
TINY = [
    "eval.finetune.head=fcn",
    "eval.finetune.optimizer=sgd",
    "eval.finetune.steps=2",
    "eval.finetune.batch_size=2",
    "eval.finetune.crop_size=48",
    "eval.base_size=64",
    "eval.finetune.repeats=1",
    "eval.finetune.output_stride=32",
    "eval.samples_per_split=1",
    "eval.threads=1",
]


def score(sets, env):
    """Confusion matrices of a fixed random model: every rank scores its share, then all-reduce."""
    model = build_model(
        "resnet18", "fcn", len(sets.label_names), 32, torch.Generator().manual_seed(0)
    )
    return {
        n: finetune.score_split(model, c, SCORE_CFG, env).tolist() for n, c in sets.test.items()
    }


def main(data: str, out: str) -> None:
    env = dist.setup()
    torch.set_num_threads(1)
    matrices = score(load_sets(resolve_data({}, data)), env)
    if env.main:
        write_json(Path(out) / "scores.json", {"world": env.world, "matrices": matrices})
    finetune.main("random", Path(out) / "run", data=data, overrides=TINY, protocol="finetune")


if __name__ == "__main__":
    main(*sys.argv[1:])
