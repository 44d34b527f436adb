"""COCO instance-segmentation sets (PIDray layout): validated loading and mask decoding.

    ds = load_coco("pidray/annotations/xray_train.json", "pidray/train")
    for image in ds.images:                       # sorted by id
        masks = [decode_mask(a, image.height, image.width) for a in ds.annotations[image.id]]

Category ids in a JSON need not be contiguous; classes are numbered 1..C in the order the JSON lists
its categories (or by name against `class_names`, so every split of a set maps the same way).
Annotations that cannot be used are skipped and counted by reason, never silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from segloc.errors import UserError

IGNORE = 255  # class-map value for "not scored"; 0 is background, 1..C the classes


@dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoSet:
    json_path: Path
    image_dir: Path
    class_names: tuple[str, ...]  # class k (1-based) is class_names[k - 1]
    cat_to_class: dict[int, int]  # COCO category id -> 1..C
    images: tuple[ImageInfo, ...]  # sorted by id
    annotations: dict[int, list[dict[str, Any]]]  # image id -> usable annotations, file order
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def image_path(self, image: ImageInfo) -> Path:
        return self.image_dir / image.file_name


def load_coco(
    json_path: str | Path,
    image_dir: str | Path,
    class_names: tuple[str, ...] | None = None,
    keep_crowd: bool = False,
) -> CocoSet:
    json_path, image_dir = Path(json_path), Path(image_dir)
    data = _read_json(json_path)
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder not found (images of {json_path})")
    names, cat_to_class = _map_categories(json_path, data["categories"], class_names)
    images = _parse_images(json_path, data["images"])
    by_image: dict[int, list[dict[str, Any]]] = {img.id: [] for img in images}
    skipped: Counter = Counter()
    for i, ann in enumerate(data["annotations"]):
        reason = _check_annotation(json_path, i, ann, by_image, cat_to_class, keep_crowd)
        if reason:
            skipped[reason] += 1
        else:
            by_image[ann["image_id"]].append(ann)
    return CocoSet(json_path, image_dir, names, cat_to_class, images, by_image, skipped)


def decode_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """HxW bool mask of a polygon (one or several parts) or RLE (compressed or not) annotation.

    Polygon parts that run past the image edge are clipped by rasterisation; parts with fewer than
    three points are ignored.
    """
    segm = ann["segmentation"]
    if isinstance(segm, list):
        parts = [p for p in segm if len(p) >= 6]
        if not parts:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(bool)


def class_map(
    anns: list[dict[str, Any]], cat_to_class: dict[int, int], height: int, width: int
) -> np.ndarray:
    """HxW uint8 class map of one image's instances.

    Overlap rule: instances are painted largest first, so where two overlap the smaller one wins
    (in X-ray both are visible; this keeps small items like bullets from vanishing under a bag-sized
    neighbour). Ties keep file order.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    masks = [(decode_mask(a, height, width), cat_to_class[a["category_id"]]) for a in anns]
    for mask, cls in sorted(masks, key=lambda mc: -int(mc[0].sum())):
        out[mask] = cls
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: annotation file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read annotation file ({err})") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a COCO JSON object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: key '{key}' missing or not a list (COCO format expected)")
    return data


def _map_categories(
    path: Path, cats: list[Any], class_names: tuple[str, ...] | None
) -> tuple[tuple[str, ...], dict[int, int]]:
    try:
        pairs = [(int(c["id"]), str(c["name"])) for c in cats]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: every category needs an integer 'id' and a 'name'") from err
    if not pairs:
        raise UserError(f"{path}: 'categories' is empty")
    if len({cid for cid, _ in pairs}) != len(pairs):
        raise UserError(f"{path}: duplicate category ids in 'categories'")
    if class_names is None:
        class_names = tuple(name for _, name in pairs)
    index = {name: k + 1 for k, name in enumerate(class_names)}
    unknown = [name for _, name in pairs if name not in index]
    if unknown:
        raise UserError(f"{path}: category {unknown[0]!r} is not one of {list(class_names)}")
    return tuple(class_names), {cid: index[name] for cid, name in pairs}


def _parse_images(path: Path, images: list[Any]) -> tuple[ImageInfo, ...]:
    out = []
    for i, img in enumerate(images):
        try:
            info = ImageInfo(
                int(img["id"]), str(img["file_name"]), int(img["width"]), int(img["height"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"{path}: images[{i}] needs integer 'id', 'width', 'height' and a 'file_name'"
            ) from err
        if info.width <= 0 or info.height <= 0:
            raise UserError(f"{path}: images[{i}] (id {info.id}) has a non-positive size")
        out.append(info)
    if len({img.id for img in out}) != len(out):
        raise UserError(f"{path}: duplicate image ids in 'images'")
    return tuple(sorted(out, key=lambda im: im.id))


def _check_annotation(
    path: Path, i: int, ann: Any, by_image: dict, cat_to_class: dict, keep_crowd: bool
) -> str | None:
    """Reason to skip annotation `i`, None to keep it; `UserError` if it is malformed."""
    if not isinstance(ann, dict) or "segmentation" not in ann:
        raise UserError(f"{path}: annotations[{i}] has no 'segmentation'")
    if ann.get("image_id") not in by_image:
        raise UserError(
            f"{path}: annotations[{i}] refers to unknown image_id {ann.get('image_id')!r}"
        )
    if ann.get("category_id") not in cat_to_class:
        raise UserError(
            f"{path}: annotations[{i}] has unknown category_id {ann.get('category_id')!r}"
        )
    if ann.get("iscrowd", 0) and not keep_crowd:
        return "iscrowd"
    segm = ann["segmentation"]
    if isinstance(segm, list):
        if not all(isinstance(p, list) for p in segm):
            raise UserError(f"{path}: annotations[{i}] polygon parts must be lists of coordinates")
        if not any(len(p) >= 6 for p in segm):
            return "empty polygon"
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        pass
    else:
        raise UserError(f"{path}: annotations[{i}] segmentation is neither polygons nor RLE")
    if float(ann.get("area", 1) or 0) <= 0:
        return "zero area"
    return None
