"""End-to-end runs on tiny shards: every method, exact resume, interruption, divergence, export."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

import train.moco
import train.step
from eval.inits import resolve_init
from segloc.errors import UserError
from train.config import AugmentConfig, MonitorConfig, PretrainConfig
from train.export import load_backbone, torchvision_backbone
from train.loop import Interrupted, run

TINY = PretrainConfig(
    steps=4,
    batch_size=4,
    augment=AugmentConfig(crop=64),
    workers=0,
    queue_size=96,
    checkpoint_every=2,
    shuffle_buffer=16,
    lr=0.5,
    monitor=MonitorConfig(every=2, holdout=4),  # the default holds out more than tiny shards have
)


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["segloc", "insloc", "moco", "supervised"])
def test_each_method_trains_and_exports(method, tiny_shards, tmp_path):
    result = run(replace(TINY, steps=2), method, tiny_shards, tmp_path)
    assert result.finished and result.state.step == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["steps"] == 2 and stats["skipped_samples"] == 0
    assert metrics["samples_per_s"] > 0 and metrics["final_loss"] > 0
    headline = {k: v for k, v in metrics.items() if k != "versions"}
    assert len(headline) <= 12 and headline.items() <= stats.items()  # taken from the whole
    rows = (tmp_path / "plots" / "train.tsv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("step\tloss\tlr")
    if method == "segloc":  # one fill column per class
        assert {"fill_Baton", "fill_Pliers", "fill_Hammer"} <= set(rows[0].split("\t"))
    card = json.loads((tmp_path / "backbone.json").read_text())
    assert card["method"] == method and card["arch"] == "resnet18" and card["steps"] == 2
    assert card["label"] == method  # the preset's own switches: the label is the method
    assert len(card["shards"]["sha256"]) == 64
    assert (tmp_path / "config.json").is_file() and (tmp_path / "checkpoint.pt").is_file()
    load_backbone(tmp_path / "backbone.pt", "resnet18")  # strict load or UserError


def test_an_ablation_is_labeled_by_its_switches(tiny_shards, tmp_path):
    run(replace(TINY, steps=1, queue="single"), "segloc", tiny_shards, tmp_path)
    card = json.loads((tmp_path / "backbone.json").read_text())
    assert card["method"] == "segloc" and card["label"] == "segloc (mask, single queue)"
    assert resolve_init(str(tmp_path)).label == "segloc (mask, single queue)"


def test_backbone_keys_are_torchvision_minus_fc(tiny_shards, tmp_path):
    run(replace(TINY, steps=1), "segloc", tiny_shards, tmp_path)
    state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    expect = set(torchvision_backbone("resnet18").state_dict())
    assert set(state) == expect and "fc.weight" not in state
    net = torchvision_backbone("resnet18")
    net.load_state_dict(state, strict=True)


def test_resume_gives_the_same_weights_as_one_run(tiny_shards, tmp_path):
    cfg = replace(TINY, steps=4, epochs=None)
    whole = run(cfg, "segloc", tiny_shards, tmp_path / "whole")
    half = run(cfg, "segloc", tiny_shards, tmp_path / "split", stop_at=2)
    assert not half.finished and half.state.step == 2
    resumed = run(cfg, "segloc", tiny_shards, tmp_path / "split", resume=True)
    assert resumed.finished and resumed.state.step == 4
    assert _weights_equal(whole.model.state_dict(), resumed.model.state_dict())  # queues included
    a = torch.load(tmp_path / "whole" / "backbone.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "backbone.pt", weights_only=True)
    assert _weights_equal(a, b)
    tsv = (tmp_path / "split" / "plots" / "train.tsv").read_text()
    assert tsv == (tmp_path / "whole" / "plots" / "train.tsv").read_text()


def test_sigterm_checkpoints_and_resume_matches(tiny_shards, tmp_path, monkeypatch):
    cfg = replace(TINY, steps=3, checkpoint_every=100, workers=1)
    whole = run(cfg, "insloc", tiny_shards, tmp_path / "whole")
    real_step = train.step.train_step

    def step_then_signal(model, opt, batch, step, ctx):
        out = real_step(model, opt, batch, step, ctx)
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run, as from a scheduler
        return out

    monkeypatch.setattr("train.loop.train_step", step_then_signal)
    with pytest.raises(Interrupted, match="interrupted at step 1"):
        run(cfg, "insloc", tiny_shards, tmp_path / "split")
    monkeypatch.undo()
    resumed = run(cfg, "insloc", tiny_shards, tmp_path / "split", resume=True)
    assert _weights_equal(whole.model.state_dict(), resumed.model.state_dict())


def test_non_finite_loss_stops_with_a_clear_message(tiny_shards, tmp_path, monkeypatch):
    real = train.moco.class_queue_infonce

    def nan_at_step_three(q, k, labels, queue, temperature):
        loss = real(q, k, labels, queue, temperature)
        nan_at_step_three.calls += 1
        return loss * float("nan") if nan_at_step_three.calls == 3 else loss

    nan_at_step_three.calls = 0
    monkeypatch.setattr("train.moco.class_queue_infonce", nan_at_step_three)
    with pytest.raises(UserError, match="loss is nan at step 2.*last good checkpoint"):
        run(replace(TINY, checkpoint_every=1), "segloc", tiny_shards, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_resume_refuses_other_params_and_missing_checkpoint(tiny_shards, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        run(TINY, "segloc", tiny_shards, tmp_path, resume=True)
    run(TINY, "segloc", tiny_shards, tmp_path, stop_at=1)
    with pytest.raises(UserError, match="pretrain.temperature"):
        run(replace(TINY, temperature=0.5), "segloc", tiny_shards, tmp_path, resume=True)
    with pytest.raises(UserError, match="method 'segloc', not 'insloc'"):
        run(TINY, "insloc", tiny_shards, tmp_path, resume=True)
