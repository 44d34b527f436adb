"""bench/gpu_profile.sh, shrunk to tiny sizes on the CPU: the script and the profile's keys are
proven before a GPU is ever lent."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "data.demo.scale=tiny synth.num_shards=2 synth.samples_per_shard=16 synth.canvas=64 "
    "pretrain.steps=3 pretrain.batch_size=4 pretrain.streams=1 pretrain.workers=1 "
    "pretrain.shuffle_buffer=16 pretrain.monitor.holdout=4 pretrain.monitor.every=0 "
    "pretrain.augment.crop=48 eval.finetune.repeats=2 eval.finetune.steps=2 "
    "eval.finetune.batch_size=2 eval.finetune.crop_size=48 eval.base_size=64 "
    "eval.probe.epochs=2 eval.probe.batch_size=4 eval.probe.repeats=2 eval.probe_mlp.epochs=1 "
    "eval.probe_mlp.batch_size=4 eval.probe_mlp.repeats=2 eval.workers=0 eval.threads=1 "
    "eval.samples_per_split=1"
)


def _run(tmp_path: Path, profile: Path) -> subprocess.CompletedProcess:
    env = os.environ | {
        "OUT": str(tmp_path / "out"),
        "PROFILE": str(profile),
        "EXTRA_SETS": TINY,
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_profile.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_gpu_profile_runs_every_readout_for_every_arm(tmp_path):
    done = _run(tmp_path, ROOT / "configs" / "gpu.yaml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = tmp_path / "out" / "reports" / "gpu"
    doc = json.loads((report / "results.json").read_text())
    inits = {"random", "segloc", "segloc-single", "supervised"}  # the profile's arms + random
    for protocol in ("probe", "probe_mlp", "finetune", "finetune_10pct"):
        assert set(doc[protocol]) == inits, protocol
    assert doc["probe"]["segloc"]["overall"]["fg_miou"]["n"] == 2
    md = (report / "results.md").read_text()
    assert md.startswith("# GPU profile of the embedded default")
    assert "Device: **" in md and "| pretrain@segloc |" in md and "configs/gpu.yaml" in md
    # The workspace is left alone: everything else lives under OUT.
    assert (
        tmp_path / "out" / "work" / "runs" / "pretrain" / "supervised" / "backbone.pt"
    ).is_file()


def test_a_profile_key_missing_from_params_is_refused(tmp_path):
    bad = tmp_path / "gpu.yaml"
    bad.write_text("pretrain:\n  stepz: 10\n")
    done = _run(tmp_path, bad)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "error: " in said and "key pretrain.stepz is not in params.yaml" in said
    assert "Traceback" not in said
    assert not (tmp_path / "out" / "reports" / "gpu").exists()
