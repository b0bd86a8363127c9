"""Batch sources: what the DMD loop trains on, from the embedded world or from the user's data files.

A source (the `BatchSource` Protocol) turns batch `step` into model-space tensors and conditioning, so the engine
(`distill/iteration.py`) reads `source.batch(step, batch_size, rows)` and never knows where items come from or which
family encodes them:

- `WorldSource`: `data.batches.make_batch` (procedural items, exact target images in pixel space) with the text
  from the MiniLM `EmbeddingCache`; the unconditional branch is the empty prompt (the teachers' CFG dropout).
- `FileSource`: items of `data.prompts` / `data.edits` (flashdistill.data.files) chosen by the same task-mixture
  sampler (`choose_items` with the files' categories and item counts), conditioning read from the `ConditionCache`
  that `flashdistill cache` wrote: prompt embeddings, the negative prompt (T2I rows), the VL embeddings of
  source + instruction and of source + negative prompt, and the normalised VAE latents of the sources (edit rows).
  No encoder is loaded: a missing entry raises a UserError naming the cache command. The unconditional branch is
  the negative prompt, as the Qwen-Image pipelines' true CFG uses it. Files hold no target images (`x` is None).
  Every row's target is `data.resolution` (a side or [height, width]; latents `shape`, read from the base folder:
  its channels and VAE factor); an edit's source keeps the latent size the cache gave it (the VAE area of
  `flashdistill cache`, the source's aspect), so one batch's sources share a size.
  Checked when it is built, before the first iteration: every item a batch can draw is in the cache, and edit
  sources of several latent sizes are refused when a rank's batch holds 2 rows or more (`rows_per_rank`, else at
  the first batch).

Both are pure functions of (seed, step): a resumed run gets the very batches it would have got.
Tests: `pytest tests/test_qwen_distill.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from flashdistill.conditioning import Cond
from flashdistill.data.batches import TaskMix, batch_of, choose_items
from flashdistill.data.cache import pad_rows
from flashdistill.errors import UserError
from flashdistill.world.pools import edit_item, t2i_item

Tensor = torch.Tensor


@dataclass
class TrainBatch:
    """This rank's rows of one batch, on the CPU."""

    x: Tensor | None  # (b, C, H, W) target images in model space; None when the source has none (data files)
    cond: Cond
    uncond: Cond  # the same rows with the unconditional text (sources kept)


def _uncond(cond: Cond, emb: Tensor, mask: Tensor) -> Cond:
    return Cond(emb, mask, cond.source, cond.has_source, cond.category)


class BatchSource(Protocol):
    """What the engine asks of its training data (see the module docstring): `WorldSource`, `FileSource`."""

    shape: tuple[int, ...]  # one target's (C, H, W) in model space
    encoder: object | None  # the text encoder the quick evaluation shares (MiniLM), None from data files

    def batch(self, step: int, batch_size: int, rows: slice) -> TrainBatch:
        """This rank's `rows` of global batch `step` (`batch_size` rows), a pure function of (seed, step)."""

    def items(self, keys: list[tuple[str, str, int]]) -> TrainBatch:
        """The batch of these (task, category, index) items (the pairs cache names its items so)."""

    def text(self, key: tuple[str, str, int]) -> str:
        """The prompt or instruction of item `key` (what a pairs cache checks its items by)."""

    def check_rows(self, rows_per_rank: int) -> None:
        """Before the first iteration: refuse (UserError) a rank's batch size this source cannot stack."""

    def flush(self) -> None:
        """Write what the source learned (the text embeddings it encoded) so a resumed run finds it."""


class WorldSource:
    """The embedded world's items with MiniLM text embeddings (see the module docstring)."""

    def __init__(self, mix: TaskMix, seed: int, resolution: int, cache):
        self.mix, self.seed, self.resolution, self.cache = mix, seed, resolution, cache
        self.encoder = cache.encoder  # the quick evaluation encodes bench prompts with the same MiniLM
        self.shape = (3, resolution, resolution)
        self.empty = cache.empty_embedding()  # (1, L, D), (1, L): the empty prompt

    def batch(self, step: int, batch_size: int, rows: slice) -> TrainBatch:
        return self.items(choose_items(step, batch_size, self.mix, self.seed)[rows])

    def items(self, keys: list[tuple[str, str, int]]) -> TrainBatch:
        """The batch of these (task, category, index) items of the training pools (the pairs cache names them)."""
        b = batch_of(keys, "train", self.resolution)
        emb, mask = self.cache.get(b.texts)  # (b, L, D), (b, L)
        cond = Cond(emb, mask, b.source, b.has_source, b.category)
        u_emb, u_mask = self.empty
        n = len(cond.category)
        return TrainBatch(b.x, cond, _uncond(cond, u_emb.expand(n, -1, -1), u_mask.expand(n, -1)))

    def text(self, key: tuple[str, str, int]) -> str:
        """The prompt or instruction of item `key` (what a pairs cache checks its items by)."""
        task, category, index = key
        return t2i_item(category, index, "train").prompt if task == "t2i" else \
            edit_item(category, index, "train").instruction

    def check_rows(self, rows_per_rank: int) -> None:
        """Any number: the world renders every row at one resolution."""

    def flush(self) -> None:
        self.cache.flush()  # so a resumed run finds this run's embeddings on disk


