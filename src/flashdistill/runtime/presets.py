"""Presets: the named sizes a command runs at (`--preset`). The quickstart's (`quickstart/plan.py`), the embedded
studies' (`studies/spec.py`) and the studies on your own model's (`studies/own.py`) are all `Preset`s, each kind
with the sizes it needs, and they are looked up one way: `pick_preset`, whose refusal of an unknown name is one
line naming the known ones (a UserError: exit code 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from flashdistill.errors import UserError


@dataclass(frozen=True)
class Preset:
    """A named size of a command's runs; a kind of preset adds the sizes it sets."""

    name: str


P = TypeVar("P", bound=Preset)


def preset_table(*presets: P) -> dict[str, P]:
    """name -> preset, in the order given (the order the refusal names them)."""
    table = {p.name: p for p in presets}
    if len(table) != len(presets):
        raise ValueError(f"two presets share a name: {[p.name for p in presets]}")
    return table


def pick_preset(table: Mapping[str, P], name: str, what: str = "") -> P:
    """The preset `name` of `table`, or a one-line UserError naming the known ones; `what` says whose presets they
    are when the flag alone does not (" for a study on your recipe")."""
    if name not in table:
        raise UserError(f"--preset: unknown preset '{name}'{what} (known: {', '.join(table)})")
    return table[name]
