import cv2
import numpy as np
import pytest

from synth.compose import (
    Placed,
    boxes,
    class_map,
    clip,
    composite,
    full_masks,
    index_map,
    log_transmission,
    object_transmission,
    visible_areas,
)
from synth.sources import _cut
from synth.transforms import tighten

SIZE = 40


def full_mask(mask: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    return full_masks([mask], boxes([mask], [(x, y)], size), size)[..., 0].astype(bool)


def _disc(h: int, w: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= r * r


def _uniform_object(
    t: float, level: float, h: int = 20, w: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """A source scan of background `level` with a disc of transmission t: pixels t * level."""
    scan = np.full((h + 16, w + 16, 3), level, dtype=np.float32)
    mask = np.zeros(scan.shape[:2], dtype=bool)
    mask[8 : 8 + h, 8 : 8 + w] = _disc(h, w, h / 2 - 0.5)
    scan[mask] *= t
    return np.rint(scan).astype(np.uint8), mask


@pytest.mark.parametrize("t", [0.25, 0.5, 0.8])
def test_multiply_is_beer_lambert(t):
    """Cut from a scan of level 200 and pasted on background b: b * t inside the mask."""
    scan, mask = _uniform_object(t, 200.0)
    seg = _cut(scan, mask, mask, ring=3, cls=1, image_id=1, ann_id=1)
    np.testing.assert_allclose(seg.level, 200.0)
    background = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    background[:] = (180, 120, 60)
    placed = Placed(seg.pixels, seg.mask, log_transmission(seg.level, "multiply"), 1, 1.0, 10, 5)
    out = composite(background, [placed], "multiply", edge_sigma=1.0)
    inner = full_mask(_erode(seg.mask, 3), 10, 5, SIZE)
    assert inner.sum() > 60
    expected = np.array([180, 120, 60]) * t
    np.testing.assert_allclose(out[inner], np.broadcast_to(expected, out[inner].shape), atol=1.01)
    untouched = ~full_mask(seg.mask, 10, 5, SIZE)
    assert (out[untouched] == background[untouched]).all()


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    # Outside the crop is outside the object: erode from the box edge too.
    out = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def test_multiply_superposes_overlapping_objects():
    """Two objects t1, t2 overlapping on background b: b * t1 * t2 (no occlusion in X-ray)."""
    pixels = np.full((10, 10, 3), 100, dtype=np.uint8)
    mask = np.ones((10, 10), dtype=bool)
    log_t = log_transmission(np.full(3, 200.0, dtype=np.float32), "multiply")
    a = Placed(pixels, mask, log_t, 1, 1.0, 5, 5)
    b = Placed(pixels, mask, log_t, 2, 1.0, 5, 5)
    background = np.full((SIZE, SIZE, 3), 240, dtype=np.uint8)
    out = composite(background, [a, b], "multiply", edge_sigma=0.0)
    assert (out[5:15, 5:15] == 60).all()


def test_density_raises_transmission_to_power_k():
    pixels = np.full((4, 4, 3), 128, dtype=np.uint8)
    log_t = log_transmission(np.full(3, 256.0, np.float32), "multiply")
    p = Placed(pixels, np.ones((4, 4), bool), log_t, 1, 2.0, 0, 0)
    np.testing.assert_allclose(object_transmission(p), 0.25, rtol=1e-6)


def test_hard_overwrites_and_alpha_blends():
    pixels = np.full((10, 10, 3), 50, dtype=np.uint8)
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    background = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    p = Placed(pixels, mask, log_transmission(np.full(3, 200.0), "hard"), 1, 1.0, 0, 0)
    hard = composite(background, [p], "hard", edge_sigma=1.0)
    assert (hard[2:8, 2:8] == 50).all() and (hard[~full_mask(mask, 0, 0, SIZE)] == 200).all()
    alpha = composite(background, [p], "alpha", edge_sigma=1.0)
    assert (alpha[4:6, 4:6] <= 52).all()  # inside: the cut-out
    assert 50 < alpha[2, 5, 0] < 200  # on the edge: a blend


def test_labels_follow_the_topmost_instance_and_clip_at_edges():
    square = np.ones((10, 10), dtype=bool)
    masks, offsets = [square, square, square], [(0, 0), (5, 5), (SIZE - 4, -3)]
    where = boxes(masks, offsets, SIZE)
    index = index_map(masks, where, SIZE)
    assert index[2, 2] == 1 and index[7, 7] == 2 and index[0, SIZE - 1] == 3 and index[20, 20] == 0
    np.testing.assert_array_equal(visible_areas(index, where), [100 - 25, 100, 4 * 7])
    classes = class_map(index, [4, 2, 9])
    assert classes[7, 7] == 2 and classes[2, 2] == 4 and classes[20, 20] == 0
    assert full_mask(square, SIZE - 4, -3, SIZE).sum() == 28
    assert clip(SIZE, 0, 10, 10, SIZE) is None


def test_pasting_the_tight_box_changes_nothing():
    """Cut to its mask's bounding box, an object pastes and labels exactly as its whole box."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)
    mask = np.zeros((30, 36), dtype=bool)
    mask[6:20, 9:31] = _disc(14, 22, 9.0)
    log_t = log_transmission(np.full(3, 230.0, dtype=np.float32), "multiply")
    background = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for x, y in [(3, 4), (-12, 20), (25, -8)]:  # inside, and cut by the canvas edge
        whole = Placed(pixels, mask, log_t, 1, 1.3, x, y)
        tight_pixels, tight_mask, dx, dy = tighten(pixels, mask)
        ys, xs = np.nonzero(mask)
        assert (dx, dy) == (xs.min(), ys.min()) and tight_mask.sum() == mask.sum()
        assert tight_mask.shape == (ys.max() + 1 - dy, xs.max() + 1 - dx)
        tight = Placed(tight_pixels, tight_mask, log_t, 1, 1.3, x + dx, y + dy)
        np.testing.assert_array_equal(
            composite(background, [whole], "multiply", edge_sigma=1.0),
            composite(background, [tight], "multiply", edge_sigma=1.0),
        )
        np.testing.assert_array_equal(
            index_map([mask], boxes([mask], [(x, y)], SIZE), SIZE),
            index_map([tight_mask], boxes([tight_mask], [(x + dx, y + dy)], SIZE), SIZE),
        )
