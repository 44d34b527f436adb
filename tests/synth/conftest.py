"""A tiny PIDray-/SIXray-shaped input set built in tmp_path, covering the awkward cases.

Foregrounds: non-contiguous category ids listed out of order, polygons, compressed and
uncompressed RLE, an iscrowd and a zero-area annotation, and source scans stored as RGB, 16-bit
grey, palette, RGBA and 8-bit grey JPEG. Backgrounds: SIXray names, one positive by name and one
by the label CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 7, "name": "Knife"}, {"id": 3, "name": "Gun"}, {"id": 12, "name": "Lighter"}]
CLASSES = ["Knife", "Gun", "Lighter"]

SYNTH = {
    "seed": 3,
    "canvas": 48,
    "num_shards": 4,
    "samples_per_shard": 3,
    "segments_per_sample": [1, 3],
    "scale": [14.0, 30.0],
    "min_visible_pixels": 4,
    "min_visible_fraction": 0.2,
    "background_cache_mb": 1,
}


def _scan(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Bright clutter with dark objects: HxW float in 0..255."""
    img = 200.0 + 20.0 * rng.random((h, w))
    img[h // 4 : h // 2, w // 5 : w // 2] *= 0.4
    img[h // 2 : h - 4, w // 2 : w - 6] *= 0.6
    return img


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    if not compressed:
        flat = mask.T.ravel()  # column-major runs, the first one of zeros
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        return {"size": list(mask.shape), "counts": [0, *runs] if flat[0] else runs}
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _images(rng: np.random.Generator, folder: Path) -> list[dict]:
    folder.mkdir(parents=True)
    grey = _scan(rng, 48, 56)
    rgb = np.stack([_scan(rng, 64, 64)] * 3, axis=2) * [1.0, 0.9, 0.7]
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "a.png")
    Image.fromarray((grey * 257).astype(np.uint16)).save(folder / "b.png")  # 16-bit grey
    Image.fromarray(_scan(rng, 40, 40).astype(np.uint8)).convert("P").save(folder / "c.png")
    rgba = np.dstack([rgb[:50, :60].astype(np.uint8), np.full((50, 60), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "d.png")
    Image.fromarray(_scan(rng, 44, 52).astype(np.uint8)).save(folder / "e.jpg")
    sizes = {
        "a.png": (64, 64),
        "b.png": (56, 48),
        "c.png": (40, 40),
        "d.png": (60, 50),
        "e.jpg": (52, 44),
    }
    return [
        {"id": 10 * (i + 1), "file_name": n, "width": w, "height": h}
        for i, (n, (w, h)) in enumerate(sizes.items())
    ]


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _annotations() -> list[dict]:
    def ann(i, image, cat, segm, **extra):
        return {
            "id": i,
            "image_id": image,
            "category_id": cat,
            "iscrowd": 0,
            "area": 50,
            "segmentation": segm,
            **extra,
        }

    return [
        ann(1, 10, 7, [[12, 16, 32, 16, 32, 32, 22, 36, 12, 32]]),  # polygon
        ann(2, 10, 3, _rle(_box(64, 64, 32, 60, 32, 58))),  # compressed RLE
        ann(3, 20, 12, _rle(_box(48, 56, 12, 24, 11, 28), compressed=False)),  # uncompressed RLE
        ann(4, 20, 7, [[0, 0, 10, 0, 10, 10]], iscrowd=1),  # skipped: crowd
        ann(5, 30, 7, [[8, 10, 20, 10, 20, 20, 8, 20], [30, 30, 50, 30, 50, 45]]),  # past the edge
        ann(6, 30, 3, [[1, 1, 3, 1, 3, 3]], area=0),  # skipped: zero area
        ann(7, 40, 3, [[10, 12, 30, 12, 30, 25, 10, 25]]),
        ann(8, 50, 12, [[10, 11, 26, 11, 26, 22, 10, 22]]),
    ]


def _backgrounds(rng: np.random.Generator, root: Path) -> None:
    folder = root / "JPEGImage"
    folder.mkdir(parents=True)
    shapes = {
        "N00001": (60, 80),
        "N00002": (90, 60),
        "N00003": (48, 48),
        "N00004": (70, 70),
        "N00005": (60, 60),
        "P00001": (60, 60),
    }
    for name, (h, w) in shapes.items():
        img = np.stack([_scan(rng, h, w)] * 3, axis=2) * [0.8, 0.9, 1.0]
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{name}.jpg", quality=95)
    (root / "ImageSet").mkdir()
    (root / "ImageSet" / "train.csv").write_text(
        "name,Gun,Knife\nN00001,-1,-1\nN00002,-1,-1\nN00005,1,-1\nP00001,1,1\n"
    )


def make_tiny_data(root: Path, synth: dict | None = None) -> Path:
    """Write the input set and a params.yaml under `root`; returns the params path."""
    rng = np.random.default_rng(0)
    fg = root / "pidray"
    images = _images(rng, fg / "train")
    coco = {"images": images, "annotations": _annotations(), "categories": CATEGORIES}
    (fg / "annotations").mkdir()
    (fg / "annotations" / "xray_train.json").write_text(json.dumps(coco))
    _backgrounds(rng, root / "sixray")
    params = {
        "data": {
            "foreground": {
                "annotations": str(fg / "annotations" / "xray_train.json"),
                "images": str(fg / "train"),
            },
            "background": {
                "images": str(root / "sixray" / "JPEGImage"),
                "labels": str(root / "sixray" / "ImageSet" / "train.csv"),
            },
        },
        "synth": {**SYNTH, **(synth or {})},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    return make_tiny_data(tmp_path / "in")
