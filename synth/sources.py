"""What the renderer pastes (foreground segments) and where (background scans).

    fg = load_foregrounds(data, cfg)          # decodes every labeled source image once
    bg = list_backgrounds(data.background)    # header check only; decode lazily
    scan = load_background(bg.path(0), canvas=160)

Foregrounds come from the labeled subset of a COCO instance-segmentation set (docs/design.md
§5.5): each usable instance becomes a `Segment` cropped to its mask's box. Backgrounds are a
folder of scans; in the SIXray layout (`N#####.jpg` negatives, `P#####.jpg` positives) positives
are left out by default, because they hold unlabeled items of the very classes being pasted.

Inputs that cannot be read are collected as `BadInput`s rather than raised one at a time, so the
user sees all of them in one message (and can choose to render without them).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segloc.coco import CocoSet, ImageInfo, decode_mask, load_coco
from segloc.config import BackgroundConfig, DataConfig, background_paths
from segloc.errors import UserError
from segloc.imageio import DEFAULT_MAX_PIXELS, open_image, read_rgb
from segloc.splits import labeled_subset
from synth.config import SynthConfig
from synth.transforms import resize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SIXRAY_NAME = re.compile(r"^[NP]\d+$")
# A ring with fewer pixels than this gives no trustworthy background level.
MIN_RING_PIXELS = 8


@dataclass(frozen=True)
class BadInput:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Segment:
    pixels: np.ndarray  # hxwx3 uint8 RGB: the source scan inside the mask's box
    mask: np.ndarray  # hxw bool
    level: np.ndarray  # (3,) float32: per-channel background level around the mask, 1..255
    cls: int  # 1..C
    image_id: int
    annotation_id: int
    prescale: float = 1.0  # size of `pixels` relative to the source scan (< 1: stored shrunk)


@dataclass(frozen=True)
class Foregrounds:
    classes: tuple[str, ...]  # class k (1-based) is classes[k - 1]
    segments: tuple[Segment, ...]
    bad: tuple[BadInput, ...]
    skipped: dict[str, int]  # annotations left out, by reason (iscrowd, zero area, ...)


@dataclass(frozen=True)
class ScanInfo:
    width: int
    height: int
    jpeg: bool  # 8-bit RGB or grey JPEG: OpenCV decodes it, at a reduced scale if asked


@dataclass(frozen=True)
class Backgrounds:
    folder: Path
    names: tuple[str, ...]  # file names inside `folder`, sorted
    infos: tuple[ScanInfo, ...]  # header of each, read once up front
    bad: tuple[BadInput, ...]
    excluded_positives: int

    def path(self, index: int) -> Path:
        return self.folder / self.names[index]


def load_foregrounds(data: DataConfig, cfg: SynthConfig) -> Foregrounds:
    coco = load_coco(data.foreground.annotations, data.foreground.images, keep_crowd=cfg.keep_crowd)
    keep = set(labeled_subset([im.id for im in coco.images], data.label_fraction, data.split_seed))
    images = [im for im in coco.images if im.id in keep and coco.annotations[im.id]]
    segments: list[Segment] = []
    bad: list[BadInput] = []
    skipped = Counter(coco.skipped)
    from tqdm import tqdm  # here, not at the top: render helpers import this module, draw no bar

    for image in tqdm(
        images, desc="foregrounds", unit="img", leave=False, disable=len(images) < 200
    ):
        try:
            cuts = _cut_image(coco, image, cfg.ring, skipped)
            # Stored at most twice the largest paste size: warps then work near canvas
            # resolution, and each worker holds less.
            segments.extend(shrink(seg, 2 * cfg.scale[1]) for seg in cuts)
        except UserError as err:
            bad.append(BadInput(str(coco.image_path(image)), _reason(err)))
    return Foregrounds(coco.class_names, tuple(segments), tuple(bad), dict(sorted(skipped.items())))


def _cut_image(coco: CocoSet, image: ImageInfo, ring: int, skipped: Counter) -> list[Segment]:
    path = coco.image_path(image)
    scan = read_rgb(path)
    if scan.shape[:2] != (image.height, image.width):
        raise UserError(
            f"{path}: image is {scan.shape[1]}x{scan.shape[0]}, the JSON says "
            f"{image.width}x{image.height}"
        )
    anns = coco.annotations[image.id]
    masks = [decode_mask(a, image.height, image.width) for a in anns]
    # Other annotated objects must not count as "background" when levelling a neighbour.
    objects = np.logical_or.reduce(masks)
    out = []
    for index, (ann, mask) in enumerate(zip(anns, masks, strict=True)):
        if not mask.any():
            skipped["empty mask"] += 1
            continue
        cls = coco.cat_to_class[ann["category_id"]]
        out.append(_cut(scan, mask, objects, ring, cls, image.id, int(ann.get("id", index))))
    return out


def _cut(
    scan: np.ndarray,
    mask: np.ndarray,
    objects: np.ndarray,
    ring: int,
    cls: int,
    image_id: int,
    ann_id: int,
) -> Segment:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    level = background_level(scan, mask, objects, (y0, y1, x0, x1), ring)
    return Segment(
        pixels=np.ascontiguousarray(scan[y0:y1, x0:x1]),
        mask=np.ascontiguousarray(mask[y0:y1, x0:x1]),
        level=level,
        cls=cls,
        image_id=image_id,
        annotation_id=ann_id,
    )


def shrink(seg: Segment, max_side: float) -> Segment:
    """`seg` area-resampled so its long side is at most `max_side` (the mask thresholded at 1/2)."""
    f = max_side / max(seg.mask.shape)
    if f >= 1:
        return seg
    size = (max(1, round(seg.mask.shape[1] * f)), max(1, round(seg.mask.shape[0] * f)))
    pixels, mask = resize(seg.pixels, seg.mask, size)
    mask = mask.view(bool)
    return dataclasses.replace(seg, pixels=pixels, mask=mask, prescale=seg.prescale * f)


def background_level(
    scan: np.ndarray, mask: np.ndarray, objects: np.ndarray, box: tuple[int, ...], ring: int
) -> np.ndarray:
    """(3,) per-channel median of the pixels in a ring just outside `mask`, skipping other objects.

    Dividing the cut-out by this level gives the object's own transmission (Beer-Lambert: the scan
    is T_bg * T_obj inside the mask). The ring widens when too few free pixels surround the object;
    failing that the level is 255 (air), i.e. the pixels are taken as the transmission itself.
    """
    height, width = mask.shape
    y0, y1, x0, x1 = box
    for r in (ring, 2 * ring, 4 * ring):
        ya, yb, xa, xb = max(0, y0 - r), min(height, y1 + r), max(0, x0 - r), min(width, x1 + r)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        grown = cv2.dilate(mask[ya:yb, xa:xb].astype(np.uint8), kernel).astype(bool)
        free = grown & ~objects[ya:yb, xa:xb]
        if free.sum() >= MIN_RING_PIXELS:
            level = np.median(scan[ya:yb, xa:xb][free], axis=0)
            return np.maximum(level, 1.0).astype(np.float32)
    return np.full(3, 255.0, dtype=np.float32)


def list_backgrounds(bg: BackgroundConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Backgrounds:
    folder, labels = background_paths(bg)
    if not folder.is_dir():
        raise UserError(f"{folder}: background folder not found (params data.background.images)")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise UserError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the background folder"
        )
    kept = names if bg.include_positives else _negatives(names, labels)
    bad, good = [], {}
    from tqdm import tqdm  # see load_foregrounds

    for name in tqdm(kept, desc="backgrounds", unit="img", leave=False, disable=len(kept) < 2000):
        try:
            good[name] = probe_scan(folder / name, max_pixels)
        except UserError as err:
            bad.append(BadInput(str(folder / name), _reason(err)))
    infos = tuple(good.values())
    return Backgrounds(folder, tuple(good), infos, tuple(bad), len(names) - len(kept))


def _negatives(names: list[str], labels: Path | None) -> list[str]:
    """Drop SIXray positives: by name in the SIXray layout, and by the label CSV when given."""
    stems = [Path(n).stem for n in names]
    sixray = all(SIXRAY_NAME.match(s) for s in stems)
    positive = read_positive_stems(labels) if labels is not None else set()
    return [
        n
        for n, s in zip(names, stems, strict=True)
        if not (sixray and s.startswith("P")) and s not in positive
    ]


def read_positive_stems(path: Path) -> set[str]:
    """Stems of the rows marked positive in a SIXray-style label CSV.

    Layout: a header row, the image name in the first column, one column per class; a row is
    positive when any class value is > 0 (SIXray marks absence with -1 or 0).
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise UserError(
            f"{path}: cannot read background label CSV ({err.strerror or err})"
        ) from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: background label CSV is not UTF-8 text") from err
    positive = set()
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            values = [float(v) for v in row[1:] if v.strip()]
        except ValueError as err:
            raise UserError(
                f"{path}: line {line}: expected an image name then numeric class labels, got {row}"
            ) from err
        if any(v > 0 for v in values):
            positive.add(Path(row[0].strip()).stem)
    return positive


