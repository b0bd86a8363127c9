"""Running and judging the cases of `benchmarks/malformed_qwen.py` (see its docstring for what a case must do).

`run_case(case, workdir, guard)` runs one case in a fresh process (or in this one, for tests), hashes the `guard`
paths before and after, looks for the fake API key in the output and in every file under `workdir`, and returns a
row; `summarize` and `table` give the figures and the summary table.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar
FAKE_KEY = "sk-fdsweep-0123456789abcdef0123456789abcdef"
ENV = {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "DIFFUSERS_VERBOSITY": "error",
       "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": FAKE_KEY}


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    argv: tuple[str, ...]
    expect: str = "refuse"  # refuse | fail | accept | note | either (see malformed_qwen.py's docstring)
    names: str = ""  # a word the error line must hold
    guard: tuple[str, ...] = ()  # paths another run wrote: left exactly as they were
    forbid: tuple[str, ...] = ()  # paths that must not exist afterwards
    timeout: float = 300.0


def snapshot(paths) -> dict[str, str]:
    """relative path -> sha256 of every file under `paths` (a missing path is recorded as such)."""
    out = {}
    for top in map(Path, paths):
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        out[str(top)] = "missing" if not top.exists() else "present"
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leaked(workdir: Path, text: str) -> bool:
    """The fake key in the output, or in a file the case wrote."""
    if FAKE_KEY in text:
        return True
    files = [p for p in workdir.rglob("*") if p.is_file()] if workdir.is_dir() else []
    return any(FAKE_KEY.encode() in p.read_bytes() for p in files)


def judge_row(case: Case, code: int | None, out: str, err: str, seconds: float, touched: list[str],
              leak: bool) -> dict:
    lines = [line for line in err.splitlines() if line.strip()]
    traceback = "Traceback (most recent call last)" in err
    if code is None:
        outcome = "hang"
    elif traceback:
        outcome = "traceback"
    elif code == 2 and len(lines) == 1 and lines[0].startswith("error:"):
        outcome = "clean"
    elif code == 1 and len(lines) == 1 and lines[0].startswith("error:"):
        outcome = "incomplete"
    elif code == 0:
        outcome = "accepted"
    else:
        outcome = "other"
    said = [line for line in lines if not PROGRESS.search(line)]  # a progress bar says nothing of the input
    wanted = {"refuse": outcome == "clean", "fail": outcome == "incomplete", "accept": outcome == "accepted",
              "either": outcome in ("clean", "accepted"),
              "note": outcome == "clean" or (outcome == "accepted" and bool(said))}[case.expect]
    flags = [] if wanted else ["silent acceptance" if case.expect == "refuse" and outcome == "accepted" else
                               f"expected {case.expect}, got {outcome}"]
    if outcome in ("clean", "incomplete") and case.names and case.names not in lines[0]:
        flags.append(f"the line does not name {case.names!r}")
    flags += [f"touched {p}" for p in touched[:3]] + ["the API key reached an output"] * leak
    flags += [f"refused after training began ({Path(p).name} exists)" for p in case.forbid if Path(p).exists()]
    return {"name": case.name, "group": case.group, "expect": case.expect, "outcome": outcome, "ok": not flags,
            "flags": flags, "exit_code": code, "stderr_lines": len(lines), "traceback": traceback,
            "first_line": lines[0][:300] if lines else "", "last_line": lines[-1][:300] if lines else "",
            "seconds": round(seconds, 1),
            "command": "flashdistill " + " ".join(case.argv)}


def run_case(case: Case, workdir: Path, guard: tuple[str, ...] = (), in_process: bool = False,
             command: list[str] | None = None) -> dict:
    """Run one case (`command` + its argv in a fresh process, default `python -m flashdistill`, or
    `flashdistill.cli.main` here) and judge it; `guard`: paths besides the case's own that no case may change."""
    guard = tuple(guard) + case.guard
    before = snapshot(guard)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    code, out, err = _in_process(case) if in_process else _subprocess(case, command)
    seconds = time.perf_counter() - start
    after = snapshot(guard)
    touched = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return judge_row(case, code, out, err, seconds, touched, leaked(Path(workdir), out + err))


def _subprocess(case: Case, command: list[str] | None) -> tuple[int | None, str, str]:
    env = {**os.environ, **ENV}
    command = command or [sys.executable, "-m", "flashdistill"]
    try:
        proc = subprocess.run([*command, *case.argv], capture_output=True, text=True, env=env,
                              timeout=case.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as err:
        return None, _text(err.stdout), _text(err.stderr)
    return proc.returncode, proc.stdout, proc.stderr


def _text(data) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data or ""


def _in_process(case: Case) -> tuple[int, str, str]:
    from malformed_inputs import call_cli  # the embedded sweep's in-process runner

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        return call_cli(case.argv)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def summarize(rows: list[dict]) -> dict:
    outcomes = ("clean", "incomplete", "accepted", "traceback", "hang", "other")
    groups = sorted({r["group"] for r in rows})
    return {"cases": len(rows), "ok": sum(r["ok"] for r in rows),
            **{o: sum(r["outcome"] == o for r in rows) for o in outcomes},
            "silent_acceptances": sum("silent acceptance" in r["flags"] for r in rows),
            "touched_another_run": sum(any(x.startswith("touched") for x in r["flags"]) for r in rows),
            "key_leaks": sum("the API key reached an output" in r["flags"] for r in rows),
            "groups": {g: f"{sum(r['ok'] for r in rows if r['group'] == g)}/"
                          f"{sum(r['group'] == g for r in rows)}" for g in groups}}


def table(rows: list[dict], summary: dict) -> str:
    lines = [f"{'':4} {'outcome':10} {'exit':>4} {'case':<44} last line / what is wrong"]
    for r in rows:
        why = "; ".join(r["flags"]) if r["flags"] else r["last_line"]
        lines.append(f"{'ok' if r['ok'] else 'FAIL':4} {r['outcome']:10} {str(r['exit_code']):>4} "
                     f"{r['group'] + ':' + r['name']:<44} {why[:140]}")
    lines.append("")
    lines.append(f"{summary['ok']}/{summary['cases']} ok; " + ", ".join(
        f"{k} {summary[k]}" for k in ("clean", "incomplete", "accepted", "traceback", "hang", "other",
                                      "silent_acceptances",
                                      "touched_another_run", "key_leaks")))
    lines.append("per group (ok/cases): " + ", ".join(f"{g} {v}" for g, v in summary["groups"].items()))
    return "\n".join(lines)


