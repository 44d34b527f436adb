"""Composing a sample: segments drawn, transformed and pasted on two backgrounds, with labels.

    composer = Composer(cfg, foregrounds, backgrounds)
    views = composer.compose(index)                     # [v0, v1], ready for the shard writer

The building blocks, per view:

    masks, offsets = [p.mask for p in placed], [(p.x, p.y) for p in placed]
    where = boxes(masks, offsets, size)                 # each crop's part inside the canvas
    index = index_map(masks, where, size)               # SxS uint8, 1 + topmost instance
    visible = visible_areas(index, where)               # pixels where each is topmost
    classes = class_map(index, [p.cls for p in placed])
    image = composite(background, placed, mode="multiply", edge_sigma=1.0, where=where)

X-ray scans are transmission images: by Beer-Lambert, overlapping objects multiply
(T = T_bg * T_obj; Mery & Katsaggelos 2017). `multiply` pastes the object's own transmission
(its pixels divided by the background level around it in the source scan) onto the target.
Pseudo-colour channels are treated as transmissions in [0, 1] each, which is an approximation
(docs/design.md §2.2). `alpha` (Gaussian-softened copy-paste, Ghiasi et al. 2021) and `hard`
(overwrite, InsLoc-style) are the baselines. Labels do not depend on the mode: a pixel takes the
class of the topmost instance covering it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from segloc.errors import UserError
from synth.config import SynthConfig
from synth.shards import View, instance_records
from synth.sources import Backgrounds, Foregrounds, Segment, load_background
from synth.transforms import Transform, draw_transform, stack, warp, warp_tight

BACKGROUND = 0
# Index maps are uint8 (0: no instance, i + 1: instance i), so at most 254 instances per view.
MAX_INSTANCES = 254
# Redraws of a sample left with no instance before the params are declared unsatisfiable.
MAX_DRAWS = 100


@dataclass(slots=True)  # not frozen: one is made per paste, and frozen __init__ costs 4x
class Placed:
    pixels: np.ndarray  # hxwx3 uint8, transformed cut-out
    mask: np.ndarray  # hxw bool
    log_t: np.ndarray  # 1x256x3 float32 `log_transmission` of the source segment, for the mode
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


Box = tuple[slice, slice, slice, slice] | None


def boxes(masks: list[np.ndarray], offsets: list[tuple[int, int]], size: int) -> list[Box]:
    """`clip` of each mask at its (x, y) offset: worked out once per view, used by every step."""
    return [clip(x, y, *m.shape, size) for m, (x, y) in zip(masks, offsets, strict=True)]


def index_map(masks: list[np.ndarray], boxes: list[Box], size: int) -> np.ndarray:
    """size x size uint8: 1 + index of the topmost (last pasted) instance per pixel, 0 where none."""
    if len(masks) > MAX_INSTANCES:
        raise ValueError(f"at most {MAX_INSTANCES} instances per view, got {len(masks)}")
    index = np.zeros((size, size), dtype=np.uint8)
    for i, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
        if box is not None:
            rows, cols, mrows, mcols = box
            index[rows, cols][mask[mrows, mcols]] = i + 1
    return index


def visible_areas(index: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """(n,) int64: pixels where each instance is topmost (counted inside its own box only)."""
    out = np.zeros(len(boxes), dtype=np.int64)
    for i, box in enumerate(boxes):
        if box is not None:
            out[i] = np.count_nonzero(index[box[0], box[1]] == i + 1)
    return out


def full_masks(masks: list[np.ndarray], boxes: list[Box], size: int) -> np.ndarray:
    """size x size x n uint8 0/1: each instance's whole mask on the canvas (overlaps kept, edges
    clipped), in Fortran order: the layout pycocotools encodes from without a copy."""
    out = np.zeros((size, size, len(masks)), dtype=np.uint8, order="F")
    for i, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
        if box is not None:
            rows, cols, mrows, mcols = box
            out[rows, cols, i] = mask[mrows, mcols]
    return out


def class_map(index: np.ndarray, classes: list[int]) -> np.ndarray:
    """size x size uint8 class map from an index map: 0 background, else the topmost class."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1 : len(classes) + 1] = classes
    return cv2.LUT(index, lut)


