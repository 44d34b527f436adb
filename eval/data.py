"""Labeled sets for fine-tuning and scoring: COCO instances -> (image, class map), joint transforms.

Training reads only the labeled subset of the train split (`segloc.splits.labeled_subset`, the same
images the renderer cut its segments from); test splits are read only to score
(docs/design.md §5.5).

Training samples are indexed by a global *draw number* k = step * global_batch + slot: draw k takes
image `perm_e[k % n]` of epoch e = k // n and its random scale/crop/flip from
`default_rng([seed, k])`. So the batches depend on the seed alone — not on the worker count, nor on
the number of ranks when the global batch stays the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segloc.coco import IGNORE, CocoSet, ImageInfo, class_map, load_coco
from segloc.config import CocoSplit, load_data_config, pidray_splits
from segloc.errors import UserError
from segloc.imageio import image_size, read_rgb
from segloc.splits import labeled_subset

# Inputs are normalised with ImageNet statistics, so an ImageNet init sees what it was trained on;
# pretraining normalises the same way.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
CROP_TRIES = 10  # crops drawn at most per sample when eval.cat_max_ratio < 1
PAD_VALUE = 255  # padding of too-small crops is "air" (full transmission) and ignored in the loss


@dataclass(frozen=True)
class EvalData:
    train: CocoSplit
    test: dict[str, CocoSplit]
    label_fraction: float = 1.0
    split_seed: int = 0


@dataclass(frozen=True)
class LabeledSets:
    train: CocoSet
    labeled: tuple[ImageInfo, ...]  # the labeled subset of train.images
    test: dict[str, CocoSet]

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the class-map values 0..C."""
        return ("background", *self.train.class_names)


def resolve_data(params: dict[str, Any], root: str | Path | None) -> EvalData:
    """Paths from the `data` section, or from a PIDray-layout `root` that replaces them."""
    if root is None:
        data = load_data_config(params)
        if not data.test:
            raise UserError("params data.test: no test splits to score (expected e.g. easy, hard)")
        return EvalData(data.foreground, dict(data.test), data.label_fraction, data.split_seed)
    train, tests = pidray_splits(root)
    data = load_data_config(params)
    return replace(
        EvalData(train, tests), label_fraction=data.label_fraction, split_seed=data.split_seed
    )


def load_sets(data: EvalData) -> LabeledSets:
    train = load_coco(data.train.annotations, data.train.images)
    if not train.images:
        raise UserError(f"{data.train.annotations}: no images in the train split")
    keep = set(labeled_subset([im.id for im in train.images], data.label_fraction, data.split_seed))
    labeled = tuple(im for im in train.images if im.id in keep)
    # Test splits map categories by name onto the train split's classes, so ids agree.
    test = {
        name: load_coco(split.annotations, split.images, class_names=train.class_names)
        for name, split in data.test.items()
    }
    for name, coco in test.items():
        if not coco.images:
            raise UserError(f"{coco.json_path}: test split '{name}' has no images")
        check_images(coco)
    check_images(train, labeled)
    return LabeledSets(train, labeled, test)


def check_images(coco: CocoSet, images: tuple[ImageInfo, ...] | None = None) -> None:
    """Open every image's header (no decoding): a missing, unreadable or mis-sized file is
    reported before any training time is spent, not after."""
    for image in coco.images if images is None else images:
        try:
            size = image_size(coco.image_path(image))
        except UserError as err:
            # Name the annotation file too: that is where the user fixes a wrong file_name.
            raise UserError(f"{err.message} (listed in {coco.json_path})") from err
        _check_size(coco, image, size)


def _check_size(coco: CocoSet, image: ImageInfo, size: tuple[int, int]) -> None:
    """Labels are drawn at the JSON's size: a file of another size would misalign them."""
    if size != (image.width, image.height):
        raise UserError(
            f"{coco.image_path(image)}: image is {size[0]}x{size[1]} but {coco.json_path} says "
            f"{image.width}x{image.height}"
        )


