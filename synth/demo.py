"""Embedded demo data: a PIDray-like labeled set and a SIXray-like unlabeled set, simulated.

    synth demo-data --out data/demo --scale default --seed 0 --workers 2
    synth demo-data --out /tmp/demo --scale tiny --force      # a few seconds, for tests
    python -m synth.demo --out data/demo                      # the same command, without the group

PIDray and SIXray cannot be downloaded here, so the pipeline's default input is generated in their
layouts (scans are simulated by `synth.xray`):

    DIR/demo_data.json                      what was generated: scale, seed, counts
    DIR/pidray/annotations/xray_train.json  + DIR/pidray/train/*.jpg
    DIR/pidray/annotations/xray_test_{easy,hard,hidden}.json  + DIR/pidray/{easy,hard,hidden}/*.jpg
    DIR/sixray/JPEGImage/N#####.jpg         bags without threat items
    DIR/sixray/JPEGImage/P#####.jpg         a few bags holding SIXray threat classes
    DIR/sixray/ImageSet/train.csv           name,Gun,Knife,Wrench,Pliers,Scissors,Hammer (1 / -1)

COCO JSONs hold the 12 PIDray classes in PIDray's order, with category ids `2k + 1` (1, 3, ..., 23)
for the k-th class: deliberately not 1..12, so a reader that indexes classes by id instead of
mapping ids explicitly fails at once. Masks are polygons (one per connected part; holes joined to
their outline by a zero-width cut), or compressed RLE for about a fifth of the instances; `area`
and `bbox` are those of the decoded annotation. Test splits: `easy` scans hold exactly one item,
`hard` two or more, `hidden` items under dense clutter. SIXray CSV rows name the image stem
(`N00001`), as SIXray does.

Every image is drawn from `np.random.default_rng([seed, split_code, index])`, so the same seed and
scale give byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from segloc.atomic import atomic_dir
from segloc.errors import UserError
from synth import xray

log = logging.getLogger(__name__)

CATEGORY_IDS = {name: 2 * k + 1 for k, name in enumerate(xray.CLASSES)}
SIXRAY_CLASSES = ("Gun", "Knife", "Wrench", "Pliers", "Scissors", "Hammer")
JPEG_QUALITY = 90
RLE_SHARE = 0.2  # instances stored as compressed RLE, so readers meet both encodings
POLYGON_MIN_IOU = 0.97  # a polygon that would misstate the footprint more falls back to RLE
MANIFEST = "demo_data.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Scale:
    train: int  # labeled train scans
    test: int  # scans per test split (easy, hard, hidden)
    backgrounds: int  # SIXray-like scans, positives included
    positives: int  # of which hold threat items
    long_side: tuple[int, int]  # canvas long side range, px
    item_zoom: float = 1.0  # item length against the bag (xray.ITEM_LENGTH x this)
    clutter_share: float = 1.0  # clutter objects per bag (xray.CLUTTER_COUNT x this)


SCALES = {
    "tiny": Scale(train=12, test=4, backgrounds=24, positives=3, long_side=(160, 192)),
    "small": Scale(train=120, test=30, backgrounds=400, positives=16, long_side=(256, 320)),
    # Sized for learning on a CPU (docs/2026-11-30-learnable-default.md): scans at the
    # resolution the learners read, items larger against the bag, half the clutter.
    "default": Scale(
        train=500,
        test=100,
        backgrounds=2000,
        positives=60,
        long_side=(112, 144),
        item_zoom=1.6,
        clutter_share=0.3,
    ),
    # PIDray-like proportions at twice the resolution: for a GPU.
    "full": Scale(train=500, test=100, backgrounds=2000, positives=60, long_side=(256, 320)),
}


@dataclass(frozen=True)
class Split:
    name: str
    code: int  # second element of every image's seed
    folder: str  # image folder, relative to DIR
    annotations: str | None  # COCO JSON, relative to DIR (None: unlabeled)


SPLITS = (
    Split("train", 0, "pidray/train", "pidray/annotations/xray_train.json"),
    Split("easy", 1, "pidray/easy", "pidray/annotations/xray_test_easy.json"),
    Split("hard", 2, "pidray/hard", "pidray/annotations/xray_test_hard.json"),
    Split("hidden", 3, "pidray/hidden", "pidray/annotations/xray_test_hidden.json"),
    Split("sixray", 4, "sixray/JPEGImage", None),
)
SIXRAY_CSV = "sixray/ImageSet/train.csv"


@dataclass(frozen=True)
class Task:
    """One image to generate; everything about it follows from these fields."""

    split: Split
    index: int
    seed: int
    scale: Scale


@dataclass(frozen=True)
class Rendered:
    file_name: str
    jpeg: bytes
    width: int
    height: int
    annotations: list[dict[str, Any]]  # COCO annotations without ids (labeled splits)
    labels: tuple[str, ...]  # SIXray classes present (backgrounds)


# ---------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------


def render_image(task: Task) -> Rendered:
    rng = np.random.default_rng([task.seed, task.split.code, task.index])
    height, width = _canvas(rng, task.scale.long_side)
    items, clutter = _contents(task, rng)
    scan = xray.simulate_scan(
        rng, height, width, items, clutter, task.scale.item_zoom, task.scale.clutter_share
    )
    ok, buf = cv2.imencode(".jpg", scan.rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    anns = []
    if task.split.annotations is not None:
        for name, mask in zip(items, scan.masks, strict=True):
            ann = encode_instance(mask, prefer_rle=bool(rng.random() < RLE_SHARE))
            anns.append({"category_id": CATEGORY_IDS[name], "iscrowd": 0, **ann})
    labels = (
        tuple(sorted(set(items), key=SIXRAY_CLASSES.index)) if task.split.name == "sixray" else ()
    )
    return Rendered(file_name(task), buf.tobytes(), width, height, anns, labels)


def file_name(task: Task) -> str:
    if task.split.name == "sixray":
        pos = task.scale.positives
        return (
            f"P{task.index + 1:05d}.jpg" if task.index < pos else f"N{task.index - pos + 1:05d}.jpg"
        )
    prefix = "" if task.split.name == "train" else task.split.name
    return f"xray_{prefix}{task.index:05d}.jpg"


def _canvas(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    """(height, width): mostly landscape like a belt scanner's output, some portrait."""
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = int(round(long / rng.uniform(1.15, 1.6)))
    return (long, short) if rng.random() < 0.2 else (short, long)