def composite(
    background: np.ndarray,
    placed: list[Placed],
    mode: str,
    edge_sigma: float,
    where: list[Box] | None = None,
) -> np.ndarray:
    """SxSx3 uint8 view: `placed` pasted in order onto an SxSx3 uint8 background; `where`, their
    `boxes` if the caller has them already.

    The arithmetic runs in float32 over the smallest rectangle holding every box; outside it the
    background is copied as is, which is what rounding its float copy would give back.
    """
    if where is None:
        where = boxes([p.mask for p in placed], [(p.x, p.y) for p in placed], background.shape[0])
    out = background.copy()
    inside = [b for b in where if b is not None]
    if not inside:
        return out
    top, bottom = min(b[0].start for b in inside), max(b[0].stop for b in inside)
    left, right = min(b[1].start for b in inside), max(b[1].stop for b in inside)
    canvas = np.empty((bottom - top, right - left, 3), dtype=np.float32)
    np.copyto(canvas, background[top:bottom, left:right])  # astype is ~10x slower (numpy 2.4)
    paste = {"multiply": _paste_multiply, "alpha": _paste_alpha, "hard": _paste_hard}[mode]
    for p, box in zip(placed, where, strict=True):
        if box is not None:
            rows, cols, mrows, mcols = box
            region = canvas[
                rows.start - top : rows.stop - top, cols.start - left : cols.stop - left
            ]
            paste(region, p, (mrows, mcols), edge_sigma)  # the region is a view
    # Values stay in [0, 255] in every mode; convertScaleAbs rounds and saturates in one pass.
    out[top:bottom, left:right] = cv2.convertScaleAbs(canvas)
    return out


def _paste_multiply(region: np.ndarray, p: Placed, crop: tuple, sigma: float) -> None:
    """region *= 1 + alpha (T - 1): T inside the mask, fading to 1 (air) at its soft edge.

    OpenCV calls where numpy would broadcast: several times cheaper on crops this small.
    """
    cover = p.mask.astype(np.float32)
    alpha = soften(cover, sigma)
    cv2.multiply(alpha, cover, dst=alpha)  # outside the mask the object is air: fade inward only
    # T - 1 straight from the table (expm1(k log T) = T ** k - 1): one pass less over the crop.
    lut = p.log_t * np.float32(p.density)
    factor = cv2.LUT(p.pixels[crop], np.expm1(lut, out=lut))
    cv2.multiply(factor, cv2.cvtColor(alpha[crop], cv2.COLOR_GRAY2RGB), dst=factor)
    factor += 1.0
    cv2.multiply(region, factor, dst=region)


def _paste_alpha(region: np.ndarray, p: Placed, crop: tuple, sigma: float) -> None:
    """region += alpha (255 T - region): copy-paste through a Gaussian-softened mask."""
    delta = object_transmission(p)[crop]
    delta *= 255.0
    delta -= region
    delta *= soften(p.mask, sigma)[crop][..., None]
    region += delta


def _paste_hard(region: np.ndarray, p: Placed, crop: tuple, sigma: float) -> None:
    mask = p.mask[crop]
    region[mask] = object_transmission(p)[crop][mask] * 255.0


def object_transmission(p: Placed) -> np.ndarray:
    """hxwx3 float32 in [0, 1]: the object's own transmission (multiply) or its display value."""
    return cv2.LUT(p.pixels, transmission_lut(p))


