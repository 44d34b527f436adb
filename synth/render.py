"""`synth render`: cut-transform-paste X-ray composites into reproducible WebDataset shards.

    synth render --out data/shards                          # params.yaml in cwd, every shard
    synth render --out data/shards --workers 2 --set synth.canvas=192
    synth render --out data/shards --shard-range 0:8        # one machine of a fan-out ...
    synth render --out data/shards --shard-range 8:16       # ... the other
    synth render --out data/shards                          # all complete: just writes manifest.json
    python -m synth.render --out data/shards                # same, without the console script

Sample `i` is drawn from `np.random.default_rng([seed, i])` alone, so worker count and shard range
never change a byte (docs/design.md §4.4, §6). Shards appear under their final name only once
complete and get a checksum record in `OUT/.records/`; re-running skips shards whose file matches
its record and re-renders the rest. `manifest.json` is written last, and only once every shard of
the dataset is complete; a `--shard-range` run also writes `manifest-A-B.json` covering its own
shards.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import queue
import re
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from segloc.atomic import TMP_PREFIX, write_json
from segloc.config import DataConfig, load_data_config
from segloc.errors import UserError
from segloc.params import from_dict, load_params, to_dict
from synth.compose import Composer
from synth.config import SynthConfig
from synth.shards import (
    MANIFEST,
    SCHEMA_VERSION,
    build_manifest,
    encode_sample,
    fingerprint,
    range_manifest_name,
    read_record,
    shard_is_complete,
    shard_name,
    write_record,
    write_shard,
)
from synth.sources import (
    Backgrounds,
    BadInput,
    Foregrounds,
    list_backgrounds,
    load_foregrounds,
)

log = logging.getLogger(__name__)

# Bad inputs named in the error message; the rest are counted.
SHOW_BAD = 5


@dataclass(frozen=True)
class Job:
    """Everything a worker needs; pickled once per worker process."""

    cfg: SynthConfig
    data: DataConfig
    fg: Foregrounds
    bg: Backgrounds
    out: Path
    fingerprint: str


def main(
    out: str | Path,
    params_path: str | Path = "params.yaml",
    overrides: tuple[str, ...] = (),
    num_shards: int | None = None,
    samples_per_shard: int | None = None,
    workers: int = 1,
    shard_range: str | None = None,
    skip_bad_inputs: bool = False,
) -> Path:
    """Render the shards of `shard_range` (default: all) into `out`; returns the manifest path."""
    params = load_params(params_path, overrides)
    data = load_data_config(params)
    cfg = resolve_config(params, num_shards, samples_per_shard, skip_bad_inputs)
    start, stop = parse_range(shard_range, cfg.num_shards)
    # Helpers start now, so that their start-up (a fresh interpreter importing OpenCV and numpy,
    # ~0.4 s) runs while this process loads the inputs; more than the range's shards would idle.
    count = min(workers, stop - start) - 1
    with helpers(count) if count > 0 else nullcontext() as team:
        fg, bg = load_inputs(data, cfg)
        job = Job(cfg, data, fg, bg, Path(out), fingerprint(_identity(cfg, data, fg, bg)))
        todo = plan(job, start, stop)
        if todo:
            # A manifest from an earlier render must not vouch for shards about to change.
            (job.out / MANIFEST).unlink(missing_ok=True)
            remove_partial(job.out, todo)
            run(job, todo, workers, team)
    return write_manifests(job, start, stop)


def resolve_config(
    params: dict, num_shards: int | None, samples_per_shard: int | None, skip_bad_inputs: bool
) -> SynthConfig:
    cfg = from_dict(SynthConfig, params.get("synth"), "synth")
    changes = {"skip_bad_inputs": cfg.skip_bad_inputs or skip_bad_inputs}
    if num_shards is not None:
        changes["num_shards"] = num_shards
    if samples_per_shard is not None:
        changes["samples_per_shard"] = samples_per_shard
    return dataclasses.replace(cfg, **changes)


def parse_range(text: str | None, num_shards: int) -> tuple[int, int]:
    if text is None:
        return 0, num_shards
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or not 0 <= int(m[1]) < int(m[2]) <= num_shards:
        raise UserError(
            f"--shard-range {text!r}: expected A:B with 0 <= A < B <= {num_shards} (num_shards)"
        )
    return int(m[1]), int(m[2])


def load_inputs(data: DataConfig, cfg: SynthConfig) -> tuple[Foregrounds, Backgrounds]:
    """Foregrounds and backgrounds, all checked before anything is written."""
    fg = load_foregrounds(data, cfg)
    bg = list_backgrounds(data.background)
    bad = [*fg.bad, *bg.bad]
    if bad and not cfg.skip_bad_inputs:
        raise UserError(
            describe_bad(bad) + "; nothing written (--skip-bad-inputs renders without them)"
        )
    if bad:
        log.warning("%s; rendering without them", describe_bad(bad))
    if not fg.segments:
        raise UserError(f"{data.foreground.annotations}: no usable instance in the labeled subset")
    if len(bg.names) < 2:
        raise UserError(
            f"{bg.folder}: {len(bg.names)} usable background(s); the two views need two different scans"
        )
    per_class = Counter(fg.classes[s.cls - 1] for s in fg.segments)
    log.info(
        "%d segments (%s); skipped annotations: %s",
        len(fg.segments),
        ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())),
        fg.skipped or "none",
    )
    log.info(
        "%d backgrounds in %s (%d positives left out)",
        len(bg.names),
        bg.folder,
        bg.excluded_positives,
    )
    return fg, bg


def describe_bad(bad: list[BadInput]) -> str:
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:SHOW_BAD])
    more = f" (and {len(bad) - SHOW_BAD} more)" if len(bad) > SHOW_BAD else ""
    return f"{len(bad)} unreadable input(s): {shown}{more}"


def _identity(cfg: SynthConfig, data: DataConfig, fg: Foregrounds, bg: Backgrounds) -> dict:
    """Everything a shard's bytes depend on (not the shard count, cache size or skip switch)."""
    synth, inputs = to_dict(cfg), to_dict(data)
    for key in ("num_shards", "background_cache_mb", "skip_bad_inputs"):
        synth.pop(key)
    for key in ("test", "demo"):  # test splits never feed synthesis (docs/design.md §5.5)
        inputs.pop(key)
    return {
        "schema": SCHEMA_VERSION,
        "synth": synth,
        "data": inputs,
        "classes": fg.classes,
        "segments": [(s.image_id, s.annotation_id) for s in fg.segments],
        "backgrounds": bg.names,
        "versions": [cv2.__version__, np.__version__],
    }


