import math

import cv2
import numpy as np
import pytest

from synth.config import SynthConfig
from synth.transforms import (
    Transform,
    affine,
    draw_transform,
    stack,
    tighten,
    warp,
    warp_tight,
)


def _crop(h: int = 20, w: int = 36) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[2:-2, 3:-3] = True
    return pixels, mask


def test_draw_is_reproducible_and_in_range():
    cfg = SynthConfig(scale=(20.0, 40.0), density=(0.5, 2.0))
    draws = [draw_transform(np.random.default_rng([1, i]), cfg, (10, 25)) for i in range(200)]
    again = [draw_transform(np.random.default_rng([1, i]), cfg, (10, 25)) for i in range(200)]
    assert draws == again
    assert all(20.0 <= t.scale * 25 <= 40.0 and 0.5 <= t.density <= 2.0 for t in draws)
    assert all(-180 <= t.angle <= 180 for t in draws)
    assert 0.3 < np.mean([t.flip for t in draws]) < 0.7


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, -135.0, 179.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 1.7])
def test_warp_keeps_the_whole_mask(angle, scale):
    pixels, mask = _crop()
    out_pixels, out_mask = warp(stack(pixels, mask), Transform(scale, angle, False, 1.0))
    assert out_mask.dtype == bool and out_pixels.shape[:2] == out_mask.shape
    # Nothing cut: the area scales with s^2 (up to nearest-neighbour rounding at the border).
    expected = mask.sum() * scale**2
    assert abs(out_mask.sum() - expected) < 0.12 * expected
    # The expanded box fits the rotated crop tightly.
    rad = math.radians(angle)
    h, w = mask.shape[0] * scale, mask.shape[1] * scale
    assert out_mask.shape[1] <= math.ceil(w * abs(math.cos(rad)) + h * abs(math.sin(rad))) + 1
    border = np.concatenate([out_mask[0], out_mask[-1], out_mask[:, 0], out_mask[:, -1]])
    assert not border.all()


def test_flip_mirrors_the_crop():
    pixels, mask = _crop()
    mask[2:6, 3:8] = False  # make it asymmetric
    flipped, fmask = warp(stack(pixels, mask), Transform(1.0, 0.0, True, 1.0))
    np.testing.assert_array_equal(fmask, mask[:, ::-1])
    np.testing.assert_array_equal(flipped, pixels[:, ::-1])


def test_upscale_is_capped_relative_to_the_source():
    cfg = SynthConfig(scale=(20.0, 40.0), max_upscale=2.0)
    for i in range(50):
        small = draw_transform(np.random.default_rng([2, i]), cfg, (5, 8))
        assert small.scale * 8 <= 16.0 + 1e-9
        # stored at half size: the source is 16 px long, so up to 32 px
        stored = draw_transform(np.random.default_rng([2, i]), cfg, (5, 8), prescale=0.5)
        assert 20.0 <= stored.scale * 8 <= 32.0 + 1e-9


def test_enlarged_masks_have_smooth_edges():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    mask[1, 3:5] = mask[6, 3:5] = mask[3:5, 1] = mask[3:5, 6] = True  # a blocky disc
    _, big = warp(stack(np.zeros((8, 8, 3), np.uint8), mask), Transform(8.0, 0.0, False, 1.0))
    # nearest neighbour would give 8x8 blocks: 4 distinct row profiles only
    assert len({tuple(row) for row in big}) > 8


@pytest.mark.parametrize("angle", [17.0, -100.0])
def test_flip_then_rotate_is_one_consistent_warp(angle):
    pixels, mask = _crop()
    mask[2:6, 3:8] = False
    both, both_mask = warp(stack(pixels, mask), Transform(1.3, angle, True, 1.0))
    ref, ref_mask = warp(
        stack(pixels[:, ::-1].copy(), mask[:, ::-1].copy()), Transform(1.3, angle, False, 1.0)
    )
    assert both.shape == ref.shape
    assert (both_mask != ref_mask).mean() < 0.01
    assert np.abs(both.astype(int) - ref).mean() < 1.0


