"""Stream two-view samples out of `synth render` shards into ready batches (schema v1: `synth.shards`
reads and checks manifest and samples).

    shards = open_shards("shards/")                     # validates manifest.json
    spec = StreamSpec(shards.urls, shards.canvas, len(shards.classes), Needs(2, True, False),
                      batch_size=32, buffer=512, seed=0, rank=0, epoch=0, epoch_steps=100,
                      start=0, streams=4)
    for batch in make_loader(spec, workers=1): ...      # dicts of uint8 / int64 tensors

Determinism (so that a resumed run repeats an uninterrupted one): each process reads
`pretrain.streams` streams; batch b of a data epoch comes from stream b % streams, and a stream's
shard draws and shuffle buffer are seeded by (seed, rank, epoch, stream) only. The loader's
workers (any divisor of the stream count, or none) share the streams out, so the batches do not
depend on how many workers read them: `pretrain.workers` is a runtime setting. Batch b is always
the next `batch_size` raw samples of its stream, so resuming skips consumed batches by counting
raw samples, without decoding them. Shards are drawn with replacement (resampled), so every rank
and worker gets an endless stream whatever the shard count, and every rank takes the same number
of steps per epoch. Samples that fail to decode are dropped from their batch and counted.
Samples named in `exclude` (the monitor's hold-out) are dropped as they are read, before the
shuffle: a stream reads the same shards in the same order as without them, only they are missing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import webdataset as wds
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segloc.errors import UserError
from segloc.store import is_remote, join, local_path, normalize, open_store, read_bytes
from synth.shards import (
    MANIFEST,
    decode_labels,
    decode_view,
    listed_shards,
    parse_meta,
    read_manifest,
)
from synth.shards import SampleError as BadSample  # the reason counted in the metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSet:
    root: Path | str  # a folder, or a URL prefix (s3://, gs://, ...)
    manifest: Path | str
    sha256: str  # of manifest.json: names the exact data a backbone was trained on
    urls: tuple[str, ...]
    classes: tuple[str, ...]  # class k (1-based) is classes[k - 1]
    canvas: int
    num_samples: int
    digests: tuple[str, ...] = ()  # manifest's sha256 of each shard, aligned with urls


@dataclass(frozen=True)
class Needs:
    """Which members a method decodes: moco reads one view, supervised reads label maps."""

    views: int  # 1 (v0 only) or 2
    masks: bool
    seg: bool


def open_shards(root: str | Path) -> ShardSet:
    """The shards a render's manifest lists, in a local folder or under a URL (`segloc.store`):
    only what the manifest names is read, so a render still under way is never trained on."""
    root = normalize(str(root)) if is_remote(root) else local_path(root)
    if isinstance(root, Path) and not root.is_dir():
        raise UserError(f"{root}: shards folder not found (write one with `synth render`)")
    path = join(root, MANIFEST) if isinstance(root, str) else root / MANIFEST
    try:
        raw = read_bytes(path)
    except FileNotFoundError as err:
        raise UserError(
            f"{path}: manifest not found; is {root} the output of a finished `synth render`?"
        ) from err
    except OSError as err:
        raise UserError(f"{path}: cannot read the manifest ({err.strerror or err})") from err
    manifest = read_manifest(path, raw)
    shards = listed_shards(root, manifest)
    present = open_store(root).sizes([s["name"] for s in manifest["shards"]])
    for shard, entry in zip(shards, manifest["shards"], strict=True):
        if entry["name"] not in present:
            raise UserError(f"{shard}: shard listed in {path} is missing")
    return ShardSet(
        root,
        path,
        hashlib.sha256(raw).hexdigest(),
        tuple(shards),
        tuple(manifest["classes"]),
        manifest["canvas"],
        manifest["num_samples"],
        tuple(str(rec["sha256"]) for rec in manifest["shards"]),
    )


# ---------------------------------------------------------------- decoding one sample


def decode_sample(raw: dict[str, Any], needs: Needs, canvas: int, num_classes: int) -> dict:
    """Arrays of one raw tar sample: views (3xSxS uint8 RGB), label maps, instance masks."""
    meta = parse_meta(_member(raw, "json"))
    views = [f"v{i}" for i in range(needs.views)]
    out: dict[str, Any] = {"img": [_rgb(_member(raw, f"{v}.jpg"), canvas, v) for v in views]}
    if needs.seg:
        out["seg"] = [
            decode_labels(_member(raw, f"{v}.seg.png"), canvas, f"{v}.seg.png") for v in views
        ]
    if needs.masks:
        cls0, ids0, masks0 = _instances(meta, 0, canvas, num_classes)
        cls1, ids1, masks1 = _instances(meta, 1, canvas, num_classes)
        if ids0 != ids1 or not np.array_equal(cls0, cls1):
            raise BadSample("views list different instances")
        out.update(cls=cls0, masks=[masks0, masks1])
    return out


def _member(raw: dict[str, Any], ext: str) -> bytes:
    if ext not in raw:
        raise BadSample(f"member .{ext} missing")
    return raw[ext]


def _rgb(buf: bytes, canvas: int, view: str) -> np.ndarray:
    bgr = decode_view(buf, canvas, f"{view}.jpg")
    # HxWx3 BGR -> 3xHxW RGB, the layout torch wants.
    return np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))


def _instances(
    meta: dict[str, Any], view: int, canvas: int, num_classes: int
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Classes (M,) as 0..C-1, ids, and full masks (M x S x S uint8) of one view."""
    insts = meta["views"][view]["instances"]  # a list: parse_meta checked it
    try:
        classes = np.array([int(inst["class"]) - 1 for inst in insts], dtype=np.int64)
        ids = [int(inst["id"]) for inst in insts]
        rles = [dict(inst["rle"]) for inst in insts]
    except (KeyError, TypeError, ValueError) as err:
        raise BadSample(f"view {view}: instance without class/id/rle") from err
    if ((classes < 0) | (classes >= num_classes)).any():
        raise BadSample(f"view {view}: instance class outside 1..{num_classes}")
    if any(list(r.get("size", ())) != [canvas, canvas] for r in rles):
        raise BadSample(f"view {view}: instance RLE size is not [{canvas}, {canvas}]")
    # decode gives S x S x M (Fortran order); M x S x S is what the batch stacks.
    masks = mask_utils.decode(rles)
    return classes, ids, np.ascontiguousarray(masks.transpose(2, 0, 1))


