"""Collect bench result folders into the paper's table layout: per-category scores, average and rank, one row per
model and judge (ranks are within each bench and judge, by average, 1 = best). Written as Markdown and JSON.

    flashdistill bench table runs/bench/* --out table.md
"""

from __future__ import annotations

import json
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_CATEGORIES, EDIT_TITLES, T2I_CATEGORIES, T2I_TITLES

BENCH_NAMES = {"t2i": "T2I-Bench", "edit": "Editing-Bench"}


def load_results(folders: list[str]) -> list[dict]:
    rows = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise UserError(f"{folder}: no results.json (run `flashdistill bench` into it first)")
        try:
            rows.append({**json.loads(path.read_text(encoding="utf-8")), "folder": str(folder)})
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg})") from None
    return rows


def rank_rows(rows: list[dict]) -> list[dict]:
    """Sort rows by bench, then judge, then average (best first), and number the ranks within bench and judge."""
    rows = sorted(rows, key=lambda r: (r["bench"], r["judge"], -(r["average"] or 0.0)))
    for key in {(r["bench"], r["judge"]) for r in rows}:
        group = [r for r in rows if (r["bench"], r["judge"]) == key]
        for rank, row in enumerate(group, 1):
            row["rank"] = rank
    return rows


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(rows: list[dict]) -> str:
    parts = []
    for bench in ("t2i", "edit"):
        group = [r for r in rows if r["bench"] == bench]
        if not group:
            continue
        cats = T2I_CATEGORIES if bench == "t2i" else EDIT_CATEGORIES
        titles = T2I_TITLES if bench == "t2i" else EDIT_TITLES
        head = ["Model", "NFE", "Judge", *(titles[c] for c in cats), "Average", "Rank"]
        lines = [f"### {BENCH_NAMES[bench]}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] * 3 + ["---:"] * (len(cats) + 2)) + "|"]
        for r in group:
            cells = [r["model"], str(r["nfe"] if r["nfe"] is not None else "-"), r["judge"].split(" ")[0],
                     *(_fmt(r["per_category"].get(c)) for c in cats), _fmt(r["average"]), str(r["rank"])]
            lines.append("| " + " | ".join(cells) + " |")
        fd_rows = [r for r in group if any(v is not None for v in (r.get("frechet_distance") or {}).values())]
        if fd_rows:
            lines += ["", "Fréchet distance of reader features to the exact images (lower is better):", "",
                      "| Model | NFE | " + " | ".join(titles[c] for c in cats) + " |",
                      "|---|---|" + "---:|" * len(cats)]
            for r in fd_rows:
                fd = r["frechet_distance"]
                lines.append(f"| {r['model']} | {r['nfe'] if r['nfe'] is not None else '-'} | "
                             + " | ".join(_fmt(fd.get(c)) for c in cats) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_table(folders: list[str], out: str) -> list[dict]:
    rows = rank_rows(load_results(folders))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(markdown(rows), encoding="utf-8")
    keep = ("bench", "model", "nfe", "judge", "n_cases", "n_failed", "per_category", "average", "rank",
            "frechet_distance", "folder")
    out_path.with_suffix(".json").write_text(json.dumps([{k: r.get(k) for k in keep} for r in rows], indent=2) + "\n",
                                             encoding="utf-8")
    return rows
