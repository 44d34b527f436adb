"""Instance segmentation transfer: Mask R-CNN (ResNet-FPN) from one init, scored with COCO AP/AR.

    evaluate --task instance --init random --data data/pidray --out runs/instance/random
    evaluate --task instance --init runs/pretrain/segloc --out runs/instance/segloc   # params.yaml
    torchrun --nproc_per_node 4 -m eval.cli --task instance --init random --out runs/instance/random

The recipe mirrors the semantic one (`eval.finetune`, docs/design.md §5.5): repeat r trains with
seed eval.seed + r on the labeled subset of the train split for eval.instance.steps steps, then
every test split is scored with pycocotools' COCOeval (bbox and segm: AP, AP50, AP75, APs/m/l,
AR@1/10/100), the numbers the SegLoc, InsLoc and MoCo papers report. An opt-in command, not a
pipeline stage: one fine-tune costs minutes on a CPU and its AP stays near 0 at that budget.

OUT/scores.json                task "instance"; per split each METRIC_KEYS entry as {mean, std, values}
OUT/metrics.json               the headline: segm_AP and bbox_AP per split (percent, mean over
                               repeats) and the library versions that made it
OUT/config.json                resolved eval config, data paths, init
OUT/predictions_{split}.json   repeat 0's detections as COCO results (original image/category ids,
                               masks as compressed RLE), re-scorable against the split's JSON
OUT/plots/finetune_loss.json   records {step, loss, repeat}
OUT/model.pt                   repeat 0's model state_dict (only with eval.save_model)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm import tqdm

from eval.coco_eval import (
    METRIC_KEYS,
    class_to_category,
    coco_scores,
    detections_to_results,
    ground_truth,
)
from eval.config import EvalConfig, InstanceConfig, load_eval_config, load_run_params
from eval.data import MEAN, STD, LabeledSets, RankDraws, load_sets, resolve_data
from eval.finetune import autocast
from eval.inits import Init, resolve_init
from eval.inputs import data_summary
from eval.instance_data import InstanceDraws, collate, read_scan, to_tensor
from eval.metrics import summarize
from eval.model import load_resnet_body
from eval.outputs import METRICS, SCORES
from segloc import dist
from segloc.atomic import atomic_dir, torch_save, write_json
from segloc.coco import CocoSet
from segloc.dist import DistEnv
from segloc.errors import UserError
from segloc.params import to_dict
from segloc.provenance import versions
from segloc.schedule import poly, warmup

log = logging.getLogger(__name__)

ASPECT_RATIOS = (0.5, 1.0, 2.0)  # torchvision's default anchors per location


@dataclass
class InstanceResult:
    seed: int
    scores: dict[str, dict[str, float | None]]  # split -> METRIC_KEYS -> value
    losses: list[float]
    seconds: dict[str, float]  # "train", "test"
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # repeat 0 only
    state: dict[str, torch.Tensor] | None = None  # repeat 0 with save_model only


def main(
    init: str,
    out: str | Path,
    data: str | Path | None = None,
    params: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any] | None:
    """Fine-tune and score; returns the scores document on rank 0 (None on other ranks)."""
    env = dist.setup()
    try:
        resolved = load_run_params(params, overrides)
        cfg = load_eval_config(resolved)
        init_spec = resolve_init(init)
        sets = load_sets(resolve_data(resolved, data))
        threads = dist.set_threads(cfg.threads, env)
        log.info(
            "instance, init %s: %d labeled train images, test splits %s, %d process(es) x %d threads",
            init_spec.label,
            len(sets.labeled),
            ", ".join(sets.test),
            env.world,
            threads,
        )
        truths = {name: ground_truth(coco) for name, coco in sets.test.items()}
        results = [
            fine_tune_once(sets, truths, init_spec, cfg, r, env)
            for r in range(cfg.instance.repeats)
        ]
        if not env.main:
            return None
        config = run_config(cfg, init_spec) | {"world_size": env.world, "data": data_summary(sets)}
        metrics = write_run(out, results, config)
        _log_summary(metrics)
        return metrics
    finally:
        dist.teardown()


def build_maskrcnn(arch: str, num_classes: int, inst: InstanceConfig) -> MaskRCNN:
    """Randomly initialised Mask R-CNN on a `arch` FPN backbone; `num_classes` excludes background.

    Initialisation draws from torch's global RNG (torchvision takes no generator): callers scope
    it with `torch.random.fork_rng` and a seed.
    """
    norm = FrozenBatchNorm2d if inst.norm == "frozen" else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=arch,
        weights=None,
        norm_layer=norm,
        trainable_layers=inst.trainable_layers,
    )
    anchors = AnchorGenerator(
        tuple((s,) for s in inst.anchor_sizes), (ASPECT_RATIOS,) * len(inst.anchor_sizes)
    )
    return MaskRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=inst.min_size,
        max_size=inst.max_size,
        # Same ImageNet statistics as the semantic model and pretraining; inputs come in [0, 1].
        image_mean=(MEAN / 255).tolist(),
        image_std=(STD / 255).tolist(),
        rpn_anchor_generator=anchors,
        # Small scans hold a handful of items: a few hundred proposals cover them, and the box head
        # (a 12544x1024 fc per RoI) dominates CPU time at torchvision's COCO-sized budgets.
        rpn_pre_nms_top_n_train=2 * inst.proposals,
        rpn_pre_nms_top_n_test=2 * inst.proposals,
        rpn_post_nms_top_n_train=inst.proposals,
        rpn_post_nms_top_n_test=inst.proposals,
        box_batch_size_per_image=inst.rois_per_image,
        box_detections_per_img=inst.detections_per_image,
    )


def instance_model(sets: LabeledSets, init: Init, cfg: EvalConfig, seed: int) -> MaskRCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_maskrcnn(cfg.arch, len(sets.train.class_names), cfg.instance)
    # The FPN's ResNet trunk has the ResNet's own keys (minus fc), so exports load as they are.
    load_resnet_body(model.backbone.body, init, cfg.arch)
    return model


def fine_tune_once(
    sets: LabeledSets,
    truths: dict[str, dict[str, Any]],
    init: Init,
    cfg: EvalConfig,
    repeat: int,
    env: DistEnv,
) -> InstanceResult:
    seed = cfg.seed + repeat
    model = instance_model(sets, init, cfg, seed)
    if env.world > 1 and env.device.type == "cuda" and cfg.instance.norm == "batch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over the global batch
    model.to(env.device)
    start = time.perf_counter()
    losses = train(model, sets, cfg, seed, env, desc=f"{init.label} seed {seed}")
    trained = time.perf_counter()
    predictions = {name: predict_split(model, coco, cfg, env) for name, coco in sets.test.items()}
    scores = {name: coco_scores(truths[name], predictions[name]) for name in sets.test}
    seconds = {"train": trained - start, "test": time.perf_counter() - trained}
    log.info("seed %d: trained in %.1f s, scored in %.1f s", seed, *seconds.values())
    result = InstanceResult(seed, scores, losses, seconds)
    if repeat == 0 and env.main:
        result.predictions = predictions
        result.state = model.state_dict() if cfg.save_model else None
    return result


def train(
    model: MaskRCNN, sets: LabeledSets, cfg: EvalConfig, seed: int, env: DistEnv, desc: str
) -> list[float]:
    """SGD for eval.instance.steps steps on the summed Mask R-CNN losses; this rank's loss per step."""
    inst = cfg.instance
    loader = DataLoader(
        InstanceDraws(sets, seed),
        batch_size=inst.batch_size,
        num_workers=cfg.workers,
        sampler=RankDraws(inst.steps, inst.batch_size, env.rank, env.world),
        collate_fn=collate,
    )
    net = DistributedDataParallel(model) if env.world > 1 else model
    trained = [p for p in model.parameters() if p.requires_grad]  # trainable_layers froze the rest
    opt = torch.optim.SGD(
        trained, lr=inst.lr, momentum=inst.momentum, weight_decay=inst.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup(s, inst.warmup_steps) * poly(s, inst.steps, inst.poly_power)
    )
    losses = []
    model.train()
    # RPN and RoI samplers draw from torch's global generator (they take none of their own):
    # scope a seeded copy to this run, so runs repeat and the caller's state is untouched.
    with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
        torch.manual_seed(seed * 1000 + env.rank)
        for images, targets in tqdm(loader, desc=desc, disable=not env.main, leave=False):
            images = [im.to(env.device) for im in images]
            targets = [{k: v.to(env.device) for k, v in t.items()} for t in targets]
            with autocast(cfg, env):
                loss_dict = net(images, targets)
            loss = sum(v.float() for v in loss_dict.values())
            _check_finite(loss, len(losses))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    return losses


