"""Share of text images whose requested word the world judge's reader reads exactly, per bench run folder.

    python benchmarks/word_exact.py runs/results/t2i-teacher_base-nfe50 runs/results/edit-teacher_base-nfe50 ...

Reads each folder's `cases.jsonl` (written by `flashdistill bench`): a T2I `text` case reads right when its
failure modes hold no "wrong word", a `text_editing` case when none names the word ("word not changed to ...",
"word changed but should stay ..."). Prints one line per folder and, with --json, writes them all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def word_exact(folder: Path) -> dict:
    rows = [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["category"] in ("text", "text_editing") and r.get("score") is not None]
    ok = [not any(m.startswith(("wrong word", "word ")) for m in r["failure_modes"]) for r in rows]
    return {"folder": str(folder), "n": len(rows), "word_exact": round(sum(ok) / len(rows), 4) if rows else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = [word_exact(f) for f in args.folders]
    for r in rows:
        share = "n/a" if r["word_exact"] is None else f"{r['word_exact']:.1%}"
        print(f"{r['folder']}: {share} of {r['n']} text images read exactly")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