def _contents(task: Task, rng: np.random.Generator) -> tuple[list[str], str]:
    """Item classes and clutter level of one scan, by split."""
    name = task.split.name
    if name == "sixray":
        if task.index >= task.scale.positives:
            return [], _pick(rng, ("light", "medium", "medium", "dense"))
        return _classes(rng, SIXRAY_CLASSES, int(rng.integers(1, 3))), "medium"
    if name == "easy":
        count, clutter = 1, _pick(rng, ("light", "medium"))
    elif name == "hard":
        count, clutter = int(rng.integers(2, 5)), "medium"
    elif name == "hidden":
        count, clutter = int(rng.integers(1, 4)), "dense"
    else:  # train: a mix of all of the above, like PIDray's
        count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
        clutter = _pick(rng, ("light", "medium", "medium", "dense"))
    return _classes(rng, xray.CLASSES, count), clutter


def _classes(rng: np.random.Generator, names: tuple[str, ...], count: int) -> list[str]:
    return [names[int(i)] for i in rng.integers(len(names), size=count)]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------------------------
# COCO masks
# ---------------------------------------------------------------------------------------------


def encode_instance(mask: np.ndarray, prefer_rle: bool = False) -> dict[str, Any]:
    """COCO `segmentation`, `area` and `bbox` of a footprint (H, W bool).

    Polygons unless `prefer_rle` (or they would misstate the footprint); else compressed RLE. `area` and `bbox` (xywh) are measured on
    the decoded annotation, so they agree with what any reader decodes.
    """
    h, w = mask.shape
    exact = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    segm: Any = None
    rle = exact
    # Simplified outlines first; unsimplified where that loses too much of a thin or tiny mask.
    for tolerance in () if prefer_rle else (0.7, 0.0):
        polygons = mask_polygons(mask, tolerance)
        if polygons:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
            if mask_utils.iou([rle], [exact], [0])[0, 0] >= POLYGON_MIN_IOU:
                segm = polygons
                break
    if segm is None:
        segm, rle = {"size": [h, w], "counts": exact["counts"].decode("ascii")}, exact
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {"segmentation": segm, "area": int(mask_utils.area(rle)), "bbox": bbox}


