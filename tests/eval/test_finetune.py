import json
import re

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from eval import finetune
from eval.cli import main as cli
from eval.config import load_run_params

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_project_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: runs see only what the test gives them


def _run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def _sets_args(tiny):
    return [x for o in tiny for x in ("--set", o)]


def test_fine_tune_writes_every_declared_output(pidray, tmp_path, tiny):
    out = tmp_path / "out"
    result = _run(
        [
            "--init",
            "random",
            "--data",
            pidray,
            "--out",
            out,
            *_sets_args(tiny),
            "--set",
            "eval.save_model=true",
        ]
    )
    assert result.exit_code == 0, result.output
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    splits = ["easy", "hard", "hidden", "overall"]
    assert names == {
        "metrics.json",
        "config.json",
        "confusion.json",
        "samples.npz",
        "model.pt",
        "plots/per_class_iou.json",
        "plots/finetune_loss.json",
        *(f"plots/confusion_{s}.json" for s in splits),
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["repeats"] == 2 and metrics["seeds"] == [0, 1]
    assert sorted(metrics["splits"]) == splits
    for entry in metrics["splits"].values():
        for key in ("mIoU", "mIoU_fg", "mAcc", "aAcc"):
            assert len(entry[key]["values"]) == 2
            assert 0 <= entry[key]["mean"] <= 1 and entry[key]["std"] is not None
        assert set(entry["per_class_iou"]) == {"background", "Baton", "Pliers", "Hammer"}
    config = json.loads((out / "config.json").read_text())
    assert config["eval"]["steps"] == 3 and config["init"]["kind"] == "random"
    # Pooled matrix is the sum of the split matrices.
    conf = json.loads((out / "confusion.json").read_text())
    parts = sum(np.array(conf["matrices"][s]) for s in splits[:3])
    np.testing.assert_array_equal(parts, conf["matrices"]["overall"])
    records = json.loads((out / "plots" / "confusion_easy.json").read_text())
    rows_with_truth = int((np.array(conf["matrices"]["easy"]).sum(axis=1) > 0).sum())
    assert len(records) == 100 * rows_with_truth
    losses = json.loads((out / "plots" / "finetune_loss.json").read_text())
    assert len(losses) == 2 * 3 and all(np.isfinite(r["loss"]) for r in losses)
    samples = np.load(out / "samples.npz")
    assert len(samples["names"]) == 3  # one per split
    assert samples["pred_0"].shape == samples["truth_0"].shape == samples["scan_0"].shape[:2]
    assert set(torch.load(out / "model.pt", weights_only=True)) >= {"backbone.conv1.weight"}


def test_same_seed_same_result(pidray, tmp_path, tiny):
    def matrices(out):
        args = [
            "--init",
            "random",
            "--data",
            pidray,
            "--out",
            out,
            *_sets_args(tiny),
            "--set",
            "eval.repeats=1",
            "--set",
            "eval.steps=2",
        ]
        assert _run(args).exit_code == 0
        return json.loads((out / "confusion.json").read_text())["matrices"]

    before = torch.random.get_rng_state()
    assert matrices(tmp_path / "a") == matrices(tmp_path / "b")
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone


def test_report_renders_both_protocols_and_results_json(pidray, tmp_path, tiny, tiny_probe):
    pre = tmp_path / "pretrain" / "segloc"
    (pre / "plots").mkdir(parents=True)
    state = {
        k: v
        for k, v in torchvision.models.resnet18().state_dict().items()
        if not k.startswith("fc.")
    }
    torch.save(state, pre / "backbone.pt")
    (pre / "backbone.json").write_text(
        json.dumps({"arch": "resnet18", "method": "segloc", "steps": 4, "config": {"lr": 0.03}})
    )
    (pre / "plots" / "train.tsv").write_text(
        "step\tloss\tlr\n" + "".join(f"{i}\t{5 - i * 0.1}\t0.03\n" for i in range(20))
    )
    (pre / "plots" / "monitor.tsv").write_text("step\tknn_acc\n0\t10.0\n10\t30.0\n20\t45.5\n")
    (pre / "metrics.json").write_text(json.dumps({"knn_acc": 45.5, "knn_acc_init": 10.0}))
    for protocol, recipe in (("ft", tiny), ("probe", tiny_probe)):
        for init, name in (("random", "random"), (pre, "segloc")):
            out = tmp_path / protocol / name
            result = _run(["--init", init, "--data", pidray, "--out", out, *_sets_args(recipe)])
            assert result.exit_code == 0, result.output
    result = _run(
        [
            "report",
            "--runs",
            str(tmp_path / "probe" / "*"),
            "--runs",
            str(tmp_path / "ft" / "*"),
            "--pretrain",
            pre,
            "--pretrain",
            tmp_path / "pretrain" / "*",
            "--out",
            tmp_path / "reports",
        ]
    )
    assert result.exit_code == 0, result.output
    md = (tmp_path / "reports" / "results.md").read_text()
    probe_at, finetune_at = md.index("## Frozen-backbone probe"), md.index("## Full fine-tuning")
    assert probe_at < finetune_at  # the default protocol first
    for part in (md[probe_at:finetune_at], md[finetune_at:]):
        assert "| random | 2 |" in part and "| segloc | 2 |" in part
        assert "### Difference to random init" in part
        assert re.search(r"\| segloc \| [+-]\d+\.\d ± \d+\.\d \|", part)
    assert "## Pretraining monitor" in md and "| segloc | 10.0 | 45.5 | – | – |" in md
    pngs = ["miou.png", "per_class_iou.png", "qualitative.png", "pretrain_loss.png", "knn.png"]
    pngs += ["miou_finetune.png", "per_class_iou_finetune.png", "qualitative_finetune.png"]
    for png in pngs:
        assert (tmp_path / "reports" / png).read_bytes().startswith(PNG)
        assert f"]({png})" in md
    doc = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert set(doc) == {"probe", "finetune", "pretrain"}
    assert doc["pretrain"] == {"segloc": {"knn_acc": 45.5}, "random": {"knn_acc": 10.0}}
    for protocol in ("probe", "finetune"):
        assert set(doc[protocol]) == {"random", "segloc"}
        cell = doc[protocol]["segloc"]["overall"]
        assert set(doc[protocol]["segloc"]) == {"easy", "hard", "hidden", "overall"}
        assert cell["fg_miou"]["n"] == 2 and 0 <= cell["miou"]["mean"] <= 100
        # The same numbers as the run's metrics.json, in percent.
        folder = "ft" if protocol == "finetune" else "probe"
        metrics = json.loads((tmp_path / folder / "segloc" / "metrics.json").read_text())
        mean = metrics["splits"]["overall"]["mIoU_fg"]["mean"]
        assert cell["fg_miou"]["mean"] == pytest.approx(100 * mean, abs=1e-3)


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]  # progress bars may come before it
    assert line.startswith("Error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in line


def test_bad_inputs_end_in_one_clear_message(pidray, tmp_path, tiny):
    out = tmp_path / "out"
    base = ["--data", pidray, "--out", out, *_sets_args(tiny)]
    _one_line_error(
        _run(["--init", f"imagenet:{tmp_path / 'r18.pth'}", *base]),
        "r18.pth: ImageNet weights file not found",
        "never downloads",
    )
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.stepz=3"]), "--set eval.stepz: unknown key"
    )
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.repeats=0"]),
        "params eval.repeats: expected a positive number",
    )
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.cat_max_ratio=1.5"]),
        "params eval.cat_max_ratio: expected 0 < ratio <= 1",
    )
    _one_line_error(_run(["--init", "random", "--out", out]), "--data")
    _one_line_error(_run(["--init", "random"]), "--init and --out are required")
    _one_line_error(_run(["report", "--runs", str(tmp_path / "none*")]), "matches nothing")
    # A corrupt test image is found before training, and nothing is written.
    (pidray / "hard" / "hard_001.png").write_bytes(b"garbage")
    _one_line_error(_run(["--init", "random", *base]), "hard_001.png: cannot decode image")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    (pidray / "annotations" / "xray_test_hidden.json").unlink()
    _one_line_error(_run(["--init", "random", *base]), "xray_test_hidden.json", "not found")


