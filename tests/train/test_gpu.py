"""CUDA path: bf16 autocast, channels_last, torch.compile; skipped without a GPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from train.config import AugmentConfig, MonitorConfig, PretrainConfig
from train.export import load_backbone
from train.loop import run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU = PretrainConfig(
    steps=3,
    batch_size=8,
    augment=AugmentConfig(crop=64),
    workers=1,
    queue_size=96,
    shuffle_buffer=16,
    device="cuda",
    monitor=MonitorConfig(holdout=4),  # the default holds out more than tiny shards have
)


@pytest.mark.parametrize("method", ["segloc", "insloc", "moco", "supervised"])
def test_methods_train_on_gpu_in_bf16(method, tiny_shards, tmp_path):
    result = run(GPU, method, tiny_shards, tmp_path)
    assert result.finished
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["final_loss"] > 0
    load_backbone(tmp_path / "backbone.pt", "resnet18")
    if method != "supervised":
        assert result.model.queue.dtype == torch.float32  # the bank stays float32 under autocast


def test_gpu_run_with_compile(tiny_shards, tmp_path):
    result = run(replace(GPU, compile=True), "segloc", tiny_shards, tmp_path)
    assert result.finished and torch.isfinite(torch.tensor(result.metrics["final_loss"]))
    state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in state)  # compile left the exported keys alone


def test_gpu_and_cpu_start_from_the_same_loss(tiny_shards, tmp_path):
    """Same seed, same batch, same augmentation draws: bf16 only perturbs the first loss."""
    cpu = run(replace(GPU, steps=1, device="cpu", workers=0), "segloc", tiny_shards, tmp_path / "c")
    gpu = run(replace(GPU, steps=1, workers=0), "segloc", tiny_shards, tmp_path / "g")
    assert abs(cpu.state.rows[0]["loss"] - gpu.state.rows[0]["loss"]) < 0.3
