"""The JSON records flashdistill reads back from folders (a pipeline folder's `model_index.json`, a VAE's
`config.json`, an exported student's `student.json`, a condition cache's `index.json`), with their keys checked.

Such a file may have been edited, truncated or replaced by hand: not UTF-8, not JSON, nested 20k deep, not an
object (files.read_json_object refuses those), or an object without a key flashdistill needs or with a value of the
wrong type. Every case is a `UserError` naming the file and the key, so no `KeyError: 'model_id'` reaches the user.

- `read_record(path, what, keys)`: the JSON object of `path`, with every key of `keys` (name -> type or tuple of
  types; `None` in the tuple allows null) present and of its type.
- `require(record, key, kinds, where)`: one key of an object already read (also for nested objects).

Tests: `pytest tests/test_records.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object

_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
          bool: "true or false", type(None): "null"}


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require(record: dict, key: str, kinds, where: str):
    """`record[key]`, which must be one of `kinds` (a type or a tuple; float admits ints, int admits no bool, a
    float must be finite); UserError `WHERE: missing key 'KEY'` / `WHERE: key 'KEY' must be ..., got ...`."""
    kinds = tuple(type(None) if k is None else k for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
    if key not in record:
        raise UserError(f"{where}: missing key '{key}'")
    value = record[key]
    allowed = kinds + ((int,) if float in kinds else ())
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        wanted = " or ".join(_NAMES.get(k, k.__name__) for k in kinds)
        raise UserError(f"{where}: key '{key}' must be {wanted}, got {_show(value)}")
    return value


def read_record(path: str | Path, what: str, keys: dict) -> dict:
    """The JSON object of the file `path` with `keys` checked (see the module docstring)."""
    record = read_json_object(path, what)
    for key, kinds in keys.items():
        require(record, key, kinds, f"{what} {path}")
    return record
