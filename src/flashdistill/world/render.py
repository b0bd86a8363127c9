"""Deterministic renderer of world records: `render(record, resolution) -> (R, R, 3) float32 in [0, 1]`.

Two layers. Large smooth shapes (sky, mountains, faces, boards) are painted on a 4x supersampled canvas from
normalised coordinates and box-filtered down, which anti-aliases them at any resolution. Small features whose exact
pixels carry an attribute (eyes, mouth, glasses, stars, letters) are then painted on the final pixel grid, laid out
in 32-px units and scaled by `s = max(1, R // 32)`, so they stay crisp and readable.

The same record and resolution always give the same array, bit for bit; nothing here draws random numbers.
Any multiple of 16 from 16 to 256 renders (16 px is drawn at 32 and box-filtered down); 32 px is the default
(see `DEFAULT_RESOLUTION`).
"""

from __future__ import annotations

import numpy as np

from flashdistill.errors import UserError
from flashdistill.world.font import GLYPH_H, word_mask, word_width
from flashdistill.world.schema import INK

DEFAULT_RESOLUTION = 32
SUPERSAMPLE = 4

SKY = {  # (top, horizon)
    "day": ((0.35, 0.60, 0.95), (0.70, 0.85, 1.00)),
    "sunset": ((0.35, 0.20, 0.50), (1.00, 0.55, 0.20)),
    "night": ((0.02, 0.03, 0.12), (0.10, 0.12, 0.30)),
}
SCENE_TINT = {"day": (1.0, 1.0, 1.0), "sunset": (1.0, 0.82, 0.70), "night": (0.50, 0.52, 0.65)}
GROUND = {"summer": (0.30, 0.60, 0.25), "autumn": (0.62, 0.50, 0.25), "winter": (0.92, 0.94, 0.97)}
FOLIAGE = {"summer": (0.10, 0.45, 0.15), "autumn": (0.88, 0.45, 0.10), "winter": (0.12, 0.30, 0.22)}
MOUNTAIN = {"gray": (0.50, 0.50, 0.52), "brown": (0.50, 0.33, 0.20), "purple": (0.45, 0.30, 0.60),
            "blue": (0.25, 0.35, 0.65)}
SKIN = {"light": (0.96, 0.82, 0.70), "tan": (0.85, 0.64, 0.45), "brown": (0.60, 0.40, 0.25),
        "dark": (0.36, 0.23, 0.15)}
HAIR = {"black": (0.08, 0.07, 0.07), "brown": (0.40, 0.24, 0.12), "blond": (0.95, 0.82, 0.40),
        "red": (0.80, 0.25, 0.10), "gray": (0.65, 0.65, 0.65)}
IRIS = {"brown": (0.40, 0.22, 0.05), "blue": (0.15, 0.45, 0.95), "green": (0.15, 0.70, 0.25)}
HAT = {"red": (0.80, 0.10, 0.15), "blue": (0.15, 0.25, 0.75), "black": (0.12, 0.12, 0.12)}
CLOTHING = {"red": (0.85, 0.15, 0.15), "blue": (0.15, 0.30, 0.85), "green": (0.15, 0.60, 0.25),
            "yellow": (0.95, 0.85, 0.15), "white": (0.97, 0.97, 0.97), "black": (0.10, 0.10, 0.10),
            "purple": (0.50, 0.20, 0.65)}
PORTRAIT_BG = {"gray": (0.60, 0.60, 0.62), "light blue": (0.65, 0.80, 0.95), "pink": (0.96, 0.75, 0.80),
               "beige": (0.90, 0.85, 0.70), "mint": (0.70, 0.92, 0.80)}
TEXT_BG = {"gray": (0.50, 0.50, 0.50), "brick": (0.60, 0.28, 0.22), "sky": (0.55, 0.75, 0.95),
           "grass": (0.35, 0.62, 0.30)}
LAYOUT_Y = {"top": 0.28, "middle": 0.50, "bottom": 0.72}
WOOD = (0.45, 0.30, 0.15)
JAR = (0.78, 0.84, 0.88)
MOUTH = (0.55, 0.12, 0.15)
FRAME = (0.08, 0.08, 0.10)
STARS = ((3, 3), (9, 6), (14, 2), (20, 5), (26, 3), (29, 8), (6, 10), (23, 11))  # 32-px units, above ridges


