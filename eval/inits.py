"""Where a fine-tune starts: random init, torchvision ImageNet weights, or an exported backbone.

    init = resolve_init("runs/pretrain/segloc")        # or "random", "imagenet:resnet18.pth"
    init.label                                          # the report's row name, from backbone.json

Only paths and the backbone's JSON card are read here, so resolving an init needs no torch; the
weights are loaded by `eval.model.load_init`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segloc.backbone_card import WEIGHTS, card_label, card_path, read_card
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
        path = path / WEIGHTS
    if not path.is_file():
        raise UserError(
            f"--init {spec}: expected 'random', 'imagenet:PATH' or an exported backbone "
            f"(a backbone.pt file or its run folder); {path} not found"
        )
    card = read_card(path)
    if not card:
        log.warning(
            "%s: no backbone card; the architecture is checked by the weights alone",
            card_path(path),
        )
    return Init("backbone", card_label(card, path.parent), path, card.get("arch"), card)
