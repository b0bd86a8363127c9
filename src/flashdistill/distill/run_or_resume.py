"""One distillation run into a folder, resumed when the folder holds a checkpoint and started otherwise: what the
quickstart's distill stage and every study run do (the command line asks for `--resume` instead)."""

from __future__ import annotations

from pathlib import Path

from flashdistill.distill.export import CHECKPOINT_FILES
from flashdistill.distill.trainer import train_distill
from flashdistill.runtime import sharded as sharded_checkpoint
from flashdistill.runtime.checkpoint import find_checkpoint


def train_or_resume(recipe, run: Path, encoder, command: str, make_scorer) -> dict:
    """`train_distill` into `run`, resuming from its last checkpoint when it has one; returns the run's summary.
    `make_scorer` builds the quick evaluation's scorer (the caller's, from above the engine:
    flashdistill.bench.quick.make_scorer). A checkpoint of either kind counts: one file per role, or the sharded
    state.json of an fsdp run (which restore_run reads back under the same layout)."""
    resume = any(find_checkpoint(run, files) is not None for files in (CHECKPOINT_FILES, sharded_checkpoint.FILES))
    return train_distill(recipe, run, resume=resume, encoder=encoder, command=command, make_scorer=make_scorer)