def plan(job: Job, start: int, stop: int) -> list[int]:
    """Shards of [start, stop) that are not already on disk, whole and from the same inputs."""
    todo = [
        k
        for k in range(start, stop)
        if not shard_is_complete(job.out, read_record(job.out, k, job.fingerprint), verify=True)
    ]
    if len(todo) < stop - start:
        log.info("%d of %d shards already complete", stop - start - len(todo), stop - start)
    return todo


def remove_partial(out: Path, shards: list[int]) -> None:
    """Delete temporaries a killed run left for these shards (a finished shard has none)."""
    for k in shards:
        for tmp in out.glob(f"{TMP_PREFIX}{shard_name(k)}.*"):
            tmp.unlink(missing_ok=True)


def run(job: Job, todo: list[int], workers: int, team: Helpers | None = None) -> None:
    from tqdm import tqdm  # here, not at the top: render helpers import this module, draw no bar

    total = len(todo) * job.cfg.samples_per_shard
    with tqdm(total=total, unit="sample", desc="render", smoothing=0.05) as bar:
        render_shards(job, todo, workers, bar.update, team)


def render_shards(
    job: Job,
    todo: list[int],
    workers: int,
    progress: Callable[[int], object],
    team: Helpers | None = None,
) -> None:
    """Render the shards `todo` in `workers` processes, this one included, or in this process
    and `team`'s helpers if it is given (already started by `helpers`; `workers` is then unused).

    Every process claims the next shard when it finishes one, so a helper still starting up
    delays its own first shard, not the render. A helper's error is raised here; so is its death
    (say, killed for memory), instead of a hang.
    """
    cv2.setNumThreads(1)  # parallelism comes from processes; threads would oversubscribe
    count = min(workers, len(todo)) - 1
    if team is None and count > 0:
        with helpers(count) as team:
            return render_shards(job, todo, workers, progress, team)
    if team is not None:
        team.start(job, todo)
    composer = Composer(job.cfg, job.fg, job.bg)  # while any helpers load the job
    if team is None:
        for k in todo:
            render_shard(composer, job, k, progress)
        return

    def relay(n: int) -> None:
        progress(n)
        team.poll(progress, timeout=0.0)

    while (i := team.claim()) is not None:
        render_shard(composer, job, todo[i], relay)
    while not team.finished:
        team.poll(progress, timeout=0.2)