def load_example(coco: CocoSet, image: ImageInfo) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint8 scan and HxW uint8 class map of one image."""
    rgb = read_rgb(coco.image_path(image))
    _check_size(coco, image, (rgb.shape[1], rgb.shape[0]))  # the file may have changed since
    return rgb, class_map(coco.annotations[image.id], coco.cat_to_class, image.height, image.width)


def resize_long(array: np.ndarray, long_side: int, nearest: bool = False) -> np.ndarray:
    """Resize keeping the aspect ratio so the longer side is `long_side` (NEAREST for labels)."""
    h, w = array.shape[:2]
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR  # AREA: no aliasing when shrinking
    return cv2.resize(array, size, interpolation=interp)


def normalize(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32, ImageNet-normalised."""
    return torch.from_numpy(((rgb.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy())


def scale_crop_flip(
    rgb: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    base: int,
    crop: int,
    scale_range: tuple[float, float],
    cat_max_ratio: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint random scale (long side base*s), pad to crop (255 fill), crop, horizontal flip.

    With `cat_max_ratio` < 1 a crop in which one class covers more than that share of the labeled
    pixels is re-drawn (up to CROP_TRIES times, the last draw is kept): with items on a few per
    cent of the pixels, most plain crops would hold background only."""
    long_side = max(1, round(base * rng.uniform(*scale_range)))
    rgb, mask = resize_long(rgb, long_side), resize_long(mask, long_side, nearest=True)
    pad_h, pad_w = max(0, crop - rgb.shape[0]), max(0, crop - rgb.shape[1])
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=PAD_VALUE)
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
    for _ in range(CROP_TRIES):
        top = int(rng.integers(0, rgb.shape[0] - crop + 1))
        left = int(rng.integers(0, rgb.shape[1] - crop + 1))
        if (
            cat_max_ratio >= 1.0
            or _dominant_share(mask[top : top + crop, left : left + crop]) <= cat_max_ratio
        ):
            break
    rgb, mask = (
        rgb[top : top + crop, left : left + crop],
        mask[top : top + crop, left : left + crop],
    )
    if rng.random() < 0.5:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    return rgb, mask


def _dominant_share(mask: np.ndarray) -> float:
    """Share of the labeled (not ignored) pixels taken by the most frequent class."""
    counts = np.bincount(mask.ravel(), minlength=256)[:IGNORE]
    total = counts.sum()
    return float(counts.max() / total) if total else 1.0


class TrainDraws(Dataset):
    """Item k is training draw k (module docstring): a 3xcxc image tensor and cxc int64 labels."""

    def __init__(
        self,
        sets: LabeledSets,
        seed: int,
        base: int,
        crop: int,
        scale_range: tuple[float, float],
        cat_max_ratio: float = 1.0,
    ):
        self.coco, self.images = sets.train, sets.labeled
        self.seed, self.base, self.crop, self.scale_range = seed, base, crop, scale_range
        self.cat_max_ratio = cat_max_ratio

    def __len__(self) -> int:  # draws are unbounded; the sampler says which ones a rank takes
        return 2**62

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(k, len(self.images))
        image = self.images[epoch_order(len(self.images), self.seed, epoch)[pos]]
        rgb, mask = load_example(self.coco, image)
        rng = np.random.default_rng([self.seed, k])
        rgb, mask = scale_crop_flip(
            rgb, mask, rng, self.base, self.crop, self.scale_range, self.cat_max_ratio
        )
        return normalize(rgb), torch.from_numpy(mask.astype(np.int64))


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of n images for one epoch: a function of (seed, epoch) only, never of ranks."""
    return np.random.default_rng([seed, 0xE9, epoch]).permutation(n)


class RankDraws(Sampler[int]):
    """The draw numbers rank `rank` of `world` takes: its `batch`-long slice of each global batch."""

    def __init__(self, steps: int, batch: int, rank: int = 0, world: int = 1):
        self.steps, self.batch, self.rank, self.world = steps, batch, rank, world

    def __len__(self) -> int:
        return self.steps * self.batch

    def __iter__(self):
        for step in range(self.steps):
            first = (step * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)
