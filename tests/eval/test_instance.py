import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops.misc import FrozenBatchNorm2d

from eval import instance, instance_data, report
from eval.cli import main as cli
from eval.coco_eval import (
    METRIC_KEYS,
    class_to_category,
    coco_scores,
    detections_to_results,
    ground_truth,
)
from eval.config import InstanceConfig, load_eval_config
from eval.data import LabeledSets
from eval.inits import resolve_init
from eval.model import load_resnet_body
from segloc.coco import load_coco
from segloc.errors import UserError

from .conftest import CATEGORY_IDS

# Small enough that a step and a test image take well under a second on one core.
TINY = InstanceConfig(
    repeats=1,
    steps=2,
    batch_size=2,
    min_size=64,
    max_size=96,
    warmup_steps=1,
    norm="frozen",
    proposals=32,
    rois_per_image=16,
    detections_per_image=10,
)
TINY_SETS = [
    "eval.instance.steps=2",
    "eval.instance.batch_size=2",
    "eval.instance.min_size=64",
    "eval.instance.max_size=96",
    "eval.instance.proposals=32",
    "eval.instance.rois_per_image=16",
    "eval.instance.detections_per_image=10",
    "eval.instance.repeats=1",
    "eval.threads=1",
]


@pytest.fixture(autouse=True)
def _no_project_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: runs see only what the test gives them


def _truth_as_output(coco, image):
    """Ground truth of an image in torchvision's detection output form, every score 1."""
    masks, labels = instance_data.instance_targets(coco, image)
    return {
        "boxes": torch.from_numpy(instance_data.boxes_of(masks)),
        "labels": torch.from_numpy(labels),
        "scores": torch.ones(len(labels)),
        "masks": torch.from_numpy(masks[:, None].astype(np.float32)),
    }


def _truth_results(coco, relabel=None):
    cat_of = class_to_category(coco)
    results = []
    for image in coco.images:
        output = _truth_as_output(coco, image)
        if relabel is not None:
            output["labels"] = relabel(output["labels"])
        results += detections_to_results(image.id, output, cat_of)
    return results


def test_ground_truth_as_predictions_scores_one(pidray):
    coco = load_coco(pidray / "annotations/xray_train.json", pidray / "train")
    gt = ground_truth(coco)
    results = _truth_results(coco)
    assert len(results) == len(gt["annotations"]) == 12
    # Category ids go back to the JSON's own (non-contiguous) ids, per instance.
    truth_ids = sorted((a["image_id"], a["category_id"]) for a in gt["annotations"])
    assert sorted((r["image_id"], r["category_id"]) for r in results) == truth_ids
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    scores = coco_scores(gt, json.loads(json.dumps(results)))  # survives a JSON round trip
    assert set(scores) == set(METRIC_KEYS)
    for iou_type in ("bbox", "segm"):
        for stat in ("AP", "AP50", "AP75", "AR100"):
            assert scores[f"{iou_type}_{stat}"] == pytest.approx(1.0)
    # Wrong classes must not score: rotate every label to the next class.
    wrong = coco_scores(gt, _truth_results(coco, relabel=lambda labels: labels % 3 + 1))
    assert wrong["segm_AP"] == pytest.approx(0.0) and wrong["bbox_AP50"] == pytest.approx(0.0)


def test_no_predictions_score_zero_and_gt_boxes_come_from_masks(pidray):
    coco = load_coco(pidray / "annotations/xray_train.json", pidray / "train")
    gt = ground_truth(coco)
    assert coco_scores(gt, [])["segm_AP"] == 0.0
    # The fixture's JSON boxes and areas are dummies ([0, 0, 1, 1], 1.0): the truth recomputes them.
    assert all(a["bbox"][2] > 1 and a["area"] > 1 for a in gt["annotations"])


