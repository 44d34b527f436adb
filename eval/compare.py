"""`make compare`: the paper's comparison, with pretraining seeds in the error bars.

    python -m eval.compare                        # params.yaml's `compare` section
    python -m eval.compare --resume               # reuse runs finished with the same command

Pretrains every arm of params `compare.arms` once per pretraining seed (`pretrain.seed` 0, 1, ...),
scores every backbone and random init under every read-out (probe, probe_mlp and
eval.finetune_protocols, one process at a time: two torch processes on two cores run far slower
than one after the other), then writes

    reports/compare.json   results.json's schema (protocol -> init -> split -> miou / fg_miou ->
                           {mean, std, n}, percent), where an arm's n counts pretraining seeds
                           (each seed's score is its mean over the read-out's repeats) and random
                           init's n its repeats; pretrain -> arm -> knn_acc {mean, std, n};
                           margins over random init and between arms; the wall time
    reports/compare.md     the same as tables

Runs live under --runs (default runs/compare): pretrain/ARM-sSEED and eval/INIT/PROTOCOL. The
shards are the pipeline's (`dvc repro render` first; `make compare` does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from eval.config import load_eval_config, load_run_params
from eval.outputs import OVERALL, SCORES
from eval.report import RANDOM, beats, margin, side_by_side
from segloc.atomic import write_json, write_text
from segloc.errors import UserError
from segloc.params import load_params

log = logging.getLogger(__name__)

DONE = "invocation.json"  # beside a finished run: the command and params digest that made it


@dataclass(frozen=True)
class Arm:
    name: str
    method: str
    switches: tuple[str, ...]
    seeds: int


@dataclass(frozen=True)
class Job:
    name: str  # what the progress line shows
    cmd: tuple[str, ...]
    out: Path  # the run folder; finished when DONE in it matches


def load_arms(params: dict[str, Any]) -> list[Arm]:
    section = params.get("compare")
    if not isinstance(section, dict) or not isinstance(section.get("arms"), dict):
        raise UserError("params compare.arms: missing (a mapping arm -> {method, switches, seeds})")
    arms = []
    for name, arm in section["arms"].items():
        if not isinstance(arm, dict) or not isinstance(arm.get("method"), str):
            raise UserError(f"params compare.arms.{name}: expected {{method, switches, seeds}}")
        seeds = arm.get("seeds", 1)
        if not isinstance(seeds, int) or seeds < 1:
            raise UserError(f"params compare.arms.{name}.seeds: expected a positive integer")
        switches = tuple(shlex.split(str(arm.get("switches") or "")))
        arms.append(Arm(str(name), arm["method"], switches, seeds))
    return arms


def protocols(params_path: Path) -> list[str]:
    """The read-outs every init gets: the two probes and eval.finetune_protocols."""
    cfg = load_eval_config(load_run_params(params_path, ()))
    return ["probe", "probe_mlp", *cfg.finetune_protocols]


def backbone_name(arm: Arm, seed: int) -> str:
    return f"{arm.name}-s{seed}"


def load_random_repeats(params: dict[str, Any]) -> int:
    """compare.random_repeats: repeats of every read-out for random init (default 3), whose
    spread is what each arm's margin is measured against (an arm's n counts its seeds)."""
    value = (params.get("compare") or {}).get("random_repeats", 3)
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise UserError("params compare.random_repeats: expected an integer of 2 or more")
    return value


def repeats_switch(protocol: str, repeats: int) -> tuple[str, str]:
    """The --set that gives `protocol`'s read-out `repeats` repeats."""
    section = "finetune" if protocol.startswith("finetune") else protocol
    return ("--set", f"eval.{section}.repeats={repeats}")