def render_shard(
    composer: Composer, job: Job, shard: int, progress: Callable[[int], object]
) -> dict:
    """Compose, encode and write one shard, then its record; returns the record."""
    cfg, per_class = job.cfg, Counter()

    def samples() -> Iterator[tuple[int, dict[str, bytes]]]:
        first = shard * cfg.samples_per_shard
        for index in range(first, first + cfg.samples_per_shard):
            views = composer.compose(index)
            per_class.update(inst["class"] for inst in views[0].instances)
            progress(1)
            yield (
                index,
                encode_sample(index, job.fg.classes, views, cfg.jpeg_quality, cfg.png_compression),
            )

    try:
        info = write_shard(job.out / shard_name(shard), samples())
    except UserError as err:
        # Backgrounds are only header-checked up front; a file that fails its full decode
        # surfaces here. Finished shards stay valid, so a re-run resumes after the fix.
        raise UserError(
            f"{err.message} (while rendering {shard_name(shard)}; replace or remove the file "
            "and re-run: finished shards are kept)"
        ) from err
    names = job.fg.classes
    record = {
        "name": shard_name(shard),
        **info,
        "fingerprint": job.fingerprint,
        "instances_per_class": {names[c - 1]: per_class[c] for c in range(1, len(names) + 1)},
    }
    write_record(job.out, shard, record)
    return record


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_READY = "ready"  # a helper's first message: started, modules imported, waiting for the job
_DONE = "done"  # a helper's last message when it found no shard left to claim


@dataclass(frozen=True)
class _Failure:
    """A helper's error, sent to this process to be raised there."""

    error: BaseException | None  # the error itself if it pickles
    text: str  # its traceback


def _helper(jobs: mp.Queue, events: mp.Queue, counter: Any) -> None:
    """A helper process: send `_READY`, wait for the job, then render shards until none is left
    to claim, sending progress counts, then `_DONE` or a `_Failure`."""
    try:
        cv2.setNumThreads(1)  # parallelism comes from processes; threads would oversubscribe
        events.put(_READY)
        with open(_await_job(jobs), "rb") as f:
            job, todo = pickle.load(f)
        composer = Composer(job.cfg, job.fg, job.bg)
        while (i := _claim(counter, len(todo))) is not None:
            render_shard(composer, job, todo[i], events.put)
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the main process
        text = traceback.format_exc()
        try:
            pickle.dumps(err)
        except Exception:  # noqa: BLE001 - an error that cannot travel goes as text alone
            err = None
        events.put(_Failure(err, text))
        raise SystemExit(1) from None
    events.put(_DONE)


def _await_job(jobs: mp.Queue) -> str:
    """The job file's path, once the main process sends it; exit if that process is gone (killed
    while loading its inputs, say), rather than wait for ever."""
    parent = mp.parent_process()
    while True:
        try:
            return jobs.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                raise SystemExit(1) from None


def _claim(counter: Any, total: int) -> int | None:
    """The next unclaimed position in the shard list, shared by every process; None when done."""
    with counter.get_lock():
        i = counter.value
        if i >= total:
            return None
        counter.value = i + 1
        return i


@dataclass
class Helpers:
    """Helper processes (see `helpers`): started, then given a job and a shard list by `start`;
    each renders the shards of the list it claims."""

    processes: list[BaseProcess]
    jobs: mp.Queue  # the job file's path, once per helper
    events: mp.Queue  # `_READY`, progress counts, then `_DONE` or a `_Failure`, from every helper
    counter: Any  # next unclaimed position in the shard list, shared
    folder: str  # for the job file
    total: int | None = None  # length of the shard list, once started
    ready: int = 0
    done: int = 0

    def start(self, job: Job, todo: list[int]) -> None:
        """Hand every helper the job (by file: ~20 MB of segment pixels on the demo, which a
        queue would push through a pipe to one helper after another)."""
        if self.total is not None:
            raise RuntimeError("helpers already started")
        path = os.path.join(self.folder, "job.pickle")
        with open(path, "wb") as f:
            pickle.dump((job, todo), f, protocol=pickle.HIGHEST_PROTOCOL)
        self.total = len(todo)
        for _ in self.processes:
            self.jobs.put(path)

    def claim(self) -> int | None:
        """For this process: the next unclaimed position in the shard list, or None."""
        if self.total is None:
            raise RuntimeError("helpers not started")
        return _claim(self.counter, self.total)

    @property
    def finished(self) -> bool:
        return self.done == len(self.processes)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every helper has started up (imported its modules)."""
        deadline = time.monotonic() + timeout
        while self.ready < len(self.processes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"render helpers not ready after {timeout:.0f} s")
            self.poll(lambda n: None, timeout=0.05)

    def poll(self, progress: Callable[[int], object], timeout: float) -> None:
        """Relay the helpers' progress (waiting up to `timeout` s for the first message); raise a
        helper's error, or a `UserError` if one died without saying why."""
        self._drain(progress, timeout)
        dead = [p for p in self.processes if p.exitcode not in (None, 0)]
        if dead:
            self._drain(progress, 0.0)  # a helper's messages are all sent before it exits
            raise UserError(
                f"a render helper (pid {dead[0].pid}) died with exit code {dead[0].exitcode} "
                "(killed for lack of memory?); finished shards are kept: re-run to render the "
                "rest, with fewer --workers if memory is short"
            )

    def _drain(self, progress: Callable[[int], object], timeout: float) -> None:
        try:
            event = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
            while True:
                if isinstance(event, _Failure):
                    if event.error is not None:
                        raise event.error
                    raise RuntimeError(f"a render helper failed:\n{event.text}")
                if event == _READY:
                    self.ready += 1
                elif event == _DONE:
                    self.done += 1
                else:
                    progress(event)
                event = self.events.get_nowait()
        except queue.Empty:
            pass


