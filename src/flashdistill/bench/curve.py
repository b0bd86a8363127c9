"""Quality against the number of function evaluations: what distillation buys at a glance.

`nfe_points` gathers bench results (`results.json` of `flashdistill bench` or `run_bench`) into one curve per model
(the label before `@`: `teacher`, `student`) and bench: (NFE, average judge score, mean per-category Fréchet distance
or None). `plot_nfe_curve` draws them: the score against NFE on a log axis for T2I and editing side by side, and
under them the Fréchet distances where the results have them (full benches; slices are too small for one). Drawn
from the command line by `flashdistill bench curve [NAME=]RESULTS... --out FIG.png`.
"""

from __future__ import annotations

import math
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object

BENCH_TITLES = {"t2i": "T2I-Bench-mini", "edit": "Editing-Bench-mini"}


def read_results(paths: list[str | Path]) -> list[dict]:
    """The results records of bench folders (or of results.json files named directly). `NAME=PATH` names the
    curve the record joins (default: the record's own model label before `@`)."""
    records = []
    for arg in paths:
        name, sep, rest = str(arg).partition("=")
        label, path = (name, Path(rest)) if sep and "/" not in name else (None, Path(arg))
        file = path / "results.json" if path.is_dir() else path
        record = read_json_object(file, "bench results")
        for key in ("bench", "model", "nfe", "average"):
            if key not in record:
                raise UserError(f"{file}: not a bench results file (no '{key}')")
        records.append({**record, "model": f"{label}@{record['nfe']}"} if label else record)
    return records


def _mean_fd(record: dict) -> float | None:
    values = [v for v in (record.get("frechet_distance") or {}).values() if v is not None]
    return sum(values) / len(values) if values else None


def nfe_points(records: list[dict]) -> dict[str, dict[str, list[tuple[int, float, float | None]]]]:
    """{model: {bench: [(nfe, average, mean Fréchet distance or None)] sorted by NFE}}; the model is the results'
    label before `@` (`teacher@50` -> `teacher`)."""
    curves: dict[str, dict[str, list]] = {}
    for r in records:
        if r["average"] is None:
            continue
        model = str(r["model"]).split("@")[0]
        curves.setdefault(model, {}).setdefault(r["bench"], []).append((int(r["nfe"]), float(r["average"]),
                                                                         _mean_fd(r)))
    for benches in curves.values():
        for bench in benches:
            benches[bench].sort()
    return curves


def plot_nfe_curve(curves: dict, path: Path, title: str = "") -> Path:
    """Score (and, where known, Fréchet distance) against NFE for every model, T2I and editing side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = [b for b in BENCH_TITLES if any(b in c for c in curves.values())]
    if not benches:
        raise UserError("bench curve: no T2I or editing results to draw")
    with_fd = any(fd is not None for c in curves.values() for pts in c.values() for _, _, fd in pts)
    fig, axes = plt.subplots(2 if with_fd else 1, len(benches), figsize=(4.6 * len(benches), 6.4 if with_fd else 3.4),
                             squeeze=False)
    nfes = sorted({n for c in curves.values() for pts in c.values() for n, _, _ in pts})
    colors = {model: f"C{i}" for i, model in enumerate(sorted(curves))}  # one colour per model in every panel
    for col, bench in enumerate(benches):
        for model, by_bench in sorted(curves.items()):
            pts = by_bench.get(bench, [])
            if not pts:
                continue
            axes[0][col].plot([n for n, _, _ in pts], [s for _, s, _ in pts], marker="o", label=model,
                              color=colors[model])
            fd = [(n, d) for n, _, d in pts if d is not None]
            if with_fd and fd:
                axes[1][col].plot([n for n, _ in fd], [d for _, d in fd], marker="o", label=model,
                                  color=colors[model])
        axes[0][col].set_title(BENCH_TITLES[bench])
        axes[0][col].set_ylabel("judge score (1-5), higher is better")
        if with_fd:
            axes[1][col].set_ylabel("Fréchet distance, lower is better")
        for ax in (row[col] for row in axes):
            ax.set_xscale("log", base=2)
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.minorticks_off()
            ax.set_xlabel("NFE (network evaluations per image, before CFG)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_table(curves: dict) -> list[str]:
    """The plotted numbers as a markdown table: one row per model and NFE."""
    lines = ["| Model | NFE | T2I | Edit | T2I Fréchet | Edit Fréchet |", "|---|---:|---:|---:|---:|---:|"]
    for model, by_bench in sorted(curves.items()):
        nfes = sorted({n for pts in by_bench.values() for n, _, _ in pts})
        for nfe in nfes:
            cells = []
            for index in (1, 2):
                for bench in ("t2i", "edit"):
                    found = [p[index] for p in by_bench.get(bench, []) if p[0] == nfe]
                    value = found[0] if found else None
                    cells.append("—" if value is None or (isinstance(value, float) and math.isnan(value))
                                 else f"{value:.2f}" if index == 1 else f"{value:.0f}")
            lines.append(f"| {model} | {nfe} | " + " | ".join(cells) + " |")
    return lines
