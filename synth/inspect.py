"""`synth inspect`: statistics, schema validation and a contact sheet of rendered shards.

    synth inspect data/shards                               # every shard of a render
    synth inspect data/shards/train-000000.tar --sheet sheet.png --sheet-samples 8
    python -m synth.inspect data/shards

Validation follows shard schema v1 (synth/shards.py): the five members, the JSON fields, image and
class-map sizes, class-map values in {0..C, 255}, and each instance's RLE against the class map: a
pixel whose class map is not 255 carries the class of the topmost instance covering it (0 where
none), so each instance's `visible_area` pixels carry its class. Exits non-zero naming the first
offending samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segloc.atomic import atomic_path
from segloc.errors import UserError
from segloc.store import is_remote, join, local_path, normalize, read_bytes
from synth.shards import (
    IGNORE,
    MANIFEST,
    MEMBERS,
    SCHEMA_VERSION,
    SampleError,
    decode_labels,
    decode_view,
    listed_shards,
    parse_meta,
    read_manifest,
)

log = logging.getLogger(__name__)

# Violations printed in full; the rest are counted.
SHOW_ERRORS = 10


@dataclass
class Stats:
    shards: int = 0
    samples: int = 0
    classes: list[str] = field(default_factory=list)
    instances: Counter = field(default_factory=Counter)  # class name -> instance pairs
    sizes: Counter = field(default_factory=Counter)  # "HxW" -> views
    bytes: Counter = field(default_factory=Counter)  # member suffix -> bytes
    errors: list[str] = field(default_factory=list)


def iter_samples(
    path: Path | str, data: bytes | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per sample of a tar (the file at `path`, or `data` read from it),
    grouping consecutive members by key."""
    key, members = None, {}
    try:
        source = {"name": path} if data is None else {"fileobj": io.BytesIO(data)}
        with tarfile.open(mode="r", **source) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name_key, _, suffix = info.name.partition(".")
                if name_key != key and key is not None:
                    yield key, members
                    members = {}
                key = name_key
                members[suffix] = tar.extractfile(info).read()
    except (OSError, tarfile.TarError) as err:
        raise UserError(f"{path}: not a readable tar ({err})") from err
    if key is not None:
        yield key, members


def validate_sample(key: str, members: dict[str, bytes], classes: list[str] | None = None) -> dict:
    """The sample's parsed JSON; `SampleError` on any schema violation."""
    if sorted(members) != sorted(MEMBERS):
        missing, extra = set(MEMBERS) - set(members), set(members) - set(MEMBERS)
        raise SampleError(f"members: missing {sorted(missing)}, unexpected {sorted(extra)}")
    meta = parse_meta(members["json"], key, classes)
    ids = None
    for v, view in enumerate(meta["views"]):
        size = view.get("height")
        if not isinstance(size, int) or view.get("width") != size:
            raise SampleError(f"json: view {v} is {view.get('width')!r}x{size!r}, not square")
        decode_view(members[f"v{v}.jpg"], size, f"v{v}.jpg")
        seg = decode_labels(members[f"v{v}.seg.png"], size, f"v{v}.seg.png")
        _check_view(v, view, seg, len(meta["classes"]))
        view_ids = [(inst["id"], inst["class"], inst["source"]) for inst in view["instances"]]
        if ids is not None and view_ids != ids:
            raise SampleError("views list different instances (ids, classes or sources differ)")
        ids = view_ids
    return meta


def _check_view(v: int, view: dict, seg: np.ndarray, num_classes: int) -> None:
    """Class-map values, and each instance against the class map (sizes checked on decode)."""
    h, w = seg.shape
    bad = set(np.unique(seg).tolist()) - set(range(num_classes + 1)) - {IGNORE}
    if bad:
        raise SampleError(
            f"v{v}.seg.png: values {sorted(bad)} outside 0..{num_classes} and {IGNORE}"
        )
    instances = view["instances"]
    masks = [_check_instance(v, i, inst, (h, w), num_classes) for i, inst in enumerate(instances)]
    expected = np.zeros((h, w), dtype=np.uint8)
    covered = np.zeros((h, w), dtype=bool)
    # Walk from the top of the stack down: an instance is visible where nothing above covers it.
    for inst, mask in reversed(list(zip(instances, masks, strict=True))):
        visible = mask & ~covered
        if inst.get("visible_area") != int(visible.sum()):
            raise SampleError(
                f"view {v} instance {inst['id']}: visible_area {inst.get('visible_area')!r}, "
                f"topmost on {int(visible.sum())} pixels"
            )
        expected[visible] = inst["class"]
        covered |= mask
    wrong = (seg != expected) & (seg != IGNORE)
    if wrong.any():
        y, x = np.argwhere(wrong)[0]
        raise SampleError(
            f"v{v}.seg.png: {int(wrong.sum())} pixels disagree with the topmost instance, e.g. "
            f"({x}, {y}) is {seg[y, x]}, expected {expected[y, x]}"
        )


