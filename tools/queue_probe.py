"""Does a contrastive pretraining run tell instances apart by content, or by the age of its keys?

    python tools/queue_probe.py runs/pretrain/segloc                 # shards: data/shards
    python tools/queue_probe.py RUN --shards DIR --batches 60 --json out.json

Loads a run's `checkpoint.pt` (encoders and queues) and encodes fresh batches from the shards as
training does: queries with the query encoder, keys with the momentum encoder. The first half of
the pairs are the queries; each is scored against two negative banks of equal size per queue:

- stale: keys drawn from the run's own queue, written during training by earlier states of the
  momentum encoder;
- fresh: keys of the other half of the pairs, from the momentum encoder as it is now.

The scoring is train.monitor.fresh_bank_probe, which pretraining also runs on its held-out samples
(plots/monitor.tsv); this tool runs it on any run's checkpoint, on as many batches as asked.

A model that separates instances by content scores about alike on both banks. A low training loss
that comes from telling fresh keys from stale ones (MoCo's "inconsistent dictionary") shows as a
low loss on the stale bank and chance on the fresh one, with negative similarity as high as the
positive. For segloc the negatives of a query are the other classes' queues, as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segloc.atomic import write_json  # noqa: E402
from segloc.errors import UserError  # noqa: E402
from segloc.params import from_dict  # noqa: E402
from segloc.schedule import scaled_lr  # noqa: E402
from train.config import PretrainConfig, resolve_preset  # noqa: E402
from train.data import make_loader, open_shards  # noqa: E402
from train.loop import build_model, stream_spec  # noqa: E402
from train.moco import ClassQueueMoCo  # noqa: E402
from train.monitor import TooFewPairs, fresh_bank_probe, pair_embeddings  # noqa: E402
from train.step import StepContext, contrastive_inputs, step_generator, to_device  # noqa: E402


def load_run(run: Path, shards) -> tuple[ClassQueueMoCo, PretrainConfig, object, int]:
    """The run's model at its checkpoint, its config, preset and step."""
    try:
        config = json.loads((run / "config.json").read_text())
        ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
        method, section, state, step = (
            config["method"],
            config["pretrain"],
            ckpt["model"],
            int(ckpt["step"]),
        )
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError) as err:
        raise UserError(f"{run}: not a pretraining run folder ({err!r})") from err
    cfg = from_dict(PretrainConfig, section, "pretrain")
    preset = resolve_preset(cfg, method)
    if preset.pooling is None:
        raise UserError(f"{run}: method {method!r} has no queue to probe")
    model = build_model(cfg, preset, len(shards.classes), torch.device("cpu"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(
            f"{run}: checkpoint does not fit a {method} model for the {len(shards.classes)} "
            f"classes of {shards.root}; probe it with the shards it was trained on"
        ) from err
    return model, cfg, preset, step


@torch.no_grad()
def encode_pairs(model, cfg, preset, shards, batches: int):
    """(queries, keys, queue labels) of `batches` fresh batches, encoded as in training."""
    ctx = StepContext(
        cfg, preset, 1, scaled_lr(cfg.lr, cfg.batch_size), torch.device("cpu"), 0, shards.classes
    )
    # A stream epoch training never reached, so the samples are new to this pass.
    loader = iter(make_loader(stream_spec(cfg, shards, preset, 0, 10**6, 0, batches), workers=1))
    model.train()  # batch statistics in both encoders, as in training
    qs, ks, labels = [], [], []
    for b in range(batches):
        batch = next(loader)
        slots = batch.get("inst_slot", torch.empty(0))
        kmax = int(slots.max()) + 1 if slots.numel() else 0
        inputs = contrastive_inputs(
            to_device(batch, torch.device("cpu")) | {"kmax": kmax}, ctx, step_generator(0, 0, b)
        )
        if inputs["labels"].numel() == 0:
            continue
        q, k = pair_embeddings(model, inputs)
        qs.append(q)
        ks.append(k)
        labels.append(inputs["labels"])
    return torch.cat(qs), torch.cat(ks), torch.cat(labels)


def probe(model, q, k, labels, temperature: float, seed: int = 0) -> dict:
    """Loss and similarities of the first half of the pairs against stale and fresh banks."""
    try:
        return fresh_bank_probe(model.queue, q, k, labels, temperature, seed)
    except TooFewPairs as err:
        raise UserError(
            f"too few pairs per queue for a fresh bank ({err}): raise --batches"
        ) from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="pretraining run folder (pretrain --out)")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--batches", type=int, default=60, help="fresh batches to encode")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        shards = open_shards(args.shards)
        model, cfg, preset, step = load_run(args.run, shards)
        q, k, labels = encode_pairs(model, cfg, preset, shards, args.batches)
        result = {"run": str(args.run), "step": step} | probe(model, q, k, labels, cfg.temperature)
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(err.exit_code)
    print(
        f"{args.run} at step {step}: {result['queries']} queries, at least "
        f"{result['keys_per_queue']} keys per probed queue in each bank; "
        f"chance loss {result['chance_loss']:.2f}\n"
        f"  positive similarity {result['pos_sim']:.3f}\n"
        f"  stale bank (the run's queue):          loss {result['stale']['loss']:.3f}, "
        f"negative similarity {result['stale']['neg_sim']:.3f}\n"
        f"  fresh bank (current momentum encoder): loss {result['fresh']['loss']:.3f}, "
        f"negative similarity {result['fresh']['neg_sim']:.3f}"
    )
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
