"""Shard schema v1: sample encoding, deterministic tar writing, per-shard records and the manifest.

This module is the contract between `synth render` and `pretrain` (docs/design.md §3.2). A shard
`{split}-{shard:06d}.tar` holds samples of five members sharing a dot-free key `s{index:08d}`:

    KEY.json                        schema, key, index, classes, views[2] with instances
    KEY.v0.jpg / KEY.v1.jpg         canvas x canvas RGB JPEG composites
    KEY.v0.seg.png / KEY.v1.seg.png single-channel uint8 class maps (0 bg, 1..C, 255 ignore)

Tars are byte-reproducible: members sorted by name, mtime 0, uid/gid 0, mode 0o644, no owner
names, ustar format. Each finished shard gets a record in `.records/` (checksum plus a fingerprint
of everything that determines its bytes) so an interrupted or fanned-out render can resume and
the union of several `--shard-range` runs can be given one manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segloc.atomic import atomic_path
from segloc.errors import UserError
from segloc.provenance import RENDER, check_versions, versions
from segloc.store import Bucket, Folder, is_remote, join, read_bytes

SCHEMA_VERSION = 1
SPLIT = "train"
MANIFEST = "manifest.json"
RECORDS = ".records"
IGNORE = 255
MEMBERS = ("json", "v0.jpg", "v0.seg.png", "v1.jpg", "v1.seg.png")


def shard_name(index: int, split: str = SPLIT) -> str:
    return f"{split}-{index:06d}.tar"


def sample_key(index: int) -> str:
    return f"s{index:08d}"


def range_manifest_name(start: int, stop: int) -> str:
    return f"manifest-{start:06d}-{stop:06d}.json"


@dataclass(frozen=True)
class View:
    background: str  # file name of the background scan
    image: np.ndarray  # SxSx3 uint8 BGR: OpenCV's order, which its JPEG encoder takes
    classes: np.ndarray  # SxS uint8 class map
    instances: list[dict[str, Any]]  # from `instance_records`, ids 0..n-1 in paste order


def instance_records(
    classes: list[int],
    masks: np.ndarray,
    visible: np.ndarray,
    sources: list[dict[str, int]],
    transforms: list[dict],
) -> list[dict[str, Any]]:
    """The instances of one view, ids 0..n-1; `masks` holds their full masks (overlaps kept) as
    SxSxn uint8 0/1 in Fortran order, so pycocotools encodes them all in one call, without a copy.
    """
    rles = mask_utils.encode(masks)
    # Whole arrays to Python ints at once: per-element int() costs add up over many samples.
    boxes = mask_utils.toBbox(rles).astype(np.int64).tolist()
    areas, visible = mask_utils.area(rles).tolist(), visible.tolist()
    size = [int(v) for v in masks.shape[:2]]
    return [
        {
            "id": i,
            "class": int(classes[i]),
            "bbox": boxes[i],
            "area": areas[i],
            "visible_area": visible[i],
            "rle": {"size": list(size), "counts": rle["counts"].decode("ascii")},
            "source": sources[i],
            "transform": transforms[i],
        }
        for i, rle in enumerate(rles)
    ]


def encode_sample(
    index: int, classes: tuple[str, ...], views: list[View], jpeg_quality: int, png_level: int
) -> dict[str, bytes]:
    """Member suffix -> bytes of one sample (the key is added by `write_shard`)."""
    key = sample_key(index)
    meta = {
        "schema": SCHEMA_VERSION,
        "key": key,
        "index": index,
        "classes": list(classes),
        "views": [
            {
                "background": v.background,
                "height": int(v.image.shape[0]),
                "width": int(v.image.shape[1]),
                "instances": v.instances,
            }
            for v in views
        ],
    }
    members = {"json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")}
    for i, view in enumerate(views):
        members[f"v{i}.jpg"] = encode_image(view.image, jpeg_quality)
        members[f"v{i}.seg.png"] = encode_labels(view.classes, png_level)
    return members


def encode_image(bgr: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an SxSx3 uint8 BGR view."""
    return _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])


def encode_labels(classes: np.ndarray, level: int) -> bytes:
    """PNG bytes of an SxS uint8 class map.

    Unfiltered rows and zlib's run-length matching: a class map is runs of equal values, so this
    is 4-5x faster than libpng's default (trying every row filter) and half the size (0.44 vs
    0.82 kB on the demo's 160 px maps); the zlib level then hardly matters. Lossless either way.
    """
    flags = [
        *(cv2.IMWRITE_PNG_COMPRESSION, level),
        *(cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE),
        *(cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE),
    ]
    return _encode(".png", classes, flags)


def _encode(ext: str, image: np.ndarray, flags: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, image, flags)
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {image.shape} image as {ext}")
    return buf.tobytes()


