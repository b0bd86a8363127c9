"""The quickstart on its tiny preset with tiny random teachers: the report's contents, interrupt-and-rerun resume,
and "nothing left to do". A whole tiny run takes ~10-20 s on one CPU thread (MiniLM load included)."""

import json
import re
from pathlib import Path

import pytest

from flashdistill import quickstart as qs
from flashdistill.cli import main
from flashdistill.errors import UserError
from flashdistill.sampling import sub_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def overrides(teachers):
    return [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}",
            f"run.text_cache={teachers / 'text-cache'}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, overrides):
    out = tmp_path_factory.mktemp("qs") / "run"
    qs.quickstart(out, "tiny", overrides)
    return out


def test_report_has_tables_grids_speed_recipe_and_commands(finished):
    md = (finished / "report.md").read_text()
    preset = qs.PRESETS["tiny"]
    labels = [f"teacher@{preset.teacher_nfe}", "teacher@2", "student@2", "student@1", "teacher@1"]
    for heading in ("## Scores", "## Quality against NFE", "## Side by side", "## Speed", "## Distillation",
                    "## Recipe"):
        assert heading in md
    for bench in ("T2I-Bench", "Editing-Bench"):
        section = md.split(f"### {bench}")[1].split("###")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and "@" in line.split("|")[1]]
        assert sorted(r.split("|")[1].strip() for r in rows[:5]) == sorted(labels)
        ranks = [int(r.split("|")[-2]) for r in rows[:5]]
        assert sorted(ranks) == [1, 2, 3, 4, 5]
    # quality against NFE: one table row per model and NFE, and the plot
    curve = md.split("## Quality against NFE")[1].split("##")[0]
    assert [line.split("|")[1:3] for line in curve.splitlines() if line.startswith("| student") or
            line.startswith("| teacher")] == [[" student ", " 1 "], [" student ", " 2 "],
                                              [" teacher ", " 1 "], [" teacher ", " 2 "], [" teacher ", " 6 "]]
    # every table row has a command that reproduces it
    for label in labels:
        assert re.search(rf"- {re.escape(label)}, t2i: `flashdistill bench t2i --model \S+ --nfe \d+ --limit 1", md)
    assert "flashdistill distill" in md and "python benchmarks/speed.py" in md
    # the recipe as resolved, with the overrides that were used
    assert "step-wise" in md and "ratio: '5:5'" in md and "teachers.base=" in md
    for grid in ("t2i.png", "edit.png", "nfe.png"):
        assert (finished / "grids" / grid).stat().st_size > 1000


def test_speed_ratios_are_measured_in_one_run_and_ideal_counts_passes(finished):
    speed = json.loads((finished / "speed.json").read_text())
    preset = qs.PRESETS["tiny"]
    assert {r["batch"] for r in speed["rows"]} == set(preset.speed_batches)
    for ratio in speed["ratios"]:
        # tiny recipe: teacher with CFG at 6 NFE = 12 passes, the 2-step student 2 passes
        assert ratio["reference_passes"] == 2 * preset.teacher_nfe and ratio["student_passes"] == 2
        assert ratio["ideal_speedup"] == pytest.approx(2 * preset.teacher_nfe / 2)
        assert ratio["above_ideal"] == (ratio["measured_speedup"] > ratio["ideal_speedup"])
        rows = {r["label"]: r for r in speed["rows"] if r["batch"] == ratio["batch"]}
        measured = rows["student@2"]["images_per_s"] / rows[f"teacher@{preset.teacher_nfe}"]["images_per_s"]
        assert ratio["measured_speedup"] == pytest.approx(measured, rel=0.01)


def test_html_is_one_self_contained_file(finished):
    html = (finished / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert not re.search(r'src="(?!data:)', html)  # nothing to fetch from disk or network
    assert "<table>" in html and "student@2" in html


def test_interrupt_and_rerun_resumes_every_stage(tmp_path, overrides, monkeypatch, capsys):
    import flashdistill.bench.runner as runner
    import flashdistill.distill.trainer as trainer

    out = tmp_path / "run"
    real_iteration, real_bench = trainer.train_iteration, runner.run_bench

    def iteration_then_ctrl_c(ctx, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_iteration(ctx, step)

    monkeypatch.setattr(trainer, "train_iteration", iteration_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        qs.quickstart(out, "tiny", overrides)
    assert json.loads((out / qs.STATE_FILE).read_text())["done"] == []

    calls = []

    def bench_then_ctrl_c(bench, model, *args, **kwargs):
        calls.append(bench)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_bench(bench, model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_iteration", real_iteration)
    monkeypatch.setattr(runner, "run_bench", bench_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        qs.quickstart(out, "tiny", overrides)
    steps = [json.loads(line)["step"] for line in (out / "distill" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # iterations 1-2 from the first call, 3 after resuming; none twice
    assert json.loads((out / qs.STATE_FILE).read_text())["done"] == ["distill"]
    judged_before = (out / "bench" / "t2i-teacher-nfe6" / "cases.jsonl").read_text()

    monkeypatch.setattr(runner, "run_bench", real_bench)
    capsys.readouterr()
    qs.quickstart(out, "tiny", overrides)
    printed = capsys.readouterr().out
    assert "distill: done earlier, skipped" in printed
    assert (out / "bench" / "t2i-teacher-nfe6" / "cases.jsonl").read_text() == judged_before  # not redone
    assert (out / "report.md").is_file()

    qs.quickstart(out, "tiny", overrides)
    assert "nothing left to do" in capsys.readouterr().out


def test_other_settings_in_the_same_folder_are_refused(finished, overrides):
    with pytest.raises(UserError, match="other settings"):
        qs.quickstart(finished, "tiny", overrides + ["dmd.iterations=5"])


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["quickstart", "--preset", "huge", "--out", str(tmp_path / "q")]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["quickstart", "--preset", "tiny", "--set", "tasks.ratio=x", "--out", str(tmp_path / "q")]) == 2


def test_sub_schedule_keeps_the_first_step_and_trained_times():
    ts = [1.0, 0.75, 0.5, 0.25]
    assert sub_schedule(ts, 4) == ts
    assert sub_schedule(ts, 2) == [1.0, 0.5]
    assert sub_schedule(ts, 1) == [1.0]
    with pytest.raises(UserError):
        sub_schedule(ts, 5)


def test_bench_rows_follow_the_recipes_step_count():
    preset = qs.PRESETS["default"]

    def labels(k):
        return [r.label for r in qs.bench_rows(preset, k, "teacher:base", Path("run"))]

    assert labels(1) == ["teacher@50", "teacher@1", "student@1", "teacher@8", "teacher@4", "teacher@2"]
    assert labels(4) == ["teacher@50", "teacher@4", "student@4", "student@2", "student@1", "teacher@8", "teacher@2",
                         "teacher@1"]
