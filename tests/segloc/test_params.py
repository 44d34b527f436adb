from dataclasses import dataclass, field
from typing import Literal

import pytest

from segloc.config import load_data_config
from segloc.errors import UserError
from segloc.params import from_dict, load_params, to_dict


@dataclass(frozen=True)
class Inner:
    k: int = 3


@dataclass(frozen=True)
class Cfg:
    lr: float
    mode: Literal["a", "b"] = "a"
    size: tuple[int, int] = (4, 5)
    names: tuple[str, ...] = ()
    maybe: str | None = None
    inner: Inner = Inner()
    extra: dict[str, float] = field(default_factory=dict)


def test_from_dict_converts_and_keeps_defaults():
    cfg = from_dict(Cfg, {"lr": 1, "size": [2, 3], "names": ["x"], "inner": {"k": 7}}, "s")
    assert cfg == Cfg(lr=1.0, size=(2, 3), names=("x",), inner=Inner(k=7))
    assert isinstance(cfg.lr, float)
    assert to_dict(cfg)["size"] == [2, 3]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": 0.1, "lrr": 2}, "s.lrr: unknown key"),
        ({}, "s.lr: missing"),
        ({"lr": "fast"}, "s.lr: expected a number"),
        ({"lr": True}, "s.lr: expected a number"),
        ({"lr": 1, "mode": "c"}, "s.mode: expected one of 'a', 'b'"),
        ({"lr": 1, "size": [1]}, "s.size: expected 2 values"),
        ({"lr": 1, "inner": {"k": 1.5}}, "s.inner.k: expected an integer"),
        ({"lr": 1, "inner": {"j": 1}}, "s.inner.j: unknown key"),
        ({"lr": 1, "maybe": 3}, "s.maybe: expected a string or null"),
    ],
)
def test_from_dict_rejects_with_key_named(data, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(Cfg, data, "s")


def test_load_params_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  lr: 0.1\n  arch: resnet18\n")
    params = load_params(path, ["pretrain.lr=0.5", "pretrain.arch=resnet50"])
    assert params == {"pretrain": {"lr": 0.5, "arch": "resnet50"}}
    with pytest.raises(UserError, match="pretrain.lrr: unknown key"):
        load_params(path, ["pretrain.lrr=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_params(path, ["pretrain.lr"])
    with pytest.raises(UserError, match="no section 'eval'"):
        load_params(path, ["eval.lr=1"])


def test_load_params_bad_files(tmp_path):
    with pytest.raises(UserError, match="cannot read params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_repo_params_file_loads():
    """The committed params.yaml is valid for the shared data section."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "params.yaml").exists():
        pytest.skip("no params.yaml")
    data = load_data_config(load_params(root / "params.yaml"))
    assert 0 < data.label_fraction <= 1
    assert set(data.test) == {"easy", "hard", "hidden"}