def _export(folder, arch="resnet18", seed=1):
    """An exported backbone whose BN statistics and affine terms are far from the defaults a
    fresh FrozenBatchNorm2d holds, so a load that skips them cannot pass."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    for key, value in state.items():
        if key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(value.shape, generator=g) * 0.1
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight")):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.05
    torch.save(state, folder / "backbone.pt")
    (folder / "backbone.json").write_text(json.dumps({"arch": arch, "method": "segloc"}))
    return state


def test_exported_backbone_loads_strictly_into_frozen_bn(tmp_path, one_thread):
    state = _export(tmp_path / "run")
    model = instance.build_maskrcnn("resnet18", 3, TINY)
    body = model.backbone.body
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    load_resnet_body(body, resolve_init(str(tmp_path / "run")), "resnet18")
    loaded = body.state_dict()
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    # Frozen BN computes what BN does in eval mode: the trunk's layer4 features match a plain
    # torchvision ResNet holding the same weights.
    ref = torchvision.models.resnet18()
    ref.load_state_dict(state, strict=False)  # fc stays random and unused
    ref.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        y = ref.layer4(ref.layer3(ref.layer2(ref.layer1(y))))
        ours = body(x)["3"]
    torch.testing.assert_close(ours, y, rtol=1e-3, atol=1e-3)  # float32 op-order noise


def test_other_architecture_and_trainable_bn_loads(tmp_path, one_thread):
    _export(tmp_path / "r34", arch="resnet34")
    model = instance.build_maskrcnn("resnet18", 3, TINY)
    with pytest.raises(UserError, match="resnet34"):
        load_resnet_body(model.backbone.body, resolve_init(str(tmp_path / "r34")), "resnet18")
    state = _export(tmp_path / "r18")
    batch = instance.build_maskrcnn("resnet18", 3, InstanceConfig(norm="batch"))
    load_resnet_body(batch.backbone.body, resolve_init(str(tmp_path / "r18")), "resnet18")
    loaded = batch.backbone.body.state_dict()
    assert loaded.keys() == state.keys()  # trained BN keeps its counters too
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def _sets(pidray):
    train = load_coco(pidray / "annotations/xray_train.json", pidray / "train")
    return LabeledSets(train, train.images, {})


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads can run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_is_seeded_and_leaves_global_rng_alone(pidray, one_thread):
    from segloc.dist import DistEnv

    cfg = load_eval_config({"eval": {"threads": 1, "instance": vars(TINY)}})
    sets, init = _sets(pidray), resolve_init("random")
    env = DistEnv(0, 1, 1, torch.device("cpu"))
    before = torch.get_rng_state()
    runs = [
        instance.train(instance.instance_model(sets, init, cfg, seed), sets, cfg, seed, env, "t")
        for seed in (0, 0, 1)
    ]
    assert torch.equal(before, torch.get_rng_state())
    assert len(runs[0]) == TINY.steps and all(np.isfinite(runs[0]))
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_tiny_fine_tune_writes_metrics_and_rescorable_predictions(pidray, tmp_path):
    out = tmp_path / "out"
    args = ["--task", "instance", "--init", "random", "--data", pidray, "--out", out]
    result = CliRunner().invoke(
        cli, [str(a) for a in args] + [x for o in TINY_SETS for x in ("--set", o)]
    )
    assert result.exit_code == 0, result.output
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    splits = ("easy", "hard", "hidden")
    assert names == {
        "metrics.json",
        "scores.json",
        "config.json",
        "plots/finetune_loss.json",
        *(f"predictions_{s}.json" for s in splits),
    }
    scores = json.loads((out / "scores.json").read_text())
    assert scores["task"] == "instance" and scores["repeats"] == 1
    assert sorted(scores["splits"]) == list(splits)
    assert set(scores["splits"]["easy"]) == set(METRIC_KEYS)
    headline = json.loads((out / "metrics.json").read_text())
    mean = scores["splits"]["easy"]["segm_AP"]["mean"]
    assert headline["segm_AP"]["easy"] == (None if mean is None else round(100 * mean, 2))
    assert set(headline) == {"segm_AP", "bbox_AP", "versions"}
    for split in splits:
        truth = COCO(str(pidray / f"annotations/xray_test_{split}.json"))
        preds = json.loads((out / f"predictions_{split}.json").read_text())
        # The seeded run detects something on every split; without it the checks below pass
        # on nothing.
        assert preds, f"no prediction on {split}"
        assert len(preds) <= 10 * 2  # detections_per_image x images
        assert all(isinstance(p["segmentation"]["counts"], str) for p in preds)
        assert {p["category_id"] for p in preds} <= set(CATEGORY_IDS)
        ev = COCOeval(truth, truth.loadRes(preds), "segm")
        ev.evaluate()
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "instance" and config["eval"]["instance"]["steps"] == 2


def test_report_over_instance_runs_gets_ap_tables(tmp_path):
    for label, kind, ap in (("random", "random", [0.10, 0.14]), ("segloc", "backbone", [0.2, 0.3])):
        _fake_instance_run(tmp_path / label, label, kind, ap)
    md = report.main([str(tmp_path / "random"), str(tmp_path / "segloc")], [], tmp_path / "rep")
    text = Path(md).read_text()
    assert "COCO AP/AR" in text and "mIoU" not in text
    assert "| segloc | easy | 2 | 25.0 ± 7.1 |" in text
    assert "| segloc | segm_AP | +13.0 ± 5.4 |" in text  # sqrt(.0707² / 2 + .0283² / 2)


def _fake_instance_run(folder, label, kind, values):
    summary = {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)),
        "values": values,
    }
    metrics = {
        "task": "instance",
        "init": label,
        "repeats": len(values),
        "splits": {"easy": {k: summary for k in METRIC_KEYS}},
    }
    config = {
        "task": "instance",
        "init": {"label": label, "kind": kind, "path": None},
        "eval": {"seed": 0},
        "data": {"labeled_images": 6, "train_images": 6, "test": {"easy": {"images": 2}}},
    }
    folder.mkdir()
    (folder / "scores.json").write_text(json.dumps(metrics))
    (folder / "config.json").write_text(json.dumps(config))


def test_bad_instance_params_are_named(pidray, tmp_path):
    with pytest.raises(UserError, match="diverged at step 3"):
        instance._check_finite(torch.tensor(float("nan")), 3)
    for item, fragment in (
        ("eval.instance.min_size=500", "eval.instance.min_size"),
        ("eval.instance.anchor_sizes=[8, 16]", "eval.instance.anchor_sizes"),
        ("eval.instance.norm=group", "eval.instance.norm"),
    ):
        args = ["--task", "instance", "--init", "random", "--data", pidray, "--out", tmp_path / "x"]
        result = CliRunner().invoke(cli, [str(a) for a in args] + ["--set", item])
        assert result.exit_code == 2 and fragment in result.output, result.output