# ---------------------------------------------------------------- streams and batches


@dataclass(frozen=True)
class StreamSpec:
    urls: tuple[str, ...]
    canvas: int
    num_classes: int
    needs: Needs
    batch_size: int
    buffer: int
    seed: int
    rank: int
    epoch: int
    epoch_steps: int  # batches per process in one data epoch
    start: int  # first batch index of the epoch this loader yields (> 0 when resuming)
    streams: int  # pretrain.streams: fixed per run so batches don't depend on the worker count
    exclude: frozenset[tuple[str, str]] = frozenset()  # (url, key) of samples never to yield
    digests: tuple[str, ...] | None = None  # each url's sha256, checked as it is read; None: not
    bad_data: str = "fail"  # pretrain.bad_data: a bad shard or sample stops the run, or is skipped


class _ReadGuard:
    """Count unreadable shard data (webdataset handler) and stop an endless loop of bad shards."""

    def __init__(self, num_urls: int):
        self.limit = 2 * num_urls + 8
        self.reads_without_sample = 0
        self.errors = 0
        self.bad_shards: dict[str, str] = {}  # url -> why, each named once per stream
        self.fatal: str | None = None  # bad_data=fail: why the stream stopped
        self.last_error = ""

    def bad_shard(self, url: str, why: str) -> None:
        if url not in self.bad_shards:
            self.bad_shards[url] = why
            log.warning("shard %s: %s", url, why)

    def handler(self, exn: Exception) -> bool:
        self.errors += 1
        self.last_error = str(exn)
        log.warning("skipping unreadable shard data: %s", exn)
        return True  # keep streaming

    def shard_opened(self) -> None:
        self.reads_without_sample += 1
        if self.reads_without_sample > self.limit:
            bad = ", ".join(sorted(self.bad_shards)[:3])
            self.fatal = (
                f"no readable sample in {self.limit} shard reads in a row: the shards look "
                f"damaged (first bad: {bad or 'none named'}); render them again"
            )


