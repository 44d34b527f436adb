"""Composing a sample: segments drawn, transformed and pasted on two backgrounds, with labels.

    composer = Composer(cfg, foregrounds, backgrounds)
    views = composer.compose(index)                     # [v0, v1], ready for the shard writer

The building blocks, per view:

    masks, offsets = [p.mask for p in placed], [(p.x, p.y) for p in placed]
    index = index_map(masks, offsets, size)             # SxS uint8, 1 + topmost instance
    visible = visible_areas(index, masks, offsets)      # pixels where each is topmost
    classes = class_map(index, [p.cls for p in placed])
    image = composite(background, placed, mode="multiply", edge_sigma=1.0)

X-ray scans are transmission images: by Beer-Lambert, overlapping objects multiply
(T = T_bg * T_obj; Mery & Katsaggelos 2017). `multiply` pastes the object's own transmission
(its pixels divided by the background level around it in the source scan) onto the target.
Pseudo-colour channels are treated as transmissions in [0, 1] each, which is an approximation
(DESIGN §2). `alpha` (Gaussian-softened copy-paste, Ghiasi et al. 2021) and `hard` (overwrite,
InsLoc-style) are the baselines. Labels do not depend on the mode: a pixel takes the class of the
topmost instance covering it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from segloc.errors import UserError
from synth.config import SynthConfig
from synth.shards import View, instance_record
from synth.sources import Backgrounds, Foregrounds, Segment, load_background
from synth.transforms import draw_transform, warp

BACKGROUND = 0
# Index maps are uint8 (0: no instance, i + 1: instance i), so at most 254 instances per view.
MAX_INSTANCES = 254
# Redraws of a sample left with no instance before the params are declared unsatisfiable.
MAX_DRAWS = 100


@dataclass(frozen=True)
class Placed:
    pixels: np.ndarray  # hxwx3 uint8, transformed cut-out
    mask: np.ndarray  # hxw bool
    level: np.ndarray  # (3,) float32 background level of the source scan around the object
    cls: int  # 1..C
    density: float  # transmission exponent k
    x: int  # canvas column of the crop's left edge (may be < 0 or run past the edge)
    y: int  # canvas row of the crop's top edge


def clip(x: int, y: int, h: int, w: int, size: int) -> tuple[slice, slice, slice, slice] | None:
    """(canvas rows, canvas cols, crop rows, crop cols) of the part of an hxw crop inside the canvas."""
    y0, y1, x0, x1 = max(0, y), min(size, y + h), max(0, x), min(size, x + w)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def index_map(masks: list[np.ndarray], offsets: list[tuple[int, int]], size: int) -> np.ndarray:
    """size x size uint8: 1 + index of the topmost (last pasted) instance per pixel, 0 where none."""
    if len(masks) > MAX_INSTANCES:
        raise ValueError(f"at most {MAX_INSTANCES} instances per view, got {len(masks)}")
    index = np.zeros((size, size), dtype=np.uint8)
    for i, (mask, (x, y)) in enumerate(zip(masks, offsets, strict=True)):
        box = clip(x, y, *mask.shape, size)
        if box is not None:
            rows, cols, mrows, mcols = box
            index[rows, cols][mask[mrows, mcols]] = i + 1
    return index


def visible_areas(
    index: np.ndarray, masks: list[np.ndarray], offsets: list[tuple[int, int]]
) -> np.ndarray:
    """(n,) int64: pixels where each instance is topmost (counted inside its own box only)."""
    size = index.shape[0]
    out = np.zeros(len(masks), dtype=np.int64)
    for i, (mask, (x, y)) in enumerate(zip(masks, offsets, strict=True)):
        box = clip(x, y, *mask.shape, size)
        if box is not None:
            out[i] = np.count_nonzero(index[box[0], box[1]] == i + 1)
    return out


def full_mask(mask: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """size x size bool: an instance's whole mask on the canvas (overlaps kept, edges clipped)."""
    out = np.zeros((size, size), dtype=bool)
    box = clip(x, y, *mask.shape, size)
    if box is not None:
        rows, cols, mrows, mcols = box
        out[rows, cols] = mask[mrows, mcols]
    return out


