"""Per-paste transforms of a cut segment: scale, rotation, flip and X-ray density jitter.

    t = draw_transform(rng, cfg, seg.mask.shape, seg.prescale)
    pixels, mask = warp(stack(seg.pixels, seg.mask), t)   # the box grows so nothing is cut

Geometry is applied here; density (transmission ** k, i.e. k times the object's thickness under
Beer-Lambert) is applied by the compositor, which knows the object's transmission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from synth.config import SynthConfig


@dataclass(slots=True)  # not frozen: one is made per paste, and frozen __init__ costs 4x
class Transform:
    scale: float  # factor applied to the stored crop (its long side becomes the drawn size)
    angle: float  # degrees, counter-clockwise
    flip: bool  # horizontal, applied before the rotation
    density: float  # transmission exponent k

    def as_dict(self) -> dict:
        return {
            "scale": round(self.scale, 6),
            "angle": round(self.angle, 4),
            "flip": self.flip,
            "density": round(self.density, 6),
        }


def draw_transform(
    rng: np.random.Generator, cfg: SynthConfig, shape: tuple[int, int], prescale: float = 1.0
) -> Transform:
    """Random transform of an h x w crop stored at `prescale` times its source size.

    The draw order is part of the reproducibility contract. The drawn long side is capped at
    `cfg.max_upscale` times the object's size in its source scan: small items (bullets) would
    otherwise be blown up into blurry blocks.
    """
    # One call for all four draws: Generator calls cost microseconds each, per paste.
    u = rng.random(4)
    long_side = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[0]
    angle = -180.0 + 360.0 * u[1] if cfg.rotate else 0.0
    flip = bool(u[2] < cfg.flip)
    # Log-uniform, so k and 1/k (thicker / thinner) are equally likely.
    low, high = math.log(cfg.density[0]), math.log(cfg.density[1])
    density = math.exp(low + (high - low) * u[3])
    long_side = min(long_side, cfg.max_upscale * max(shape) / prescale)
    return Transform(float(long_side / max(shape)), float(angle), flip, float(density))


# Border of the stacked crop: one pixel is all bilinear sampling reads past an edge.
PAD = 1


def stack(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(h+2)x(w+2)x4 uint8: an hxwx3 crop and its hxw mask's coverage (0/255) in one image.

    Built once per segment, so that each paste needs one warp instead of two. The pixels are
    padded by repeating their edge and the coverage by zeros: under BORDER_REPLICATE the padded
    image then samples exactly as the pixels do under BORDER_REPLICATE and the mask under
    BORDER_CONSTANT 0, which is what two separate warps would use.
    """
    rgba = np.empty((*mask.shape, 4), dtype=np.uint8)
    rgba[..., :3] = pixels
    rgba[..., 3] = mask.view(np.uint8) * np.uint8(255)
    return _pad(rgba)


