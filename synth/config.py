"""The `synth` section of params.yaml: how segments are cut, transformed, pasted and sharded.

    cfg = from_dict(SynthConfig, params["synth"], "synth")

Sizes are in canvas pixels; ranges are `[low, high]` lists. Every field is read by `synth render`, so
DVC re-renders when any of them changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from segloc.errors import UserError

Mode = Literal["multiply", "alpha", "hard"]


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    canvas: int = 80  # square side of both views
    num_shards: int = 16
    samples_per_shard: int = 128
    segments_per_sample: tuple[int, int] = (1, 2)  # inclusive range, drawn per sample
    class_balanced: bool = True  # pick a class uniformly, then one of its segments
    scale: tuple[float, float] = (24.0, 64.0)  # long side of a pasted segment, px (aspect kept)
    max_upscale: float = 2.0  # cap on the long side: this many times its size in the source scan
    rotate: bool = True  # any angle: X-ray items lie at any orientation
    flip: float = 0.5  # probability of a horizontal flip
    density: tuple[float, float] = (0.7, 1.4)  # transmission exponent k, log-uniform
    # Share of samples whose two views paste each segment with the same scale, angle, flip and
    # density (each view still has its own scan and position); the rest draw one per view.
    shared_transform: float = 0.5
    mode: Mode = "multiply"  # Beer-Lambert superposition; alpha and hard are baselines
    edge_sigma: float = 1.0  # Gaussian sigma (px) softening the pasted mask edge
    ring: int = 4  # width (source px) of the ring outside a mask that gives its background level
    min_visible_fraction: float = 0.25  # drop an instance whose topmost share falls below this...
    min_visible_pixels: int = 16  # ...or whose topmost pixel count does, in either view
    jpeg_quality: int = 90
    png_compression: int = 1  # zlib level of the label PNGs (run-length coded: 1 is as small as 9)
    keep_crowd: bool = False  # iscrowd annotations are region labels, not cuttable objects
    skip_bad_inputs: bool = False  # render without unreadable inputs (listed in the manifest)
    background_cache_mb: int = 192  # decoded backgrounds (at canvas scale) kept per worker

    def __post_init__(self) -> None:
        _check_range("segments_per_sample", self.segments_per_sample, 1)
        _check_between("segments_per_sample[1]", self.segments_per_sample[1], 1, 254)
        _check_range("scale", self.scale, 1)
        _check_range("density", self.density, 1e-3)
        _check_positive("canvas", self.canvas, 8)
        _check_positive("num_shards", self.num_shards, 1)
        _check_positive("samples_per_shard", self.samples_per_shard, 1)
        _check_positive("ring", self.ring, 1)
        _check_positive("background_cache_mb", self.background_cache_mb, 1)
        _check_between("flip", self.flip, 0.0, 1.0)
        _check_between("shared_transform", self.shared_transform, 0.0, 1.0)
        _check_between("max_upscale", self.max_upscale, 0.01, 1000.0)
        _check_between("min_visible_fraction", self.min_visible_fraction, 0.0, 1.0)
        _check_between("edge_sigma", self.edge_sigma, 0.0, 16.0)
        _check_between("jpeg_quality", self.jpeg_quality, 1, 100)
        _check_between("png_compression", self.png_compression, 0, 9)
        _check_between("min_visible_pixels", self.min_visible_pixels, 0, self.canvas**2)


def _check_range(name: str, pair: tuple, low: float) -> None:
    if not low <= pair[0] <= pair[1]:
        raise UserError(
            f"params synth.{name}: expected [low, high] with {low} <= low <= high, got {list(pair)}"
        )


def _check_positive(name: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"params synth.{name}: expected an integer >= {low}, got {value}")


def _check_between(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UserError(f"params synth.{name}: expected a value in [{low}, {high}], got {value}")
