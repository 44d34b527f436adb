"""Segmentation model on a torchvision ResNet, and the inits it starts from.

    model = build_model("resnet18", "fcn", num_classes=13, output_stride=16, generator=g)
    init = resolve_init("runs/pretrain/segloc")        # eval.inits: or "random", "imagenet:PATH"
    load_init(model, init, "resnet18")

`model.backbone` is torchvision's IntermediateLayerGetter over the ResNet: its state_dict keys are
the ResNet's minus `fc`/`avgpool`, so an exported backbone (`RUN/backbone.pt`, docs/design.md
§3.3) loads as is, checked key by key and shape by shape.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCN, FCNHead

from eval.data import MEAN, STD
from eval.inits import Init
from segloc.backbone_card import card_normalize
from segloc.dense import fuse_stride8, start_small
from segloc.errors import UserError

log = logging.getLogger(__name__)

# Layers that dilate instead of striding for each output stride (DeepLab's recipe).
DILATED_LAYERS = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}
# ASPP rates scale with the feature map: (6, 12, 18) at stride 16 as in DeepLabV3, doubled at 8.
ASPP_RATES = {32: (3, 6, 9), 16: (6, 12, 18), 8: (12, 24, 36)}


def build_model(
    arch: str, head: str, num_classes: int, output_stride: int, generator: torch.Generator
) -> nn.Module:
    """Randomly initialised FCN, DeepLabV3 or fused-stride-8 model on `arch`; logits come back at
    the input size. `fused` ignores `output_stride`: it reads C3..C5 undilated (`FusedSeg`)."""
    # Built on the meta device: torchvision's own init would draw from the global RNG; ours takes
    # `generator` instead, and materialising once saves the double init.
    with torch.device("meta"):
        resnet = getattr(torchvision.models, arch)(weights=None)
        if head == "fused":
            layers = {"layer2": "c3", "layer3": "c4", "layer4": "c5"}
            # C3 + C4 + C5: each ResNet layer doubles the width of the one before.
            channels = sum(resnet.fc.in_features >> k for k in (2, 1, 0))
            model = FusedSeg(IntermediateLayerGetter(resnet, layers), channels, num_classes)
            model.to_empty(device="cpu")
            _init_weights(model, generator)
            return model
        _dilate(resnet, output_stride)
        backbone = IntermediateLayerGetter(resnet, {"layer4": "out"})
        channels = resnet.fc.in_features
        if head == "fcn":
            model = FCN(backbone, FCNHead(channels, num_classes))
        else:
            model = DeepLabV3(
                backbone, DeepLabHead(channels, num_classes, ASPP_RATES[output_stride])
            )
    model.to_empty(device="cpu")
    _init_weights(model, generator)
    return model


class FusedSeg(nn.Module):
    """A 1x1-conv classifier on the fused stride-8 map (C3 + upsampled C4, C5; `segloc.dense`),
    upsampled to the input: the supervised pretraining's and the probe's read-out, trained end
    to end. No dilation, so it costs what a plain ResNet forward costs; on a CPU it learns the
    demo's items far faster than FCN at output stride 16 (docs/2026-11-30-learnable-default.md)."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Sequential(nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone(x)
        logits = self.classifier(fuse_stride8([maps["c3"], maps["c4"], maps["c5"]]))
        return {
            "out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        }


def _dilate(resnet: nn.Module, output_stride: int) -> None:
    """Trade the stride of later layers for dilation, as torchvision's `replace_stride_with_dilation`
    does for Bottleneck ResNets; done by hand because BasicBlock (resnet18/34) refuses it."""
    dilation = 1
    for name in DILATED_LAYERS[output_stride]:
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(resnet, name)):
            d = previous if i == 0 else dilation  # the first block keeps the incoming dilation
            for m in block.modules():
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
                    if m.kernel_size == (3, 3):
                        m.dilation = m.padding = (d, d)


def build_trunk(arch: str, generator: torch.Generator) -> nn.Module:
    """Randomly initialised ResNet minus avgpool/fc returning {"c3", "c4", "c5"} (strides 8, 16,
    32): the frozen feature extractor of the `probe` protocol. Its state_dict keys are the
    ResNet's minus `fc`, like `model.backbone`'s, so every init loads through `load_init`."""
    with torch.device("meta"):
        resnet = getattr(torchvision.models, arch)(weights=None)
        trunk = IntermediateLayerGetter(resnet, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    trunk.to_empty(device="cpu")
    _init_resnet(trunk, generator)
    return trunk


def _init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """torchvision's ResNet init for the whole model, the classifier's last layer kept small."""
    _init_resnet(model, generator)
    start_small([m for m in model.classifier.modules() if isinstance(m, nn.Conv2d)][-1], generator)


def _init_resnet(model: nn.Module, generator: torch.Generator) -> None:
    """torchvision's ResNet init (He normal, fan_out; BN 1/0), drawn from `generator`."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(
                m.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # also resets running stats left uninitialised by to_empty
        elif any(True for _ in m.parameters(recurse=False)):
            raise TypeError(f"no init rule for {type(m).__name__}")


def load_init(model: nn.Module, init: Init, arch: str) -> None:
    """Load `init`'s weights into `model.backbone` (nothing for random), strictly checked."""
    load_resnet_body(model.backbone, init, arch)


def load_resnet_body(body: nn.Module, init: Init, arch: str) -> None:
    """Strictly load `init`'s ResNet weights (minus fc) into `body`, a ResNet trunk whose keys are
    the ResNet's. A trunk with frozen BN (detection backbones) has no `num_batches_tracked`
    buffers: those counters are dropped, every statistic and affine parameter is still checked."""
    if init.kind == "random":
        return
    if init.arch is not None and init.arch != arch:
        raise UserError(
            f"{init.path}: backbone is {init.arch} but eval.arch is {arch}; every init must be "
            f"fine-tuned with the same architecture (set eval.arch={init.arch} for all of them)"
        )
    _check_normalization(init)
    state = _read_state(init.path)
    expected = body.state_dict()
    # ImageNet files carry the classifier; it has no place in a segmentation model.
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith("fc.")
        and not (k.endswith(".num_batches_tracked") and k not in expected)
    }
    check_state(expected, state, f"{init.path} (for {arch})")
    body.load_state_dict(state, strict=True)


def _check_normalization(init: Init) -> None:
    """Warn when pretraining normalised its inputs otherwise than fine-tuning does."""
    norm = card_normalize(init.meta)
    if norm is None:
        return
    ours = {"mean": (MEAN / 255).tolist(), "std": (STD / 255).tolist()}
    for key, values in ours.items():
        theirs = norm.get(key)
        same = (
            isinstance(theirs, list) and len(theirs) == 3 and np.allclose(theirs, values, atol=1e-4)
        )
        if not same:
            log.warning(
                "%s: pretraining normalised with %s=%s, fine-tuning uses %s",
                init.path,
                key,
                theirs,
                [round(v, 4) for v in values],
            )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file: all mean "not loadable"
        raise UserError(f"{path}: cannot load weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return state


def check_state(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str
) -> None:
    """`UserError` naming the first few missing, unexpected or mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", shapes),
    ]
    found = [
        f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
        for what, items in problems
        if items
    ]
    if found:
        raise UserError(f"{source}: weights do not fit the backbone ({'; '.join(found)})")
