"""One optimisation step: a loader batch -> augmented views -> loss -> SGD update.

Every random draw of step s comes from one CPU generator seeded by (seed, rank, s), so the step is
a pure function of the model state, the batch and s: the basis of exact resume.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from segloc import dist
from segloc.schedule import lr_at, momentum_at
from train.augment import augment_view, jitter_boxes, mask_boxes, visible
from train.config import Preset, PretrainConfig
from train.model import Regions


@dataclass(frozen=True)
class StepContext:
    cfg: PretrainConfig
    preset: Preset
    total: int  # steps in the run
    peak_lr: float  # already scaled by the global batch
    device: torch.device
    rank: int
    classes: tuple[str, ...]  # names of the shards' classes (metric columns)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def key_views(
    batch: dict[str, Any], ctx: StepContext, g: torch.Generator, step: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The key side's images and instance masks: view v1 of each sample, or, for a share of the
    samples that falls from 1 to 0 over pretrain.curriculum_steps, view v0 again (a second crop
    of the query's own composite: same scan, same paste). `step` None (the monitor) or past the
    curriculum: v1 only, with no random draw, so a run without a curriculum is unchanged."""
    steps = ctx.cfg.curriculum_steps
    if step is None or step >= steps:
        return batch["img1"], batch["masks1"]
    same = torch.rand(batch["img0"].shape[0], generator=g) < 1.0 - step / steps
    same = same.to(batch["img0"].device)
    images = torch.where(same[:, None, None, None], batch["img0"], batch["img1"])
    per_inst = same[batch["inst_img"]][:, None, None]
    return images, torch.where(per_inst, batch["masks0"], batch["masks1"])


def contrastive_inputs(
    batch: dict[str, Any], ctx: StepContext, g: torch.Generator, step: int | None = None
) -> dict:
    """Model inputs of a MoCo-family step; `batch` is already on the device. `step` drives the
    pair curriculum (`key_views`); None: no curriculum (the monitor's probes)."""
    aug = ctx.cfg.augment
    if ctx.preset.pooling == "image":  # MoCo: two crops of v0, one "instance" per image
        img = batch["img0"]
        x_q, x_k = augment_view(img, aug, g).images, augment_view(img, aug, g).images
        labels = torch.zeros(img.shape[0], dtype=torch.long, device=img.device)
        return {
            "x_q": x_q,
            "x_k": x_k,
            "regions_q": None,
            "regions_k": None,
            "labels": labels,
            "perm": torch.randperm(img.shape[0], generator=g).to(img.device),
        }
    inst_img = batch["inst_img"]
    img_k, masks_k = key_views(batch, ctx, g, step)
    vq = augment_view(batch["img0"], aug, g, batch["masks0"], inst_img)
    vk = augment_view(img_k, aug, g, masks_k, inst_img)
    # A pair survives only if its instance is still visible in both crops.
    keep = visible(vq.masks, aug.min_instance_px) & visible(vk.masks, aug.min_instance_px)
    idx, slot, kmax = inst_img[keep], batch["inst_slot"][keep], batch["kmax"]
    if ctx.preset.pooling == "mask":
        regions_q = Regions(idx, slot, kmax, masks=vq.masks[keep])
        regions_k = Regions(idx, slot, kmax, masks=vk.masks[keep])
    else:
        boxes_q = jitter_boxes(mask_boxes(vq.masks[keep]), aug.box_jitter, aug.crop, g)
        regions_q = Regions(idx, slot, kmax, boxes=boxes_q)
        regions_k = Regions(idx, slot, kmax, boxes=mask_boxes(vk.masks[keep]))
    labels = batch["inst_cls"][keep] if ctx.preset.queue == "per_class" else torch.zeros_like(idx)
    return {
        "x_q": vq.images,
        "x_k": vk.images,
        "regions_q": regions_q,
        "regions_k": regions_k,
        "labels": labels,
        "perm": torch.randperm(vq.images.shape[0], generator=g).to(idx.device),
    }


def supervised_inputs(batch: dict[str, Any], ctx: StepContext, g: torch.Generator) -> dict:
    """Both views as independent labelled images: the same pixels SSL methods see per step."""
    img = torch.cat([batch["img0"], batch["img1"]])
    seg = torch.cat([batch["seg0"], batch["seg1"]])
    view = augment_view(img, ctx.cfg.augment, g, seg=seg)
    return {"x": view.images, "seg": view.seg}


def _channels_last(inputs: dict, device: torch.device) -> dict:
    if device.type != "cuda":
        return inputs
    return {
        k: v.contiguous(memory_format=torch.channels_last) if k.startswith("x") else v
        for k, v in inputs.items()
    }


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict[str, Any],
    step: int,
    ctx: StepContext,
) -> dict[str, float]:
    """Run step `step`; returns rank-averaged scalars.

    Raises FloatingPointError on a non-finite loss (on any rank) before the update, so the
    parameters stay those of the last good step.
    """
    g = step_generator(ctx.cfg.seed, ctx.rank, step)
    slots = batch.get("inst_slot", torch.empty(0))
    kmax = int(slots.max()) + 1 if slots.numel() else 0  # on the CPU copy: no device sync
    batch = to_device(batch, ctx.device) | {"kmax": kmax}
    m = momentum_at(step, ctx.total, ctx.cfg.momentum)
    loss, stats = forward(model, batch, ctx, g, m, step)
    scalars = _reduce_scalars(loss, stats)
    if not np.isfinite(scalars["loss"]):
        raise FloatingPointError(f"loss is {scalars['loss']} at step {step}")
    lr = lr_at(step, ctx.total, ctx.peak_lr, ctx.cfg.warmup)
    update(model, opt, loss, lr, ctx.cfg.clip_grad)
    return scalars | {"lr": lr, "momentum": m if ctx.preset.pooling is not None else float("nan")}


def forward(
    model: nn.Module,
    batch: dict[str, Any],
    ctx: StepContext,
    g: torch.Generator,
    m: float,
    step: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Augment and run the model: bf16 autocast and channels_last on GPU, plain fp32 on CPU."""
    on_gpu = ctx.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    with autocast:
        if ctx.preset.pooling is None:
            return model(**_channels_last(supervised_inputs(batch, ctx, g), ctx.device))
        inputs = _channels_last(contrastive_inputs(batch, ctx, g, step), ctx.device)
        return model(**inputs, m=m)


def update(
    model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, clip: float | None
) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def _reduce_scalars(loss: torch.Tensor, stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average the loss and stats over ranks (one all-reduce); a non-finite loss on any rank wins."""
    names = ["loss", *sorted(stats)]
    values = torch.stack([loss.detach().float(), *[stats[n].float() for n in names[1:]]])
    bad = (~torch.isfinite(values[:1])).float()
    summed = dist.all_reduce_sum(
        torch.cat([torch.nan_to_num(values), bad, torch.ones(1, device=values.device)])
    )
    world = summed[-1]
    out = {n: float(v) for n, v in zip(names, (summed[: len(names)] / world).tolist(), strict=True)}
    if summed[len(names)] > 0:
        out["loss"] = float("nan")
    return out
