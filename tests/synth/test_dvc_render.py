"""The project's own dvc.yaml, run for its first two stages on tiny data."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.launch import dvc as run_dvc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_render_stage_runs_with_background_labels_null(tmp_path):
    """`data.background.labels: null` (no label CSV: positives told by file name) must not break
    `dvc repro`, whose dvc.yaml is templated from params.yaml."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["demo"]["scale"] = "tiny"
    params["data"]["background"]["labels"] = None
    params["synth"] |= {"num_shards": 2, "samples_per_shard": 8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("segloc", "synth"):  # the stage's code deps, as they are in the project
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))

    def dvc(*args):
        return run_dvc(tmp_path, *args, timeout=300)

    assert dvc("init", "--no-scm").returncode == 0
    done = dvc("repro", "render")
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((tmp_path / "data" / "shards" / "manifest.json").read_text())
    assert (
        manifest["num_samples"] == 16 and manifest["params"]["data"]["background"]["labels"] is None
    )
    assert len(list((tmp_path / "data" / "shards").glob("train-*.tar"))) == 2
    again = dvc("repro", "render")
    assert again.returncode == 0 and "didn't change" in again.stdout + again.stderr
