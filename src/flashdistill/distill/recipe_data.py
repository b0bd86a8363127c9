"""The recipe's `data` and `tasks` groups: what the batches hold. T2I categories and their composition (paper §3),
the user's data files and target size, and the T2I:Edit ratio with the edit categories' weights (paper §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flashdistill.data.batches import EDIT_INDEX_RANGE
from flashdistill.errors import UserError
from flashdistill.runtime.config import require
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES
from flashdistill.world.pools import PROMPTS_PER_CATEGORY

_RATIO = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*:\s*(\d+(?:\.\d*)?)\s*$")


@dataclass
class DataSection:
    """T2I category composition: relative weights, or prompt counts (weights ∝ counts, pool = first N prompts).

    Without `prompts` / `edits` the items come from the embedded world and its categories; with them, from the
    user's files, and the categories are the ones the files name (`categories()`)."""

    composition: dict[str, float] | None = None
    counts: dict[str, int] | None = None
    prompts: str | None = None  # a prompts JSONL file (flashdistill.data.files); read by `flashdistill cache`
    edits: str | None = None  # an edits JSONL file (image, instruction, category)
    resolution: int | list[int] | None = None  # with data files: the target side, or [height, width], in pixels

    def uses_files(self) -> bool:
        return bool(self.prompts or self.edits)

    def categories(self) -> tuple[dict[str, int], dict[str, int]]:
        """(T2I category -> items, edit category -> items): the files' when given, else the world's pools."""
        if not self.uses_files():
            return ({c: PROMPTS_PER_CATEGORY for c in T2I_CATEGORIES},
                    {c: EDIT_INDEX_RANGE for c in EDIT_CATEGORIES})
        from collections import Counter

        from flashdistill.data.files import read_edits, read_prompts

        t2i = Counter(i.category for i in read_prompts(self.prompts)) if self.prompts else Counter()
        edit = Counter(i.category for i in read_edits(self.edits, check_images=False)) if self.edits else Counter()
        return dict(t2i), dict(edit)

    def check(self, t2i_known: dict[str, int]) -> None:
        require(self.composition is None or self.counts is None, "data",
                 "give data.composition (weights) or data.counts (numbers of prompts), not both")
        where = f"the categories of {self.prompts}" if self.uses_files() else "the world's categories"
        for name, table in (("composition", self.composition), ("counts", self.counts)):
            for cat, w in (table or {}).items():
                require(cat in t2i_known, f"data.{name}.{cat}", f"unknown category; known ({where}): "
                         f"{', '.join(t2i_known) or 'none'}")
                require(w >= 0, f"data.{name}.{cat}", f"must be >= 0, got {w}")
        for cat, n in (self.counts or {}).items():
            require(n <= t2i_known[cat], f"data.counts.{cat}", f"at most {t2i_known[cat]} prompts exist")
        require(self.resolution is None or self.uses_files(), "data.resolution",
                 "applies to data files only (the world renders at the teachers' resolution)")
        self.size()

    def size(self, default: int = 1024) -> tuple[int, int]:
        """(height, width) of the targets in pixels; a UserError naming the key for a size the pipelines refuse."""
        from flashdistill.models.qwen_image import image_size

        return image_size(default if self.resolution is None else self.resolution, "data.resolution")


@dataclass
class TasksSection:
    ratio: str = "5:5"  # T2I : Edit
    edit_mix: dict[str, float] = field(default_factory=lambda: {c: 1.0 for c in EDIT_CATEGORIES})

    def weights(self) -> tuple[float, float]:
        match = _RATIO.match(self.ratio)
        if not match:
            raise UserError(f"tasks.ratio: must look like 5:5 (T2I:Edit), got {self.ratio!r}")
        a, b = float(match.group(1)), float(match.group(2))
        require(a + b > 0, "tasks.ratio", "at least one side must be > 0")
        return a, b
