"""The final judged result of one run of a study on your own model (studies/own.py): its last evaluation's scores,
with the samples the judge could not score judged again from their PNGs. Tests: `pytest tests/test_own_study.py`."""

from __future__ import annotations

import json
from pathlib import Path

from flashdistill.errors import Incomplete, UserError
from flashdistill.files import write_text_atomic
from flashdistill.studies.report import jsonl_records


def final_scores(recipe, run: Path, bench: Path, tasks: tuple[str, ...], what: str) -> dict:
    """The final student's judged scores per task: `run/eval/step-N/scores.jsonl` of its last evaluation, with
    the items it could not score judged again from their PNGs; written to `bench/TASK/cases.jsonl`. Raises
    Incomplete when an item still has no score."""
    from flashdistill.data.files import read_edits, read_prompts

    step = run / "eval" / f"step-{recipe.dmd.iterations:06d}"
    if not (step / "scores.jsonl").is_file():
        raise UserError(f"{step}: the run's last evaluation wrote no scores.jsonl (was it run with another "
                        f"eval.every?); delete {run.parent} and run the study command again to redo that run")
    e = recipe.eval
    items = {"t2i": read_prompts(e.prompts) if "t2i" in tasks else [],
             "edit": read_edits(e.edits) if "edit" in tasks and e.edits else []}
    rows = _read_rows(step / "scores.jsonl")
    for task in tasks:  # what an earlier call judged again
        rows.update(_read_rows(bench / task / "cases.jsonl"))
    missing = [(task, i) for task in tasks for i in range(len(items[task]))
               if not isinstance((rows.get(f"{task}-{i}") or {}).get("score"), (int, float))]
    if missing:
        rows.update(_judge_again(recipe, step, items, missing))
    results, failed = {}, []
    for task in tasks:
        lines, by_category = [], {}
        for i, item in enumerate(items[task]):
            row = rows.get(f"{task}-{i}") or {}
            score = row.get("score") if isinstance(row.get("score"), (int, float)) else None
            if score is None:
                failed.append(row.get("error") or "no reply")
            else:
                by_category.setdefault(item.category, []).append(float(score))
            lines.append(json.dumps({"id": f"{task}-{i}", "category": item.category, "score": score,
                                     "reasoning": row.get("reasoning", ""), "error": row.get("error")}))
        (bench / task).mkdir(parents=True, exist_ok=True)
        write_text_atomic(bench / task / "cases.jsonl", "".join(line + "\n" for line in lines))
        per_category = {c: sum(v) / len(v) for c, v in by_category.items()}
        results[task] = {"average": sum(per_category.values()) / len(per_category) if per_category else None,
                         "per_category": per_category, "n_cases": len(items[task]),
                         "n_failed": sum(1 for line in lines if json.loads(line)["score"] is None)}
    if failed:
        raise Incomplete(f"{what}: the judge scored no reply for {len(failed)} of the final student's samples "
                         f"(last error: {failed[-1]}); its samples are kept in {step}: run the same command again "
                         f"to judge what is missing")
    return results


def _read_rows(path: Path) -> dict[str, dict]:
    """The scored items of a scores.jsonl / cases.jsonl by id (none when the file does not exist yet)."""
    return {row["id"]: row for row in (jsonl_records(path) if path.is_file() else [])
            if isinstance(row, dict) and isinstance(row.get("id"), str)}


def _judge_again(recipe, step: Path, items: dict, missing: list[tuple[str, int]]) -> dict[str, dict]:
    """Judge the `missing` (task, index) items from the PNGs of their evaluation (an edit's PNG is its source and
    the output side by side: the output is its right half)."""
    import numpy as np
    from PIL import Image

    from flashdistill.bench.cases import EditCase, T2ICase
    from flashdistill.bench.vlm import VLMJudge

    e = recipe.eval
    judge = VLMJudge(e.vlm_base_url, e.vlm_model, api_key_env=e.vlm_api_key_env, concurrency=e.vlm_concurrency)
    got = {}
    for task in ("t2i", "edit"):
        index = [i for t, i in missing if t == task]
        if not index:
            continue
        images = []
        for i in index:
            png = step / task / f"{i:04d}.png"
            if not png.is_file():
                raise UserError(f"{png}: missing, so that sample cannot be judged again; delete {step.parents[2]} "
                                f"and run the study command again to redo that run")
            pixels = np.asarray(Image.open(png).convert("RGB"), np.float32) / 255
            images.append(pixels[:, pixels.shape[1] // 2:] if task == "edit" else pixels)
        if task == "t2i":
            cases = [T2ICase(f"t2i-{i}", items[task][i].category, items[task][i].text, i) for i in index]
            scored = judge.judge_t2i(cases, images)
        else:
            cases = [EditCase(f"edit-{i}", items[task][i].category, items[task][i].text, i,
                              source_image=str(items[task][i].source)) for i in index]
            sources = [np.asarray(items[task][i].load_source().convert("RGB"), np.float32) / 255 for i in index]
            scored = judge.judge_edit(cases, sources, images)
        for j, s in scored:
            got[f"{task}-{index[j]}"] = {"id": f"{task}-{index[j]}", "score": s.score, "reasoning": s.reasoning,
                                         "error": s.error}
    return got
