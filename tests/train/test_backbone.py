"""Backbone, pooling and head: shapes, pooling against naive references, seeded init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segloc.dense import fuse_stride8
from train.model import (
    Encoder,
    Regions,
    SplitBatchNorm2d,
    box_pool,
    init_weights,
    mask_pool,
    pool_instances,
    split_batchnorm,
)


def _regions(masks: torch.Tensor, inst_img: list[int]) -> Regions:
    inst_img_t = torch.tensor(inst_img)
    slot = torch.tensor([inst_img[:i].count(b) for i, b in enumerate(inst_img)])
    return Regions(inst_img_t, slot, int(slot.max()) + 1, masks=masks)


def test_mask_pool_is_the_mask_weighted_mean_on_the_right_image():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(3, 5, 4, 4, generator=g)
    masks = (torch.rand(4, 16, 16, generator=g) > 0.6).float()
    regions = _regions(masks, [0, 2, 2, 1])
    pooled = mask_pool(feat, regions)
    for m, b in enumerate(regions.inst_img.tolist()):
        w = F.adaptive_avg_pool2d(masks[m][None, None], (4, 4))[0, 0]
        expect = (feat[b] * w).sum((1, 2)) / w.sum()
        torch.testing.assert_close(pooled[m], expect, rtol=1e-5, atol=1e-6)


def test_a_mask_smaller_than_a_cell_still_pools():
    feat = torch.randn(1, 2, 2, 2)
    masks = torch.zeros(1, 64, 64)
    masks[0, 40:42, 5:7] = 1.0  # 4 pixels of a 32x32 cell
    torch.testing.assert_close(mask_pool(feat, _regions(masks, [0]))[0], feat[0, :, 1, 0])


def test_box_pool_of_the_whole_image_is_the_global_mean():
    feat = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    regions = Regions(
        torch.tensor([1]), torch.tensor([0]), 1, boxes=torch.tensor([[0.0, 0, 32, 32]])
    )
    torch.testing.assert_close(
        box_pool(feat, regions, 8)[0], feat[1].mean((1, 2)), rtol=0.05, atol=0.3
    )


@pytest.mark.parametrize(
    ("pooling", "pool_from"),
    [
        ("mask", "c5"),
        ("mask", "stride8"),
        ("box", "c5"),
        ("box", "stride8"),
        ("image", "c5"),
    ],
)
def test_encoder_embeds_unit_vectors(pooling, pool_from):
    enc = Encoder("resnet18", pooling, 16, pool_from)
    init_weights(enc, torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(3, 64, 64)
    masks[:, 10:40, 20:50] = 1.0
    regions = _regions(masks, [0, 1, 1])
    regions.boxes = torch.tensor([[20.0, 10, 50, 40]] * 3)
    out = enc(x, None if pooling == "image" else regions)
    assert out.shape == ((2 if pooling == "image" else 3), 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(out.shape[0]))
    out.sum().backward()  # every parameter is in the graph (DDP needs that)
    assert all(p.grad is not None for p in enc.parameters())


def test_init_is_a_function_of_the_generator_only():
    a, b, c = (Encoder("resnet18", "mask", 8) for _ in range(3))
    init_weights(a, torch.Generator().manual_seed(3))
    init_weights(b, torch.Generator().manual_seed(3))
    init_weights(c, torch.Generator().manual_seed(4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["trunk.body.conv1.weight"], sc["trunk.body.conv1.weight"])


def test_split_batchnorm_normalises_each_group_apart():
    net = split_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), groups=2)
    assert isinstance(net[0], SplitBatchNorm2d)
    x = torch.randn(8, 2, 3, 3)
    x[4:] += 10.0  # second half shifted: a whole-batch BN would leave the halves apart
    out = net(x)
    for part in (out[:4], out[4:]):
        torch.testing.assert_close(part.mean((0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)


def test_stride8_pooling_reads_the_fused_map():
    """pool_from stride8: an instance vector is the mask-weighted mean of the fused stride-8 map
    (the probe's), not of C5; the projection head is sized for it."""
    enc = Encoder("resnet18", "mask", 16, "stride8")
    init_weights(enc, torch.Generator().manual_seed(0))
    assert enc.stride == 8 and enc.head[0].in_features == 128 + 256 + 512
    x = torch.randn(1, 3, 64, 64)
    masks = torch.zeros(1, 64, 64)
    masks[0, 8:24, 16:40] = 1.0  # cells (1..2, 2..4) of the 8 x 8 map, whole cells only
    regions = _regions(masks, [0])
    feat = enc.feature_map(x)
    fused = fuse_stride8(enc.trunk(x)[1:])
    torch.testing.assert_close(feat, fused)
    pooled = pool_instances(feat, regions, "mask", enc.stride)
    torch.testing.assert_close(pooled[0], fused[0, :, 1:3, 2:5].mean((1, 2)))


def test_supervised_pretraining_starts_at_uniform_class_probabilities():
    """The supervised model's first loss is about ln(C + 1): He init on its 1x1 classifier gave
    logits of std ~10 and a first loss near 7, which cost the positive control half its run."""
    from train.config import PretrainConfig, resolve_preset
    from train.loop import build_model

    cfg = PretrainConfig()
    model = build_model(cfg, resolve_preset(cfg, "supervised"), 12, torch.device("cpu"))
    x = torch.randn(4, 3, 64, 64)
    seg = torch.randint(0, 13, (4, 64, 64))
    loss, _ = model(x, seg)
    assert abs(loss.item() - math.log(13)) < 0.1


def test_stride8_projection_head_width_for_resnet50():
    enc = Encoder("resnet50", "mask", 16, "stride8")
    assert enc.head[0].in_features == 512 + 1024 + 2048
    # Image pooling (MoCo) keeps C5 whatever pool_from says.
    assert Encoder("resnet50", "image", 16, "stride8").head[0].in_features == 2048
