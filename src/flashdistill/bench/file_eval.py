"""Samples and a judged quick evaluation while distilling on data files (`eval.prompts` / `eval.edits`).

Every `eval.every` iterations the EMA student samples each eval item at its NFE from fixed seeds (item i: seed i,
the same at every evaluation, so the images of one item can be compared over training), the base folder's VAE
decodes them, and the run writes

    eval/step-NNNNNN/t2i/<i>.png, edit/<i>.png     the samples (an edit: source | output side by side)
    eval/step-NNNNNN/grid.png                      all of them in one picture (also in tensorboard: eval/samples)
    eval/step-NNNNNN/scores.jsonl                  with `eval.judge: vlm`: each item's score and reasoning

With `eval.judge: vlm` the samples are scored by the benches' VLM judge (bench/vlm.py, the T2I and editing rubrics):
the score is the mean over the tasks present of the mean over categories of the items' scores (1-5), logged, and
the trainer keeps the best student in `best/` and honours `eval.patience` as in the embedded quick evaluation. An
evaluation in which any item could not be judged has no score (it is logged with its failures and never becomes
the best). With `eval.judge: none` only the samples are written.

The conditioning comes from the condition cache (`flashdistill cache` encodes eval.prompts / eval.edits with the
training files), so no text encoder is loaded; the VAE (a few hundred MB) is loaded at the first evaluation on rank
0 and kept. Under FSDP every rank runs the sampling forwards (the sharded student needs every rank in each call);
rank 0 decodes, writes and judges. Tests: `pytest tests/test_file_eval.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from flashdistill.bench.cases import EditCase, T2ICase
from flashdistill.conditioning import Cond
from flashdistill.distill.families import QwenImageFolderFamily
from flashdistill.errors import UserError
from flashdistill.runtime.steps import micro_batches
from flashdistill.sampling import few_step_sample


class FileEval:
    """`__call__(ema, iteration, dist)` on every rank: sample, then on rank 0 decode, write, judge (see above); a
    `flashdistill.distill.trainer.Scorer`."""

    def __init__(self, recipe, family: QwenImageFolderFamily, out: Path, device: torch.device, judge=None):
        from flashdistill.data.files import read_edits, read_prompts

        e = recipe.eval
        self.t2i = read_prompts(e.prompts) if e.prompts else []
        self.edits = read_edits(e.edits) if e.edits else []
        self.cache = family.condition_cache(recipe.run.text_cache)
        if judge is not None:  # the edit rubrics are the Editing-Bench's, one per category
            from flashdistill.world.categories import EDIT_SUBSCORE_KEYS

            unknown = sorted({i.category for i in self.edits} - set(EDIT_SUBSCORE_KEYS))
            if unknown:
                raise UserError(f"eval.edits: categories {', '.join(unknown)} have no Editing-Bench rubric for "
                                f"eval.judge vlm; label eval edits with one of {', '.join(EDIT_SUBSCORE_KEYS)} "
                                f"(or use eval.judge none)")
        self.folder, self.out, self.device, self.judge = family.folder, Path(out), device, judge
        self.timesteps, self.bf16 = recipe.timesteps, recipe.dmd.bf16
        self.micro, self.batch = recipe.run.micro_batch, recipe.dmd.batch_size  # rows per pass as in training
        self.sides = family.latent_sides()  # (h, w) of the targets' latents, as the training batches have them
        self.decoder = None

    def __call__(self, ema, iteration: int, dist) -> dict | None:
        # rows per forward: run.micro_batch, 0 = the rank's whole share of the training batch (as in training)
        self.chunk = self.micro or len(range(self.batch)[dist.rows(self.batch)])
        latents = {"t2i": self._sample(ema, self.t2i, self._t2i_cond), "edit": self._sample(ema, self.edits,
                                                                                            self._edit_cond)}
        if not dist.main:
            return None
        folder = self.out / f"step-{iteration:06d}"
        images = {task: self._decode(z) for task, z in latents.items()}
        sources = [np.asarray(item.load_source().convert("RGB"), np.float32) / 255 for item in self.edits]
        grid = write_samples(folder, images, sources)
        result = {"samples": sum(len(v) for v in images.values()), "grid": str(grid)}
        if self.judge is not None:
            result.update(self._judge(folder, images, sources, iteration))
        return result

    # ---- sampling ---------------------------------------------------------------------------------------------
    def _t2i_cond(self, items: list) -> Cond:
        emb, mask = self.cache.prompts([i.text for i in items])  # padded to the longest, with its mask
        return Cond(emb, mask, category=[i.category for i in items])

    def _edit_cond(self, items: list) -> Cond:
        got = self.cache.edits(items)
        return Cond(got["emb"], got["mask"], got["latents"], torch.ones(len(items), dtype=torch.bool),
                    [i.category for i in items])

    @torch.no_grad()
    def _sample(self, ema, items: list, make_cond) -> torch.Tensor:
        """Latents (N, C, h, w) of `items` (C the student's channels, (h, w) the targets' latent sides), `self.chunk`
        rows per forward, from seed = the item's index."""
        shape = (ema.config.channels, *self.sides)
        out = []
        for part in micro_batches(len(items), self.chunk):
            rows = list(range(part.start, part.stop))
            cond = make_cond([items[i] for i in rows]).to(self.device)
            noise = torch.stack([_noise(i, 0, shape) for i in rows]).to(self.device)
            renoise = [torch.stack([_noise(i, k, shape) for i in rows]).to(self.device)
                       for k in range(1, len(self.timesteps))]
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
                out.append(few_step_sample(ema, noise, cond, self.timesteps, renoise=renoise).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, *shape)

    def _decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        if len(latents) == 0:
            return []
        if self.decoder is None:
            from flashdistill.models.qwen_image import QwenImageParts

            self.decoder = QwenImageParts(self.folder, parts=("vae",), device=self.device)
        images = [self.decoder.decode(latents[i:i + 1])[0] for i in range(len(latents))]  # (3, H, W) in [0, 1]
        return [img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() for img in images]

    # ---- judging ----------------------------------------------------------------------------------------------
    def _judge(self, folder: Path, images: dict, sources: list, iteration: int) -> dict:
        scored: dict[str, dict[int, object]] = {"t2i": {}, "edit": {}}
        if self.t2i:
            cases = [T2ICase(f"t2i-{i}", it.category, it.text, i) for i, it in enumerate(self.t2i)]
            scored["t2i"] = dict(self.judge.judge_t2i(cases, images["t2i"]))
        if self.edits:
            cases = [EditCase(f"edit-{i}", it.category, it.text, i, source_image=str(it.source))
                     for i, it in enumerate(self.edits)]
            scored["edit"] = dict(self.judge.judge_edit(cases, sources, images["edit"]))
        lines, result, failed = [], {}, 0
        for task, items in (("t2i", self.t2i), ("edit", self.edits)):
            by_category: dict[str, list[float]] = {}
            for i, item in enumerate(items):
                s = scored[task].get(i)
                score = None if s is None else s.score
                failed += score is None
                lines.append(json.dumps({"id": f"{task}-{i}", "category": item.category, "score": score,
                                         "reasoning": "" if s is None else s.reasoning,
                                         "error": None if s is None else s.error}))
                by_category.setdefault(item.category, []).append(score)
            if items and all(v is not None for vs in by_category.values() for v in vs):
                result[task] = float(np.mean([np.mean(vs) for vs in by_category.values()]))
        (folder / "scores.jsonl").write_text("".join(line + "\n" for line in lines))
        result["judge_failed"] = failed
        tasks = [t for t, items in (("t2i", self.t2i), ("edit", self.edits)) if items]
        result["score"] = float(np.mean([result[t] for t in tasks])) if not failed else None
        return result


