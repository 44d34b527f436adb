"""tools/queue_probe.py: the arithmetic on planted embeddings, and a run end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from segloc.errors import UserError
from tools.queue_probe import encode_pairs, load_run, probe
from train.config import AugmentConfig, MonitorConfig, PretrainConfig
from train.data import open_shards
from train.loop import run

from .conftest import write_shards

CLASSES, DIM, KEYS = 3, 16, 8


def _pretrain(shards: Path, out: Path, steps: int) -> None:
    """A tiny segloc pretraining run into `out`."""
    cfg = PretrainConfig(
        steps=steps,
        batch_size=4,
        augment=AugmentConfig(crop=64),
        workers=0,
        queue_size=96,
        monitor=MonitorConfig(holdout=4),  # the default holds out more than tiny shards have
    )
    run(replace(cfg, shuffle_buffer=16), "segloc", shards, out)


def _model_with(queue: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(queue=queue)


def test_content_embeddings_beat_chance_on_the_fresh_bank():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat(40)
    q = F.normalize(torch.randn(len(labels), DIM, generator=g), dim=1)
    k = q.clone()  # each key matches its own query, and only it
    stale = F.normalize(torch.randn(CLASSES, DIM, KEYS, generator=g), dim=1)
    out = probe(_model_with(stale), q, k, labels, temperature=0.2)
    assert out["pos_sim"] == pytest.approx(1.0)
    assert out["fresh"]["loss"] < 0.5 * out["chance_loss"]
    assert out["fresh"]["neg_sim"] < 0.3


def test_collapsed_embeddings_score_chance_on_the_fresh_bank():
    labels = torch.arange(CLASSES).repeat(40)
    q = F.normalize(torch.ones(len(labels), DIM), dim=1)  # every embedding the same
    stale = F.normalize(-torch.ones(CLASSES, DIM, KEYS), dim=1)  # old keys point the other way
    out = probe(_model_with(stale), q, q.clone(), labels, temperature=0.2)
    negatives = (CLASSES - 1) * out["keys_per_queue"]
    assert out["chance_loss"] == pytest.approx(math.log(negatives + 1))
    assert out["fresh"]["loss"] == pytest.approx(out["chance_loss"], abs=1e-4)
    assert out["fresh"]["neg_sim"] == pytest.approx(out["pos_sim"])
    assert out["stale"]["loss"] < 0.01 and out["stale"]["neg_sim"] == pytest.approx(-1.0)


def test_a_queue_without_fresh_keys_is_refused():
    labels = torch.zeros(10, dtype=torch.long)  # class 1 and 2 never appear
    q = F.normalize(torch.randn(10, DIM), dim=1)
    with pytest.raises(UserError, match="--batches"):
        probe(_model_with(torch.randn(CLASSES, DIM, KEYS)), q, q, labels, 0.2)


def test_probe_runs_on_a_pretraining_run(tiny_shards, tmp_path):
    _pretrain(tiny_shards, tmp_path, steps=2)
    shards = open_shards(tiny_shards)
    model, cfg, preset, step = load_run(tmp_path, shards)
    assert step == 2 and model.queue.shape[0] == len(shards.classes)
    q, k, labels = encode_pairs(model, cfg, preset, shards, batches=4)
    assert q.shape == k.shape and len(labels) == q.shape[0]
    assert torch.allclose(q.norm(dim=1), torch.ones(len(q)), atol=1e-4)


def test_a_folder_that_is_not_a_run_is_named(tiny_shards, tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        load_run(tmp_path, open_shards(tiny_shards))


def test_a_run_whose_config_lacks_its_method_is_named(tiny_shards, tmp_path):
    _pretrain(tiny_shards, tmp_path, steps=1)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["method"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"{tmp_path}: not a pretraining run folder"):
        load_run(tmp_path, open_shards(tiny_shards))


def test_shards_with_other_classes_are_refused_by_name(tiny_shards, tmp_path):
    _pretrain(tiny_shards, tmp_path / "run", steps=1)
    other = write_shards(tmp_path / "other", num_classes=2)
    with pytest.raises(UserError, match="2 classes"):
        load_run(tmp_path / "run", open_shards(other))
