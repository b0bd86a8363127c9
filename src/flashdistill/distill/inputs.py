"""What a distillation run's result depends on besides its recipe, named for runtime/inputs.py to fingerprint: every
teacher of the recipe (its path given by the family, distill/families.py), the recipe's data files (an edits
file with the source images it names) and the index of its pairs cache. Tests: `pytest tests/test_inputs.py`."""

from __future__ import annotations

from pathlib import Path

from flashdistill.data.files import read_edits
from flashdistill.distill.families import Family
from flashdistill.distill.pairs import index_path
from flashdistill.runtime.inputs import fingerprint_inputs


def input_fingerprint(recipe, family: Family, with_pairs: bool = True) -> dict:
    """The identity of a run's inputs: every teacher's weight files (`family.resolve` gives each teacher's path)
    and the data files of `recipe.data`; with `with_pairs`, the index of the recipe's pairs cache when it trains on
    one (the pairs command, which builds that cache, fingerprints without it). Pure: reads files, writes nothing;
    equal inputs give equal dicts."""
    teachers = {f"teachers.{name}": spec for name, spec in recipe.teachers.items()}
    data = {f"data.{key}": getattr(recipe.data, key) for key in ("prompts", "edits")}
    # its index holds every shard's sha256: a rebuilt or extended cache is another input
    if with_pairs and recipe.pairs.enabled():
        data["pairs.folder"] = str(index_path(recipe.pairs.folder))
    return fingerprint_inputs(teachers, family.resolve, data, _named_images)


def _named_images(key: str, path: Path) -> list[str]:
    """The source images an edits file names (a prompts file names none)."""
    if key != "data.edits":
        return []
    return [item.source for item in read_edits(path, check_images=False)]