def class_map(index: np.ndarray, classes: list[int]) -> np.ndarray:
    """size x size uint8 class map from an index map: 0 background, else the topmost class."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1 : len(classes) + 1] = classes
    return cv2.LUT(index, lut)


def composite(
    background: np.ndarray, placed: list[Placed], mode: str, edge_sigma: float
) -> np.ndarray:
    """SxSx3 uint8 view: `placed` pasted in order onto an SxSx3 uint8 background."""
    canvas = background.astype(np.float32)
    size = canvas.shape[0]
    paste = {"multiply": _paste_multiply, "alpha": _paste_alpha, "hard": _paste_hard}[mode]
    for p in placed:
        box = clip(p.x, p.y, *p.mask.shape, size)
        if box is not None:
            rows, cols, mrows, mcols = box
            paste(canvas[rows, cols], p, (mrows, mcols), edge_sigma)  # the region is a view
    # Values stay in [0, 255] in every mode; convertScaleAbs rounds and saturates in one pass.
    return cv2.convertScaleAbs(canvas)


def _paste_multiply(region: np.ndarray, p: Placed, crop: tuple, sigma: float) -> None:
    """region *= 1 + alpha (T - 1): T inside the mask, fading to 1 (air) at its soft edge."""
    alpha = soften(p.mask, sigma)
    alpha *= p.mask  # outside the mask the object is air: the edge only fades inward
    factor = object_transmission(p, "multiply")[crop]
    factor -= 1.0
    factor *= alpha[crop][..., None]
    factor += 1.0
    region *= factor


def _paste_alpha(region: np.ndarray, p: Placed, crop: tuple, sigma: float) -> None:
    """region += alpha (255 T - region): copy-paste through a Gaussian-softened mask."""
    delta = object_transmission(p, "alpha")[crop]
    delta *= 255.0
    delta -= region
    delta *= soften(p.mask, sigma)[crop][..., None]
    region += delta


def _paste_hard(region: np.ndarray, p: Placed, crop: tuple, sigma: float) -> None:
    mask = p.mask[crop]
    region[mask] = object_transmission(p, "hard")[crop][mask] * 255.0


def object_transmission(p: Placed, mode: str) -> np.ndarray:
    """hxwx3 float32 in [0, 1]: the object's own transmission (multiply) or its display value.

    Computed through a 256-entry table per channel (pixels are uint8), which also makes the
    density jitter T ** k free.
    """
    ref = p.level if mode == "multiply" else np.full(3, 255.0, dtype=np.float32)
    values = np.arange(256, dtype=np.float64)[:, None] / np.asarray(ref, dtype=np.float64)
    lut = np.minimum(values, 1.0) ** p.density  # 256x3
    return cv2.LUT(p.pixels, lut.astype(np.float32).reshape(1, 256, 3))


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """hxw float32 in [0, 1]: the mask blurred by a Gaussian of `sigma` px (0: unchanged)."""
    alpha = mask.astype(np.float32)
    if sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return alpha


@dataclass(frozen=True)
class _Layout:
    background: str  # file name of the scan under this view
    image: np.ndarray  # SxSx3 uint8 crop of it
    placed: list[Placed]  # one per picked segment, paste order
    transforms: list[dict]
    sources: list[dict]

    def keep(self, ids: list[int]) -> _Layout:
        pick = [self.placed[i] for i in ids], [self.transforms[i] for i in ids]
        return _Layout(self.background, self.image, *pick, [self.sources[i] for i in ids])


class Composer:
    """Draws and composes one sample at a time; holds a per-process LRU cache of backgrounds.

    Sample `i` depends on `np.random.default_rng([seed, i])` alone, never on the samples composed
    before it in this process (the cache only saves decodes).
    """

    def __init__(self, cfg: SynthConfig, fg: Foregrounds, bg: Backgrounds) -> None:
        self.cfg, self.fg, self.bg = cfg, fg, bg
        by_class: dict[int, list[int]] = {}
        for i, seg in enumerate(fg.segments):
            by_class.setdefault(seg.cls, []).append(i)
        self._class_ids = np.array(sorted(by_class))
        self._by_class = {c: np.array(ids) for c, ids in by_class.items()}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def compose(self, index: int) -> list[View]:
        """The two views of sample `index`, with at least one instance."""
        rng = np.random.default_rng([self.cfg.seed, index])
        for _ in range(MAX_DRAWS):
            views = self._draw(rng)
            if views is not None:
                return views
        raise UserError(
            f"sample {index}: no instance stayed visible in {MAX_DRAWS} draws; lower "
            "synth.min_visible_fraction / synth.min_visible_pixels or synth.segments_per_sample"
        )

    def _draw(self, rng: np.random.Generator) -> list[View] | None:
        cfg = self.cfg
        count = int(rng.integers(cfg.segments_per_sample[0], cfg.segments_per_sample[1] + 1))
        picks = self._pick_segments(rng, count)
        # Two different scans: InsLoc's pairing teaches invariance to clutter (DESIGN §2).
        scans = rng.choice(len(self.bg.names), size=2, replace=False)
        layouts = [self._layout(rng, int(b), picks) for b in scans]
        labels = [self._labels(layout.placed) for layout in layouts]
        keep = self._survivors(layouts, labels)
        if not keep:
            return None
        if len(keep) < count:
            # Dropped instances are not pasted at all, in either view.
            layouts = [layout.keep(keep) for layout in layouts]
            labels = [self._labels(layout.placed) for layout in layouts]
        return [self._view(layout, *lab) for layout, lab in zip(layouts, labels, strict=True)]

    def _pick_segments(self, rng: np.random.Generator, count: int) -> list[Segment]:
        segs = self.fg.segments
        if self.cfg.class_balanced:
            classes = rng.choice(self._class_ids, size=count)
            return [segs[int(rng.choice(self._by_class[int(c)]))] for c in classes]
        ids = rng.choice(len(segs), size=count, replace=count > len(segs))
        return [segs[int(i)] for i in ids]

    def _layout(self, rng: np.random.Generator, scan: int, picks: list[Segment]) -> _Layout:
        size = self.cfg.canvas
        full = self._background(scan)
        top = int(rng.integers(0, full.shape[0] - size + 1))
        left = int(rng.integers(0, full.shape[1] - size + 1))
        placed, transforms = [], []
        for seg in picks:
            t = draw_transform(rng, self.cfg, seg.mask.shape, seg.prescale)
            pixels, mask = warp(seg.pixels, seg.mask, t)
            h, w = mask.shape
            # Anywhere the whole box fits; a box larger than the canvas is cut on some side.
            u = rng.random(2)
            x = min(0, size - w) + int(u[0] * (abs(size - w) + 1))
            y = min(0, size - h) + int(u[1] * (abs(size - h) + 1))
            placed.append(Placed(pixels, mask, seg.level, seg.cls, t.density, x, y))
            # Scale as seen from the source scan, whatever size the segment is stored at.
            transforms.append(
                {**t.as_dict(), "scale": round(t.scale * seg.prescale, 6), "x": x, "y": y}
            )
        sources = [{"image_id": s.image_id, "annotation_id": s.annotation_id} for s in picks]
        return _Layout(
            self.bg.names[scan],
            full[top : top + size, left : left + size],
            placed,
            transforms,
            sources,
        )

    def _labels(self, placed: list[Placed]) -> tuple[np.ndarray, np.ndarray]:
        """(SxS uint8 index map, (n,) visible pixel counts) of instances pasted in order."""
        masks, offsets = [p.mask for p in placed], [(p.x, p.y) for p in placed]
        index = index_map(masks, offsets, self.cfg.canvas)
        return index, visible_areas(index, masks, offsets)

    def _survivors(self, layouts: list[_Layout], labels: list[tuple]) -> list[int]:
        """Indices of the instances visible enough in every view (dropped ones leave both)."""
        ok = None
        for layout, (_, visible) in zip(layouts, labels, strict=True):
            total = np.array([p.mask.sum() for p in layout.placed])
            good = (
                (visible > 0)
                & (visible >= self.cfg.min_visible_pixels)
                & (visible >= self.cfg.min_visible_fraction * total)
            )
            ok = good if ok is None else ok & good
        return [int(i) for i in np.flatnonzero(ok)]

    def _view(self, layout: _Layout, index: np.ndarray, visible: np.ndarray) -> View:
        size = self.cfg.canvas
        instances = [
            instance_record(
                j,
                p.cls,
                full_mask(p.mask, p.x, p.y, size),
                int(visible[j]),
                layout.sources[j],
                layout.transforms[j],
            )
            for j, p in enumerate(layout.placed)
        ]
        image = composite(layout.image, layout.placed, self.cfg.mode, self.cfg.edge_sigma)
        classes = class_map(index, [p.cls for p in layout.placed])
        return View(layout.background, image, classes, instances)

    def _background(self, scan: int) -> np.ndarray:
        """The scan at canvas scale, from an LRU cache bounded by `background_cache_mb`."""
        image = self._cache.pop(scan, None)
        if image is None:
            image = load_background(self.bg.path(scan), self.cfg.canvas, self.bg.infos[scan])
            self._cached_bytes += image.nbytes
        self._cache[scan] = image
        while self._cached_bytes > self.cfg.background_cache_mb * 2**20 and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
        return image