def log_transmission(level: np.ndarray, mode: str) -> np.ndarray:
    """1x256x3 float32: log of `object_transmission` at density 1, per pixel value and channel.

    Per segment, once: the transmission of a pixel is its value over the background level around
    the object in its source scan (multiply), or over white (the display modes).
    """
    ref = level if mode == "multiply" else np.full(3, 255.0)
    table = np.minimum(np.arange(256, dtype=np.float64)[:, None] / ref, 1.0)
    with np.errstate(divide="ignore"):  # log 0 = -inf: exp(k * -inf) = 0 again
        return np.log(table).astype(np.float32).reshape(1, 256, 3)


def transmission_lut(p: Placed) -> np.ndarray:
    """1x256x3 float32 table from pixel value to `object_transmission`, per channel.

    Pixels are uint8, so a table lookup replaces per-pixel arithmetic; the density jitter
    T ** k = exp(k log T) costs one pass over 768 entries.
    """
    table = p.log_t * np.float32(p.density)
    return np.exp(table, out=table)


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """hxw float32 in [0, 1]: the mask blurred by a Gaussian of `sigma` px (0: unchanged)."""
    alpha = mask.astype(np.float32, copy=False)
    if sigma > 0:
        # Zeros outside: blurring the mask's bounding box alone gives the same values inside it.
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    return alpha


@dataclass(frozen=True)
class _Paste:
    segment: Segment  # what was pasted
    transform: Transform  # how (shared_transform hands it to the other view)
    x: int  # where the warped crop's box was put on the canvas, before tightening
    y: int

    def record(self) -> dict:
        """The instance's `transform` record; scale as seen from the source scan, whatever size
        the segment is stored at."""
        t, prescale = self.transform, self.segment.prescale
        return {**t.as_dict(), "scale": round(t.scale * prescale, 6), "x": self.x, "y": self.y}


