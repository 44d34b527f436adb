"""Which library versions made an output, recorded in it and checked by the stage that reads it.

    versions()                                   # ["python==3.11.7", "numpy==2.4.6", ...]
    check_versions(manifest.get("versions"), "data/shards/manifest.json")   # warns on a mismatch

The same params give the same bytes only with the same libraries: an OpenCV release moved every
shard once while nothing recorded it (docs/2026-12-07-reproducible-installs.md). So the shard
manifest, the backbone card and every metrics.json carry the versions of what shapes bytes, and a
stage that reads an output made with other versions says so in one warning line naming both.
The record is a list of `name==version` strings: pip's own notation, and `dvc metrics show`
(which shows scalars only) keeps to the scores.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata

log = logging.getLogger(__name__)

# Distributions whose version can change an output's bytes. A render: the image codecs and warps
# (opencv, pillow, scikit-image), masks (pycocotools), random draws and arithmetic (numpy).
RENDER = ("numpy", "opencv-python-headless", "pillow", "scikit-image", "pycocotools")
# Training and evaluation besides: the tar reader (webdataset) and the network (torch, torchvision).
SHAPING = (*RENDER, "torch", "torchvision", "webdataset")


def versions(names: tuple[str, ...] = SHAPING) -> list[str]:
    """`name==version` of python and of each of `names` installed ("absent" if not)."""
    out = [f"python=={platform.python_version()}"]
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}==absent")
    return out


def differences(recorded: object) -> list[tuple[str, str, str]]:
    """(name, recorded, installed) for each version that differs; [] for a record that is not a
    list of `name==version` strings (outputs written before versions were recorded)."""
    if not isinstance(recorded, list):
        return []
    then = dict(_split(v) for v in recorded if isinstance(v, str) and "==" in v)
    now = dict(_split(v) for v in versions())
    return [(n, then[n], now[n]) for n in now if n in then and then[n] != now[n]]


def check_versions(recorded: object, what: str) -> bool:
    """Warn in one line if `what` (a file name) was made with other versions; True if it was."""
    diff = differences(recorded)
    if diff:
        made = ", ".join(f"{n} {a}" for n, a, _ in diff)
        here = ", ".join(f"{n} {b}" for n, _, b in diff)
        log.warning(
            "%s was made with %s; this install has %s: its bytes may differ", what, made, here
        )
    return bool(diff)


def _split(item: str) -> tuple[str, str]:
    name, _, version = item.partition("==")
    return name, version
