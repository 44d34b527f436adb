from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from segloc.config import BackgroundConfig, load_data_config
from segloc.errors import UserError
from segloc.imageio import read_rgb
from synth.config import SynthConfig
from synth.sources import (
    background_level,
    decode_scan,
    list_backgrounds,
    load_background,
    load_foregrounds,
)

from .conftest import CLASSES


def _data(params_path: Path, **changes):
    params = yaml.safe_load(params_path.read_text())
    params["data"].update(changes)
    return load_data_config(params)


def test_foregrounds_map_classes_and_skip_unusable(tiny_params):
    fg = load_foregrounds(_data(tiny_params), SynthConfig())
    assert fg.classes == tuple(CLASSES)  # file order of categories, not id order
    by_ann = {s.annotation_id: s for s in fg.segments}
    # crowd (4) and zero-area (6) skipped and counted; every image mode decoded
    assert sorted(by_ann) == [1, 2, 3, 5, 7, 8]
    assert fg.skipped == {"iscrowd": 1, "zero area": 1}
    assert [by_ann[i].cls for i in (1, 2, 3, 5, 7, 8)] == [1, 2, 3, 1, 2, 3]
    assert fg.bad == ()
    for seg in fg.segments:
        assert seg.pixels.dtype == np.uint8 and seg.pixels.shape[:2] == seg.mask.shape
        assert seg.mask[0].any() and seg.mask[-1].any() and seg.mask[:, 0].any()  # tight box
    # the polygon part past the edge of c.png (40x40) is clipped, not an error
    assert by_ann[5].mask.shape[1] <= 40


def test_label_fraction_restricts_the_sources(tiny_params):
    full = load_foregrounds(_data(tiny_params), SynthConfig())
    part = load_foregrounds(_data(tiny_params, label_fraction=0.4), SynthConfig())
    images = {s.image_id for s in part.segments}
    assert 1 <= len(images) <= 2 and len(part.segments) < len(full.segments)


def test_background_level_ignores_other_objects():
    scan = np.full((30, 30, 3), 200, dtype=np.uint8)
    mask = np.zeros((30, 30), dtype=bool)
    mask[10:20, 10:20] = True
    other = np.zeros_like(mask)
    other[10:20, 20:30] = True  # a dark neighbour touching the object
    scan[other] = 20
    scan[mask] = 100
    level = background_level(scan, mask, mask | other, (10, 20, 10, 20), ring=3)
    np.testing.assert_array_equal(level, [200, 200, 200])


def test_sixray_positives_left_out(tiny_params):
    bg = list_backgrounds(_data(tiny_params).background)
    assert bg.names == ("N00001.jpg", "N00002.jpg", "N00003.jpg", "N00004.jpg")
    assert bg.excluded_positives == 2  # P00001 by name, N00005 by the CSV
    both = list_backgrounds(BackgroundConfig(str(bg.folder), include_positives=True))
    assert len(both.names) == 6


def test_plain_folder_keeps_every_image(tmp_path):
    for name in ("P1.png", "scan.png", "x.bmp"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    bg = list_backgrounds(BackgroundConfig(str(tmp_path)))
    assert bg.names == ("P1.png", "scan.png", "x.bmp")
    image = load_background(tmp_path / "scan.png", canvas=16)
    assert image.shape == (16, 24, 3)


def test_bad_backgrounds_are_collected_not_raised(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    bg = list_backgrounds(BackgroundConfig(str(tmp_path)))
    assert bg.names == ("ok.png",)
    assert [b.path for b in bg.bad] == [str(tmp_path / "broken.jpg")]


@pytest.mark.parametrize("csv", ["name,Gun\nN00001,maybe\n", None])
def test_bad_label_csv_or_folder_is_a_user_error(tmp_path, csv):
    folder = tmp_path / "JPEGImage"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "N00001.jpg")
    labels = tmp_path / "labels.csv"
    if csv is not None:
        labels.write_text(csv)
    with pytest.raises(UserError, match="labels.csv"):
        list_backgrounds(BackgroundConfig(str(folder), labels=str(labels)))
    with pytest.raises(UserError, match="background folder not found"):
        list_backgrounds(BackgroundConfig(str(tmp_path / "nope")))


def test_large_segments_are_stored_shrunk(tiny_params):
    fg = load_foregrounds(_data(tiny_params), SynthConfig(scale=(3.0, 6.0)))
    for seg in fg.segments:
        assert max(seg.mask.shape) <= 12 and seg.mask.any() and seg.prescale < 1
        assert seg.pixels.shape[:2] == seg.mask.shape


def test_decode_scan_is_read_rgb_in_bgr_order(tmp_path):
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.random((240, 320, 3)).astype(np.float32), (0, 0), 3)
    rgb = (base / base.max() * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "lossless.png")
    full = decode_scan(tmp_path / "big.jpg", canvas=200)
    assert full.shape == (240, 320, 3)
    assert np.abs(full.astype(int) - read_rgb(tmp_path / "big.jpg")[..., ::-1]).mean() < 2
    assert decode_scan(tmp_path / "big.jpg", canvas=70).shape == (120, 160, 3)  # 1/2 scale
    assert decode_scan(tmp_path / "big.jpg", canvas=60).shape == (60, 80, 3)  # 1/4 scale
    grey = decode_scan(tmp_path / "grey.jpg", canvas=60)
    assert (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_array_equal(decode_scan(tmp_path / "lossless.png", canvas=60), rgb[..., ::-1])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(UserError, match="bad.jpg"):
        decode_scan(tmp_path / "bad.jpg", canvas=60)
