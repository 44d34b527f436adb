"""Versions recorded in outputs, and the one warning line when an output was made with others."""

import logging

from segloc import provenance
from segloc.atomic import write_json
from segloc.backbone_card import read_card


def test_versions_name_python_and_every_bytes_shaping_package():
    got = dict(v.split("==") for v in provenance.versions())
    assert set(got) == {"python", *provenance.SHAPING}
    assert got["numpy"] != "absent" and got["torch"] != "absent"
    assert [v.split("==")[0] for v in provenance.versions(provenance.RENDER)][1:] == list(
        provenance.RENDER
    )


def test_the_same_versions_say_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        assert provenance.check_versions(provenance.versions(), "x.json") is False
    assert caplog.records == []


def test_other_versions_give_one_line_naming_both(caplog):
    made = [v if not v.startswith("numpy==") else "numpy==0.0.1" for v in provenance.versions()]
    with caplog.at_level(logging.WARNING):
        assert provenance.check_versions(made, "data/shards/manifest.json") is True
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "data/shards/manifest.json" in line and "numpy 0.0.1" in line
    assert f"numpy {dict(v.split('==') for v in provenance.versions())['numpy']}" in line


def test_outputs_without_a_record_are_read_silently(caplog):
    with caplog.at_level(logging.WARNING):
        for record in (None, "numpy 1.0", [1, 2], ["nonsense"]):
            assert provenance.check_versions(record, "old.json") is False
    assert caplog.records == []


def test_a_backbone_card_made_with_other_versions_warns_when_read(tmp_path, caplog):
    made = ["python==2.7.18", *provenance.versions()[1:]]
    write_json(
        tmp_path / "backbone.json", {"arch": "resnet18", "method": "segloc", "versions": made}
    )
    with caplog.at_level(logging.WARNING):
        card = read_card(tmp_path / "backbone.pt")
    assert card["arch"] == "resnet18"
    assert any("python 2.7.18" in r.getMessage() for r in caplog.records)