def mask_polygons(mask: np.ndarray, tolerance: float = 0.7) -> list[list[float]]:
    """COCO polygons of a mask (H, W bool): one per connected part, tracing pixel edges.

    Contours of the 2x upsampled mask, mapped back with (u + 0.5) / 2, run a quarter pixel inside
    the pixel edges, so rasterising the polygons gives back the mask's own pixels. A hole (the
    inside of a ring) joins its part's outline through a zero-width cut, which any even-odd
    rasteriser (pycocotools included) leaves empty. Vertices closer than `tolerance` / 2 px to
    the line through their neighbours are dropped (0.7: half the vertices, IoU > 0.99).
    """
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for i, contour in enumerate(contours):
        _, _, child, parent = hierarchy[0][i]
        if parent != -1:
            continue  # a hole: spliced into its part below
        ring = _simplify(contour, tolerance)
        while child != -1:
            hole = _simplify(contours[child], tolerance)
            if len(hole) >= 3:
                ring = _splice(ring, hole)
            child = hierarchy[0][child][0]
        if len(ring) >= 3:
            out.append([float(v) for v in (ring / 2.0 + 0.25).ravel()])
    return out


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """(n, 2) float64 vertices of a cv2 contour (upsampled px), simplified if tolerance > 0."""
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, tolerance, True)
    return contour.reshape(-1, 2).astype(np.float64)


