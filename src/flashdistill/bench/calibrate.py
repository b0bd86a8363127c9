"""Judge calibration: run the reference models on both mini benches with the world judge and check the bars.

Bars (issue 2): `oracle` averages >= 4.7 on both benches, `noise` <= 1.3, and each degraded oracle family
(blur, noise) falls in between, decreasing monotonically with its strength.

    flashdistill bench calibrate --out runs/calibration
"""

from __future__ import annotations

from pathlib import Path

from flashdistill.bench.cases import load_cases
from flashdistill.bench.models import load_model
from flashdistill.bench.runner import run_bench
from flashdistill.bench.table import write_table
from flashdistill.bench.world_judge import WorldJudge

ORACLE_MIN, NOISE_MAX = 4.7, 1.3


def check_bars(averages: dict[str, float]) -> list[str]:
    """Human-readable failures of the calibration bars for one bench ({model: average})."""
    fails = []
    if averages.get("oracle", 0) < ORACLE_MIN:
        fails.append(f"oracle averages {averages.get('oracle')} < {ORACLE_MIN}")
    if averages.get("noise", 5) > NOISE_MAX:
        fails.append(f"noise averages {averages.get('noise')} > {NOISE_MAX}")
    for kind in ("blur", "noise"):
        family = sorted((float(m.split(":")[1]), v) for m, v in averages.items() if m.startswith(f"oracle-{kind}:"))
        chain = [averages.get("oracle", 5.0)] + [v for _, v in family] + [averages.get("noise", 1.0)]
        if any(a <= b for a, b in zip(chain, chain[1:])):
            fails.append(f"oracle-{kind} family not strictly between oracle and noise, decreasing: {chain}")
    return fails


def calibrate(out: Path, models: list[str], limit: int | None = None) -> bool:
    from flashdistill.bench.cases import BUILTIN_CASES

    judge, folders, ok = WorldJudge(), [], True
    for bench in ("t2i", "edit"):
        cases = load_cases(BUILTIN_CASES[bench], bench, limit)
        averages = {}
        for name in models:
            folder = out / f"{bench}-{name.replace(':', '_')}"
            res = run_bench(bench, load_model(name), judge, cases, folder, None, f"builtin:{BUILTIN_CASES[bench].name}")
            averages[name] = res["average"]
            folders.append(str(folder))
        fails = check_bars(averages)
        ok &= not fails
        print(f"{bench}: " + ", ".join(f"{m} {v:.2f}" for m, v in averages.items()))
        print(f"{bench}: calibration bars " + ("PASS" if not fails else "FAIL: " + "; ".join(fails)))
    write_table(folders, str(out / "table.md"))
    print(f"table: {out / 'table.md'}")
    return ok
