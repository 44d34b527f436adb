"""The backbone card: what pretraining writes is what evaluation reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from segloc.backbone_card import (
    WEIGHTS,
    build_card,
    card_label,
    card_normalize,
    read_card,
    write_card,
)
from segloc.errors import UserError


def _card(label: str | None = None) -> dict:
    return build_card(
        "resnet18",
        "segloc",
        12,
        {"lr": 0.1},
        Path("shards/manifest.json"),
        "ab" * 32,
        ("Gun", "Knife"),
        64,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        label,
    )


def test_write_read_round_trip(tmp_path):
    (tmp_path / WEIGHTS).write_bytes(b"weights")
    write_card(tmp_path / WEIGHTS, _card("segloc (mask, single queue)"))
    card = read_card(tmp_path / WEIGHTS)
    digest = hashlib.sha256(b"weights").hexdigest()
    assert card == json.loads(json.dumps(_card("segloc (mask, single queue)"))) | {"sha256": digest}
    assert (tmp_path / "backbone.json").is_file()
    assert card_label(card, tmp_path) == "segloc (mask, single queue)"
    assert card_normalize(card) == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_labels_fall_back_to_method_then_folder(tmp_path):
    assert card_label(_card(), tmp_path) == "segloc"
    assert card_label({}, tmp_path / "run7") == "run7"
    assert card_normalize({"arch": "resnet18"}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{broken", "cannot read backbone config"),
        ("[1]", "expected a JSON object"),
        ('{"arch": 18}', "'arch' must be a string"),
    ],
)
def test_a_bad_card_is_a_user_error(tmp_path, text, message):
    assert read_card(tmp_path / WEIGHTS) == {}  # none: the weights speak for themselves
    (tmp_path / "backbone.json").write_text(text)
    with pytest.raises(UserError, match=message):
        read_card(tmp_path / WEIGHTS)