def jobs(
    arms: list[Arm],
    readouts: list[str],
    runs: Path,
    shards: Path,
    params: Path,
    random_repeats: int = 3,
) -> list[Job]:
    """Every pretraining first (cheap to resume from), then every evaluation."""
    todo, inits = [], [(RANDOM, RANDOM)]
    for arm in arms:
        for seed in range(arm.seeds):
            name = backbone_name(arm, seed)
            out = runs / "pretrain" / name
            cmd = ("pretrain", "--method", arm.method, *arm.switches)
            cmd += ("--set", f"pretrain.seed={seed}", "--shards", str(shards), "--out", str(out))
            todo.append(Job(f"pretrain {name}", (*cmd, "--params", str(params)), out))
            inits.append((name, str(out)))
    for name, spec in inits:
        for protocol in readouts:
            out = runs / "eval" / name / protocol
            cmd = ("evaluate", "--init", spec, "--protocol", protocol, "--out", str(out))
            if name == RANDOM:
                cmd += repeats_switch(protocol, random_repeats)
            todo.append(Job(f"{protocol} {name}", (*cmd, "--params", str(params)), out))
    return todo


def run_jobs(todo: list[Job], digest: str, resume: bool) -> None:
    for k, job in enumerate(todo, 1):
        stamp = {"cmd": list(job.cmd), "params": digest}
        done = job.out / DONE
        if resume and done.is_file() and json.loads(done.read_text()) == stamp:
            log.info("[%d/%d] %s: finished before, kept", k, len(todo), job.name)
            continue
        log.info("[%d/%d] %s: %s", k, len(todo), job.name, shlex.join(job.cmd))
        start = time.perf_counter()
        if subprocess.run(job.cmd).returncode != 0:
            raise UserError(f"{job.name} failed (command above); fix it, then --resume")
        write_json(done, stamp)
        log.info("[%d/%d] %s: %.1f min", k, len(todo), job.name, (time.perf_counter() - start) / 60)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read ({err})") from err


def summary(values: list[float]) -> dict[str, Any]:
    """{mean, std, n} in percent of fractions; std is the sample std (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {
        "mean": round(100 * mean, 4),
        "std": None if std is None else round(100 * std, 4),
        "n": n,
    }


def seed_means(runs: Path, names: list[str], protocol: str, split: str, key: str) -> list[float]:
    """Each backbone's score: the mean over the read-out's repeats."""
    out = []
    for name in names:
        entry = _read(runs / "eval" / name / protocol / SCORES)["splits"][split][key]
        out.append(entry["mean"])
    return out


def aggregate(arms: list[Arm], readouts: list[str], runs: Path) -> dict[str, Any]:
    """compare.json's tables (see the module's docstring)."""
    doc: dict[str, Any] = {}
    for protocol in readouts:
        random = _read(runs / "eval" / RANDOM / protocol / SCORES)["splits"]
        table = {
            RANDOM: {
                split: {
                    "miou": summary(random[split]["mIoU"]["values"]),
                    "fg_miou": summary(random[split]["mIoU_fg"]["values"]),
                }
                for split in random
            }
        }
        for arm in arms:
            names = [backbone_name(arm, s) for s in range(arm.seeds)]
            table[arm.name] = {
                split: {
                    "miou": summary(seed_means(runs, names, protocol, split, "mIoU")),
                    "fg_miou": summary(seed_means(runs, names, protocol, split, "mIoU_fg")),
                }
                for split in random
            }
        doc[protocol] = table
    doc["pretrain"] = knn(arms, runs)
    return doc


def knn(arms: list[Arm], runs: Path) -> dict[str, Any]:
    """Held-out kNN accuracy (percent) at the end of each arm's runs; random: their step 0."""
    out, init = {}, []
    for arm in arms:
        metrics = [
            _read(runs / "pretrain" / backbone_name(arm, s) / "metrics.json")
            for s in range(arm.seeds)
        ]
        if all("knn_acc" in m for m in metrics):
            out[arm.name] = {"knn_acc": summary([m["knn_acc"] / 100 for m in metrics])}
            init += [m["knn_acc_init"] / 100 for m in metrics if "knn_acc_init" in m]
    if init:
        out[RANDOM] = {"knn_acc": summary(init)}
    return out


