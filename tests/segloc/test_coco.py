import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segloc.coco import class_map, decode_mask, load_coco
from segloc.errors import UserError


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _write(tmp_path, data):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _dataset():
    square = np.zeros((20, 30), dtype=bool)
    square[2:6, 3:9] = True
    uncompressed = {"size": [20, 30], "counts": [0, 600]}  # whole image
    return {
        "images": [
            {"id": 9, "file_name": "b.jpg", "width": 30, "height": 20},
            {"id": 4, "file_name": "a.jpg", "width": 30, "height": 20},
        ],
        "categories": [{"id": 17, "name": "Gun"}, {"id": 3, "name": "Knife"}],
        "annotations": [
            # polygon with two parts, one running past the right edge (clipped)
            {
                "id": 1,
                "image_id": 4,
                "category_id": 3,
                "iscrowd": 0,
                "area": 10,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [25, 10, 40, 10, 40, 15, 25, 15]],
            },
            {
                "id": 2,
                "image_id": 4,
                "category_id": 17,
                "iscrowd": 0,
                "area": 24,
                "segmentation": _rle(square),
            },
            {
                "id": 3,
                "image_id": 9,
                "category_id": 17,
                "iscrowd": 0,
                "area": 600,
                "segmentation": uncompressed,
            },
            {
                "id": 4,
                "image_id": 9,
                "category_id": 3,
                "iscrowd": 1,
                "area": 5,
                "segmentation": [[0, 0, 2, 0, 2, 2]],
            },
            {
                "id": 5,
                "image_id": 9,
                "category_id": 3,
                "iscrowd": 0,
                "area": 0,
                "segmentation": [[0, 0, 2, 0, 2, 2]],
            },
            {
                "id": 6,
                "image_id": 9,
                "category_id": 3,
                "iscrowd": 0,
                "area": 3,
                "segmentation": [[1, 1, 2, 2]],
            },
        ],
    }


def test_load_maps_non_contiguous_ids_and_counts_skips(tmp_path):
    ds = load_coco(_write(tmp_path, _dataset()), tmp_path / "imgs")
    assert ds.class_names == ("Gun", "Knife")
    assert ds.cat_to_class == {17: 1, 3: 2}
    assert [im.id for im in ds.images] == [4, 9]
    assert [a["id"] for a in ds.annotations[4]] == [1, 2]
    assert [a["id"] for a in ds.annotations[9]] == [3]
    assert ds.skipped == {"iscrowd": 1, "zero area": 1, "empty polygon": 1}
    by_name = load_coco(tmp_path / "ann.json", tmp_path / "imgs", class_names=("Knife", "Gun"))
    assert by_name.cat_to_class == {17: 2, 3: 1}


def test_decode_polygon_rle_and_uncompressed(tmp_path):
    ds = load_coco(_write(tmp_path, _dataset()), tmp_path / "imgs")
    poly, rle = (decode_mask(a, 20, 30) for a in ds.annotations[4])
    assert poly.shape == (20, 30) and poly[1, 1] and poly[12, 29] and not poly[12, 20]
    assert rle.sum() == 24 and rle[2:6, 3:9].all()
    assert decode_mask(ds.annotations[9][0], 20, 30).all()


def test_class_map_smaller_instance_on_top(tmp_path):
    ds = load_coco(_write(tmp_path, _dataset()), tmp_path / "imgs")
    big = {"category_id": 17, "segmentation": {"size": [20, 30], "counts": [0, 600]}}
    small = ds.annotations[4][1]  # Gun square
    knife = ds.annotations[4][0]
    cmap = class_map([small, big, knife], ds.cat_to_class, 20, 30)
    assert cmap.dtype == np.uint8
    assert cmap[3, 5] == 1 and cmap[1, 1] == 2 and cmap[15, 15] == 1
    assert set(np.unique(cmap)) == {1, 2}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("categories"), "key 'categories' missing"),
        (
            lambda d: d["annotations"][0].update(image_id=99),
            r"annotations\[0\] refers to unknown image_id 99",
        ),
        (
            lambda d: d["annotations"][1].update(category_id=5),
            r"annotations\[1\] has unknown category_id 5",
        ),
        (lambda d: d["images"][0].pop("width"), r"images\[0\] needs integer"),
        (lambda d: d["annotations"][0].update(segmentation="x"), "neither polygons nor RLE"),
    ],
)
def test_bad_json_names_file_and_entry(tmp_path, mutate, message):
    data = _dataset()
    mutate(data)
    with pytest.raises(UserError, match=message):
        load_coco(_write(tmp_path, data), tmp_path / "imgs")


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="annotation file not found"):
        load_coco(tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        load_coco(tmp_path / "bad.json", tmp_path)
    path = _write(tmp_path, _dataset())
    with pytest.raises(UserError, match="image folder not found"):
        load_coco(path, tmp_path / "nowhere")
