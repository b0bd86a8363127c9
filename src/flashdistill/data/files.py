"""Dataset files as a data source: the user's own prompts and edit pairs, with categories the user names.

Two JSONL formats, one JSON object per line (blank lines are skipped):

    prompts (recipe key data.prompts):  {"prompt": "a lighthouse at dusk", "category": "landscape"}
    edits   (recipe key data.edits):    {"image": "src/0001.png", "instruction": "make it winter",
                                          "category": "scene_transformation"}

An edit's `image` is a path, relative to the JSONL file's folder unless absolute; it must exist and open as an
8-bit image (flashdistill.imageio.open_rgb: not a decompression bomb, not 16-bit greyscale).
Every problem is reported as `FILE:LINE: what is wrong` (a `UserError`: the CLI prints it on one line and
exits with code 2): invalid JSON, not an object, a missing, empty or non-string field, an unknown field, a missing
or unreadable image.

Items (`Item`) carry (category, text, optional source image path) and know nothing of models; the recipe's levers
act on them and a family encodes them (`flashdistill cache`). Check a file with `read_prompts(path)` /
`read_edits(path)`; tests: `pytest tests/test_files.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import parse_json

PROMPT_FIELDS = ("prompt", "category")
EDIT_FIELDS = ("image", "instruction", "category")


@dataclass(frozen=True)
class Item:
    """One training item from a file: a T2I prompt (source None) or an edit (source = the image's path)."""

    category: str
    text: str
    source: Path | None = None
    where: str = ""  # FILE:LINE, for messages

    @property
    def is_edit(self) -> bool:
        return self.source is not None

    def load_source(self):
        """The source image as RGB PIL (edits only)."""
        if self.source is None:
            raise ValueError("a T2I item has no source image")
        return open_image(self.source, self.where)


def open_image(path: Path, where: str):
    """An edit source as RGB PIL; refusals (imageio.open_rgb) name `WHERE: image PATH`."""
    from flashdistill.imageio import open_rgb

    return open_rgb(path, f"{where}: image")


def _lines(path: Path):
    """(FILE:LINE, object) for every non-blank line; raises on unreadable files and bad JSON."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        obj = parse_json(line, where)
        if not isinstance(obj, dict):
            raise UserError(f"{where}: must be a JSON object, got {type(obj).__name__}")
        yield where, obj


def _fields(where: str, obj: dict, fields: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; a line has {', '.join(fields)}")
    out = {}
    for name in fields:
        if name not in obj:
            raise UserError(f"{where}: missing field '{name}'")
        value = obj[name]
        if not isinstance(value, str):
            raise UserError(f"{where}: '{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise UserError(f"{where}: '{name}' is empty")
        out[name] = value
    return out


def read_prompts(path: str | Path) -> list[Item]:
    """The T2I items of a prompts JSONL file (`prompt`, `category`)."""
    items = []
    for where, obj in _lines(Path(path)):
        f = _fields(where, obj, PROMPT_FIELDS)
        items.append(Item(f["category"], f["prompt"], None, where))
    if not items:
        raise UserError(f"{path}: no prompts (expected JSON lines with {', '.join(PROMPT_FIELDS)})")
    return items


def read_edits(path: str | Path, check_images: bool = True) -> list[Item]:
    """The edit items of an edits JSONL file (`image`, `instruction`, `category`); images are opened to check them."""
    path = Path(path)
    items = []
    for where, obj in _lines(path):
        f = _fields(where, obj, EDIT_FIELDS)
        image = Path(f["image"])
        image = image if image.is_absolute() else path.parent / image
        if check_images:
            open_image(image, where)
        items.append(Item(f["category"], f["instruction"], image, where))
    if not items:
        raise UserError(f"{path}: no edits (expected JSON lines with {', '.join(EDIT_FIELDS)})")
    return items


def categories(items: list[Item]) -> list[str]:
    """The categories named in `items`, in first-seen order."""
    return list(dict.fromkeys(item.category for item in items))
