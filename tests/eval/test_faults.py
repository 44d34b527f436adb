"""`evaluate` under faults: a full disk ends in one line with no output folder left, and the same
command then writes the same scores; a folder a live run holds is refused."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from eval.cli import main as cli
from tests.faults import SmallDisk, held_by_another_process


@pytest.fixture(autouse=True)
def _no_project_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _evaluate(pidray, out, tiny_probe):
    args = ["--init", "random", "--data", pidray, "--out", out]
    args += [x for o in tiny_probe for x in ("--set", o)]
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_full_disk_is_one_line_and_the_rerun_writes_the_same_scores(pidray, tmp_path, tiny_probe):
    ref = tmp_path / "ref"
    assert _evaluate(pidray, ref, tiny_probe).exit_code == 0
    size = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())
    with SmallDisk(tmp_path / "small", size=size // 2) as disk:
        out = disk.root / "probe"
        result = _evaluate(pidray, out, tiny_probe)
        assert result.exit_code == 28, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"Error: {out}") and "no space left" in last, last
        assert "Traceback" not in result.output
        assert not out.exists() and not list(disk.root.glob(".tmp-*"))
        disk.free()
        assert _evaluate(pidray, out, tiny_probe).exit_code == 0
        assert (out / "metrics.json").read_bytes() == (ref / "metrics.json").read_bytes()


def test_a_folder_held_by_a_live_evaluate_is_refused(pidray, tmp_path, tiny_probe):
    out = tmp_path / "probe"
    with held_by_another_process(out, "evaluate", beside=True) as holder:
        result = _evaluate(pidray, out, tiny_probe)
    assert result.exit_code == 2
    assert f"in use by a running evaluate (pid {holder.pid}" in result.output.splitlines()[-1]
    assert not out.exists()
