"""A sweep of malformed inputs across every command: each must end in one line `error: ...` and exit code 2.

    python benchmarks/malformed_inputs.py --out benchmarks/results/malformed_inputs.json [--jobs 2] [--only NAME]

Every case runs `python -m flashdistill ARGS` in a fresh process against fixtures built in a temporary folder
(tiny random teachers; copies of them with pickle-only, truncated or garbage weights, broken model JSON, NaN
weights; a distillation run and a teacher run of two steps with damaged checkpoints; non-UTF-8 and binary files;
unwritable output paths). A row per case: name, group, command, exit code, stderr line count, whether a traceback
appeared, the last stderr line, and `ok` = exit code 2, exactly one stderr line, starting `error:`, no traceback.
`tests/test_malformed_inputs.py` runs a representative subset of the same cases in-process in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_TEACHER = ROOT / "configs" / "teacher_tiny.yaml"
TINY_RECIPE = ROOT / "configs" / "distill_tiny.yaml"
UNCREATABLE = "/proc/flashdistill-sweep/out"  # no process can create anything under /proc, root included


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    argv: tuple[str, ...]


# ---- fixtures ---------------------------------------------------------------------------------------------
def _model_folders(root: Path) -> dict[str, Path]:
    """A good tiny model folder and damaged copies of it."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from flashdistill.models.mmdit import FlowModel, MMDiTConfig

    torch.manual_seed(0)
    good = root / "model-good"
    FlowModel(MMDiTConfig.tiny()).save_pretrained(good)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    f = {"good": good}
    for name in ("pickle", "truncated", "garbage", "json-broken", "json-list", "json-bad-type", "json-no-config",
                 "no-transformer-config", "nan"):
        f[name] = root / f"model-{name}"
        shutil.copytree(good, f[name])
    state = load_file(str(good / weights))
    (f["pickle"] / weights).unlink()
    torch.save(state, f["pickle"] / "transformer" / "diffusion_pytorch_model.bin")
    data = (good / weights).read_bytes()
    (f["truncated"] / weights).write_bytes(data[: len(data) // 2])
    (f["garbage"] / weights).write_bytes(b"\x00garbage" * 64)
    (f["json-broken"] / "flashdistill_model.json").write_text('{"format": 1, "model": "mmdit", "config": {')
    (f["json-list"] / "flashdistill_model.json").write_text("[1, 2, 3]\n")
    meta = json.loads((good / "flashdistill_model.json").read_text())
    (f["json-bad-type"] / "flashdistill_model.json").write_text(
        json.dumps({**meta, "config": {**meta["config"], "num_layers": "two"}}))
    (f["json-no-config"] / "flashdistill_model.json").write_text(json.dumps({"format": 1, "model": "mmdit"}))
    (f["no-transformer-config"] / "transformer" / "config.json").unlink()
    nan = FlowModel.from_pretrained(f["nan"])
    with torch.no_grad():
        nan.transformer.proj_out.weight.fill_(float("nan"))
    nan.save_pretrained(f["nan"])
    return f


def _files(root: Path) -> dict[str, Path]:
    """Text files that are not what they claim to be."""
    from PIL import Image

    f = {"png": root / "image.png", "latin1": root / "latin1.yaml", "binary": root / "binary.jsonl",
         "badjson": root / "bad.jsonl", "nokey": root / "nokey.jsonl", "norecord": root / "norecord.jsonl",
         "noworld_edit": root / "noworld_edit.jsonl", "tabs": root / "tabs.yaml", "list": root / "list.yaml",
         "unknown_key": root / "unknown.yaml", "text": root / "notes.txt", "file": root / "a-file"}
    Image.new("RGB", (32, 32), (200, 10, 10)).save(f["png"])
    f["latin1"].write_bytes("# recette d'été\nteachers: {base: teacher:base}\n".encode("latin-1"))
    f["binary"].write_bytes(bytes(range(256)) * 4)
    f["badjson"].write_text('{"id": "a", "category": "landscape", "prompt": "x", "seed": 0}\n{"id": "b",\n')
    f["nokey"].write_text('{"id": "a", "category": "landscape", "seed": 0}\n')
    f["norecord"].write_text('{"id": "mine-1", "category": "landscape", "prompt": "a lake at night", "seed": 0}\n')
    f["noworld_edit"].write_text(json.dumps({"id": "e1", "category": "style_transfer", "instruction": "sepia",
                                             "seed": 0, "source_image": str(f["png"])}) + "\n")
    f["tabs"].write_text("teachers:\n\tbase: teacher:base\n")
    f["list"].write_text("- teachers\n- dmd\n")
    f["unknown_key"].write_text("teachers: {base: teacher:base}\ndmd: {learning_rate: 0.1}\n")
    f["text"].write_text("not an image\n")
    f["file"].write_text("a file where a folder is wanted\n")
    return f


def _folders(root: Path, models: dict[str, Path]) -> dict[str, Path]:
    """A student folder and bench folders whose records are broken, a folder that holds another run, an empty one."""
    import shutil

    r = {"cache": root / "text-cache"}
    r["student_json"] = root / "student-broken"
    shutil.copytree(models["good"], r["student_json"])
    (r["student_json"] / "student.json").write_text('{"format": 1, "timesteps": "four"}')
    r["bench_broken"] = root / "bench-broken"
    r["bench_broken"].mkdir()
    (r["bench_broken"] / "run.json").write_text('{"bench": "t2i", "model"')
    (r["bench_broken"] / "results.json").write_text("{not json")
    r["bench_other"] = root / "bench-other"
    r["bench_other"].mkdir()
    (r["bench_other"] / "run.json").write_text(json.dumps({"bench": "t2i", "model": "noise"}))
    (r["bench_other"] / "results.json").write_text(json.dumps({
        "bench": "t2i", "model": "noise", "nfe": None, "judge": "world", "n_cases": 3, "n_failed": 0,
        "per_category": {"landscape": 1.0}, "average": 1.0}))
    r["empty"] = root / "empty-folder"
    r["empty"].mkdir()
    return r


def _runs(root: Path, models: dict[str, Path]) -> dict[str, Path]:
    """A distillation run and a teacher run of two steps whose only checkpoint is damaged (a few seconds)."""
    import shutil

    from flashdistill.distill.recipe import load_recipe
    from flashdistill.distill.trainer import train_distill
    from flashdistill.models.text import TextEncoder
    from flashdistill.teacher.config import load_config
    from flashdistill.teacher.train import train_teacher

    encoder, cache = TextEncoder(), root / "text-cache"
    r = {}
    recipe = load_recipe(TINY_RECIPE, [f"teachers.base={models['good']}", f"teachers.specialized={models['good']}",
                                       f"run.text_cache={cache}", "run.checkpoint_every=2"])
    r["distill"] = root / "distill-truncated"
    train_distill(recipe, r["distill"], encoder=encoder, stop_after=2)
    for name in ("student", "ema"):  # truncated: neither --resume nor a student read from the run can load it
        weights = r["distill"] / "checkpoint" / f"{name}.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    r["distill_state"] = root / "distill-state"
    shutil.copytree(r["distill"], r["distill_state"])
    (r["distill_state"] / "checkpoint" / "state.json").write_text("{torn")
    config = load_config(TINY_TEACHER, [f"run.text_cache={cache}", "run.checkpoint_every=2"])
    r["teacher"] = root / "teacher-garbage"
    train_teacher(config, r["teacher"], encoder=encoder, stop_after=2)
    (r["teacher"] / "checkpoint" / "ema.safetensors").write_bytes(b"garbage" * 32)
    return r


def build_fixtures(root: Path, runs: bool = True) -> dict[str, Path]:
    """Every fixture the cases use; `runs=False` skips the two training runs (and so the cases that need them)."""
    root.mkdir(parents=True, exist_ok=True)
    models = _model_folders(root)
    fixtures = {**{f"model:{k}": v for k, v in models.items()}, **_files(root), **_folders(root, models)}
    if runs:
        fixtures.update(_runs(root, models))
    return fixtures


# ---- cases ------------------------------------------------------------------------------------------------
def _distill(f, name, *sets, recipe=None, out=None, resume=False) -> Case:
    base = [f"teachers.base={f['model:good']}", f"teachers.specialized={f['model:good']}",
            f"run.text_cache={f['cache']}"]
    out = str(out or f["cache"].parent / f"distill-{name}")
    return Case(name, "distill", ("distill", str(recipe or TINY_RECIPE), "--out", out, *(["--resume"] * resume),
                                  "--set", *base, *sets))


def _teacher(f, name, *sets, config=None, sub="train", out=None, resume=False) -> Case:
    out = str(out or f["cache"].parent / f"teacher-{name}")
    return Case(name, "teacher", ("teacher", sub, str(config or TINY_TEACHER), "--out", out,
                                  *(["--resume"] * resume), "--set", f"run.text_cache={f['cache']}", *sets))


def _gen(f, name, *args, model=None, out=None) -> Case:
    return Case(name, "generate", ("generate", "--model", str(model or f["model:good"]), "--prompt", "a red sign",
                                   "--out", str(out or f["cache"].parent / f"gen-{name}.png"), *args))


def _edit(f, name, image, *args) -> Case:
    return Case(name, "edit", ("edit", "--model", str(f["model:good"]), "--image", str(image), "--instruction",
                               "make it blue", "--out", str(f["cache"].parent / f"edit-{name}.png"), *args))


def _bench(f, name, *args, bench="t2i", model="oracle", out=None) -> Case:
    return Case(name, "bench", ("bench", bench, "--model", str(model), "--limit", "1", "--out",
                                str(out or f["cache"].parent / f"bench-{name}"), *args))


def cases(f: dict[str, Path]) -> list[Case]:
    """Every case of the sweep (those needing the training runs only when `f` has them)."""
    return [c for c in _all_cases(f) if c is not None]


def _all_cases(f: dict[str, Path]) -> list[Case | None]:
    m = {k.split(":", 1)[1]: v for k, v in f.items() if k.startswith("model:")}
    runs = "distill" in f
    damaged = ("pickle", "truncated", "garbage", "json-broken", "json-list", "json-bad-type", "json-no-config",
               "no-transformer-config")
    return [
        # recipes and their values
        _distill(f, "recipe-missing", recipe=f["cache"].parent / "nope.yaml"),
        _distill(f, "recipe-is-folder", recipe=f["empty"]),
        _distill(f, "recipe-is-png", recipe=f["png"]),
        _distill(f, "recipe-latin1", recipe=f["latin1"]),
        _distill(f, "recipe-tabs", recipe=f["tabs"]),
        _distill(f, "recipe-list", recipe=f["list"]),
        _distill(f, "recipe-unknown-key", recipe=f["unknown_key"]),
        _distill(f, "set-no-equals", "noequals"),
        _distill(f, "set-lr-negative", "dmd.lr=-1"),
        _distill(f, "set-lr-nan", "dmd.lr=.nan"),
        _distill(f, "set-lr-word", "dmd.lr=fast"),
        _distill(f, "set-batch-0", "dmd.batch_size=0"),
        _distill(f, "set-iterations-neg", "dmd.iterations=-1"),
        _distill(f, "set-nfe-0", "student.nfe=0"),
        _distill(f, "set-ratio", "tasks.ratio=5-5"),
        _distill(f, "set-guidance-sum", "guidance.default.base=0.9"),
        _distill(f, "set-unknown-group", "dmdd.lr=1"),
        *[_distill(f, f"teacher-{d}", f"teachers.base={m[d]}") for d in damaged],
        _distill(f, "teacher-missing", f"teachers.base={f['cache'].parent / 'no-such-teacher'}"),
        _distill(f, "out-is-file", out=f["file"]),
        _distill(f, "out-uncreatable", out=UNCREATABLE),
        _distill(f, "resume-truncated-checkpoint", out=f["distill"], resume=True) if runs else None,
        _distill(f, "resume-broken-state-json", out=f["distill_state"], resume=True) if runs else None,
        # teacher configs
        _teacher(f, "config-missing", config=f["cache"].parent / "nope.yaml"),
        _teacher(f, "config-is-png", config=f["png"]),
        _teacher(f, "config-latin1", config=f["latin1"]),
        _teacher(f, "lr-negative", "train.lr=-1"),
        _teacher(f, "steps-0", "train.steps=0"),
        _teacher(f, "preset-unknown", "model.preset=huge"),
        _teacher(f, "init-from-missing", "run.init_from=/no/such/teacher"),
        _teacher(f, "init-from-pickle", f"run.init_from={m['pickle']}"),
        _teacher(f, "out-is-file", out=f["file"]),
        _teacher(f, "out-uncreatable", out=UNCREATABLE),
        _teacher(f, "resume-garbage-checkpoint", out=f["teacher"], resume=True) if runs else None,
        _teacher(f, "specialize-without-base", sub="specialize"),
        # generate / edit values, models and outputs
        _gen(f, "nfe-0", "--nfe", "0"),
        _gen(f, "nfe-word", "--nfe", "abc"),
        _gen(f, "n-0", "--n", "0"),
        _gen(f, "n-negative", "--n", "-3"),
        _gen(f, "seed-negative", "--seed", "-1"),
        _gen(f, "cfg-nan", "--cfg", "nan"),
        _gen(f, "cfg-negative", "--cfg", "-2"),
        _gen(f, "resolution-0", "--resolution", "0"),
        _gen(f, "model-unknown", model="no-such-model"),
        _gen(f, "model-reference", model="oracle"),
        _gen(f, "model-teacher-unknown", model="teacher:huge"),
        *[_gen(f, f"model-{d}", model=m[d]) for d in damaged],
        _gen(f, "model-nan-weights", model=m["nan"]),
        _gen(f, "model-student-json", model=f["student_json"]),
        _gen(f, "model-truncated-checkpoint-run", model=f["distill"]) if runs else None,
        _gen(f, "out-is-folder", out=f["empty"]),
        _gen(f, "out-under-file", out=f["file"] / "x.png"),
        _gen(f, "out-uncreatable", out=UNCREATABLE + "/x.png"),
        _edit(f, "image-missing", f["cache"].parent / "nope.png"),
        _edit(f, "image-not-png", f["text"]),
        _edit(f, "nfe-0", f["png"], "--nfe", "0"),
        # benchmarks
        _bench(f, "batch-size-0", "--batch-size", "0"),
        _bench(f, "limit-0", "--limit", "0"),
        _bench(f, "nfe-0", "--nfe", "0"),
        _bench(f, "resolution-17", "--resolution", "17"),
        _bench(f, "category-unknown", "--category", "beach"),
        _bench(f, "concurrency-0", "--judge", "vlm", "--vlm-concurrency", "0"),
        _bench(f, "vlm-no-url", "--judge", "vlm"),
        _bench(f, "vlm-bad-url", "--judge", "vlm", "--vlm-base-url", "ftp://x", "--vlm-model", "m"),
        _bench(f, "cases-missing", "--cases", str(f["cache"].parent / "nope.jsonl")),
        _bench(f, "cases-binary", "--cases", str(f["binary"])),
        _bench(f, "cases-latin1", "--cases", str(f["latin1"])),
        _bench(f, "cases-png", "--cases", str(f["png"])),
        _bench(f, "cases-bad-json", "--cases", str(f["badjson"])),
        _bench(f, "cases-missing-key", "--cases", str(f["nokey"])),
        _bench(f, "cases-no-record-world-judge", "--cases", str(f["norecord"]), model="noise"),
        _bench(f, "cases-no-source-world-judge", "--cases", str(f["noworld_edit"]), bench="edit", model="noise"),
        _bench(f, "model-strength-word", model="oracle-blur:abc"),
        _bench(f, "model-nan-weights", model=m["nan"]),
        _bench(f, "model-garbage", model=m["garbage"]),
        _bench(f, "out-is-file", out=f["file"]),
        _bench(f, "out-uncreatable", out=UNCREATABLE),
        _bench(f, "out-broken-run-json", out=f["bench_broken"]),
        _bench(f, "out-another-run", out=f["bench_other"]),
        Case("table-no-results", "bench", ("bench", "table", str(f["empty"]), "--out", str(f["empty"] / "t.md"))),
        Case("table-broken-results", "bench", ("bench", "table", str(f["bench_broken"]), "--out",
                                               str(f["empty"] / "t.md"))),
        Case("table-out-uncreatable", "bench", ("bench", "table", str(f["bench_other"]), "--out",
                                                UNCREATABLE + "/t.md")),
        Case("make-cases-n-0", "bench", ("bench", "make-cases", "--bench", "t2i", "--n", "0", "--out",
                                         str(f["empty"] / "c.jsonl"))),
        Case("make-cases-out-folder", "bench", ("bench", "make-cases", "--bench", "t2i", "--n", "1", "--out",
                                                str(f["empty"]))),
        Case("calibrate-limit-0", "bench", ("bench", "calibrate", "--limit", "0")),
        Case("calibrate-model-unknown", "bench", ("bench", "calibrate", "--limit", "1", "--models", "bogus",
                                                  "--out", str(f["empty"] / "cal"))),
        # world, judge, quickstart
        Case("world-n-0", "world", ("world", "sample", "--category", "text", "--n", "0", "--out",
                                    str(f["empty"] / "w.png"))),
        Case("world-resolution-17", "world", ("world", "sample", "--category", "text", "--resolution", "17",
                                              "--out", str(f["empty"] / "w.png"))),
        Case("world-out-folder", "world", ("world", "sample", "--category", "text", "--n", "1", "--out",
                                           str(f["empty"]))),
        Case("world-start-negative", "world", ("world", "sample", "--category", "text", "--start", "-5", "--out",
                                               str(f["empty"] / "w.png"))),
        Case("legibility-n-0", "world", ("world", "legibility", "--n", "0")),
        Case("reader-garbage", "judge", ("judge", "eval-reader", "--n", "1", "--weights", str(f["binary"]))),
        Case("reader-n-0", "judge", ("judge", "eval-reader", "--n", "0")),
        Case("reader-json-uncreatable", "judge", ("judge", "eval-reader", "--n", "1", "--json",
                                                  UNCREATABLE + "/r.json")),
        Case("train-reader-steps-0", "judge", ("judge", "train-reader", "--steps", "0", "--out",
                                               str(f["empty"] / "r.safetensors"))),
        Case("quickstart-preset", "quickstart", ("quickstart", "--preset", "huge", "--out", str(f["empty"] / "q"))),
        Case("quickstart-set", "quickstart", ("quickstart", "--preset", "tiny", "--out", str(f["empty"] / "q"),
                                              "--set", "dmd.lr=-1")),
        Case("quickstart-out-file", "quickstart", ("quickstart", "--preset", "tiny", "--out", str(f["file"]))),
    ]


# ---- running ----------------------------------------------------------------------------------------------
def _row(case: Case, code: int, err: str, seconds: float) -> dict:
    lines = [line for line in err.splitlines() if line.strip()]
    traceback = "Traceback (most recent call last)" in err
    ok = code == 2 and len(lines) == 1 and lines[0].startswith("error:") and not traceback
    return {"name": case.name, "group": case.group, "command": "flashdistill " + " ".join(case.argv),
            "exit_code": code, "stderr_lines": len(lines), "traceback": traceback,
            "last_line": lines[-1][:300] if lines else "", "ok": ok, "seconds": round(seconds, 2)}


def run_subprocess(case: Case) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flashdistill", *case.argv], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    return _row(case, proc.returncode, proc.stderr, time.perf_counter() - start)


def call_cli(argv: list[str]) -> tuple[int, str, str]:
    """`flashdistill.cli.main(argv)` in this process: (exit code, stdout, stderr), an escaped exception printed as
    the traceback a user would see (what the sweeps look for). Shared with benchmarks/qwen_sweep_run.py."""
    import traceback

    from flashdistill.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what the sweep looks for
            traceback.print_exc()
            code = 1
    return code, out.getvalue(), err.getvalue()


def run_in_process(case: Case) -> dict:
    """The same case through `flashdistill.cli.main` in this process (for tests): a traceback is an exception."""
    start = time.perf_counter()
    code, _, err = call_cli(case.argv)
    return _row(case, code, err, time.perf_counter() - start)


def summarize(rows: list[dict]) -> dict:
    return {"cases": len(rows), "ok": sum(r["ok"] for r in rows),
            "exit_code_2": sum(r["exit_code"] == 2 for r in rows),
            "one_line": sum(r["stderr_lines"] == 1 for r in rows),
            "tracebacks": sum(r["traceback"] for r in rows),
            "silent_acceptances": sum(r["exit_code"] == 0 for r in rows),
            "groups": sorted({r["group"] for r in rows})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/malformed_inputs.json")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases (GROUP:NAME)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="fd-sweep-") as tmp:
        with contextlib.redirect_stderr(io.StringIO()):
            fixtures = build_fixtures(Path(tmp))
        todo = [c for c in cases(fixtures) if args.only is None or f"{c.group}:{c.name}" in args.only]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(run_subprocess, todo))
    for row in rows:
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['exit_code']:>3} {row['stderr_lines']:>2} "
              f"{row['group'] + ':' + row['name']:<44} {row['last_line'][:100]}")
    summary = summarize(rows)
    print(json.dumps(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "command": "python benchmarks/malformed_inputs.py", "rows": rows},
                              indent=1) + "\n")
    return 0 if summary["ok"] == summary["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
