"""`flashdistill study STUDY --recipe RECIPE` on your own model (studies/own.py): a tiny edit-plus Qwen-Image
folder written with diffusers' classes, a LoRA teacher, a prompts file of three categories, edits, eval files, and
a local fake OpenAI-compatible judge (127.0.0.1). All three studies run with --preset tiny and write study.md over
the user's categories with verdicts; a study killed mid-way resumes and keeps what finished; a judge outage on the
final evaluation ends with exit 1 and the same command judges only what is missing; bad input is one line, exit 2;
the cost line uses the measured figures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from flashdistill.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "qwen-image-flash.yaml")
PROMPTS = [("a lake at dawn", "landscape"), ("snowy peaks", "landscape"), ("an old man smiling", "portrait"),
           ("a girl in a red hat", "portrait"), ("a sign that reads OPEN", "text"), ("a poster saying SALE", "text")]
EDITS = [("a", "make it winter", "style"), ("b", "replace the word with HELLO", "text_editing")]
EVAL = [("a red barn", "landscape"), ("a woman with glasses", "portrait"), ("a label saying JAM", "text")]
EVAL_EDITS = [("c", "make it a watercolour", "style_transfer"), ("d", "write CLOSED on the sign", "text_editing")]
FAST = ["dmd.bf16=false", "run.device=cpu", "run.threads=1", "run.log_every=1", "dmd.lr=1e-2"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, the --set of configs/qwen-image-flash.yaml naming the folder, teacher, files, cache)."""
    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    root = tmp_path_factory.mktemp("own-study")
    base = write_tiny_folder(root / "base", "edit-plus")
    lora = write_random_lora(base, root / "specialized.safetensors", rank=4)
    rng = np.random.default_rng(0)
    for name in "abcd":
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
    edits = lambda rows: [{"image": f"{n}.png", "instruction": i, "category": c} for n, i, c in rows]  # noqa: E731
    sets = [f"teachers.base={base}", f"teachers.specialized={lora}",
            f"data.prompts={_jsonl(root / 'p.jsonl', [{'prompt': p, 'category': c} for p, c in PROMPTS])}",
            f"data.edits={_jsonl(root / 'e.jsonl', edits(EDITS))}",
            f"eval.prompts={_jsonl(root / 'ep.jsonl', [{'prompt': p, 'category': c} for p, c in EVAL])}",
            f"eval.edits={_jsonl(root / 'ee.jsonl', edits(EVAL_EDITS))}",
            f"run.text_cache={root / 'cache'}", "data.resolution=64"]
    assert main(["cache", RECIPE, "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 0
    return root, sets


def rubric_server():
    """The fake judge, replying in the rubric each request asks for: T2I's, or its edit category's (known from the
    instruction); a scripted reply (`push`) first. One request at a time (eval.vlm_concurrency=1), so the last
    request recorded is the one being answered."""
    import queue

    from test_vlm_judge import FakeServer, edit_reply, ok

    class RubricServer(FakeServer):
        def next_action(self) -> dict:
            try:
                return self.script.get_nowait()
            except queue.Empty:
                pass
            text = json.dumps(self.requests[-1]["messages"][1]["content"][0])
            for _, instruction, category in EVAL_EDITS:
                if f"Edit instruction: {instruction}" in text:
                    return ok(edit_reply(category, overall=3.0))
            return ok({"score": 3.0, "reasoning": "default"})

    return RubricServer()


@pytest.fixture
def judge(monkeypatch):
    """The fake judge and the --set naming it (its key in an environment variable only)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("FAKE_VLM_KEY", "sk-own-study-never-written-42")
    server = rubric_server()
    yield server, [f"eval.vlm_base_url={server.url}", "eval.vlm_model=fake", "eval.vlm_api_key_env=FAKE_VLM_KEY",
                   "eval.vlm_concurrency=1"]
    server.close()


def _study(name: str, out: Path, sets: list[str], *extra: str) -> int:
    return main(["study", name, "--recipe", RECIPE, "--preset", "tiny", "--seeds", "1", "--out", str(out),
                 *extra, "--set", *sets])


@pytest.mark.parametrize("name, arms, columns", [
    ("data-composition", ["only-landscape", "only-portrait", "only-text", "all", "mix-landscape+portrait"],
     ["landscape", "portrait", "text"]),
    ("teacher-guidance", ["base", "specialized", "stepwise"], ["landscape", "portrait", "text"]),
    ("task-mixture", ["t2i-only", "9to1", "7to3", "5to5"], ["style_transfer", "text_editing"]),
])
def test_each_study_runs_tiny_and_reports_over_your_categories(world, judge, tmp_path, capsys, name, arms, columns):
    _, sets = world
    server, judged = judge
    out = tmp_path / name
    extra = ["--mix", "landscape+portrait"] if name == "data-composition" else []
    assert _study(name, out, [*sets, *FAST, *judged], *extra) == 0
    printed = capsys.readouterr().out
    assert f"study {name} on {RECIPE}: {len(arms)} arms × 1 seeds" in printed and "VLM judge calls" in printed
    report = json.loads((out / "study.json").read_text())
    assert [row["arm"] for row in report["tables"]["t2i"]] == arms
    md = (out / "study.md").read_text()
    table = md.split("| arm | ", 1)[1].split("\n", 1)[0]
    assert all(c in table for c in columns) and "VLM judge" in md
    assert report["findings"] and all(f["verdict"] in ("confirmed", "refuted", "inconclusive")
                                      for f in report["findings"])
    assert "**inconclusive**" in md  # one seed: no interval
    for arm in arms:
        done = json.loads((out / "arms" / arm / "seed0" / "done.json").read_text())
        assert done["train"]["iterations"] == 2
        for bench, result in done["bench"].items():
            assert result["n_failed"] == 0 and result["average"] == pytest.approx(3.0)  # the fake judge's score
            assert (out / "arms" / arm / "seed0" / "bench" / bench / "cases.jsonl").is_file()
    assert (out / "curves.png").is_file()
    key = os.environ["FAKE_VLM_KEY"].encode()
    assert not any(key in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_a_judge_outage_ends_with_exit_1_and_the_same_command_judges_only_what_is_missing(world, judge, tmp_path,
                                                                                          capsys):
    from test_vlm_judge import ok, status

    _, sets = world
    server, judged = judge
    out = tmp_path / "tg"
    args = [*sets, *FAST, *judged]
    # arm `base`: the first evaluation's 3 items judged; the final evaluation's 3 fail, and so does the study's
    # second try of them (from their PNGs) in the same call
    server.push(*[ok({"score": 4.0, "reasoning": "fine"})] * 3, *[status(400, "bad request")] * 6)
    assert main(["study", "teacher-guidance", "--recipe", RECIPE, "--preset", "tiny", "--seeds", "1", "--out",
                 str(out), "--arms", "base", "--set", *args]) == 1
    err = capsys.readouterr().err
    assert "base seed 0: the judge scored no reply for 3 of the final student's samples" in err
    assert not (out / "arms" / "base" / "seed0" / "done.json").exists()
    before = len(server.requests)
    assert main(["study", "teacher-guidance", "--recipe", RECIPE, "--preset", "tiny", "--seeds", "1", "--out",
                 str(out), "--arms", "base", "--set", *args]) == 0
    assert len(server.requests) - before == 3  # the missing three, from their PNGs; no training, no new samples
    done = json.loads((out / "arms" / "base" / "seed0" / "done.json").read_text())
    assert done["bench"]["t2i"]["n_failed"] == 0 and done["bench"]["t2i"]["average"] == pytest.approx(3.0)


def test_a_killed_study_resumes_and_keeps_what_finished(world, judge, tmp_path):
    _, sets = world
    server, judged = judge
    out = tmp_path / "mix"
    cmd = [sys.executable, "-m", "flashdistill", "study", "task-mixture", "--recipe", RECIPE, "--preset", "tiny",
           "--seeds", "1", "--out", str(out), "--set", *sets, *FAST, *judged]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "arms" / "t2i-only" / "seed0" / "done.json"
    deadline = time.time() + 300
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.is_file(), proc.stderr.read().decode()[-2000:]
    kept = first.read_bytes(), first.stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 runs, 4 to do" not in done.stdout  # what finished before the kill is not run again
    assert (first.read_bytes(), first.stat().st_mtime_ns) == kept
    assert all((out / "arms" / a / "seed0" / "done.json").is_file() for a in ("9to1", "7to3", "5to5"))
    # the same folder with another recipe setting is refused, naming it
    again = subprocess.run([*cmd, "dmd.lr=1e-3"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "dmd.lr" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("name, drop, extra, message", [
    ("teacher-guidance", "teachers.specialized", ["teachers.specialized=null"], "teachers"),
    ("task-mixture", "eval.edits", ["eval.edits=null"], "eval.edits: not set"),
    ("data-composition", None, ["eval.judge=none"], "--set eval.judge=none: the study sets eval.judge itself"),
    ("data-composition", None, ["dmd.iterations=3", "eval.every=2"], "eval.every: 2 does not divide dmd.iterations 3"),
    ("task-mixture", None, ["eval.vlm_model=null"], "eval.judge: vlm needs eval.vlm_base_url and eval.vlm_model"),
])
def test_bad_input_is_one_line_and_exit_2(world, judge, tmp_path, capsys, name, drop, extra, message):
    _, sets = world
    _, judged = judge
    sets = [s for s in sets if drop is None or not s.startswith(drop + "=")]
    assert _study(name, tmp_path / "x", [*sets, *FAST, *judged, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_mixes_torchrun_and_dry_run(world, judge, tmp_path, capsys, monkeypatch):
    _, sets = world
    _, judged = judge
    args = [*sets, *FAST, *judged]
    assert _study("data-composition", tmp_path / "x", args, "--mix", "landscape+sky") == 2
    assert "--mix landscape+sky" in capsys.readouterr().err
    assert _study("task-mixture", tmp_path / "x", args, "--mix", "landscape+portrait") == 2
    assert "only the data-composition study has mixes" in capsys.readouterr().err
    assert _study("task-mixture", tmp_path / "x", args, "--dry-run") == 0
    printed = capsys.readouterr().out
    # 4 arms × (2 evaluations × (3 prompts + 2 edits)) = 40 calls; no measured figure for a tiny model on a CPU
    assert "4 arms × 1 seeds = 4 runs, 4 to do, each 2 iterations at batch 2 (8 in all)" in printed
    assert "(40 VLM judge calls)" in printed and "no measured figure for this model yet" in printed
    assert "9to1" in printed and "tasks.ratio=9:1" in printed and not (tmp_path / "x").exists()
    bad = _jsonl(tmp_path / "bad.jsonl", [{"image": str(world[0] / "c.png"), "instruction": "x", "category": "style"}])
    assert _study("task-mixture", tmp_path / "x", [*args, f"eval.edits={bad}"]) == 2
    assert "categories style have no Editing-Bench rubric" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _study("task-mixture", tmp_path / "x", args) == 2
    assert "runs as one process" in capsys.readouterr().err


def test_the_cost_of_a_full_size_study_comes_from_the_h200_measurement(tmp_path):
    from flashdistill.distill.layouts.plan import SHIPPED
    from flashdistill.studies import own_cost as own

    measured = json.loads((ROOT / own.H200_SOURCE).read_text())["memory"][0]
    assert measured["batch"] == own.H200_ROWS and measured["iterations"][0]["step_time"] == pytest.approx(
        own.H200_ITERATION_S, abs=0.01)
    (tmp_path / "big" / "transformer").mkdir(parents=True)
    (tmp_path / "big" / "model_index.json").write_text("{}")
    (tmp_path / "big" / "transformer" / "config.json").write_text(SHIPPED["qwen-image"].read_text())
    recipe = SimpleNamespace(run=SimpleNamespace(device="auto"), teachers={"base": str(tmp_path / "big")},
                             data=SimpleNamespace(size=lambda default: (512, 512)),
                             dmd=SimpleNamespace(batch_size=8))
    seconds, source = own.seconds_per_iteration(SimpleNamespace(recipe=recipe), tmp_path / "study")
    assert seconds == pytest.approx(69.66 / 4) and "H200" in source  # a quarter of the pixels
    recipe.run.device = "cpu"
    assert own.seconds_per_iteration(SimpleNamespace(recipe=recipe), tmp_path / "study") is None
