"""Where a fine-tune starts: random init, torchvision ImageNet weights, or an exported backbone.

    init = resolve_init("runs/pretrain/segloc")        # or "random", "imagenet:resnet18.pth"
    init.label                                          # the report's row name, from backbone.json

Only paths and the backbone's JSON card are read here, so resolving an init needs no torch; the
weights are loaded by `eval.model.load_init`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segloc.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Init:
    kind: Literal["random", "backbone", "imagenet"]
    label: str  # row name in reports
    path: Path | None = None  # weights file
    arch: str | None = None  # architecture the weights declare (backbone.json), if known
    meta: dict[str, Any] = field(default_factory=dict)  # backbone.json

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label": self.label,
            "path": str(self.path) if self.path else None,
            "arch": self.arch,
            "meta": self.meta,
        }


def resolve_init(spec: str) -> Init:
    """`random`, `imagenet:PATH` (torchvision weights file) or an exported backbone (file or run)."""
    if spec == "random":
        return Init("random", "random")
    if spec.startswith("imagenet:"):
        path = Path(spec.removeprefix("imagenet:"))
        if not path.is_file():
            raise UserError(
                f"{path}: ImageNet weights file not found. This pipeline never downloads: fetch "
                f"torchvision's ImageNet weights for the architecture (e.g. resnet18-f37072fd.pth) "
                f"on a machine with network and put the file at {path}"
            )
        return Init("imagenet", "imagenet", path)
    path = Path(spec)
    if path.is_dir():
        path = path / "backbone.pt"
    if not path.is_file():
        raise UserError(
            f"--init {spec}: expected 'random', 'imagenet:PATH' or an exported backbone "
            f"(a backbone.pt file or its run folder); {path} not found"
        )
    meta = _read_meta(path.with_suffix(".json"))
    return Init("backbone", card_label(meta, path.parent), path, meta.get("arch"), meta)


def card_label(meta: dict[str, Any], folder: Path) -> str:
    """A pretraining run's row name in reports: the label its backbone.json gives (e.g.
    "segloc (mask, single queue)"), else its method, else its folder's name."""
    return str(meta.get("label") or meta.get("method") or folder.name)


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        log.warning(
            "%s: not found; the backbone's architecture is checked by its weights alone", path
        )
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read backbone config ({err})") from err
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object with 'arch' and 'method'")
    return meta