def margins(doc: dict[str, Any], readouts: list[str], pairs: list[tuple[str, str]]) -> list[dict]:
    """Overall foreground-mIoU differences a - b per read-out, with their standard error."""
    rows = []
    for a, b in pairs:
        for protocol in readouts:
            m = margin(doc[protocol][a][OVERALL]["fg_miou"], doc[protocol][b][OVERALL]["fg_miou"])
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "protocol": protocol,
                    "diff": None if m is None else round(m[0], 4),
                    "se": None if m is None or m[1] is None else round(m[1], 4),
                    "beyond_2se": beats(m),
                }
            )
    return rows


def render(doc: dict[str, Any], readouts: list[str], arms: list[Arm], wall: float) -> str:
    seeds = ", ".join(f"{a.name} {a.seeds}" for a in arms)
    parts = [
        "# The paper's comparison, with pretraining seeds in the error bars\n",
        f"`make compare` ({wall / 60:.1f} min). Pretraining seeds per arm: {seeds}. Each "
        "backbone's score is its mean over the read-out's repeats; an arm's mean ± std and n "
        "are over its pretraining seeds, random init's over the read-out's repeats. Foreground "
        "mIoU (%), all test splits pooled, then the margin over random init ± its standard "
        "error. An arm beats random init only where the margin exceeds two standard errors "
        "under every read-out.\n",
        side_by_side(doc, readouts) or "",
        "## Margins between arms (foreground mIoU points, overall)\n",
        "| a − b | " + " | ".join(readouts) + " |",
        "|---|" + "---|" * len(readouts),
    ]
    by_pair: dict[tuple[str, str], dict[str, str]] = {}
    for row in doc["margins"]:
        cell = "n/a" if row["diff"] is None else f"{row['diff']:+.1f}"
        if row["se"] is not None:
            cell += f" ± {row['se']:.1f}" + (" (beyond 2 SE)" if row["beyond_2se"] else "")
        by_pair.setdefault((row["a"], row["b"]), {})[row["protocol"]] = cell
    for (a, b), cells in by_pair.items():
        parts.append(f"| {a} − {b} | " + " | ".join(cells[p] for p in readouts) + " |")
    parts += ["", "## Held-out kNN class accuracy at the end of pretraining (%)\n"]
    parts += ["| init | mean ± std | n |", "|---|---|---|"]
    for name, entry in doc["pretrain"].items():
        k = entry["knn_acc"]
        std = f" ± {k['std']:.1f}" if k["std"] is not None else ""
        parts.append(f"| {name} | {k['mean']:.1f}{std} | {k['n']} |")
    return "\n".join(parts) + "\n"


def compare(params: Path, runs: Path, out: Path, shards: Path, resume: bool) -> dict[str, Any]:
    given = load_params(params)
    arms, readouts, repeats = load_arms(given), protocols(params), load_random_repeats(given)
    if not (shards / "manifest.json").is_file():
        raise UserError(f"{shards}/manifest.json: no shards; run `dvc repro render` first")
    digest = hashlib.sha256(params.read_bytes()).hexdigest()
    start = time.perf_counter()
    run_jobs(jobs(arms, readouts, runs, shards, params, repeats), digest, resume)
    wall = time.perf_counter() - start
    doc = aggregate(arms, readouts, runs)
    pairs = [(a.name, RANDOM) for a in arms]
    names = [a.name for a in arms]
    if "segloc" in names and "segloc-single" in names:
        pairs.append(("segloc", "segloc-single"))  # the per-class queue's claim
    doc["margins"] = margins(doc, readouts, pairs)
    doc["seeds"] = {a.name: a.seeds for a in arms}
    doc["wall_seconds"] = round(wall, 1)
    write_json(out / "compare.json", doc)
    write_text(out / "compare.md", render(doc, readouts, arms, wall))
    log.info("wrote %s and compare.md (%.1f min)", out / "compare.json", wall / 60)
    return doc


@click.command()
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path), default="params.yaml")
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path), default="runs/compare")
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default="data/shards")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="reports")
@click.option("--resume", is_flag=True, help="Keep runs finished with the same command and params.")
def main(params: Path, runs: Path, shards: Path, out: Path, resume: bool) -> None:
    """Pretrain compare.arms over their seeds, score every backbone and random init under every
    read-out, and write reports/compare.json and compare.md."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    compare(params, runs, out, shards, resume)


if __name__ == "__main__":
    main()