def _noise(index: int, step: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """The fixed noise (C, h, w) of eval item `index` at sampling step `step` (0: the start, k: the k-th
    re-noising)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([index, step, 7]).generate_state(1)[0]))
    return torch.randn(shape, generator=gen)


def write_samples(folder: Path, images: dict[str, list[np.ndarray]], sources: list[np.ndarray]) -> Path:
    """PNGs of every sample (an edit beside its source, resized to the output's size) and one grid; the grid path."""
    from PIL import Image

    tiles = []
    for task, imgs in images.items():
        (folder / task).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(imgs):
            tile = _u8(img)
            if task == "edit":
                src = Image.fromarray(_u8(sources[i])).resize((tile.shape[1], tile.shape[0]), Image.BICUBIC)
                tile = np.concatenate([np.asarray(src), tile], axis=1)
            Image.fromarray(tile).save(folder / task / f"{i:04d}.png")
            tiles.append(tile)
    grid = folder / "grid.png"
    Image.fromarray(_grid(tiles)).save(grid)
    return grid


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _grid(tiles: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tiles (H, W_i, 3) left to right, `columns` per row, padded to the widest."""
    if not tiles:
        return np.zeros((8, 8, 3), np.uint8)
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    out = np.zeros((h * len(rows), w * columns, 3), np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            out[r * h:r * h + tile.shape[0], c * w:c * w + tile.shape[1]] = tile
    return out
