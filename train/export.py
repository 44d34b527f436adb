"""Export the query backbone for fine-tuning: a plain torchvision state_dict plus a JSON card.

    state = torch.load("out/backbone.pt", weights_only=True)
    net = torchvision.models.resnet18(); del net.fc; net.load_state_dict(state, strict=True)

Keys are exactly torchvision's minus `fc.weight` / `fc.bias`, so eval needs no prefix surgery.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segloc.atomic import torch_save
from segloc.backbone_card import WEIGHTS, write_card
from segloc.errors import UserError
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
    """Write out/backbone.pt and its card out/backbone.json (`segloc.backbone_card`)."""
    torch_save(backbone_state(model), out / WEIGHTS)
    write_card(out / WEIGHTS, card)
