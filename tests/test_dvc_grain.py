"""dvc.yaml at the right grain: each stage depends on the code it runs and the params that change
its outputs, nothing more, and dvc.lock holds only dvc.yaml's stages."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.launch import dvc as run_dvc

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("segloc", "synth", "train", "eval")

# Keys that change how fast a stage runs, never a byte it writes.
RUNTIME_ONLY = (
    "synth.background_cache_mb",
    "pretrain.threads",
    "pretrain.workers",
    "pretrain.device",
    "pretrain.compile",
    "pretrain.checkpoint_every",
    "eval.workers",
    "eval.threads",
    "eval.protocol",  # the CLI's default; every stage names its protocol
)

# What each stage's command imports: its CLI module and the module that does the work.
ENTRIES = {
    "demo": ("synth.cli", "synth.demo"),
    "render": ("synth.cli", "synth.render"),
    "pretrain": ("train.cli",),
    "probe-random": ("eval.cli", "eval.probe"),
    "probe": ("eval.cli", "eval.probe"),
    "probe_mlp-random": ("eval.cli", "eval.probe"),
    "probe_mlp": ("eval.cli", "eval.probe"),
    "finetune-random": ("eval.cli", "eval.finetune"),
    "finetune": ("eval.cli", "eval.finetune"),
    "report": ("eval.cli", "eval.report"),
}


def _stages() -> dict[str, dict]:
    """dvc.yaml's stage definitions (foreach/matrix stages by their `do` body or own keys)."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


@functools.cache
def _imported_files(modules: tuple[str, ...]) -> frozenset[str]:
    code = (
        "import importlib, json, sys, pathlib\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        f"root = pathlib.Path({str(ROOT)!r})\n"
        "files = set()\n"
        "for mod in list(sys.modules.values()):\n"
        "    f = getattr(mod, '__file__', None)\n"
        "    if f and pathlib.Path(f).resolve().is_relative_to(root):\n"
        "        files.add(pathlib.Path(f).resolve().relative_to(root).as_posix())\n"
        "print(json.dumps(sorted(files)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    files = json.loads(done.stdout)
    return frozenset(
        f for f in files if f.split("/")[0] in PACKAGES and not f.endswith("__init__.py")
    )


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(ENTRIES))
def test_a_stage_depends_on_exactly_the_code_it_imports(stage):
    deps = {d for d in _stages()[stage]["deps"] if isinstance(d, str) and d.endswith(".py")}
    imported = _imported_files(ENTRIES[stage])
    assert imported - deps == set(), f"{stage} imports code it does not list"
    assert deps - imported == set(), f"{stage} lists code it never imports"


def test_every_stage_has_an_entry_here():
    assert set(_stages()) == set(ENTRIES)


def _covers(listed: str, key: str) -> bool:
    return key == listed or key.startswith(listed + ".")


def test_no_stage_depends_on_a_runtime_only_key():
    for name, stage in _stages().items():
        for listed in stage.get("params", []):
            assert isinstance(listed, str), f"{name}: params entry {listed!r}"
            hits = [k for k in RUNTIME_ONLY if _covers(listed, k)]
            assert not hits, f"{name} re-runs when {hits} change (through {listed})"


def test_every_param_key_that_shapes_bytes_is_listed_somewhere():
    """The other side: a key no stage lists would change outputs without re-running anything."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    listed = {p for s in _stages().values() for p in s.get("params", [])}

    def leaves(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and not any(_covers(p, key) for p in listed):
                yield from leaves(v, key + ".")
            else:
                yield key

    sections = {k: v for k, v in params.items() if k not in ("compare",)}
    unlisted = [
        k
        for k in leaves(sections, "")
        if not any(_covers(p, k) or p.startswith(k + ".") for p in listed)
        and k not in RUNTIME_ONLY
        and not k.startswith("arms.")  # arms.${key}: each arm lists its own entry
        and not k.startswith("eval.instance")  # an opt-in command, no stage
        and k != "eval.finetune_protocols"  # which stages exist, not what they compute
    ]
    assert unlisted == []


def test_dvc_lock_holds_only_dvc_yaml_stages():
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    stages = set(done.stdout.split())
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"])
    assert locked <= stages, f"dvc.lock holds stages dvc.yaml no longer has: {locked - stages}"


TINY = {
    "data.demo.scale": "tiny",
    "synth.num_shards": 2,
    "synth.samples_per_shard": 8,
    "synth.canvas": 64,
    "pretrain.steps": 2,
    "pretrain.batch_size": 4,
    "pretrain.streams": 1,
    "pretrain.shuffle_buffer": 8,
    "pretrain.monitor.holdout": 4,
    "pretrain.monitor.every": 0,
    "pretrain.augment.crop": 48,
    "eval.base_size": 64,
    "eval.samples_per_split": 1,
    "eval.probe.epochs": 1,
    "eval.probe.repeats": 1,
    "eval.probe_mlp.epochs": 1,
    "eval.probe_mlp.repeats": 1,
    "eval.finetune.steps": 1,
    "eval.finetune.repeats": 1,
    "eval.finetune.batch_size": 2,
    "eval.finetune.crop_size": 48,
}
CHANGED = {
    "synth.background_cache_mb": 8,
    "pretrain.threads": 1,
    "pretrain.workers": 0,
    "pretrain.device": "cpu",
    "pretrain.compile": True,
    "pretrain.checkpoint_every": 7,
    "eval.workers": 1,
    "eval.threads": 1,
}


def _set(params: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    assert last in node, key
    node[last] = value


@pytest.mark.slow
def test_changing_runtime_only_keys_leaves_nothing_to_run(tmp_path):
    """The whole pipeline at tiny sizes under dvc, then every runtime-only key changed."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["arms"] = {"segloc": params["arms"]["segloc"]}
    for key, value in TINY.items():
        _set(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def dvc(*args):
        done = run_dvc(tmp_path, *args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    dvc("init", "--no-scm")
    dvc("repro")
    for key, value in CHANGED.items():
        _set(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in dvc("status")
    assert "didn't change" in dvc("repro") or "up to date" in dvc("repro")