class Canvas:
    """A supersampled canvas in normalised coordinates: u (x) and v (y) in [0, 1], v pointing down."""

    def __init__(self, resolution: int, fill):
        n = resolution * SUPERSAMPLE
        self.resolution = resolution
        self.img = np.empty((n, n, 3), np.float32)
        self.img[:] = fill
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        self.v, self.u = np.meshgrid(c, c, indexing="ij")

    def paint(self, mask, color) -> None:
        self.img[mask] = color

    def ellipse(self, cu, cv, ru, rv):
        return ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 <= 1.0

    def rect(self, u0, v0, u1, v1):
        return (self.u >= u0) & (self.u < u1) & (self.v >= v0) & (self.v < v1)

    def triangle(self, apex_u, apex_v, base_v, half_width):
        """Isosceles triangle with apex (apex_u, apex_v) and a horizontal base at base_v."""
        frac = (self.v - apex_v) / (base_v - apex_v)
        return (frac >= 0) & (frac <= 1) & (np.abs(self.u - apex_u) <= frac * half_width)

    def downsample(self) -> np.ndarray:
        r, s = self.resolution, SUPERSAMPLE
        return self.img.reshape(r, s, r, s, 3).mean(axis=(1, 3))


def _scale(r: int) -> int:
    return max(1, r // 32)


def _px(x32: float, r: int) -> int:
    """Map a coordinate in 32-px units to this resolution's pixel grid."""
    return int(round(x32 * r / 32))


def _block(img, x32, y32, w, h, color) -> None:
    """Paint a w x h block (in 32-px units, sizes scaled by s) whose top-left corner is at (x32, y32)."""
    r, s = img.shape[0], _scale(img.shape[0])
    x, y = _px(x32, r), _px(y32, r)
    img[y:y + h * s, x:x + w * s] = color


MOUNTAIN_LAYOUT = {  # count -> [(apex_u, apex_v, half_width)], back to front
    1: [(0.55, 0.26, 0.36)],
    2: [(0.70, 0.34, 0.30), (0.35, 0.28, 0.30)],
    3: [(0.52, 0.26, 0.22), (0.22, 0.34, 0.22), (0.82, 0.36, 0.22)],
}
HORIZON = 0.64


def _landscape(rec: dict, r: int) -> np.ndarray:
    top, bottom = (np.array(c, np.float32) for c in SKY[rec["time"]])
    cv = Canvas(r, 0.0)
    t = np.clip(cv.v / HORIZON, 0, 1)[..., None]
    cv.img[:] = top * (1 - t) + bottom * t
    if rec["sky_object"] == "sun":
        cv.paint(cv.ellipse(0.17, 0.14, 0.08, 0.08), (1.0, 0.88, 0.15))
    elif rec["sky_object"] == "moon":
        crescent = cv.ellipse(0.17, 0.14, 0.08, 0.08) & ~cv.ellipse(0.21, 0.12, 0.07, 0.07)
        cv.paint(crescent, (0.93, 0.93, 0.80))
    tint = np.array(SCENE_TINT[rec["time"]], np.float32)
    base = np.array(MOUNTAIN[rec["mountain_color"]], np.float32)
    for au, av, hw in MOUNTAIN_LAYOUT[rec["mountains"]]:
        cv.paint(cv.triangle(au, av, HORIZON + 0.01, hw), base * tint)
        if rec["season"] == "winter":
            cv.paint(cv.triangle(au, av, av + 0.09, hw * 0.09 / (HORIZON + 0.01 - av)), np.array(INK["white"]) * tint)
    cv.paint(cv.v >= HORIZON, np.array(GROUND[rec["season"]], np.float32) * tint)
    if rec["water"] == "lake":
        cv.paint(cv.ellipse(0.30, 0.86, 0.27, 0.085), np.array((0.20, 0.45, 0.80), np.float32) * tint)
    for i in range(rec["trees"]):
        u = 0.66 + 0.12 * i
        cv.paint(cv.rect(u - 0.015, 0.74, u + 0.015, 0.84), np.array(WOOD, np.float32) * tint)
        cv.paint(cv.triangle(u, 0.55, 0.76, 0.055), np.array(FOLIAGE[rec["season"]], np.float32) * tint)
    img = cv.downsample()
    if rec["time"] == "night":
        for x, y in STARS:
            if rec["sky_object"] == "none" or not (2 <= x <= 9 and y <= 8):
                _block(img, x, y, 1, 1, (0.95, 0.95, 0.85))
    return img


def _portrait(rec: dict, r: int) -> np.ndarray:
    cv = Canvas(r, PORTRAIT_BG[rec["background"]])
    hair, skin = HAIR[rec["hair_color"]], SKIN[rec["skin"]]
    cv.paint(cv.ellipse(0.5, 1.05, 0.42, 0.28), CLOTHING[rec["clothing"]])
    if rec["hair_length"] == "long":
        cv.paint(cv.rect(0.25, 0.36, 0.75, 0.80) | cv.ellipse(0.5, 0.38, 0.25, 0.24), hair)
    cv.paint(cv.rect(0.44, 0.60, 0.56, 0.80), skin)  # neck
    cv.paint(cv.ellipse(0.5, 0.38, 0.24, 0.22) & (cv.v < 0.36), hair)  # top of the hair
    cv.paint(cv.rect(0.27, 0.30, 0.73, 0.50), hair)  # sideburns, visible under any hat
    cv.paint(cv.ellipse(0.5, 0.46, 0.21, 0.24), skin)
    if rec["hat"] != "none":
        cv.paint(cv.ellipse(0.5, 0.28, 0.24, 0.15) & (cv.v < 0.28), HAT[rec["hat"]])
        cv.paint(cv.rect(0.21, 0.26, 0.79, 0.31), HAT[rec["hat"]])
    img = cv.downsample()
    for x in (11, 18):  # eyes: sclera, iris, iris, sclera
        _block(img, x, 13, 4, 2, (0.97, 0.97, 0.97))
        _block(img, x + 1, 13, 2, 2, IRIS[rec["eye_color"]])
    if rec["glasses"] == "yes":
        for x in (10, 17):
            _block(img, x, 12, 6, 1, FRAME)
            _block(img, x, 15, 6, 1, FRAME)
            _block(img, x, 12, 1, 4, FRAME)
            _block(img, x + 5, 12, 1, 4, FRAME)
    expression = rec["expression"]
    if expression == "neutral":
        _block(img, 13, 19, 6, 1, MOUTH)
    else:
        middle_y, corner_y = (20, 19) if expression == "smiling" else (19, 20)
        _block(img, 14, middle_y, 4, 1, MOUTH)
        _block(img, 13, corner_y, 1, 1, MOUTH)
        _block(img, 18, corner_y, 1, 1, MOUTH)
    return img


def _text(rec: dict, r: int) -> np.ndarray:
    cv = Canvas(r, TEXT_BG[rec["background"]])
    cy = LAYOUT_Y[rec["layout"]]
    half = {"sign": 6 / 32, "poster": 9 / 32, "label": 6 / 32}[rec["medium"]]
    if rec["medium"] == "sign":
        for u in (0.25, 0.75):
            cv.paint(cv.rect(u - 0.03, cy, u + 0.03, 1.0), WOOD)
    elif rec["medium"] == "label":
        cv.paint(cv.rect(0.12, min(cy - 0.3, 0.08), 0.88, 0.98) | cv.ellipse(0.5, 0.08, 0.2, 0.06), JAR)
    cv.paint(cv.rect(0.0, cy - half, 1.0, cy + half), INK[rec["board_color"]])
    img = cv.downsample()
    s, ink = _scale(r), INK[rec["text_color"]]
    if rec["medium"] == "sign":  # wooden rim above and below the board
        for y in (cy - half, cy + half - 1 / 32):
            img[_px(y * 32, r):_px(y * 32, r) + s, :] = WOOD
    elif rec["medium"] == "poster":  # two thin rules in the text colour
        for y in (cy - half + 2 / 32, cy + half - 3 / 32):
            img[_px(y * 32, r):_px(y * 32, r) + s, _px(6, r):_px(26, r)] = ink
    mask = word_mask(rec["word"], scale=s)
    h, w = mask.shape
    y0, x0 = _px(cy * 32, r) - GLYPH_H * s // 2 - (s // 2), (r - word_width(len(rec["word"]), s)) // 2
    img[y0:y0 + h, x0:x0 + w][mask] = ink
    return img


_RENDERERS = {"landscape": _landscape, "portrait": _portrait, "text": _text}


def check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or resolution % 16 or not 16 <= resolution <= 256:
        raise UserError(f"resolution {resolution!r} must be a multiple of 16 between 16 and 256")
    return resolution


def render(record: dict, resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Draw a (validated) record. Returns float32 (R, R, 3) in [0, 1]."""
    check_resolution(resolution)
    if resolution < 32:  # 16 px: too small for the pixel layer (a word is 29 px wide), so draw at 32 and shrink
        f = 32 // resolution
        img = _RENDERERS[record["category"]](record, 32).reshape(resolution, f, resolution, f, 3).mean(axis=(1, 3))
    else:
        img = _RENDERERS[record["category"]](record, resolution)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
