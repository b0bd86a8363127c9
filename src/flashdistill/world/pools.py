"""Training pools and bench items, drawn from disjoint seed namespaces (`flashdistill.bench.cases` makes cases
of the bench items).

Every item is a pure function of (split, category, index): the random stream is seeded with
``[SPLIT_ID[split], category number, index]``, so the `train` and `bench` splits never share a stream, pools are
unbounded (any index), and the same index always gives the same item. Training items never use a held-out attribute
combination; a quarter of bench items always do, and a fifth of bench T2I prompts are long "hard" prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flashdistill.world.captions import caption
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES
from flashdistill.world.edits import sample_edit
from flashdistill.world.schema import sample_record

# `val`: bench-like items (held-out combinations, hard prompts) from their own seeds, for choosing sampling settings
# and checkpoints without looking at the bench.
SPLIT_ID = {"train": 0, "bench": 1, "val": 2}
PROMPTS_PER_CATEGORY = 20_000  # the paper's size of each category's prompt set (section 3.1)


@dataclass(frozen=True)
class T2IItem:
    record: dict
    prompt: str
    attributes: dict
    hard: bool


@dataclass(frozen=True)
class EditItem:
    source: dict
    edit: dict
    instruction: str


def _rng(split: str, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([SPLIT_ID[split], stream, index])


def _bench_flags(split: str, index: int) -> tuple[bool, bool]:
    """(held_out, hard) for an item: training never uses either of them by default."""
    if split == "train":
        return False, index % 10 == 9  # a tenth of training prompts are long, to teach long prompts too
    return index % 4 == 3, index % 5 == 4


def t2i_item(category: str, index: int, split: str = "train") -> T2IItem:
    rng = _rng(split, T2I_CATEGORIES.index(category), index)
    held_out, hard = _bench_flags(split, index)
    record = sample_record(category, rng, held_out=held_out)
    prompt, attributes = caption(record, rng, hard=hard)
    return T2IItem(record, prompt, attributes, hard)


def edit_item(category: str, index: int, split: str = "train") -> EditItem:
    rng = _rng(split, 100 + EDIT_CATEGORIES.index(category), index)
    held_out, _ = _bench_flags(split, index)
    source, edit, instruction = sample_edit(category, rng, held_out=held_out)
    return EditItem(source, edit, instruction)


def t2i_pool(category: str, n: int = PROMPTS_PER_CATEGORY) -> list[T2IItem]:
    """The first `n` training items of a category with pairwise distinct prompts (duplicates are skipped)."""
    items, seen, index = [], set(), 0
    while len(items) < n:
        item = t2i_item(category, index, "train")
        index += 1
        if item.prompt not in seen:
            seen.add(item.prompt)
            items.append(item)
    return items
