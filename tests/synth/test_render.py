import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
import yaml
from click.testing import CliRunner
from PIL import Image

import synth.render as render
from segloc.config import load_data_config
from segloc.errors import UserError
from segloc.params import load_params
from synth.cli import main as synth_cli
from synth.inspect import iter_samples
from synth.shards import file_sha256, read_manifest
from tests.launch import python_env

from .conftest import CLASSES, make_tiny_data


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("in"))


@pytest.fixture(scope="module")
def rendered(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    render.main(out, inputs, workers=1)
    return out


def _tree(out: Path) -> dict[str, bytes]:
    """Shards and manifest.json by name (what a reader sees)."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar")) + [out / "manifest.json"]}


def _count_rendered(monkeypatch) -> list[int]:
    calls = []
    original = render.render_shard

    def counting(composer, job, shard, progress):
        calls.append(shard)
        return original(composer, job, shard, progress)

    monkeypatch.setattr(render, "render_shard", counting)
    return calls


def test_round_trip_through_webdataset(rendered):
    manifest = read_manifest(rendered / "manifest.json")
    urls = [str(rendered / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"s{i:08d}" for i in range(12)]
    per_class = dict.fromkeys(CLASSES, 0)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["schema"] == 1 and meta["classes"] == CLASSES
        assert meta["views"][0]["background"] != meta["views"][1]["background"]
        for v in range(2):
            image = cv2.imdecode(np.frombuffer(sample[f"v{v}.jpg"], np.uint8), cv2.IMREAD_COLOR)
            seg = cv2.imdecode(
                np.frombuffer(sample[f"v{v}.seg.png"], np.uint8), cv2.IMREAD_UNCHANGED
            )
            assert image.shape == (48, 48, 3) and seg.shape == (48, 48) and seg.dtype == np.uint8
            assert set(np.unique(seg)) <= {0, 1, 2, 3}
        ids = [[i["id"] for i in v["instances"]] for v in meta["views"]]
        assert ids[0] == ids[1] == list(range(len(ids[0]))) and ids[0]
        for inst in meta["views"][0]["instances"]:
            per_class[CLASSES[inst["class"] - 1]] += 1
    assert manifest["instances_per_class"] == per_class
    assert manifest["num_samples"] == 12 and manifest["num_shards"] == 4
    assert manifest["canvas"] == 48 and manifest["seed"] == 3
    assert (
        manifest["params"]["synth"]["canvas"] == 48 and "foreground" in manifest["params"]["data"]
    )
    for shard in manifest["shards"]:
        assert file_sha256(rendered / shard["name"]) == shard["sha256"]


def test_views_keep_the_backgrounds_colours(rendered):
    """The test backgrounds are tinted blue (R:G:B = 0.8:0.9:1); a view, decoded to RGB, is too
    where nothing is pasted: the renderer works in OpenCV's BGR, and must not swap channels."""
    for _, members in iter_samples(rendered / "train-000000.tar"):
        for v in range(2):
            bgr = cv2.imdecode(np.frombuffer(members[f"v{v}.jpg"], np.uint8), cv2.IMREAD_COLOR)
            rgb = np.asarray(Image.open(io.BytesIO(members[f"v{v}.jpg"])).convert("RGB"))
            np.testing.assert_array_equal(rgb, bgr[..., ::-1])
            seg = cv2.imdecode(np.frombuffer(members[f"v{v}.seg.png"], np.uint8), -1)
            r, g, b = rgb[seg == 0].astype(float).mean(0)
            assert r < g < b and 0.75 < r / b < 0.85


def test_same_bytes_whatever_workers_and_ranges(inputs, rendered, tmp_path):
    render.main(tmp_path / "w2", inputs, workers=2)
    render.main(tmp_path / "ranges", inputs, workers=1, shard_range="2:4")
    assert not (tmp_path / "ranges" / "manifest.json").exists()
    render.main(tmp_path / "ranges", inputs, workers=1, shard_range="0:2")
    assert _tree(tmp_path / "w2") == _tree(rendered)
    assert _tree(tmp_path / "ranges") == _tree(rendered)
    partial = read_manifest(tmp_path / "ranges" / "manifest-000002-000004.json")
    assert [s["name"] for s in partial["shards"]] == ["train-000002.tar", "train-000003.tar"]


def test_resume_skips_complete_shards_and_rerenders_broken_ones(
    inputs, rendered, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    shutil.copytree(rendered, out)
    data = bytearray((out / "train-000001.tar").read_bytes())
    data[600] ^= 0xFF
    (out / "train-000001.tar").write_bytes(bytes(data))
    (out / "train-000002.tar").unlink()
    (out / "manifest.json").unlink()
    calls = _count_rendered(monkeypatch)
    render.main(out, inputs, workers=1)
    assert calls == [1, 2]
    assert _tree(out) == _tree(rendered)
    calls.clear()
    render.main(out, inputs, workers=1)
    assert calls == []


def test_changed_params_rerender_everything(inputs, rendered, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(rendered, out)
    calls = _count_rendered(monkeypatch)
    render.main(out, inputs, overrides=("synth.seed=4",), workers=1)
    assert calls == [0, 1, 2, 3]
    assert read_manifest(out / "manifest.json")["params"]["synth"]["seed"] == 4
    assert (out / "train-000000.tar").read_bytes() != (rendered / "train-000000.tar").read_bytes()


def test_cli_overrides_shard_counts(inputs, tmp_path):
    result = CliRunner().invoke(
        render.command,
        [
            "--out",
            str(tmp_path / "o"),
            "--params",
            str(inputs),
            "--num-shards",
            "2",
            "--samples-per-shard",
            "2",
            "--workers",
            "1",
            "--set",
            "synth.canvas=32",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "o" / "manifest.json")
    assert manifest["num_samples"] == 4 and manifest["canvas"] == 32
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
    ]


def _break(kind: str, params: Path) -> list[str]:
    """Damage the inputs in one way; returns extra CLI args."""
    cfg = yaml.safe_load(params.read_text())
    fg_json = Path(cfg["data"]["foreground"]["annotations"])
    fg_dir = Path(cfg["data"]["foreground"]["images"])
    bg_dir = Path(cfg["data"]["background"]["images"])
    if kind == "missing annotations":
        fg_json.unlink()
    elif kind == "bad json":
        fg_json.write_text('{"images": [')
    elif kind == "missing image":
        (fg_dir / "b.png").unlink()
    elif kind == "undecodable image":
        (fg_dir / "e.jpg").write_bytes(b"\xff\xd8\xff garbage")
    elif kind == "undecodable background":
        (bg_dir / "N00003.jpg").write_bytes(b"garbage")
    elif kind == "bad params key":
        cfg["synth"]["sclae"] = [3, 4]  # a typo in params.yaml
        params.write_text(yaml.safe_dump(cfg))
    elif kind == "bad override":
        return ["--set", "synth.sclae=3"]
    elif kind == "bad params type":
        return ["--set", "synth.canvas=big"]
    elif kind == "bad range":
        return ["--shard-range", "3:9"]
    return []


BAD = {
    "missing annotations": "xray_train.json: annotation file not found",
    "bad json": "xray_train.json: not valid JSON",
    "missing image": "b.png: no such image file",
    "undecodable image": "e.jpg: cannot decode image",
    "undecodable background": "N00003.jpg: cannot decode image",
    "bad params key": "params synth.sclae: unknown key",
    "bad override": "--set synth.sclae: unknown key",
    "bad params type": "params synth.canvas: expected an integer",
    "bad range": "--shard-range '3:9'",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_ends_in_one_message_and_no_output(kind, tmp_path):
    params = make_tiny_data(tmp_path / "in")
    extra = _break(kind, params)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        render.command, ["--out", str(out), "--params", str(params), "--workers", "1", *extra]
    )
    assert result.exit_code == 2, result.output
    assert BAD[kind] in result.output and "Traceback" not in result.output
    assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()


def test_skip_bad_inputs_renders_without_them(tmp_path):
    params = make_tiny_data(tmp_path / "in")
    _break("missing image", params)
    _break("undecodable background", params)
    with pytest.raises(UserError, match="2 unreadable input"):
        render.main(tmp_path / "out", params)
    render.main(tmp_path / "out", params, workers=1, skip_bad_inputs=True)
    manifest = read_manifest(tmp_path / "out" / "manifest.json")
    skipped = sorted(Path(s["path"]).name for s in manifest["skipped_inputs"])
    assert skipped == ["N00003.jpg", "b.png"]
    assert manifest["num_samples"] == 12


def test_unsatisfiable_visibility_is_a_user_error(inputs, tmp_path):
    with pytest.raises(UserError, match="no instance stayed visible"):
        render.main(tmp_path / "o", inputs, overrides=("synth.min_visible_pixels=2304",))
    assert not list((tmp_path / "o").glob("*.tar"))


def _truncated_background(root: Path) -> Path:
    """Tiny inputs whose N00002.jpg passes the header check but fails its full decode."""
    params = make_tiny_data(root)
    folder = Path(yaml.safe_load(params.read_text())["data"]["background"]["images"])
    data = (folder / "N00002.jpg").read_bytes()
    (folder / "N00002.jpg").write_bytes(data[: len(data) // 2])
    return params


@pytest.mark.parametrize("workers", [1, 2])
def test_a_background_failing_its_full_decode_stops_the_render(tmp_path, workers):
    """In this process or in a helper (whose error is re-raised here), the render stops."""
    params = _truncated_background(tmp_path / "in")
    with pytest.raises(UserError, match=r"N00002.jpg: cannot decode image.*while rendering"):
        render.main(tmp_path / "out", params, workers=workers)
    assert not (tmp_path / "out" / "manifest.json").exists()
    records = {p.stem for p in (tmp_path / "out" / ".records").glob("*.json")}
    assert {p.stem for p in (tmp_path / "out").glob("*.tar")} == records  # only finished shards


def test_temporaries_of_a_killed_run_are_cleaned(inputs, rendered, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(rendered, out)
    (out / "train-000003.tar").unlink()
    (out / ".tmp-train-000003.tar.abc123").write_bytes(b"half a shard")
    (out / ".tmp-train-000001.tar.zzz").write_bytes(b"a killed range's")  # shard 1 is complete
    # A range render clears only its own shards' temporaries: others may be a live range's.
    render.main(out, inputs, workers=1, shard_range="3:4")
    assert not (out / ".tmp-train-000003.tar.abc123").exists()
    assert (out / ".tmp-train-000001.tar.zzz").exists()
    # A whole render holds the folder alone (live ranges are refused): every temporary is stale.
    render.main(out, inputs, workers=1)
    assert not (out / ".tmp-train-000001.tar.zzz").exists()
    assert _tree(out) == _tree(rendered)


def _job(params: Path, out: Path) -> render.Job:
    loaded = load_params(params)
    data = load_data_config(loaded)
    cfg = render.resolve_config(loaded, None, None, False)
    fg, bg = render.load_inputs(data, cfg)
    return render.Job(
        cfg, data, fg, bg, out, render.fingerprint(render._identity(cfg, data, fg, bg))
    )


def test_a_helpers_error_is_raised_in_the_main_process(tmp_path):
    params = _truncated_background(tmp_path / "in")
    job = _job(params, tmp_path / "out")
    with render.helper_pool(1) as pool:
        with pytest.raises(UserError, match=r"N00002.jpg: cannot decode image.*while rendering"):
            for shard in range(4):  # one at a time: the helper takes it before this process
                pool.render(job, [shard], lambda n: None)


def test_a_helper_killed_mid_render_is_an_error_not_a_hang(inputs, tmp_path):
    with render.helper_pool(1) as pool:
        pid = pool.executor.submit(os.getpid).result()

        def kill_once(n: int) -> None:  # at the first sample the helper reports
            if not kill_once.done:
                kill_once.done = True
                os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would

        kill_once.done = False
        with pytest.raises(UserError, match=r"render helper died.*re-run"):
            pool.render(_job(inputs, tmp_path / "out"), [0, 1, 2, 3], kill_once)
    records = {p.stem for p in (tmp_path / "out" / ".records").glob("*.json")}
    assert {p.stem for p in (tmp_path / "out").glob("*.tar")} == records  # only finished shards


class _Unrebuildable(Exception):
    """Pickles, but its constructor cannot rebuild it from its args."""

    def __init__(self, text: str, code: int):
        super().__init__(text)


def test_a_helper_error_that_cannot_travel_arrives_as_its_traceback(monkeypatch):
    def fail(*args):
        raise _Unrebuildable("boom", 1)

    monkeypatch.setattr(render, "_load_job", lambda path: None)
    monkeypatch.setattr(render, "render_shard", fail)
    monkeypatch.setattr(render._HELPER, "stop", threading.Event())
    with pytest.raises(RuntimeError, match=r"(?s)a render helper failed.*_Unrebuildable: boom"):
        render._render_task("job.pickle", 0)


def test_helpers_started_before_a_failed_input_check_are_stopped(tmp_path):
    """`synth render` starts its helpers before it loads the inputs; an input error stops them."""
    params = make_tiny_data(tmp_path / "in")
    _break("undecodable background", params)
    with pytest.raises(UserError, match="N00003.jpg: cannot decode image"):
        render.main(tmp_path / "out", params, workers=2)
    assert not multiprocessing.active_children()
    assert not list((tmp_path / "out").glob("*.tar"))


def test_a_waiting_helper_exits_when_the_main_process_dies(tmp_path):
    """Killed while loading its inputs, the main process leaves no helper waiting for ever."""
    code = (
        "import os, signal, synth.render as r\n"
        "if __name__ == '__main__':\n"
        "    with r.helper_pool(1) as pool:\n"
        "        print(pool.executor.submit(os.getpid).result(), flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    script = tmp_path / "main.py"
    script.write_text(code)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:  # a file, not a pipe: a helper left behind would hold a pipe open
        result = subprocess.run(
            [sys.executable, str(script)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=python_env(),
            timeout=120,
        )
    assert result.returncode == -signal.SIGKILL, log.read_text()
    pid = int(log.read_text().split()[0])
    deadline = time.monotonic() + 20
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"helper {pid} still waiting for a job 20 s after the main process died")


def _running(pid: int) -> bool:
    """Whether the process exists and has not exited (an unreaped orphan shows as a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def _write_params(inputs: Path, path: Path, data: dict) -> Path:
    params = yaml.safe_load(inputs.read_text())
    params["data"] = data
    path.write_text(yaml.safe_dump(params))
    return path


def test_render_takes_the_pidray_and_sixray_roots(inputs, rendered, tmp_path):
    """Roots stand for their parts: PIDray's train JSON and images, SIXray's JPEGImage/ and its
    ImageSet/ label CSV (which leaves N00005 out, as P00001 is by name); stray files are passed
    over. The shards are those of the same inputs named part by part."""
    for name in ("pidray", "sixray"):
        shutil.copytree(inputs.parent / name, tmp_path / name)
    (tmp_path / "sixray" / "JPEGImage" / "Thumbs.db").write_bytes(b"not a scan")
    (tmp_path / "sixray" / "readme.txt").write_text("not a scan either")
    data = {
        "foreground": {"images": str(tmp_path / "pidray")},
        "background": {"images": str(tmp_path / "sixray"), "labels": None},
    }
    params = _write_params(inputs, tmp_path / "params.yaml", data)
    out = tmp_path / "out"
    args = ["render", "--out", str(out), "--params", str(params), "--workers", "1"]
    result = CliRunner().invoke(synth_cli, args)
    assert result.exit_code == 0, result.output
    assert _tars(out) == _tars(rendered)


def test_null_labels_load_and_render(inputs, tmp_path):
    data = yaml.safe_load(inputs.read_text())["data"]
    data["background"]["labels"] = None
    params = _write_params(inputs, tmp_path / "params.yaml", data)
    assert "labels: null" in params.read_text()
    assert load_data_config(load_params(params)).background.labels is None
    render.main(tmp_path / "out", params, workers=1)
    used = {
        view["background"]
        for shard in sorted((tmp_path / "out").glob("*.tar"))
        for _, members in iter_samples(shard)
        for view in json.loads(members["json"])["views"]
    }
    assert used and "P00001.jpg" not in used  # a positive by its name, with no CSV


def _view_transforms(out: Path) -> list[list[list[dict]]]:
    """Per sample, per view, each instance's transform less its position on the canvas."""
    manifest = read_manifest(out / "manifest.json")
    samples = wds.WebDataset([str(out / s["name"]) for s in manifest["shards"]], shardshuffle=False)
    strip = ("x", "y")
    return [
        [
            [{k: v for k, v in i["transform"].items() if k not in strip} for i in view["instances"]]
            for view in json.loads(s["json"])["views"]
        ]
        for s in samples
    ]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_shared_transform_pastes_a_segment_alike_in_both_views(share, tmp_path):
    params = make_tiny_data(tmp_path / "in", synth={"shared_transform": share})
    render.main(tmp_path / "out", params, workers=1)
    alike = [v0 == v1 for v0, v1 in _view_transforms(tmp_path / "out")]
    # Scale, angle, flip and density are continuous draws: two independent ones never tie.
    expected = {0.0: {False}, 0.5: {False, True}, 1.0: {True}}[share]
    assert set(alike) == expected
    for sample, (_, members) in enumerate(iter_samples(tmp_path / "out" / "train-000000.tar")):
        meta = json.loads(members["json"])
        assert meta["views"][0]["background"] != meta["views"][1]["background"], sample


def test_shared_transform_outside_zero_one_names_the_key(tmp_path):
    params = make_tiny_data(tmp_path / "in", synth={"shared_transform": 1.5})
    with pytest.raises(UserError, match=r"synth\.shared_transform.*\[0\.0, 1\.0\].*1\.5"):
        render.main(tmp_path / "out", params, workers=1)
    assert not (tmp_path / "out" / "manifest.json").exists()
