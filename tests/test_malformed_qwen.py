"""Bad input on the Qwen-Image path ends in one line `error: ...` naming the file, key or value, exit code 2: a fast
subset of `benchmarks/malformed_qwen.py` (which runs all of its cases in fresh processes), run here in-process, and
the sweep's own judging (what counts as clean, a silent acceptance, a touched run, a leaked key)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("malformed_qwen", ROOT / "benchmarks" / "malformed_qwen.py")
sweep = importlib.util.module_from_spec(_spec)
sys.modules["malformed_qwen"] = sweep
_spec.loader.exec_module(sweep)
from qwen_sweep_run import FAKE_KEY, Case, judge_row, run_case  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# GROUP:NAME of cases that end before any model is loaded (the `names` word of each is checked too)
SUBSET = ("plan:teachers-1e9", "plan:world-size-1e30", "plan:resolution-17", "plan:set-on-a-model",
          "plan:config-layers-200k", "plan:config-layers-word", "plan:config-list", "plan:out-is-folder",
          "recipe:composition-1e308", "recipe:batch-1e7", "recipe:threads-1e9", "recipe:device-banana",
          "qwen:lora-rank-1e9", "qwen:lora-std-1e300", "qwen:lora-std-0", "qwen:lora-out-folder",
          "qwen:lora-base-not-pipeline", "cache:device-banana", "cache:device-absent", "cache:vae-area-0",
          "data:prompts-bad-json", "data:prompts-missing-field", "data:prompts-binary",
          "runs:random-lora-over-a-lora", "runs:tiny-folder-over-a-pipeline", "vlm:key-rejected",
          # the classes the other parts of issue 24 fixed: JSON records, images, LoRA files, YAML, bounds
          "data:prompts-deep", "data:edits-image-bomb", "data:edits-image-4000x1", "data:edits-image-grey16",
          "folder:base-index-deep", "folder:base-weights-missing", "folder:base-config-bad-type",
          "lora:lora-wrong-shapes", "lora:lora-full-transformer", "lora:lora-nan", "recipe:yaml-duplicate-group",
          "recipe:yaml-alias-bomb", "recipe:lora-rank-1e9")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from hostile_vlm import HostileServer

    f = sweep.fx.build(tmp_path_factory.mktemp("qwen-sweep"), full=False)
    with HostileServer() as server:
        yield f, {f"{c.group}:{c.name}": c for c in sweep.cases(f, server)}


def test_the_sweep_has_at_least_80_cases_over_every_kind_of_input(world):
    _, cases = world  # without the cache and the runs: the full sweep adds cache, resume, runs and export cases
    assert len(cases) >= 80
    assert {c.group for c in cases.values()} >= {"data", "folder", "lora", "cache", "plan", "recipe", "qwen", "vlm"}
    assert set(SUBSET) <= set(cases)


@pytest.mark.parametrize("name", SUBSET)
def test_malformed_input_is_one_line_exit_2(world, name, monkeypatch):
    f, cases = world
    monkeypatch.setenv("TQDM_DISABLE", "1")
    row = sweep.run(cases[name], f, in_process=True)
    assert row["ok"], row
    assert row["outcome"] == "clean" and row["stderr_lines"] == 1 and row["last_line"].startswith("error: "), row


def _case(**kw) -> Case:
    return Case("x", "g", ("plan", "qwen-image"), **kw)


@pytest.mark.parametrize("kw, code, err, outcome, flag", [
    ({}, 2, "error: --x: bad\n", "clean", None),
    ({"names": "--y"}, 2, "error: --x: bad\n", "clean", "does not name '--y'"),
    ({}, 0, "", "accepted", "silent acceptance"),
    ({}, 1, "Traceback (most recent call last):\n  ...\nValueError: x\n", "traceback", "got traceback"),
    ({}, None, "", "hang", "got hang"),
    ({}, 2, "warning: x\nerror: y\n", "other", "got other"),
    ({"expect": "fail"}, 1, "error: every case of text failed\n", "incomplete", None),  # a judge that scored nothing
    ({}, 1, "error: every case of text failed\n", "incomplete", "expected refuse, got incomplete"),
    ({"expect": "fail"}, 2, "error: --x: bad\n", "clean", "expected fail, got clean"),
    ({"expect": "accept"}, 0, "", "accepted", None),
    ({"expect": "note"}, 0, "", "accepted", "expected note"),  # converted without a word
    ({"expect": "note"}, 0, "note: converted to RGB\n", "accepted", None),
])
def test_the_sweep_judges_endings(kw, code, err, outcome, flag):
    row = judge_row(_case(**kw), code, "", err, 1.0, [], False)
    assert row["outcome"] == outcome and row["ok"] == (flag is None)
    assert flag is None or any(flag in x for x in row["flags"]), row


def test_a_touched_run_or_a_leaked_key_fails_the_case(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("another run's file")
    work = tmp_path / "work"
    script = f"open({str(victim)!r}, 'a').write('!'); open({str(work / 'out.txt')!r}, 'w').write({FAKE_KEY!r})"
    case = Case("x", "g", ("-c", script), guard=(str(victim),))
    row = run_case(case, work, in_process=False, command=[sys.executable])
    assert not row["ok"] and any(x.startswith("touched") for x in row["flags"])
    assert "the API key reached an output" in row["flags"]
