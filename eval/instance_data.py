"""Training draws for Mask R-CNN: COCO instances -> (image tensor, detection target).

Indexed like `eval.data.TrainDraws`: draw k takes image `perm_e[k % n]` of epoch e = k // n and its
flip from `default_rng([seed, k])`, so batches depend on the seed alone, not on workers or ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from eval.data import LabeledSets, epoch_order
from segloc.coco import CocoSet, ImageInfo, decode_mask
from segloc.errors import UserError
from segloc.imageio import read_rgb


def instance_targets(coco: CocoSet, image: ImageInfo) -> tuple[np.ndarray, np.ndarray]:
    """NxHxW bool masks and N classes (1..C) of an image; instances empty on the image dropped."""
    anns = coco.annotations[image.id]
    masks = [decode_mask(a, image.height, image.width) for a in anns]
    keep = [i for i, m in enumerate(masks) if m.any()]
    if not keep:
        return np.zeros((0, image.height, image.width), bool), np.zeros(0, np.int64)
    labels = np.array([coco.cat_to_class[anns[i]["category_id"]] for i in keep], np.int64)
    return np.stack([masks[i] for i in keep]), labels


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """Nx4 float32 xyxy boxes enclosing NxHxW masks (x1/y1 exclusive, so every box has area)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32 in [0, 1] (the model normalises and resizes itself)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)


def read_scan(coco: CocoSet, image: ImageInfo) -> np.ndarray:
    rgb = read_rgb(coco.image_path(image))
    if rgb.shape[:2] != (image.height, image.width):  # masks are drawn at the JSON's size
        raise UserError(
            f"{coco.image_path(image)}: image is {rgb.shape[1]}x{rgb.shape[0]} but "
            f"{coco.json_path} says {image.width}x{image.height}"
        )
    return rgb


class InstanceDraws(Dataset):
    """Item k is training draw k (indexed as `eval.data.TrainDraws`): image tensor and target
    dict (boxes Nx4 xyxy, labels N, masks NxHxW uint8), horizontally flipped with p = 0.5."""

    def __init__(self, sets: LabeledSets, seed: int):
        self.coco, self.images, self.seed = sets.train, sets.labeled, seed

    def __len__(self) -> int:  # draws are unbounded; the sampler says which ones a rank takes
        return 2**62

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch, pos = divmod(k, len(self.images))
        image = self.images[epoch_order(len(self.images), self.seed, epoch)[pos]]
        rgb = read_scan(self.coco, image)
        masks, labels = instance_targets(self.coco, image)
        if np.random.default_rng([self.seed, k]).random() < 0.5:
            rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
        target = {
            "boxes": torch.from_numpy(boxes_of(masks)),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
        }
        return to_tensor(rgb), target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """Detection models take lists: images differ in size."""
    return [image for image, _ in batch], [target for _, target in batch]