def _two_warps(pixels: np.ndarray, mask: np.ndarray, t: Transform):
    """Reference: pixels and mask coverage warped separately, each with its own border."""
    size, cover = (mask.shape[1], mask.shape[0]), mask.astype(np.float32)
    if t.scale < 0.5:
        size = (max(1, round(size[0] * t.scale)), max(1, round(size[1] * t.scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        cover = (cv2.resize(cover, size, interpolation=cv2.INTER_AREA) >= 0.5).astype(np.float32)
    matrix, out_size = affine(size, t.scale if t.scale >= 0.5 else 1.0, t.angle, t.flip)
    flags = cv2.INTER_LINEAR
    ref = cv2.warpAffine(pixels, matrix, out_size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    cover = cv2.warpAffine(
        (cover * 255).astype(np.uint8), matrix, out_size, flags=flags, borderValue=0
    )
    return ref, cover >= 128


@pytest.mark.parametrize("outside", [True, False])
def test_one_stacked_warp_matches_two_separate_warps(outside):
    """The 4-channel warp of the padded stack samples where two separate warps would.

    OpenCV >= 4.11 computes sample positions in float32, so moving them into the padding can
    round a pixel one level the other way; the masks must match exactly (bar exact ties of the
    area-averaged coverage at 1/2 when shrinking), and with `outside=False` only the pixels
    inside the mask are compared.
    """
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(4, 60, 2))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        radius, scale, angle, flip = rng.uniform([0.4, 0.2, -180, 0], [1.2, 2.0, 180, 1])
        mask = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= radius
        t = Transform(float(scale), float(angle), bool(flip < 0.5), 1.0)
        ref, ref_mask = _two_warps(pixels, mask, t)
        out, out_mask = warp(stack(pixels, mask), t, outside=outside)
        assert out.shape == ref.shape and out_mask.shape == ref_mask.shape
        assert (out_mask != ref_mask).mean() <= (0.02 if t.scale < 0.5 else 0.0)
        both = out_mask & ref_mask if not outside else np.ones_like(out_mask)
        diff = np.abs(out.astype(int) - ref)[both]
        assert diff.max(initial=0) <= 1 and (diff > 0).mean() < 0.02


def test_a_sliver_that_shrinks_to_nothing_leaves_no_mask():
    """Area averaging can round a one-pixel mask's coverage to 0: that must not mark the box."""
    pixels = np.full((200, 200, 3), 90, np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[100, 100] = True
    out, out_mask = warp(stack(pixels, mask), Transform(0.01, 0.0, False, 1.0))
    assert out_mask.shape == out.shape[:2] and not out_mask.any()


def test_the_tight_warp_is_the_warp_cut_to_its_mask():
    """`warp_tight` converts colour on the mask's box alone; it must equal `warp` then `tighten`,
    byte for byte, whatever the scale (shrinking included) and for a mask that vanishes."""
    rng = np.random.default_rng(3)
    cases = [
        (h, w, *rng.uniform([0.3, 0.1, -180], [1.2, 2.5, 180]))
        for h, w in rng.integers(3, 50, (40, 2))
    ]
    for h, w, radius, scale, angle in cases:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= radius
        t = Transform(float(scale), float(angle), bool(rng.random() < 0.5), 1.0)
        full_pixels, full_mask = warp(stack(pixels, mask), t, outside=False)
        ref = tighten(full_pixels, full_mask)
        out = warp_tight(stack(pixels, mask), t)
        np.testing.assert_array_equal(out[0], ref[0])
        np.testing.assert_array_equal(out[1], ref[1])
        assert out[2:4] == ref[2:4] and out[4] == full_mask.shape
    sliver = np.zeros((200, 200), bool)
    sliver[100, 100] = True
    pixels, mask, dx, dy, shape = warp_tight(
        stack(np.zeros((200, 200, 3), np.uint8), sliver), Transform(0.01, 0.0, False, 1.0)
    )
    assert pixels.shape == (0, 0, 3) and mask.shape == (0, 0) and shape == (2, 2)
