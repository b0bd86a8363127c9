"""Run a benchmark: generate with a model, judge each case, write results; resume an interrupted run.

    flashdistill bench t2i --model oracle --out runs/bench/oracle-t2i

Files in the output folder:
- `run.json`: what this folder holds (bench, model, nfe, judge, case file); a rerun with other settings is refused;
- `cases.jsonl`: one line per judged case (id, category, score, sub_scores, reasoning, failure_modes, metrics,
  error), appended and fsynced as each case finishes, so a killed run loses at most the batch in flight; a case
  that failed (score null, e.g. the VLM judge gave up on it) is asked again with `retry_failed` (`--retry-failed`);
- `images/<id>.png`: the model's output for each case (what was judged: outputs are quantised to 8 bits first);
- `results.json`: per-category means, their average (the paper's "Average"; null, with `unscored_categories`
  naming them, when every case of a category failed), failures and Fréchet distances;
- `grid.png`: a few outputs per category with their scores.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flashdistill.bench.world_judge import frechet_distance, reference_features
from flashdistill.errors import UserError
from flashdistill.files import read_json_object, write_json_atomic, write_text_atomic
from flashdistill.imageio import load_png, quantize, save_grid, save_png
from flashdistill.runfolder import claim_run
from flashdistill.world.categories import EDIT_CATEGORIES, EDIT_TITLES, T2I_CATEGORIES, T2I_TITLES
from flashdistill.world.edits import source_image

MIN_CASES_FOR_FD = 10


def _check_identity(out: Path, identity: dict) -> None:
    run_file = out / "run.json"
    if run_file.exists():
        try:
            old = read_json_object(run_file, "run record")
        except UserError as err:
            raise UserError(f"{err}; it records what {out} holds: choose a new --out") from None
        if old != identity:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in identity.items() if old.get(k) != v)
            raise UserError(f"{out} holds another run ({diff}); choose a new --out")
    else:
        write_json_atomic(run_file, identity, indent=2)


def load_done(path: Path, retry_failed: bool = False) -> dict[str, dict]:
    """Judged cases so far. A torn last line (the process died mid-write) is dropped from the file, and so are the
    failed cases (score null) when `retry_failed`, so that they are judged again."""
    if not path.exists():
        return {}
    done, good_lines = {}, []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            if retry_failed and row["score"] is None:
                continue
            done[row["id"]] = row
            good_lines.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(line + "\n" for line in good_lines))
    return done


def _sources(cases, resolution: int) -> list[np.ndarray]:
    return [source_image(c.source, c.edit, resolution) if c.source is not None
            else load_png(c.source_image, resolution) for c in cases]


def _generate(model, bench: str, batch, nfe, resolution: int):
    sources = None if bench == "t2i" else _sources(batch, resolution)
    images = model.t2i(batch, nfe) if bench == "t2i" else model.edit(batch, sources, nfe)
    for case, img in zip(batch, images):
        if not np.isfinite(img).all():  # a broken model: never quantise NaN to black and score it
            raise UserError(f"model {model.name} produced NaN/Inf for case {case.id}: its weights are broken")
    return sources, [quantize(img) for img in images]


def run_bench(bench: str, model, judge, cases: list, out: Path, nfe: int | None, cases_label: str,
              resolution: int = 32, batch_size: int = 32, retry_failed: bool = False) -> dict:
    """Generate, judge and record every case not yet in `out/cases.jsonl` (and, with `retry_failed`, every case
    recorded as failed); then write results.json and grid.png. `out` is claimed first (flashdistill.runfolder):
    another kind of run there, or another process writing it, is refused."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    check = getattr(judge, "check_cases", None)
    if check is not None:  # before any image is made: e.g. the world judge needs ground truth in every case
        check(bench, cases)
    out = Path(out)
    with claim_run(out, "bench"):
        _check_identity(out, {"bench": bench, "model": model.name, "nfe": nfe, "judge": judge.description,
                            "cases": cases_label, "resolution": resolution})
        start = time.perf_counter()
        done = _judge_cases(bench, model, judge, cases, out, nfe, resolution, batch_size, retry_failed)
        results = summarize(bench, model.name, nfe, judge.description, cases, done, out, resolution)
        results["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 2)
        write_json_atomic(out / "results.json", results, indent=2)
        save_bench_grid(bench, cases, done, out)
    return results


def _judge_cases(bench: str, model, judge, cases: list, out: Path, nfe, resolution: int, batch_size: int,
                 retry_failed: bool) -> dict[str, dict]:
    """Every case's row (id -> row), the ones not yet in cases.jsonl generated, judged and appended there."""
    log_path = out / "cases.jsonl"
    done = load_done(log_path, retry_failed)
    todo = [c for c in cases if c.id not in done]
    if done and todo:
        print(f"resuming: {len(cases) - len(todo)} of {len(cases)} cases already judged in {log_path}")
    with log_path.open("a", encoding="utf-8") as log, tqdm(total=len(todo), desc=f"{bench} {model.name}",
                                                           unit="case") as bar:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            sources, images = _generate(model, bench, batch, nfe, resolution)
            for case, img in zip(batch, images):
                save_png(out / "images" / f"{case.id}.png", img)
            scores = judge.judge_t2i(batch, images) if bench == "t2i" else judge.judge_edit(batch, sources, images)
            for i, score in scores:
                row = {"id": batch[i].id, "category": batch[i].category, **score.to_json()}
                log.write(json.dumps(row) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[row["id"]] = row
                bar.update(1)
    return done


def summarize(bench, model_name, nfe, judge_desc, cases, done, out: Path, resolution: int) -> dict:
    """results.json's content. `average` is the mean over every category the cases hold, or None when one of them
    has no judged case (all failed): an average over fewer categories is another number, not comparable with a
    complete one, so it is not given; `unscored_categories` names them (and the CLI exits 1)."""
    order = T2I_CATEGORIES if bench == "t2i" else EDIT_CATEGORIES
    per_cat: dict[str, list[float]] = {}
    failed = 0
    for case in cases:
        score = done[case.id]["score"]
        if score is None:
            failed += 1
        else:
            per_cat.setdefault(case.category, []).append(score)
    means = {c: round(float(np.mean(per_cat[c])), 3) for c in order if c in per_cat}
    present = list(dict.fromkeys(c.category for c in cases))
    unscored = [c for c in present if c not in per_cat]
    return {"bench": bench, "model": model_name, "nfe": nfe, "judge": judge_desc, "n_cases": len(cases),
            "n_failed": failed, "per_category": means,
            "average": round(float(np.mean(list(means.values()))), 3) if means and not unscored else None,
            "unscored_categories": unscored,
            "frechet_distance": frechet_by_category(bench, cases, out, resolution), "resolution": resolution}


def frechet_by_category(bench: str, cases: list, out: Path, resolution: int) -> dict:
    """Per-category Fréchet distance between reader features of the outputs and of the exact images."""
    from flashdistill.models.reader import load_reader

    real = reference_features(cases, bench, resolution)
    if not real:
        return {}
    reader, fd = load_reader(), {}
    for category, real_imgs in real.items():
        ids = [c.id for c in cases if c.category == category]
        if len(ids) < MIN_CASES_FOR_FD:
            fd[category] = None
            continue
        fake = np.stack([load_png(out / "images" / f"{i}.png") for i in ids])
        fd[category] = round(frechet_distance(reader.features(fake), reader.features(np.stack(real_imgs))), 3)
    return fd


def save_bench_grid(bench: str, cases: list, done: dict, out: Path, per_row: int = 6) -> None:
    order = T2I_CATEGORIES if bench == "t2i" else EDIT_CATEGORIES
    titles = T2I_TITLES if bench == "t2i" else EDIT_TITLES
    rows, labels, cell_labels = [], [], []
    for category in order:
        picked = [c for c in cases if c.category == category][:per_row]
        if not picked:
            continue
        rows.append([load_png(out / "images" / f"{c.id}.png") for c in picked])
        labels.append(titles[category][:22])
        cell_labels.append([f"{done[c.id]['score']}" if done[c.id]["score"] is not None else "failed"
                            for c in picked])
    save_grid(out / "grid.png", rows, scale=4, row_labels=labels, cell_labels=cell_labels, label_width=140)
