"""Synthetic street scenes in the exact Cityscapes layout, for demos, tests and quick CPU experiments.

Each scene is a list of labelled polygons (sky, buildings with windows, walls, fences, trees,
terrain, sidewalks, a road in perspective with lane markings, poles with signs and lights, cars,
trucks, people, bicycles, litter bins, sometimes the ego vehicle's bonnet) in painter's order. The
polygons are written as ``*_gtFine_polygons.json`` (cityscapesscripts format), rasterised with
Pillow exactly as ``cityscapesscripts``' ``json2labelImg`` does into ``*_gtFine_labelIds.png``, and
the RGB image is painted region by region from that same raster, so image, polygons and labels
agree pixel for pixel. Texture, window grids, shadows, lighting, noise and a slight blur keep it
from being solvable by colour alone (a bigger CNN beats a smaller one by a wide margin, see
docs/data.md), while it stays learnable in minutes at small sizes on a CPU.

Everything is drawn from ``np.random.default_rng([seed, split, index])``: the same arguments give
byte-identical files, and adding training scenes does not change the validation ones.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError
from ..fileio import atomic_path, atomic_write_text

__all__ = ["DEMO_LABELS", "DemoScenesReport", "generate_demo_scenes"]

#: The Cityscapes label names the scenes use, with their (id, trainId) from cityscapesscripts' labels.py.
DEMO_LABELS: dict[str, tuple[int, int]] = {
    "unlabeled": (0, 255),
    "ego vehicle": (1, 255),
    "static": (4, 255),
    "road": (7, 0),
    "sidewalk": (8, 1),
    "building": (11, 2),
    "wall": (12, 3),
    "fence": (13, 4),
    "pole": (17, 5),
    "traffic light": (19, 6),
    "traffic sign": (20, 7),
    "vegetation": (21, 8),
    "terrain": (22, 9),
    "sky": (23, 10),
    "person": (24, 11),
    "car": (26, 13),
    "truck": (27, 14),
    "bicycle": (33, 18),
}

_SPLIT_CODES = {"train": 0, "val": 1}
RGB = tuple[float, float, float]


@dataclass
class _Shape:
    """One labelled polygon plus how to paint it (the painting is not part of the annotation)."""

    label: str
    polygon: np.ndarray  # (N, 2) float x, y
    color: RGB
    texture: str = "plain"  # plain | gradient | leaf | stripes | blocks
    amount: float = 0.06  # texture strength
    color2: RGB | None = None  # gradient end colour
    details: list[tuple[np.ndarray, RGB]] = field(default_factory=list)  # image-only polygons inside the shape


@dataclass
class DemoScenesReport:
    """What :func:`generate_demo_scenes` wrote."""

    root: Path
    counts: dict[str, int]
    seconds: float


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float = 12.0) -> RGB:
    c = np.clip(np.asarray(color, dtype=np.float64) + rng.normal(0, amount, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _pick(rng: np.random.Generator, colors: Sequence[Sequence[float]], amount: float = 12.0) -> RGB:
    return _jitter(rng, colors[int(rng.integers(len(colors)))], amount)


def _clip_polygon(poly: np.ndarray, w: int, h: int) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to the pixel rectangle [0, w-1] x [0, h-1]."""
    pts = [tuple(p) for p in poly]
    for axis, bound, keep_below in ((0, 0.0, False), (0, w - 1.0, True), (1, 0.0, False), (1, h - 1.0, True)):
        if not pts:
            break
        def inside(p: tuple[float, ...], axis: int = axis, bound: float = bound, below: bool = keep_below) -> bool:
            return p[axis] <= bound if below else p[axis] >= bound

        out: list[tuple[float, float]] = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(_cross(prev, cur, axis, bound))
                out.append(cur)
            elif inside(prev):
                out.append(_cross(prev, cur, axis, bound))
        pts = out
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _cross(a: tuple[float, float], b: tuple[float, float], axis: int, bound: float) -> tuple[float, float]:
    t = (bound - a[axis]) / (b[axis] - a[axis])
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _ngon(
    cx: float, cy: float, rx: float, ry: float, n: int, rng: np.random.Generator | None = None, wobble: float = 0.0
) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 + (rng.uniform(-wobble, wobble, n) if rng is not None and wobble else 0.0)
    return np.stack([cx + rx * r * np.cos(ang), cy + ry * r * np.sin(ang)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


class _Street:
    """Perspective helper: the ground is seen from a pinhole camera with its vanishing point at (xv, yh).

    A ground point at inverse depth ``t`` (t = 1 on the bottom image row) on the line that reaches the
    bottom row at ``bx`` is ``(xv + t (bx - xv), yh + t (h - yh))``; a height ``z`` there is ``t z`` pixels.
    """

    def __init__(self, h: int, w: int, xv: float, yh: float) -> None:
        self.h, self.w, self.xv, self.yh = h, w, xv, yh

    def ground(self, t: float, bx: float) -> tuple[float, float]:
        return self.xv + t * (bx - self.xv), self.yh + t * (self.h - self.yh)

    def strip(self, bx0: float, bx1: float, t0: float = 0.0, t1: float = 2.0) -> np.ndarray:
        """Ground between two lines, from inverse depth t0 (far) to t1 (near)."""
        return np.array([self.ground(t0, bx0), self.ground(t0, bx1), self.ground(t1, bx1), self.ground(t1, bx0)])

    def facade(self, bx: float, d0: float, d1: float, z0: float, z1: float) -> np.ndarray:
        """A vertical wall standing on line ``bx`` between depths d0 < d1, from height z0 to z1."""
        t0, t1 = 1.0 / d0, 1.0 / d1
        (x0, y0), (x1, y1) = self.ground(t0, bx), self.ground(t1, bx)
        return np.array([[x0, y0 - t0 * z0], [x1, y1 - t1 * z0], [x1, y1 - t1 * z1], [x0, y0 - t0 * z1]])


def _scene(
    rng: np.random.Generator, h: int, w: int
) -> tuple[list[_Shape], list[tuple[np.ndarray, float]], dict[str, float]]:
    """Compose one street scene: shapes in painter's order, shadow polygons, and global lighting."""
    shapes: list[_Shape] = []
    shadows: list[tuple[np.ndarray, float]] = []
    yh = h * rng.uniform(0.34, 0.48)
    xv = w * rng.uniform(0.36, 0.64)
    st = _Street(h, w, xv, yh)
    weather = int(rng.integers(3))  # 0 sunny, 1 overcast, 2 dusk

    sky_top, sky_bottom = [
        ((60, 110, 200), (170, 205, 240)),
        ((140, 145, 155), (205, 205, 210)),
        ((55, 60, 110), (235, 165, 110)),
    ][weather]
    shapes.append(
        _Shape("sky", _rect(0, 0, w, yh + 2), _jitter(rng, sky_top, 8), "gradient", 0.03, _jitter(rng, sky_bottom, 8))
    )
    shapes.append(
        _Shape("terrain", _rect(0, yh, w, h), _pick(rng, [(115, 135, 65), (140, 130, 80), (95, 120, 60)]), "leaf", 0.18)
    )

    # Cross-section at the bottom row, left to right: facade | terrain | sidewalk | road | sidewalk | terrain | facade.
    road_half = w * rng.uniform(0.3, 0.6)
    walk_l, walk_r = w * rng.uniform(0.1, 0.3), w * rng.uniform(0.1, 0.3)
    grass_l = w * rng.uniform(0.05, 0.25) if rng.random() < 0.4 else 0.0
    grass_r = w * rng.uniform(0.05, 0.25) if rng.random() < 0.4 else 0.0
    road_l, road_r = xv - road_half, xv + road_half
    walk_lo, walk_ro = road_l - walk_l, road_r + walk_r
    facade_l, facade_r = walk_lo - grass_l, walk_ro + grass_r
    d_max = rng.uniform(7.0, 14.0)

    # The far end of the street: a skyline of frontal buildings or a tree line.
    t_far = 1.0 / d_max
    x_left, _ = st.ground(t_far, facade_l)
    x_right, y_far = st.ground(t_far, facade_r)
    x = x_left - 2
    while x < x_right + 2:
        bw = w * rng.uniform(0.04, 0.12)
        top = y_far - t_far * h * rng.uniform(1.0, 4.0)
        if rng.random() < 0.75:
            shapes.append(
                _Shape("building", _rect(x, top, x + bw, y_far + 1), _pick(rng, _BUILDING_COLORS, 15), "plain", 0.05)
            )
        else:
            shapes.append(
                _Shape(
                    "vegetation",
                    _ngon(x + bw / 2, y_far - t_far * h * 0.8, bw * 0.7, t_far * h * 1.2, 12, rng, 0.25),
                    _pick(rng, _TREE_COLORS),
                    "leaf",
                    0.35,
                )
            )
        x += bw

    shapes.append(
        _Shape(
            "sidewalk",
            st.strip(walk_lo, road_l),
            _pick(rng, _WALK_COLORS),
            "plain",
            0.06,
            details=_tiles(rng, st, walk_lo, road_l, d_max),
        )
    )
    shapes.append(
        _Shape(
            "sidewalk",
            st.strip(road_r, walk_ro),
            _pick(rng, _WALK_COLORS),
            "plain",
            0.06,
            details=_tiles(rng, st, road_r, walk_ro, d_max),
        )
    )
    shapes.append(
        _Shape(
            "road",
            st.strip(road_l, road_r),
            _pick(rng, [(80, 80, 85), (95, 92, 90), (70, 72, 78)], 10),
            "plain",
            0.08,
            details=_lane_marks(rng, st, road_l, road_r, d_max),
        )
    )

    # Facades, walls, fences and gaps along both sides, far segments first.
    for side, bx in ((-1, facade_l), (1, facade_r)):
        d = 0.45
        segments: list[tuple[float, float]] = []
        while d < d_max:
            seg = rng.uniform(0.6, 2.8) * (1 + d / 6)
            segments.append((d, min(d + seg, d_max)))
            d += seg
        for d0, d1 in reversed(segments):
            kind = rng.choice(["building", "wall", "fence", "gap"], p=[0.62, 0.12, 0.12, 0.14])
            if kind == "building":
                height = h * rng.uniform(0.9, 2.6)
                shapes.append(
                    _Shape(
                        "building",
                        st.facade(bx, d0, d1, 0, height),
                        _pick(rng, _BUILDING_COLORS, 15),
                        "plain",
                        0.05,
                        details=_windows(rng, st, bx, d0, d1, height),
                    )
                )
                if rng.random() < 0.5:  # a building shading the street on the sunny side
                    reach = side * -road_half * rng.uniform(0.3, 1.2)
                    shadows.append((st.strip(bx, bx + reach, 1 / d1, 1 / d0), rng.uniform(0.55, 0.8)))
            elif kind == "wall":
                shapes.append(
                    _Shape(
                        "wall",
                        st.facade(bx, d0, d1, 0, h * rng.uniform(0.12, 0.3)),
                        _pick(rng, [(150, 150, 140), (170, 160, 130), (120, 120, 125)]),
                        "blocks",
                        0.12,
                    )
                )
            elif kind == "fence":
                shapes.append(
                    _Shape(
                        "fence",
                        st.facade(bx, d0, d1, 0, h * rng.uniform(0.15, 0.35)),
                        _pick(rng, [(140, 110, 80), (110, 120, 110), (160, 150, 140)]),
                        "stripes",
                        0.25,
                    )
                )
            else:
                cx, cy = st.ground(1 / ((d0 + d1) / 2), bx + side * w * 0.1)
                t = 1 / ((d0 + d1) / 2)
                shapes.append(
                    _Shape(
                        "vegetation",
                        _ngon(cx, cy - t * h * 0.35, t * w * 0.25, t * h * 0.4, 16, rng, 0.2),
                        _pick(rng, _TREE_COLORS),
                        "leaf",
                        0.35,
                    )
                )

    # Street furniture and traffic, sorted far to near so nearer things occlude farther ones.
    items: list[tuple[float, list[_Shape]]] = []
    for side, inner, outer in ((-1, road_l, walk_lo), (1, road_r, walk_ro)):
        for _ in range(int(rng.integers(0, 4))):  # trees at the outer edge of the sidewalk
            d = rng.uniform(0.9, d_max * 0.8)
            items.append((d, _tree(rng, st, outer + side * w * 0.02, d)))
        for _ in range(int(rng.integers(1, 4))):  # poles near the kerb
            d = rng.uniform(0.8, d_max * 0.8)
            items.append((d, _pole(rng, st, inner + side * walk_l * 0.12, d)))
        for _ in range(int(rng.integers(0, 4))):  # people on the sidewalk
            d = rng.uniform(0.8, d_max * 0.6)
            bx = inner + (outer - inner) * rng.uniform(0.2, 0.8)
            items.append((d, _person(rng, st, bx, d, road_half)))
        if rng.random() < 0.35:
            d = rng.uniform(0.9, d_max * 0.6)
            items.append((d, _bicycle(rng, st, inner + (outer - inner) * rng.uniform(0.1, 0.5), d, road_half)))
        if rng.random() < 0.4:
            d = rng.uniform(0.9, d_max * 0.6)
            items.append((d, _bin(rng, st, inner + (outer - inner) * rng.uniform(0.3, 0.9), d, road_half)))
    for _ in range(int(rng.integers(1, 6))):
        d = rng.uniform(1.05, d_max * 0.7)
        lane = rng.uniform(-0.75, 0.75)
        car, shadow = _vehicle(rng, st, xv + lane * road_half, d, road_half, truck=rng.random() < 0.15)
        items.append((d, car))
        shadows.append(shadow)
    items.sort(key=lambda item: -item[0])
    for _, group in items:
        shapes.extend(group)

    if rng.random() < 0.4:  # the ego vehicle's bonnet, void in Cityscapes
        eh = h * rng.uniform(0.06, 0.12)
        hood = np.array(
            [[0, h], [0, h - eh * 0.5], [w * 0.25, h - eh], [w * 0.75, h - eh], [w, h - eh * 0.5], [w, h]],
            dtype=np.float64,
        )
        shapes.append(
            _Shape("ego vehicle", hood, _pick(rng, [(30, 30, 35), (25, 45, 90), (150, 150, 155)]), "plain", 0.04)
        )

    light = {
        "exposure": float(rng.uniform(0.75, 1.2) * (0.85 if weather == 2 else 1.0)),
        "side": float(rng.uniform(-0.25, 0.25)),
        "noise": float(rng.uniform(3.0, 9.0)),
        "blur": float(rng.uniform(0.4, 1.0)),
    }
    return shapes, shadows, light


_BUILDING_COLORS = [
    (160, 140, 120),
    (180, 95, 75),
    (140, 140, 145),
    (200, 190, 160),
    (120, 100, 90),
    (170, 170, 160),
    (100, 105, 115),
]
_TREE_COLORS = [(60, 100, 40), (45, 85, 45), (80, 110, 50), (55, 75, 35)]
_WALK_COLORS = [(150, 145, 140), (165, 125, 115), (125, 125, 128), (175, 170, 160)]
_CAR_COLORS = [
    (200, 200, 205),
    (30, 30, 35),
    (150, 20, 25),
    (30, 60, 150),
    (120, 125, 130),
    (235, 235, 235),
    (60, 90, 60),
    (200, 160, 40),
]


def _tiles(rng: np.random.Generator, st: _Street, bx0: float, bx1: float, d_max: float) -> list[tuple[np.ndarray, RGB]]:
    """Joints across a sidewalk every ~0.4 depth units, and a light kerb along the road."""
    color = _jitter(rng, (95, 95, 95), 10)
    out = [(st.strip(bx0, bx0 + (bx1 - bx0) * 0.002, 0, 2), color)]
    d = 0.5
    while d < d_max:
        t = 1.0 / d
        out.append((st.strip(bx0, bx1, t - 0.004 * t, t + 0.004 * t), color))
        d += 0.4
    kerb = bx1 if abs(bx1 - st.xv) < abs(bx0 - st.xv) else bx0
    inner = bx0 if kerb == bx1 else bx1
    out.append((st.strip(kerb, kerb + (inner - kerb) * 0.07, 0, 2), _jitter(rng, (190, 190, 185), 8)))
    return out


def _lane_marks(
    rng: np.random.Generator, st: _Street, bx0: float, bx1: float, d_max: float
) -> list[tuple[np.ndarray, RGB]]:
    white = _jitter(rng, (225, 225, 215), 6)
    width = (bx1 - bx0) * 0.012
    mid = (bx0 + bx1) / 2 + (bx1 - bx0) * rng.uniform(-0.05, 0.05)
    out = [(st.strip(bx0 + width, bx0 + 2 * width, 0, 2), white), (st.strip(bx1 - 2 * width, bx1 - width, 0, 2), white)]
    d = 0.5 + rng.uniform(0, 1)
    while d < d_max:
        out.append((st.strip(mid - width, mid + width, 1 / (d + 0.6), 1 / d), white))
        d += 1.4
    if rng.random() < 0.25:  # a zebra crossing
        d0 = rng.uniform(1.5, 4.0)
        n = 9
        for k in range(n):
            a = bx0 + (bx1 - bx0) * (k + 0.25) / n
            out.append((st.strip(a, a + (bx1 - bx0) * 0.5 / n, 1 / (d0 + 0.5), 1 / d0), white))
    # Oil stains and patches: darker blobs that still are road.
    for _ in range(int(rng.integers(0, 4))):
        d = rng.uniform(1.0, d_max * 0.5)
        t = 1 / d
        cx, cy = st.ground(t, bx0 + (bx1 - bx0) * rng.uniform(0.2, 0.8))
        out.append(
            (_ngon(cx, cy, t * (bx1 - bx0) * 0.08, t * st.h * 0.02, 10, rng, 0.3), _jitter(rng, (55, 55, 58), 6))
        )
    return out


def _windows(
    rng: np.random.Generator, st: _Street, bx: float, d0: float, d1: float, height: float
) -> list[tuple[np.ndarray, RGB]]:
    """A grid of windows on a facade, plus a dark ground floor, in the facade's own perspective."""
    out: list[tuple[np.ndarray, RGB]] = []
    glass = _pick(rng, [(40, 50, 70), (90, 110, 140), (30, 30, 35), (150, 170, 190)], 10)
    floor = st.h * rng.uniform(0.2, 0.3)
    out.append((st.facade(bx, d0, d1, 0, floor * 0.8), _jitter(rng, (60, 55, 50), 15)))
    step = rng.uniform(0.35, 0.6)
    z = floor
    while z + floor * 0.6 < height:
        d = d0 + step * 0.25
        while d + step * 0.5 < d1:
            if rng.random() < 0.92:
                out.append(
                    (st.facade(bx, d, d + step * 0.5, z + floor * 0.25, z + floor * 0.75), _jitter(rng, glass, 10))
                )
            d += step
        z += floor
    return out


def _tree(rng: np.random.Generator, st: _Street, bx: float, d: float) -> list[_Shape]:
    t = 1.0 / d
    x, y = st.ground(t, bx)
    trunk_w, trunk_h = max(t * st.w * 0.012, 0.8), t * st.h * rng.uniform(0.5, 0.9)
    crown = _ngon(
        x,
        y - trunk_h - t * st.h * 0.15,
        t * st.h * rng.uniform(0.18, 0.3),
        t * st.h * rng.uniform(0.2, 0.35),
        16,
        rng,
        0.2,
    )
    return [
        _Shape(
            "vegetation", _rect(x - trunk_w, y - trunk_h, x + trunk_w, y), _jitter(rng, (90, 65, 45), 10), "plain", 0.1
        ),
        _Shape("vegetation", crown, _pick(rng, _TREE_COLORS), "leaf", 0.4),
    ]


def _pole(rng: np.random.Generator, st: _Street, bx: float, d: float) -> list[_Shape]:
    t = 1.0 / d
    x, y = st.ground(t, bx)
    pw, ph = max(t * st.w * 0.006, 0.7), t * st.h * rng.uniform(0.8, 1.3)
    out = [
        _Shape(
            "pole",
            _rect(x - pw, y - ph, x + pw, y),
            _pick(rng, [(110, 110, 115), (80, 85, 80), (150, 150, 150)]),
            "plain",
            0.05,
        )
    ]
    kind = rng.random()
    if kind < 0.45:  # a sign: round, triangular or rectangular
        r = t * st.h * rng.uniform(0.035, 0.06)
        cy = y - ph * rng.uniform(0.6, 0.95)
        shape = int(rng.integers(3))
        if shape == 0:
            poly, rim, face = _ngon(x, cy, r, r, 12), (200, 30, 30), (235, 235, 235)
        elif shape == 1:
            poly, rim, face = (
                np.array([[x - r, cy + r * 0.8], [x + r, cy + r * 0.8], [x, cy - r]]),
                (210, 30, 30),
                (240, 235, 220),
            )
        else:
            poly, rim, face = _rect(x - r * 1.2, cy - r * 0.8, x + r * 1.2, cy + r * 0.8), (30, 70, 180), (30, 70, 180)
        inner = (poly - poly.mean(axis=0)) * 0.6 + poly.mean(axis=0)
        out.append(
            _Shape("traffic sign", poly, _jitter(rng, rim, 8), "plain", 0.04, details=[(inner, _jitter(rng, face, 8))])
        )
    elif kind < 0.7:  # a traffic light at the top
        bw, bh = t * st.w * 0.012, t * st.h * 0.09
        box = _rect(x - bw, y - ph - bh * 0.3, x + bw, y - ph + bh * 0.7)
        lamp_y = y - ph - bh * 0.3 + bh * [0.2, 0.5, 0.8][int(rng.integers(3))]
        lamp = _ngon(x, lamp_y, bw * 0.6, bh * 0.12, 8)
        color = [(240, 40, 30), (240, 190, 30), (60, 230, 90)][int(rng.integers(3))]
        out.append(_Shape("traffic light", box, _jitter(rng, (35, 35, 35), 6), "plain", 0.04, details=[(lamp, color)]))
    return out


def _person(rng: np.random.Generator, st: _Street, bx: float, d: float, road_half: float) -> list[_Shape]:
    t = 1.0 / d
    x, y = st.ground(t, bx)
    ph = t * road_half * rng.uniform(0.55, 0.75)
    s = ph
    body = np.array(
        [
            [x - 0.15 * s, y - 0.8 * s],
            [x + 0.15 * s, y - 0.8 * s],
            [x + 0.17 * s, y - 0.45 * s],
            [x + 0.12 * s, y],
            [x + 0.03 * s, y],
            [x, y - 0.33 * s],
            [x - 0.03 * s, y],
            [x - 0.12 * s, y],
            [x - 0.17 * s, y - 0.45 * s],
        ]
    )
    legs = np.array([[x - 0.16 * s, y - 0.45 * s], [x + 0.16 * s, y - 0.45 * s], [x + 0.12 * s, y], [x - 0.12 * s, y]])
    hsv = np.array([[[rng.integers(180), rng.integers(60, 255), rng.integers(60, 230)]]], dtype=np.uint8)
    r, g, b = (float(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    clothes = (r, g, b)
    return [
        _Shape(
            "person",
            body,
            clothes,
            "plain",
            0.08,
            details=[(legs, _pick(rng, [(40, 40, 60), (30, 30, 30), (70, 60, 50)]))],
        ),  # type: ignore[arg-type]
        _Shape(
            "person",
            _ngon(x, y - 0.88 * s, 0.08 * s, 0.09 * s, 8),
            _pick(rng, [(225, 185, 160), (160, 110, 80), (95, 65, 45)], 8),
        ),
    ]


def _bicycle(rng: np.random.Generator, st: _Street, bx: float, d: float, road_half: float) -> list[_Shape]:
    t = 1.0 / d
    x, y = st.ground(t, bx)
    r = t * road_half * rng.uniform(0.1, 0.13)
    color = _pick(rng, [(40, 40, 40), (150, 20, 20), (30, 60, 140), (200, 200, 200)])
    frame = np.array(
        [[x - 1.2 * r, y - r], [x + 1.2 * r, y - r], [x + 0.4 * r, y - 2.2 * r], [x - 0.5 * r, y - 2.1 * r]]
    )
    return [
        _Shape(
            "bicycle",
            _ngon(x - 1.2 * r, y - r, r, r, 10),
            (25, 25, 25),
            "plain",
            0.05,
            details=[(_ngon(x - 1.2 * r, y - r, 0.7 * r, 0.7 * r, 10), (120, 120, 120))],
        ),
        _Shape(
            "bicycle",
            _ngon(x + 1.2 * r, y - r, r, r, 10),
            (25, 25, 25),
            "plain",
            0.05,
            details=[(_ngon(x + 1.2 * r, y - r, 0.7 * r, 0.7 * r, 10), (120, 120, 120))],
        ),
        _Shape("bicycle", frame, color, "plain", 0.05),
    ]


def _bin(rng: np.random.Generator, st: _Street, bx: float, d: float, road_half: float) -> list[_Shape]:
    t = 1.0 / d
    x, y = st.ground(t, bx)
    s = t * road_half * rng.uniform(0.1, 0.16)
    return [
        _Shape(
            "static",
            _rect(x - s, y - 2 * s, x + s, y),
            _pick(rng, [(60, 90, 60), (90, 90, 95), (40, 60, 110)]),
            "plain",
            0.05,
        )
    ]


def _vehicle(
    rng: np.random.Generator, st: _Street, bx: float, d: float, road_half: float, truck: bool
) -> tuple[list[_Shape], tuple[np.ndarray, float]]:
    """A car or truck seen from behind (or the front), standing on the road at bottom-row x ``bx``."""
    t = 1.0 / d
    x, y = st.ground(t, bx)
    cw = t * road_half * rng.uniform(0.5, 0.65) * (1.25 if truck else 1.0)
    ch = cw * (rng.uniform(1.1, 1.4) if truck else rng.uniform(0.72, 0.9))
    hw = cw / 2
    color = _pick(rng, _CAR_COLORS, 10)
    dark = (20.0, 20.0, 22.0)
    details: list[tuple[np.ndarray, RGB]] = []
    if truck:
        poly = _rect(x - hw, y - ch, x + hw, y)
        details.append(
            (_rect(x - hw * 0.9, y - ch * 0.95, x + hw * 0.9, y - ch * 0.3), _jitter(rng, (200, 200, 195), 20))
        )
    else:
        poly = np.array(
            [
                [x - hw, y],
                [x + hw, y],
                [x + hw, y - 0.55 * ch],
                [x + 0.78 * hw, y - 0.62 * ch],
                [x + 0.6 * hw, y - ch],
                [x - 0.6 * hw, y - ch],
                [x - 0.78 * hw, y - 0.62 * ch],
                [x - hw, y - 0.55 * ch],
            ]
        )
        details.append(
            (
                np.array(
                    [
                        [x - 0.72 * hw, y - 0.64 * ch],
                        [x + 0.72 * hw, y - 0.64 * ch],
                        [x + 0.56 * hw, y - 0.95 * ch],
                        [x - 0.56 * hw, y - 0.95 * ch],
                    ]
                ),
                _jitter(rng, (45, 55, 70), 10),
            )
        )
    details.append((_rect(x - hw, y - 0.12 * ch, x - 0.6 * hw, y), dark))  # tyres
    details.append((_rect(x + 0.6 * hw, y - 0.12 * ch, x + hw, y), dark))
    details.append((_rect(x - 0.95 * hw, y - 0.45 * ch, x - 0.7 * hw, y - 0.35 * ch), (200, 30, 25)))  # lights
    details.append((_rect(x + 0.7 * hw, y - 0.45 * ch, x + 0.95 * hw, y - 0.35 * ch), (200, 30, 25)))
    details.append((_rect(x - 0.22 * hw, y - 0.3 * ch, x + 0.22 * hw, y - 0.2 * ch), (230, 230, 225)))  # plate
    shadow = _ngon(x, y, hw * 1.15, max(t * st.h * 0.03, 1.0), 12)
    return [_Shape("truck" if truck else "car", poly, color, "plain", 0.05, details=details)], (shadow, 0.45)


def _texture(
    shape: _Shape, ys: np.ndarray, xs: np.ndarray, fields: dict[str, np.ndarray], sky_bottom: float
) -> np.ndarray:
    """Colours (N, 3) of the pixels (ys, xs) of one region."""
    base = np.asarray(shape.color, dtype=np.float32)
    if shape.texture == "gradient" and shape.color2 is not None:
        a = np.clip(ys / max(sky_bottom, 1.0), 0, 1)[:, None].astype(np.float32)
        out = base * (1 - a) + np.asarray(shape.color2, dtype=np.float32) * a
        return out * (1 + shape.amount * fields["low"][ys, xs])[:, None]
    if shape.texture == "leaf":
        gain = 1 + shape.amount * fields["leaf"][ys, xs] + 0.1 * fields["low"][ys, xs]
    elif shape.texture == "stripes":
        gain = 1 + shape.amount * np.sign(np.sin(xs * (2 * np.pi / 3.0))) + 0.03 * fields["fine"][ys, xs]
    elif shape.texture == "blocks":
        gain = (
            1
            - shape.amount * ((ys % 4) == 0)
            - shape.amount * 0.5 * (((xs + 3 * ((ys // 4) % 2)) % 7) == 0)
            + 0.03 * fields["fine"][ys, xs]
        )
    else:
        gain = 1 + shape.amount * fields["low"][ys, xs] + 0.3 * shape.amount * fields["fine"][ys, xs]
    return base * gain[:, None].astype(np.float32)


def _render(
    shapes: list[_Shape],
    shadows: list[tuple[np.ndarray, float]],
    light: dict[str, float],
    h: int,
    w: int,
    rng: np.random.Generator,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rasterise the shapes; return (Cityscapes objects, RGB uint8 image, labelIds uint8)."""
    objects: list[dict] = []
    regions = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(regions)
    kept: list[_Shape] = []
    for shape in shapes:
        poly = np.rint(_clip_polygon(shape.polygon, w, h)).astype(int)
        if len(poly) < 3 or len({tuple(p) for p in poly.tolist()}) < 3:
            continue
        points = [(int(px), int(py)) for px, py in poly]
        if len(kept) == 255:
            break  # region ids are uint8; scenes never get near this
        kept.append(shape)
        # Exactly what cityscapesscripts' json2labelImg does with this polygon, so labelIds match it.
        draw.polygon(points, fill=len(kept))
        objects.append({"label": shape.label, "polygon": [list(p) for p in points]})
    region = np.array(regions)
    ids = np.zeros(256, dtype=np.uint8)
    for k, shape in enumerate(kept, 1):
        ids[k] = DEMO_LABELS[shape.label][0]
    label_ids = ids[region]

    fields = {
        "fine": rng.standard_normal((h, w)).astype(np.float32),
        "low": cv2.resize(
            rng.standard_normal((h // 8 + 2, w // 8 + 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        ),
    }
    fields["leaf"] = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.9) * 2.2
    sky_bottom = max((float(s.polygon[:, 1].max()) for s in kept if s.label == "sky"), default=h / 2)
    image = np.zeros((h, w, 3), dtype=np.float32)
    for k, shape in enumerate(kept, 1):
        mask = region == k
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        image[ys, xs] = _texture(shape, ys, xs, fields, sky_bottom)
        if shape.details:
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            layer = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
            for j, (poly, _) in enumerate(shape.details, 1):
                pts = np.rint((poly - [x0, y0]) * 16).astype(np.int32)  # 4 fractional bits: sub-pixel edges
                cv2.fillPoly(layer, [pts], j, lineType=cv2.LINE_8, shift=4)
            sub = layer[ys - y0, xs - x0]
            hit = sub > 0
            if hit.any():
                colors = np.array([c for _, c in shape.details], dtype=np.float32)
                fine = fields["fine"][ys[hit], xs[hit]][:, None]
                image[ys[hit], xs[hit]] = colors[sub[hit] - 1] * (1 + 0.04 * fine)

    ground = np.isin(label_ids, [DEMO_LABELS[n][0] for n in ("road", "sidewalk", "terrain")])
    for poly, factor in shadows:
        clipped = _clip_polygon(poly, w, h)
        if len(clipped) < 3:
            continue  # the shadow falls outside the picture
        layer = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(layer, [np.rint(clipped * 16).astype(np.int32)], 1, shift=4)
        image[(layer > 0) & ground] *= factor

    xs_norm = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
    image *= light["exposure"] * (1 + light["side"] * xs_norm)
    image = cv2.GaussianBlur(image, (0, 0), light["blur"]).astype(np.float32, copy=False)
    image += rng.normal(0, light["noise"], image.shape).astype(np.float32)
    return objects, np.clip(np.rint(image), 0, 255).astype(np.uint8), label_ids


def generate_demo_scenes(
    root: str | os.PathLike,
    num_train: int = 48,
    num_val: int = 12,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    cities: Sequence[str] = ("ashford", "brookvale", "corbin"),
    prepare: bool = False,
) -> DemoScenesReport:
    """Write ``num_train`` + ``num_val`` street scenes of ``size`` = (H, W) under ``root`` in the Cityscapes layout.

    Files: ``leftImg8bit/<split>/<city>/<city>_000000_<NNNNNN>_leftImg8bit.png`` and beside them in
    ``gtFine/`` the ``_gtFine_polygons.json`` and ``_gtFine_labelIds.png``. Scene ``i`` of a split goes
    to ``cities[i % len(cities)]``. With ``prepare`` the labelTrainIds and split lists are made too
    (:func:`~segdistill.data.prepare.prepare_cityscapes`, needs cityscapesscripts).
    """
    start = time.monotonic()
    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise UserError(f"demo scene size must be at least 32x32 (H, W), got {size}")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise UserError(f"need a positive number of demo scenes, got num_train={num_train} num_val={num_val}")
    if not cities or any(not c or "_" in c or "/" in c for c in cities):
        raise UserError(f"demo city names must be non-empty and contain no '_' or '/', got {list(cities)}")
    root_path = Path(root).expanduser()
    counts: dict[str, int] = {}
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
            city = cities[i % len(cities)]
            stem = f"{city}_000000_{i:06d}"
            shapes, shadows, light = _scene(rng, h, w)
            objects, image, label_ids = _render(shapes, shadows, light, h, w, rng)
            img_path = root_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            gt_dir = root_path / "gtFine" / split / city
            with atomic_path(img_path) as tmp:
                if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                    raise UserError(f"cannot write {img_path}; check that the folder is writable")
            doc = {"imgHeight": h, "imgWidth": w, "objects": objects}
            atomic_write_text(gt_dir / f"{stem}_gtFine_polygons.json", json.dumps(doc, indent=1) + "\n")
            with atomic_path(gt_dir / f"{stem}_gtFine_labelIds.png") as tmp:
                Image.fromarray(label_ids).save(tmp)
        counts[split] = count
    if prepare:
        from .prepare import prepare_cityscapes

        prepare_cityscapes(root_path, nproc=1, force=True, progress=False)
    return DemoScenesReport(root=root_path, counts=counts, seconds=time.monotonic() - start)
