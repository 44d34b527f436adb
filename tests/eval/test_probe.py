import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eval import probe
from eval.cli import main as cli
from eval.config import MlpProbeConfig, ProbeConfig, load_eval_config, load_run_params
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
    assert {"metrics.json", "scores.json", "config.json", "confusion.json", "samples.npz"} <= names
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["protocol"] == "probe" and config["features"]["stride"] == 8
    assert config["features"]["channels"] == 128 + 256 + 512  # resnet18 C3 + C4 + C5
    assert config["eval"]["probe"]["epochs"] == 3
    metrics = [json.loads((r / "scores.json").read_text()) for r in runs]
    assert metrics[0]["seeds"] == [0, 1]
    # Deterministic for a seed: two runs give the same confusion matrices, bit for bit.
    conf = [(r / "confusion.json").read_text() for r in runs]
    assert conf[0] == conf[1]
    assert metrics[0]["splits"] == metrics[1]["splits"]


def test_probe_mlp_runs_end_to_end_and_repeats_exactly(
    pidray, tmp_path, tiny_probe_mlp, monkeypatch
):
    """--protocol probe_mlp (over eval.protocol finetune) trains the conv head on flipped and
    turned features, writes the outputs, and two runs with one seed agree bit for bit."""
    heads, turns = [], []
    make_head, dihedral = probe.make_head, probe.dihedral

    def head_spy(channels, classes, cfg, g):
        heads.append(cfg)
        return make_head(channels, classes, cfg, g)

    def dihedral_spy(feats, labels, g):
        turns.append(feats.shape[0])
        return dihedral(feats, labels, g)

    monkeypatch.setattr(probe, "make_head", head_spy)
    monkeypatch.setattr(probe, "dihedral", dihedral_spy)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["--init", "random", "--data", pidray, "--out", out, *_sets(tiny_probe_mlp)]
        result = _run([*args, "--set", "eval.protocol=finetune", "--protocol", "probe_mlp"])
        assert result.exit_code == 0, result.output
        runs.append(out)
    mlp = MlpProbeConfig(repeats=2, epochs=3, batch_size=4, hidden=8, augment=True)
    assert heads == [mlp] * 4  # 2 runs x 2 repeats
    assert len(turns) == 2 * 2 * 3 * 2  # runs x repeats x epochs x ceil(6 scans / 4)
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["protocol"] == "probe_mlp" and config["features"]["channels"] == 896
    assert config["eval"]["probe_mlp"]["hidden"] == 8
    scores_ = [json.loads((r / "scores.json").read_text()) for r in runs]
    assert scores_[0]["seeds"] == [0, 1] and scores_[0]["repeats"] == 2
    overall = scores_[0]["splits"]["overall"]["mIoU"]
    assert overall["mean"] is not None and 0 <= overall["mean"] <= 1
    losses = json.loads((runs[0] / "plots" / "finetune_loss.json").read_text())
    assert len(losses) == 2 * 3 * 2 and all(np.isfinite(r["loss"]) for r in losses)
    conf = [(r / "confusion.json").read_text() for r in runs]
    assert conf[0] == conf[1]
    assert scores_[0]["splits"] == scores_[1]["splits"]
    assert (runs[0] / "metrics.json").read_text() == (runs[1] / "metrics.json").read_text()


def _position_coded(batch: int, grid: int):
    """Features whose channels encode each cell's position (cell id, and a second code of it),
    and class maps at 4x the grid whose every pixel holds the id of the cell it lies in."""
    cells = torch.arange(grid * grid, dtype=torch.float32).reshape(grid, grid)
    feats = torch.stack([cells, 100 + 3 * cells])[None].repeat(batch, 1, 1, 1)
    labels = cells.repeat_interleave(4, 0).repeat_interleave(4, 1).to(torch.uint8)
    return feats, labels[None].repeat(batch, 1, 1)


def test_dihedral_keeps_features_and_labels_aligned():
    """Under each of the square's eight symmetries, every label pixel still lies in the feature
    cell whose code it holds; all eight are drawn, and the channels move together."""
    grid = 4
    feats, labels = _position_coded(64, grid)
    out_f, out_l = probe.dihedral(feats, labels, torch.Generator().manual_seed(0))
    assert out_f.shape == feats.shape and out_l.shape == labels.shape
    assert out_l.dtype == labels.dtype
    seen = set()
    for f, lab in zip(out_f, out_l, strict=True):
        # Each label pixel's feature cell (pixel // 4) carries the label's cell id.
        under = f[0].repeat_interleave(4, 0).repeat_interleave(4, 1)
        assert torch.equal(under, lab.float())
        assert torch.equal(f[1], 100 + 3 * f[0])  # every channel got the same transform
        assert sorted(lab.flatten().tolist()) == sorted(labels[0].flatten().tolist())
        seen.add(tuple(f[0].flatten().int().tolist()))
    # The eight elements of the dihedral group: four turns, each mirrored or not.
    cells = feats[0, 0]
    group = {
        tuple(t.flatten().int().tolist())
        for k in range(4)
        for t in (cells.rot90(k, (-2, -1)), cells.rot90(k, (-2, -1)).flip(-1))
    }
    assert len(group) == 8 and seen == group
    # Drawn from the generator: the same seed gives the same draws, the inputs are untouched.
    again = probe.dihedral(feats, labels, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_f) and torch.equal(again[1], out_l)
    assert torch.equal(feats, _position_coded(64, grid)[0])