def raw_samples(spec: StreamSpec, stream: int, guard: _ReadGuard) -> Iterator[dict[str, Any]]:
    """Endless shuffled stream of undecoded samples; a pure function of (seed, rank, epoch, stream)."""
    seq = np.random.SeedSequence([spec.seed, spec.rank, spec.epoch, stream])
    shard_seq, shuffle_seq = seq.spawn(2)
    pick = np.random.default_rng(shard_seq)

    def shards() -> Iterator[dict[str, Any]]:
        while True:
            guard.shard_opened()
            if guard.fatal is not None:
                return
            k = int(pick.integers(len(spec.urls)))
            if spec.digests is None:  # unchecked: streamed from the file as it is read
                yield {"url": spec.urls[k]}
                continue
            opened = open_checked(spec, k, guard)
            if opened is not None:
                yield opened

    def samples() -> Iterator[dict[str, Any]]:
        streams = shards()
        if spec.digests is None:
            streams = wds.tariterators.url_opener(streams, handler=guard.handler)
        files = wds.tariterators.tar_file_expander(streams, handler=guard.handler)
        for sample in wds.tariterators.group_by_keys(files, handler=guard.handler):
            # A held-out sample was readable: it counts as a read for the corrupt-shard guard,
            # or a shard held out whole, drawn a few times in a row, would look corrupt.
            guard.reads_without_sample = 0
            if (sample.get("__url__"), sample.get("__key__")) not in spec.exclude:
                yield sample

    # Shuffle encoded samples, before decode: the buffer holds bytes, not arrays.
    rng = random.Random(int(shuffle_seq.generate_state(1, np.uint64)[0]))
    return wds.shuffle(spec.buffer, initial=spec.buffer, rng=rng)(samples())


def open_checked(spec: StreamSpec, k: int, guard: _ReadGuard) -> dict[str, Any] | None:
    """Shard k read whole and its sha256 checked against the manifest before any sample of it is
    used: a damaged shard (scrambled, cut short, replaced) is named, not trained on. None: skip it
    (bad_data=skip) or stop (fail; `guard.fatal` says why)."""
    url = spec.urls[k]
    if url in guard.bad_shards:
        return _refuse(spec, guard, url, guard.bad_shards[url])
    try:
        data = read_bytes(url)
    except OSError as err:
        return _refuse(spec, guard, url, f"unreadable ({err.strerror or err})")
    except UserError as err:  # object storage: credentials, network
        return _refuse(spec, guard, url, f"unreadable ({err.message})")
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.digests[k]:
        why = (
            f"sha256 {digest[:12]}… does not match the manifest's {spec.digests[k][:12]}… "
            f"({len(data)} bytes): changed or damaged since `synth render` wrote it"
        )
        return _refuse(spec, guard, url, why)
    return {"url": url, "stream": io.BytesIO(data)}


def _refuse(spec: StreamSpec, guard: _ReadGuard, url: str, why: str) -> None:
    """fail: the stream stops with this reason; skip: the shard is named once and left out."""
    if spec.bad_data == "fail":
        guard.fatal = (
            f"shard {url}: {why}. Render it again (`synth render` rewrites it byte-identical) "
            "or set pretrain.bad_data=skip to train without it"
        )
    else:
        guard.bad_shard(url, why)


RENDER_OR_SKIP = "render the shard again, or set pretrain.bad_data=skip"


def stream_batches(spec: StreamSpec, stream: int) -> Iterator[dict[str, Any]]:
    """The batches of `stream` in this data epoch from index `spec.start` on."""
    skip = len(range(stream, spec.start, spec.streams))
    todo = len(range(stream, spec.epoch_steps, spec.streams)) - skip
    guard = _ReadGuard(len(spec.urls))
    raw = raw_samples(spec, stream, guard)
    for _ in islice(raw, skip * spec.batch_size):  # resume: consumed batches, never decoded
        pass
    named: set[str] = set()
    for _ in range(todo):
        errors_before = guard.errors
        raws = list(islice(raw, spec.batch_size))
        unreadable = guard.errors - errors_before
        if guard.fatal is None and unreadable and spec.bad_data == "fail":
            guard.fatal = f"unreadable shard data ({guard.last_error}); {RENDER_OR_SKIP}"
        batch = {"fatal": guard.fatal} if guard.fatal is not None else decode_batch(raws, spec)
        if "fatal" in batch:  # the loop stops the run with this line
            yield batch
            return
        if unreadable:
            batch["skipped"]["unreadable shard data"] = unreadable
        batch["bad_shards"] = {u: w for u, w in guard.bad_shards.items() if u not in named}
        named.update(batch["bad_shards"])
        yield batch


