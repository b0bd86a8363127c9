"""Bad input ends in one line `error: ...` naming the file, key or value, exit code 2: a representative subset of
`benchmarks/malformed_inputs.py` (which runs all of its cases in fresh processes), run here in-process."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("malformed_inputs", ROOT / "benchmarks" / "malformed_inputs.py")
sweep = importlib.util.module_from_spec(_spec)
sys.modules["malformed_inputs"] = sweep  # dataclasses look their module up there
_spec.loader.exec_module(sweep)

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> a word the one line must hold (the file, key or value at fault)
SUBSET = {
    "distill:recipe-is-png": "image.png", "distill:recipe-latin1": "not UTF-8", "distill:recipe-tabs": "line 2",
    "distill:set-lr-nan": "dmd.lr", "distill:set-no-equals": "noequals", "distill:teacher-pickle": "pickle",
    "distill:teacher-truncated": "model-truncated", "distill:teacher-json-broken": "flashdistill_model.json",
    "distill:teacher-json-bad-type": "num_layers", "distill:out-is-file": "a-file",
    "teacher:config-latin1": "latin1.yaml", "teacher:init-from-pickle": "pickle", "teacher:out-uncreatable": "/proc",
    "generate:nfe-0": "--nfe", "generate:n-0": "--n", "generate:cfg-nan": "--cfg", "generate:seed-negative": "--seed",
    "generate:model-garbage": "model-garbage", "generate:model-nan-weights": "NaN",
    "generate:model-student-json": "timesteps", "generate:out-is-folder": "empty-folder",
    "generate:out-under-file": "a-file", "generate:out-uncreatable": "/proc", "edit:image-not-png": "notes.txt",
    "bench:batch-size-0": "--batch-size", "bench:cases-binary": "binary.jsonl",
    "bench:cases-no-record-world-judge": "mine-1", "bench:cases-no-source-world-judge": "--judge vlm",
    "bench:model-nan-weights": "NaN", "bench:out-broken-run-json": "run.json", "bench:make-cases-out-folder": "folder",
    "world:world-out-folder": "folder", "judge:reader-json-uncreatable": "/proc",
    "quickstart:quickstart-out-file": "a-file",
}


@pytest.fixture(scope="module")
def all_cases(tmp_path_factory):
    cases = sweep.cases(sweep.build_fixtures(tmp_path_factory.mktemp("sweep"), runs=False))
    return {f"{c.group}:{c.name}": c for c in cases}


def test_the_sweep_has_at_least_60_cases_over_every_command(all_cases, tmp_path):
    cases = sweep.cases(sweep.build_fixtures(tmp_path, runs=False))
    assert len(cases) >= 60 and len({(c.group, c.name) for c in cases}) == len(cases)
    assert {c.group for c in cases} >= {"distill", "teacher", "generate", "edit", "bench", "world", "judge",
                                        "quickstart"}


@pytest.mark.parametrize("name", sorted(SUBSET))
def test_malformed_input_is_one_line_exit_2(all_cases, name, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    row = sweep.run_in_process(all_cases[name])
    assert not row["traceback"], row
    assert row["exit_code"] == 2 and row["stderr_lines"] == 1 and row["last_line"].startswith("error: "), row
    assert SUBSET[name] in row["last_line"], row