def _check_finite(loss: torch.Tensor, step: int) -> None:
    """A diverged run would score AP 0 and look like a result: stop it instead."""
    if not torch.isfinite(loss):
        raise UserError(
            f"params eval.instance.lr: fine-tuning diverged at step {step} (loss {loss.item()}); "
            "lower eval.instance.lr or raise eval.instance.warmup_steps"
        )


@torch.no_grad()
def predict_split(
    model: MaskRCNN, coco: CocoSet, cfg: EvalConfig, env: DistEnv
) -> list[dict[str, Any]]:
    """COCO results of one split; each rank predicts every world-th image, then all gather."""
    model.eval()
    cat_of = class_to_category(coco)
    results: list[dict[str, Any]] = []
    images = coco.images[env.rank :: env.world]
    for image in tqdm(
        images, desc=f"detect {coco.json_path.stem}", disable=not env.main, leave=False
    ):
        x = to_tensor(read_scan(coco, image)).to(env.device)
        with autocast(cfg, env):
            output = model([x])[0]  # masks come back at the image's own size
        results += detections_to_results(image.id, output, cat_of)
    results = dist.all_gather_objects(results)
    return sorted(results, key=lambda r: (r["image_id"], -r["score"]))


def metrics_doc(results: list[InstanceResult], init: dict[str, Any]) -> dict[str, Any]:
    splits = {
        split: {key: summarize([r.scores[split][key] for r in results]) for key in METRIC_KEYS}
        for split in results[0].scores
    }
    return {
        "task": TASK,
        "init": init["label"],
        "repeats": len(results),
        "seeds": [r.seed for r in results],
        "splits": splits,
        "seconds_per_repeat": [r.seconds for r in results],
    }


