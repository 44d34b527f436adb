"""One source of truth: the config dataclasses' defaults are the shipped recipe, and params.yaml
says the same. A run without a params file then trains what `dvc repro` trains."""

from pathlib import Path

import pytest
import yaml

from eval.config import EvalConfig, load_eval_config
from eval.config import load_run_params as eval_run_params
from segloc.config import DataConfig, load_data_config
from segloc.params import from_dict, load_run_params, to_dict
from synth.config import SynthConfig
from train.cli import resolve_params
from train.config import PretrainConfig, load_pretrain_config

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "data": DataConfig,
    "synth": SynthConfig,
    "pretrain": PretrainConfig,
    "eval": EvalConfig,
}


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_params_yaml_equals_the_code_defaults(section):
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))[section]
    code = dict(_leaves(to_dict(SECTIONS[section]())))
    given = dict(_leaves(params))
    assert sorted(given) == sorted(code), f"keys differ in {section}"
    differ = {k: (given[k], code[k]) for k in given if given[k] != code[k]}
    assert differ == {}, f"params.yaml vs code defaults (params, code): {differ}"


def test_runs_without_a_params_file_get_the_shipped_recipe(tmp_path, monkeypatch):
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # no ./params.yaml here
    assert load_pretrain_config(resolve_params(None, ())) == load_pretrain_config(shipped)
    assert load_eval_config(eval_run_params(None, ())) == load_eval_config(shipped)
    synth_sections = {"data": DataConfig, "synth": SynthConfig}
    bare = load_run_params(None, (), synth_sections)
    assert from_dict(SynthConfig, bare["synth"], "synth") == from_dict(
        SynthConfig, shipped["synth"], "synth"
    )
    assert load_data_config(bare) == load_data_config(shipped)


def test_a_given_data_section_is_not_completed_from_the_demo(tmp_path):
    """A PIDray root named alone keeps its own annotations and test splits, not the demo's."""
    root = tmp_path / "pidray"
    (root / "annotations").mkdir(parents=True)
    for name in ("train", "test_easy", "test_hard", "test_hidden"):
        (root / "annotations" / f"xray_{name}.json").write_text("{}")
    path = tmp_path / "params.yaml"
    given = {"foreground": {"images": str(root)}, "background": {"images": "scans"}}
    path.write_text(yaml.safe_dump({"data": given}))
    data = load_data_config(load_run_params(path, (), {"data": DataConfig}))
    assert data.foreground.annotations == str(root / "annotations" / "xray_train.json")
    assert data.test["hidden"].images == str(root / "hidden")
