"""The data section: paths given part by part, or by the PIDray / SIXray roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from segloc.config import (
    BackgroundConfig,
    CocoSplit,
    background_paths,
    find_sixray_labels,
    load_data_config,
)
from segloc.errors import UserError


def _pidray(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for name in ("train", "test_easy", "test_hard", "test_hidden"):
        (root / "annotations" / f"xray_{name}.json").write_text("{}")
    return root


def _data(foreground: dict, **rest) -> dict:
    return {"data": {"foreground": foreground, "background": {"images": "scans"}, **rest}}


def test_a_pidray_root_stands_for_its_splits(tmp_path):
    root = _pidray(tmp_path / "pidray")
    data = load_data_config(_data({"images": str(root)}))
    assert data.foreground == CocoSplit(
        str(root / "train"), str(root / "annotations" / "xray_train.json")
    )
    assert list(data.test) == ["easy", "hard", "hidden"]
    assert data.test["hard"].annotations == str(root / "annotations" / "xray_test_hard.json")
    mine = {"mine": {"images": "x", "annotations": "x.json"}}
    assert list(load_data_config(_data({"images": str(root)}, test=mine)).test) == ["mine"]


def test_parts_are_taken_as_given_and_must_be_whole(tmp_path):
    given = {"images": "imgs", "annotations": "a.json"}
    assert load_data_config(_data(given)).foreground == CocoSplit("imgs", "a.json")
    with pytest.raises(UserError, match="annotations: missing, .* is not a PIDray root"):
        load_data_config(_data({"images": str(tmp_path)}))
    with pytest.raises(UserError, match="data.test.easy.annotations: missing"):
        load_data_config(_data(given, test={"easy": {"images": "x"}}))


def _sixray(root: Path, *csvs: str) -> Path:
    (root / "JPEGImage").mkdir(parents=True)
    for rel in csvs:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("name,Gun\n")
    return root


def test_a_sixray_root_gives_its_scans_and_label_csv(tmp_path):
    root = _sixray(tmp_path / "a", "ImageSet/10/train.csv", "ImageSet/10/test.csv")
    assert background_paths(BackgroundConfig(str(root))) == (
        root / "JPEGImage",
        root / "ImageSet" / "10" / "train.csv",
    )
    given = BackgroundConfig(str(root), labels="mine.csv")
    assert background_paths(given) == (root / "JPEGImage", Path("mine.csv"))
    plain = BackgroundConfig(str(tmp_path / "a" / "JPEGImage"))
    assert background_paths(plain) == (root / "JPEGImage", None)


def test_sixray_label_csv_found_only_when_unambiguous(tmp_path):
    one = _sixray(tmp_path / "one", "ImageSet/100/train.csv")
    assert find_sixray_labels(one) == one / "ImageSet" / "100" / "train.csv"
    assert find_sixray_labels(_sixray(tmp_path / "none")) is None
    two = _sixray(tmp_path / "two", "ImageSet/100/train.csv", "ImageSet/100/test.csv")
    with pytest.raises(UserError, match=r"2 label CSVs .*100/test.csv, ImageSet/100/train.csv"):
        find_sixray_labels(two)


def test_demo_scales_in_params_are_the_generators():
    """params data.demo.scale accepts exactly the scales synth demo-data knows."""
    import typing

    from segloc.config import DemoConfig
    from synth import demo

    hints = typing.get_type_hints(DemoConfig)
    assert set(typing.get_args(hints["scale"])) == set(demo.SCALES)
