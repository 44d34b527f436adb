import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import synth.render as render
from synth.inspect import command, inspect_path, iter_samples
from synth.shards import write_shard

from .conftest import make_tiny_data


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    params = make_tiny_data(tmp_path_factory.mktemp("in"))
    out = tmp_path_factory.mktemp("out")
    render.main(out, params, workers=1)
    return out


def _seg(members: dict, v: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(members[f"v{v}.seg.png"], np.uint8), cv2.IMREAD_UNCHANGED)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _class_out_of_range(members: dict) -> None:
    seg = _seg(members, 0)
    seg[0, 0] = 4  # three classes
    members["v0.seg.png"] = _png(seg)


def _missing_member(members: dict) -> None:
    del members["v1.seg.png"]


def _wrong_visible_area(members: dict) -> None:
    meta = json.loads(members["json"])
    meta["views"][1]["instances"][0]["visible_area"] += 1
    members["json"] = json.dumps(meta).encode()


def _label_erased(members: dict) -> None:
    seg = _seg(members, 1)
    seg[seg > 0] = 0
    members["v1.seg.png"] = _png(seg)


def _views_disagree(members: dict) -> None:
    meta = json.loads(members["json"])
    meta["views"][1]["instances"][0]["source"]["annotation_id"] += 100
    members["json"] = json.dumps(meta).encode()


BREAKS = {
    _class_out_of_range: "values [4] outside 0..3",
    _missing_member: "missing ['v1.seg.png']",
    _wrong_visible_area: "visible_area",
    _label_erased: "disagree with the topmost instance",
    _views_disagree: "views list different instances",
}


def test_a_render_passes(rendered):
    result = CliRunner().invoke(command, [str(rendered)])
    assert result.exit_code == 0, result.output
    assert "samples: 12" in result.output and "schema v1: ok" in result.output
    stats = inspect_path(rendered)
    manifest = json.loads((rendered / "manifest.json").read_text())
    assert dict(stats.instances) == {k: v for k, v in manifest["instances_per_class"].items() if v}
    assert stats.sizes == {"48x48": 24} and not stats.errors


@pytest.mark.parametrize("damage", list(BREAKS), ids=lambda f: f.__name__)
def test_a_broken_sample_is_named(rendered, tmp_path, damage):
    samples = [(int(k[1:]), m) for k, m in iter_samples(rendered / "train-000001.tar")]
    damage(samples[1][1])
    shard = tmp_path / "train-000001.tar"
    write_shard(shard, samples)
    result = CliRunner().invoke(command, [str(shard)])
    assert result.exit_code == 2
    assert "s00000004 in train-000001.tar" in result.output
    assert BREAKS[damage] in result.output


def test_a_shard_changed_after_the_manifest_is_caught(rendered, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(rendered, out)
    shutil.copy(out / "train-000000.tar", out / "train-000002.tar")
    result = CliRunner().invoke(command, [str(out)])
    assert result.exit_code == 2 and "checksum differs" in result.output


def test_contact_sheet(rendered, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        command, [str(rendered), "--sheet", str(sheet), "--sheet-samples", "3"]
    )
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[1] == 960 and image.shape[0] > 300
    assert image.std() > 10  # something was drawn
