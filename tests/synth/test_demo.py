"""Demo data generator: COCO and SIXray layouts, masks that agree with their boxes and areas,
byte-identical output for any worker count, and CLI errors that leave nothing behind."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils

from segloc.atomic import TMP_PREFIX
from synth import demo, xray
from synth.cli import main as synth_cli

TINY = demo.SCALES["tiny"]
LABELED = [s for s in demo.SPLITS if s.annotations is not None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    demo.main(out, scale="tiny", seed=0, workers=1)
    return out


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _decode(ann: dict, h: int, w: int) -> np.ndarray:
    """pycocotools' own decoding (what COCO.annToMask does), independent of segloc.coco."""
    segm = ann["segmentation"]
    rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
    return mask_utils.decode(rle).astype(bool)


def _load(root: Path, split: demo.Split) -> dict:
    return json.loads((root / split.annotations).read_text())


# ---------------------------------------------------------------------------------------------
# PIDray-like COCO sets
# ---------------------------------------------------------------------------------------------


def test_images_exist_with_their_declared_sizes(tiny):
    for split in LABELED:
        data = _load(tiny, split)
        expected = TINY.train if split.name == "train" else TINY.test
        assert len(data["images"]) == expected
        names = sorted(p.name for p in (tiny / split.folder).iterdir())
        assert names == sorted(im["file_name"] for im in data["images"])
        for im in data["images"]:
            img = cv2.imread(str(tiny / split.folder / im["file_name"]))
            assert img.shape == (im["height"], im["width"], 3)
            assert max(img.shape[:2]) in range(TINY.long_side[0], TINY.long_side[1] + 1)


def test_categories_are_pidray_classes_with_non_contiguous_ids(tiny):
    for split in LABELED:
        cats = _load(tiny, split)["categories"]
        assert [c["name"] for c in cats] == list(xray.CLASSES)
        ids = [c["id"] for c in cats]
        assert len(set(ids)) == 12 and ids != list(range(1, 13))


def test_every_annotation_decodes_and_agrees_with_bbox_and_area(tiny):
    kinds = set()
    for split in LABELED:
        data = _load(tiny, split)
        images = {im["id"]: im for im in data["images"]}
        ids = {c["id"] for c in data["categories"]}
        for ann in data["annotations"]:
            im = images[ann["image_id"]]
            mask = _decode(ann, im["height"], im["width"])
            assert mask.shape == (im["height"], im["width"])
            assert mask.any() and ann["category_id"] in ids and ann["iscrowd"] == 0
            assert ann["area"] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert np.allclose(ann["bbox"], tight, atol=1)
            kinds.add("polygon" if isinstance(ann["segmentation"], list) else "rle")
            if kinds == {"rle"}:
                assert isinstance(ann["segmentation"]["counts"], str)  # compressed
    assert kinds == {"polygon", "rle"}


def test_item_counts_per_split(tiny):
    for split in LABELED:
        data = _load(tiny, split)
        per_image = {im["id"]: 0 for im in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]] += 1
        counts = list(per_image.values())
        assert min(counts) >= 1
        if split.name == "easy":
            assert set(counts) == {1}
        if split.name == "hard":
            assert min(counts) >= 2


# ---------------------------------------------------------------------------------------------
# SIXray-like backgrounds
# ---------------------------------------------------------------------------------------------


def test_sixray_layout_and_labels(tiny):
    names = sorted(p.name for p in (tiny / "sixray/JPEGImage").iterdir())
    assert len(names) == TINY.backgrounds
    assert all(re.fullmatch(r"[NP]\d{5}\.jpg", n) for n in names)
    assert sum(n.startswith("P") for n in names) == TINY.positives
    with (tiny / demo.SIXRAY_CSV).open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "Gun", "Knife", "Wrench", "Pliers", "Scissors", "Hammer"]
    assert sorted(r[0] + ".jpg" for r in rows[1:]) == names
    for name, *marks in rows[1:]:
        assert set(marks) <= {"1", "-1"}
        assert ("1" in marks) == name.startswith("P")


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    again = demo.main(tmp_path / "w2", scale="tiny", seed=0, workers=2)
    assert _digests(again) == _digests(tiny)


def test_another_seed_gives_other_images(tmp_path):
    a = demo.render_image(demo.Task(demo.SPLITS[0], 0, 1, TINY))
    b = demo.render_image(demo.Task(demo.SPLITS[0], 0, 2, TINY))
    assert a.jpeg != b.jpeg


def test_force_replaces_earlier_demo_data(tiny, tmp_path):
    out = tmp_path / "data"
    (out / "pidray").mkdir(parents=True)
    (out / "pidray" / "stale.jpg").write_bytes(b"old")
    (out / demo.MANIFEST).write_text("{}")
    demo.main(out, scale="tiny", seed=0, workers=1, force=True)
    assert _digests(out) == _digests(tiny)


