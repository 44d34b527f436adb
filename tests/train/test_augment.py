"""Batched augmentation: image, masks and label maps stay aligned; draws come from the generator."""

from __future__ import annotations

import dataclasses

import torch

from train.augment import (
    MEAN,
    STD,
    View,
    augment_view,
    colour_jitter,
    crop_thetas,
    jitter_boxes,
    mask_boxes,
    visible,
    warp,
)
from train.config import AugmentConfig

GEOMETRY_ONLY = AugmentConfig(crop=32, jitter_p=0.0, blur_p=0.0)


def _denormalise(view: View) -> torch.Tensor:
    return view.images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def _blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """n x size x size uint8 masks of random rectangles."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        masks[i, y0 : y0 + size // 3, x0 : x0 + size // 4] = 1
    return masks


def test_identity_crop_leaves_the_image_unchanged():
    aug = dataclasses.replace(
        GEOMETRY_ONLY, crop=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, vflip=0.0
    )
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out = _denormalise(augment_view(img, aug, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, img.float() / 255.0, atol=1e-5, rtol=0)


def test_masks_follow_their_own_image_through_crops_and_flips():
    """Image b carries its instance masks in channel 0, so both warps must agree pixel for pixel."""
    masks = _blobs(5, 48, seed=1)
    inst_img = torch.tensor([0, 0, 1, 2, 2])
    img = torch.zeros(3, 3, 48, 48, dtype=torch.uint8)
    for m, b in zip(masks, inst_img, strict=True):
        img[b, 0] = torch.maximum(img[b, 0], m * 255)
    aug = dataclasses.replace(GEOMETRY_ONLY, hflip=0.5, vflip=0.5, scale=(0.3, 1.0))
    for seed in range(4):
        view = augment_view(img, aug, torch.Generator().manual_seed(seed), masks, inst_img)
        red = _denormalise(view)[:, 0]
        for m, b in zip(view.masks, inst_img, strict=True):
            # bilinear warps of the same data: the instance's pixels match its image's channel
            inside = m > 0.99
            torch.testing.assert_close(
                red[b][inside], torch.ones_like(red[b][inside]), atol=1e-4, rtol=0
            )


def test_label_maps_keep_their_values_under_nearest_warp():
    seg = torch.zeros(2, 40, 40, dtype=torch.uint8)
    seg[:, 5:20, 5:30] = 3
    seg[:, 25:, :] = 255
    img = torch.zeros(2, 3, 40, 40, dtype=torch.uint8)
    view = augment_view(img, GEOMETRY_ONLY, torch.Generator().manual_seed(0), seg=seg)
    assert set(view.seg.unique().tolist()) <= {0, 3, 255}
    assert view.seg.shape == (2, 32, 32) and view.seg.dtype == torch.long


def test_same_generator_state_same_views_other_state_other_views():
    img = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    aug = AugmentConfig(crop=24)
    a = augment_view(img, aug, torch.Generator().manual_seed(7))
    b = augment_view(img, aug, torch.Generator().manual_seed(7))
    c = augment_view(img, aug, torch.Generator().manual_seed(8))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_crops_stay_inside_the_canvas():
    aug = AugmentConfig(scale=(0.1, 1.0), ratio=(0.3, 3.0))
    theta = crop_thetas(500, aug, torch.Generator().manual_seed(0))
    for axis in (0, 1):
        half, centre = theta[:, axis, axis].abs(), theta[:, axis, 2]
        assert torch.all(centre - half >= -1 - 1e-6) and torch.all(centre + half <= 1 + 1e-6)


def test_jitter_keeps_grey_images_grey_and_off_means_identity():
    grey = torch.rand(6, 1, 8, 8).expand(6, 3, 8, 8).clone()
    on = colour_jitter(grey, AugmentConfig(jitter_p=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(on[:, 0], on[:, 1])
    torch.testing.assert_close(on[:, 1], on[:, 2])
    off = colour_jitter(
        grey, AugmentConfig(jitter_p=0.0, hue=0.1), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(off, grey)
    hue = colour_jitter(
        torch.rand(4, 3, 8, 8),
        AugmentConfig(jitter_p=1.0, hue=0.1),
        torch.Generator().manual_seed(0),
    )
    assert hue.min() >= 0.0 and hue.max() <= 1.0


def test_boxes_visibility_and_box_jitter():
    masks = torch.zeros(2, 20, 20)
    masks[0, 3:7, 10:15] = 1.0
    masks[1, 0:1, 0:2] = 1.0
    assert mask_boxes(masks)[0].tolist() == [10.0, 3.0, 15.0, 7.0]
    assert visible(masks, 16).tolist() == [True, False]
    boxes = jitter_boxes(mask_boxes(masks), 0.5, 20, torch.Generator().manual_seed(0))
    assert torch.all(boxes >= 0) and torch.all(boxes <= 20)
    assert not torch.equal(boxes, mask_boxes(masks))


def test_warp_of_an_empty_instance_batch():
    out = warp(torch.zeros(0, 1, 10, 10), torch.zeros(0, 2, 3), 6, "bilinear")
    assert out.shape == (0, 1, 6, 6)
