"""`make paper`: layout checks, the dvc command it builds, and that configs/paper.yaml is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.config import load_eval_config
from segloc import paper
from segloc.config import load_data_config
from segloc.errors import UserError
from segloc.params import apply_override, from_dict, load_params
from synth.config import SynthConfig
from train.config import load_pretrain_config

ROOT = Path(__file__).resolve().parents[2]


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    pidray, sixray = tmp_path / "pidray", tmp_path / "sixray"
    (pidray / "annotations").mkdir(parents=True)
    for split in ("train", "easy", "hard", "hidden"):
        (pidray / split).mkdir()
        name = "xray_train.json" if split == "train" else f"xray_test_{split}.json"
        (pidray / "annotations" / name).write_text("{}")
    (sixray / "JPEGImage").mkdir(parents=True)
    (sixray / "ImageSet" / "10").mkdir(parents=True)
    (sixray / "ImageSet" / "10" / "train.csv").write_text("name,gun\n")
    return pidray, sixray


def test_paper_config_is_valid_for_every_stage():
    """Every override in configs/paper.yaml exists in params.yaml and gives valid configs."""
    params = load_params(ROOT / "params.yaml")
    overrides = paper.config_overrides(ROOT / "configs" / "paper.yaml", ROOT / "params.yaml")
    assert "pretrain.arch=resnet50" in overrides and "eval.arch=resnet50" in overrides
    for item in overrides:
        apply_override(params, item)
    assert from_dict(SynthConfig, params["synth"], "synth").canvas == 256
    pre = load_pretrain_config(params)
    assert pre.steps is None and pre.epochs == 25 and pre.augment.crop == 224
    assert load_eval_config(params).finetune.crop_size == 512


def test_dry_run_prints_the_experiment(tmp_path):
    pidray, sixray = _layout(tmp_path)
    result = CliRunner().invoke(
        paper.main,
        ["--pidray", str(pidray), "--sixray", str(sixray), "--dry-run"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("dvc exp run report ")
    assert f"-S data.foreground.images={pidray.resolve() / 'train'}" in out
    assert f"data.background.labels={sixray.resolve()}/ImageSet/10/train.csv" in out
    assert "-S 'synth.scale=[48.0, 160.0]'" in out and "-S pretrain.steps=null" in out
    # The data overrides it builds load as a data config.
    params = load_params(ROOT / "params.yaml")
    for item in paper.data_overrides(pidray, sixray, None):
        apply_override(params, item)
    data = load_data_config(params)
    assert data.test["hidden"].images == str(pidray.resolve() / "hidden")


def test_missing_folders_and_bad_config_are_named(tmp_path):
    pidray, sixray = _layout(tmp_path)
    (pidray / "annotations" / "xray_test_hard.json").unlink()
    with pytest.raises(UserError, match="xray_test_hard.json: PIDray hard annotations not found"):
        paper.data_overrides(pidray, sixray, None)
    pidray, sixray = _layout(tmp_path / "again")
    (sixray / "ImageSet" / "10" / "train.csv").unlink()
    with pytest.raises(UserError, match="no label CSV .* --sixray-labels"):
        paper.data_overrides(pidray, sixray, None)
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"pretrain": {"stepz": 3}}))
    with pytest.raises(UserError, match="bad.yaml: key pretrain.stepz is not in params.yaml"):
        paper.config_overrides(bad, ROOT / "params.yaml")
    with pytest.raises(UserError, match="missing.yaml: cannot read params file"):
        paper.config_overrides(tmp_path / "missing.yaml", ROOT / "params.yaml")
    bad.write_text("pretrain: [1")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        paper.config_overrides(bad, ROOT / "params.yaml")
    with pytest.raises(UserError, match="missing.yaml: cannot read params file"):
        paper.config_overrides(tmp_path / "missing.yaml", ROOT / "params.yaml")


def _dvc_value(item: str):
    """The value `dvc exp run -S item` sets: dvc reads overrides with Hydra's grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([item])[0].value()


def test_every_override_reads_the_same_in_dvc_and_in_params(tmp_path):
    """Switches with `=` and paths with spaces are quoted, so dvc sets what params.yaml means."""
    overrides = paper.config_overrides(ROOT / "configs" / "paper.yaml", ROOT / "params.yaml")
    assert "arms.supervised.switches='--set pretrain.lr=0.03'" in overrides
    pidray, sixray = _layout(tmp_path / "a folder")
    overrides += paper.data_overrides(pidray, sixray, None)
    params = load_params(ROOT / "params.yaml")  # each item is checked right after it is applied
    for item in overrides:
        key = item.split("=", 1)[0]
        apply_override(params, item)
        expected = params
        for part in key.split("."):
            expected = expected[part]
        assert _dvc_value(item) == expected, item
    assert f"data.foreground.images='{pidray.resolve() / 'train'}'" in overrides


@pytest.mark.parametrize(
    "text", ["true", "tRuE", "null", "1e3", "inf", "12", "on", "resnet50", "a b", "x=1", "it's"]
)
def test_a_string_reads_back_as_the_same_string(text):
    item = f"k={paper._value(text, 'k')}"
    assert _dvc_value(item) == text
    params = {"k": None}
    apply_override(params, item)
    assert params["k"] == text


def test_a_value_dvc_cannot_carry_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"arms": {"supervised": {"switches": 'it\'s "quoted"'}}}))
    with pytest.raises(UserError, match="bad.yaml: key arms.supervised.switches: .*dvc -S"):
        paper.config_overrides(bad, ROOT / "params.yaml")
