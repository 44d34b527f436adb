"""Export the query backbone for fine-tuning: a plain torchvision state_dict plus a JSON card.

    state = torch.load("out/backbone.pt", weights_only=True)
    net = torchvision.models.resnet18(); del net.fc; net.load_state_dict(state, strict=True)

Keys are exactly torchvision's minus `fc.weight` / `fc.bias`, so eval needs no prefix surgery.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segloc.atomic import atomic_path, write_json
from segloc.errors import UserError
from train.augment import MEAN, STD
from train.model import ARCHS, ResNetTrunk


def trunk_of(model: nn.Module) -> ResNetTrunk:
    """The query trunk of a ClassQueueMoCo or SupervisedSeg (DDP-wrapped or not)."""
    model = getattr(model, "module", model)
    encoder = getattr(model, "encoder_q", model)
    return encoder.trunk


def backbone_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        (k, v.detach().cpu().clone()) for k, v in trunk_of(model).body.state_dict().items()
    )


def torchvision_backbone(arch: str) -> nn.Module:
    """An untrained torchvision ResNet with `fc` removed: the target of a strict load."""
    net = ARCHS[arch][0](weights=None)
    del net.fc
    return net


def load_backbone(path: str | Path, arch: str) -> nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"{path}: cannot read backbone state_dict ({err})") from err
    net = torchvision_backbone(arch)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: not a {arch} backbone without fc ({err})") from err
    return net


def export(out: Path, model: nn.Module, card: dict[str, Any]) -> None:
    """Write out/backbone.pt and out/backbone.json (the card gains the weights' sha256)."""
    with atomic_path(out / "backbone.pt") as tmp:
        torch.save(backbone_state(model), tmp)
    digest = hashlib.sha256((out / "backbone.pt").read_bytes()).hexdigest()
    write_json(out / "backbone.json", card | {"sha256": digest})


def backbone_card(
    arch: str,
    method: str,
    steps: int,
    config: dict[str, Any],
    manifest: Path,
    manifest_sha: str,
    classes: tuple[str, ...],
    crop: int,
    label: str | None = None,
) -> dict[str, Any]:
    return {
        "format": "torchvision resnet state_dict without fc",
        "arch": arch,
        "method": method,
        "label": label or method,  # the row name in reports
        "steps": steps,
        "config": config,
        "shards": {"manifest": str(manifest), "sha256": manifest_sha},
        "classes": list(classes),
        "input": {
            "size": crop,
            "normalize": {"mean": list(MEAN), "std": list(STD)},
            "scale": "RGB in [0, 1] before normalize",
        },
    }
