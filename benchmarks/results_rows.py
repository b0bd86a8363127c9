"""Re-run the rows of `docs/results.md` from their commands and rebuild the table.

    python benchmarks/results_rows.py teachers --out runs/results      # teacher:base / :specialized at 50 and 4 NFE
    python benchmarks/results_rows.py base --out runs/results          # teacher:base at 50 and 4 NFE
    python benchmarks/results_rows.py student --student runs/flash --out runs/results   # K-step student: at K and
                                                # the powers of two below, teacher:base at 50, K and 1
    python benchmarks/results_rows.py specialized --out runs/results  # its target subset only: text, text_editing

Each row is one `flashdistill bench t2i|edit --model M --nfe N` on the full mini benches with the world judge,
into `OUT/<bench>-<model>-nfe<N>/` (an interrupted run resumes); then `flashdistill bench table` writes
`OUT/table.md` and `OUT/table.json` (per-category scores, average, rank, Fréchet distances). The commands are
printed as they run, so each figure can be traced to the one command that made it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from flashdistill.cli import main as cli

SETS = {
    "teachers": [("teacher:base", 50), ("teacher:base", 4), ("teacher:specialized", 50), ("teacher:specialized", 4)],
    "base": [("teacher:base", 50), ("teacher:base", 4)],
    "specialized": [("teacher:specialized", 50), ("teacher:specialized", 4)],
}
# The specialized set is judged on the specialized teacher's target subset only (compare with teacher:base's
# per-category scores in the full rows); its table is written apart, since averages over different categories
# must not be ranked together.
TARGET = {"t2i": "text", "edit": "text_editing"}


def rows_for(name: str, student: str | None) -> list[tuple[str, int]]:
    if name == "student":
        if not student:
            raise SystemExit("error: the student set needs --student RUN_DIR")
        from flashdistill.quickstart import student_nfes

        k = student_steps(student)
        teacher = [("teacher:base", n) for n in dict.fromkeys((50, k, 1))]
        return [(student, n) for n in student_nfes(k)] + teacher
    return SETS[name]


def student_steps(student: str) -> int:
    """The step count K a distillation run (or student export) was trained for."""
    from flashdistill.distill.export import load_student

    return len(load_student(student).timesteps)


def folder_name(bench: str, model: str, nfe: int, category: str | None = None) -> str:
    return f"{bench}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}-nfe{nfe}" + (f"-{category}" if category else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", choices=("teachers", "base", "student", "specialized"))
    parser.add_argument("--student", default=None, help="distillation run folder (student set)")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--limit", type=int, default=None, help="cases per category (default: the full benches)")
    args = parser.parse_args()
    out = Path(args.out)
    folders = []
    for model, nfe in rows_for(args.set, args.student):
        for bench in ("t2i", "edit"):
            category = TARGET[bench] if args.set == "specialized" else None
            folder = out / folder_name(bench, model, nfe, category)
            argv = ["bench", bench, "--model", model, "--nfe", str(nfe), "--out", str(folder)]
            if category:
                argv += ["--category", category]
            if args.limit:
                argv += ["--limit", str(args.limit)]
            print("$ flashdistill " + shlex.join(argv), flush=True)
            code = cli(argv)
            if code != 0:
                return code
            folders.append(str(folder))
    table = out / ("specialized-table.md" if args.set == "specialized" else "table.md")
    return cli(["bench", "table", *folders, "--out", str(table)])


if __name__ == "__main__":
    sys.exit(main())
