"""The backbone card: `backbone.json` beside an exported `backbone.pt` (docs/design.md §3.3),
written by `pretrain` and read by `evaluate`; no torch needed to read it.

    card = build_card("resnet18", "segloc", 800, cfg, manifest, sha, classes, 64, MEAN, STD)
    write_card(run / WEIGHTS, card)            # RUN/backbone.json, with the weights' sha256
    card = read_card(run / WEIGHTS)            # {} when there is none
    card_label(card, run), card.get("arch"), card_normalize(card)

Fields: format, arch, method, label (the report's row name), steps, config (the resolved
`pretrain` section), shards {manifest, sha256}, classes, input {size, normalize {mean, std},
scale}, versions (the libraries that made it, `segloc.provenance`), sha256 (of backbone.pt). Readers take every field as optional: cards written by hand
(tests, imported weights) often hold only arch and method.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segloc.atomic import write_json
from segloc.errors import UserError
from segloc.provenance import check_versions, versions

WEIGHTS = "backbone.pt"
FORMAT = "torchvision resnet state_dict without fc"


def build_card(
    arch: str,
    method: str,
    steps: int,
    config: dict[str, Any],
    manifest: Path,
    manifest_sha: str,
    classes: tuple[str, ...],
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
    label: str | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "arch": arch,
        "method": method,
        "label": label or method,  # the row name in reports
        "steps": steps,
        "config": config,
        "shards": {"manifest": str(manifest), "sha256": manifest_sha},
        "classes": list(classes),
        "input": {
            "size": crop,
            "normalize": {"mean": list(mean), "std": list(std)},
            "scale": "RGB in [0, 1] before normalize",
        },
        "versions": versions(),
    }


def card_path(weights: Path) -> Path:
    """A backbone's card: its weights file's name with .json (RUN/backbone.pt: RUN/backbone.json)."""
    return Path(weights).with_suffix(".json")


def write_card(weights: Path, card: dict[str, Any]) -> None:
    """The card of the weights file just written, with their sha256 added."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    write_json(card_path(weights), card | {"sha256": digest})


def read_card(weights: Path) -> dict[str, Any]:
    """The card of a weights file; {} if it has none, `UserError` if it is unreadable."""
    path = card_path(weights)
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read backbone config ({err})") from err
    if not isinstance(card, dict):
        raise UserError(f"{path}: expected a JSON object with 'arch' and 'method'")
    for key in ("arch", "method", "label"):
        if key in card and not isinstance(card[key], str):
            raise UserError(f"{path}: '{key}' must be a string, got {card[key]!r}")
    check_versions(card.get("versions"), str(path))
    return card


def card_label(card: dict[str, Any], folder: Path) -> str:
    """A pretraining run's row name in reports: the label its card gives (e.g.
    "segloc (mask, single queue)"), else its method, else its folder's name."""
    return str(card.get("label") or card.get("method") or folder.name)


def card_normalize(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card's input.normalize ({"mean", "std"}, 3 each for RGB in [0, 1]), if it has one."""
    section = card.get("input")
    norm = section.get("normalize") if isinstance(section, dict) else None
    return norm if isinstance(norm, dict) else None
