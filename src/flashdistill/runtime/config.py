"""Strict configs from YAML, shared by teacher configs and distillation recipes.

`from_dict(cls, raw)` builds a dataclass from a mapping, converting and checking every value against its type hint
(int, float, bool, str, X | Y | None, list[X], dict[str, X], nested dataclasses); an unknown key or a wrong type raises
UserError naming the dotted key. `apply_overrides(raw, ["a.b=value"])` sets dotted `--set` overrides, each value
parsed by the loader that reads the files (flashdistill.parsing: `1e0` is a number, `7:3` a string, a duplicate key
refused), before validation, so a value on the command line is checked exactly like the file.
`read_config_file`, `with_overrides`, `require` and `resume_fingerprint` are the rest of the one loader both
`distill/recipe.py` and `teacher/config.py` use.
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml

from flashdistill.errors import UserError
from flashdistill.files import read_yaml
from flashdistill.parsing import StrictLoader, yaml_problem


def _convert(value, tp, key: str):
    """`value` as type `tp` (int, float, bool, str, X | None, list[X], dict[str, X], a dataclass), or UserError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp in inner[:-1]:  # X | Y: the first that takes the value (e.g. a side, or [height, width])
            try:
                return _convert(value, tp, key)
            except UserError:
                pass
        return _convert(value, inner[-1], key)
    if is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: must be a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: must be an integer, got {value!r}")
        return value
    if tp is float:
        value = _yaml11_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"{key}: no converter for type {tp}")


def _yaml11_float(value):
    """YAML 1.1 (PyYAML) reads `2e-4` (no dot) as a string; take it as the number everyone means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def from_dict(cls, raw, prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise UserError with the dotted key."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]  # init=False: built by the code, never read from a file
    for key in raw:
        if key not in known:
            raise UserError(f"{prefix}{key}: unknown key; known keys here: {', '.join(known)}")
    return cls(**{k: _convert(v, hints[k], prefix + k) for k, v in raw.items()})


def apply_overrides(raw: dict, overrides: list[str], load=None) -> dict:
    """Set `a.b.c=value` strings into the nested mapping `raw` (in place; returns it); each value parsed by `load`
    (default: the project's strict YAML loader, flashdistill.parsing), which raises yaml.YAMLError when refused."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key.sub=value")
        try:
            value = (load or _parse_value)(text)
        except yaml.YAMLError as err:
            raise UserError(f"override {key}: cannot parse value {text!r}: {yaml_problem(err)}") from None
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override {key}: {'.'.join(parts[:i + 1])} is a value, not a group")
            node = child
        node[parts[-1]] = value
    return raw


def _parse_value(text: str):
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def require(ok: bool, key: str, why: str) -> None:
    """The one-line refusal of a config value: UserError `key: why` unless `ok`."""
    if not ok:
        raise UserError(f"{key}: {why}")


def read_config_file(path: str | Path, what: str) -> dict | None:
    """The top-level mapping of a YAML config file (None when the file is empty). A missing file, bad UTF-8, invalid
    YAML or a duplicate key is one UserError naming the file (flashdistill.files.read_yaml); so is a top level that
    is not a mapping. `what` names the kind of file in the message ("recipe", "config")."""
    path = Path(path)
    raw = read_yaml(path, what)
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{what} {path}: the top level must be a mapping")
    return raw


def with_overrides(raw: dict | None, overrides: list[str] | None) -> dict:
    """A copy of `raw` with the dotted `--set` overrides applied (the file's own mapping is left as it was)."""
    return apply_overrides(copy.deepcopy(raw or {}), list(overrides or []))


def resume_fingerprint(config, resumable: tuple[str, ...],
                       legacy_defaults: tuple[tuple[str, Callable[[object], bool]], ...] = ()) -> dict:
    """`config.to_dict()` minus the `resumable` keys ("group.key"): a resume is refused when this differs from the
    checkpoint's. A key added after checkpoints were written ("group" or "group.key" in `legacy_defaults`) is left out
    too while its test says it holds the default, so those older checkpoints still resume."""
    data = config.to_dict()
    for key in resumable:
        group, name = key.split(".")
        data[group].pop(name, None)  # None: a key's old place, named so that the checkpoints holding it resume
    for key, is_default in legacy_defaults:
        group, _, name = key.partition(".")
        holder, leaf = (data[group], name) if name else (data, group)
        if leaf in holder and is_default(holder[leaf]):
            holder.pop(leaf)
    return data
