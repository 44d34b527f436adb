"""The instance task's switches: the pair curriculum, per-cell normalisation before pooling and
the query-side predictor. Each off by default, and off means the run is unchanged."""

from __future__ import annotations

from dataclasses import replace

import torch

from train.config import METHODS, PretrainConfig
from train.moco import ClassQueueMoCo
from train.model import Encoder, Regions
from train.step import StepContext, key_views


def _batch(b: int = 6, m: int = 9, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inst_img = torch.sort(torch.randint(0, b, (m,), generator=g)).values
    return {
        "img0": torch.randint(0, 255, (b, 3, size, size), generator=g, dtype=torch.uint8),
        "img1": torch.randint(0, 255, (b, 3, size, size), generator=g, dtype=torch.uint8),
        "masks0": torch.randint(0, 2, (m, size, size), generator=g, dtype=torch.uint8),
        "masks1": torch.randint(0, 2, (m, size, size), generator=g, dtype=torch.uint8),
        "inst_img": inst_img,
    }


def _ctx(steps: int) -> StepContext:
    cfg = replace(PretrainConfig(), curriculum_steps=steps)
    return StepContext(cfg, METHODS["segloc"], 100, 1e-3, torch.device("cpu"), 0, ("a", "b"))


def test_curriculum_starts_on_the_query_composite_and_ends_on_the_other_view():
    batch = _batch()
    img, masks = key_views(batch, _ctx(10), torch.Generator().manual_seed(1), step=0)
    assert torch.equal(img, batch["img0"]) and torch.equal(masks, batch["masks0"])
    for step in (10, 11, None):
        img, masks = key_views(batch, _ctx(10), torch.Generator().manual_seed(1), step=step)
        assert torch.equal(img, batch["img1"]) and torch.equal(masks, batch["masks1"])


def test_curriculum_mid_way_swaps_whole_samples_with_their_instances():
    batch = _batch(b=64, m=200)
    img, masks = key_views(batch, _ctx(10), torch.Generator().manual_seed(2), step=5)
    same = (img == batch["img0"]).flatten(1).all(1)
    assert 0 < int(same.sum()) < 64  # about half, drawn per sample
    for i, b in enumerate(batch["inst_img"].tolist()):
        want = batch["masks0"][i] if same[b] else batch["masks1"][i]
        assert torch.equal(masks[i], want)


def test_no_curriculum_draws_no_random_number():
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    key_views(_batch(), _ctx(0), g, step=0)
    assert torch.equal(g.get_state(), before)


def _regions(b: int, size: int) -> Regions:
    masks = torch.zeros(b, size, size)
    masks[:, 2:10, 3:12] = 1.0
    return Regions(torch.arange(b), torch.zeros(b, dtype=torch.long), 1, masks=masks)


def test_pixel_norm_ignores_each_cells_scale():
    torch.manual_seed(0)
    enc = Encoder("resnet18", "mask", 16, pool_from="stride8", pixel_norm=True).eval()
    feat = torch.randn(2, 896, 4, 4)
    scale = torch.rand(2, 1, 4, 4) * 10 + 0.1  # every cell scaled by its own positive factor
    regions = _regions(2, 32)
    torch.testing.assert_close(enc.embed(feat, regions), enc.embed(feat * scale, regions))
    plain = Encoder("resnet18", "mask", 16, pool_from="stride8").eval()
    plain.load_state_dict(enc.state_dict())
    assert not torch.allclose(plain.embed(feat, regions), plain.embed(feat * scale, regions))


def _moco(predictor: bool) -> ClassQueueMoCo:
    g = torch.Generator().manual_seed(0)
    enc = Encoder("resnet18", "mask", 16, pool_from="stride8")
    return ClassQueueMoCo(enc, 2, 32, 0.2, 1, g, predictor=predictor)


def test_the_predictor_sits_on_the_query_branch_only_and_learns():
    model = _moco(True)
    assert model.predictor is not None and _moco(False).predictor is None
    x = torch.randn(2, 3, 32, 32)
    regions = _regions(2, 32)
    loss, _ = model(x, x.clone(), regions, regions, torch.tensor([0, 1]), torch.arange(2), 0.99)
    loss.backward()
    assert all(p.grad is not None for p in model.predictor.parameters())
    key_params = {id(p) for p in model.encoder_k.parameters()}
    assert not any(id(p) in key_params for p in model.predictor.parameters())


def test_the_predictor_is_drawn_from_the_runs_generator():
    torch.manual_seed(123)
    a = _moco(True)
    torch.manual_seed(456)  # the global generator must not matter
    b = _moco(True)
    for pa, pb in zip(a.predictor.parameters(), b.predictor.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_norm_scales_and_biases_can_stay_out_of_weight_decay():
    from train.loop import build_optimizer

    model = _moco(False)
    every = build_optimizer(model, PretrainConfig())
    assert len(every.param_groups) == 1 and every.param_groups[0]["weight_decay"] == 0.05
    split = build_optimizer(model, replace(PretrainConfig(), decay_norm_bias=False))
    decayed, kept = split.param_groups
    assert decayed["weight_decay"] == 0.05 and kept["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in kept["params"])
    bn = model.encoder_q.trunk.body.bn1.weight
    assert any(p is bn for p in kept["params"])
