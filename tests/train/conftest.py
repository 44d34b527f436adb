"""Tiny shards in schema v1, written the way `synth render` writes them, for the train tests.

Each sample pastes 1-3 coloured ellipses/rectangles (one class each) on two noisy light
backgrounds at independent positions, so instance i of v0 and v1 is the same object.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

CLASSES = ["Baton", "Pliers", "Hammer"]
# Per-class pseudo-colours (RGB), so classes are visually separable.
COLOURS = [(230, 140, 40), (40, 160, 70), (40, 70, 200)]


def _object_mask(rng: np.random.Generator, canvas: int, shape: int) -> np.ndarray:
    mask = np.zeros((canvas, canvas), np.uint8)
    size = int(rng.integers(canvas // 6, canvas // 3))
    cx, cy = (int(v) for v in rng.integers(size // 2, canvas - size // 2, size=2))
    if shape == 0:
        cv2.ellipse(
            mask, (cx, cy), (size // 2, size // 4 + 2), float(rng.uniform(0, 180)), 0, 360, 1, -1
        )
    else:
        cv2.rectangle(
            mask, (cx - size // 2, cy - size // 3), (cx + size // 2, cy + size // 3), 1, -1
        )
    return mask


def _render_view(rng: np.random.Generator, canvas: int, classes: list[int], shapes: list[int]):
    img = np.clip(rng.normal(225, 12, (canvas, canvas, 3)), 0, 255).astype(np.uint8)
    seg = np.zeros((canvas, canvas), np.uint8)
    instances = []
    for i, (cls, shape) in enumerate(zip(classes, shapes, strict=True)):
        mask = _object_mask(rng, canvas, shape)
        img[mask > 0] = COLOURS[(cls - 1) % len(COLOURS)]
        seg[mask > 0] = cls  # later instances are on top
        rle = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        instances.append(
            {
                "id": i,
                "class": cls,
                "bbox": [x, y, w, h],
                "area": int(mask.sum()),
                "rle": {"size": [canvas, canvas], "counts": rle["counts"].decode("ascii")},
                "source": {"image_id": 0, "annotation_id": i},
                "transform": {
                    "scale": 1.0,
                    "angle": 0.0,
                    "flip": False,
                    "density": 1.0,
                    "x": 0,
                    "y": 0,
                },
            }
        )
    for inst in instances:
        inst["visible_area"] = int((seg == inst["class"]).sum())
    return img, seg, instances


def make_sample(index: int, canvas: int, seed: int, num_classes: int) -> dict[str, bytes]:
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, 4))
    classes = [int(c) for c in rng.integers(1, num_classes + 1, size=n)]
    shapes = [int(s) for s in rng.integers(0, 2, size=n)]
    key = f"s{index:08d}"
    members, views = {}, []
    for v in range(2):
        img, seg, instances = _render_view(rng, canvas, classes, shapes)
        members[f"{key}.v{v}.jpg"] = cv2.imencode(
            ".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]
        )[1].tobytes()
        members[f"{key}.v{v}.seg.png"] = cv2.imencode(
            ".png", seg, [cv2.IMWRITE_PNG_COMPRESSION, 1]
        )[1].tobytes()
        views.append(
            {
                "background": f"N{index:05d}.jpg",
                "height": canvas,
                "width": canvas,
                "instances": instances,
            }
        )
    meta = {
        "schema": 1,
        "key": key,
        "index": index,
        "classes": CLASSES[:num_classes],
        "views": views,
    }
    members[f"{key}.json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return members


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(members[name]), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(members[name]))


def write_shards(
    root: Path,
    num_shards: int = 2,
    per_shard: int = 8,
    canvas: int = 64,
    seed: int = 0,
    num_classes: int = 3,
    schema: int = 1,
) -> Path:
    """A schema-v1 shard folder (train-000000.tar, ..., manifest.json) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(num_shards):
        members = {}
        for i in range(s * per_shard, (s + 1) * per_shard):
            members.update(make_sample(i, canvas, seed, num_classes))
        name = f"train-{s:06d}.tar"
        write_tar(root / name, members)
        data = (root / name).read_bytes()
        shards.append(
            {
                "name": name,
                "samples": per_shard,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    manifest = {
        "schema": schema,
        "split": "train",
        "num_shards": num_shards,
        "samples_per_shard": per_shard,
        "num_samples": num_shards * per_shard,
        "canvas": canvas,
        "classes": CLASSES[:num_classes],
        "seed": seed,
        "params": {},
        "shards": shards,
        "instances_per_class": {},
        "skipped_inputs": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2))
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and OpenMP threads spin badly on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shard_writer() -> SimpleNamespace:
    """The writer functions, for tests that build odd shards (fixtures avoid importing conftest)."""
    return SimpleNamespace(write_shards=write_shards, make_sample=make_sample, write_tar=write_tar)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 shards x 8 samples, 64 px canvas, 3 classes; shared read-only by the session."""
    return write_shards(tmp_path_factory.mktemp("shards"))
