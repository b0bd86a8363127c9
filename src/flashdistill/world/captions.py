"""Captions for world records: varied phrasing (3+ phrasings per attribute value), random clause order, optional
filler, and long "hard" prompts that spell out every attribute (in the spirit of the paper's Table E).

`caption(record, rng, hard=False) -> (prompt, attributes)`: `attributes` is the subset of the record the prompt
asks for; the world judge checks exactly those. Normal prompts mention three or more attributes (the word of a
text scene is always mentioned); hard prompts mention all of them.
"""

from __future__ import annotations

import numpy as np

from flashdistill.world.schema import SCHEMA

NUM = {0: "no", 1: "one", 2: "two", 3: "three"}

PHRASES: dict[str, dict[str, dict]] = {
    "landscape": {
        "time": {"day": ("in broad daylight", "on a bright day", "during the day"),
                 "sunset": ("at sunset", "under a sunset sky", "in the evening glow"),
                 "night": ("at night", "under a night sky", "after dark")},
        "season": {"summer": ("in summer", "in the summertime", "with green summer grass"),
                   "autumn": ("in autumn", "in the fall", "with autumn colours"),
                   "winter": ("in winter", "covered in snow", "on a snowy winter day")},
        "sky_object": {"sun": ("the sun in the sky", "a shining sun", "with the sun visible"),
                       "moon": ("a crescent moon", "the moon in the sky", "with a pale moon"),
                       "none": ("no sun or moon", "an empty sky", "nothing in the sky")},
        "water": {"lake": ("a lake in the foreground", "a calm lake", "a small blue lake"),
                  "none": ("no water", "without any lake", "dry land in front")},
    },
    "portrait": {
        "skin": {v: (f"{v} skin", f"a {v} complexion", f"a {v}-skinned face") for v in SCHEMA["portrait"]["skin"]},
        "eye_color": {v: (f"{v} eyes", f"eyes that are {v}", f"{v}-eyed") for v in SCHEMA["portrait"]["eye_color"]},
        "expression": {"smiling": ("smiling", "with a smile", "a happy expression"),
                       "neutral": ("a neutral expression", "a straight face", "an expressionless face"),
                       "sad": ("looking sad", "a sad face", "frowning")},
        "glasses": {"yes": ("wearing glasses", "with glasses", "in spectacles"),
                    "no": ("without glasses", "no glasses", "not wearing glasses")},
        "hat": {"none": ("no hat", "bareheaded", "without a hat"),
                **{v: (f"a {v} hat", f"wearing a {v} hat", f"with a {v} cap") for v in ("red", "blue", "black")}},
        "clothing": {v: (f"a {v} shirt", f"dressed in {v}", f"wearing a {v} top")
                     for v in SCHEMA["portrait"]["clothing"]},
        "background": {v: (f"a {v} background", f"against a {v} backdrop", f"in front of a {v} wall")
                       for v in SCHEMA["portrait"]["background"]},
    },
    "text": {
        "medium": {"sign": ("a sign", "a signboard", "a wooden sign"),
                   "poster": ("a poster", "a printed poster", "a wall poster"),
                   "label": ("a label", "a jar label", "a label on a jar")},
        "text_color": {v: (f"in {v} letters", f"{v} text", f"written in {v}") for v in SCHEMA["text"]["text_color"]},
        "board_color": {v: (f"on a {v} board", f"with a {v} background panel", f"a {v} board")
                        for v in SCHEMA["text"]["board_color"]},
        "background": {"gray": ("against a gray wall", "on a plain gray wall", "in front of a gray wall"),
                       "brick": ("on a brick wall", "against red bricks", "in front of a brick wall"),
                       "sky": ("under a blue sky", "against the sky", "with blue sky behind"),
                       "grass": ("on a grassy field", "in a green meadow", "standing on grass")},
        "layout": {"top": ("near the top", "placed high in the frame", "at the top of the image"),
                   "middle": ("in the middle", "centred in the frame", "in the center of the image"),
                   "bottom": ("near the bottom", "low in the frame", "at the bottom of the image")},
    },
}

LEADS = {"landscape": ("A landscape", "A mountain landscape", "A scenic view", "A nature scene"),
         "portrait": ("A portrait of a person", "A head-and-shoulders portrait", "A portrait", "A person")}
