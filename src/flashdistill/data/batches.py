"""Deterministic training batches from the world: data composition and T2I : Edit task mixture (paper §3, §5).

`make_batch(step, batch_size, mix, seed)` is a pure function of its arguments. Row choices (task, category, pool
index) come from `np.random.default_rng([seed, step])`, and every item is itself a pure function of
(category, index, split) (see `flashdistill.world.pools`). So a resumed run gets the very batches it would have got,
with no data-loader state to save, and any process can rebuild batch `step` on its own.

- T2I rows draw the index from [0, PROMPTS_PER_CATEGORY), i.e. the paper-sized 20k-prompt pool of a category
  (duplicates inside the pool are rare and harmless for training);
- edit rows draw from [0, 2**31): edit pools are unbounded.

`TaskMix` holds the levers: `t2i_weight : edit_weight` (the paper finds 5:5 best), `composition` over the T2I
categories and `edit_mix` over the six edit categories; `t2i_pool` optionally limits a T2I category to the first N
prompts of its pool (a composition given by counts, e.g. the paper's E1 "landscape, 20,000 prompts"). Weights are
relative (they need not sum to 1); a category that is left out gets weight 0. Check one by hand with
`flashdistill world batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from flashdistill.errors import UserError
from flashdistill.flow import to_model_space
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES
from flashdistill.world.edits import source_image, target_image
from flashdistill.world.pools import PROMPTS_PER_CATEGORY, edit_item, t2i_item
from flashdistill.world.render import check_resolution, render

EDIT_INDEX_RANGE = 2**31  # edit pools are unbounded; any index in this range is a fresh, valid item


@dataclass
class TaskMix:
    """Relative weights of the two tasks and of the categories inside each task."""

    t2i_weight: float = 1.0
    edit_weight: float = 1.0
    composition: dict[str, float] = field(default_factory=lambda: {c: 1.0 for c in T2I_CATEGORIES})
    edit_mix: dict[str, float] = field(default_factory=lambda: {c: 1.0 for c in EDIT_CATEGORIES})
    t2i_pool: dict[str, int] = field(default_factory=dict)  # category -> pool size; absent: PROMPTS_PER_CATEGORY

    def validate(self, where: str = "mix") -> TaskMix:
        """Raise UserError naming the dotted key of the first bad weight; returns self."""
        for name in ("t2i_weight", "edit_weight"):
            _check_weight(getattr(self, name), f"{where}.{name}")
        _check_total([self.t2i_weight, self.edit_weight], f"{where}.t2i_weight, {where}.edit_weight")
        if self.t2i_weight + self.edit_weight <= 0:
            raise UserError(f"{where}.t2i_weight, {where}.edit_weight: at least one task weight must be > 0")
        for name, known in (("composition", self.t2i_categories), ("edit_mix", self.edit_categories)):
            table = getattr(self, name)
            if not isinstance(table, dict):
                raise UserError(f"{where}.{name}: must be a mapping category -> weight, got {table!r}")
            for cat, w in table.items():
                if cat not in known:
                    raise UserError(f"{where}.{name}.{cat}: unknown category; known: {', '.join(known)}")
                _check_weight(w, f"{where}.{name}.{cat}")
            _check_total(list(table.values()), f"{where}.{name}")
        if not isinstance(self.t2i_pool, dict):
            raise UserError(f"{where}.t2i_pool: must be a mapping category -> number of prompts")
        for cat, n in self.t2i_pool.items():
            if cat not in self.t2i_categories:
                raise UserError(f"{where}.t2i_pool.{cat}: unknown category; known: {', '.join(self.t2i_categories)}")
            most = self.t2i_size(cat)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
                raise UserError(f"{where}.t2i_pool.{cat}: must be an integer in [1, {most}], got {n!r}")
        if self.t2i_weight > 0 and sum(self.composition.values()) <= 0:
            raise UserError(f"{where}.composition: all weights are 0 but {where}.t2i_weight is > 0")
        if self.edit_weight > 0 and sum(self.edit_mix.values()) <= 0:
            raise UserError(f"{where}.edit_mix: all weights are 0 but {where}.edit_weight is > 0")
        return self

    # The categories the weights may name and the items each holds: the world's here; FileMix holds the user's.
    @property
    def t2i_categories(self) -> tuple[str, ...]:
        return T2I_CATEGORIES

    @property
    def edit_categories(self) -> tuple[str, ...]:
        return EDIT_CATEGORIES

    def t2i_size(self, cat: str) -> int:
        return PROMPTS_PER_CATEGORY

    def edit_size(self, cat: str) -> int:
        return EDIT_INDEX_RANGE  # edit pools are unbounded

    def edit_share(self) -> float:
        return self.edit_weight / (self.t2i_weight + self.edit_weight)


@dataclass
class FileMix(TaskMix):
    """A TaskMix over the user's data files: their categories and how many items each holds (data/sources.py)."""

    t2i_categories: tuple[str, ...] = ()
    edit_categories: tuple[str, ...] = ()
    t2i_sizes: dict[str, int] = field(default_factory=dict)
    edit_sizes: dict[str, int] = field(default_factory=dict)

    def t2i_size(self, cat: str) -> int:
        return self.t2i_sizes[cat]

    def edit_size(self, cat: str) -> int:
        return self.edit_sizes[cat]


