"""Benchmark cases and their JSONL file format.

One JSON object per line. T2I-Bench case:

    {"id": "landscape-0000", "category": "landscape", "prompt": "a night scene ...", "seed": 17,
     "record": {...world record...}, "attributes": {"time": "night", ...}}

`record` (the full world scene) and `attributes` (what the prompt asks for) are needed by the world judge and the
`oracle` models; a case with only id, category, prompt and seed is valid for network models with the VLM judge.

Editing-Bench case:

    {"id": "style_transfer-0000", "category": "style_transfer", "instruction": "make it sepia", "seed": 3,
     "source": {...world record...}, "edit": {"kind": "style", "op": "sepia"}}

or, for a source image outside the world (VLM judge only): `"source_image": "imgs/cat.png"` (relative to the
JSONL file; an 8-bit image PIL opens, checked when the cases are read: flashdistill.imageio) instead of
`source`/`edit`. Edit kinds: `record` (`target`: the edited record), `style` (`op`), `enhance` (`degradation`:
{"type": blur|noise|lowres|contrast, "strength": float}).

Every error names the file and line: `cases.jsonl:12: missing key 'prompt'`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import parse_json, read_text
from flashdistill.imageio import image_size
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES
from flashdistill.world.edits import validate_edit
from flashdistill.world.pools import edit_item, t2i_item
from flashdistill.world.schema import validate_record

DATA = Path(__file__).parent / "data"
BUILTIN_CASES = {"t2i": DATA / "t2i_mini.jsonl", "edit": DATA / "edit_mini.jsonl"}  # the shipped mini benches
MINI_SIZES = {"t2i": 200, "edit": 50}  # cases per category: the paper's 600 and 250, scaled down


@dataclass(frozen=True)
class T2ICase:
    id: str
    category: str
    prompt: str
    seed: int
    record: dict | None = None
    attributes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class EditCase:
    id: str
    category: str
    instruction: str
    seed: int
    source: dict | None = None
    edit: dict | None = None
    source_image: str | None = None  # absolute path once loaded

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def t2i_bench_cases(n_per_category: int, split: str = "bench") -> list[T2ICase]:
    cases = []
    for category in T2I_CATEGORIES:
        for i in range(n_per_category):
            item = t2i_item(category, i, split)
            cases.append(T2ICase(id=f"{category}-{i:04d}", category=category, prompt=item.prompt, seed=i,
                                 record=item.record, attributes=item.attributes))
    return cases


def edit_bench_cases(n_per_category: int, split: str = "bench") -> list[EditCase]:
    cases = []
    for category in EDIT_CATEGORIES:
        for i in range(n_per_category):
            item = edit_item(category, i, split)
            cases.append(EditCase(id=f"{category}-{i:04d}", category=category, instruction=item.instruction,
                                  seed=i, source=item.source, edit=item.edit))
    return cases


_T2I_KEYS = {"id": str, "category": str, "prompt": str, "seed": int, "record": dict, "attributes": dict}
_EDIT_KEYS = {"id": str, "category": str, "instruction": str, "seed": int, "source": dict, "edit": dict,
              "source_image": str}
_REQUIRED = {"t2i": ("id", "category", "prompt", "seed"), "edit": ("id", "category", "instruction", "seed")}


def _check_types(obj: dict, spec: dict, where: str) -> None:
    for key, value in obj.items():
        if key not in spec:
            raise UserError(f"{where}: unknown key '{key}' (expected one of {', '.join(spec)})")
        want = spec[key]
        if want is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{where}: key '{key}' must be an integer, got {value!r}")
        if want is not int and not isinstance(value, want):
            raise UserError(f"{where}: key '{key}' must be a {want.__name__}, got {type(value).__name__}")


def parse_case(obj: object, bench: str, where: str, base_dir: Path | None = None) -> T2ICase | EditCase:
    """Validate one decoded JSON object as a case of `bench` ('t2i' or 'edit')."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a case must be a JSON object, got {type(obj).__name__}")
    for key in _REQUIRED[bench]:
        if key not in obj:
            raise UserError(f"{where}: missing key '{key}'")
    if bench == "t2i":
        _check_types(obj, _T2I_KEYS, where)
        if obj["category"] not in T2I_CATEGORIES:
            raise UserError(f"{where}: unknown T2I category '{obj['category']}' (one of {', '.join(T2I_CATEGORIES)})")
        if "record" in obj:
            record = validate_record(obj["record"], f"{where}: record")
            for key, value in obj.get("attributes", {}).items():
                if record.get(key) != value:
                    raise UserError(f"{where}: attribute '{key}'={value!r} does not match the record")
        elif obj.get("attributes"):
            raise UserError(f"{where}: 'attributes' need the 'record' they describe")
        return T2ICase(**obj)
    _check_types(obj, _EDIT_KEYS, where)
    if obj["category"] not in EDIT_CATEGORIES:
        raise UserError(f"{where}: unknown edit category '{obj['category']}' (one of {', '.join(EDIT_CATEGORIES)})")
    has_world = "source" in obj
    if has_world == ("source_image" in obj):
        raise UserError(f"{where}: give exactly one of 'source' (world record) or 'source_image' (PNG path)")
    if has_world and "edit" not in obj:
        raise UserError(f"{where}: a world case with 'source' needs an 'edit' spec")
    if has_world:
        validate_edit(obj["source"], obj["edit"], where)
    if "source_image" in obj:
        path = Path(obj["source_image"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise UserError(f"{where}: source_image '{obj['source_image']}' not found")
        image_size(path, f"{where}: source_image")  # an image of 8 bits, not a bomb: refused now, not mid-run
        obj = {**obj, "source_image": str(path)}
    return EditCase(**obj)


def load_cases(path: str | Path, bench: str, limit: int | None = None, categories: list[str] | None = None) -> list:
    """Read a JSONL case file; `limit` keeps the first N cases of each category, in file order, and `categories`
    (if given) only the cases of those categories."""
    path = Path(path)
    text = read_text(path, "case file")  # missing, a folder, or not UTF-8 (a binary file): one line
    cases, seen, per_cat = [], set(), {}
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        case = parse_case(parse_json(line, where), bench, where, base_dir=path.parent)
        if case.id in seen:
            raise UserError(f"{where}: duplicate case id '{case.id}'")
        seen.add(case.id)
        if categories and case.category not in categories:
            continue
        if limit is not None and per_cat.get(case.category, 0) >= limit:
            continue
        per_cat[case.category] = per_cat.get(case.category, 0) + 1
        cases.append(case)
    if not cases:
        raise UserError(f"{path}: no cases" + (f" of categories {', '.join(categories)}" if categories else ""))
    return cases


def write_cases(path: str | Path, cases: list) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case.to_json(), sort_keys=True) + "\n")
    tmp.replace(path)