class FileSource:
    """Items from the user's files, conditioning from a ConditionCache (see the module docstring)."""

    def __init__(self, mix: TaskMix, seed: int, prompts: list, edits: list, cache, latent_shape: tuple[int, ...],
                 rows_per_rank: int | None = None):
        self.mix, self.seed, self.cache, self.shape = mix, seed, cache, tuple(latent_shape)
        self.encoder = None
        self.by_key = {"t2i": _by_category(prompts), "edit": _by_category(edits)}
        # Before the first iteration: every item a batch can draw is cached (else a UserError naming the command),
        # and the edit sources' latent sizes are known (a batch stacks its sources, so one rank's rows need one).
        drawn_p = [p for p in prompts if mix.t2i_weight > 0 and mix.composition.get(p.category, 0) > 0]
        drawn_e = [e for e in edits if mix.edit_weight > 0 and mix.edit_mix.get(e.category, 0) > 0]
        self.mixed_sizes = _mixed_sizes(cache.check_items(drawn_p, drawn_e))
        if rows_per_rank is not None:
            self.check_rows(rows_per_rank)

    def check_rows(self, rows_per_rank: int) -> None:
        """UserError if batches of `rows_per_rank` rows could stack edit sources of different latent sizes."""
        if self.mixed_sizes and rows_per_rank >= 2:
            raise UserError(f"{self.mixed_sizes}; a batch of {rows_per_rank} rows per rank stacks its sources, so "
                            f"they need one aspect ratio: crop them to one (and run `flashdistill cache` again), or "
                            f"train with 1 row per rank")

    def batch(self, step: int, batch_size: int, rows: slice) -> TrainBatch:
        self.check_rows(len(range(batch_size)[rows]))
        return self.items(choose_items(step, batch_size, self.mix, self.seed)[rows])

    def text(self, key: tuple[str, str, int]) -> str:
        """The prompt or instruction of item `key` (what a pairs cache checks its items by)."""
        task, category, index = key
        return self.by_key[task][category][index].text

    def items(self, keys: list[tuple[str, str, int]]) -> TrainBatch:
        """The batch of these (task, category, index) items of the files (a batch, or the rows a pairs cache
        names)."""
        items = [self.by_key[task][cat][index] for task, cat, index in keys]
        t2i = [i for i, item in enumerate(items) if not item.is_edit]
        edit = [i for i, item in enumerate(items) if item.is_edit]
        emb, neg = [None] * len(items), [None] * len(items)
        source = None
        if t2i:
            e, m = self.cache.prompts([items[i].text for i in t2i])
            n, nm = self.cache.negative(1)
            for j, i in enumerate(t2i):
                emb[i], neg[i] = e[j][m[j]], n[0][nm[0]]
        if edit:
            got = self.cache.edits([items[i] for i in edit])
            source = torch.zeros(len(items), *got["latents"].shape[1:])  # (b, z, h_src, w_src), zeros on T2I rows
            for j, i in enumerate(edit):
                emb[i], neg[i] = got["emb"][j][got["mask"][j]], got["neg"][j][got["neg_mask"][j]]
                source[i] = got["latents"][j]
        has_source = torch.tensor([item.is_edit for item in items])
        cond = Cond(*pad_rows(emb), source, has_source, [item.category for item in items])
        return TrainBatch(None, cond, _uncond(cond, *pad_rows(neg)))

    def flush(self) -> None:
        """Nothing to write: the cache is read-only during training."""


def _mixed_sizes(sizes: dict[tuple, list]) -> str | None:
    """None for edit sources of one latent size, else a phrase naming one source of each of the first two."""
    if len(sizes) < 2:
        return None
    (a, items_a), (b, items_b) = list(sizes.items())[:2]
    return (f"data.edits: the edit sources have {len(sizes)} latent sizes, e.g. {items_a[0].source} "
            f"({items_a[0].where}) -> {'x'.join(map(str, a))} and {items_b[0].source} ({items_b[0].where}) -> "
            f"{'x'.join(map(str, b))}")


def _by_category(items: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for item in items:
        out.setdefault(item.category, []).append(item)
    return out
