"""The two locks agree: requirements-cluster.lock (tests, the cluster extra) holds every package of
requirements.lock at the same version, so installing the extra never moves a render-affecting
package; the core lock and the default's code paths stay free of the engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, str]:
    return {k.lower(): v for k, v in PIN.findall((ROOT / name).read_text(encoding="utf-8"))}


def test_the_cluster_lock_extends_the_core_lock_at_the_same_versions():
    core, cluster = _pins("requirements.lock"), _pins("requirements-cluster.lock")
    assert core and set(core) <= set(cluster)
    assert {k: (v, cluster[k]) for k, v in core.items() if cluster[k] != v} == {}
    for extra in ("dask", "distributed", "s3fs", "gcsfs"):
        assert extra in cluster and extra not in core


def test_the_default_never_imports_the_engine_or_a_cloud_filesystem():
    code = (
        "import sys, synth.render, synth.inspect, train.loop, eval.cli\n"
        "print(sorted(m for m in ('dask', 'distributed', 's3fs', 'gcsfs') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
