"""Step-wise multi-teacher guidance: the λ_{k,m}(c) of paper eq. 5-7, parsed, validated and looked up.

The real score at student step k is a convex mix of teachers, s_real^(k) = Σ_m λ_{k,m}(c)·s_m (eq. 5) with
λ_{k,m}(c) in [0, 1] and Σ_m λ_{k,m}(c) = 1 (eq. 6). Scores are affine in x0 at a fixed (x_t, t), so the engine
mixes the teachers' x0 predictions with the same weights (see `flashdistill.distill.dmd.real_x0`).

Recipe form (`guidance:` in YAML): a key per category (any T2I or edit category; with data files, the categories
the files name) and an optional `default` for the categories not listed. A value is one row `{teacher: weight}` used
at every student step, or a list of exactly K
rows, one per student step k = 0..K-1 (k = 0 is the first step, from pure noise):

    guidance:
      default: {base: 1.0}
      text:                                   # base anchors the early steps, the expert joins later (paper §4.4)
        - {base: 1.0}
        - {base: 0.7, specialized: 0.3}
        - {base: 0.4, specialized: 0.6}
        - {base: 0.4, specialized: 0.6}

A teacher left out of a row has weight 0 there and is never evaluated for it. Errors name the row:
`guidance.text[1]: weights sum to 0.9, they must sum to 1`. With a single teacher the section may be omitted.
"""

from __future__ import annotations

import math

import torch

from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES

CATEGORIES = T2I_CATEGORIES + EDIT_CATEGORIES
SUM_TOLERANCE = 1e-6


def _check_row(row, teachers: list[str], where: str) -> dict[str, float]:
    if not isinstance(row, dict) or not row:
        raise UserError(f"{where}: must be a mapping teacher -> weight, e.g. {{{teachers[0]}: 1.0}}, got {row!r}")
    out = {}
    for name, w in row.items():
        if name not in teachers:
            raise UserError(f"{where}: unknown teacher {name!r}; teachers: {', '.join(teachers)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise UserError(f"{where}.{name}: weight must be a number, got {w!r}")
        if not 0 <= w <= 1:
            raise UserError(f"{where}.{name}: weight must be in [0, 1], got {w}")
        out[str(name)] = float(w)
    total = sum(out.values())
    if abs(total - 1) > SUM_TOLERANCE:
        raise UserError(f"{where}: weights sum to {total:g}, they must sum to 1 (paper eq. 6)")
    return out


def _check_rows(value, teachers: list[str], nfe: int, where: str) -> list[dict[str, float]]:
    if isinstance(value, list):
        if len(value) != nfe:
            raise UserError(f"{where}: has {len(value)} rows, the student has {nfe} steps (one row per step, or a "
                            f"single mapping for all steps)")
        return [_check_row(row, teachers, f"{where}[{k}]") for k, row in enumerate(value)]
    row = _check_row(value, teachers, where)
    return [dict(row) for _ in range(nfe)]


def parse_guidance(raw, teachers: list[str], nfe: int, categories=CATEGORIES) -> dict[str, list[dict[str, float]]]:
    """Validate the recipe's `guidance` section; returns every category's K rows (defaults filled in). `categories`:
    those a batch can hold (the world's, or the user's from data files)."""
    if raw is None or raw == {}:
        if len(teachers) != 1:
            raise UserError(f"guidance: required with {len(teachers)} teachers ({', '.join(teachers)}): give "
                            f"λ per step and category, e.g. guidance: {{default: {{{teachers[0]}: 1.0}}}}")
        raw = {"default": {teachers[0]: 1.0}}
    if not isinstance(raw, dict):
        raise UserError(f"guidance: must be a mapping category -> rows, got {raw!r}")
    for cat in raw:
        if cat != "default" and cat not in categories:
            raise UserError(f"guidance.{cat}: unknown category; known: default, {', '.join(categories)}")
    default = _check_rows(raw["default"], teachers, nfe, "guidance.default") if "default" in raw else None
    table = {}
    for cat in categories:
        if cat in raw:
            table[cat] = _check_rows(raw[cat], teachers, nfe, f"guidance.{cat}")
        elif default is not None:
            table[cat] = [dict(row) for row in default]
        else:
            raise UserError(f"guidance.{cat}: no rows for this category and no guidance.default")
    return table


class Guidance:
    """Lookup of λ_{k,m}(c) as a (K, categories, teachers) tensor; `weights(k, categories)` -> (B, M)."""

    def __init__(self, table: dict[str, list[dict[str, float]]], teachers: list[str]):
        self.teachers = list(teachers)
        self.nfe = len(next(iter(table.values())))
        self._cat = {c: i for i, c in enumerate(table)}  # every category of the batches (parse_guidance fills all)
        lam = torch.zeros(self.nfe, len(table), len(self.teachers), dtype=torch.float64)  # (K, C, M)
        for cat, rows in table.items():
            for k, row in enumerate(rows):
                for name, w in row.items():
                    lam[k, self._cat[cat], self.teachers.index(name)] = w
        self.lam = lam

    def weights(self, k: int, categories: list[str]) -> torch.Tensor:
        """λ_{k,m}(c_b) for each row b of a batch: (B, M) float32, rows sum to 1."""
        idx = torch.tensor([self._cat[c] for c in categories])
        return self.lam[k, idx].float()  # (B, M)

    def active(self, k: int) -> list[str]:
        """Teachers with a non-zero weight for some category at step k."""
        return [name for m, name in enumerate(self.teachers) if bool((self.lam[k, :, m] > 0).any())]
