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
from eval.report import protocol_title
from segloc.errors import UserError
from segloc.splits import labeled_subset

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _no_project_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: runs see only what the test gives them


def _run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def _sets_args(tiny):
    return [x for o in tiny for x in ("--set", o)]


def _leaves(node):
    """Scalar leaves of a JSON document."""
    if isinstance(node, dict):
        return [leaf for v in node.values() for leaf in _leaves(v)]
    if isinstance(node, list):
        return [leaf for v in node for leaf in _leaves(v)]
    return [node]


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
        "scores.json",
        "config.json",
        "confusion.json",
        "samples.npz",
        "model.pt",
        "plots/per_class_iou.json",
        "plots/finetune_loss.json",
        *(f"plots/confusion_{s}.json" for s in splits),
    }
    scores = json.loads((out / "scores.json").read_text())
    assert scores["repeats"] == 2 and scores["seeds"] == [0, 1]
    assert sorted(scores["splits"]) == splits
    for entry in scores["splits"].values():
        for key in ("mIoU", "mIoU_fg", "mAcc", "aAcc"):
            assert len(entry[key]["values"]) == 2
            assert 0 <= entry[key]["mean"] <= 1 and entry[key]["std"] is not None
        assert set(entry["per_class_iou"]) == {"background", "Baton", "Pliers", "Hammer"}
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "finetune" and config["init"]["kind"] == "random"
    assert config["eval"]["finetune"]["steps"] == 3 and config["eval"]["finetune"]["head"] == "fcn"
    assert config["data"]["labeled_images"] == config["data"]["train_images"] == 6
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


def test_metrics_json_is_the_headline_and_scores_json_the_full_document(pidray, tmp_path, tiny):
    """`dvc metrics show` reads metrics.json: a few percentages and the library versions, the
    same numbers as scores.json's means; scores.json keeps every split and summary."""
    out = tmp_path / "out"
    args = ["--init", "random", "--data", pidray, "--out", out, *_sets_args(tiny)]
    result = _run([*args, "--set", "eval.finetune.steps=1"])
    assert result.exit_code == 0, result.output
    head = json.loads((out / "metrics.json").read_text())
    full = json.loads((out / "scores.json").read_text())
    assert set(head) == {"fg_miou", "miou", "versions"}
    scalars = _leaves({k: v for k, v in head.items() if k != "versions"})
    assert 0 < len(scalars) <= 12
    assert all(isinstance(v, float) for v in scalars)
    assert set(head["fg_miou"]) == {"easy", "hard", "hidden", "overall"} and set(head["miou"]) == {
        "overall"
    }
    for split, value in head["fg_miou"].items():
        assert value == round(100 * full["splits"][split]["mIoU_fg"]["mean"], 2)
    assert head["miou"]["overall"] == round(100 * full["splits"]["overall"]["mIoU"]["mean"], 2)
    versions = head["versions"]
    assert isinstance(versions, list) and versions[0].startswith("python==")
    assert {v.split("==")[0] for v in versions} >= {"numpy", "torch", "torchvision"}
    assert all(isinstance(v, str) and "==" in v for v in versions)
    # The full document: every split with every summary over the repeats, and no versions.
    assert "versions" not in full and full["repeats"] == 2
    assert sorted(full["splits"]) == ["easy", "hard", "hidden", "overall"]
    for entry in full["splits"].values():
        assert set(entry) == {"mIoU", "mIoU_fg", "mAcc", "aAcc", "per_class_iou"}
        assert all(set(entry[k]) == {"mean", "std", "values"} for k in ("mIoU", "mAcc"))
    assert len(_leaves(full)) > 5 * len(scalars)


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
            "eval.finetune.repeats=1",
            "--set",
            "eval.finetune.steps=2",
        ]
        assert _run(args).exit_code == 0
        return json.loads((out / "confusion.json").read_text())["matrices"]

    before = torch.random.get_rng_state()
    assert matrices(tmp_path / "a") == matrices(tmp_path / "b")
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone


def test_report_renders_every_read_out_and_results_json(
    pidray, tmp_path, tiny, tiny_probe, tiny_probe_mlp
):
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
    # probe and finetune through eval.protocol, probe_mlp through --protocol.
    recipes = {
        "finetune": _sets_args(tiny),
        "probe": _sets_args(tiny_probe),
        "probe_mlp": [*_sets_args(tiny_probe_mlp), "--protocol", "probe_mlp"],
    }
    for protocol, recipe in recipes.items():
        for init, name in (("random", "random"), (pre, "segloc")):
            out = tmp_path / "eval" / name / protocol
            result = _run(["--init", init, "--data", pidray, "--out", out, *recipe])
            assert result.exit_code == 0, result.output
            assert json.loads((out / "config.json").read_text())["protocol"] == protocol
    result = _run(
        [
            "report",
            "--runs",
            str(tmp_path / "eval" / "*" / "probe*"),
            "--runs",
            str(tmp_path / "eval" / "*" / "*"),
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
    # Every read-out side by side first, then one section per read-out in a fixed order.
    at = [md.index("## Every read-out side by side")]
    at += [md.index(f"## {protocol_title(p)}\n") for p in ("probe", "probe_mlp", "finetune")]
    assert at == sorted(at)
    side = md[at[0] : at[1]]
    assert "| init | probe | probe_mlp | finetune | beats random under every read-out |" in side
    assert re.search(r"\| random \| (\d+\.\d ± \d+\.\d \(n=2\) \| ){3}– \|", side)
    cell = r"\d+\.\d ± \d+\.\d \(n=2\), [+-]\d+\.\d ± \d+\.\d"
    assert re.search(rf"\| segloc \| ({cell} \| ){{3}}(no|\*\*yes\*\*) \|", side)
    for start, end in zip(at[1:], [*at[2:], len(md)], strict=True):
        part = md[start:end]
        assert "| random | 2 |" in part and "| segloc | 2 |" in part
        assert "### Difference to random init" in part
        assert re.search(r"\| segloc \| [+-]\d+\.\d ± \d+\.\d \|", part)
    assert "## Pretraining monitor" in md and "| segloc | 10.0 | 45.5 | – | – |" in md
    # A fixed set of figures, whatever the read-outs.
    pngs = ["miou.png", "per_class_iou.png", "qualitative.png", "pretrain_loss.png", "knn.png"]
    for png in pngs:
        assert (tmp_path / "reports" / png).read_bytes().startswith(PNG)
        assert f"]({png})" in md
    assert sorted(p.name for p in (tmp_path / "reports").glob("*.png")) == sorted(pngs)
    doc = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert set(doc) == {"probe", "probe_mlp", "finetune", "pretrain"}
    assert doc["pretrain"] == {"segloc": {"knn_acc": 45.5}, "random": {"knn_acc": 10.0}}
    for protocol in ("probe", "probe_mlp", "finetune"):
        assert set(doc[protocol]) == {"random", "segloc"}
        cell = doc[protocol]["segloc"]["overall"]
        assert set(doc[protocol]["segloc"]) == {"easy", "hard", "hidden", "overall"}
        assert cell["fg_miou"]["n"] == 2 and 0 <= cell["miou"]["mean"] <= 100
        # The same numbers as the run's scores.json (and its headline), in percent.
        run = tmp_path / "eval" / "segloc" / protocol
        scores = json.loads((run / "scores.json").read_text())
        mean = scores["splits"]["overall"]["mIoU_fg"]["mean"]
        assert cell["fg_miou"]["mean"] == pytest.approx(100 * mean, abs=1e-3)
        head = json.loads((run / "metrics.json").read_text())
        assert head["fg_miou"]["overall"] == pytest.approx(cell["fg_miou"]["mean"], abs=0.01)


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
    random = ["--init", "random", *base]
    for extra, fragments in (
        (["--set", "eval.finetune.stepz=3"], ["--set eval.finetune.stepz: unknown key"]),
        # The recipe's keys moved under eval.finetune: the old top-level ones fail loudly.
        (["--set", "eval.steps=3"], ["--set eval.steps: unknown key"]),
        (
            ["--set", "eval.finetune.repeats=0"],
            ["params eval.finetune.repeats: expected a positive number"],
        ),
        (
            ["--set", "eval.finetune.cat_max_ratio=1.5"],
            ["params eval.finetune.cat_max_ratio: expected 0 < ratio <= 1"],
        ),
        (["--protocol", "finetune_10"], ["--protocol", "'finetune_10' is no protocol"]),
        (
            ["--set", "eval.finetune_protocols=[probe]"],
            ["params eval.finetune_protocols[0]", "not a fine-tuning protocol"],
        ),
    ):
        _one_line_error(_run([*random, *extra]), *fragments)
    # No --data and no params file: the embedded demo's paths, which are not here.
    _one_line_error(_run(["--init", "random", "--out", out]), "data/demo/pidray")
    _one_line_error(_run(["--init", "random"]), "--init and --out are required")
    _one_line_error(
        _run(["--task", "instance", "--init", "random", "--out", out, "--protocol", "probe"]),
        "--protocol: the instance task has its own recipe",
    )
    _one_line_error(
        _run(["--protocol", "probe", "report", "--runs", str(tmp_path)]),
        "go without a subcommand",
    )
    _one_line_error(_run(["report", "--runs", str(tmp_path / "none*")]), "matches nothing")
    # A corrupt test image is found before training, and nothing is written.
    (pidray / "hard" / "hard_001.png").write_bytes(b"garbage")
    _one_line_error(_run(["--init", "random", *base]), "hard_001.png: cannot decode image")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    (pidray / "annotations" / "xray_test_hidden.json").unlink()
    _one_line_error(_run(["--init", "random", *base]), "xray_test_hidden.json", "not found")


def test_params_file_and_overrides(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "eval:\n  seed: 3\n  finetune:\n    steps: 2\n    repeats: 1\n"
    )
    params = load_run_params(None, ["eval.finetune.head=deeplabv3", "eval.probe_mlp.hidden=8"])
    ft = params["eval"]["finetune"]
    assert (ft["steps"], ft["repeats"], ft["head"]) == (2, 1, "deeplabv3")
    assert params["eval"]["seed"] == 3
    # Code defaults fill the rest, key by key inside a sub-section too.
    assert ft["crop_size"] == 80 and ft["optimizer"] == "adamw"
    assert params["eval"]["probe_mlp"]["hidden"] == 8 and params["eval"]["probe"]["repeats"] == 2
    assert params["data"]["label_fraction"] == 1.0  # no data section: the demo's


def test_without_a_params_file_sections_fall_back_to_their_defaults(tmp_path):
    params = load_run_params(None, ["data.label_fraction=0.5"])
    assert params["data"]["foreground"] == {
        "images": "data/demo/pidray/train",
        "annotations": "data/demo/pidray/annotations/xray_train.json",
    }
    assert sorted(params["data"]["test"]) == ["easy", "hard", "hidden"]
    assert params["data"]["label_fraction"] == 0.5
    assert params["eval"]["protocol"] == "probe"
    assert params["eval"]["finetune_protocols"] == ["finetune", "finetune_10pct"]
    # An explicit file that is not there is an error, not the defaults.
    with pytest.raises(UserError, match="cannot read params file"):
        load_run_params(tmp_path / "missing.yaml", [])


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
    """eval.finetune.optimizer adamw takes effect (Adam moments in the optimizer) and the fused
    head runs the whole protocol; the losses it logs are finite."""
    made = []
    real = torch.optim.AdamW

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    out = tmp_path / "fused"
    sets = [
        "eval.finetune.head=fused",
        "eval.finetune.optimizer=adamw",
        "eval.finetune.lr=0.001",
        "eval.finetune.repeats=1",
    ]
    result = _run(["--init", "random", "--data", pidray, "--out", out, *_sets_args([*tiny, *sets])])
    assert result.exit_code == 0, result.output
    assert len(made) == 1 and all("exp_avg" in s for s in made[0].state.values())
    assert made[0].state  # stepped
    losses = json.loads((out / "plots" / "finetune_loss.json").read_text())
    assert len(losses) == 3 and all(np.isfinite(r["loss"]) for r in losses)
    assert json.loads((out / "config.json").read_text())["eval"]["finetune"]["head"] == "fused"


def test_low_label_protocol_trains_on_the_nested_share(pidray, tmp_path, tiny, monkeypatch):
    """finetune_50pct trains on half the train split: the images data.label_fraction 0.5 would
    keep, a subset of those the full labeled split keeps (0.8 here), and says so in config.json."""
    seen = []
    real = finetune.TrainDraws

    def spy(sets, *args, **kwargs):
        seen.append([im.id for im in sets.labeled])
        return real(sets, *args, **kwargs)

    monkeypatch.setattr(finetune, "TrainDraws", spy)
    out = tmp_path / "ft50"
    sets = ["eval.finetune.repeats=1", "eval.finetune.steps=1", "data.label_fraction=0.8"]
    args = ["--init", "random", "--data", pidray, "--out", out, *_sets_args([*tiny, *sets])]
    result = _run([*args, "--protocol", "finetune_50pct"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "finetune_50pct"
    assert (config["data"]["labeled_images"], config["data"]["train_images"]) == (3, 6)
    ids = list(range(1, 7))
    assert seen == [labeled_subset(ids, 0.5, 0)]
    assert set(seen[0]) < set(labeled_subset(ids, 0.8, 0))
    assert json.loads((out / "scores.json").read_text())["repeats"] == 1
    # More than data.label_fraction keeps: one line, before anything is trained or written.
    seen.clear()
    low = tmp_path / "ft90"
    result = _run([*args[:5], low, *args[6:], "--protocol", "finetune_90pct"])
    _one_line_error(result, "finetune_90pct", "data.label_fraction 0.8")
    assert seen == [] and not low.exists()