TASK = "instance"


def run_config(cfg: EvalConfig, init: Init) -> dict[str, Any]:
    """The run's config.json: task, resolved eval section and init."""
    return {"task": TASK, "eval": to_dict(cfg), "init": init.describe()}


def instance_headline(doc: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: mask and box AP per split for `dvc metrics show`."""

    def pct(split: str, key: str) -> float | None:
        mean = doc["splits"][split][key]["mean"]
        return None if mean is None else round(100 * mean, 2)

    return {
        key: {split: pct(split, key) for split in doc["splits"]} for key in ("segm_AP", "bbox_AP")
    } | {"versions": versions()}


def write_run(
    out: str | Path, results: list[InstanceResult], config: dict[str, Any]
) -> dict[str, Any]:
    metrics = metrics_doc(results, config["init"])
    with atomic_dir(out) as tmp:
        write_json(tmp / SCORES, metrics)
        write_json(tmp / METRICS, instance_headline(metrics))
        write_json(tmp / "config.json", config)
        for split, predictions in results[0].predictions.items():
            write_json(tmp / f"predictions_{split}.json", predictions)
        losses = [
            {"step": i, "loss": loss, "repeat": k}
            for k, r in enumerate(results)
            for i, loss in enumerate(r.losses)
        ]
        write_json(tmp / "plots" / "finetune_loss.json", losses)
        if results[0].state is not None:
            torch_save(results[0].state, tmp / "model.pt")
    return metrics


def _log_summary(metrics: dict[str, Any]) -> None:
    for split, entry in metrics["splits"].items():
        parts = []
        for key in ("bbox_AP", "segm_AP", "segm_AR100"):
            m = entry[key]
            std = f" ± {100 * m['std']:.1f}" if m["std"] is not None else ""
            value = f"{100 * m['mean']:.1f}{std}" if m["mean"] is not None else "n/a"
            parts.append(f"{key} {value}")
        log.info("%s: %s over %d repeat(s)", split, ", ".join(parts), metrics["repeats"])
