"""The six edit categories of the world, each with an exact target.

An edit is (source record, edit spec, instruction). Specs, all JSON-able:
- ``{"kind": "record", "target": {...}}``: the target is another record (scene, object, text, identity edits);
- ``{"kind": "style", "op": "sepia"}``: the target is an exact image operation on the source render;
- ``{"kind": "enhance", "degradation": {"type": "blur", "strength": 1.2}}``: the *source* is the degraded render
  and the target is the clean one.

`source_image` and `target_image` rebuild both images exactly from the spec at any resolution.
"""

from __future__ import annotations

import numpy as np

from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_CATEGORIES
from flashdistill.world.ops import STYLES, apply_style, degrade
from flashdistill.world.render import render
from flashdistill.world.schema import SCHEMA, sample_record, text_pair_ok, validate_record

INSTRUCTIONS = {
    "time": ("Change the time of day to {new}", "Make it {new}", "Turn this {old} scene into a {new} scene"),
    "season": ("Change the season to {new}", "Make it look like {new}", "Turn {old} into {new}"),
    "background": ("Change the background to {new}", "Replace the backdrop with a {new} one",
                   "Put the person in front of a {new} background"),
    "add_tree": ("Add a tree", "Plant one more tree", "Put another tree next to the others"),
    "remove_tree": ("Remove a tree", "Take away one tree", "Delete one of the trees"),
    "add_sky": ("Add a {new} to the sky", "Put a {new} in the sky", "Make a {new} appear in the sky"),
    "remove_sky": ("Remove the {old}", "Take the {old} out of the sky", "Erase the {old}"),
    "replace_sky": ("Replace the {old} with a {new}", "Swap the {old} for a {new}", "Turn the {old} into a {new}"),
    "add_lake": ("Add a lake in the foreground", "Put a small lake at the bottom", "Add some water in front"),
    "remove_lake": ("Remove the lake", "Dry up the lake", "Take the water away"),
    "add_hat": ("Put a {new} hat on the person", "Add a {new} hat", "Give them a {new} hat"),
    "remove_hat": ("Remove the hat", "Take off the hat", "Make the person bareheaded"),
    "recolor_hat": ("Change the hat to {new}", "Replace the hat with a {new} one", "Make the hat {new}"),
    "word": ('Change the text to "{new}"', 'Replace "{old}" with "{new}"', 'Make the {medium} say "{new}"'),
    "text_color": ("Make the text {new}", "Change the letters to {new}", "Recolour the text {new}"),
    "hair_color": ("Dye the hair {new}", "Change the hair colour to {new}", "Give them {new} hair"),
    "hair_length": ("Make the hair {new}", "Give them {new} hair", "Change the hairstyle to {new} hair"),
    "expression": ("Make the person look {new}", "Change the expression to {new}", "Make them {new}"),
    "add_glasses": ("Add glasses", "Put glasses on the person", "Give them a pair of glasses"),
    "remove_glasses": ("Remove the glasses", "Take off the glasses", "Show them without glasses"),
    "blur": ("Sharpen this blurry image", "Remove the blur", "Make the image crisp and in focus"),
    "noise": ("Remove the noise", "Denoise this photo", "Clean up the grain"),
    "lowres": ("Upscale and restore the details", "Increase the resolution", "Remove the pixelation"),
    "contrast": ("Increase the contrast", "Fix the washed-out colours", "Restore the contrast and colours"),
    "grayscale": ("Make it black and white", "Convert to grayscale", "Remove all colour"),
    "sepia": ("Apply a sepia tone", "Make it look like an old sepia photo", "Give it a sepia filter"),
    "invert": ("Invert the colours", "Make a colour negative", "Turn it into a negative"),
    "posterize": ("Posterize the image", "Reduce it to a few flat colour levels", "Apply a posterize effect"),
    "outline": ("Turn it into a line drawing", "Make an outline sketch", "Draw only the outlines, black on white"),
}
TIME_WORDS = {"day": "daytime", "sunset": "sunset", "night": "night"}
EXPRESSION_WORDS = {"smiling": "happy", "neutral": "neutral", "sad": "sad"}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _say(rng, key: str, **fields) -> str:
    return _pick(rng, INSTRUCTIONS[key]).format(**fields)


def _other(rng, values, current):
    return _pick(rng, [v for v in values if v != current])


def _scene(rng, held_out):
    if rng.random() < 0.7:
        src = sample_record("landscape", rng, held_out)
        attr = _pick(rng, ("time", "season"))
        new = _other(rng, SCHEMA["landscape"][attr], src[attr])
        words = TIME_WORDS if attr == "time" else {v: v for v in SCHEMA["landscape"]["season"]}
        return src, {**src, attr: new}, _say(rng, attr, new=words[new], old=words[src[attr]])
    src = sample_record("portrait", rng, held_out)
    new = _other(rng, SCHEMA["portrait"]["background"], src["background"])
    return src, {**src, "background": new}, _say(rng, "background", new=new)


