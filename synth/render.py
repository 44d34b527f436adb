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
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from segloc.atomic import TMP_PREFIX, DiskFull
from segloc.config import DataConfig, load_data_config
from segloc.errors import UserError
from segloc.params import from_dict, load_run_params, to_dict
from segloc.runlock import hold
from segloc.store import Bucket, Folder, open_store
from synth.compose import Composer
from synth.config import SynthConfig
from synth.shards import (
    MANIFEST,
    SCHEMA_VERSION,
    build_manifest,
    complete_shards,
    encode_sample,
    fingerprint,
    range_manifest_name,
    read_records,
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
    out: Folder | Bucket  # a local path is taken too, and opened
    fingerprint: str

    def __post_init__(self) -> None:
        if not isinstance(self.out, Folder | Bucket):
            object.__setattr__(self, "out", open_store(self.out))


def main(
    out: str | Path,
    params_path: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    num_shards: int | None = None,
    samples_per_shard: int | None = None,
    workers: int = 1,
    shard_range: str | None = None,
    skip_bad_inputs: bool = False,
    distributor: str = "local",
    scheduler: str | None = None,
    shards_per_task: int = 1,
) -> Path | str:
    """Render the shards of `shard_range` (default: all) into `out`, a folder or a URL; returns
    the manifest's path (or URL)."""
    params = load_run_params(params_path, overrides, {"data": DataConfig, "synth": SynthConfig})
    data = load_data_config(params)
    cfg = resolve_config(params, num_shards, samples_per_shard, skip_bad_inputs)
    start, stop = parse_range(shard_range, cfg.num_shards)
    store = open_store(out)
    store.check_writable()  # a missing bucket or credentials: now, before any work
    engine = Engine(distributor, workers, scheduler, shards_per_task)
    if store.remote:  # object stores have no locks; see docs/design.md §4.6
        return _render(cfg, data, store, start, stop, engine)
    own = (start, stop) if shard_range is not None else None  # None: the whole folder
    with hold(store.path, "synth render", own, ranged=True):
        return _render(cfg, data, store, start, stop, engine)


@dataclass(frozen=True)
class Engine:
    """Who renders: this machine's processes (`local`), or a dask cluster (`dask`: the address
    of a running scheduler, or a local cluster of `workers` processes started for the run)."""

    distributor: str = "local"
    workers: int = 1
    scheduler: str | None = None
    shards_per_task: int = 1


def _render(
    cfg: SynthConfig,
    data: DataConfig,
    out: Folder | Bucket,
    start: int,
    stop: int,
    engine: Engine,
) -> Path | str:
    # Helpers start now, so that their start-up (a fresh interpreter importing OpenCV and numpy,
    # ~0.4 s) runs while this process loads the inputs; more than the range's shards would idle.
    count = min(engine.workers, stop - start) - 1
    if engine.distributor == "dask":  # the cluster starts (or is reached) in the background
        from synth.distribute import cluster, render_on_dask

        starting = cluster(engine)
    else:
        starting = helper_pool(count) if count > 0 else nullcontext()
    with starting as pool:
        fg, bg = load_inputs(data, cfg)
        job = Job(cfg, data, fg, bg, out, fingerprint(_identity(cfg, data, fg, bg)))
        todo = plan(job, start, stop)
        if todo:
            # A manifest from an earlier render must not vouch for shards about to change.
            job.out.remove(MANIFEST)
            if not job.out.remote:
                remove_partial(job.out.path, todo)
            if engine.distributor == "dask":
                render_on_dask(job, todo, engine, client=pool())
            else:
                run(job, todo, engine.workers, pool)
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
    records = read_records(job.out, range(start, stop), job.fingerprint)
    done = complete_shards(job.out, records, verify=True)
    todo = [k for k, ok in zip(range(start, stop), done, strict=True) if not ok]
    if len(todo) < stop - start:
        log.info("%d of %d shards already complete", stop - start - len(todo), stop - start)
    return todo


def remove_partial(out: Path, shards: list[int]) -> None:
    """Delete temporaries a killed run left for these shards (a finished shard has none)."""
    for k in shards:
        for tmp in out.glob(f"{TMP_PREFIX}{shard_name(k)}.*"):
            tmp.unlink(missing_ok=True)


def run(job: Job, todo: list[int], workers: int, pool: HelperPool | None = None) -> None:
    from tqdm import tqdm  # here, not at the top: render helpers import this module, draw no bar

    total = len(todo) * job.cfg.samples_per_shard
    with tqdm(total=total, unit="sample", desc="render", smoothing=0.05) as bar:
        render_shards(job, todo, workers, bar.update, pool)


def render_shards(
    job: Job,
    todo: list[int],
    workers: int,
    progress: Callable[[int], object],
    pool: HelperPool | None = None,
) -> None:
    """Render the shards `todo` in `workers` processes, this one included, or in this process
    and `pool`'s helpers if it is given (already started by `helper_pool`; `workers` is then
    unused). A helper's error is raised here; so is its death (say, killed for memory), instead
    of a hang.
    """
    cv2.setNumThreads(1)  # parallelism comes from processes; threads would oversubscribe
    count = min(workers, len(todo)) - 1
    if pool is None and count > 0:
        with helper_pool(count) as pool:
            return render_shards(job, todo, workers, progress, pool)
    if pool is not None:
        return pool.render(job, todo, progress)
    composer = Composer(job.cfg, job.fg, job.bg)
    for k in todo:
        render_shard(composer, job, k, progress)


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
        with job.out.writing(shard_name(shard)) as path:
            info = write_shard(path, samples())
    except DiskFull:
        raise  # says itself what to do
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


class _Stopped(Exception):
    """Raised in a helper told to stop: its unfinished shard is removed, never looks complete."""


@dataclass
class _HelperState:
    """What a helper process holds: its channels, set by `_start_helper`, then its job."""

    progress: Any = None  # queue of sample counts to the main process
    stop: Any = None  # event: set when the main process gives up the render
    job_path: str | None = None
    job: Job | None = None
    composer: Composer | None = None


_HELPER = _HelperState()  # set in helper processes only


def _start_helper(progress: Any, stop: Any) -> None:
    """A helper's initializer: one OpenCV thread (processes give the parallelism), the channels
    to the main process, and a watch on that process."""
    cv2.setNumThreads(1)
    # Counts left unread when a render fails must not keep this process from exiting.
    progress.cancel_join_thread()
    _HELPER.progress, _HELPER.stop = progress, stop
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    """End this helper once the main process is gone (killed, say), instead of leaving it waiting
    for a task for ever. A shard it was writing stays a temporary, which the next render removes."""
    parent = mp.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _load_job(job_path: str) -> None:
    """A helper's task: load the job pickled at `job_path` and build its composer, once."""
    if _HELPER.job_path != job_path:
        with open(job_path, "rb") as f:
            job = pickle.load(f)
        _HELPER.job, _HELPER.composer = job, Composer(job.cfg, job.fg, job.bg)
        _HELPER.job_path = job_path


def _render_task(job_path: str, shard: int) -> None:
    """A helper's task: one shard of the job at `job_path`, unless the render was given up."""
    if _HELPER.stop.is_set():
        return
    try:
        _load_job(job_path)
        render_shard(_HELPER.composer, _HELPER.job, shard, _report)
    except Exception as err:
        if not _travels(err):  # the executor would lose it, or call the pool broken
            raise RuntimeError(f"a render helper failed:\n{traceback.format_exc()}") from None
        raise


def _travels(err: BaseException) -> bool:
    """Whether an error survives the trip to the main process (pickled here, rebuilt there)."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any failure means it cannot travel
        return False
    return True


def _report(count: int) -> None:
    """A helper's progress: counts go to the main process; once it gives up, the shard stops."""
    if _HELPER.stop.is_set():
        raise _Stopped
    _HELPER.progress.put(count)


@dataclass
class HelperPool:
    """Helper processes rendering shards beside this one (see `helper_pool`)."""

    executor: ProcessPoolExecutor  # one task per shard
    size: int  # helper processes
    progress: Any  # queue: sample counts from every helper
    folder: str  # for job files

    def render(self, job: Job, todo: list[int], progress: Callable[[int], object]) -> None:
        """Render the shards `todo` in this process and the helpers, each taking the next shard
        when it is free (a helper still starting up delays its own shard, not the render);
        relay the helpers' sample counts to `progress`."""
        path = self.write_job(job)
        shards, running = iter(todo), set()
        given = relayed = 0

        def dispatch() -> None:
            """Raise a helper's error; hand every free helper the next shard; relay counts."""
            nonlocal given, relayed
            with _helper_death_is_an_error():
                for future in [f for f in running if f.done()]:
                    running.discard(future)
                    future.result()
                while len(running) < self.size and (k := next(shards, None)) is not None:
                    running.add(self.executor.submit(_render_task, path, k))
                    given += 1
            relayed += self._relay(progress)

        def relay(n: int) -> None:
            progress(n)
            dispatch()

        dispatch()
        composer = Composer(job.cfg, job.fg, job.bg)  # while the helpers load the job
        while (k := next(shards, None)) is not None:
            render_shard(composer, job, k, relay)
        while running:
            wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            dispatch()
        # Counts travel apart from results: the last ones may still be on their way.
        self._relay(progress, given * job.cfg.samples_per_shard - relayed)

    def write_job(self, job: Job) -> str:
        """The job, by file: ~20 MB of segment pixels on the demo, which the executor would push
        through its pipe with every task."""
        fd, path = tempfile.mkstemp(suffix=".pickle", dir=self.folder)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def _relay(self, progress: Callable[[int], object], wait_for: int = 0) -> int:
        """Pass on the counts received, waiting (up to 5 s each) until `wait_for` have come."""
        relayed = 0
        while True:
            try:
                if relayed < wait_for:
                    count = self.progress.get(timeout=5.0)
                else:
                    count = self.progress.get_nowait()
            except queue.Empty:
                return relayed
            progress(count)
            relayed += count


@contextmanager
def _helper_death_is_an_error() -> Iterator[None]:
    """A helper's death (the executor then refuses every task) becomes one clear message."""
    try:
        yield
    except BrokenProcessPool as err:
        raise UserError(
            "a render helper died (killed for lack of memory?); finished shards are kept: "
            "re-run to render the rest, with fewer --workers if memory is short"
        ) from err


@contextmanager
def helper_pool(count: int) -> Iterator[HelperPool]:
    """`count` helper processes, started at once; they wait for `HelperPool.render`. Leaving the
    block ends them; left by an error, they drop their shards at the next sample."""
    # spawn: no fork of a parent holding OpenCV/tqdm threads; the same on Linux and macOS.
    ctx = mp.get_context("spawn")
    progress, stop = ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory(prefix="synth-render-") as tmp:
        executor = ProcessPoolExecutor(
            count, mp_context=ctx, initializer=_start_helper, initargs=(progress, stop)
        )
        try:
            # The executor starts a process for each task no idle one can take: all, right now.
            for _ in range(count):
                executor.submit(int)
            yield HelperPool(executor, count, progress, tmp)
        except BaseException:
            stop.set()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def write_manifests(job: Job, start: int, stop: int) -> Path | str:
    """manifest-A-B.json for a partial range; manifest.json once every shard is complete (written
    last: readers trust only the shards a manifest names)."""
    cfg, out = job.cfg, job.out
    records = read_records(out, range(cfg.num_shards), job.fingerprint)
    common = dict(
        num_shards=cfg.num_shards,
        samples_per_shard=cfg.samples_per_shard,
        canvas=cfg.canvas,
        classes=job.fg.classes,
        seed=cfg.seed,
        params={"synth": to_dict(cfg), "data": to_dict(job.data)},
        skipped_inputs=[b.as_dict() for b in (*job.fg.bad, *job.bg.bad)],
    )
    name = MANIFEST
    if (start, stop) != (0, cfg.num_shards):
        name = range_manifest_name(start, stop)
        out.write_json(name, build_manifest(records=records[start:stop], **common))
    done = sum(complete_shards(out, records, verify=False))
    if done == cfg.num_shards:
        name = MANIFEST
        out.write_json(name, build_manifest(records=records, **common))
        log.info("%d shards complete: %s", done, out.join(name))
    else:
        log.info(
            "%d of %d shards complete; %s is written once all are", done, cfg.num_shards, MANIFEST
        )
    return out.join(name) if out.remote else out.path / name


@click.command(help="Render cut-transform-paste composites into WebDataset shards.")
@click.option(
    "--out",
    required=True,
    help="Folder or URL (s3://BUCKET/PREFIX, gs://..., file://...) for the shards and "
    "manifest.json; credentials from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS).",
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
    help="Processes rendering whole shards, this one included; with --distributor dask and no "
    "--scheduler, the local cluster's worker processes.",
)
@click.option(
    "--distributor",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="local: this machine's processes. dask: tasks on a dask cluster (pip install "
    "'segloc[cluster]'); each worker writes its shards straight to --out.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    envvar="DASK_SCHEDULER_ADDRESS",
    help="A running dask scheduler, e.g. tcp://10.0.0.5:8786 [default: $DASK_SCHEDULER_ADDRESS, "
    "else a local cluster of --workers processes]. Workers need the inputs at the same paths.",
)
@click.option(
    "--shards-per-task",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With --distributor dask: consecutive shards per task (fewer, longer tasks).",
)
@click.option("--shard-range", metavar="A:B", help="Render only shards A..B-1 (fan-out).")
@click.option(
    "--params",
    "params_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Params file [default: ./params.yaml if there is one, else the shipped defaults].",
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
    distributor,
    scheduler,
    shards_per_task,
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
        distributor,
        scheduler if distributor == "dask" else None,
        shards_per_task,
    )
    click.echo(str(path))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command()
