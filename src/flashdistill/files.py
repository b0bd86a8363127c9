"""User files in, output paths out, with one-line errors: every reader and writer of a user-named path goes here.

A file the user names (a recipe, a case file, a model folder's JSON, a run's record) can be missing, a folder, not
UTF-8 (a PNG given as a recipe, a Latin-1 YAML), or not the JSON it should be; an output path can be an existing
file where a folder is wanted, or sit where nothing can be created. Each of these is a `UserError` naming the path
and what is wrong, which the CLI prints as one line with exit code 2, never a traceback.

- `read_text(path, what)`: the UTF-8 text of a file.
- `read_json(path, what)` / `read_json_object(path, what)` / `read_yaml(path, what)`: a JSON value / a JSON object /
  a YAML value from a file, parsed strictly by `flashdistill.parsing` (duplicate keys, deep nesting, alias bombs);
  `parse_json(text, where)`: the same JSON parser for a string (a JSONL line), every refusal a UserError.
- `out_dir(path, flag)`: create (or reuse) an output folder; `out_file(path, flag)`: make sure a file can be
  written there (its folder is created, the path is not a folder).
- `remove_stale_tmp(folder)`: delete the `.NAME-tmp-*` / `.NAME-old-*` folders a kill during an atomic write left.
- `file_digest(path)` / `hash_file(h, path)`: SHA-256 of a file / feed a file's bytes into a running hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.parsing import load_json, load_yaml, lone_surrogate


def read_text(path: str | Path, what: str = "file") -> str:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not a file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path}: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
                        f"save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{what} {path}: cannot read it ({err.strerror or err})") from None


def read_json(path: str | Path, what: str = "file"):
    """The JSON value in a file (flashdistill.parsing.load_json: duplicate keys and deep nesting refused)."""
    return load_json(read_text(path, what), f"{what} {path}")


def parse_json(text: str, where: str):
    """The JSON value of `text` (a JSONL line of prompts, edits or cases: text for a model); UserError `WHERE: ...`
    for whatever the parser refuses, and for a string holding a lone surrogate (`"\\ud800"` is valid JSON, but no
    text: it would end in a UnicodeEncodeError at the tokenizer or the cache key)."""
    value = load_json(text, where)
    bad = lone_surrogate(value)
    if bad:
        raise UserError(f"{where}: {bad}, a lone UTF-16 surrogate, which is not text; write the character itself "
                        f"(or both halves of its \\uXXXX pair)")
    return value


def read_json_object(path: str | Path, what: str = "file") -> dict:
    obj = read_json(path, what)
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path}: must hold a JSON object, got a {type(obj).__name__}")
    return obj


def read_yaml(path: str | Path, what: str = "file"):
    """The YAML value in a file (flashdistill.parsing.load_yaml: duplicate keys, deep nesting and alias bombs
    refused, `1e0` a number); None for an empty file."""
    return load_yaml(read_text(path, what), f"{what} {path}")


def out_dir(path: str | Path, flag: str = "--out") -> Path:
    """The output folder `path`, created with its parents; UserError if it is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder")
    _make_dir(path, f"{flag} {path}")
    return path


def out_file(path: str | Path, flag: str = "--out") -> Path:
    """A path a file can be written to: not a folder, its folder created and writable; UserError otherwise."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise UserError(f"{flag} {path}: is a folder; give a file path")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    _make_dir(parent, f"{flag} {path}")
    return path


def _make_dir(path: Path, where: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{where}: cannot create the folder {path} ({err.strerror or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{where}: the folder {path} is not writable")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` through a temporary file and a rename: a kill leaves the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj, indent: int = 1) -> Path:
    """`obj` as JSON (one trailing newline), written atomically (write_text_atomic)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the temporary folders of interrupted atomic writes (`.NAME-tmp-*`, `.NAME-old-*`); returns them."""
    folder = Path(folder)
    stale = [p for pattern in (".*-tmp-*", ".*-old-*") for p in folder.glob(pattern) if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def swap_in(tmp: str | Path, folder: str | Path) -> Path:
    """Put the finished folder `tmp` in place of `folder`: the old one is moved aside first and deleted last, so a
    kill at any moment leaves either the old or the new folder (plus a `.NAME-old-*` that remove_stale_tmp clears)."""
    tmp, folder = Path(tmp), Path(folder)
    old = folder.parent / f".{folder.name}-old-{uuid.uuid4().hex[:8]}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def hash_file(h, path: str | Path) -> None:
    """Feed the bytes of `path` into the running hash `h`, 1 MiB at a time."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    hash_file(h, path)
    return h.hexdigest()
