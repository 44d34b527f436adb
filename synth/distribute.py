"""`synth render --distributor dask`: the shards of a render as tasks on a dask cluster.

    synth render --out s3://bucket/shards --distributor dask --scheduler tcp://10.0.0.5:8786
    synth render --out data/shards --distributor dask --workers 2     # a local cluster

The driver (this process) loads and checks the inputs, splits the shards still to do into tasks of
`--shards-per-task` consecutive shards, and sends the job (config, segments, background names, the
output store) once to every worker. Each task renders its shards with the same code as a local
render and writes each one straight to the output, record after shard; the driver writes the
manifest once every task is done. A shard's bytes depend on its index alone (docs/design.md §4.4),
so the engine, the worker count and the task split never change a byte.

Why dask (docs/design.md §4.6): pure-Python wheels that install from the lock on any machine, a
local cluster that starts in about a second inside the run (tests, one-machine use), the same
client code against a scheduler's address on a cluster, and fsspec (its sibling project) for the
storage. dask is imported here only: the embedded default never needs it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

import cv2

from segloc.errors import UserError
from synth.render import Engine, Job, render_shard

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = "10s"
# Worker settings for a render (measured on the demo, docs/2026-12-07-object-storage.md): dask's
# default MALLOC_TRIM_THRESHOLD_=64 KiB made glibc return memory after every large array, and a
# shard took 40 % longer than in a local helper; the sampling profiler (a thread waking every
# 10 ms) feeds only the dashboard. Thread caps as dask sets them: one thread per worker.
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
}

# A worker's composer per job fingerprint: built once, reused by every task of the job it runs.
_COMPOSERS: dict[str, Any] = {}


@contextmanager
def cluster(engine: Engine) -> Iterator[Callable[[], Any]]:
    """Connect to the engine's scheduler now (`UserError` naming one that cannot be reached,
    before any input is loaded), or start its local cluster in the background (while the driver
    loads the inputs); yields a function that returns the client, waiting for it if need be."""
    if importlib.util.find_spec("distributed") is None:  # imported in the background below
        raise UserError("--distributor dask needs dask.distributed: pip install 'segloc[cluster]'")
    if engine.scheduler is not None:
        client, _ = _connect(engine)
        try:
            yield lambda: client
        finally:
            client.close()
        return
    with ThreadPoolExecutor(1) as starter:
        starting = starter.submit(_connect, engine)
        try:
            yield lambda: starting.result()[0]
        finally:
            with suppress(Exception):  # a failed start was reported by the caller's wait
                for part in starting.result():
                    if part is not None:
                        part.close()


def render_on_dask(job: Job, todo: list[int], engine: Engine, client: Any) -> None:
    """Render the shards `todo` as tasks on the engine's cluster; a task's error is raised here,
    as one line, and the finished shards are kept for a re-run."""
    from dask.distributed import as_completed
    from tqdm import tqdm

    size = engine.shards_per_task
    tasks = [todo[i : i + size] for i in range(0, len(todo), size)]
    per_shard = job.cfg.samples_per_shard
    if not job.out.remote and engine.scheduler is not None:
        log.info("workers write to the local path %s: it must be shared with them", job.out)
    bar = tqdm(total=len(todo) * per_shard, unit="sample", desc="render (dask)", smoothing=0.05)
    with bar, client.as_current():
        shared = client.scatter(job, broadcast=True)
        futures = [
            client.submit(
                render_task, shared, shards, key=f"render-{job.fingerprint[:12]}-{shards[0]}"
            )
            for shards in tasks
        ]
        try:
            for future, done in as_completed(futures, with_results=True, raise_errors=False):
                if future.status == "error":
                    raise _task_error(future)
                bar.update(len(done) * per_shard)
        except BaseException:
            client.cancel(futures)
            raise


def render_task(job: Job, shards: list[int]) -> list[int]:
    """A worker's task: render `shards` of `job` into its output; returns them."""
    cv2.setNumThreads(1)  # one thread per worker process: parallelism comes from the workers
    composer = _COMPOSERS.get(job.fingerprint)
    if composer is None:
        from synth.compose import Composer

        _COMPOSERS.clear()
        composer = _COMPOSERS[job.fingerprint] = Composer(job.cfg, job.fg, job.bg)
    for k in shards:
        render_shard(composer, job, k, lambda n: None)
    return shards


def _task_error(future: Any) -> UserError:
    err = future.exception()
    if isinstance(err, UserError):
        return err
    name = type(err).__name__
    if name == "KilledWorker":
        return UserError(
            "a dask worker died rendering shards (killed for lack of memory?); finished shards "
            "are kept: re-run to render the rest"
        )
    return UserError(f"a render task failed: {name}: {err}")


def _connect(engine: Engine) -> tuple[Any, Any]:
    """A client of the scheduler at `engine.scheduler`, or of a local cluster started for the run
    (worker processes, one thread each, no dashboard), and that cluster (None for a scheduler);
    `UserError` naming an unreachable scheduler."""
    from dask.distributed import Client, LocalCluster

    # The engine's own start/stop chatter stays out of the render's log unless something is wrong.
    logging.getLogger("distributed").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    if engine.scheduler is not None:
        try:
            client = Client(engine.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            raise UserError(
                f"dask scheduler {engine.scheduler}: unreachable ({err}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`, or leave --scheduler out "
                "for a local cluster"
            ) from err
        log.info("dask scheduler %s: %d workers", engine.scheduler, _workers(client))
        return client, None
    import dask

    dask.config.set(WORKER_CONFIG)
    local = LocalCluster(
        n_workers=engine.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.WARNING,
        preload=["synth.distribute"],  # imports while the driver loads the inputs
    )
    log.info("dask local cluster: %d worker processes", engine.workers)
    return Client(local, set_as_default=False), local


def _workers(client: Any) -> int:
    return len(client.scheduler_info().get("workers", {}))