def _pad(rgba: np.ndarray) -> np.ndarray:
    """`stack`'s border: pixels repeat their edge, coverage is zero."""
    out = cv2.copyMakeBorder(rgba, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    out[:PAD, :, 3] = out[-PAD:, :, 3] = out[:, :PAD, 3] = out[:, -PAD:, 3] = 0
    return out


def warp(stacked: np.ndarray, t: Transform, outside: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flip, scale and rotate a `stack`ed crop and mask into an expanded H'xW' box.

    One bilinear affine warp does it all, pixels and mask together. The mask's coverage is
    thresholded at 1/2: binary and aligned with the pixels like nearest neighbour, without its
    staircases on enlargement. Shrinking by more than 2x first averages areas (`cv2.resize`),
    since bilinear sampling would skip pixels and alias the fine X-ray texture.

    `outside=False` when no pixel outside the mask will be used: the box's corners beyond the
    padded crop are then filled with zeros instead of sampled, which halves the warp's cost. Any
    output pixel with coverage > 0 samples only inside the padded crop, so the pixels in the mask
    are the same either way.
    Returns (H'xW'x3 uint8, H'xW' bool).
    """
    out = _warp_stacked(stacked, t, outside)
    return cv2.cvtColor(out, cv2.COLOR_RGBA2RGB), _covered(out)


def warp_tight(
    stacked: np.ndarray, t: Transform
) -> tuple[np.ndarray, np.ndarray, int, int, tuple[int, int]]:
    """`warp(stacked, t, outside=False)` cut by `tighten`: (pixels, mask, dx, dy, (H', W')), the
    last the size of the whole warped box. The colour conversion, too, then runs on the mask's
    bounding box alone.
    """
    out = _warp_stacked(stacked, t, outside=False)
    rgba, mask, dx, dy = tighten(out, _covered(out))
    if not mask.size:  # nothing covered: OpenCV refuses empty images
        return np.zeros((*mask.shape, 3), dtype=np.uint8), mask, dx, dy, out.shape[:2]
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), mask, dx, dy, out.shape[:2]


def tighten(pixels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(pixels, mask, dx, dy): views cut to the mask's bounding box, which starts at (dx, dy).

    A rotated object rarely fills its warped box: its mask covers a fifth of it on average, and
    the mask's bounding box a little over half. Nothing outside the mask is pasted or labelled
    (but in alpha mode, whose soft edge fades outward), so the rest of the work skips that part.
    """
    dx, dy, w, h = cv2.boundingRect(mask.view(np.uint8))
    return pixels[dy : dy + h, dx : dx + w], mask[dy : dy + h, dx : dx + w], dx, dy


def _warp_stacked(stacked: np.ndarray, t: Transform, outside: bool) -> np.ndarray:
    """The H'xW'x4 warp behind `warp`: pixels and coverage together."""
    scale = t.scale
    height, width = stacked.shape[0] - 2 * PAD, stacked.shape[1] - 2 * PAD
    if scale < 0.5:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        stacked = _shrink(stacked, size)
        (width, height), scale = size, 1.0
    matrix, out_size = affine((width, height), scale, t.angle, t.flip)
    # Output-to-source map, moved into the padding; inverted as warpAffine itself would, so the
    # sample positions are those of an unpadded warp to the last bit.
    inverse = cv2.invertAffineTransform(matrix)
    inverse[:, 2] += PAD
    return cv2.warpAffine(
        stacked,
        inverse,
        out_size,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE if outside else cv2.BORDER_CONSTANT,
    )


def _shrink(stacked: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A `stack`ed crop area-averaged to (w, h), its coverage thresholded at 1/2 and re-padded."""
    inner = cv2.resize(stacked[PAD:-PAD, PAD:-PAD], size, interpolation=cv2.INTER_AREA)
    cv2.insertChannel(_covered(inner).view(np.uint8) * np.uint8(255), inner, 3)  # in place
    return _pad(inner)


def _covered(rgba: np.ndarray) -> np.ndarray:
    """Bool mask of the pixels whose coverage (channel 3, 0..255) is at least half; a sliver
    thinner than a pixel keeps its best-covered pixels, and no coverage at all gives no mask."""
    cover = cv2.extractChannel(rgba, 3)
    return cover >= min(128, max(int(cv2.minMaxLoc(cover)[1]), 1))


def resize(
    pixels: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop and mask resampled to (w, h): the mask as uint8 0/1.

    Shrinking averages areas (plain bilinear aliases the fine X-ray texture); the mask's coverage
    is resampled the same way and thresholded at 1/2, so enlarged masks get smooth edges rather
    than nearest-neighbour staircases.
    """
    if size == (mask.shape[1], mask.shape[0]):
        return pixels, mask.view(np.uint8)
    interp = cv2.INTER_AREA if size[0] < mask.shape[1] else cv2.INTER_LINEAR
    pixels = cv2.resize(pixels, size, interpolation=interp)
    cover = cv2.resize(mask.astype(np.float32), size, interpolation=interp)
    mask8 = (cover >= 0.5).view(np.uint8)
    if not mask8.any():  # a sliver thinner than a pixel: keep its best-covered pixel
        mask8 = (cover >= cover.max()).view(np.uint8)
    return pixels, mask8


def affine(
    size: tuple[int, int], scale: float, angle: float, flip: bool
) -> tuple[np.ndarray, tuple[int, int]]:
    """2x3 matrix flipping, scaling and rotating a (w, h) image about its centre, and the (w', h')
    of the box just large enough for the result (nothing is cut)."""
    width, height = size
    rad = math.radians(angle)
    cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
    out_w = max(1, math.ceil(scale * (width * cos + height * sin) - 1e-6))
    out_h = max(1, math.ceil(scale * (width * sin + height * cos) - 1e-6))
    # x' = A (x - c) + c', with c, c' the centres of source and output box (pixel-centre
    # convention) and A = scale * rotation(angle) * (mirror if flip), written out: numpy's 3x3
    # products cost more than the warp of a small crop.
    a, b = scale * math.cos(rad), scale * math.sin(rad)
    m = -1.0 if flip else 1.0
    cx, cy = (width - 1) / 2, (height - 1) / 2
    ox, oy = (out_w - 1) / 2, (out_h - 1) / 2
    matrix = np.array([[m * a, b, ox - m * a * cx - b * cy], [-m * b, a, oy + m * b * cx - a * cy]])
    return matrix, (out_w, out_h)
