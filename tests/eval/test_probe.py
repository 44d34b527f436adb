import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eval import probe
from eval.cli import main as cli
from eval.config import load_eval_config, load_run_params
from eval.data import EvalData, load_example, load_sets
from eval.inits import resolve_init
from eval.metrics import scores
from eval.model import build_trunk
from segloc.config import pidray_splits


@pytest.fixture(autouse=True)
def _no_project_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: runs see only what the test gives them


def _run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _sets(options):
    return [x for o in options for x in ("--set", o)]


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in line


def test_probe_writes_the_fine_tune_outputs_and_repeats_exactly(pidray, tmp_path, tiny_probe):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = _run(["--init", "random", "--data", pidray, "--out", out, *_sets(tiny_probe)])
        assert result.exit_code == 0, result.output
        runs.append(out)
    names = {p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("*") if p.is_file()}
    assert {"metrics.json", "config.json", "confusion.json", "samples.npz"} <= names
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["protocol"] == "probe" and config["features"]["stride"] == 8
    assert config["features"]["channels"] == 128 + 256 + 512  # resnet18 C3 + C4 + C5
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0]["seeds"] == [0, 1]
    # Deterministic for a seed: two runs give the same confusion matrices, bit for bit.
    conf = [(r / "confusion.json").read_text() for r in runs]
    assert conf[0] == conf[1]
    assert metrics[0]["splits"] == metrics[1]["splits"]


def test_cached_features_equal_a_fresh_forward_pass(pidray, tmp_path):
    params = load_run_params(None, ["eval.base_size=64"])
    cfg = load_eval_config(params)
    train, tests = pidray_splits(pidray)
    sets = load_sets(EvalData(train, tests))
    trunk = probe.frozen_trunk(resolve_init("random"), cfg, torch.device("cpu"))
    feats = probe.extract(trunk, sets.train, sets.labeled, 64, torch.device("cpu"), labels=True)
    assert feats.feats.shape == (len(sets.labeled), 896, 8, 8)
    assert feats.labels.shape == (len(sets.labeled), 32, 32)  # half the input scale
    for i in (0, len(sets.labeled) - 1):
        rgb, _ = load_example(sets.train, sets.labeled[i])
        x, size = probe.square_input(rgb, 64)
        fresh = probe.features_of(trunk, x[None])[0]
        torch.testing.assert_close(feats.feats[i], fresh, rtol=1e-5, atol=1e-5)
        assert feats.sizes[i] == size
    # The frozen trunk is the init's: a random trunk depends on eval.seed alone.
    other = probe.frozen_trunk(resolve_init("random"), cfg, torch.device("cpu"))
    a, b = trunk.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _blobs(rng: np.random.Generator, n: int, side: int, classes: int) -> np.ndarray:
    """n side x side class maps with a few rectangles of random classes, some pixels ignored."""
    maps = np.zeros((n, side, side), np.uint8)
    for m in maps:
        for _ in range(3):
            y, x = rng.integers(0, side - 6, 2)
            h, w = rng.integers(3, 8, 2)
            m[y : y + h, x : x + w] = rng.integers(1, classes)
    return maps


def test_a_probe_on_one_hot_class_features_fits_them():
    """Features that are the one-hot class map (at the input scale) hold everything: the head
    must reach mIoU >= 99, so a low score elsewhere is the features' doing, not the probe's."""
    classes, side = 5, 32
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(_blobs(rng, 24, side, classes))
    onehot = torch.nn.functional.one_hot(truth.long(), classes).permute(0, 3, 1, 2).float()
    labels = torch.stack([probe.square_labels(t.numpy(), side // probe.LABEL_SCALE) for t in truth])
    train = probe.Features(onehot[:16], [(side, side)] * 16, labels=labels[:16])
    test = probe.Features(onehot[16:], [(side, side)] * 8, truths=list(truth[16:]))
    probe.standardize(train, [test])
    cfg = load_eval_config(
        load_run_params(
            None, ["eval.probe.epochs=60", "eval.probe.batch_size=4", "eval.probe.lr=0.05"]
        )
    )
    head, losses = probe.train_head(train, classes, cfg, seed=0, device=torch.device("cpu"))
    assert losses[-1] < losses[0]
    result = scores(probe.score(head, test, classes, side))
    assert result["mIoU"] >= 0.99, result["mIoU"]


def test_a_probe_on_random_features_finds_nothing():
    """The same labels with features that carry no information: mIoU far below the one-hot run."""
    classes, side = 5, 32
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(_blobs(rng, 24, side, classes))
    noise = torch.from_numpy(rng.standard_normal((24, 8, side, side)).astype(np.float32))
    labels = torch.stack([probe.square_labels(t.numpy(), side // probe.LABEL_SCALE) for t in truth])
    train = probe.Features(noise[:16], [(side, side)] * 16, labels=labels[:16])
    test = probe.Features(noise[16:], [(side, side)] * 8, truths=list(truth[16:]))
    probe.standardize(train, [test])
    cfg = load_eval_config(load_run_params(None, ["eval.probe.epochs=20"]))
    head, _ = probe.train_head(train, classes, cfg, seed=0, device=torch.device("cpu"))
    assert scores(probe.score(head, test, classes, side))["mIoU_fg"] < 0.2


def test_bad_protocol_and_unusable_backbones_end_in_one_line(pidray, tmp_path, tiny_probe):
    out = tmp_path / "out"
    base = ["--data", pidray, "--out", out, *_sets(tiny_probe)]
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.protocol=linear"]),
        "params eval.protocol",
        "'probe', 'finetune'",
    )
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.probe.epochs=0"]),
        "params eval.probe.epochs",
    )
    # A backbone whose weights are NaN: its features cannot be used, and nothing is written.
    trunk = build_trunk("resnet18", torch.Generator().manual_seed(0))
    state = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in trunk.state_dict().items()
    }
    torch.save(state, tmp_path / "nan.pt")
    _one_line_error(_run(["--init", tmp_path / "nan.pt", *base]), "nan.pt", "not finite")
    # A backbone of another architecture.
    torch.save(build_trunk("resnet34", torch.Generator()).state_dict(), tmp_path / "r34.pt")
    _one_line_error(_run(["--init", tmp_path / "r34.pt", *base]), "r34.pt", "do not fit")
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
