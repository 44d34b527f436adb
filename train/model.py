"""Backbone (torchvision ResNet), per-instance pooling and the projection head.

Pooling turns feature maps into one vector per instance (docs/design.md §2.5):
- `mask`  (SegLoc): average of the feature map inside the instance mask, the mask area-resized to
  the map so even an instance smaller than a cell keeps a (fractional) weight;
- `box`   (InsLoc): RoIAlign 7x7 on the box, averaged;
- `image` (MoCo): global average of C5.
The map is C5 or, with `pool_from: stride8`, the fused stride-8 map the probe reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import roi_align

from segloc.dense import STRIDE as STRIDE8
from segloc.dense import fuse_stride8

# arch -> (constructor, channels of C2..C5)
ARCHS = {
    "resnet18": (torchvision.models.resnet18, (64, 128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, (64, 128, 256, 512)),
    "resnet50": (torchvision.models.resnet50, (256, 512, 1024, 2048)),
    "resnet101": (torchvision.models.resnet101, (256, 512, 1024, 2048)),
}
STRIDE5 = 32  # of C5
POOL_FROM = ("c5", "stride8")


@dataclass
class Regions:
    """Where to pool the M instances of a batch of B images."""

    inst_img: torch.Tensor  # (M,) image index of each instance
    inst_slot: torch.Tensor  # (M,) index of the instance within its image
    kmax: int  # 1 + largest slot: width of the B x kmax scatter grid
    masks: torch.Tensor | None = None  # M x P x P soft masks (mask pooling)
    boxes: torch.Tensor | None = None  # M x 4 boxes x0, y0, x1, y1 in input pixels (box pooling)


class ResNetTrunk(nn.Module):
    """torchvision ResNet minus `fc`, returning C2..C5; `body` is what gets exported."""

    def __init__(self, arch: str):
        super().__init__()
        make, self.channels = ARCHS[arch]
        self.body = make(weights=None)  # never download weights
        self.body.fc = nn.Identity()  # no parameters: the state_dict is torchvision's minus fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c2 = b.layer1(x)
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        return c2, c3, c4, b.layer4(c4)


class Encoder(nn.Module):
    """Trunk + pooling + MLP head -> L2-normalised embeddings (M x dim).

    Instances are pooled from one of two maps: C5 (stride 32) or the fused stride-8 map
    (`segloc.dense`: C3 + upsampled C4, C5; `pool_from="stride8"`). On C5 a 64-px crop is a
    2 x 2 map, so a mask-pooled instance is nearly the whole crop; at stride 8 a 30-px item covers
    several cells of the map the probe reads. Image pooling (MoCo) always averages C5.
    """

    def __init__(
        self,
        arch: str,
        pooling: str,
        dim: int,
        pool_from: str = "c5",
        pixel_norm: bool = False,
        dense_dim: int = 0,
    ):
        super().__init__()
        # Each cell's feature vector L2-normalised before pooling (CP2), so an instance's vector
        # is an average of directions and no high-activation cell (often background) dominates.
        self.pixel_norm = pixel_norm
        if pool_from not in POOL_FROM:
            raise ValueError(f"pool_from {pool_from!r}: expected one of {', '.join(POOL_FROM)}")
        self.pooling = pooling
        self.trunk = ResNetTrunk(arch)
        chans = self.trunk.channels
        self.dense = pool_from == "stride8" and pooling != "image"
        self.stride = STRIDE8 if self.dense else STRIDE5  # of the map `feature_map` returns
        width = sum(chans[1:]) if self.dense else chans[-1]
        # MoCo-v2 head: hidden layer as wide as the input, no BN (instances, not images, are the batch).
        self.head = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim)
        )
        # A per-cell projection for a variant's dense term (DenseCL's 1x1-conv MLP); none by default.
        self.dense_head = None
        if dense_dim > 0 and self.dense:
            self.dense_head = nn.Sequential(
                nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, dense_dim, 1)
            )

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """C5, or the fused stride-8 map with `pool_from="stride8"`."""
        feats = self.trunk(x)
        return fuse_stride8(feats[1:]) if self.dense else feats[-1]

    def embed(self, feat: torch.Tensor, regions: Regions | None) -> torch.Tensor:
        if self.pooling == "image":
            pooled = feat.mean((2, 3))  # B x C
        else:
            if self.pixel_norm:
                feat = F.normalize(feat.float(), dim=1).to(feat.dtype)
            pooled = pool_instances(feat, regions, self.pooling, self.stride)  # M x C
        return F.normalize(self.head(pooled.float()), dim=1)

    def forward(self, x: torch.Tensor, regions: Regions | None = None) -> torch.Tensor:
        return self.embed(self.feature_map(x), regions)

    def dense_embed(self, feat: torch.Tensor) -> torch.Tensor:
        """B x dense_dim x h x w cell embeddings, L2-normalised per cell."""
        return F.normalize(self.dense_head(feat).float(), dim=1)


def pool_instances(feat: torch.Tensor, regions: Regions, pooling: str, stride: int) -> torch.Tensor:
    """M x C instance vectors from `feat` (B x C x h x w, `stride` input pixels per cell)."""
    if pooling == "mask":
        return mask_pool(feat, regions)
    return box_pool(feat, regions, stride)


def mask_pool(feat: torch.Tensor, regions: Regions) -> torch.Tensor:
    """Mask-weighted average of feat (B x C x h x w) for each instance -> M x C."""
    b, c, h, w = feat.shape
    cover = F.adaptive_avg_pool2d(regions.masks[:, None].float(), (h, w)).flatten(1)  # M x hw
    weights = cover / cover.sum(1, keepdim=True).clamp(min=1e-6)
    # Scatter instances into a B x kmax grid so one bmm pools all of them against their own image.
    grid = feat.new_zeros(b, regions.kmax, h * w)
    grid[regions.inst_img, regions.inst_slot] = weights.to(feat.dtype)
    pooled = torch.bmm(grid, feat.flatten(2).transpose(1, 2))  # B x kmax x C
    return pooled[regions.inst_img, regions.inst_slot]


def box_pool(feat: torch.Tensor, regions: Regions, stride: int) -> torch.Tensor:
    """RoIAlign 7x7 on each instance's box, averaged -> M x C."""
    rois = torch.cat([regions.inst_img[:, None].to(regions.boxes.dtype), regions.boxes], 1)
    out = roi_align(
        feat.float(),
        rois.float(),
        output_size=7,
        spatial_scale=1.0 / stride,
        sampling_ratio=2,
        aligned=True,
    )
    return out.mean((2, 3)).to(feat.dtype)


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over `groups` sub-batches in training (shuffle-BN inside one process).

    MoCo shuffles keys across GPUs so a query and its key never share BN statistics (a leak the
    model can exploit); on one device we shuffle the key batch and normalise each slice apart.
    Running statistics are not updated: this layer only ever serves the momentum encoder.
    """

    def __init__(self, num_features: int, groups: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups <= 1 or x.shape[0] < 2 * self.groups:
            return super().forward(x)
        parts = x.tensor_split(self.groups)
        return torch.cat(
            [
                F.batch_norm(p, None, None, self.weight, self.bias, True, 0.0, self.eps)
                for p in parts
            ]
        )


def split_batchnorm(module: nn.Module, groups: int) -> nn.Module:
    """Replace every BatchNorm2d under `module` by a SplitBatchNorm2d with the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, groups, child.eps)
            split.load_state_dict(child.state_dict())
            split.to(child.weight.device)
            setattr(module, name, split)
        else:
            split_batchnorm(child, groups)
    return module


@torch.no_grad()
def init_weights(module: nn.Module, g: torch.Generator) -> None:
    """Seeded init (torchvision's scheme) from an explicit generator, never the global RNG."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)  # nn.Linear's default
            bound = 1.0 / math.sqrt(m.in_features)
            nn.init.uniform_(m.bias, -bound, bound, generator=g)
