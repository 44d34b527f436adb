"""Tiny PIDray-layout sets drawn with cv2: each class is a filled polygon of its own colour."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

CLASSES = ("Baton", "Pliers", "Hammer")
CATEGORY_IDS = (4, 9, 2)  # not contiguous, not sorted: mapping goes by list order
COLOURS = ((200, 80, 20), (30, 160, 40), (20, 40, 200))


def _instance(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Kx2 float polygon: a random quadrilateral inside the image."""
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    r = rng.uniform(0.12, 0.25) * min(height, width)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 4))
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def write_split(
    root: Path, name: str, json_name: str, n: int, seed: int, size: tuple[int, int] = (72, 96)
) -> None:
    height, width = size
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    (root / name).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        scan = np.full((height, width, 3), 235, np.uint8)
        for _ in range(2):
            cls = int(rng.integers(len(CLASSES)))
            poly = _instance(rng, height, width)
            cv2.fillPoly(scan, [poly.round().astype(np.int32)], COLOURS[cls])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": CATEGORY_IDS[cls],
                    "segmentation": [poly.ravel().round(1).tolist()],
                    "iscrowd": 0,
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                }
            )
        file_name = f"{name}_{i:03d}.png"
        cv2.imwrite(str(root / name / file_name), scan[:, :, ::-1])
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
    cats = [{"id": c, "name": n_} for c, n_ in zip(CATEGORY_IDS, CLASSES, strict=True)]
    (root / "annotations").mkdir(exist_ok=True)
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / json_name).write_text(json.dumps(doc))


def make_pidray(
    root: Path, n_train: int = 6, n_test: int = 2, size: tuple[int, int] = (72, 96), seed: int = 0
) -> Path:
    write_split(root, "train", "xray_train.json", n_train, seed, size)
    for split in ("easy", "hard", "hidden"):
        write_split(root, split, f"xray_test_{split}.json", n_test, seed + 1, size)
    return root


@pytest.fixture
def pidray(tmp_path: Path) -> Path:
    return make_pidray(tmp_path / "pidray")


@pytest.fixture
def tiny() -> list[str]:
    """Fast fine-tuning recipe for tests: a few steps on tiny crops, two repeats so std is
    defined. FCN with SGD (the GPU recipe's head and optimizer); the fused head with AdamW, the
    CPU default, has its own test."""
    return [
        "eval.protocol=finetune",
        "eval.finetune.head=fcn",
        "eval.finetune.optimizer=sgd",
        "eval.finetune.lr=0.02",
        "eval.finetune.steps=3",
        "eval.finetune.batch_size=2",
        "eval.finetune.crop_size=48",
        "eval.base_size=64",
        "eval.finetune.repeats=2",
        "eval.finetune.output_stride=32",
        "eval.samples_per_split=1",
        "eval.threads=1",  # one thread: tiny tensors, and no spinning threads on a busy machine
    ]


@pytest.fixture
def tiny_probe() -> list[str]:
    """Fast linear-probe recipe: a few epochs on 64-px inputs, two repeats so std is defined."""
    return [
        "eval.protocol=probe",
        "eval.probe.epochs=3",
        "eval.probe.batch_size=4",
        "eval.base_size=64",
        "eval.probe.repeats=2",
        "eval.samples_per_split=1",
        "eval.threads=1",
    ]


@pytest.fixture
def tiny_probe_mlp() -> list[str]:
    """Fast non-linear probe recipe: a narrow conv head, a few augmented epochs, two repeats."""
    return [
        "eval.protocol=probe_mlp",
        "eval.probe_mlp.epochs=3",
        "eval.probe_mlp.batch_size=4",
        "eval.probe_mlp.hidden=8",
        "eval.base_size=64",
        "eval.probe_mlp.repeats=2",
        "eval.samples_per_split=1",
        "eval.threads=1",
    ]