def test_dihedral_draws_one_symmetry_per_scan():
    """Scans in a batch are turned independently, each with its own labels."""
    feats, labels = _position_coded(32, 4)
    feats = feats + torch.arange(32.0)[:, None, None, None] * 1000  # tell the scans apart
    out_f, out_l = probe.dihedral(feats, labels, torch.Generator().manual_seed(1))
    kinds = set()
    for i, (f, lab) in enumerate(zip(out_f, out_l, strict=True)):
        cells = f[0] - 1000 * i  # scan i stays at index i
        assert cells.min() >= 0 and cells.max() < 16
        under = cells.repeat_interleave(4, 0).repeat_interleave(4, 1)
        assert torch.equal(under, lab.float())
        kinds.add(tuple(cells.flatten().int().tolist()))
    assert len(kinds) > 1


def test_heads_are_linear_or_a_small_conv_net():
    g = torch.Generator().manual_seed(0)
    linear = probe.make_head(12, 4, ProbeConfig(), g)
    convs = [m for m in linear.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((1, 1), 4)]
    mlp = probe.make_head(12, 4, MlpProbeConfig(hidden=6), g)
    convs = [m for m in mlp.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [
        ((1, 1), 6),
        ((3, 3), 6),
        ((3, 3), 6),
        ((1, 1), 4),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in mlp.modules()) == 2
    assert mlp(torch.randn(2, 12, 5, 5)).shape == (2, 4, 5, 5)
    # Initialised from the generator alone.
    a = probe.make_head(12, 4, MlpProbeConfig(hidden=6), torch.Generator().manual_seed(1))
    b = probe.make_head(12, 4, MlpProbeConfig(hidden=6), torch.Generator().manual_seed(1))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_conv_head_fits_what_a_linear_head_cannot():
    """Labels that are the XOR of two feature channels' signs: no 1x1 conv separates them, the
    probe_mlp head does (with its flips and turns on). A head that fell back to linear fails."""
    classes, side, grid = 2, 32, 8
    rng = np.random.default_rng(0)
    signs = rng.integers(0, 2, size=(24, 2, grid, grid))
    feats = torch.from_numpy((2.0 * signs - 1).astype(np.float32))
    feats = feats + 0.1 * torch.from_numpy(rng.standard_normal(feats.shape).astype(np.float32))
    xor = torch.from_numpy((signs[:, 0] ^ signs[:, 1]).astype(np.uint8))
    labels = xor.repeat_interleave(2, 1).repeat_interleave(2, 2)  # b = side / 2 = 2 x grid
    truths = list(xor.repeat_interleave(4, 1).repeat_interleave(4, 2))  # side = 4 x grid
    train = probe.Features(feats[:16], [(side, side)] * 16, labels=labels[:16])
    test = probe.Features(feats[16:], [(side, side)] * 8, truths=truths[16:])
    probe.standardize(train, [test])
    cpu = torch.device("cpu")
    fitted = {}
    for cfg in (
        ProbeConfig(epochs=30, batch_size=4, lr=0.05),
        MlpProbeConfig(epochs=30, batch_size=4, lr=0.01, hidden=16),
    ):
        head, _ = probe.train_head(train, classes, cfg, seed=0, device=cpu)
        fitted[type(cfg)] = scores(probe.score(head, test, classes, side))["aAcc"]
    assert fitted[ProbeConfig] < 0.8, fitted
    assert fitted[MlpProbeConfig] > 0.9, fitted


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
    head, losses = probe.train_head(train, classes, cfg.probe, seed=0, device=torch.device("cpu"))
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
    head, _ = probe.train_head(train, classes, cfg.probe, seed=0, device=torch.device("cpu"))
    assert scores(probe.score(head, test, classes, side))["mIoU_fg"] < 0.2


def test_bad_protocol_and_unusable_backbones_end_in_one_line(pidray, tmp_path, tiny_probe):
    out = tmp_path / "out"
    base = ["--data", pidray, "--out", out, *_sets(tiny_probe)]
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.protocol=linear"]),
        "params eval.protocol",
        "'linear' is no protocol (expected probe, probe_mlp, finetune or finetune_<N>pct",
    )
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.probe_mlp.hidden=0"]),
        "params eval.probe_mlp.hidden",
    )
    # The linear probe has no hidden layer any more: the old key fails loudly.
    _one_line_error(
        _run(["--init", "random", *base, "--set", "eval.probe.hidden=8"]),
        "--set eval.probe.hidden: unknown key",
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