def decode_batch(raws: list[dict[str, Any]], spec: StreamSpec) -> dict[str, Any]:
    samples, skipped, first = [], Counter(), None
    for raw in raws:
        try:
            samples.append(decode_sample(raw, spec.needs, spec.canvas, spec.num_classes))
        except (BadSample, cv2.error) as err:
            reason = str(err) if isinstance(err, BadSample) else "image decode error"
            where = f"sample {raw.get('__key__')} of shard {raw.get('__url__')}"
            first = first or f"{where}: {reason}"
            if spec.bad_data == "skip":
                log.warning("skipping %s: %s", where, reason)
            skipped[reason] += 1
    if first is not None and spec.bad_data == "fail":
        return {"fatal": f"{first}; {RENDER_OR_SKIP}"}
    if not samples:  # bad_data=skip, and nothing left: the shards are damaged beyond skipping
        n = sum(skipped.values())
        return {"fatal": f"every sample of a batch failed to decode ({first}; {n} in all)"}
    batch = collate(samples, spec.needs)
    batch["skipped"] = dict(skipped)
    return batch


def collate(samples: list[dict[str, Any]], needs: Needs) -> dict[str, Any]:
    """Stack samples; instances of the whole batch are concatenated, image-major.

    inst_img (M,) is the image each instance belongs to (non-decreasing) and inst_slot (M,) its
    index within that image, so pooling can scatter instances into a B x max-count grid.
    """
    out: dict[str, Any] = {}
    for v in range(needs.views):
        out[f"img{v}"] = torch.from_numpy(np.stack([s["img"][v] for s in samples]))
        if needs.seg:
            out[f"seg{v}"] = torch.from_numpy(np.stack([s["seg"][v] for s in samples]))
    if needs.masks:
        counts = [len(s["cls"]) for s in samples]
        out["inst_img"] = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts))
        out["inst_slot"] = torch.cat([torch.arange(c) for c in counts])
        out["inst_cls"] = torch.from_numpy(np.concatenate([s["cls"] for s in samples]))
        for v in range(2):
            out[f"masks{v}"] = torch.from_numpy(np.concatenate([s["masks"][v] for s in samples]))
    return out


class TwoViewStream(IterableDataset):
    """The epoch's batches start, start + 1, ...; with W DataLoader workers (W divides the stream
    count), worker w yields batches start + w, start + w + W, ..., each from its own streams."""

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        yield from worker_batches(self.spec, worker, workers)


def worker_batches(spec: StreamSpec, worker: int, workers: int) -> Iterator[dict[str, Any]]:
    """Batches start + worker + j * workers of the epoch, in order. The DataLoader asks its
    workers in turn, so it hands them out as batches start, start + 1, ... Batch b comes from
    stream b % streams; as `workers` divides `streams`, a stream is read by one worker only."""
    first = spec.start + worker
    mine = {b % spec.streams for b in range(first, first + spec.streams, workers)}
    gens = {s: stream_batches(spec, s) for s in sorted(mine)}
    for b in range(first, spec.epoch_steps, workers):
        batch = next(gens[b % spec.streams])
        yield batch
        if "fatal" in batch:  # bad_data=fail: the stream stopped; the loop stops the run
            return


def _worker_init(_: int) -> None:
    # Ctrl-C reaches the whole process group; the main process answers it with a checkpoint and
    # needs the batch in flight. SIGTERM stays default: multiprocessing stops workers with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def make_loader(spec: StreamSpec, workers: int, pin_memory: bool = False) -> DataLoader:
    if workers and spec.streams % workers:
        raise ValueError(f"{workers} workers cannot share {spec.streams} streams evenly")
    return DataLoader(
        TwoViewStream(spec),
        batch_size=None,  # the stream yields whole batches
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )
