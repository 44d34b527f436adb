"""Does a fresh render of the embedded default give the bytes `dvc.lock` records?

    python -m tools.render_check            # exit 0: same bytes; 1: one line says what moved

Renders `synth demo-data` and `synth render` with the repository's params.yaml into a temporary
folder, hashes both outputs the way DVC does (its own hashing code) and compares them with the
`demo` and `render` stages' outputs in the committed dvc.lock. A library update that moves the
shards' bytes (an OpenCV release did once, unrecorded) then fails CI instead of silently moving
every result. The message names the render-shaping packages whose installed versions differ
from requirements.lock, the likely cause.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from segloc.provenance import versions

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = {"demo": "data/demo", "render": "data/shards"}


def locked_hashes(lock: Path) -> dict[str, str]:
    """{output path: md5} of the demo and render stages in dvc.lock."""
    stages = yaml.safe_load(lock.read_text(encoding="utf-8"))["stages"]
    out = {}
    for stage, path in OUTPUTS.items():
        entry = next(o for o in stages[stage]["outs"] if o["path"] == path)
        out[path] = entry["md5"]
    return out


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for a folder (`<md5>.dir`), computed by DVC's own hashing code."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as odb_dir:
        _, _, obj = build(LocalHashFileDB(fs, odb_dir), str(path), fs, "md5")
    return obj.hash_info.value


def render_default(work: Path, params: Path) -> None:
    """The `demo` and `render` stages' commands, as dvc.yaml runs them, inside `work`."""
    cfg = yaml.safe_load(params.read_text(encoding="utf-8"))["data"]["demo"]
    shutil.copy(params, work / "params.yaml")
    synth = [str(Path(sys.executable).parent / "synth")]  # the console script of this install
    demo = ["demo-data", "--out", "data/demo", "--scale", str(cfg["scale"])]
    demo += ["--seed", str(cfg["seed"]), "--force"]
    for args in (demo, ["render", "--out", "data/shards"]):
        done = subprocess.run([*synth, *args], cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"synth {args[0]} failed: {done.stderr.strip()[-2000:]}")


def pinned(lock: Path) -> dict[str, str]:
    """{package: version} pinned in requirements.lock."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", lock.read_text(encoding="utf-8"), re.M)
    return {name.lower(): version for name, version in pins}


def version_drift(lock: Path) -> list[str]:
    """`name installed X, lock Y` for each bytes-shaping package off its pin."""
    pins = pinned(lock) if lock.is_file() else {}
    drift = []
    for item in versions():
        name, _, version = item.partition("==")
        if name in pins and pins[name] != version:
            drift.append(f"{name} {version} installed, {pins[name]} in {lock.name}")
    return drift


def check(root: Path = ROOT) -> str | None:
    """None when a fresh render matches dvc.lock; else the one-line reason."""
    expected = locked_hashes(root / "dvc.lock")
    with tempfile.TemporaryDirectory(prefix="render-check-") as tmp:
        work = Path(tmp)
        render_default(work, root / "params.yaml")
        moved = [
            f"{path} {got} (dvc.lock: {expected[path]})"
            for path in OUTPUTS.values()
            if (got := dvc_md5(work / path)) != expected[path]
        ]
    if not moved:
        return None
    drift = version_drift(root / "requirements.lock")
    cause = (
        "; versions off the lock: " + ", ".join(drift)
        if drift
        else "; every bytes-shaping package is at its locked version, so code or params moved "
        "them: re-run `make repro` and commit dvc.lock"
    )
    return "a fresh render differs from dvc.lock: " + ", ".join(moved) + cause


def main() -> int:
    reason = check()
    if reason is None:
        print("render check: data/demo and data/shards match dvc.lock")
        return 0
    print(f"render check: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
