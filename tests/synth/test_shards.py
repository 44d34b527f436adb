import json
import tarfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segloc.errors import UserError
from synth.shards import (
    SampleError,
    View,
    build_manifest,
    decode_labels,
    decode_view,
    encode_sample,
    file_sha256,
    instance_records,
    listed_shards,
    parse_meta,
    read_manifest,
    write_shard,
)


def _fortran(*masks: np.ndarray) -> np.ndarray:
    """HxWxn uint8 in Fortran order, as `instance_records` takes them."""
    return np.asfortranarray(np.stack(masks, axis=-1), dtype=np.uint8)


def _sample(index: int) -> dict[str, bytes]:
    rng = np.random.default_rng(index)
    mask = np.zeros((16, 16), dtype=bool)
    mask[3:9, 4:12] = True
    [inst] = instance_records(
        [2], _fortran(mask), np.array([40]), [{"image_id": 1, "annotation_id": 5}], [{"angle": 3.0}]
    )
    views = [
        View(
            f"N{v}.jpg",
            rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            mask.astype(np.uint8) * 2,
            [inst],
        )
        for v in range(2)
    ]
    return encode_sample(index, ("A", "B"), views, jpeg_quality=90, png_level=1)


def test_tar_is_reproducible_and_sorted(tmp_path):
    info = write_shard(tmp_path / "a.tar", ((i, _sample(i)) for i in (3, 7)))
    again = write_shard(tmp_path / "b.tar", ((i, _sample(i)) for i in (3, 7)))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert info == again and info["samples"] == 2
    assert info["sha256"] == file_sha256(tmp_path / "a.tar")
    assert info["bytes"] == (tmp_path / "a.tar").stat().st_size
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and len(names) == 10
    assert names[:5] == [
        "s00000003.json",
        "s00000003.v0.jpg",
        "s00000003.v0.seg.png",
        "s00000003.v1.jpg",
        "s00000003.v1.seg.png",
    ]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0, 0o644, "", "")


def test_failed_write_leaves_nothing(tmp_path):
    def samples():
        yield 0, _sample(0)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_shard(tmp_path / "x.tar", samples())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="increasing index"):
        write_shard(tmp_path / "y.tar", [(2, _sample(2)), (1, _sample(1))])
    assert list(tmp_path.iterdir()) == []


def test_instance_records_round_trip_the_masks():
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:9, 10:25] = True
    mask[15, 2] = True
    other = np.zeros_like(mask)
    other[0, 0] = True
    masks = _fortran(mask, other)
    source = {"image_id": 1, "annotation_id": 2}
    insts = instance_records([1, 3], masks, np.array([11, 1]), [source, source], [{}, {}])
    assert [i["id"] for i in insts] == [0, 1] and [i["class"] for i in insts] == [1, 3]
    for inst, m in zip(insts, (mask, other), strict=True):
        rle = {"size": inst["rle"]["size"], "counts": inst["rle"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)
    inst = insts[0]
    assert inst["bbox"] == [2, 5, 23, 11] and inst["area"] == 61 and inst["visible_area"] == 11
    assert insts[1]["bbox"] == [0, 0, 1, 1] and insts[1]["area"] == 1
    json.dumps(insts)  # plain JSON types only


def test_manifest_schema_is_checked(tmp_path):
    manifest = build_manifest(
        num_shards=1,
        samples_per_shard=2,
        canvas=16,
        classes=("A", "B"),
        seed=0,
        params={},
        records=[
            {
                "name": "train-000000.tar",
                "samples": 2,
                "sha256": "x",
                "bytes": 10,
                "instances_per_class": {"A": 1, "B": 2},
                "fingerprint": "f",
            }
        ],
        skipped_inputs=[],
    )
    assert manifest["num_samples"] == 2 and manifest["instances_per_class"] == {"A": 1, "B": 2}
    assert "fingerprint" not in manifest["shards"][0]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**manifest, "schema": 2}))
    with pytest.raises(UserError, match="schema 2 is not supported"):
        read_manifest(path)
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.json")


def _manifest(**change) -> dict:
    record = {"name": "train-000000.tar", "samples": 2, "sha256": "x", "bytes": 10}
    record["instances_per_class"] = {"A": 1}
    fields = {"num_shards": 1, "samples_per_shard": 2, "canvas": 16, "classes": ("A",), "seed": 0}
    return build_manifest(**fields, params={}, records=[record], skipped_inputs=[]) | change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": []}, "'classes' must be a non-empty list of names"),
        ({"classes": ["c"] * 255}, "255 classes; uint8 label maps hold at most 254"),
        ({"canvas": 0}, "'canvas' must be a positive integer"),
        ({"shards": [{"name": "../x.tar"}]}, r"shards\[0\] needs a file 'name'"),
    ],
)
def test_manifest_fields_are_checked(tmp_path, change, message):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_manifest()))
    assert listed_shards(tmp_path, read_manifest(path)) == [str(tmp_path / "train-000000.tar")]
    path.write_text(json.dumps(_manifest(**change)))
    with pytest.raises(UserError, match=message):
        read_manifest(path)


def test_a_sample_reads_back_as_written():
    members = _sample(3)
    meta = parse_meta(members["json"], "s00000003", ["A", "B"])
    assert meta["index"] == 3 and len(meta["views"][1]["instances"]) == 1
    assert decode_view(members["v0.jpg"], 16, "v0.jpg").shape == (16, 16, 3)
    labels = decode_labels(members["v1.seg.png"], 16, "v1.seg.png")
    assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) == {0, 2}


def _broken_meta(members: dict, change: dict) -> bytes:
    return json.dumps(json.loads(members["json"]) | change).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 2}, "schema is not 1"),
        ({"index": 4}, "key/index 's00000003'/4 do not match"),
        ({"classes": ["A"]}, "differ from the manifest's"),
        ({"views": []}, "expected two views"),
    ],
)
def test_a_broken_sample_json_says_how(change, message):
    with pytest.raises(SampleError, match=message):
        parse_meta(_broken_meta(_sample(3), change), "s00000003", ["A", "B"])


def test_members_of_the_wrong_size_are_refused():
    members = _sample(3)
    with pytest.raises(SampleError, match="v0.jpg: 16x16x3, expected a 32x32 colour JPEG"):
        decode_view(members["v0.jpg"], 32, "v0.jpg")
    with pytest.raises(SampleError, match="v0.seg.png: undecodable"):
        decode_labels(b"junk", 16, "v0.seg.png")
