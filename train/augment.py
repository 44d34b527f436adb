"""Batched augmentation of one view on the device: crop + flips, colour jitter, blur.

Geometry is one affine warp per image (random resized crop, horizontal/vertical flip) applied with
`grid_sample` to the image, to every instance mask of that image (bilinear: soft masks) and to the
label map (nearest), so the three stay aligned. All random numbers are drawn on the CPU from the
caller's `torch.Generator` in a fixed order, then moved: the same generator state gives the same
augmentation on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.config import AugmentConfig

# ImageNet statistics: recorded in backbone.json so fine-tuning normalises the same way.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# RGB -> YIQ; a hue shift is a rotation of the (I, Q) chroma plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GREY = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class View:
    images: torch.Tensor  # B x 3 x P x P, normalised float
    masks: torch.Tensor | None = None  # M x P x P soft instance masks in [0, 1]
    seg: torch.Tensor | None = None  # B x P x P int64 label map, 255 = ignore


def augment_view(
    img: torch.Tensor,
    aug: AugmentConfig,
    g: torch.Generator,
    masks: torch.Tensor | None = None,
    inst_img: torch.Tensor | None = None,
    seg: torch.Tensor | None = None,
) -> View:
    """img: B x 3 x S x S uint8; masks: M x S x S uint8 of images inst_img (M,); seg: B x S x S."""
    n, p, dev = img.shape[0], aug.crop, img.device
    theta = crop_thetas(n, aug, g).to(dev)
    x = warp(img.float() / 255.0, theta, p, "bilinear")
    x = colour_jitter(x, aug, g)
    x = gaussian_blur(x, aug, g)
    view = View(normalise(x))
    if masks is not None:
        view.masks = warp(masks[:, None].float(), theta[inst_img], p, "bilinear")[:, 0]
    if seg is not None:
        view.seg = warp(seg[:, None].float(), theta, p, "nearest")[:, 0].round().long()
    return view


def crop_thetas(n: int, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """n x 2 x 3 affine maps from output to input coordinates ([-1, 1] grid convention)."""
    u = torch.rand(n, 6, generator=g)
    area = aug.scale[0] + (aug.scale[1] - aug.scale[0]) * u[:, 0]
    log_r = math.log(aug.ratio[0]) + (math.log(aug.ratio[1]) - math.log(aug.ratio[0])) * u[:, 1]
    # Crop side lengths as shares of the canvas; clamped so the crop stays inside it.
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    x0, y0 = (1.0 - w) * u[:, 2], (1.0 - h) * u[:, 3]
    fx = torch.where(u[:, 4] < aug.hflip, -1.0, 1.0)
    fy = torch.where(u[:, 5] < aug.vflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * fx, 2.0 * x0 + w - 1.0
    theta[:, 1, 1], theta[:, 1, 2] = h * fy, 2.0 * y0 + h - 1.0
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """N x C x S x S -> N x C x size x size through per-item affine maps theta (N x 2 x 3)."""
    if x.shape[0] == 0:
        return x.new_zeros((0, x.shape[1], size, size))
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """MoCo-v2 colour jitter (fixed order: brightness, contrast, saturation, hue) on B x 3 x H x W."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=g).to(x.device)
    on = (u[:, 0] < aug.jitter_p).float()  # images left untouched get factor 1 / shift 0

    def factor(col: int, amount: float) -> torch.Tensor:
        f = 1.0 + amount * (2.0 * u[:, col] - 1.0)
        return (on * f + (1.0 - on)).view(n, 1, 1, 1)

    grey_w = _GREY.to(x.device).view(1, 3, 1, 1)
    x = (x * factor(1, aug.brightness)).clamp(0.0, 1.0)
    mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    c = factor(2, aug.contrast)
    x = (c * x + (1.0 - c) * mean).clamp(0.0, 1.0)
    s = factor(3, aug.saturation)
    x = (s * x + (1.0 - s) * (x * grey_w).sum(1, keepdim=True)).clamp(0.0, 1.0)
    if aug.hue > 0:
        x = _hue_shift(x, on * aug.hue * (2.0 * u[:, 4] - 1.0))
    return x


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate chroma by shift (B,) turns: one 3x3 matrix per image, T^-1 R T in YIQ space."""
    yiq = _YIQ.to(x.device)
    cos, sin = torch.cos(2 * math.pi * shift), torch.sin(2 * math.pi * shift)
    rot = torch.zeros(shift.shape[0], 3, 3, device=x.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mats = torch.linalg.inv(yiq) @ rot @ yiq  # B x 3 x 3
    return torch.einsum("bij,bjhw->bihw", mats, x).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma; images not drawn get a delta kernel."""
    n, c, h, w = x.shape
    u = torch.rand(n, 2, generator=g)
    scale = w / 224.0  # MoCo's sigma range is given for 224 px crops
    lo, hi = aug.blur_sigma[0] * scale, aug.blur_sigma[1] * scale
    sigma = torch.where(u[:, 0] < aug.blur_p, lo + (hi - lo) * u[:, 1], torch.zeros(n))
    radius = max(1, min(math.ceil(3.0 * hi), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2.0 * sigma.clamp(min=1e-6)[:, None] ** 2))  # n x (2r+1)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, 0).to(x.device)  # (n*c) x (2r+1): one kernel per channel group
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c
    )
    return y.reshape(n, c, h, w)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def visible(masks: torch.Tensor, min_px: int) -> torch.Tensor:
    """(M,) bool: the instance still covers at least min_px pixels of its crop."""
    return (masks >= 0.5).flatten(1).sum(1) >= min_px


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """M x 4 tight boxes (x0, y0, x1, y1 in pixels, x1/y1 exclusive) of soft masks M x P x P."""
    binary = masks >= 0.5
    size = masks.shape[-1]
    cols, rows = binary.any(1), binary.any(2)  # M x P each

    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = hit.float().argmax(1)
        last = size - hit.flip(1).float().argmax(1)
        return first.float(), last.float()

    (x0, x1), (y0, y1) = span(cols), span(rows)
    return torch.stack([x0, y0, x1, y1], 1)


def jitter_boxes(boxes: torch.Tensor, amount: float, size: int, g: torch.Generator) -> torch.Tensor:
    """InsLoc query-side box jitter: shift the centre and scale the sides by up to `amount`."""
    u = (2.0 * torch.rand(boxes.shape[0], 4, generator=g) - 1.0).to(boxes.device) * amount
    wh = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0 + u[:, :2] * wh
    half = wh * (1.0 + u[:, 2:]) / 2.0
    return torch.cat([centre - half, centre + half], 1).clamp(0.0, float(size))
