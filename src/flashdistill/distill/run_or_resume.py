"""One distillation run into a folder, resumed when the folder holds a checkpoint and started otherwise: what the
quickstart's distill stage and every study run do (the command line asks for `--resume` instead)."""

from __future__ import annotations

from pathlib import Path

from flashdistill.distill.trainer import holds_checkpoint, train_distill


def train_or_resume(recipe, run: Path, encoder, command: str, make_scorer) -> dict:
    """`train_distill` into `run`, resuming from its last checkpoint when it has one; returns the run's summary.
    `make_scorer` builds the quick evaluation's scorer (the caller's, from above the engine:
    flashdistill.bench.quick.make_scorer). A checkpoint of either kind counts: one file per role, or the sharded
    state.json of an fsdp run (which restore_run reads back under the same layout)."""
    return train_distill(recipe, run, resume=holds_checkpoint(run), encoder=encoder, command=command,
                         make_scorer=make_scorer)
