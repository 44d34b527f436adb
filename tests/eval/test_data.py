import json
from dataclasses import replace

import numpy as np
import pytest

from eval.data import (
    RankDraws,
    TrainDraws,
    load_example,
    load_sets,
    resolve_data,
    scale_crop_flip,
)
from segloc.config import CocoSplit, pidray_splits
from segloc.errors import UserError
from segloc.splits import labeled_subset
from tests.eval.conftest import CLASSES


def _sets(root, fraction=1.0):
    return load_sets(replace(resolve_data({}, root), label_fraction=fraction))


def test_joint_transform_keeps_labels_aligned_and_is_seeded():
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 4, size=(5, 7)), np.ones((10, 10))).astype(np.uint8)  # blocks
    rgb = np.repeat(mask[:, :, None] * 60, 3, axis=2).astype(np.uint8)  # image encodes its label
    a = scale_crop_flip(rgb, mask, np.random.default_rng([5, 1]), 64, 32, (0.5, 1.5))
    b = scale_crop_flip(rgb, mask, np.random.default_rng([5, 1]), 64, 32, (0.5, 1.5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for seed in range(10):
        img, lab = scale_crop_flip(rgb, mask, np.random.default_rng(seed), 64, 32, (0.5, 1.5))
        assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 255}  # NEAREST: no blended label values
        # Where the label is uniform around a pixel, the image still shows that label's value.
        inner = (
            (lab[1:-1, 1:-1] != 255)
            & (lab[1:-1, 1:-1] == lab[:-2, 1:-1])
            & (lab[1:-1, 1:-1] == lab[2:, 1:-1])
            & (lab[1:-1, 1:-1] == lab[1:-1, :-2])
            & (lab[1:-1, 1:-1] == lab[1:-1, 2:])
        )
        err = np.abs(img[1:-1, 1:-1, 0].astype(int) - lab[1:-1, 1:-1].astype(int) * 60)
        assert inner.any() and np.percentile(err[inner], 95) <= 2


def test_cat_max_ratio_redraws_crops_that_are_one_class():
    # A 128x128 scan of background with one 24x24 item: most 32-px crops hold background only.
    mask = np.zeros((128, 128), np.uint8)
    mask[96:120, 16:40] = 3
    rgb = np.repeat(mask[:, :, None] * 60, 3, axis=2).astype(np.uint8)
    kw = dict(base=128, crop=32, scale_range=(1.0, 1.0))
    plain = [scale_crop_flip(rgb, mask, np.random.default_rng(s), **kw)[1] for s in range(40)]
    picky = [
        scale_crop_flip(rgb, mask, np.random.default_rng(s), **kw, cat_max_ratio=0.75)[1]
        for s in range(40)
    ]
    with_item = [sum((lab == 3).any() for lab in labs) for labs in (plain, picky)]
    assert with_item[0] <= 8 and with_item[1] >= 20
    # The ratio only re-draws: with a ratio of 1 the draws are exactly the plain ones.
    same = scale_crop_flip(rgb, mask, np.random.default_rng(7), **kw, cat_max_ratio=1.0)
    np.testing.assert_array_equal(same[1], plain[7])


def test_small_images_are_padded_with_ignore():
    mask = np.ones((10, 20), np.uint8)
    rgb = np.zeros((10, 20, 3), np.uint8)
    img, lab = scale_crop_flip(rgb, mask, np.random.default_rng(0), 20, 32, (1.0, 1.0))
    assert lab.shape == (32, 32)
    assert (lab == 255).sum() == 32 * 32 - 10 * 20
    assert (img[lab == 255] == 255).all()  # padding is air


def test_rank_draws_split_each_global_batch():
    one = list(RankDraws(steps=3, batch=4))
    two = [list(RankDraws(steps=3, batch=2, rank=r, world=2)) for r in range(2)]
    for step in range(3):
        union = two[0][2 * step : 2 * step + 2] + two[1][2 * step : 2 * step + 2]
        assert sorted(union) == one[4 * step : 4 * step + 4]


def test_train_draws_cover_each_epoch_and_repeat(pidray):
    sets = _sets(pidray)
    draws = TrainDraws(sets, seed=3, base=64, crop=32, scale_range=(0.8, 1.2))
    x, y = draws[7]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    x2, y2 = TrainDraws(sets, seed=3, base=64, crop=32, scale_range=(0.8, 1.2))[7]
    assert (x == x2).all() and (y == y2).all()


def test_labeled_subset_is_the_shared_split(pidray):
    sets = _sets(pidray, fraction=0.5)
    ids = [im.id for im in sets.train.images]
    assert [im.id for im in sets.labeled] == labeled_subset(ids, 0.5, 0)
    assert len(sets.labeled) == 3
    assert sets.label_names == ("background", *CLASSES)


def test_test_splits_map_categories_by_name(pidray):
    before = _sets(pidray).test["easy"]
    _, expected = load_example(before, before.images[0])
    path = pidray / "annotations" / "xray_test_easy.json"
    doc = json.loads(path.read_text())
    # Same names, other ids and order: classes must still follow the train split.
    remap = {c["id"]: 100 + k for k, c in enumerate(doc["categories"])}
    doc["categories"] = [{"id": remap[c["id"]], "name": c["name"]} for c in doc["categories"]][::-1]
    for a in doc["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    path.write_text(json.dumps(doc))
    easy = _sets(pidray).test["easy"]
    _, truth = load_example(easy, easy.images[0])
    assert len(np.unique(truth)) > 1
    np.testing.assert_array_equal(truth, expected)


def test_missing_split_is_clear(pidray):
    (pidray / "annotations" / "xray_test_hidden.json").unlink()
    with pytest.raises(UserError, match="xray_test_hidden.json: annotation file not found"):
        _sets(pidray)


def test_images_are_checked_before_training(pidray):
    sets = _sets(pidray)
    path = pidray / "annotations" / "xray_train.json"
    doc = json.loads(path.read_text())
    doc["images"][0]["width"] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="image is 96x72 but .* says 97x72"):
        _sets(pidray)
    (pidray / "easy" / "easy_000.png").unlink()
    with pytest.raises(
        UserError, match=r"easy_000.png: no such image file \(listed in .*xray_test_easy.json\)"
    ):
        _sets(pidray)
    # Decoding checks the size again, whatever happened to the file since.
    with pytest.raises(UserError, match="image is 96x72 but .* says 97x72"):
        load_example(sets.train, replace(sets.train.images[0], width=97))


def test_resolve_data_from_params_and_root(pidray):
    # No data section: the embedded demo's paths, as params.yaml names them (read only later).
    demo = resolve_data({}, None)
    assert demo.train == CocoSplit(
        "data/demo/pidray/train", "data/demo/pidray/annotations/xray_train.json"
    )
    assert list(demo.test) == ["easy", "hard", "hidden"]
    assert demo.test["hard"].annotations == "data/demo/pidray/annotations/xray_test_hard.json"
    assert (demo.label_fraction, demo.split_seed) == (1.0, 0)
    with pytest.raises(UserError, match="params data.test: no test splits"):
        resolve_data({"data": {"test": {}}}, None)
    train, tests = pidray_splits(pidray)
    bare = resolve_data({}, pidray)  # --data alone: the root's splits, the default labeled split
    assert bare.train == train and bare.test == tests
    assert (bare.label_fraction, bare.split_seed) == (1.0, 0)
    params = {
        "data": {
            "foreground": {"annotations": train.annotations, "images": train.images},
            "background": {"images": "unused"},
            "label_fraction": 0.5,
            "split_seed": 4,
            "test": {"easy": vars(tests["easy"])},
        }
    }
    from_params = resolve_data(params, None)
    assert list(from_params.test) == ["easy"] and from_params.split_seed == 4
    from_root = resolve_data(params, pidray)  # --data replaces paths, keeps the split
    assert list(from_root.test) == ["easy", "hard", "hidden"]
    assert (from_root.label_fraction, from_root.split_seed) == (0.5, 4)