def probe_scan(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ScanInfo:
    """Size and kind of a scan from its header alone; `UserError` naming the file if unusable."""
    with open_image(path, max_pixels) as img:
        (width, height), fmt, mode = img.size, img.format, img.mode
    return ScanInfo(width, height, fmt == "JPEG" and mode in ("RGB", "L"))


def load_background(path: Path, canvas: int, info: ScanInfo | None = None) -> np.ndarray:
    """HxWx3 uint8 BGR scan resized so its short side is `canvas` (the renderer crops a square)."""
    scan = decode_scan(path, canvas, info)
    height, width = scan.shape[:2]
    f = canvas / min(height, width)
    size = (max(canvas, round(width * f)), max(canvas, round(height * f)))
    # Area averaging only where bilinear would skip pixels (shrinking by more than 2x): it costs
    # ~7x more, and the decoder's DCT scaling has already done most of any large reduction.
    interp = cv2.INTER_AREA if f < 0.5 else cv2.INTER_LINEAR
    return cv2.resize(scan, size, interpolation=interp)


# libjpeg decodes at 1/2, 1/4 or 1/8 size for a fraction of the full cost.
_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
    (1, cv2.IMREAD_COLOR),
)


def decode_scan(path: Path, canvas: int, info: ScanInfo | None = None) -> np.ndarray:
    """HxWx3 uint8 scan in BGR order (OpenCV's, which the renderer works in), at least `canvas`
    px on its short side.

    8-bit JPEGs (SIXray's format) decode through OpenCV at the smallest 1/2^k scale that keeps the
    short side >= `canvas`; every other file goes through `read_rgb`, which handles all modes.
    Either way a file that cannot be read ends in a `UserError` naming it.
    """
    info = info or probe_scan(path)
    if not info.jpeg:
        return _bgr(read_rgb(path))
    flag = next(fl for f, fl in _REDUCED if min(info.width, info.height) // f >= canvas or f == 1)
    try:
        buf = np.fromfile(path, np.uint8)
    except OSError:
        return _bgr(read_rgb(path))  # raises the error that names the file
    # OpenCV fills a truncated JPEG with grey and only warns: such files (no end-of-image
    # marker last) go to PIL, which refuses them, or reads them if the marker is just not last.
    bgr = cv2.imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION) if _ends_jpeg(buf) else None
    return _bgr(read_rgb(path)) if bgr is None else bgr


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _ends_jpeg(buf: np.ndarray) -> bool:
    return buf.size >= 4 and buf[-2] == 0xFF and buf[-1] == 0xD9


def _reason(err: UserError) -> str:
    """The message of a file-naming `UserError` without the leading `path: `."""
    _, sep, rest = err.message.partition(": ")
    return rest if sep else err.message
