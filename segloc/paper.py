"""Switch the pipeline to real PIDray / SIXray at paper scale with one command.

    python -m segloc.paper --pidray /datasets/pidray --sixray /datasets/sixray
    make paper PIDRAY=/datasets/pidray SIXRAY=/datasets/sixray        # the same, through make

Checks both folders' layouts, then runs `dvc exp run report` with the data paths and every key of
configs/paper.yaml as `-S` overrides: an experiment beside the embedded default's results, which
stay as they are (`dvc exp show` compares them; `dvc exp apply` makes it the workspace). Targeting
`report` skips the `demo` stage, which only the embedded default needs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from segloc.config import SIXRAY_LABELS, SIXRAY_SCANS, find_sixray_labels, pidray_splits
from segloc.errors import UserError
from segloc.params import load_params

_PLAIN = re.compile(r"[\w./-]+")  # a string dvc's -S grammar may read bare (see _value)


def data_overrides(pidray: Path, sixray: Path, sixray_labels: Path | None) -> list[str]:
    """`data.*` overrides for PIDray / SIXray folders in their published layouts."""
    sixray = sixray.resolve()
    train, tests = pidray_splits(pidray.resolve())
    for name, split in {"train": train, **tests}.items():
        _require(Path(split.annotations), "file", f"PIDray {name} annotations")
        _require(Path(split.images), "dir", f"PIDray {name} images")
    _require(sixray / SIXRAY_SCANS, "dir", "SIXray scans")
    if sixray_labels is None:
        sixray_labels = find_sixray_labels(sixray)
    if sixray_labels is None:
        raise UserError(
            f"{sixray}: no label CSV under ImageSet/ (looked for {' or '.join(SIXRAY_LABELS)} "
            "first); give one with --sixray-labels (it marks the positives to exclude)"
        )
    _require(sixray_labels, "file", "SIXray label CSV")
    items = {
        "data.foreground.annotations": train.annotations,
        "data.foreground.images": train.images,
        "data.background.images": sixray / SIXRAY_SCANS,
        "data.background.labels": sixray_labels.resolve(),
    }
    for t, split in tests.items():
        items[f"data.test.{t}.annotations"] = split.annotations
        items[f"data.test.{t}.images"] = split.images
    return [f"{k}={_value(str(v), k)}" for k, v in items.items()]


def _require(path: Path, kind: str, what: str) -> None:
    ok = path.is_file() if kind == "file" else path.is_dir()
    if not ok:
        raise UserError(f"{path}: {what} not found ({'a file' if kind == 'file' else 'a folder'})")


def config_overrides(config: Path, params: Path) -> list[str]:
    """`key=value` for every leaf of `config`; each key must exist in `params` (typos fail here,
    not hours into a run)."""
    tree = load_params(config)
    known = load_params(params)
    leaves = _leaves(tree, known, config)
    return [f"{key}={_value(value, f'{config}: key {key}')}" for key, value in leaves]


def _leaves(tree: dict[str, Any], known: Any, config: Path, prefix: str = ""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if not isinstance(known, dict) or key not in known:
            raise UserError(f"{config}: key {path} is not in params.yaml")
        if isinstance(value, dict) and isinstance(known[key], dict):
            yield from _leaves(value, known[key], config, f"{path}.")
        else:
            yield path, value


def _value(value: Any, key: str) -> str:
    """YAML flow text, as `dvc exp run -S` parses it (null, true, [48.0, 160.0]).

    A string is bare only when it is plain (letters, digits, `_ . / -`) and reads back as itself;
    anything else is quoted: an arm's switches `--set pretrain.lr=0.03` or a path with a space
    (bare, dvc's override grammar would stop at the `=` or the space), or a string such as "true"
    or "1e3" that would come back as another type.
    """
    if not isinstance(value, str):
        return json.dumps(value)  # JSON is YAML: None -> null
    if _PLAIN.fullmatch(value) and _reads_as_itself(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    raise UserError(
        f"{key}: {value!r} has a single quote together with a double quote or a backslash, "
        "which a dvc -S override cannot carry"
    )


def _reads_as_itself(text: str) -> bool:
    """Whether a bare string stays a string both in YAML (params.yaml, --set) and in dvc's Hydra
    grammar, which also reads 1e3, inf and nan as floats and tRuE / NuLL in any case."""
    if yaml.safe_load(text) != text or text.lower() in ("true", "false", "null"):
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def command(overrides: list[str], target: str = "report") -> list[str]:
    args = ["dvc", "exp", "run", target]
    for item in overrides:
        args += ["-S", item]
    return args


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--pidray",
    type=click.Path(path_type=Path),
    required=True,
    help="PIDray root: annotations/xray_{train,test_easy,test_hard,test_hidden}.json and the "
    "train/easy/hard/hidden image folders.",
)
@click.option(
    "--sixray",
    type=click.Path(path_type=Path),
    required=True,
    help="SIXray root with JPEGImage/.",
)
@click.option(
    "--sixray-labels",
    type=click.Path(path_type=Path),
    default=None,
    help=f"label CSV marking positives; default: the first of {', '.join(SIXRAY_LABELS)}, else "
    "the only CSV under ImageSet/.",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=Path("configs/paper.yaml"),
    show_default=True,
    help="overrides of params.yaml for paper scale.",
)
@click.option(
    "--params", type=click.Path(path_type=Path), default=Path("params.yaml"), show_default=True
)
@click.option("--dry-run", is_flag=True, help="print the dvc command instead of running it.")
def main(
    pidray: Path,
    sixray: Path,
    sixray_labels: Path | None,
    config: Path,
    params: Path,
    dry_run: bool,
) -> None:
    """Run the pipeline on real PIDray / SIXray at paper scale (resnet50, 25 epochs) as a DVC
    experiment. Needs a GPU in practice: see the README for the expected wall time."""
    overrides = data_overrides(pidray, sixray, sixray_labels) + config_overrides(config, params)
    args = command(overrides)
    if dry_run:
        click.echo(" ".join(shlex.quote(a) for a in args))  # pastes into a shell as is
        return
    dvc = shutil.which("dvc")
    if dvc is None:
        raise UserError("dvc: not on PATH (run `make setup`, then use .venv/bin or `make paper`)")
    sys.exit(subprocess.call([dvc, *args[1:]]))


if __name__ == "__main__":
    main()