@contextmanager
def helpers(count: int) -> Iterator[Helpers]:
    """`count` helper processes, started at once; each waits for `Helpers.start`. Leaving the
    block stops any still running (never given a job, say, because loading the inputs failed)."""
    # spawn: no fork of a parent holding OpenCV/tqdm threads; the same on Linux and macOS.
    ctx = mp.get_context("spawn")
    jobs, events, counter = ctx.Queue(), ctx.Queue(), ctx.Value("q", 0)
    with tempfile.TemporaryDirectory(prefix="synth-render-") as tmp:
        processes = [
            ctx.Process(target=_helper, args=(jobs, events, counter), daemon=True)
            for _ in range(count)
        ]
        try:
            for process in processes:
                process.start()
            yield Helpers(processes, jobs, events, counter, tmp)
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join()


def write_manifests(job: Job, start: int, stop: int) -> Path:
    """manifest-A-B.json for a partial range; manifest.json once every shard is complete."""
    cfg, out = job.cfg, job.out
    records = [read_record(out, k, job.fingerprint) for k in range(cfg.num_shards)]
    common = dict(
        num_shards=cfg.num_shards,
        samples_per_shard=cfg.samples_per_shard,
        canvas=cfg.canvas,
        classes=job.fg.classes,
        seed=cfg.seed,
        params={"synth": to_dict(cfg), "data": to_dict(job.data)},
        skipped_inputs=[b.as_dict() for b in (*job.fg.bad, *job.bg.bad)],
    )
    path = out / MANIFEST
    if (start, stop) != (0, cfg.num_shards):
        path = out / range_manifest_name(start, stop)
        write_json(path, build_manifest(records=records[start:stop], **common))
    done = sum(shard_is_complete(out, r, verify=False) for r in records)
    if done == cfg.num_shards:
        write_json(out / MANIFEST, build_manifest(records=records, **common))
        log.info("%d shards complete: %s", done, out / MANIFEST)
        return out / MANIFEST
    log.info("%d of %d shards complete; %s is written once all are", done, cfg.num_shards, MANIFEST)
    return path


@click.command(help="Render cut-transform-paste composites into WebDataset shards.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the shards and manifest.json.",
)
@click.option("--num-shards", type=click.IntRange(min=1), help="Default: synth.num_shards.")
@click.option(
    "--samples-per-shard", type=click.IntRange(min=1), help="Default: synth.samples_per_shard."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=lambda: _cpus(),
    show_default="available CPUs",
    help="Processes rendering whole shards, this one included.",
)
@click.option("--shard-range", metavar="A:B", help="Render only shards A..B-1 (fan-out).")
@click.option(
    "--params",
    "params_path",
    default="params.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a param, e.g. --set synth.canvas=192 (repeatable).",
)
@click.option(
    "--skip-bad-inputs",
    is_flag=True,
    help="Render without unreadable inputs (listed in the manifest) instead of stopping.",
)
def command(
    out,
    num_shards,
    samples_per_shard,
    workers,
    shard_range,
    params_path,
    overrides,
    skip_bad_inputs,
) -> None:
    path = main(
        out,
        params_path,
        tuple(overrides),
        num_shards,
        samples_per_shard,
        workers,
        shard_range,
        skip_bad_inputs,
    )
    click.echo(str(path))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command()