def _splice(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One outline (n + m + 2, 2) going around `ring`, across to `hole`, around it and back."""
    d = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(axis=-1)  # (n, m)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return np.concatenate([ring[: i + 1], hole[j:], hole[: j + 1], ring[i:]])


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def tasks(scale: Scale, seed: int) -> list[Task]:
    counts = {"train": scale.train, "sixray": scale.backgrounds}
    return [
        Task(split, i, seed, scale)
        for split in SPLITS
        for i in range(counts.get(split.name, scale.test))
    ]


def main(out: str | os.PathLike, scale="default", seed=0, workers=0, force=False) -> Path:
    """Generate the demo data into `out` (created atomically); return its path."""
    spec = _check_args(scale, seed, workers)
    out = Path(out)
    _check_out(out, force)
    todo = tasks(spec, seed)
    workers = workers or os.cpu_count() or 1
    log.info("generating %s demo data (%d images, seed %d) into %s", scale, len(todo), seed, out)
    try:
        with atomic_dir(out) as tmp:
            os.chmod(tmp, 0o777 & ~_umask())  # a temporary folder starts private (0700)
            _write_all(tmp, todo, workers, {"scale": scale, "seed": seed})
    except OSError as err:
        raise UserError(f"{out}: cannot write the demo data ({err.strerror or err})") from err
    return out


def _check_args(scale: str, seed: int, workers: int) -> Scale:
    if scale not in SCALES:
        raise UserError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed {seed!r}: expected a non-negative integer")
    if not isinstance(workers, int) or workers < 0:
        raise UserError(f"--workers {workers!r}: expected a non-negative integer (0: one per CPU)")
    return SCALES[scale]


def _check_out(out: Path, force: bool) -> None:
    """Refuse outputs that cannot be written or would clobber something: a file, other data."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{out}: cannot create it, {parent} is a file, not a folder")
    if not os.access(parent if not out.exists() else out.absolute().parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot create it, no write permission in {parent}")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"{out}: folder exists and is not empty (pass --force to replace it)")
    if not (out / MANIFEST).is_file():
        raise UserError(f"{out}: --force replaces only earlier demo data ({MANIFEST} not found)")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(root: Path, todo: list[Task], workers: int, meta: dict[str, Any]) -> None:
    """Every file of the dataset under `root`, a fresh temporary folder: it becomes the output
    only once complete (`atomic_dir`), so files are written plainly, not one by one atomically."""
    images: dict[str, list[Rendered]] = {split.name: [] for split in SPLITS}
    files = [s.annotations for s in SPLITS if s.annotations] + [SIXRAY_CSV]
    for folder in sorted({s.folder for s in SPLITS} | {str(Path(f).parent) for f in files}):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for task, result in zip(todo, _render_all(todo, workers), strict=True):
        (root / task.split.folder / result.file_name).write_bytes(result.jpeg)
        images[task.split.name].append(result)
    for split in SPLITS:
        if split.annotations is not None:
            _write_json(root / split.annotations, coco_json(split, images[split.name]))
    (root / SIXRAY_CSV).write_text(sixray_csv(images["sixray"]), encoding="utf-8")
    counts = {name: len(rendered) for name, rendered in images.items()}
    _write_json(root / MANIFEST, {**meta, "counts": counts, "version": FORMAT_VERSION})


def _write_json(path: Path, obj: Any) -> None:
    # Sorted keys and no whitespace: the same data always gives the same (and compact) bytes.
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")


def _render_all(todo: list[Task], workers: int) -> Iterator[Rendered]:
    """Rendered images in task order, from `workers` processes."""
    bar = dict(total=len(todo), desc="demo-data", unit="img", mininterval=1.0)
    if workers == 1:
        yield from tqdm(map(render_image, todo), **bar)
        return
    # Each task carries its own seed, so the split of work between processes cannot change bytes.
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads or locks
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield from tqdm(pool.imap(render_image, todo, chunksize=8), **bar)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would oversubscribe


def coco_json(split: Split, rendered: Iterable[Rendered]) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, r in enumerate(rendered, start=1):
        images.append(
            {"id": image_id, "file_name": r.file_name, "width": r.width, "height": r.height}
        )
        for ann in r.annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [{"id": CATEGORY_IDS[n], "name": n, "supercategory": "item"} for n in xray.CLASSES]
    info = {"description": f"SegLoc demo data, PIDray-like, split {split.name} (simulated scans)"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def sixray_csv(rendered: Iterable[Rendered]) -> str:
    rows = [",".join(("name", *SIXRAY_CLASSES))]
    for r in sorted(rendered, key=lambda r: r.file_name):
        marks = ("1" if c in r.labels else "-1" for c in SIXRAY_CLASSES)
        rows.append(",".join((Path(r.file_name).stem, *marks)))
    return "\n".join(rows) + "\n"


@click.command(
    help="Generate the embedded demo data: a PIDray-like labeled set (COCO instance masks, "
    "train/easy/hard/hidden) and a SIXray-like unlabeled set, simulated dual-energy X-ray scans."
)
@click.option(
    "--out",
    required=True,
    metavar="DIR",
    type=click.Path(path_type=Path),
    help="Folder to create; gets pidray/ and sixray/ in the PIDray and SIXray layouts.",
)
@click.option(
    "--scale",
    default="default",
    show_default=True,
    help="Size: tiny (tests: 12 train, 4 per test split, 24 backgrounds), small (120/30/400), "
    "default (the pipeline's input: 500/100/2000, 112-144 px scans sized for CPU learning, "
    "about 15 s on 2 cores), full (500/100/2000 at 256-320 px, PIDray-like item sizes).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random draw.")
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=int,
    help="Worker processes (0: one per CPU). The output is byte-identical for any value.",
)
@click.option("--force", is_flag=True, help="Replace DIR if it holds earlier demo data.")
def command(out: Path, scale: str, seed: int, workers: int, force: bool) -> None:
    main(out, scale, seed, workers, force)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command()
