"""Shard streaming: manifest checks, decoded batches, determinism/resume offsets, bad samples."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from segloc.errors import UserError
from train.data import Needs, StreamSpec, decode_sample, make_loader, open_shards

ALL = Needs(views=2, masks=True, seg=True)


def _spec(shards, **kw) -> StreamSpec:
    base = StreamSpec(
        shards.urls,
        shards.canvas,
        len(shards.classes),
        ALL,
        batch_size=3,
        buffer=8,
        seed=0,
        rank=0,
        epoch=0,
        epoch_steps=6,
        start=0,
        streams=1,
    )
    return replace(base, **kw)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a
    )


def test_manifest_errors_are_clear(tmp_path, shard_writer):
    with pytest.raises(UserError, match="shards folder not found"):
        open_shards(tmp_path / "nope")
    with pytest.raises(UserError, match="manifest not found"):
        open_shards(tmp_path)
    other = shard_writer.write_shards(tmp_path / "v2", num_shards=1, per_shard=2, schema=2)
    with pytest.raises(UserError, match="schema 2.*reads schema 1"):
        open_shards(other)
    good = shard_writer.write_shards(tmp_path / "v1", num_shards=1, per_shard=2)
    (good / "train-000000.tar").unlink()
    with pytest.raises(UserError, match="train-000000.tar: shard listed .* is missing"):
        open_shards(good)


def test_batches_hold_the_samples_instances(tiny_shards):
    shards = open_shards(tiny_shards)
    batch = next(iter(make_loader(_spec(shards), workers=0)))
    b, s = batch["img0"].shape[0], shards.canvas
    assert batch["img0"].shape == batch["img1"].shape == (b, 3, s, s) and b == 3
    assert batch["seg0"].dtype == torch.uint8 and batch["seg0"].shape == (b, s, s)
    m = batch["inst_img"].shape[0]
    assert batch["masks0"].shape == batch["masks1"].shape == (m, s, s)
    assert torch.all(batch["inst_img"][1:] >= batch["inst_img"][:-1])  # image-major order
    # Every instance's class shows in its image's label map wherever it is on top.
    for i in range(m):
        img, cls = int(batch["inst_img"][i]), int(batch["inst_cls"][i])
        assert 0 <= cls < len(shards.classes)
        assert (batch["seg0"][img][batch["masks0"][i].bool()] == cls + 1).any()


def test_masks_round_trip_the_json_rle(shard_writer):
    members = shard_writer.make_sample(5, 48, seed=3, num_classes=3)
    meta = json.loads(members["s00000005.json"])
    raw = {k.split(".", 1)[1]: v for k, v in members.items()}
    out = decode_sample(raw, ALL, 48, 3)
    for view in range(2):
        for i, inst in enumerate(meta["views"][view]["instances"]):
            expect = mask_utils.decode(inst["rle"])
            assert np.array_equal(out["masks"][view][i], expect)
            assert out["masks"][view][i].sum() == inst["area"]


def test_stream_is_deterministic_and_resume_skips_exactly(tiny_shards):
    shards = open_shards(tiny_shards)
    full = list(make_loader(_spec(shards), workers=0))
    again = list(make_loader(_spec(shards), workers=0))
    tail = list(make_loader(_spec(shards, start=4), workers=0))
    assert len(full) == 6 and len(tail) == 2
    assert all(_same(a, b) for a, b in zip(full, again, strict=True))
    assert all(_same(a, b) for a, b in zip(full[4:], tail, strict=True))
    other_epoch = next(iter(make_loader(_spec(shards, epoch=1), workers=0)))
    assert not _same(full[0], other_epoch)


def test_two_workers_resume_at_an_odd_offset(tiny_shards):
    shards = open_shards(tiny_shards)
    spec = _spec(shards, streams=2, needs=Needs(1, False, False))
    full = list(make_loader(spec, workers=2))
    tail = list(make_loader(replace(spec, start=3), workers=2))
    assert len(full) == 6 and len(tail) == 3
    assert all(_same(a, b) for a, b in zip(full[3:], tail, strict=True))


def test_fewer_shards_than_workers(tmp_path, shard_writer):
    one = open_shards(shard_writer.write_shards(tmp_path, num_shards=1, per_shard=4))
    spec = _spec(one, streams=2, epoch_steps=4, needs=Needs(1, False, False))
    assert len(list(make_loader(spec, workers=2))) == 4


def _corrupt_shard(root: Path, writer) -> None:
    """Replace shard 0: sample 0's v0.jpg is garbage, sample 1 lacks its json."""
    members = {}
    for i in range(4):
        members.update(writer.make_sample(i, 64, seed=0, num_classes=3))
    members["s00000000.v0.jpg"] = b"not a jpeg at all"
    del members["s00000001.json"]
    writer.write_tar(root / "train-000000.tar", members)


def test_corrupt_members_are_skipped_and_counted(tmp_path, shard_writer):
    root = shard_writer.write_shards(tmp_path, num_shards=1, per_shard=4)
    _corrupt_shard(root, shard_writer)
    shards = open_shards(root)
    spec = _spec(shards, batch_size=4, epoch_steps=3, buffer=4, bad_data="skip")
    batches = list(make_loader(spec, workers=0))
    skipped = sum(sum(b["skipped"].values()) for b in batches)
    used = sum(b["img0"].shape[0] for b in batches)
    assert skipped + used == 12 and skipped == 6  # 2 bad samples of 4, read three times
    reasons = set().union(*(b["skipped"] for b in batches))
    assert reasons == {"v0.jpg: undecodable, expected a 64x64 colour JPEG", "member .json missing"}


def test_corrupt_member_stops_the_stream_by_default(tmp_path, shard_writer):
    root = shard_writer.write_shards(tmp_path, num_shards=1, per_shard=4)
    _corrupt_shard(root, shard_writer)
    spec = _spec(open_shards(root), batch_size=4, epoch_steps=3, buffer=4)  # bad_data: fail
    batches = list(make_loader(spec, workers=0))
    assert len(batches) == 1 and "img0" not in batches[0]
    assert (
        "train-000000.tar" in batches[0]["fatal"]
        and "pretrain.bad_data=skip" in batches[0]["fatal"]
    )


def test_truncated_tar_is_counted_when_skipping(tmp_path, shard_writer):
    root = shard_writer.write_shards(tmp_path, num_shards=2, per_shard=4)
    data = (root / "train-000001.tar").read_bytes()
    (root / "train-000001.tar").write_bytes(data[: len(data) // 3])
    shards = open_shards(root)
    spec = _spec(shards, batch_size=4, epoch_steps=4, buffer=4, bad_data="skip")
    batches = list(make_loader(spec, workers=0))
    assert len(batches) == 4
    assert all(b["img0"].shape[0] >= 1 for b in batches)
    assert sum(b["skipped"].get("unreadable shard data", 0) for b in batches) > 0


def test_tar_writer_follows_the_schema(tiny_shards):
    with tarfile.open(tiny_shards / "train-000000.tar") as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    assert names == sorted(names)
    assert all(i.mtime == 0 and i.uid == 0 and i.mode == 0o644 and i.uname == "" for i in infos)
    assert {n.split(".", 1)[1] for n in names} == {
        "v0.jpg",
        "v1.jpg",
        "v0.seg.png",
        "v1.seg.png",
        "json",
    }
