"""The pretraining monitor: hold-out choice and exclusion, kNN against a naive reference, the
fresh-bank probe with uneven queues, and that measuring never changes training."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import train.data
from segloc.dense import fuse_stride8
from segloc.errors import UserError
from segloc.params import from_dict
from segloc.schedule import scaled_lr
from train.augment import normalise
from train.config import (
    METHODS,
    MonitorConfig,
    PretrainConfig,
    check_config,
    resolve_preset,
    run_label,
)
from train.data import StreamSpec, _ReadGuard, open_shards, raw_samples
from train.loop import build_model, run
from train.monitor import (
    Monitor,
    TooFewPairs,
    embed_instances,
    fresh_bank_probe,
    knn_accuracy,
    load_holdout,
)
from train.step import StepContext

from .test_pretrain_run import TINY, _weights_equal

# ---------------------------------------------------------------- hold-out


def test_holdout_is_the_tail_of_the_last_shards(tiny_shards, shard_writer, tmp_path):
    shards = open_shards(tiny_shards)  # 2 shards x 8 samples, keys s00000000..s00000015
    four = load_holdout(shards, 4)
    assert four.keys == {(shards.urls[1], f"s{i:08d}") for i in range(12, 16)}
    assert four.skipped == 0 and four.batch["img0"].shape[0] == 4
    assert four.batch["masks0"].shape[0] == four.batch["inst_cls"].shape[0] > 0
    three = open_shards(shard_writer.write_shards(tmp_path, num_shards=3, per_shard=4))
    six = load_holdout(three, 6)  # spills over into the end of the shard before the last
    assert six.keys == {(three.urls[2], f"s{i:08d}") for i in range(8, 12)} | {
        (three.urls[1], f"s{i:08d}") for i in (6, 7)
    }


def test_a_holdout_of_more_than_half_the_samples_is_refused(tiny_shards):
    with pytest.raises(UserError, match="pretrain.monitor.holdout: 9 samples held out of the 16"):
        load_holdout(open_shards(tiny_shards), 9)


def _keys(spec: StreamSpec, stream: int, n: int) -> list[str]:
    raws = raw_samples(spec, stream, _ReadGuard(len(spec.urls)))
    return [next(raws)["__key__"] for _ in range(n)]


@pytest.mark.parametrize("stream", [0, 1])
def test_the_stream_skips_the_holdout_and_nothing_else(tiny_shards, stream):
    shards = open_shards(tiny_shards)
    held = load_holdout(shards, 8).keys  # the whole second shard
    base = StreamSpec(
        shards.urls, shards.canvas, 3, train.data.Needs(2, True, False), 4, 1, 0, 0, 0, 9, 0, 2
    )
    # A buffer of one keeps read order, so the two streams can be compared sample by sample.
    plain = _keys(base, stream, 200)
    kept = _keys(replace(base, exclude=held), stream, 30)
    assert {k for _, k in held} & set(plain)  # the test can fail: they were there to skip
    assert not {k for _, k in held} & set(kept)
    assert kept == [k for k in plain if (shards.urls[1], k) not in held][:30]


def test_a_run_never_trains_on_held_out_samples(tiny_shards, tmp_path, monkeypatch):
    decoded = []
    real = train.data.decode_sample

    def spy(raw, *args):
        decoded.append(raw["__key__"])
        return real(raw, *args)

    monkeypatch.setattr("train.data.decode_sample", spy)  # the stream's decoder, not the hold-out's
    cfg = replace(TINY, steps=4, monitor=MonitorConfig(every=0, holdout=8))
    result = run(cfg, "segloc", tiny_shards, tmp_path)
    assert len(decoded) == 4 * cfg.batch_size
    assert not set(decoded) & {f"s{i:08d}" for i in range(8, 16)}
    assert result.metrics["knn_acc"] >= 0


# ---------------------------------------------------------------- kNN


def naive_knn(emb, labels, k, num_classes, t=0.1):
    """One row at a time: sort the others by (-similarity, index), vote, lowest class on ties."""
    hits = 0
    for i in range(emb.shape[0]):
        others = [j for j in range(emb.shape[0]) if j != i]
        sims = {j: float(emb[i] @ emb[j]) for j in others}
        near = sorted(others, key=lambda j: (-sims[j], j))[:k]
        votes = [0.0] * num_classes
        for j in near:
            votes[int(labels[j])] += math.exp(sims[j] / t)
        hits += max(range(num_classes), key=lambda c: (votes[c], -c)) == int(labels[i])
    return 100.0 * hits / emb.shape[0]


@pytest.mark.parametrize("seed", range(4))
def test_knn_matches_a_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (40,), generator=g)
    centres = torch.randn(4, 8, generator=g, dtype=torch.float64)
    emb = F.normalize(centres[labels] + torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    for k in (1, 5, 60):  # 60 > N - 1: every other row votes
        assert knn_accuracy(emb, labels, k, 4) == pytest.approx(naive_knn(emb, labels, k, 4))


def test_knn_ties_are_broken_by_index_then_class():
    emb = F.normalize(torch.ones(4, 3, dtype=torch.float64), dim=1)  # all similarities equal
    labels = torch.tensor([1, 0, 1, 0])
    # k = 1: the nearest other is the lowest index: rows 0 -> 1, 1 -> 0, 2 -> 0, 3 -> 0.
    assert knn_accuracy(emb, labels, 1, 2) == 25.0 == naive_knn(emb, labels, 1, 2)
    # k = 3: one-one or two-one votes; the tie at row 0 and 2 goes to class 0.
    assert knn_accuracy(emb, labels, 3, 2) == naive_knn(emb, labels, 3, 2)


def test_knn_leaves_each_row_out():
    emb = torch.eye(3, dtype=torch.float64)  # three singleton classes: only itself would match
    assert knn_accuracy(emb, torch.arange(3), 1, 3) == 0.0
    assert math.isnan(knn_accuracy(emb[:1], torch.arange(1), 5, 3))


def test_instance_embedding_is_the_mask_average_of_the_fused_map(tiny_shards):
    shards = open_shards(tiny_shards)
    batch = load_holdout(shards, 4).batch
    model = build_model(TINY, METHODS["segloc"], 3, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emb, labels = embed_instances(model, batch, torch.device("cpu"))
    assert emb.shape == (batch["inst_cls"].shape[0], 128 + 256 + 512)
    assert torch.equal(labels, batch["inst_cls"]) and model.training
    assert _weights_equal(before, model.state_dict())
    # The last instance by hand: its image alone, eval mode, 8x8 area averaging of the mask.
    i, img = -1, int(batch["inst_img"][-1])
    trunk = model.encoder_q.trunk.eval()
    x = normalise(batch["img0"][img : img + 1].float() / 255)
    with torch.no_grad():
        feat = fuse_stride8(trunk(x)[1:])[0]  # C x 8 x 8
    w = F.avg_pool2d(batch["masks0"][i][None].float(), 8)[0]
    by_hand = F.normalize((feat * w).sum((1, 2)) / w.sum(), dim=0).double()
    torch.testing.assert_close(emb[i], by_hand, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- fresh-bank probe


def naive_probe_loss(q, k, labels, bank, bank_labels, t):
    losses = []
    for i in range(q.shape[0]):
        negs = [bank[j] for j in range(bank.shape[0]) if bank_labels[j] != labels[i]]
        logits = torch.stack([q[i] @ k[i], *[q[i] @ n for n in negs]]) / t
        losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean().item()


def test_probe_with_uneven_and_missing_classes_matches_a_naive_loop():
    g = torch.Generator().manual_seed(7)
    c, d, size = 4, 8, 3
    # Queries (first half) of every class; the fresh half has class 0 x6 (capped to the queue's
    # 3), class 1 x1, class 2 x2 and no class 3.
    labels = torch.tensor([0, 1, 2, 3, 3, 1, 0, 2, 0] + [0, 0, 1, 2, 0, 2, 0, 0, 0])
    q = F.normalize(torch.randn(18, d, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(q + 0.5 * torch.randn(18, d, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(c, d, size, generator=g, dtype=torch.float64), dim=1)
    out = fresh_bank_probe(queue, q, k, labels, 0.2)
    fresh_idx = [9, 10, 13, 11, 12, 14]  # first 3 of class 0, then class 1, then class 2
    fresh_l = labels[fresh_idx]
    assert out["keys_per_queue"] == 1 and out["queries"] == 9
    ref = naive_probe_loss(q[:9], k[:9], labels[:9], k[fresh_idx], fresh_l, 0.2)
    assert out["fresh"]["loss"] == pytest.approx(ref, rel=1e-9)
    negatives = [6 - int((fresh_l == lab).sum()) for lab in labels[:9]]
    assert out["chance_loss"] == pytest.approx(sum(math.log1p(n) for n in negatives) / 9)


def test_probe_without_any_negative_is_too_few_pairs():
    q = F.normalize(torch.randn(6, 4), dim=1)
    with pytest.raises(TooFewPairs):
        fresh_bank_probe(torch.randn(3, 4, 5), q, q, torch.zeros(6, dtype=torch.long), 0.2)


# ---------------------------------------------------------------- the monitor in a run


def _ctx(cfg, method):
    preset = resolve_preset(cfg, method)
    return StepContext(cfg, preset, 10, scaled_lr(cfg.lr, 4), torch.device("cpu"), 0, ("a",) * 3)


@pytest.mark.parametrize("method", ["segloc", "moco"])
def test_measuring_leaves_the_model_untouched(method, tiny_shards):
    shards = open_shards(tiny_shards)
    mon = Monitor(MonitorConfig(holdout=6), load_holdout(shards, 6), 3)
    model = build_model(TINY, resolve_preset(TINY, method), 3, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = mon.measure(model, _ctx(TINY, method), 0)
    assert set(first) == {"step", "knn_acc", "fresh_loss", "stale_loss", "chance_loss"}
    assert 0 <= first["knn_acc"] <= 100 and first["chance_loss"] > 0
    assert _weights_equal(before, model.state_dict())  # BN running statistics put back
    assert mon.measure(model, _ctx(TINY, method), 0) == first  # fixed crops: same figures


def test_monitor_rows_metrics_and_resume(tiny_shards, tmp_path):
    cfg = replace(TINY, steps=4, monitor=MonitorConfig(every=3, holdout=4))
    whole = run(cfg, "segloc", tiny_shards, tmp_path / "whole")
    tsv = (tmp_path / "whole" / "plots" / "monitor.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["step", "knn_acc", "fresh_loss", "stale_loss", "chance_loss"]
    assert [r.split("\t")[0] for r in tsv[1:]] == ["0", "3", "4"]  # start, every 3, end
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["knn_acc_init"] == whole.state.monitor[0]["knn_acc"]
    assert metrics["knn_acc"] == whole.state.monitor[-1]["knn_acc"]
    assert metrics["chance_loss"] > 0 and metrics["fresh_bank_loss"] > 0
    assert 0 < json.loads((tmp_path / "whole" / "stats.json").read_text())["monitor_seconds"]
    run(cfg, "segloc", tiny_shards, tmp_path / "split", stop_at=3)
    resumed = run(cfg, "segloc", tiny_shards, tmp_path / "split", resume=True)
    assert resumed.state.monitor == whole.state.monitor  # no row twice, none lost
    assert (tmp_path / "split" / "plots" / "monitor.tsv").read_text() == "\n".join(tsv) + "\n"


def test_monitor_passes_do_not_change_training(tiny_shards, tmp_path):
    often = run(
        replace(TINY, monitor=MonitorConfig(every=1, holdout=4)),
        "insloc",
        tiny_shards,
        tmp_path / "a",
    )
    never = run(
        replace(TINY, monitor=MonitorConfig(every=0, holdout=4)),
        "insloc",
        tiny_shards,
        tmp_path / "b",
    )
    assert len(often.state.monitor) == 5 and len(never.state.monitor) == 2
    assert _weights_equal(often.model.state_dict(), never.model.state_dict())


def test_supervised_rows_have_knn_only_and_holdout_zero_turns_it_off(tiny_shards, tmp_path):
    sup = run(replace(TINY, steps=1), "supervised", tiny_shards, tmp_path / "sup")
    assert list(sup.state.monitor[0]) == ["step", "knn_acc"]
    assert "fresh_bank_loss" not in sup.metrics and "knn_acc_init" in sup.metrics
    off = run(
        replace(TINY, steps=1, monitor=MonitorConfig(holdout=0)),
        "moco",
        tiny_shards,
        tmp_path / "off",
    )
    assert off.state.monitor == [] and "knn_acc" not in off.metrics
    assert not (tmp_path / "off" / "plots" / "monitor.tsv").exists()


# ---------------------------------------------------------------- config


def test_missing_monitor_keys_take_their_defaults():
    cfg = from_dict(PretrainConfig, {"monitor": {"every": 5}}, "pretrain")
    assert cfg.monitor == replace(MonitorConfig(), every=5) and cfg.monitor.holdout > 0
    assert from_dict(PretrainConfig, {}, "pretrain").positives == "instance"
    with pytest.raises(UserError, match="pretrain.monitor.kk: unknown key"):
        from_dict(PretrainConfig, {"monitor": {"kk": 5}}, "pretrain")


@pytest.mark.parametrize(
    ("monitor", "key"),
    [
        (MonitorConfig(every=-1), "every"),
        (MonitorConfig(holdout=-2), "holdout"),
        (MonitorConfig(k=0), "k"),
    ],
)
def test_bad_monitor_values_name_the_key(monitor, key):
    with pytest.raises(UserError, match=f"params pretrain.monitor.{key}:"):
        check_config(PretrainConfig(monitor=monitor))


@pytest.mark.parametrize(
    ("method", "queue", "message"),
    [
        ("segloc", "single", "one queue per class"),
        ("insloc", None, "one queue per class"),
        ("moco", None, "method 'moco'"),
        ("supervised", None, "method 'supervised'"),
    ],
)
def test_class_positives_need_class_queues(method, queue, message):
    cfg = PretrainConfig(positives="class", queue=queue)
    with pytest.raises(UserError, match=f"pretrain.positives: .*{message}"):
        resolve_preset(cfg, method)


def test_class_positives_train_and_label_the_run(tiny_shards, tmp_path):
    cfg = replace(TINY, steps=2, positives="class")
    assert resolve_preset(replace(cfg, queue="per_class"), "insloc").queue == "per_class"
    result = run(cfg, "segloc", tiny_shards, tmp_path)
    assert result.model.class_positives and result.metrics["final_loss"] > 0
    card = json.loads((tmp_path / "backbone.json").read_text())
    assert card["label"] == "segloc (mask, per-class queue, class positives)"
    assert run_label("segloc", METHODS["segloc"]) == "segloc"