def _check_weight(w, key: str) -> None:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
        raise UserError(f"{key}: must be a number, got {w!r}")
    if w < 0:
        raise UserError(f"{key}: must be >= 0, got {w}")


def _check_total(weights: list, key: str) -> None:
    """Relative weights are divided by their sum: a sum that overflows (1e308 + 1e308 = inf) makes every share 0."""
    if not np.isfinite(sum(float(w) for w in weights)):
        raise UserError(f"{key}: the weights {weights} add up to more than a float holds; they are relative, so "
                        f"scale them down (e.g. 1, 2, 3)")


@dataclass
class Batch:
    """One training batch; images in model space [-1, 1]."""

    x: torch.Tensor  # (B, 3, H, W) target images
    source: torch.Tensor  # (B, 3, H, W) edit sources, zeros on T2I rows
    has_source: torch.Tensor  # (B,) bool
    texts: list[str]  # prompt (T2I) or instruction (edit)
    category: list[str]
    task: list[str]  # 't2i' | 'edit'
    index: list[int]  # pool index of each item, for logs and debugging


def _probs(table: dict[str, float], order: tuple[str, ...]) -> np.ndarray:
    w = np.array([float(table.get(c, 0.0)) for c in order])
    return w / w.sum()


def choose_items(step: int, batch_size: int, mix: TaskMix, seed: int) -> list[tuple[str, str, int]]:
    """(task, category, index) per row: a pure function of (seed, step) and the mix. The mix is checked once by
    whoever builds it (`TaskMix.validate`: the teacher config, the recipe), not on every batch."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([int(seed), int(step)])
    is_edit = rng.random(batch_size) < mix.edit_share()  # (B,)
    t2i_cats, edit_cats = mix.t2i_categories, mix.edit_categories
    t2i_p, edit_p = (_probs(mix.composition, t2i_cats) if mix.t2i_weight > 0 else None,
                     _probs(mix.edit_mix, edit_cats) if mix.edit_weight > 0 else None)
    rows = []
    for edit in is_edit:
        if edit:
            cat = edit_cats[int(rng.choice(len(edit_cats), p=edit_p))]
            rows.append(("edit", cat, int(rng.integers(mix.edit_size(cat)))))
        else:
            cat = t2i_cats[int(rng.choice(len(t2i_cats), p=t2i_p))]
            rows.append(("t2i", cat, int(rng.integers(mix.t2i_pool.get(cat, mix.t2i_size(cat))))))
    return rows


def make_batch(step: int, batch_size: int, mix: TaskMix, seed: int, split: str = "train",
               resolution: int = 32) -> Batch:
    """Batch `step` of a run seeded `seed`: targets, sources, texts, categories and tasks (see module docstring)."""
    return batch_of(choose_items(step, batch_size, mix, seed), split, resolution)


def batch_of(rows: list[tuple[str, str, int]], split: str = "train", resolution: int = 32) -> Batch:
    """The batch of these (task, category, index) rows: each item rendered from its pool."""
    check_resolution(resolution)
    targets, sources, texts = [], [], []
    blank = np.zeros((resolution, resolution, 3), np.float32)
    for task, cat, index in rows:
        if task == "t2i":
            item = t2i_item(cat, index, split)
            targets.append(render(item.record, resolution))
            sources.append(blank)
            texts.append(item.prompt)
        else:
            item = edit_item(cat, index, split)
            targets.append(target_image(item.source, item.edit, resolution))
            sources.append(source_image(item.source, item.edit, resolution))
            texts.append(item.instruction)
    has_source = torch.tensor([task == "edit" for task, _, _ in rows])
    source = to_model_space(np.stack(sources)) * has_source[:, None, None, None]  # zeros, not -1, on T2I rows
    return Batch(x=to_model_space(np.stack(targets)), source=source, has_source=has_source, texts=texts,
                 category=[c for _, c, _ in rows], task=[t for t, _, _ in rows], index=[i for _, _, i in rows])