@dataclass(frozen=True)
class _Layout:
    background: str  # file name of the scan under this view
    image: np.ndarray  # SxSx3 uint8 crop of it
    placed: list[Placed]  # one per picked segment, paste order
    boxes: list[Box]  # where each lies on the canvas (`clip`)
    pastes: list[_Paste]

    def keep(self, ids: list[int]) -> _Layout:
        pick = [[items[i] for i in ids] for items in (self.placed, self.boxes, self.pastes)]
        return _Layout(self.background, self.image, *pick)


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
        self._class_ids = sorted(by_class)
        self._by_class = by_class
        # Per segment, once: pixels and mask in one padded image (one warp per paste), and the
        # table of its transmission. Built up front (~0.1 s for 1000 segments) so that memory
        # stays flat however many shards follow. Views are composed in BGR, the order OpenCV
        # decodes backgrounds to and its JPEG encoder takes, so no view needs converting; every
        # step is per channel, so flipping the segments' channels here is all it takes.
        self._stacked = [stack(seg.pixels[..., ::-1], seg.mask) for seg in fg.segments]
        self._log_t = [log_transmission(seg.level[::-1], cfg.mode) for seg in fg.segments]
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
        # Two different scans: InsLoc's pairing teaches invariance to clutter (docs/design.md §2.4).
        scans = rng.choice(len(self.bg.names), size=2, replace=False)
        first = self._layout(rng, int(scans[0]), picks)
        share = cfg.shared_transform
        # No draw at 0 or 1, so those renders keep the stream they had before this option.
        shared = share >= 1.0 or (share > 0.0 and rng.random() < share)
        same = [p.transform for p in first.pastes] if shared else None
        layouts = [first, self._layout(rng, int(scans[1]), picks, same)]
        labels = [self._labels(layout) for layout in layouts]
        keep = self._survivors(layouts, labels)
        if not keep:
            return None
        if len(keep) < count:
            # Dropped instances are not pasted at all, in either view.
            layouts = [layout.keep(keep) for layout in layouts]
            labels = [self._labels(layout) for layout in layouts]
        return [self._view(layout, *lab) for layout, lab in zip(layouts, labels, strict=True)]

    def _pick_segments(self, rng: np.random.Generator, count: int) -> list[int]:
        """Indices into the segments. `a[rng.integers(len(a))]` draws what `rng.choice(a)` does
        from the same stream, at a fifth of its overhead."""
        n = len(self.fg.segments)
        if self.cfg.class_balanced:
            classes = rng.integers(0, len(self._class_ids), size=count)
            ids = []
            for c in classes:
                group = self._by_class[self._class_ids[c]]
                ids.append(group[rng.integers(0, len(group))])
            return ids
        return [int(i) for i in rng.choice(n, size=count, replace=count > n)]

    def _layout(
        self,
        rng: np.random.Generator,
        scan: int,
        picks: list[int],
        drawn: list[Transform] | None = None,
    ) -> _Layout:
        """One view: a crop of `scan` with `picks` pasted by `drawn` transforms (or new draws)."""
        size = self.cfg.canvas
        full = self._background(scan)
        top = int(rng.integers(0, full.shape[0] - size + 1))
        left = int(rng.integers(0, full.shape[1] - size + 1))
        placed, pastes = [], []
        # Only alpha mode shows pixels outside the mask: its soft edge fades outward.
        halo = self.cfg.mode == "alpha"
        for j, i in enumerate(picks):
            seg = self.fg.segments[i]
            if drawn is None:
                t = draw_transform(rng, self.cfg, seg.mask.shape, seg.prescale)
            else:
                t = drawn[j]
            if halo:
                pixels, mask = warp(self._stacked[i], t)
                dx, dy, (h, w) = 0, 0, mask.shape
            else:
                pixels, mask, dx, dy, (h, w) = warp_tight(self._stacked[i], t)
            # Anywhere the whole box fits; a box larger than the canvas is cut on some side.
            u = rng.random(2)
            x = min(0, size - w) + int(u[0] * (abs(size - w) + 1))
            y = min(0, size - h) + int(u[1] * (abs(size - h) + 1))
            placed.append(Placed(pixels, mask, self._log_t[i], seg.cls, t.density, x + dx, y + dy))
            pastes.append(_Paste(seg, t, x, y))
        return _Layout(
            self.bg.names[scan],
            full[top : top + size, left : left + size],
            placed,
            boxes([p.mask for p in placed], [(p.x, p.y) for p in placed], size),
            pastes,
        )

    def _labels(self, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
        """(SxS uint8 index map, (n,) visible pixel counts) of instances pasted in order."""
        index = index_map([p.mask for p in layout.placed], layout.boxes, self.cfg.canvas)
        return index, visible_areas(index, layout.boxes)

    def _survivors(self, layouts: list[_Layout], labels: list[tuple]) -> list[int]:
        """Indices of the instances visible enough in every view (dropped ones leave both)."""
        ok = None
        for layout, (_, visible) in zip(layouts, labels, strict=True):
            total = np.array([np.count_nonzero(p.mask) for p in layout.placed])
            good = (
                (visible > 0)
                & (visible >= self.cfg.min_visible_pixels)
                & (visible >= self.cfg.min_visible_fraction * total)
            )
            ok = good if ok is None else ok & good
        return [int(i) for i in np.flatnonzero(ok)]

    def _view(self, layout: _Layout, index: np.ndarray, visible: np.ndarray) -> View:
        placed, cfg = layout.placed, self.cfg
        masks = full_masks([p.mask for p in placed], layout.boxes, cfg.canvas)
        ids = [p.cls for p in placed]
        sources = [
            {"image_id": p.segment.image_id, "annotation_id": p.segment.annotation_id}
            for p in layout.pastes
        ]
        transforms = [p.record() for p in layout.pastes]
        instances = instance_records(ids, masks, visible, sources, transforms)
        image = composite(layout.image, placed, cfg.mode, cfg.edge_sigma, layout.boxes)
        return View(layout.background, image, class_map(index, ids), instances)

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
