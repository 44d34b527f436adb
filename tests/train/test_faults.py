"""`pretrain` under faults: a full disk at a checkpoint ends in one line and `--resume` gives the
uninterrupted run's weights once space is freed; a folder a live run holds is refused."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tests.faults import SmallDisk, held_by_another_process, tiny_pretrain
from train.cli import main

TINY = tiny_pretrain("pretrain.steps=4", "pretrain.checkpoint_every=2")


def _pretrain(shards: Path, out: Path, *extra: str):
    args = ["--method", "segloc", "--shards", str(shards), "--out", str(out), *TINY, *extra]
    return CliRunner().invoke(main, args)


def test_full_disk_at_a_checkpoint_then_resume(tiny_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "ref"
    assert _pretrain(tiny_shards, ref).exit_code == 0
    ckpt = (ref / "checkpoint.pt").stat().st_size
    # Room for one checkpoint, not for the second beside it (written whole, then renamed).
    with SmallDisk(tmp_path / "small", size=int(1.5 * ckpt)) as disk:
        out = disk.root / "run"
        result = _pretrain(tiny_shards, out)
        assert result.exit_code == 28, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"Error: {out / 'checkpoint.pt'}: no space left"), last
        assert last.endswith("with --resume (training goes on from the last checkpoint)")
        assert "Traceback" not in result.output
        assert not (out / "backbone.pt").exists() and not list(out.glob(".tmp-*"))
        disk.free()
        result = _pretrain(tiny_shards, out, "--resume")
        assert result.exit_code == 0, result.output
        assert (out / "backbone.pt").read_bytes() == (ref / "backbone.pt").read_bytes()


def test_a_folder_held_by_a_live_run_is_refused(tiny_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with held_by_another_process(out, "pretrain") as holder:
        result = _pretrain(tiny_shards, out)
    assert result.exit_code == 2
    assert f"in use by a running pretrain (pid {holder.pid}" in result.output.splitlines()[-1]
    assert not (out / "checkpoint.pt").exists()