def _check_instance(
    v: int, i: int, inst: Any, size: tuple[int, int], num_classes: int
) -> np.ndarray:
    where = f"view {v} instance {i}"
    if not isinstance(inst, dict) or inst.get("id") != i:
        raise SampleError(f"{where}: expected id {i}")
    if not isinstance(inst.get("class"), int) or not 1 <= inst["class"] <= num_classes:
        raise SampleError(f"{where}: class {inst.get('class')!r} not in 1..{num_classes}")
    try:
        rle = {"size": inst["rle"]["size"], "counts": inst["rle"]["counts"].encode("ascii")}
        mask = mask_utils.decode(rle).astype(bool)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise SampleError(f"{where}: rle does not decode ({err})") from err
    if mask.shape != size:
        raise SampleError(f"{where}: rle size {list(mask.shape)}, expected {list(size)}")
    if inst.get("area") != int(mask.sum()) or not mask.any():
        raise SampleError(f"{where}: area {inst.get('area')!r}, mask has {int(mask.sum())} pixels")
    bbox = [int(b) for b in mask_utils.toBbox(rle)]
    if inst.get("bbox") != bbox:
        raise SampleError(f"{where}: bbox {inst.get('bbox')!r}, mask gives {bbox}")
    return mask


def inspect_path(path: Path | str) -> Stats:
    """Statistics and schema violations of a shard or of a rendered folder (or URL prefix)."""
    stats = Stats()
    shards, classes = _shards_of(path, stats)
    for shard, data in shards:
        stats.shards += 1
        for key, members in iter_samples(shard, data):
            _add_sample(stats, shard, key, members, classes)
    return stats


def _shards_of(
    path: Path | str, stats: Stats
) -> tuple[Iterator[tuple[Path | str, bytes | None]], list[str] | None]:
    """(shard, its bytes or None to read the file) of a shard or render, lazily; the classes of
    its manifest. A shard whose checksum differs from the manifest's is recorded in `stats`."""
    if is_remote(path):
        return _listed(normalize(str(path)), stats)
    path = local_path(path)
    if path.is_file():
        return iter([(path, None)]), None
    if not path.is_dir():
        raise UserError(f"{path}: no such shard or folder")
    if not (path / MANIFEST).exists():
        stats.errors.append(f"{path}: no {MANIFEST} (render incomplete?)")
        return ((shard, None) for shard in sorted(path.glob("*.tar"))), None
    return _listed(path, stats)


def _listed(
    root: Path | str, stats: Stats
) -> tuple[Iterator[tuple[Path | str, bytes | None]], list[str]]:
    """The shards the manifest in `root` lists, each read once and checked against it."""
    path = join(root, MANIFEST)
    manifest = read_manifest(path)  # a URL without one: "manifest not found (render incomplete?)"
    stats.classes = list(manifest["classes"])

    def shards() -> Iterator[tuple[Path | str, bytes | None]]:
        for entry, shard in zip(manifest["shards"], listed_shards(root, manifest), strict=True):
            try:
                data = read_bytes(shard)
            except FileNotFoundError:
                data = None
            if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                stats.errors.append(f"{shard}: missing or checksum differs from {MANIFEST}")
                continue
            yield shard, data

    return shards(), stats.classes


def _add_sample(
    stats: Stats, shard: Path | str, key: str, members: dict, classes: list[str] | None
) -> None:
    stats.samples += 1
    for suffix, data in members.items():
        stats.bytes[suffix] += len(data)
    try:
        meta = validate_sample(key, members, classes)
    except SampleError as err:
        stats.errors.append(f"{key} in {os.fspath(shard).rsplit('/', 1)[-1]}: {err}")
        return
    stats.classes = stats.classes or meta["classes"]
    for inst in meta["views"][0]["instances"]:
        stats.instances[meta["classes"][inst["class"] - 1]] += 1
    for view in meta["views"]:
        stats.sizes[f"{view['height']}x{view['width']}"] += 1