def _object(rng, held_out):
    if rng.random() < 0.25:
        src = sample_record("portrait", rng, held_out)
        new = _other(rng, SCHEMA["portrait"]["hat"], src["hat"])
        key = "remove_hat" if new == "none" else ("add_hat" if src["hat"] == "none" else "recolor_hat")
        return src, {**src, "hat": new}, _say(rng, key, new=new)
    src = sample_record("landscape", rng, held_out)
    choice = _pick(rng, ("tree", "sky", "lake"))
    if choice == "tree":
        more = src["trees"] == 0 or (src["trees"] < 3 and rng.random() < 0.5)
        return (src, {**src, "trees": src["trees"] + (1 if more else -1)},
                _say(rng, "add_tree" if more else "remove_tree"))
    if choice == "sky":
        old, new = src["sky_object"], _other(rng, SCHEMA["landscape"]["sky_object"], src["sky_object"])
        key = "remove_sky" if new == "none" else ("add_sky" if old == "none" else "replace_sky")
        return src, {**src, "sky_object": new}, _say(rng, key, old=old, new=new)
    new = "none" if src["water"] == "lake" else "lake"
    return src, {**src, "water": new}, _say(rng, "add_lake" if new == "lake" else "remove_lake")


def _text(rng, held_out):
    src = sample_record("text", rng, held_out)
    if rng.random() < 0.7:
        new = _other(rng, SCHEMA["text"]["word"], src["word"])
        return src, {**src, "word": new}, _say(rng, "word", new=new, old=src["word"], medium=src["medium"])
    colours = [c for c in SCHEMA["text"]["text_color"]
               if c != src["text_color"] and text_pair_ok(c, src["board_color"])]
    new = _pick(rng, colours)
    return src, {**src, "text_color": new}, _say(rng, "text_color", new=new)


def _identity(rng, held_out):
    src = sample_record("portrait", rng, held_out)
    attr = _pick(rng, ("hair_color", "hair_length", "expression", "glasses"))
    new = _other(rng, SCHEMA["portrait"][attr], src[attr])
    if attr == "glasses":
        return src, {**src, "glasses": new}, _say(rng, "add_glasses" if new == "yes" else "remove_glasses")
    words = EXPRESSION_WORDS if attr == "expression" else {new: new}
    return src, {**src, attr: new}, _say(rng, attr, new=words[new])


def _any_source(rng, held_out):
    return sample_record(_pick(rng, tuple(SCHEMA)), rng, held_out)


def _enhance(rng, held_out):
    src = _any_source(rng, held_out)
    kind = _pick(rng, ("blur", "noise", "lowres", "contrast"))
    strength = {"blur": lambda: round(float(rng.uniform(0.8, 1.6)), 2),
                "noise": lambda: round(float(rng.uniform(0.08, 0.2)), 3),
                "lowres": lambda: int(_pick(rng, (2, 4))),
                "contrast": lambda: round(float(rng.uniform(0.3, 0.5)), 2)}[kind]()
    spec = {"type": kind, "strength": strength}
    if kind == "noise":
        spec["seed"] = int(rng.integers(2**31))
    return src, {"kind": "enhance", "degradation": spec}, _say(rng, kind)


def _style(rng, held_out):
    src = _any_source(rng, held_out)
    op = _pick(rng, tuple(STYLES))
    return src, {"kind": "style", "op": op}, _say(rng, op)


_RECORD_EDITS = {"scene_transformation": _scene, "object_manipulation": _object, "text_editing": _text,
                 "identity_preserving": _identity}
_SPEC_EDITS = {"perceptual_enhancement": _enhance, "style_transfer": _style}


def sample_edit(category: str, rng: np.random.Generator, held_out: bool | None = False) -> tuple[dict, dict, str]:
    """Draw (source record, edit spec, instruction) of an edit category."""
    if category in _RECORD_EDITS:
        src, target, instruction = _RECORD_EDITS[category](rng, held_out)
        return src, {"kind": "record", "target": target}, instruction
    return _SPEC_EDITS[category](rng, held_out)


def validate_edit(source: dict, edit: dict, where: str) -> None:
    validate_record(source, f"{where}: source")
    kind = edit.get("kind")
    if kind == "record":
        target = validate_record(edit.get("target"), f"{where}: edit.target")
        if target["category"] != source["category"]:
            raise UserError(f"{where}: edit.target is a {target['category']} record but the source is "
                            f"a {source['category']}")
    elif kind == "style":
        if edit.get("op") not in STYLES:
            raise UserError(f"{where}: edit.op {edit.get('op')!r} is not one of {', '.join(STYLES)}")
    elif kind == "enhance":
        degrade(np.zeros((16, 16, 3), np.float32), edit.get("degradation") or {})
    else:
        raise UserError(f"{where}: edit.kind {kind!r} is not one of record, style, enhance")


def source_image(source: dict, edit: dict, resolution: int) -> np.ndarray:
    img = render(source, resolution)
    return degrade(img, edit["degradation"]) if edit["kind"] == "enhance" else img


def target_record(source: dict, edit: dict) -> dict:
    """The record whose render (before any style op) the target shows."""
    return edit["target"] if edit["kind"] == "record" else source


def target_image(source: dict, edit: dict, resolution: int) -> np.ndarray:
    img = render(target_record(source, edit), resolution)
    return apply_style(img, edit["op"]) if edit["kind"] == "style" else img


assert set(_RECORD_EDITS) | set(_SPEC_EDITS) == set(EDIT_CATEGORIES)
