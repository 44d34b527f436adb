"""One writer per output folder: a live holder is refused by pid, a killed one's lock taken over."""

from __future__ import annotations

import logging

import pytest

from segloc.errors import UserError
from segloc.runlock import hold
from tests.faults import held_by_another_process


def test_a_live_holder_is_refused_naming_its_pid(tmp_path):
    with held_by_another_process(tmp_path, "pretrain") as proc:
        with pytest.raises(UserError, match=rf"in use by a running pretrain \(pid {proc.pid}"):
            with hold(tmp_path, "pretrain"):
                pass


def test_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    with held_by_another_process(tmp_path, "synth render") as proc:
        pid = proc.pid
    assert (tmp_path / ".lock").exists()  # the killed run left its file
    with caplog.at_level(logging.INFO, logger="segloc.runlock"):
        with hold(tmp_path, "synth render"):
            pass
    assert f"lock of pid {pid} (synth render) was left by a run that is gone" in caplog.text
    assert not (tmp_path / ".lock").exists()  # a clean exit removes it


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    with hold(tmp_path, "evaluate"):
        with pytest.raises(UserError, match="in use by a running evaluate"):
            with hold(tmp_path, "evaluate"):
                pass


def test_disjoint_render_ranges_share_a_folder_overlapping_ones_do_not(tmp_path):
    with hold(tmp_path, "synth render", (0, 8), ranged=True):
        with hold(tmp_path, "synth render", (8, 16), ranged=True):
            pass
        with pytest.raises(UserError, match=r"\.lock-0-8"):
            with hold(tmp_path, "synth render", (4, 12), ranged=True):
                pass
        assert not (tmp_path / ".lock-4-12").exists()  # a refused run leaves nothing
        with pytest.raises(UserError, match=r"\.lock-0-8"):
            with hold(tmp_path, "synth render", None, ranged=True):  # the whole range
                pass


def test_beside_locks_a_sibling_file(tmp_path):
    out = tmp_path / "probe"
    with hold(out, "evaluate", beside=True) as path:
        assert path == tmp_path / ".probe.lock" and not out.exists()


def test_a_whole_render_clears_range_locks_of_killed_runs(tmp_path):
    (tmp_path / ".lock-0-4").write_text('{"pid": 1, "command": "synth render"}')
    with hold(tmp_path, "synth render", None, ranged=True):
        assert not (tmp_path / ".lock-0-4").exists()
    assert not list(tmp_path.iterdir())


def test_temporaries_of_a_killed_run_are_cleared_by_the_next_holder(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / ".tmp-train.tsv.abc").write_text("half")
    (tmp_path / ".tmp-checkpoint.pt.xyz").write_text("half")
    with hold(tmp_path, "pretrain"):
        assert sorted(p.name for p in tmp_path.rglob("*")) == [".lock", "plots"]
    (tmp_path / ".tmp-probe.q1").mkdir()
    (tmp_path / ".tmp-other.q2").mkdir()
    with hold(tmp_path / "probe", "evaluate", beside=True):
        assert not (tmp_path / ".tmp-probe.q1").exists() and (tmp_path / ".tmp-other.q2").exists()