def write_shard(path: Path, samples: Iterable[tuple[int, dict[str, bytes]]]) -> dict[str, Any]:
    """Write (index, members) samples, in increasing index order, as one reproducible tar.

    The tar appears at `path` only once complete. Returns {"samples", "sha256", "bytes"}.
    """
    count, last = 0, None
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        tar = TarWriter(f)
        for index, members in samples:
            if last is not None and index <= last:
                raise ValueError(
                    f"samples must come in increasing index order ({index} after {last})"
                )
            key, last = sample_key(index), index
            for suffix in sorted(members):
                tar.add(f"{key}.{suffix}", members[suffix])
            count += 1
        tar.close()
    return {"samples": count, "sha256": tar.sha256.hexdigest(), "bytes": tar.offset}


BLOCK = 512
RECORD = 20 * BLOCK  # archives are padded to whole records of 20 blocks, as tar does


class TarWriter:
    """Minimal ustar writer for regular files with fixed metadata; hashes what it writes.

    Every header field but name and size is constant (mode 0644, uid/gid 0, mtime 0, no owner
    names, empty device fields), so the bytes depend on the members alone, not on the Python
    version's `tarfile` (whose device fields changed across releases); it is also several times
    cheaper than `tarfile`'s general header code.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256, self.offset = f, hashlib.sha256(), 0

    def add(self, name: str, data: bytes) -> None:
        # One write and one hash update per member: per-call costs add up over small members.
        self._write(b"".join((ustar_header(name, len(data)), data, bytes(-len(data) % BLOCK))))

    def close(self) -> None:
        self._write(bytes(2 * BLOCK))  # end-of-archive marker
        self._write(bytes(-self.offset % RECORD))

    def _write(self, data: bytes) -> None:
        if data:
            self.f.write(data)
            self.sha256.update(data)
            self.offset += len(data)


# A ustar header is the member's name, its size and constant fields: mode 0644, uid/gid 0,
# mtime 0, regular file, no link, "ustar\000" magic, no owner names, devices or prefix.
_HEAD_MODE_TO_GID = b"0000644\0" + b"0000000\0" + b"0000000\0"
_HEAD_MTIME = b"00000000000\0"
_HEAD_REST = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
# The checksum is the byte sum with its own field counted as 8 spaces: the constant part once.
_HEAD_CONSTANT_SUM = sum(_HEAD_MODE_TO_GID) + sum(_HEAD_MTIME) + 8 * 32 + sum(_HEAD_REST)


def ustar_header(name: str, size: int) -> bytes:
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    size_field = b"%011o\0" % size
    checksum = _HEAD_CONSTANT_SUM + sum(raw) + sum(size_field)
    return b"".join(
        (
            raw.ljust(100, b"\0"),
            _HEAD_MODE_TO_GID,
            size_field,
            _HEAD_MTIME,
            b"%06o\0 " % checksum,
            _HEAD_REST,
        )
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_name(shard: int) -> str:
    return f"{RECORDS}/{shard_name(shard).removesuffix('.tar')}.json"


def write_record(out: Folder | Bucket, shard: int, record: dict[str, Any]) -> None:
    out.write_json(record_name(shard), record)


def read_records(
    out: Folder | Bucket, shards: Iterable[int], fingerprint: str
) -> list[dict[str, Any] | None]:
    """Per shard, the record of its finished render with the same inputs, else None (missing,
    damaged, or from other inputs). Read together: concurrent requests on object storage."""
    shards = list(shards)
    raw = out.read_many([record_name(k) for k in shards])
    return [_record(raw.get(record_name(k)), fingerprint) for k in shards]


def _record(raw: bytes | None, fingerprint: str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8")) if raw is not None else None
    except ValueError:  # damaged: render the shard again
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    return record


def complete_shards(
    out: Folder | Bucket, records: list[dict[str, Any] | None], verify: bool
) -> list[bool]:
    """Per record, whether the shard it describes is there, whole: its size, and its checksum if
    `verify` and the shard is a local file. An object store needs no checksum: an object appears
    only once its upload is complete, and its record is written after it."""
    sizes = out.sizes([r["name"] for r in records if r is not None])
    return [
        r is not None
        and sizes.get(r["name"]) == r["bytes"]
        and (not verify or out.remote or file_sha256(out.path / r["name"]) == r["sha256"])
        for r in records
    ]


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of everything that determines a shard's bytes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_manifest(
    *,
    num_shards: int,
    samples_per_shard: int,
    canvas: int,
    classes: tuple[str, ...],
    seed: int,
    params: dict[str, Any],
    records: list[dict[str, Any]],
    skipped_inputs: list[dict[str, str]],
) -> dict[str, Any]:
    per_class = dict.fromkeys(classes, 0)
    for record in records:
        for name, n in record["instances_per_class"].items():
            per_class[name] += n
    shards = [{k: r[k] for k in ("name", "samples", "sha256", "bytes")} for r in records]
    return {
        "schema": SCHEMA_VERSION,
        "split": SPLIT,
        "num_shards": num_shards,
        "samples_per_shard": samples_per_shard,
        "num_samples": sum(s["samples"] for s in shards),
        "canvas": canvas,
        "classes": list(classes),
        "seed": seed,
        "params": params,
        "shards": shards,
        "instances_per_class": per_class,
        "skipped_inputs": skipped_inputs,
        "versions": versions(RENDER),  # what shaped the bytes (segloc.provenance)
    }


# ---------------------------------------------------------------- reading (pretrain, inspect)


def read_manifest(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """A manifest of the schema this code writes (a local path or a URL; `data`: its bytes, already
    read), its fields checked; `UserError` naming the file otherwise. The shards it lists are not
    opened (`listed_shards` names them)."""
    path = path if is_remote(path) else Path(path)
    try:
        manifest = json.loads(read_bytes(path) if data is None else data)
    except FileNotFoundError as err:
        raise UserError(f"{path}: manifest not found (render incomplete?)") from err
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read manifest ({err})") from err
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object")
    if manifest.get("schema") != SCHEMA_VERSION:
        raise UserError(
            f"{path}: shard schema {manifest.get('schema')!r} is not supported (this code reads "
            f"schema {SCHEMA_VERSION}); re-render the shards with this version of `synth render`"
        )
    _check_manifest_fields(path, manifest)
    check_versions(manifest.get("versions"), str(path))
    return manifest


def _check_manifest_fields(path: str | Path, manifest: dict[str, Any]) -> None:
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path}: 'classes' must be a non-empty list of names")
    if len(classes) >= IGNORE:
        raise UserError(f"{path}: {len(classes)} classes; uint8 label maps hold at most 254")
    for key in ("canvas", "num_samples"):
        if not isinstance(manifest.get(key), int) or manifest[key] <= 0:
            raise UserError(f"{path}: '{key}' must be a positive integer")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise UserError(f"{path}: 'shards' must be a non-empty list")
    for i, shard in enumerate(shards):
        name = shard.get("name") if isinstance(shard, dict) else None
        if not isinstance(name, str) or "/" in name:
            raise UserError(f"{path}: shards[{i}] needs a file 'name' beside the manifest")


def listed_shards(root: str | Path, manifest: dict[str, Any]) -> list[str]:
    """The shards a manifest read by `read_manifest` lists, as paths or URLs inside `root`, the
    folder or prefix it lies in."""
    return [join(root, shard["name"]) for shard in manifest["shards"]]


class SampleError(ValueError):
    """A sample that breaks the schema; the message says how."""


def parse_meta(raw: bytes, key: str | None = None, classes: list[str] | None = None) -> dict:
    """A sample's JSON member, its structure checked: schema, key and index (when `key` is
    given), classes (equal to `classes` when given), two views each with instances."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise SampleError(f"json: not valid UTF-8 JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
        raise SampleError(f"json: schema is not {SCHEMA_VERSION}")
    index = meta.get("index")
    if key is not None and (
        meta.get("key") != key or not isinstance(index, int) or sample_key(index) != key
    ):
        raise SampleError(f"json: key/index {meta.get('key')!r}/{index!r} do not match")
    if not isinstance(meta.get("classes"), list) or (
        classes is not None and meta["classes"] != classes
    ):
        raise SampleError(f"json: classes {meta.get('classes')!r} differ from the manifest's")
    views = meta.get("views")
    if not isinstance(views, list) or len(views) != 2:
        raise SampleError("json: expected two views")
    for v, view in enumerate(views):
        if not isinstance(view, dict) or not isinstance(view.get("instances"), list):
            raise SampleError(f"json: view {v} has no instances list")
        if not view["instances"]:
            raise SampleError(f"json: view {v} has no instances (each has at least one)")
    return meta


def decode_view(buf: bytes, size: int, name: str) -> np.ndarray:
    """size x size x 3 uint8 BGR of a view's JPEG member `name`; `SampleError` otherwise."""
    bgr = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (size, size, 3):
        found = "undecodable" if bgr is None else "x".join(map(str, bgr.shape))
        raise SampleError(f"{name}: {found}, expected a {size}x{size} colour JPEG")
    return bgr


def decode_labels(buf: bytes, size: int, name: str) -> np.ndarray:
    """size x size uint8 class map of a `.seg.png` member `name`; `SampleError` otherwise."""
    # IMREAD_UNCHANGED: class ids must come back bit-exact, with no colour conversion.
    seg = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if seg is None or seg.dtype != np.uint8 or seg.shape != (size, size):
        found = "undecodable" if seg is None else f"{seg.dtype} {'x'.join(map(str, seg.shape))}"
        raise SampleError(f"{name}: {found}, expected a {size}x{size} single-channel uint8 PNG")
    return seg