# ---------------------------------------------------------------------------------------------
# Masks to COCO polygons
# ---------------------------------------------------------------------------------------------


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Rings, bars and blobs: several parts, holes, thin strokes, shapes touching the border."""
    m = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        r = int(rng.integers(3, 20))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(m, c, r, 1, int(rng.integers(1, 5)))  # ring: a hole
        elif kind == 1:
            end = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(m, c, end, 1, int(rng.integers(1, 4)))
        else:
            cv2.ellipse(m, c, (r, r // 2 + 1), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def test_polygons_reproduce_masks_with_holes_and_parts():
    rng = np.random.default_rng(0)
    for _ in range(60):
        mask = _random_mask(rng, 60, 80)
        if not mask.any():
            continue
        exact = _decode({"segmentation": demo.mask_polygons(mask, tolerance=0)}, 60, 80)
        assert (exact == mask).all()
        simple = _decode({"segmentation": demo.mask_polygons(mask)}, 60, 80)
        assert (simple ^ mask).sum() <= max(2, 0.05 * mask.sum())  # thin strokes lose most


def test_encode_instance_states_area_and_box_of_what_it_encodes():
    rng = np.random.default_rng(1)
    for k in range(40):
        mask = _random_mask(rng, 50, 70)
        if not mask.any():
            continue
        ann = demo.encode_instance(mask, prefer_rle=k % 2 == 0)
        assert isinstance(ann["segmentation"], dict) == (k % 2 == 0)
        decoded = _decode(ann, 50, 70)
        assert ann["area"] == decoded.sum()
        ys, xs = np.nonzero(decoded)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert (decoded & mask).sum() / (decoded | mask).sum() >= demo.POLYGON_MIN_IOU


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------


def test_every_class_draws_a_footprint_inside_the_canvas():
    for k, name in enumerate(xray.CLASSES):
        rng = np.random.default_rng([5, k])
        scan = xray.simulate_scan(rng, 120, 150, [name, name], "dense")
        assert scan.rgb.shape == (120, 150, 3) and scan.rgb.dtype == np.uint8
        assert len(scan.masks) == 2 and all(m.shape == (120, 150) and m.any() for m in scan.masks)


def test_item_zoom_grows_items_and_clutter_share_empties_the_bag():
    """The knobs the CPU default turns: items larger against the bag, fewer clutter objects."""

    def footprint(zoom: float) -> float:
        areas = []
        for k in range(6):
            rng = np.random.default_rng([7, k])
            scan = xray.simulate_scan(rng, 150, 200, ["Wrench"], "light", item_zoom=zoom)
            areas.append(scan.masks[0].sum())
        return float(np.mean(areas))

    assert footprint(1.4) > 1.6 * footprint(1.0)  # area grows with the square of the length
    # No clutter: outside the items the bag is much brighter than with full clutter.
    bright = []
    for share in (1.0, 0.0):
        rng = np.random.default_rng(3)
        scan = xray.simulate_scan(rng, 150, 200, ["Knife"], "dense", clutter_share=share)
        bright.append(scan.rgb[~scan.masks[0]].mean())
    assert bright[1] > bright[0] + 10


def test_display_colours_follow_the_material():
    """Air renders white; organic matter orange (red > blue), metal blue (blue > red)."""
    rng = np.random.default_rng(0)
    film = xray.Film(40, 60)
    organic = xray.Sketch(1.0, 0.0, False, (40, 60), (0, 0))
    organic.add(organic.poly(xray.rect_pts(0, 0, 19, 39)), "plastic", 8.0)
    metal = xray.Sketch(1.0, 0.0, False, (40, 60), (0, 0))
    metal.add(metal.poly(xray.rect_pts(40, 0, 59, 39)), "steel", 1.5)
    film.paste(organic, 0, 0)
    film.paste(metal, 0, 0)
    rgb = xray.render(film.att, xray.draw_scanner(rng), rng).astype(int)
    assert (rgb[5:35, 25:35] == 255).all()  # air, away from blurred edges
    org, met = rgb[5:35, 3:16].mean(axis=(0, 1)), rgb[5:35, 43:56].mean(axis=(0, 1))
    assert org[0] > org[2] + 60 and met[2] > met[0] + 60


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _invoke(args: list[str]):
    return CliRunner().invoke(synth_cli, ["demo-data", *args])


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0]


def test_help_explains_every_option():
    result = _invoke(["--help"])
    assert result.exit_code == 0
    for option in ("--out", "--scale", "--seed", "--workers", "--force"):
        assert option in result.output


def test_unknown_scale_is_refused(tmp_path):
    result = _invoke(["--out", str(tmp_path / "out"), "--scale", "huge"])
    _assert_one_line_error(result, "--scale", "huge")
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_output_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _invoke(["--out", str(tmp_path / "file" / "out"), "--scale", "tiny"])
    _assert_one_line_error(result, str(tmp_path / "file"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_non_empty_output_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _invoke(["--out", str(out), "--scale", "tiny"])
    _assert_one_line_error(result, "--force")
    # --force replaces only earlier demo data, never a folder of something else
    result = _invoke(["--out", str(out), "--scale", "tiny", "--force"])
    _assert_one_line_error(result, demo.MANIFEST)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not _leftovers(tmp_path)


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = demo.render_image

    def flaky(task):
        calls.append(task)
        if len(calls) == 20:
            raise OSError(28, "No space left on device")
        return real(task)

    monkeypatch.setattr(demo, "render_image", flaky)
    result = _invoke(["--out", str(tmp_path / "out"), "--scale", "tiny", "--workers", "1"])
    _assert_one_line_error(result, "no space left")
    assert list(tmp_path.iterdir()) == []
