"""The `pretrain` command: params resolution, one-line errors with exit code 2, a full run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from train.cli import main, resolve_params
from train.config import load_pretrain_config

TINY_SET = [
    "--set",
    "pretrain.steps=2",
    "--set",
    "pretrain.batch_size=3",
    "--set",
    "pretrain.augment.crop=64",
    "--set",
    "pretrain.workers=0",
    "--set",
    "pretrain.queue_size=48",
    "--set",
    "pretrain.monitor.holdout=4",  # the default holds out more than tiny shards have
]


def _invoke(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)  # no params.yaml here: built-in defaults plus --set
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_run_writes_every_output(tiny_shards, tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = _invoke(
        ["--method", "moco", "--shards", str(tiny_shards), "--out", str(out), *TINY_SET],
        tmp_path,
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    for name in (
        "backbone.pt",
        "backbone.json",
        "checkpoint.pt",
        "config.json",
        "metrics.json",
        "plots/train.tsv",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["pretrain"]["steps"] == 2


@pytest.mark.parametrize(
    ("shards", "extra", "message"),
    [
        ("missing-dir", [], "shards folder not found"),
        (None, ["--set", "pretrain.nope=1"], "unknown key"),
        (None, ["--set", "pretrain.lr=fast"], "pretrain.lr: expected a number"),
        (None, ["--set", "pretrain.steps=null"], "set exactly one"),
        (None, ["--set", "pretrain.monitor.holdout=4", "--resume"], "no checkpoint"),
        (None, [], "pretrain.monitor.holdout: 128 samples held out of the 16"),
        (None, ["--set", "pretrain.monitor.k=0"], "pretrain.monitor.k: expected a positive"),
        (
            None,
            ["--set", "pretrain.queue=single", "--set", "pretrain.positives=class"],
            "pretrain.positives: 'class' needs one queue per class",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(
    shards, extra, message, tiny_shards, tmp_path, monkeypatch
):
    argv = [
        "--method",
        "segloc",
        "--shards",
        shards or str(tiny_shards),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    result = _invoke(argv, tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_params_file_section_over_defaults(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data: {}\npretrain:\n  lr: 0.1\n  augment:\n    crop: 96\n")
    cfg = load_pretrain_config(resolve_params(str(params), ("pretrain.steps=7",)))
    assert (cfg.lr, cfg.augment.crop, cfg.steps, cfg.augment.hflip) == (0.1, 96, 7, 0.5)
    params.write_text("pretrain:\n  lrr: 0.1\n")
    with pytest.raises(Exception, match="pretrain.lrr: unknown key"):
        load_pretrain_config(resolve_params(str(params), ()))
