"""tools/render_check.py: CI's guard that a fresh render of the default has dvc.lock's bytes."""

import shutil
from pathlib import Path

import pytest

from tools import render_check

ROOT = Path(__file__).resolve().parents[1]


def test_version_drift_names_the_package_off_its_pin(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==0.0.1 \\\n    --hash=sha256:00\nclick==8.1.0\n", encoding="utf-8")
    drift = render_check.version_drift(lock)
    assert (
        len(drift) == 1
        and drift[0].startswith("numpy ")
        and "0.0.1 in requirements.lock" in drift[0]
    )


def test_locked_hashes_reads_both_stages():
    hashes = render_check.locked_hashes(ROOT / "dvc.lock")
    assert set(hashes) == {"data/demo", "data/shards"}
    assert all(h.endswith(".dir") for h in hashes.values())


@pytest.mark.slow
def test_a_fresh_render_matches_the_committed_lock():
    assert render_check.check(ROOT) is None


@pytest.mark.slow
def test_a_moved_render_is_named_with_the_version_that_moved_it(tmp_path):
    for name in ("params.yaml", "dvc.lock", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    lock = tmp_path / "dvc.lock"
    text = lock.read_text(encoding="utf-8")
    shards = render_check.locked_hashes(lock)["data/shards"]
    lock.write_text(text.replace(shards, "0" * 32 + ".dir"), encoding="utf-8")
    req = tmp_path / "requirements.lock"
    req.write_text(
        req.read_text(encoding="utf-8").replace(
            "\nopencv-python-headless==", "\nopencv-python-headless==0.1+"
        ),
        encoding="utf-8",
    )
    reason = render_check.check(tmp_path)
    assert reason is not None
    assert "data/shards" in reason and "data/demo" not in reason
    assert "opencv-python-headless" in reason
