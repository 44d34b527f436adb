"""bench/gpu_rates.py's two-view section at tiny sizes on the CPU: the script runs end to end and
its JSON carries the figures a GPU session will read, before a GPU is ever lent."""

import json
import subprocess
import sys
from pathlib import Path

from tests.launch import REPO, python_env


def test_two_view_small_cpu_writes_segloc_and_plain_rates(tmp_path: Path):
    out = tmp_path / "tmp.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_rates.py"), "--two-view", "--small"]
    cmd += ["--device", "cpu", "--json", str(out)]
    done = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=python_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc) == {"device", "arch", "two_view"}  # --two-view: no fine-tuning figures
    best = doc["two_view"]["best"]
    assert best["segloc_samples_per_s"] > 0 and best["plain_samples_per_s"] > 0
    assert 0 < best["ratio"] < 10
    assert best["split_ms"]["forward"] > 0
    assert "| batch | compile |" in done.stdout and "target 2,000" in done.stdout
