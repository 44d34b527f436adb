"""COCO AP/AR of instance predictions (pycocotools `COCOeval`, bbox and segm), as papers report them.

    gt = ground_truth(coco_set)                              # COCO dict of one test split
    results = detections_to_results(image.id, output, coco_set)  # per image, model output
    scores = coco_scores(gt, results)                        # {"segm_AP": 0.41, "bbox_AR100": ...}

Results carry the test JSON's own image and category ids, masks as compressed RLE with str counts,
so a results file written from them re-scores with any COCO tool against the original JSON.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segloc.coco import CocoSet, decode_mask

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats order for instance tasks (the 12-number summary).
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
REPORTED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
METRIC_KEYS = tuple(f"{t}_{s}" for t in IOU_TYPES for s in REPORTED)
MASK_THRESHOLD = 0.5  # Mask R-CNN's soft masks are binarised here, as torchvision's reference does


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """NxHxW bool/uint8 masks -> compressed RLEs with str counts (JSON-serialisable)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def ground_truth(coco: CocoSet) -> dict[str, Any]:
    """COCO dict of a split's usable annotations, each re-encoded from its decoded mask.

    Area and box are recomputed from the mask rather than trusted from the file: COCOeval bins
    AP by area and scores bbox AP against the box, and converted datasets often get both wrong.
    Instances whose mask is empty on the image are left out (no detector can find them).
    """
    anns = []
    for image in coco.images:
        for ann in coco.annotations[image.id]:
            mask = decode_mask(ann, image.height, image.width)
            if not mask.any():
                continue
            rle = encode_masks(mask[None])[0]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image.id,
                    "category_id": ann["category_id"],
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
    images = [
        {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
        for im in coco.images
    ]
    categories = [
        {"id": cat, "name": coco.class_names[cls - 1]} for cat, cls in coco.cat_to_class.items()
    ]
    return {"images": images, "annotations": anns, "categories": categories}


def class_to_category(coco: CocoSet) -> dict[int, int]:
    """Contiguous class 1..C -> the split's own COCO category id (first listed if a name repeats)."""
    out: dict[int, int] = {}
    for cat, cls in coco.cat_to_class.items():
        out.setdefault(cls, cat)
    return out


def detections_to_results(
    image_id: int, output: dict[str, torch.Tensor], cat_of: dict[int, int]
) -> list[dict[str, Any]]:
    """torchvision detection output of one image (boxes Nx4 xyxy, labels N, scores N, masks
    Nx1xHxW in [0, 1] at the image's size) -> COCO results; classes the split lacks are dropped."""
    boxes = output["boxes"].detach().float().cpu().numpy()
    labels = output["labels"].cpu().numpy()
    scores = output["scores"].detach().float().cpu().numpy()
    masks = (output["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
    results = []
    for box, label, score, rle in zip(boxes, labels, scores, encode_masks(masks), strict=True):
        if int(label) not in cat_of:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": cat_of[int(label)],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
                "segmentation": rle,
            }
        )
    return results


def coco_scores(gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    """`METRIC_KEYS` -> value in [0, 1]; None where COCOeval has nothing to score (its -1)."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        truth = COCO()
        truth.dataset = copy.deepcopy(gt)
        truth.createIndex()
        return {k: v for t in IOU_TYPES for k, v in _evaluate(truth, results, t).items()}


def _evaluate(truth: COCO, results: list[dict[str, Any]], iou_type: str) -> dict[str, float | None]:
    if not results:  # loadRes refuses an empty list; nothing found is AP 0 where there is truth
        value = 0.0 if truth.dataset["annotations"] else None
        return {f"{iou_type}_{s}": value for s in REPORTED}
    # loadRes takes each detection's area from its box when one is present: segm needs the mask
    # area (COCOeval bins small/medium/large by it), so each type sees only its own geometry.
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    dets = truth.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
    ev = COCOeval(truth, dets, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = dict(zip(STAT_NAMES, ev.stats.tolist(), strict=True))
    return {f"{iou_type}_{s}": (stats[s] if stats[s] >= 0 else None) for s in REPORTED}
