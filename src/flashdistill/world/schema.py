"""Scene records of the embedded world: their attributes, validation, sampling and the held-out combinations.

A record is a plain JSON-able dict, e.g. ``{"category": "portrait", "skin": "tan", "hair_color": "red", ...}``. It is
a *complete* discrete description of a scene: `render(record, resolution)` draws it with no other input, so every
attribute is recoverable from the pixels, and a reader that recovers the record can re-render the image exactly
(the world judge relies on this to measure distance from the image manifold).

Held-out combinations (HELD_OUT) never occur in the training pools; the benchmarks draw a share of their cases from
them, so a model is also tested on attribute combinations it never saw.
"""

from __future__ import annotations

import numpy as np

from flashdistill.errors import UserError
from flashdistill.world.font import WORDS

SCHEMA: dict[str, dict[str, tuple]] = {
    "landscape": {
        "time": ("day", "sunset", "night"),
        "season": ("summer", "autumn", "winter"),
        "sky_object": ("sun", "moon", "none"),
        "mountains": (1, 2, 3),
        "mountain_color": ("gray", "brown", "purple", "blue"),
        "water": ("lake", "none"),
        "trees": (0, 1, 2, 3),
    },
    "portrait": {
        "skin": ("light", "tan", "brown", "dark"),
        "hair_color": ("black", "brown", "blond", "red", "gray"),
        "hair_length": ("short", "long"),
        "eye_color": ("brown", "blue", "green"),
        "expression": ("smiling", "neutral", "sad"),
        "glasses": ("yes", "no"),
        "hat": ("none", "red", "blue", "black"),
        "clothing": ("red", "blue", "green", "yellow", "white", "black", "purple"),
        "background": ("gray", "light blue", "pink", "beige", "mint"),
    },
    "text": {
        "word": WORDS,
        "medium": ("sign", "poster", "label"),
        "text_color": ("black", "white", "red", "blue", "yellow", "green"),
        "board_color": ("white", "yellow", "black", "red", "blue", "green"),
        "background": ("gray", "brick", "sky", "grass"),
        "layout": ("top", "middle", "bottom"),
    },
}

# Colours shared by text and board; a text/board pair is valid only when their luma differs enough to read.
INK = {
    "black": (0.05, 0.05, 0.05), "white": (0.97, 0.97, 0.97), "red": (0.85, 0.10, 0.10),
    "blue": (0.10, 0.20, 0.85), "yellow": (0.98, 0.85, 0.10), "green": (0.10, 0.60, 0.20),
}
MIN_TEXT_CONTRAST = 0.3

# Attribute combinations kept out of every training pool (bench-only). Each rule: all listed values at once.
HELD_OUT: dict[str, tuple[dict, ...]] = {
    "landscape": ({"mountain_color": "purple", "water": "lake"}, {"time": "sunset", "season": "winter"}),
    "portrait": ({"hair_color": "red", "eye_color": "green"}, {"glasses": "yes", "hat": "red"}),
    "text": ({"text_color": "red", "board_color": "yellow"}, {"medium": "label", "layout": "top"}),
}

# Which attributes each edit may change; the rest of a portrait's face (skin, eyes) is its identity.
IDENTITY_ATTRS = ("skin", "eye_color")


def luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def text_pair_ok(text_color: str, board_color: str) -> bool:
    return abs(luma(INK[text_color]) - luma(INK[board_color])) >= MIN_TEXT_CONTRAST


def is_valid(record: dict) -> bool:
    if record["category"] == "text":
        return text_pair_ok(record["text_color"], record["board_color"])
    return True


def is_held_out(record: dict) -> bool:
    return any(all(record.get(k) == v for k, v in rule.items()) for rule in HELD_OUT[record["category"]])


def validate_record(record: object, where: str = "record") -> dict:
    """Check a record against SCHEMA; raise UserError naming the bad key. Returns the record."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record must be an object, got {type(record).__name__}")
    category = record.get("category")
    if category not in SCHEMA:
        raise UserError(f"{where}: unknown record category {category!r} (one of {', '.join(SCHEMA)})")
    schema = SCHEMA[category]
    for key in record:
        if key != "category" and key not in schema:
            raise UserError(f"{where}: unknown attribute '{key}' for a {category} record")
    for key, values in schema.items():
        if key not in record:
            raise UserError(f"{where}: missing attribute '{key}' for a {category} record")
        if record[key] not in values:
            shown = "a word of the world vocabulary" if key == "word" else ", ".join(map(str, values))
            raise UserError(f"{where}: attribute '{key}' has value {record[key]!r}, expected {shown}")
    if not is_valid(record):
        raise UserError(f"{where}: text colour {record['text_color']!r} on board {record['board_color']!r} "
                        f"is unreadable (too little contrast)")
    return record


def _draw(category: str, rng: np.random.Generator) -> dict:
    while True:
        record = {"category": category}
        for key, values in SCHEMA[category].items():
            record[key] = values[int(rng.integers(len(values)))]
        if is_valid(record):
            return record


def sample_record(category: str, rng: np.random.Generator, held_out: bool | None = False) -> dict:
    """Uniform record of `category`. held_out=False: never a held-out combination (training pools);
    True: always one (bench share); None: either."""
    while True:
        record = _draw(category, rng)
        if held_out is None or is_held_out(record) == held_out:
            return record