def test_params_file_and_overrides(pidray, tmp_path, tiny):
    (tmp_path / "params.yaml").write_text("eval:\n  steps: 2\n  repeats: 1\n")
    params = load_run_params(None, ["eval.head=deeplabv3"])
    assert params["eval"]["steps"] == 2 and params["eval"]["head"] == "deeplabv3"
    assert params["eval"]["crop_size"] == 96  # defaults fill the rest


def test_batched_prediction_equals_one_scan_at_a_time():
    """Scans are padded to a base_size square each, so a batch changes no prediction."""
    from eval.config import EvalConfig
    from eval.model import build_model
    from segloc.dist import DistEnv

    model = build_model("resnet18", "fcn", 4, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a trained-looking head, so the argmax is not constant
        model.classifier[-1].weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    cfg = EvalConfig(base_size=64, amp=False)
    env = DistEnv(rank=0, world=1, local_world=1, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    scans = [
        rng.integers(0, 256, size=s + (3,), dtype=np.uint8) for s in [(90, 40), (50, 70), (64, 64)]
    ]
    batched = finetune.predict_batch(model, scans, cfg, env)
    for scan, pred in zip(scans, batched, strict=True):
        assert pred.shape == scan.shape[:2]
        alone = finetune.predict(model, scan, cfg, env)
        # Equal up to float rounding of differently batched convolutions (argmax ties only).
        assert (pred == alone).float().mean() > 0.999
    assert len(torch.unique(torch.cat([p.flatten() for p in batched]))) > 1


def test_fused_head_with_adamw_trains_with_adam_state(pidray, tmp_path, tiny, monkeypatch):
    """eval.optimizer adamw takes effect (Adam moments in the optimizer) and the fused head runs
    the whole protocol; the losses it logs are finite."""
    made = []
    real = torch.optim.AdamW

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    out = tmp_path / "fused"
    sets = ["eval.head=fused", "eval.optimizer=adamw", "eval.lr=0.001", "eval.repeats=1"]
    result = _run(["--init", "random", "--data", pidray, "--out", out, *_sets_args([*tiny, *sets])])
    assert result.exit_code == 0, result.output
    assert len(made) == 1 and all("exp_avg" in s for s in made[0].state.values())
    assert made[0].state  # stepped
    losses = json.loads((out / "plots" / "finetune_loss.json").read_text())
    assert len(losses) == 3 and all(np.isfinite(r["loss"]) for r in losses)
    assert json.loads((out / "config.json").read_text())["eval"]["head"] == "fused"
