"""Shards are checked against the manifest's sha256 as they stream: a damaged shard is named and
either stops the run (pretrain.bad_data=fail, the default) or is skipped and counted (skip)."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.faults import tiny_pretrain
from train.cli import main
from train.data import Needs, StreamSpec, make_loader, open_shards

TINY = tiny_pretrain("pretrain.steps=3")


def scramble_jpeg(shard: Path) -> None:
    """Overwrite bytes inside the first JPEG member; tar headers and sizes stay intact, and the
    image still decodes (to wrong pixels), so nothing but the checksum can tell."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".v0.jpg"))
    data = bytearray(shard.read_bytes())
    middle = member.offset_data + member.size // 2
    data[middle : middle + 16] = bytes(16)
    shard.write_bytes(bytes(data))


def _spec(root: Path, **kw) -> StreamSpec:
    shards = open_shards(root)
    base = StreamSpec(
        shards.urls, shards.canvas, len(shards.classes), Needs(2, True, False), batch_size=4,
        buffer=4, seed=0, rank=0, epoch=0, epoch_steps=4, start=0, streams=1,
        digests=shards.digests,
    )  # fmt: skip
    return replace(base, **kw)


@pytest.fixture
def damaged(tmp_path, shard_writer) -> Path:
    root = shard_writer.write_shards(tmp_path / "shards", num_shards=2, per_shard=4)
    scramble_jpeg(root / "train-000001.tar")
    return root


def test_scrambled_jpeg_decodes_unnoticed_without_the_check(damaged):
    batches = list(make_loader(_spec(damaged, digests=None), workers=0))
    assert all("img0" in b and not b["skipped"] for b in batches)  # silently wrong pixels


def test_scrambled_shard_stops_the_stream_naming_it(damaged):
    batches = list(make_loader(_spec(damaged), workers=0))
    fatal = [b["fatal"] for b in batches if "fatal" in b]
    assert len(fatal) == 1
    assert str(damaged / "train-000001.tar") in fatal[0] and "sha256" in fatal[0]


def test_scrambled_shard_is_skipped_and_named_once(damaged):
    batches = list(make_loader(_spec(damaged, bad_data="skip"), workers=0))
    assert len(batches) == 4 and all("img0" in b for b in batches)
    named = [u for b in batches for u in b["bad_shards"]]
    assert named == [str(damaged / "train-000001.tar")]


def test_truncated_shard_is_named(tmp_path, shard_writer):
    root = shard_writer.write_shards(tmp_path / "shards", num_shards=2, per_shard=4)
    data = (root / "train-000000.tar").read_bytes()
    (root / "train-000000.tar").write_bytes(data[: len(data) // 2])
    batches = list(make_loader(_spec(root), workers=0))
    assert "train-000000.tar" in batches[-1]["fatal"]


def _pretrain(damaged: Path, out: Path, *extra: str):
    args = ["--method", "segloc", "--shards", str(damaged), "--out", str(out), *TINY, *extra]
    return CliRunner().invoke(main, args)


def test_pretrain_fails_in_one_line_by_default(damaged, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _pretrain(damaged, tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: pretrain stopped at step ")
    assert "train-000001.tar" in lines[-1] and "Traceback" not in result.output
    assert not (tmp_path / "out" / "backbone.pt").exists()


def test_pretrain_skip_counts_the_shard_in_metrics(damaged, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = _pretrain(damaged, out, "--set", "pretrain.bad_data=skip")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_shards"] == 1 and metrics["skipped_samples"] == 0
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["skipped_shard_reasons"]) == [str(damaged / "train-000001.tar")]
