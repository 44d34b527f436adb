"""Benchmark of the demo data generator, and the contact sheet in docs/.

    python bench/demo_data.py                               # default scale, --workers 1 and 2
    python bench/demo_data.py --scale small --workers 1 --workers 2
    python bench/demo_data.py --sheet docs/demo_data.png    # only draw the contact sheet

Prints images/s for each worker count, the speed-up of 2 workers over 1, and the generator's rate
against a codec floor measured in the same run: JPEG-encoding the very images it wrote, alone and
single-threaded (the least any generator writing those JPEGs must spend). Also checks that every
worker count wrote byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from segloc.coco import decode_mask  # noqa: E402
from synth import demo, xray  # noqa: E402

# One colour per class (PIDray order), picked to stand out against orange, green and blue.
CLASS_COLOURS = (
    (255, 0, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (255, 128, 192),
    (128, 0, 255),
    (255, 96, 0),
    (0, 128, 255),
    (160, 255, 128),
    (255, 255, 255),
    (170, 170, 255),
)


def generate(out: Path, scale: str, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process and its workers) to generate `scale` into `out`."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    demo.main(out, scale=scale, seed=0, workers=workers, force=True)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    # Children count once reaped: the worker pool is joined before `demo.main` returns. CPU time
    # is what to compare on a shared machine, where wall time also measures the neighbours.
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def codec_floor(root: Path) -> tuple[float, int]:
    """Seconds to JPEG-encode every image under `root` again (decoded first, untimed), and count."""
    images = [cv2.imread(str(p)) for p in sorted(root.rglob("*.jpg"))]
    params = [cv2.IMWRITE_JPEG_QUALITY, demo.JPEG_QUALITY]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        start = time.perf_counter()
        for img in images:
            cv2.imencode(".jpg", img, params)
        return time.perf_counter() - start, len(images)
    finally:
        cv2.setNumThreads(threads)


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def benchmark(scale: str, worker_counts: tuple[int, ...]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for w in worker_counts:
            out = Path(tmp) / f"w{w}"
            seconds, cpu = generate(out, scale, w)
            runs[w] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2)}
            runs[w]["digest"] = tree_digest(out)
        floor_s, n = codec_floor(out)
    for run in runs.values():
        run["images_per_s"] = round(n / run["seconds"], 1)
        run["images_per_cpu_s"] = round(n / run["cpu_seconds"], 1)
        run["rate_vs_codec_floor"] = round(floor_s / run["seconds"], 4)
    report = {"scale": scale, "images": n, "codec_floor_images_per_s": round(n / floor_s, 1)}
    report["load_average_1min"] = round(os.getloadavg()[0], 2)  # > cores: timings are shared
    report["runs"] = {
        str(w): {k: v for k, v in r.items() if k != "digest"} for w, r in runs.items()
    }
    report["identical_across_workers"] = len({r["digest"] for r in runs.values()}) == 1
    if 1 in runs and 2 in runs:
        report["speedup_2_over_1"] = round(runs[1]["seconds"] / runs[2]["seconds"], 2)
    return report


# ---------------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------------

SHEET_ROWS = (
    ("train", "train"),
    ("easy", "test easy: one item"),
    ("hard", "test hard: two or more"),
    ("hidden", "test hidden: dense clutter"),
    ("sixray", "SIXray-like backgrounds"),
)


def sheet_tiles(seed: int, per_row: int = 4) -> list[list[np.ndarray]]:
    """RGB tiles with class-coloured outlines, as `synth demo-data --scale default` draws them."""
    scale = demo.SCALES["default"]
    splits = {s.name: s for s in demo.SPLITS}
    rows = []
    for name, _ in SHEET_ROWS:
        first = scale.positives - 1 if name == "sixray" else 0  # one positive, then negatives
        tasks = [demo.Task(splits[name], first + i, seed, scale) for i in range(per_row)]
        rows.append([_outlined(demo.render_image(t)) for t in tasks])
    return rows


def _outlined(r: demo.Rendered) -> np.ndarray:
    """The image at 2x (outlines stay thin next to the content) with its instance outlines."""
    img = cv2.imdecode(np.frombuffer(r.jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    img = np.ascontiguousarray(cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
    ids = {cid: k for k, cid in enumerate(demo.CATEGORY_IDS.values())}
    for ann in r.annotations:
        mask = decode_mask(ann, r.height, r.width).astype(np.uint8)
        mask = cv2.resize(mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, (0, 0, 0), 4)  # dark rim: visible on any colour
        cv2.drawContours(img, contours, -1, CLASS_COLOURS[ids[ann["category_id"]]], 2)
    return img


def contact_sheet(path: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sheet_tiles(seed)
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(16, 3.4 * len(rows)), dpi=80)
    for (_, title), tiles, ax_row in zip(SHEET_ROWS, rows, axes, strict=True):
        for tile, ax in zip(tiles, ax_row, strict=True):
            ax.imshow(tile, interpolation="lanczos")
            ax.set_axis_off()
        ax_row[0].set_title(title, loc="left", fontsize=13)
    pairs = zip(xray.CLASSES, CLASS_COLOURS, strict=True)
    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="black", label=n) for n, c in pairs]
    fig.legend(handles=handles, loc="lower center", ncol=12, fontsize=10, frameon=False)
    fig.suptitle(
        "Demo data: simulated dual-energy X-ray scans, instance outlines by class", fontsize=15
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[:, :, :3]
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    _palette_image(rgb).save(path, optimize=True)


def _palette_image(rgb: np.ndarray) -> Image.Image:
    """256 colours without dithering (a third of a full-colour PNG's bytes): 238 picked from the
    image, plus black, white and the class colours, kept exact so outlines keep their hue."""
    picked = Image.fromarray(rgb).quantize(238, dither=Image.Dither.NONE).getpalette()[: 238 * 3]
    fixed = [(0, 0, 0), (255, 255, 255), *CLASS_COLOURS]
    palette = np.concatenate([np.reshape(picked, (-1, 3)), fixed]).astype(np.int32)  # (256, 3)
    # Nearest palette entry of each distinct colour (PIL's own mapping is only approximate).
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(keys.ravel(), return_inverse=True)
    colours = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    nearest = np.concatenate(
        [
            ((part[:, None, :] - palette[None, :, :]) ** 2).sum(axis=-1).argmin(axis=1)
            for part in np.array_split(colours, max(1, len(colours) // 4096))
        ]
    )
    img = Image.fromarray(nearest[inverse].reshape(keys.shape).astype(np.uint8), mode="P")
    img.putpalette(palette.astype(np.uint8).ravel().tolist())
    return img


@click.command()
@click.option("--scale", default="default", show_default=True, help="tiny, small or default.")
@click.option(
    "--workers",
    "worker_counts",
    multiple=True,
    type=int,
    default=(1, 2),
    show_default=True,
    help="Worker counts to time (repeatable).",
)
@click.option(
    "--sheet", type=click.Path(path_type=Path), help="Only write the contact sheet PNG here."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the contact sheet's scans.")
def main(scale: str, worker_counts: tuple[int, ...], sheet: Path | None, seed: int) -> None:
    if sheet is not None:
        contact_sheet(sheet, seed)
        print(f"wrote {sheet}")
        return
    print(json.dumps(benchmark(scale, tuple(worker_counts)), indent=2))


if __name__ == "__main__":
    main()
