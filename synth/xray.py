"""Simulated dual-energy X-ray baggage scans: materials, the 12 item classes, clutter, bags, display.

A scan is built the way a line scanner sees a bag. Every object is a set of parts, each a material
and a thickness map; the detector measures transmission at two energies,
`T_low = exp(-Σ μ_low·t)` and `T_high = exp(-Σ μ_high·t)`, summed over every object on the ray:
objects superimpose, they never occlude. The display maps the ratio of the two log attenuations
(an effective-Z proxy) to hue — organic orange, mixed/light inorganic green, metal blue — and the
overall attenuation to brightness, so very dense matter turns dark and air stays white.

    rng = np.random.default_rng([seed, split, index])
    scan = simulate_scan(rng, height=240, width=320, items=["Knife", "Gun"], clutter="dense")
    scan.rgb        # HxWx3 uint8 pseudo-colour image
    scan.masks      # one HxW bool footprint per item (where its thickness > 0), in `items` order

Item classes differ by shape and structure, not by colour: every class draws its materials from
several options (knives of steel, ceramic or plastic; plastic-coated or bare handles), and the
clutter shares materials and shapes with them (metal rods, keys, coins, battery cells, boards).
Lengths below are in the object's own frame (units of its length); thicknesses are in "units",
one unit being one pixel at the default canvas size (`REFERENCE_SIDE`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES = (
    "Baton",
    "Pliers",
    "Hammer",
    "Powerbank",
    "Scissors",
    "Wrench",
    "Gun",
    "Bullet",
    "Sprayer",
    "HandCuffs",
    "Knife",
    "Lighter",
)

# Linear attenuation (μ_low, μ_high) per thickness unit. Only the ratio μ_low/μ_high (the display
# hue) and the overall scale (brightness) matter: organic ≈ 1.2–1.3, mixed ≈ 1.6–1.75, metal ≥ 2.3.
MATERIALS: dict[str, tuple[float, float]] = {
    "cloth": (0.050, 0.041),
    "paper": (0.062, 0.050),
    "wood": (0.058, 0.047),
    "plastic": (0.070, 0.055),
    "rubber": (0.085, 0.066),
    "water": (0.076, 0.059),
    "fr4": (0.160, 0.100),
    "glass": (0.200, 0.120),
    "aluminium": (0.220, 0.128),
    "ceramic": (0.260, 0.150),
    "steel": (0.950, 0.400),
    "brass": (1.100, 0.440),
    "copper": (1.100, 0.450),
    "lead": (2.600, 0.950),
}

REFERENCE_SIDE = 300  # canvas long side (px) at which one thickness unit is one pixel

# cv2 drawing takes fixed-point vertices: 4 fractional bits give sub-pixel shapes on small canvases.
_SHIFT = 4
_ONE = 1 << _SHIFT

Point = tuple[float, float]


# ---------------------------------------------------------------------------------------------
# Drawing: one object in its own frame, and the film that sums every object's attenuation
# ---------------------------------------------------------------------------------------------


class Sketch:
    """One object drawn in its own frame into a patch of log-attenuations.

    Local coordinates are scaled by `scale` px, rotated by `angle` (radians), optionally mirrored
    (local y flipped) and put at `origin` (px) in a patch of `shape` (H, W). `att` (2, H, W) float32
    holds Σ μ·t at the low and high energy; `mask` (H, W) bool is the object's footprint.
    """

    def __init__(
        self,
        scale: float,
        angle: float,
        mirror: bool,
        shape: tuple[int, int],
        origin: Point,
        unit_px: float = 1.0,
    ):
        c, s = scale * math.cos(angle), scale * math.sin(angle)
        f = -1.0 if mirror else 1.0
        self.matrix = np.array([[c, -s * f, origin[0]], [s, c * f, origin[1]]])
        self.scale = scale
        self.units = scale / unit_px  # one local length in thickness units
        self.shape = shape
        self.att = np.zeros((2, *shape), np.float32)
        self.mask = np.zeros(shape, bool)

    @classmethod
    def square(cls, length: float, rng: np.random.Generator, unit_px: float, extent=0.72):
        """A patch around an object of `length` px at a random angle and handedness."""
        side = int(math.ceil(2 * extent * length)) + 4
        angle = float(rng.uniform(0, 2 * math.pi))
        return cls(
            length, angle, bool(rng.random() < 0.5), (side, side), (side / 2, side / 2), unit_px
        )

    def blank(self) -> np.ndarray:
        return np.zeros(self.shape, np.uint8)

    def _fix(self, pts: Sequence[Point]) -> np.ndarray:
        p = np.asarray(pts, np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]
        return np.round(p * _ONE).astype(np.int32)

    def poly(self, *polys: Sequence[Point], out: np.ndarray | None = None) -> np.ndarray:
        out = self.blank() if out is None else out
        for p in polys:  # one call per polygon: fillPoly's even-odd rule would punch overlaps
            cv2.fillPoly(out, [self._fix(p)], 1, cv2.LINE_8, _SHIFT)
        return out

    def disc(self, centre: Point, r: float, out: np.ndarray | None = None) -> np.ndarray:
        return self.poly(ellipse_pts(centre, r, r), out=out)

    def ring(self, centre: Point, r_out: float, r_in: float) -> np.ndarray:
        out = self.disc(centre, r_out)
        out[self.disc(centre, r_in) > 0] = 0
        return out

    def path(self, pts: Sequence[Point], width: float, out: np.ndarray | None = None):
        """A polyline `width` (local units) wide, with round joints and caps."""
        out = self.blank() if out is None else out
        w = max(1, int(round(width * self.scale)))
        cv2.polylines(out, [self._fix(pts)], False, 1, w, cv2.LINE_8, _SHIFT)
        return out

    def add(self, mask: np.ndarray, material: str, thickness: float, profile="flat", wall=0.25):
        """Add a part: `thickness` units of `material` over `mask`, shaped by `profile`.

        Profiles: `flat` (plates, blades), `round` (solid cylinders: chord through a disc),
        `tube` (hollow cylinders: bright rims, `wall` = wall/radius), `box` (a hollow box seen
        face-on: faces plus thicker walls along its outline).
        """
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0 or h == 0:
            return
        win = (slice(y, y + h), slice(x, x + w))
        t = _profile(mask[win], profile, wall) * np.float32(thickness)
        self.add_map(win, material, t)

    def add_map(self, win: tuple[slice, slice], material: str, t: np.ndarray) -> None:
        """Add a free thickness map `t` (units) over the window `win` of the patch."""
        lo, hi = MATERIALS[material]
        self.att[0][win] += np.float32(lo) * t
        self.att[1][win] += np.float32(hi) * t
        self.mask[win] |= t > 0


def _profile(mask: np.ndarray, kind: str, wall: float) -> np.ndarray:
    """Thickness profile in [0, 1] over a cropped mask (h, w), float32."""
    if kind == "flat":
        return mask.astype(np.float32)
    # Distance to the outline, on a 1-px zero border so shapes cut by the crop still taper.
    d = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    r = max(float(d.max()), 1.0)
    if kind == "box":
        return np.where(d > 0, np.where(d <= max(wall * r, 1.0), 1.0, 0.35), 0).astype(np.float32)
    u = np.minimum(d / r, 1.0)
    outer = np.sqrt(u * (2.0 - u))  # chord through a disc at depth d, over the diameter
    if kind == "round":
        return outer.astype(np.float32)
    k = 1.0 - wall  # tube: inner radius k·r, its chord subtracted from the outer one
    ui = np.clip((d - wall * r) / (k * r), 0.0, 1.0)
    inner = k * np.sqrt(ui * (2.0 - ui)) * (d > wall * r)
    return (outer - inner).astype(np.float32)


def ellipse_pts(centre: Point, a: float, b: float, rot=0.0, t0=0.0, t1=2 * math.pi, n=28):
    """Vertices (n, 2) of an ellipse (or its arc from angle t0 to t1), semi-axes a, b, rotated."""
    cos_t, sin_t = _circle(t0, t1, n)
    c, s = math.cos(rot), math.sin(rot)
    pts = np.empty((n, 2))
    pts[:, 0] = centre[0] + (c * a) * cos_t - (s * b) * sin_t
    pts[:, 1] = centre[1] + (s * a) * cos_t + (c * b) * sin_t
    return pts


@functools.lru_cache(maxsize=256)
def _circle(t0: float, t1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Cached: scans draw thousands of arcs, and most share a handful of (t0, t1, n).
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
    return np.cos(t), np.sin(t)


def rect_pts(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def rrect_pts(x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
    """Rounded rectangle: four quarter arcs of radius r (clamped to fit)."""
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = [
        (x1 - r, y1 - r, 0.0),
        (x0 + r, y1 - r, 0.5),
        (x0 + r, y0 + r, 1.0),
        (x1 - r, y0 + r, 1.5),
    ]
    arcs = [
        ellipse_pts((cx, cy), r, r, 0.0, q * math.pi, (q + 0.5) * math.pi, 6)
        for cx, cy, q in corners
    ]
    return np.concatenate(arcs)


def capsule_pts(x0: float, x1: float, r: float, y: float = 0.0) -> np.ndarray:
    """A stadium along x from x0 to x1 (cap centres), radius r."""
    right = ellipse_pts((x1, y), r, r, 0.0, -math.pi / 2, math.pi / 2, 10)
    left = ellipse_pts((x0, y), r, r, 0.0, math.pi / 2, 1.5 * math.pi, 10)
    return np.concatenate([right, left])


class Film:
    """The detector's view of a whole scan: log-attenuations (2, H, W) float32, summed."""

    def __init__(self, height: int, width: int):
        self.att = np.zeros((2, height, width), np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.att.shape[1], self.att.shape[2]

    def paste(self, sk: Sketch, x: int, y: int) -> np.ndarray:
        """Add `sk` with its patch's top-left at (x, y); return its footprint on the film (H, W)."""
        out = np.zeros(self.shape, bool)
        win = _overlap(self.shape, sk.shape, x, y)
        if win is not None:
            (fy, fx), (py, px) = win
            self.att[:, fy, fx] += sk.att[:, py, px]
            out[fy, fx] = sk.mask[py, px]
        return out

    def add(self, sk: Sketch, x: int, y: int) -> None:
        """Like `paste`, for objects whose footprint nobody needs (clutter)."""
        win = _overlap(self.shape, sk.shape, x, y)
        if win is not None:
            self.att[:, win[0][0], win[0][1]] += sk.att[:, win[1][0], win[1][1]]


def _overlap(film: tuple[int, int], patch: tuple[int, int], x: int, y: int):
    """Matching (film, patch) windows when a patch's top-left lies at (x, y), or None."""
    fy0, fx0 = max(y, 0), max(x, 0)
    fy1, fx1 = min(y + patch[0], film[0]), min(x + patch[1], film[1])
    if fy0 >= fy1 or fx0 >= fx1:
        return None
    film_win = (slice(fy0, fy1), slice(fx0, fx1))
    patch_win = (slice(fy0 - y, fy1 - y), slice(fx0 - x, fx1 - x))
    return film_win, patch_win


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# ---------------------------------------------------------------------------------------------
# The 12 item classes. Each draws into a Sketch whose frame spans x ≈ -0.5..0.5 (its length).
# ---------------------------------------------------------------------------------------------


def _baton(sk: Sketch, rng: np.random.Generator) -> None:
    kind = _pick(rng, ("rubber", "telescopic", "tonfa"))
    r = _u(rng, 0.035, 0.055)
    if kind == "telescopic":  # steel tubes nesting into each other, thinner towards the tip
        edges = np.linspace(-0.5, 0.5, 4)
        metal = _pick(rng, ("steel", "aluminium"))
        for i in range(3):
            ri = r * (1.0 - 0.22 * i)
            sk.add(
                sk.poly(capsule_pts(edges[i], edges[i + 1] + 0.05, ri)),
                metal,
                2 * ri * sk.units,
                "tube",
                0.2,
            )
        sk.add(sk.disc((0.5, 0.0), r * 0.9), "steel", 2 * r * sk.units, "round")
    else:
        body = _pick(rng, ("rubber", "plastic", "aluminium", "wood"))
        fill = 0.35 if body == "aluminium" else 1.0
        sk.add(sk.poly(capsule_pts(-0.47, 0.47, r)), body, 2 * r * sk.units * fill, "round")
    grip = sk.poly(capsule_pts(-0.5, -0.12, r * 1.25))
    sk.add(grip, _pick(rng, ("rubber", "plastic", "cloth")), 0.8 * r * sk.units, "round")
    if kind == "tonfa":  # side handle at right angles near one end, with a knob
        arm = sk.poly(capsule_pts(-0.3, -0.3 + 0.07, r * 0.9, 0.0))
        sk.path([(-0.28, 0.0), (-0.28, 0.17)], 2 * r * 0.9, out=arm)
        sk.disc((-0.28, 0.18), r * 1.2, out=arm)
        sk.add(arm, _pick(rng, ("plastic", "rubber")), 2 * r * sk.units, "round")


def _knife(sk: Sketch, rng: np.random.Generator) -> None:
    kind = _pick(rng, ("kitchen", "folding", "dagger", "utility"))
    w = _u(rng, 0.07, 0.11) if kind != "utility" else 0.08
    blade_mat = _pick(rng, ("steel", "steel", "steel", "ceramic", "plastic"))
    x0, tip = _u(rng, -0.12, 0.0), 0.5
    if kind == "dagger":
        blade = [(x0, -w), (tip - 0.12, -w * 0.8), (tip, 0.0), (tip - 0.12, w * 0.8), (x0, w)]
    elif kind == "utility":
        blade = [(0.2, -w * 0.6), (tip, -w * 0.6), (0.42, w * 0.5), (0.2, w * 0.5)]
    else:  # straight spine, edge curving up to the tip
        edge = [(x, w - 2 * w * ((x - x0) / (tip - x0)) ** 3) for x in np.linspace(x0, tip, 8)]
        blade = [(x0, -w), (tip - 0.05, -w), *edge[::-1][:-1], (x0, w)]
    t_blade = {"steel": 1.6, "ceramic": 3.5, "plastic": 9.0}[blade_mat] * _u(rng, 0.8, 1.2)
    sk.add(sk.poly(blade), blade_mat, t_blade, "round" if blade_mat == "steel" else "flat")
    _knife_handle(sk, rng, kind, x0, w)


def _knife_handle(sk: Sketch, rng: np.random.Generator, kind: str, x0: float, w: float) -> None:
    hw = w * _u(rng, 0.7, 0.95)
    handle = sk.poly(rrect_pts(-0.5, -hw, x0 + 0.01, hw, hw * 0.8))
    if kind == "utility":  # a long box handle holding a metal slider
        sk.poly(rrect_pts(-0.5, -hw, 0.2, hw, hw * 0.5), out=handle)
        sk.add(sk.poly(rect_pts(-0.2, -hw * 0.3, 0.25, hw * 0.3)), "steel", 1.2)
    mat = _pick(rng, ("wood", "plastic", "rubber", "aluminium", "steel"))
    t = {"steel": 1.2, "aluminium": 3.0}.get(mat, 2 * hw * sk.units)
    sk.add(handle, mat, t, "box" if mat in ("steel", "aluminium") else "round", 0.3)
    if kind == "folding":  # liners inside the scales, and the pivot
        sk.add(sk.poly(rect_pts(-0.48, -hw * 0.7, x0, hw * 0.7)), "steel", 0.8)
        sk.add(sk.disc((x0 - 0.01, 0.0), hw * 0.5), "steel", 3.0)
    elif kind == "dagger":  # cross guard
        sk.add(sk.poly(rrect_pts(x0 - 0.03, -w * 1.9, x0, w * 1.9, 0.01)), "steel", 3.0)
    for xr in np.linspace(-0.42, x0 - 0.08, int(rng.integers(0, 4))):  # rivets
        sk.add(sk.disc((xr, 0.0), hw * 0.25), "brass", 2.5)


def _scissors(sk: Sketch, rng: np.random.Generator) -> None:
    opening = _u(rng, 0.0, 0.45)
    loop_mat = _pick(rng, ("plastic", "plastic", "rubber", "steel"))
    pivot, w = (0.05, 0.0), _u(rng, 0.045, 0.065)
    for side in (-1.0, 1.0):
        rot = side * opening / 2
        blade = [
            (pivot[0] - 0.04, 0.0),
            (0.5, side * w * 0.2),
            (0.45, side * w),
            (pivot[0], side * w * 1.2),
        ]
        sk.add(sk.poly(_rotated(blade, pivot, rot)), "steel", 1.5, "round")
        shank = [
            (pivot[0], side * w * 0.8),
            (-0.22, side * 0.1),
            (-0.25, side * 0.04),
            (pivot[0], 0.0),
        ]
        centre = _rotated([(-0.33, side * 0.13)], pivot, rot)[0]
        loop = sk.poly(_rotated(shank, pivot, rot))
        loop |= sk.ring(centre, _u(rng, 0.1, 0.13), 0.07)
        t = 1.5 if loop_mat == "steel" else 0.9 * w * 2 * sk.units
        sk.add(loop, loop_mat, t, "round")
    sk.add(sk.disc(pivot, w * 0.45), "steel", 4.0)


def _rotated(pts: Sequence[Point], centre: Point, angle: float) -> np.ndarray:
    p = np.asarray(pts, np.float64) - centre
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + centre


def _pliers(sk: Sketch, rng: np.random.Generator) -> None:
    kind = _pick(rng, ("combination", "needle", "locking"))
    spread = _u(rng, 0.08, 0.22)
    pivot = (0.12, 0.0)
    jaw_len, jaw_w = (0.38, 0.05) if kind == "needle" else (0.25, 0.09)
    jaw = [
        (0.06, -jaw_w),
        (pivot[0] + jaw_len, -jaw_w * 0.25),
        (pivot[0] + jaw_len, jaw_w * 0.25),
        (0.06, jaw_w),
    ]
    sk.add(sk.poly(jaw), "steel", jaw_w * 2 * sk.units * 0.8, "round")
    sk.add(sk.disc(pivot, jaw_w * 1.1), "steel", jaw_w * 2 * sk.units)
    coated = rng.random() < 0.75
    for side in (-1.0, 1.0):
        arm = [(pivot[0], 0.0), (-0.1, side * spread * 0.55), (-0.5, side * spread)]
        core = sk.path(arm, 0.05)
        sk.add(core, "steel", 3.0, "round")
        if coated:  # plastic dipped grips over the steel core
            grip = sk.path(arm[1:], _u(rng, 0.08, 0.11))
            sk.add(grip, _pick(rng, ("plastic", "rubber")), 0.1 * sk.units, "round")
    if kind == "locking":  # adjusting screw at the end of one handle
        sk.add(sk.path([(-0.5, -spread), (-0.56, -spread * 1.1)], 0.05), "steel", 4.0, "round")


def _hammer(sk: Sketch, rng: np.random.Generator) -> None:
    hw = _u(rng, 0.035, 0.055)
    handle_mat = _pick(rng, ("wood", "wood", "plastic", "fr4", "steel"))
    handle = sk.poly(rrect_pts(-0.5, -hw, 0.38, hw, hw))
    t = 1.5 if handle_mat == "steel" else 2 * hw * sk.units
    sk.add(handle, handle_mat, t, "tube" if handle_mat == "steel" else "round", 0.25)
    if rng.random() < 0.6:  # rubber grip sleeve
        sk.add(
            sk.poly(rrect_pts(-0.5, -hw * 1.3, -0.15, hw * 1.3, hw)),
            "rubber",
            2 * hw * sk.units,
            "round",
        )
    head_w = _u(rng, 0.06, 0.09)
    face = sk.poly(rrect_pts(0.4 - head_w, -0.05, 0.4 + head_w, 0.2, 0.02))
    sk.disc((0.4, 0.2), head_w * 1.05, out=face)
    sk.add(face, "steel", 2 * head_w * sk.units, "round")
    if rng.random() < 0.6:  # claw: two curved prongs with a V notch between them
        claw = [
            (0.4 - head_w, -0.04),
            (0.4 + head_w, -0.04),
            (0.44, -0.2),
            (0.4, -0.3),
            (0.41, -0.18),
            (0.36, -0.17),
        ]
        sk.add(sk.poly(claw), "steel", 2 * head_w * sk.units * 0.7, "round")
    else:  # ball peen
        sk.add(sk.disc((0.4, -0.1), head_w * 0.95), "steel", 2 * head_w * sk.units, "round")


def _wrench(sk: Sketch, rng: np.random.Generator) -> None:
    w = _u(rng, 0.045, 0.065)
    t = _u(rng, 2.5, 4.0)
    if rng.random() < 0.35:
        _adjustable_wrench(sk, rng, w, t)
        return
    body = sk.poly(rrect_pts(-0.38, -w, 0.38, w, w * 0.5))
    head_r = w * _u(rng, 1.7, 2.1)
    body |= sk.disc((0.4, 0.0), head_r)
    slot = _rotated(
        rect_pts(0.4, -head_r * 0.55, 0.4 + head_r * 2, head_r * 0.55), (0.4, 0.0), 0.26
    )
    body[sk.poly(slot) > 0] = 0
    if rng.random() < 0.75:  # ring end with a hexagonal hole
        body |= sk.disc((-0.4, 0.0), head_r * 0.95)
        body[sk.poly(ellipse_pts((-0.4, 0.0), head_r * 0.55, head_r * 0.55, 0.3, n=6)) > 0] = 0
    sk.add(body, "steel", t, "box", 0.3)
    if rng.random() < 0.3:  # plastic-coated handle
        sk.add(
            sk.poly(rrect_pts(-0.25, -w * 1.4, 0.22, w * 1.4, w)),
            "plastic",
            2.2 * w * sk.units,
            "round",
        )


def _adjustable_wrench(sk: Sketch, rng: np.random.Generator, w: float, t: float) -> None:
    body = sk.poly(rrect_pts(-0.5, -w, 0.25, w, w))
    body |= sk.poly(rrect_pts(0.2, -w * 2.6, 0.42, w * 1.6, 0.03))
    body[sk.poly(rect_pts(0.3, -w * 1.6, 0.5, w * 0.3)) > 0] = 0  # open jaw
    body[sk.disc((-0.44, 0.0), w * 0.45) > 0] = 0  # hanging hole
    sk.add(body, "steel", t, "box", 0.3)
    jaw = sk.poly(rect_pts(0.3, w * 0.4, 0.45, w * 1.2))
    sk.add(jaw, "steel", t, "box")
    worm = sk.poly(rect_pts(0.16, w * 0.3, 0.26, w * 1.3))
    sk.add(worm, "steel", 2 * w * sk.units * 0.7, "round")


def _gun(sk: Sketch, rng: np.random.Generator) -> None:
    if rng.random() < 0.25:
        _revolver(sk, rng)
        return
    slide_h = _u(rng, 0.14, 0.18)
    slide = sk.poly(rrect_pts(-0.42, -0.2, 0.5, -0.2 + slide_h, 0.015))
    sk.add(slide, "steel", _u(rng, 7.0, 10.0), "box", 0.4)
    sk.add(sk.poly(rect_pts(-0.2, -0.16, 0.5, -0.11)), "steel", 4.0, "round")  # barrel
    frame_mat = _pick(rng, ("plastic", "plastic", "steel", "aluminium"))
    tf = {"plastic": 12.0, "steel": 3.5, "aluminium": 6.0}[frame_mat]
    top = -0.2 + slide_h
    frame = sk.poly(rect_pts(-0.38, top - 0.01, 0.32, top + 0.07))
    grip = [(-0.42, top), (-0.17, top), (-0.25, 0.3), (-0.3, 0.34), (-0.5, 0.32)]
    sk.poly(grip, out=frame)
    guard = sk.ring((-0.05, top + 0.1), 0.1, 0.065)
    guard[sk.poly(rect_pts(-0.2, top - 0.05, 0.1, top + 0.06)) > 0] = 0
    sk.add(frame | guard, frame_mat, tf, "round")
    sk.add(sk.path([(-0.05, top + 0.05), (-0.07, top + 0.13)], 0.025), "steel", 3.0)  # trigger
    # The magazine: in the grip, or now and then ejected and lying apart (a separate part).
    pivot, angle = ((-0.32, top), 0.2) if rng.random() < 0.85 else ((-0.07, 0.26), -1.45)
    mag = _rotated(rect_pts(-0.37, top + 0.02, -0.27, 0.3), (-0.32, top), angle)
    mag += np.subtract(pivot, (-0.32, top))
    sk.add(sk.poly(mag), "steel", 4.0, "box", 0.3)
    for k in range(int(rng.integers(0, 6))):  # cartridges stacked in the magazine
        c = _rotated([(-0.32, top + 0.06 + 0.05 * k)], (-0.32, top), angle)[0] + np.subtract(
            pivot, (-0.32, top)
        )
        sk.add(sk.disc(tuple(c), 0.03), "brass", 2.5, "round")


def _revolver(sk: Sketch, rng: np.random.Generator) -> None:
    sk.add(sk.poly(rect_pts(0.02, -0.2, 0.5, -0.11)), "steel", 6.0, "round")  # barrel
    sk.add(sk.poly(rect_pts(0.02, -0.11, 0.3, -0.07)), "steel", 3.0)  # ejector rod
    sk.add(sk.poly(rrect_pts(-0.3, -0.22, 0.04, 0.0, 0.03)), "steel", 5.0, "box", 0.4)  # frame
    sk.add(sk.poly(rrect_pts(-0.18, -0.21, 0.03, -0.01, 0.02)), "steel", 8.0, "round")  # cylinder
    for k in range(4):  # chambers: brass cases inside the cylinder
        sk.add(sk.disc((-0.15 + 0.05 * k, -0.11), 0.022), "brass", 2.5)
    grip = [(-0.3, -0.04), (-0.14, -0.02), (-0.26, 0.25), (-0.36, 0.3), (-0.47, 0.24)]
    sk.add(sk.poly(grip), _pick(rng, ("wood", "rubber", "plastic")), 14.0, "round")
    sk.add(sk.path([(-0.3, -0.03), (-0.4, 0.25)], 0.04), "steel", 3.0)  # grip frame
    guard = sk.ring((-0.08, 0.03), 0.07, 0.045)
    guard[sk.poly(rect_pts(-0.2, -0.1, 0.05, 0.0)) > 0] = 0
    sk.add(guard, "steel", 3.0)
    sk.add(sk.path([(-0.08, 0.0), (-0.1, 0.06)], 0.02), "steel", 3.0)  # trigger


def _bullet(sk: Sketch, rng: np.random.Generator) -> None:
    rifle = rng.random() < 0.4
    r = _u(rng, 0.1, 0.13) if rifle else _u(rng, 0.16, 0.2)
    neck = 0.15 if rifle else 0.05
    case = sk.poly(rect_pts(-0.46, -r, neck, r))
    if rifle:  # bottleneck shoulder
        sk.poly(
            [(neck, -r), (neck + 0.08, -r * 0.55), (neck + 0.08, r * 0.55), (neck, r)], out=case
        )
    sk.add(
        case, _pick(rng, ("brass", "brass", "steel", "aluminium")), 2 * r * sk.units, "tube", 0.2
    )
    sk.add(
        sk.poly(rect_pts(-0.5, -r * 1.05, -0.44, r * 1.05)),
        "brass",
        2 * r * sk.units * 0.5,
        "round",
    )
    tip_x0 = neck + (0.08 if rifle else 0.0)
    rt = r * (0.55 if rifle else 0.95)
    ogive = [
        (tip_x0, -rt),
        (0.5 - 0.12, -rt * 0.6),
        (0.5, 0.0),
        (0.5 - 0.12, rt * 0.6),
        (tip_x0, rt),
    ]
    sk.add(sk.poly(ogive), _pick(rng, ("lead", "copper", "steel")), 2 * rt * sk.units, "round")


def _sprayer(sk: Sketch, rng: np.random.Generator) -> None:
    r = _u(rng, 0.15, 0.21)
    can_mat = _pick(rng, ("aluminium", "aluminium", "steel", "plastic"))
    wall = {"aluminium": 0.06, "steel": 0.03, "plastic": 0.1}[can_mat]
    can = sk.poly(rrect_pts(-0.5, -r, 0.28, r, 0.03))
    sk.poly(ellipse_pts((0.28, 0.0), r * 0.45, r), out=can)  # domed shoulder
    sk.add(can, can_mat, 2 * r * sk.units, "tube", wall)
    level = _u(rng, -0.3, 0.2)
    sk.add(
        sk.poly(rect_pts(-0.48, -r * 0.9, level, r * 0.9)), "water", 2 * r * sk.units * 0.4, "round"
    )
    sk.add(sk.path([(-0.45, 0.0), (0.3, 0.0)], 0.012), "plastic", 3.0)  # dip tube
    sk.add(sk.ring((0.33, 0.0), r * 0.35, r * 0.2), "steel", 2.0)  # valve cup
    sk.add(sk.path([(0.34, 0.0), (0.45, 0.0)], 0.015), "steel", 2.0)  # valve stem + spring
    # The actuator cap; now and then pulled off and lying beside the can (a separate part).
    off = (0.0, 0.0) if rng.random() < 0.8 else (_u(rng, -0.3, 0.1), -r - 0.2)
    cap = [
        rrect_pts(0.32, -r * 0.55, 0.44, r * 0.55, 0.02),
        rect_pts(0.36, r * 0.3, 0.41, r * 0.55 + 0.06),
    ]
    cap = [np.asarray(p) + off for p in cap]
    sk.add(sk.poly(cap[0]), "plastic", 2 * r * sk.units * 0.6, "box", 0.3)
    sk.add(sk.poly(cap[1]), _pick(rng, ("plastic", "steel")), 3.0)  # nozzle


def _handcuffs(sk: Sketch, rng: np.random.Generator) -> None:
    mat, t = _pick(rng, (("steel", 3.0), ("steel", 4.0), ("aluminium", 7.0)))
    r_out, r_in = _u(rng, 0.17, 0.2), 0.12
    bend = _u(rng, -0.6, 0.6)
    centres = [(-0.3, 0.0), _rotated([(0.3, 0.0)], (0.0, 0.0), bend)[0]]
    for (cx, cy), a in zip(centres, (0.0, bend), strict=True):
        sk.add(sk.ring((cx, cy), r_out, r_in), mat, t, "round")
        # Lock box on the ring's side facing the other cuff.
        near = np.array((cx, cy)) * (1.0 - r_out / 0.3)
        box = _rotated(rect_pts(-0.05, -0.08, 0.05, 0.08), (0.0, 0.0), a) + near
        sk.add(sk.poly(box), mat, t * 2.2, "box")
        arc = ellipse_pts((cx, cy), r_out * 0.93, r_out * 0.93, a, 0.6, 2.9, 12)
        sk.add(sk.path(arc, 0.035), mat, t * 0.8)  # ratchet arm over the ring
    if rng.random() < 0.7:  # chain links between the lock boxes (they may not all touch)
        a, b = np.array(centres[0]) * 0.3, np.array(centres[1]) * 0.3
        for k in range(3):
            c = a + (b - a) * (k + 0.5) / 3
            ang = math.atan2(*(b - a)[::-1]) + (math.pi / 2 if k == 1 else 0.0)
            sk.add(sk.path(ellipse_pts(c, 0.045, 0.025, ang, n=12), 0.015), mat, t * 0.9)
    else:  # hinge
        sk.add(
            sk.path([centres[0], centres[1]], 0.09)
            & ~sk.disc(centres[0], r_out)
            & ~sk.disc(centres[1], r_out),
            mat,
            t * 1.5,
        )


def _lighter(sk: Sketch, rng: np.random.Generator) -> None:
    w = _u(rng, 0.22, 0.3)
    if rng.random() < 0.35:  # petrol lighter: steel case, chimney, wick insert
        sk.add(sk.poly(rrect_pts(-0.5, -w, 0.5, w, 0.06)), "steel", 1.5, "box", 0.2)
        sk.add(
            sk.poly(rect_pts(-0.45, -w * 0.8, 0.25, w * 0.8)),
            "cloth",
            2 * w * sk.units * 0.9,
            "round",
        )
        sk.add(sk.poly(rect_pts(0.25, -w * 0.6, 0.45, w * 0.6)), "steel", 2.5, "box", 0.3)
        sk.add(sk.disc((0.35, w * 0.3), w * 0.22), "steel", 3.0)
        return
    body = sk.poly(rrect_pts(-0.5, -w, 0.25, w, 0.08))
    sk.add(body, "plastic", 2 * w * sk.units, "tube", 0.15)
    sk.add(
        sk.poly(rect_pts(-0.46, -w * 0.8, _u(rng, -0.3, 0.15), w * 0.8)),
        "water",
        2 * w * sk.units * 0.8,
        "round",
    )
    sk.add(sk.path([(-0.4, 0.0), (0.3, 0.0)], 0.02), "plastic", 2.0)  # fuel wick tube
    hood = sk.poly(rrect_pts(0.22, -w * 0.9, 0.5, w * 0.9, 0.03))
    sk.add(hood, "steel", 1.5, "box", 0.35)  # metal cap
    sk.add(sk.disc((0.4, -w * 0.35), w * 0.3), "steel", 3.5, "round")  # flint wheel
    sk.add(sk.path([(0.28, w * 0.2), (0.45, w * 0.2)], 0.03), "steel", 2.0)  # spring / lever


def _powerbank(sk: Sketch, rng: np.random.Generator) -> None:
    w = _u(rng, 0.2, 0.3)
    case_mat = _pick(rng, ("plastic", "plastic", "aluminium"))
    case = sk.poly(rrect_pts(-0.5, -w, 0.5, w, 0.05))
    sk.add(case, case_mat, 2.0 if case_mat == "aluminium" else 4.0, "box", 0.15)
    n = int(rng.integers(1, 4))
    if rng.random() < 0.3:  # flat pouch cell
        sk.add(sk.poly(rect_pts(-0.45, -w * 0.85, 0.2, w * 0.85)), "aluminium", 5.0, "flat")
        sk.add(sk.poly(rect_pts(-0.45, -w * 0.75, 0.18, w * 0.75)), "copper", 1.2, "flat")
    else:  # cylindrical cells: steel cans around a wound electrode
        cell_r = min(w * 0.9 / n, 0.12)
        for k in range(n):
            y = -w + (2 * k + 1) * w / n
            cell = sk.poly(capsule_pts(-0.42, 0.15, cell_r * 0.9, y))
            sk.add(cell, "steel", 2 * cell_r * sk.units, "tube", 0.08)
            sk.add(cell, "copper", 2 * cell_r * sk.units * 0.12, "round")
    _board(sk, rng, (0.22, -w * 0.9, 0.46, w * 0.9))
    sk.add(sk.poly(rect_pts(0.44, -0.06, 0.52, 0.06)), "steel", 3.0, "box", 0.3)  # USB port


def _board(sk: Sketch, rng: np.random.Generator, box: tuple[float, float, float, float]) -> None:
    """A circuit board: glass-fibre plate, copper traces, chips and a few metal parts."""
    x0, y0, x1, y1 = box
    sk.add(sk.poly(rect_pts(x0, y0, x1, y1)), "fr4", 3.0)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = _u(rng, x0, x1), _u(rng, y0, y1)
        a = _u(rng, 0.01, 0.04)
        part = sk.poly(rect_pts(cx - a, cy - a * 0.7, cx + a, cy + a * 0.7))
        sk.add(part, _pick(rng, ("ceramic", "steel", "copper")), _u(rng, 1.0, 3.0))
    traces = [(_u(rng, x0, x1), _u(rng, y0, y1)) for _ in range(4)]
    sk.add(sk.path(traces, 0.008), "copper", 0.6)


ITEMS: dict[str, Callable[[Sketch, np.random.Generator], None]] = {
    "Baton": _baton,
    "Pliers": _pliers,
    "Hammer": _hammer,
    "Powerbank": _powerbank,
    "Scissors": _scissors,
    "Wrench": _wrench,
    "Gun": _gun,
    "Bullet": _bullet,
    "Sprayer": _sprayer,
    "HandCuffs": _handcuffs,
    "Knife": _knife,
    "Lighter": _lighter,
}

# Item length range (px) on a REFERENCE_SIDE canvas; scaled with the canvas.
ITEM_LENGTH: dict[str, tuple[float, float]] = {
    "Baton": (110, 165),
    "Pliers": (65, 110),
    "Hammer": (80, 140),
    "Powerbank": (55, 95),
    "Scissors": (60, 115),
    "Wrench": (60, 130),
    "Gun": (75, 120),
    "Bullet": (32, 48),
    "Sprayer": (60, 110),
    "HandCuffs": (75, 115),
    "Knife": (60, 140),
    "Lighter": (36, 58),
}


# ---------------------------------------------------------------------------------------------
# Clutter: everyday contents that share materials and shapes with the items, never annotated
# ---------------------------------------------------------------------------------------------


def _clothes(sk: Sketch, rng: np.random.Generator) -> None:
    """A folded garment: a soft blob of cloth whose thickness varies with layers and wrinkles."""
    h, w = sk.shape
    lh, lw = (h + 1) // 2, (w + 1) // 2  # built at half resolution: it is smooth anyway
    blob = _noise(rng, (lh, lw), 5)
    yy, xx = np.ogrid[-1 : 1 : lh * 1j, -1 : 1 : lw * 1j]
    aspect = _u(rng, 0.5, 1.0)
    inside = blob * 0.45 + 1.0 - (xx**2 + (yy / aspect) ** 2) > 0.55
    wrinkles = np.exp(-((_noise(rng, (lh, lw), 9) / 0.18) ** 2))  # ridges along zero crossings
    layers = 1.0 + np.floor(np.clip(blob + 1.0, 0, 2))  # stepped: 1–3 layers of fabric
    t = (_u(rng, 0.8, 2.2) * layers + _u(rng, 0.5, 2.5) * wrinkles) * inside
    t = cv2.resize(t.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    sk.add_map((slice(0, h), slice(0, w)), _pick(rng, ("cloth", "cloth", "plastic")), t)
    if rng.random() < 0.4:  # buttons, zipper pulls
        ys, xs = np.nonzero(t > 0)
        for k in rng.integers(len(ys), size=int(rng.integers(1, 4))):
            m = cv2.circle(
                sk.blank(), (int(xs[k]), int(ys[k])), max(1, int(0.012 * sk.scale)), 1, -1
            )
            sk.add(m, _pick(rng, ("plastic", "steel", "brass")), 2.0)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise (h, w) float32, unit variance, from a cells x cells grid upsampled bicubically."""
    low = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(low, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _book(sk: Sketch, rng: np.random.Generator) -> None:
    w = _u(rng, 0.3, 0.45)
    sk.add(sk.poly(rect_pts(-0.5, -w, 0.5, w)), "paper", _u(rng, 6.0, 16.0), "box", 0.05)
    if rng.random() < 0.3:  # spiral binding: a row of steel wire loops
        for x in np.linspace(-0.46, 0.46, 14):
            sk.add(sk.ring((x, -w), 0.022, 0.012), "steel", 1.0)


def _bottle(sk: Sketch, rng: np.random.Generator) -> None:
    r = _u(rng, 0.14, 0.2)
    mat = _pick(rng, ("plastic", "plastic", "glass", "aluminium"))
    body = sk.poly(rrect_pts(-0.5, -r, 0.22, r, r * 0.4))
    sk.poly([(0.2, -r), (0.36, -r * 0.4), (0.36, r * 0.4), (0.2, r)], out=body)
    sk.add(body, mat, 2 * r * sk.units, "tube", 0.05 if mat == "plastic" else 0.1)
    level = _u(rng, -0.45, 0.2)
    sk.add(
        sk.poly(rect_pts(-0.48, -r * 0.92, level, r * 0.92)),
        "water",
        2 * r * sk.units * 0.9,
        "round",
    )
    sk.add(
        sk.poly(rect_pts(0.36, -r * 0.45, 0.46, r * 0.45)),
        _pick(rng, ("plastic", "aluminium")),
        6.0,
        "box",
    )


def _shoe(sk: Sketch, rng: np.random.Generator) -> None:
    sole = sk.poly(ellipse_pts((0.0, 0.0), 0.5, 0.17), ellipse_pts((0.28, 0.02), 0.2, 0.2))
    sk.add(sole, "rubber", _u(rng, 8.0, 16.0), "round")
    sk.add(sk.poly(ellipse_pts((-0.05, 0.0), 0.4, 0.13)), "cloth", 8.0, "tube", 0.3)
    if rng.random() < 0.5:  # steel shank in the sole
        sk.add(sk.path([(-0.3, 0.0), (0.05, 0.0)], 0.03), "steel", 1.5)
    for x in np.linspace(-0.15, 0.15, int(rng.integers(0, 6))):  # eyelets
        sk.add(sk.ring((x, -0.06), 0.018, 0.009), "steel", 1.2)
        sk.add(sk.ring((x, 0.06), 0.018, 0.009), "steel", 1.2)


def _cable(sk: Sketch, rng: np.random.Generator) -> None:
    """A coiled charger cable: copper core in a plastic sheath, with a plug at one end."""
    steps = int(rng.integers(20, 45))
    turn = np.cumsum(rng.normal(0.0, 0.35, steps))
    pts = np.cumsum(np.stack([np.cos(turn), np.sin(turn)], axis=1) * 0.045, axis=0)
    pts -= pts.mean(axis=0)
    sk.add(sk.path(pts, 0.025), "plastic", 4.0, "round")
    sk.add(sk.path(pts, 0.006), "copper", 1.2)
    end = pts[-1]
    plug = sk.poly(rect_pts(end[0] - 0.05, end[1] - 0.03, end[0] + 0.05, end[1] + 0.03))
    sk.add(plug, _pick(rng, ("plastic", "aluminium")), 6.0, "box")
    sk.add(sk.disc(tuple(end), 0.015), "steel", 2.0)


def _electronics(sk: Sketch, rng: np.random.Generator) -> None:
    """A phone, tablet or charger brick: casing, board, and often a battery."""
    w = _u(rng, 0.22, 0.35)
    sk.add(
        sk.poly(rrect_pts(-0.5, -w, 0.5, w, 0.06)),
        _pick(rng, ("plastic", "aluminium", "glass")),
        3.0,
        "box",
        0.1,
    )
    _board(sk, rng, (-0.45, -w * 0.8, 0.05, w * 0.8))
    if rng.random() < 0.7:
        sk.add(sk.poly(rect_pts(0.08, -w * 0.8, 0.45, w * 0.8)), "aluminium", 4.0)
        sk.add(sk.poly(rect_pts(0.1, -w * 0.7, 0.43, w * 0.7)), "copper", 0.8)


def _laptop(sk: Sketch, rng: np.random.Generator) -> None:
    """Chassis, board, hinge, keyboard frame and a row of battery cells."""
    w = _u(rng, 0.3, 0.38)
    sk.add(
        sk.poly(rrect_pts(-0.5, -w, 0.5, w, 0.03)),
        _pick(rng, ("aluminium", "plastic")),
        3.5,
        "box",
        0.05,
    )
    _board(sk, rng, (-0.45, -w * 0.9, 0.0, -w * 0.2))
    sk.add(sk.poly(rect_pts(-0.42, w * 0.1, 0.42, w * 0.5)), "aluminium", 1.5)  # keyboard plate
    for x in np.linspace(-0.35, 0.35, int(rng.integers(0, 2)) * 6):
        cell = sk.poly(capsule_pts(x - 0.045, x + 0.045, 0.05, w * 0.72))
        sk.add(cell, "steel", 0.1 * sk.units, "tube", 0.08)
    sk.add(sk.path([(-0.45, -w * 0.97), (0.45, -w * 0.97)], 0.02), "steel", 3.0, "round")  # hinge


def _coins(sk: Sketch, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 7))):
        c = (_u(rng, -0.35, 0.35), _u(rng, -0.35, 0.35))
        sk.add(
            sk.disc(c, _u(rng, 0.07, 0.13)),
            _pick(rng, ("brass", "steel", "copper")),
            _u(rng, 1.2, 2.0),
        )


def _keys(sk: Sketch, rng: np.random.Generator) -> None:
    sk.add(sk.ring((-0.38, 0.0), 0.1, 0.08), "steel", 2.0)
    for _ in range(int(rng.integers(1, 4))):
        a = _u(rng, -0.7, 0.7)
        key = sk.poly(
            *(
                _rotated(p, (-0.38, 0.0), a)
                for p in [
                    ellipse_pts((-0.2, 0.0), 0.09, 0.08),
                    rect_pts(-0.12, -0.025, 0.45, 0.025),
                ]
                + [
                    rect_pts(x, 0.0, x + 0.03, 0.05 + 0.02 * (j % 2))
                    for j, x in enumerate(np.arange(0.08, 0.4, 0.05))
                ]
            )
        )
        key[sk.disc(tuple(_rotated([(-0.24, 0.0)], (-0.38, 0.0), a)[0]), 0.03) > 0] = 0
        sk.add(key, _pick(rng, ("brass", "steel", "aluminium")), 1.8)


def _rod(sk: Sketch, rng: np.random.Generator) -> None:
    """Pens, screwdrivers, umbrella ribs, tent poles: thin straight things that resemble items."""
    kind = _pick(rng, ("pen", "screwdriver", "umbrella", "pole"))
    if kind == "umbrella":
        for y in np.linspace(-0.06, 0.06, int(rng.integers(4, 9))):
            sk.add(sk.path([(-0.5, y * 0.3), (0.45, y)], 0.008), "steel", 1.2)
        sk.add(sk.poly(capsule_pts(-0.5, 0.5, 0.02)), "steel", 0.04 * sk.units, "tube", 0.3)
        sk.add(sk.poly(ellipse_pts((0.0, 0.0), 0.45, 0.12)), "cloth", 2.0)
        return
    r = {"pen": 0.03, "screwdriver": 0.015, "pole": 0.025}[kind]
    shaft_mat = "plastic" if kind == "pen" else _pick(rng, ("steel", "aluminium"))
    sk.add(
        sk.poly(capsule_pts(-0.5, 0.5, r)),
        shaft_mat,
        2 * r * sk.units,
        "tube" if kind != "screwdriver" else "round",
        0.3,
    )
    if kind == "screwdriver":
        sk.add(
            sk.poly(capsule_pts(-0.5, -0.1, 0.06)),
            _pick(rng, ("plastic", "wood", "rubber")),
            0.12 * sk.units,
            "round",
        )
    if kind == "pen":  # refill and spring
        sk.add(sk.path([(-0.4, 0.0), (0.45, 0.0)], 0.008), "brass", 0.8)
        sk.add(sk.path([(-0.1, 0.0), (0.05, 0.0)], 0.02), "steel", 1.0)


def _glasses(sk: Sketch, rng: np.random.Generator) -> None:
    lens = _pick(rng, ("plastic", "glass"))
    for x in (-0.22, 0.22):
        sk.add(sk.poly(ellipse_pts((x, 0.0), 0.19, 0.14)), lens, 3.0, "round")
        sk.add(
            sk.path(ellipse_pts((x, 0.0), 0.2, 0.15, n=24), 0.012),
            _pick(rng, ("steel", "plastic")),
            1.5,
        )
    sk.add(sk.path([(-0.4, -0.06), (-0.5, -0.3), (0.5, -0.3), (0.4, -0.06)], 0.012), "steel", 1.0)


def _belt(sk: Sketch, rng: np.random.Generator) -> None:
    pts = ellipse_pts((0.0, 0.0), 0.45, _u(rng, 0.15, 0.35), 0.0, 0.0, _u(rng, 3.5, 6.0), 24)
    sk.add(sk.path(pts, 0.06), _pick(rng, ("cloth", "rubber")), 4.0)
    buckle = sk.poly(rect_pts(0.38, -0.07, 0.52, 0.07))
    buckle[sk.poly(rect_pts(0.4, -0.05, 0.5, 0.05)) > 0] = 0
    sk.add(buckle, _pick(rng, ("steel", "brass")), 3.0)
    sk.add(sk.path([(0.38, 0.0), (0.5, 0.0)], 0.012), "steel", 2.0)


def _headphones(sk: Sketch, rng: np.random.Generator) -> None:
    band = ellipse_pts((0.0, 0.1), 0.4, 0.4, 0.0, math.pi, 2 * math.pi, 18)
    sk.add(sk.path(band, 0.05), "plastic", 6.0)
    for x in (-0.4, 0.4):
        sk.add(sk.disc((x, 0.15), 0.15), "plastic", 8.0, "box", 0.2)
        sk.add(sk.disc((x, 0.15), 0.06), "steel", 5.0)  # driver magnet


def _food(sk: Sketch, rng: np.random.Generator) -> None:
    """Fruit, sandwiches, snacks: thick organic blobs."""
    for _ in range(int(rng.integers(1, 4))):
        c = (_u(rng, -0.3, 0.3), _u(rng, -0.3, 0.3))
        a, b = _u(rng, 0.12, 0.3), _u(rng, 0.1, 0.25)
        sk.add(sk.poly(ellipse_pts(c, a, b, _u(rng, 0, math.pi))), "water", b * sk.units, "round")


CLUTTER: dict[
    str, tuple[Callable[[Sketch, np.random.Generator], None], tuple[float, float], float]
] = {
    # name: (draw, length range px on a REFERENCE_SIDE canvas, sampling weight)
    "clothes": (_clothes, (90, 200), 3.0),
    "book": (_book, (50, 100), 0.6),
    "bottle": (_bottle, (60, 110), 1.2),
    "shoe": (_shoe, (80, 130), 0.8),
    "cable": (_cable, (60, 120), 1.5),
    "electronics": (_electronics, (40, 90), 1.2),
    "laptop": (_laptop, (130, 190), 0.4),
    "coins": (_coins, (20, 40), 0.8),
    "keys": (_keys, (30, 50), 0.8),
    "rod": (_rod, (60, 150), 1.0),
    "glasses": (_glasses, (40, 60), 0.4),
    "belt": (_belt, (80, 140), 0.5),
    "headphones": (_headphones, (50, 80), 0.5),
    "food": (_food, (40, 90), 0.8),
}


# ---------------------------------------------------------------------------------------------
# Bags
# ---------------------------------------------------------------------------------------------


def draw_bag(film: Film, rng: np.random.Generator, unit_px: float):
    """Draw a bag onto the film; return its inner box (x0, y0, x1, y1) in px for the contents
    and its footprint (H, W) float32 (contents outside it are cut off)."""
    h, w = film.shape
    bw, bh = w * _u(rng, 0.74, 0.97), h * _u(rng, 0.7, 0.94)
    cx, cy = w / 2 + _u(rng, -0.05, 0.05) * w, h / 2 + _u(rng, -0.04, 0.06) * h
    sk = Sketch(1.0, _u(rng, -0.06, 0.06), False, (h, w), (cx, cy), unit_px)
    kind = _pick(rng, ("suitcase", "suitcase", "soft", "backpack", "tray"))
    x0, y0, x1, y1 = -bw / 2, -bh / 2, bw / 2, bh / 2
    corner = {"suitcase": 0.08, "soft": 0.22, "backpack": 0.3, "tray": 0.04}[kind] * min(bw, bh)
    shell = sk.poly(rrect_pts(x0, y0, x1, y1, corner))
    mat = "plastic" if kind in ("suitcase", "tray") else "cloth"
    wall = (3.0 if kind == "tray" else 5.0) * unit_px / min(bw, bh) * 2
    sk.add(shell, mat, _u(rng, 4.0, 8.0), "box", wall)
    if kind != "tray":
        _zip(sk, rng, (x0, y0, x1, y1), corner, unit_px)
        _handle(sk, rng, (x0, y0, x1), unit_px)
    if kind == "suitcase" and rng.random() < 0.8:
        _trolley(sk, rng, (x0, y0, x1, y1), unit_px)
    if kind == "backpack":
        for x in (x0 * 0.4, x1 * 0.4):  # shoulder straps with plastic buckles
            sk.add(sk.path([(x, y0), (x * 1.2, y1)], 10 * unit_px), "cloth", 5.0)
            sk.add(
                sk.poly(rect_pts(x - 6 * unit_px, 0, x + 6 * unit_px, 5 * unit_px)), "plastic", 6.0
            )
    film.add(sk, 0, 0)
    inset = 0.07 * min(bw, bh)
    box = (cx + x0 + inset, cy + y0 + inset, cx + x1 - inset, cy + y1 - inset)
    return tuple(int(round(v)) for v in box), shell.astype(np.float32)


def _zip(sk: Sketch, rng: np.random.Generator, box, corner: float, unit_px: float) -> None:
    x0, y0, x1, y1 = box
    d = _u(rng, 3.0, 7.0) * unit_px
    line = rrect_pts(x0 + d, y0 + d, x1 - d, y1 - d, max(corner - d, 1.0))
    sk.add(sk.path(np.concatenate([line, line[:1]]), 1.6 * unit_px), "steel", 0.9)
    for _ in range(int(rng.integers(1, 3))):  # zip pullers
        p = line[int(rng.integers(len(line)))]
        sk.add(
            sk.poly(
                rect_pts(
                    p[0] - 3 * unit_px, p[1] - 5 * unit_px, p[0] + 3 * unit_px, p[1] + 5 * unit_px
                )
            ),
            "steel",
            1.8,
        )


def _handle(sk: Sketch, rng: np.random.Generator, box, unit_px: float) -> None:
    x0, y0, x1 = box
    half = (x1 - x0) * _u(rng, 0.1, 0.18)
    cx = (x0 + x1) / 2
    arc = ellipse_pts((cx, y0 + 4 * unit_px), half, half * 0.5, 0.0, math.pi, 2 * math.pi, 14)
    sk.add(sk.path(arc, 7 * unit_px), _pick(rng, ("rubber", "plastic", "cloth")), 8.0, "round")
    for x in (cx - half, cx + half):  # rivets or brackets holding it
        sk.add(
            sk.poly(rect_pts(x - 3 * unit_px, y0, x + 3 * unit_px, y0 + 8 * unit_px)), "steel", 1.5
        )


def _trolley(sk: Sketch, rng: np.random.Generator, box, unit_px: float) -> None:
    """Telescopic handle tubes along one side and wheels at the corners: long metal lines."""
    x0, y0, x1, y1 = box
    metal = _pick(rng, ("aluminium", "steel"))
    r = 4.5 * unit_px
    for x in (x0 + (x1 - x0) * 0.3, x0 + (x1 - x0) * 0.7):
        tube = sk.path([(x, y0 + 2 * r), (x, y1 - 2 * r)], 2 * r)
        sk.add(tube, metal, 9.0, "tube", 0.25)
    sk.add(
        sk.poly(rect_pts(x0 + (x1 - x0) * 0.25, y0 + r, x0 + (x1 - x0) * 0.75, y0 + 4 * r)),
        "plastic",
        10.0,
        "box",
    )
    for x in (x0 + 3 * r, x1 - 3 * r):
        sk.add(sk.disc((x, y1 - 2 * r), 2.2 * r), "rubber", 16.0, "round")
        sk.add(sk.disc((x, y1 - 2 * r), 0.6 * r), "steel", 4.0)


# ---------------------------------------------------------------------------------------------
# Detector and display
# ---------------------------------------------------------------------------------------------

# Display hue against the attenuation ratio q = ln T_low / ln T_high (an effective-Z proxy):
# organic orange, organic + a little inorganic yellow-olive, mixed green, metal blue.
_HUE_Q = np.array([1.15, 1.3, 1.5, 1.7, 2.0, 2.35, 2.8])
_HUE_RGB = np.array(
    [
        [1.00, 0.68, 0.24],
        [0.97, 0.54, 0.11],
        [0.78, 0.68, 0.18],
        [0.30, 0.70, 0.28],
        [0.16, 0.58, 0.62],
        [0.16, 0.38, 0.90],
        [0.22, 0.24, 0.80],
    ]
)


@dataclass(frozen=True)
class Scanner:
    """Per-scan detector and display settings (scanners differ; so do their images)."""

    blur: float  # detector point-spread sigma, px
    photons: float  # photon count at full transmission: Poisson noise ∝ sqrt(T / photons)
    gain: float  # brightness falloff per unit high-energy attenuation
    saturation: float  # how fast colour builds up with attenuation
    hue_shift: float  # calibration offset of the ratio q
    quality: int = 90  # JPEG quality the scanner exports with


def draw_scanner(rng: np.random.Generator) -> Scanner:
    return Scanner(
        blur=_u(rng, 0.5, 0.9),
        photons=_u(rng, 8000.0, 30000.0),
        gain=_u(rng, 0.75, 1.0),
        saturation=_u(rng, 3.5, 5.5),
        hue_shift=_u(rng, -0.05, 0.05),
    )


def render(att: np.ndarray, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Pseudo-colour display image (H, W, 3) uint8 RGB of log-attenuations `att` (2, H, W)."""
    f32 = np.float32
    t = np.stack([cv2.GaussianBlur(ch, (0, 0), scanner.blur) for ch in att])
    np.exp(np.negative(t, out=t), out=t)
    # Photon noise, std sqrt(T / N0). Uniform noise of the same variance looks the same after
    # JPEG and costs a fifth of a Gaussian draw.
    u = rng.random(t.shape, f32) - f32(0.5)
    t += np.sqrt(t * f32(12.0 / scanner.photons)) * u
    np.log(np.clip(t, f32(1e-4), f32(1.0), out=t), out=t)
    # Air calibration: the scanner maps an empty belt to exactly white.
    a = np.maximum(np.negative(t, out=t) - f32(0.025), f32(0.0), out=t)
    hue = np.take(_HUE_LUT, _hue_index(a[0] / np.maximum(a[1], f32(1e-3)), scanner.hue_shift), 0)
    value = np.exp(a[1] * f32(-scanner.gain)) * f32(255.0)  # brightness, 0..255
    colour = value * (f32(1.0) - np.exp(a[1] * f32(-scanner.saturation)))  # how far from grey
    rgb = (value - colour + f32(0.5))[..., None] + colour[..., None] * hue
    return rgb.astype(np.uint8)  # within [0.5, 255.5): no clipping needed


# Hue by table lookup over q (fast); 512 steps across the anchors' range.
_LUT_STEPS = 512
_HUE_LUT = np.stack(
    [
        np.interp(np.linspace(_HUE_Q[0], _HUE_Q[-1], _LUT_STEPS), _HUE_Q, _HUE_RGB[:, c])
        for c in range(3)
    ],
    axis=-1,
).astype(np.float32)


def _hue_index(q: np.ndarray, shift: float) -> np.ndarray:
    scale = (_LUT_STEPS - 1) / (_HUE_Q[-1] - _HUE_Q[0])
    idx = (q - np.float32(_HUE_Q[0] + shift)) * np.float32(scale)
    return np.clip(idx, 0, _LUT_STEPS - 1).astype(np.intp)


# ---------------------------------------------------------------------------------------------
# Whole scans
# ---------------------------------------------------------------------------------------------

# Clutter objects per bag, by density level.
CLUTTER_COUNT = {"light": (5, 9), "medium": (9, 15), "dense": (15, 24)}


@dataclass(frozen=True)
class Scan:
    rgb: np.ndarray  # (H, W, 3) uint8
    masks: list[np.ndarray]  # one (H, W) bool footprint per requested item, same order


def simulate_scan(
    rng: np.random.Generator,
    height: int,
    width: int,
    items: Sequence[str],
    clutter: str,
    item_zoom: float = 1.0,
    clutter_share: float = 1.0,
) -> Scan:
    """A bag holding `items` (class names) among clutter ("light", "medium" or "dense").

    `item_zoom` scales the items' length against the bag (ITEM_LENGTH); `clutter_share` scales
    the number of clutter objects of every level (CLUTTER_COUNT), so levels keep their order.
    """
    unit_px = max(height, width) / REFERENCE_SIDE
    film, contents = Film(height, width), Film(height, width)
    box, inside = draw_bag(film, rng, unit_px)
    lo, hi = CLUTTER_COUNT[clutter]
    for _ in range(int(rng.integers(round(lo * clutter_share), round(hi * clutter_share) + 1))):
        _place(contents, _clutter_sketch(rng, unit_px), rng, box)
    masks: list[np.ndarray] = []
    for name in items:
        masks.append(_place_item(film, name, rng, unit_px * item_zoom, box, masks))
    if clutter == "dense":  # hide every item under one or two heavy objects
        for mask in masks:
            for _ in range(int(rng.integers(1, 3))):
                _place(contents, _clutter_sketch(rng, unit_px, heavy=True), rng, box, near=mask)
    film.att += contents.att * inside  # clutter stays inside the bag; items are placed inside
    return Scan(render(film.att, draw_scanner(rng), rng), masks)


_HEAVY = ("laptop", "electronics", "book", "bottle", "shoe", "clothes", "cable")


def _clutter_sketch(rng: np.random.Generator, unit_px: float, heavy: bool = False) -> Sketch:
    names = _HEAVY if heavy else tuple(CLUTTER)
    weights = np.array([CLUTTER[n][2] for n in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    draw, (lo, hi), _ = CLUTTER[name]
    sk = Sketch.square(_u(rng, lo, hi) * unit_px, rng, unit_px)
    draw(sk, rng)
    return sk


def _place(film: Film, sk: Sketch, rng: np.random.Generator, box, near: np.ndarray | None = None):
    """Paste `sk` centred at a random point of the bag's box (or of the mask `near`)."""
    if near is not None and near.any():
        ys, xs = np.nonzero(near)
        k = int(rng.integers(len(ys)))
        cx, cy = int(xs[k]), int(ys[k])
    else:
        cx, cy = int(rng.integers(box[0], box[2] + 1)), int(rng.integers(box[1], box[3] + 1))
    film.add(sk, cx - sk.shape[1] // 2, cy - sk.shape[0] // 2)


def _place_item(film, name, rng, unit_px, box, others) -> np.ndarray:
    """Draw item `name` and paste it wholly inside the canvas, preferably inside the bag box,
    at the least crowded of a few candidate spots; return its footprint (H, W) bool."""
    lo, hi = ITEM_LENGTH[name]
    length = _u(rng, lo, hi) * unit_px
    while True:
        sk = Sketch.square(length, rng, unit_px)
        ITEMS[name](sk, rng)
        spots = _item_spots(film.shape, sk.mask, box, rng)
        if spots:
            break
        if length < 8:
            raise ValueError(f"a {film.shape[1]}x{film.shape[0]} canvas is too small for a {name}")
        length *= 0.85  # larger than the canvas allows: shrink and redraw
    crowd = [_crowding(sk.mask, x, y, others) for x, y in spots]
    x, y = spots[int(np.argmin(crowd))]
    return film.paste(sk, x, y)


def _item_spots(film_shape, mask: np.ndarray, box, rng, n: int = 4) -> list[tuple[int, int]]:
    """Candidate top-left corners that keep the footprint in the box, else in the canvas."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    for bx0, by0, bx1, by1 in (box, (0, 0, film_shape[1] - 1, film_shape[0] - 1)):
        xs, ys = (bx0 - x, bx1 - (x + w - 1)), (by0 - y, by1 - (y + h - 1))
        if xs[0] <= xs[1] and ys[0] <= ys[1]:
            return [
                (int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1)))
                for _ in range(n)
            ]
    return []


def _crowding(mask: np.ndarray, x: int, y: int, others: list[np.ndarray]) -> int:
    """Pixels of `mask` (pasted at x, y) already covered by earlier items."""
    total = 0
    for other in others:
        win = _overlap(other.shape, mask.shape, x, y)
        if win is not None:
            total += int(np.count_nonzero(other[win[0]] & mask[win[1]]))
    return total