FILLERS = ("highly detailed", "simple flat illustration", "pixel art", "soft colours", "clean composition",
           "sharp focus", "centred composition")
HARD_OPENERS = ("Every detail below must be visible", "Follow this description exactly",
                "Render all of the following precisely", "The picture must contain each of these details")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _count_phrase(noun: str, n: int, rng) -> str:
    if n == 0:
        return _pick(rng, (f"no {noun}s", f"not a single {noun}", f"without any {noun}s"))
    if n == 1:
        return _pick(rng, (f"one {noun}", f"a single {noun}", f"a lone {noun}"))
    return _pick(rng, (f"{NUM[n]} {noun}s", f"{n} {noun}s", f"a group of {NUM[n]} {noun}s"))


def _mountains(rec: dict, keys: set, rng) -> str:
    n, c = rec["mountains"], rec["mountain_color"]
    noun = "mountain" if n == 1 else "mountains"
    if {"mountains", "mountain_color"} <= keys:
        return _pick(rng, (f"{NUM[n]} {c} {noun}", f"{NUM[n]} {noun} in {c}", f"a range of {n} {c} peaks"
                           if n > 1 else f"a single {c} peak"))
    if "mountains" in keys:
        return _count_phrase("mountain", n, rng)
    return _pick(rng, (f"{c} mountains", f"mountains in {c}", f"{c} peaks"))


def _hair(rec: dict, keys: set, rng) -> str:
    c, n = rec["hair_color"], rec["hair_length"]
    if {"hair_color", "hair_length"} <= keys:
        return _pick(rng, (f"{n} {c} hair", f"{c} hair worn {n}", f"{c} hair that is {n}"))
    if "hair_color" in keys:
        return _pick(rng, (f"{c} hair", f"hair that is {c}", f"a {c}-haired look"))
    return _pick(rng, (f"{n} hair", f"hair worn {n}", f"{n}-haired"))


def _word(rec: dict, rng) -> str:
    w = rec["word"]
    return _pick(rng, (f'showing the word "{w}"', f'that reads "{w}"', f'with the text "{w}"'))


def _clauses(rec: dict, keys: set, rng) -> list[str]:
    """One phrase per mentioned attribute; attributes that read best together share a phrase."""
    cat, clauses = rec["category"], []
    if cat == "landscape" and keys & {"mountains", "mountain_color"}:
        clauses.append(_mountains(rec, keys, rng))
    if cat == "landscape" and "trees" in keys:
        clauses.append(_count_phrase("tree", rec["trees"], rng))
    if cat == "portrait" and keys & {"hair_color", "hair_length"}:
        clauses.append(_hair(rec, keys, rng))
    for key in sorted(keys):
        if key in PHRASES[cat] and not (cat == "text" and key == "medium"):
            clauses.append(_pick(rng, PHRASES[cat][key][rec[key]]))
    return clauses


def _lead(rec: dict, keys: set, rng) -> str:
    if rec["category"] != "text":
        return _pick(rng, LEADS[rec["category"]])
    thing = _pick(rng, PHRASES["text"]["medium"][rec["medium"]]) if "medium" in keys else "a board"
    return f"{thing[0].upper()}{thing[1:]} {_word(rec, rng)}"


def caption(record: dict, rng: np.random.Generator, hard: bool = False) -> tuple[str, dict]:
    """Return (prompt, attributes it asks for)."""
    names = list(SCHEMA[record["category"]])
    if hard:
        keys = set(names)
    else:
        k = int(rng.integers(3, len(names) + 1))
        keys = {names[i] for i in rng.choice(len(names), size=k, replace=False)}
        if record["category"] == "text":
            keys.add("word")
    clauses = _clauses(record, keys, rng)
    order = rng.permutation(len(clauses))
    clauses = [clauses[i] for i in order]
    lead = _lead(record, keys, rng)
    if hard:
        style = ", ".join(rng.choice(FILLERS, size=2, replace=False))
        prompt = f"{lead}. {_pick(rng, HARD_OPENERS)}: {'; '.join(clauses)}. Style: {style}."
    else:
        prompt = ", ".join([lead, *clauses])
        if rng.random() < 0.4:
            prompt += ", " + _pick(rng, FILLERS)
    return prompt, {k: record[k] for k in names if k in keys}