def format_stats(stats: Stats) -> str:
    n = max(stats.samples, 1)
    total = sum(stats.instances.values())
    lines = [
        f"shards: {stats.shards}  samples: {stats.samples}  instance pairs: {total} "
        f"({total / n:.2f} per sample)",
        "view sizes: " + ", ".join(f"{k} ({v})" for k, v in sorted(stats.sizes.items())),
        f"bytes: {sum(stats.bytes.values())} in members; per sample: "
        + ", ".join(f"{k} {v / n / 1024:.1f} KiB" for k, v in sorted(stats.bytes.items())),
        "instances per class:",
    ]
    width = max((len(c) for c in stats.classes), default=0)
    lines += [f"  {c:<{width}}  {stats.instances[c]}" for c in stats.classes]
    return "\n".join(lines)


def contact_sheet(path: Path | str, out: Path, count: int) -> None:
    """Both views of the first `count` samples side by side, instance outlines coloured by class."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    samples = _first_samples(path, count)
    if not samples:
        raise UserError(f"{path}: no samples to draw")
    classes = samples[0][1]["classes"]
    colors = _palette(len(classes))
    rows = (len(samples) + 1) // 2
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3.1 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (members, meta) in enumerate(samples):
        for v in range(2):
            ax = axes[n // 2, 2 * (n % 2) + v]
            ax.imshow(_outlined(members[f"v{v}.jpg"], meta["views"][v], colors))
            ax.set_title(f"{meta['key']} v{v}  ({meta['views'][v]['background']})", fontsize=8)
    handles = [
        Patch(facecolor=np.array(c) / 255, edgecolor="black", label=f"{k + 1} {name}")
        for k, (name, c) in enumerate(zip(classes, colors, strict=True))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(classes)), fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / (3.1 * rows + 0.6), 1, 1))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _first_samples(path: Path | str, count: int) -> list[tuple[dict, dict]]:
    shards, _ = _shards_of(path, Stats())
    out = []
    for shard, data in shards:
        for _, members in iter_samples(shard, data):
            out.append((members, json.loads(members["json"])))
            if len(out) == count:
                return out
    return out


def _outlined(jpg: bytes, view: dict, colors: list[tuple]) -> np.ndarray:
    """RGB view upscaled x3 with each instance's full-mask outline and its id (the pair index)."""
    image = cv2.cvtColor(decode_view(jpg, view["height"], "jpg"), cv2.COLOR_BGR2RGB)
    f = 3
    image = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
    for inst in view["instances"]:
        rle = {"size": inst["rle"]["size"], "counts": inst["rle"]["counts"].encode("ascii")}
        mask = cv2.resize(mask_utils.decode(rle), None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        color = colors[inst["class"] - 1]
        cv2.drawContours(image, contours, -1, color, 2)
        x, y, w, h = (f * b for b in inst["bbox"])
        cv2.putText(
            image,
            str(inst["id"]),
            (x + 2, y + 22),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.8,
            color,
            2,
            cv2.LINE_AA,
        )
    return image


# Twelve colours told apart at a glance, also on dark metal and pale organic scan regions.
PALETTE = (
    (230, 25, 75),
    (245, 130, 48),
    (255, 225, 25),
    (60, 180, 75),
    (70, 240, 240),
    (0, 130, 200),
    (145, 30, 180),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (255, 255, 255),
)


def _palette(n: int) -> list[tuple[int, int, int]]:
    """n RGB colours: the fixed twelve, then evenly spaced hues."""
    hsv = np.array([[[int(180 * k / max(n, 1)), 230, 255] for k in range(n)]], dtype=np.uint8)
    hues = [tuple(int(c) for c in rgb) for rgb in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]]
    return [PALETTE[k] if k < len(PALETTE) else hues[k] for k in range(n)]


@click.command(
    help="Print statistics of shards and check them against shard schema v1. PATH: a shard, a "
    "render's folder, or its URL (s3://BUCKET/PREFIX, gs://...; credentials from the environment)."
)
@click.argument("path")
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a contact sheet PNG of the first samples.",
)
@click.option("--sheet-samples", type=click.IntRange(min=1), default=8, show_default=True)
def command(path: str, sheet: Path | None, sheet_samples: int) -> None:
    if not is_remote(path) and not local_path(path).exists():
        raise UserError(f"{path}: no such shard or folder")
    stats = inspect_path(path)
    click.echo(format_stats(stats))
    if sheet is not None:
        contact_sheet(path, sheet, sheet_samples)
        click.echo(f"contact sheet: {sheet}")
    if stats.errors:
        for line in stats.errors[:SHOW_ERRORS]:
            click.echo(f"violation: {line}", err=True)
        more = len(stats.errors) - SHOW_ERRORS
        raise UserError(
            f"{len(stats.errors)} schema violation(s) in {path}"
            + (f" ({more} not shown)" if more > 0 else "")
        )
    click.echo(f"schema v{SCHEMA_VERSION}: ok")


if __name__ == "__main__":
    command()
