import numpy as np
import pytest
from PIL import Image

from segloc.errors import UserError
from segloc.imageio import read_rgb


@pytest.mark.parametrize(
    ("mode", "make", "expect"),
    [
        ("L", lambda: np.full((4, 5), 200, np.uint8), (200, 200, 200)),
        ("I;16", lambda: np.full((4, 5), 65535, np.uint16), (255, 255, 255)),
        (
            "RGB",
            lambda: np.dstack([np.full((4, 5), v, np.uint8) for v in (10, 20, 30)]),
            (10, 20, 30),
        ),
    ],
)
def test_modes_become_uint8_rgb(tmp_path, mode, make, expect):
    path = tmp_path / "x.png"
    Image.fromarray(make()).save(path)
    assert Image.open(path).mode == mode
    arr = read_rgb(path)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8
    assert tuple(arr[0, 0]) == expect


def test_rgba_composites_over_white_and_palette(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)  # opaque black stays black; transparent becomes air (white)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = read_rgb(tmp_path / "a.png")
    assert tuple(arr[0, 0]) == (0, 0, 0) and tuple(arr[1, 1]) == (255, 255, 255)
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_bad_images_are_named(tmp_path):
    with pytest.raises(UserError, match="missing.jpg: no such image file"):
        read_rgb(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="junk.jpg: cannot decode image"):
        read_rgb(tmp_path / "junk.jpg")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(UserError, match="is empty or exceeds the 5000 pixel limit"):
        read_rgb(tmp_path / "big.png", max_pixels=5000)
    path = tmp_path / "trunc.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(UserError, match="trunc.png"):
        read_rgb(path)
