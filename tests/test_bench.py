"""Benchmark runs with the world judge: calibration on small slices, resume after an interruption, tables."""

import json

import numpy as np
import pytest

from flashdistill.bench.calibrate import check_bars
from flashdistill.bench.cases import BUILTIN_CASES, load_cases
from flashdistill.bench.models import load_model
from flashdistill.bench.runner import run_bench
from flashdistill.bench.world_judge import WorldJudge
from flashdistill.cli import main
from flashdistill.errors import UserError
from flashdistill.world.edits import source_image


@pytest.fixture(scope="module")
def judge():
    return WorldJudge()


def _avg(bench, name, judge, tmp_path, limit=6):
    cases = load_cases(BUILTIN_CASES[bench], bench, limit)
    return run_bench(bench, load_model(name), judge, cases, tmp_path / f"{bench}-{name}", None, "t")["average"]


@pytest.mark.parametrize("bench", ["t2i", "edit"])
def test_calibration_on_a_slice(bench, judge, tmp_path):
    names = ["oracle", "oracle-blur:1", "oracle-noise:0.1", "noise"]
    averages = {n: _avg(bench, n, judge, tmp_path) for n in names}
    assert averages["oracle"] >= 4.7 and averages["noise"] <= 1.3
    assert check_bars(averages) == [], averages


def test_check_bars_catches_a_non_monotonic_family():
    fails = check_bars({"oracle": 4.9, "oracle-blur:0.5": 3.0, "oracle-blur:1": 3.5, "noise": 1.0})
    assert any("oracle-blur family" in f for f in fails)
    assert check_bars({"oracle": 4.5, "noise": 1.0}) == ["oracle averages 4.5 < 4.7"]


def test_t2i_clean_image_that_misses_the_prompt_scores_low(judge):
    cases = [c for c in load_cases(BUILTIN_CASES["t2i"], "t2i", 10) if c.category == "portrait"]
    oracle = load_model("oracle")
    shifted = oracle.t2i(cases[1:] + cases[:1])  # each case gets another portrait's clean, exact render
    scores = dict(judge.judge_t2i(cases, shifted))
    mean = np.mean([s.score for s in scores.values()])
    assert mean < 3.0
    assert all(s.sub_scores["technical_quality"] >= 4.7 for s in scores.values())  # clean, just wrong


def test_edit_that_changes_nothing_is_capped(judge):
    cases = load_cases(BUILTIN_CASES["edit"], "edit", 4)
    sources = [source_image(c.source, c.edit, 32) for c in cases]
    for _, score in judge.judge_edit(cases, sources, sources):
        assert score.score <= 2.5 and score.sub_scores["instruction_following"] <= 3.0
        assert "edit not carried out" in score.failure_modes


def test_edit_sub_scores_use_the_paper_keys(judge):
    from flashdistill.world.categories import EDIT_SUBSCORE_KEYS

    cases = load_cases(BUILTIN_CASES["edit"], "edit", 1)
    outputs = load_model("oracle").edit(cases, None)
    for i, score in judge.judge_edit(cases, None, outputs):
        assert tuple(score.sub_scores) == EDIT_SUBSCORE_KEYS[cases[i].category]
        assert score.score == 5.0


class Interrupting:
    """The oracle, but raising KeyboardInterrupt on the call after `calls_before` calls; counts generated cases."""

    name = "oracle"

    def __init__(self, calls_before):
        self.inner, self.calls, self.calls_before, self.generated = load_model("oracle"), 0, calls_before, []

    def t2i(self, cases, nfe=None):
        self.calls += 1
        if self.calls > self.calls_before:
            raise KeyboardInterrupt
        self.generated += [c.id for c in cases]
        return self.inner.t2i(cases)


def test_interrupted_run_resumes_without_redoing_cases(judge, tmp_path):
    cases = load_cases(BUILTIN_CASES["t2i"], "t2i", 4)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_bench("t2i", Interrupting(1), judge, cases, out, None, "t", batch_size=5)
    first = [json.loads(line)["id"] for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(first) == 5
    with (out / "cases.jsonl").open("a") as f:
        f.write('{"id": "torn')  # a write cut short by the crash
    again = Interrupting(99)
    res = run_bench("t2i", again, judge, cases, out, None, "t", batch_size=5)
    assert set(again.generated).isdisjoint(first) and len(again.generated) == 7
    lines = (out / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(line)["id"] for line in lines}) == 12
    assert res["n_cases"] == 12 and res["average"] >= 4.7
    assert (out / "grid.png").is_file() and len(list((out / "images").glob("*.png"))) == 12


def test_folder_of_another_run_is_refused(judge, tmp_path):
    cases = load_cases(BUILTIN_CASES["t2i"], "t2i", 1)
    run_bench("t2i", load_model("oracle"), judge, cases, tmp_path, None, "t")
    with pytest.raises(UserError, match="holds another run"):
        run_bench("t2i", load_model("noise"), judge, cases, tmp_path, None, "t")


def test_cli_bench_and_table(tmp_path, capsys):
    for model in ("oracle", "noise"):
        assert main(["bench", "edit", "--model", model, "--limit", "2", "--out", str(tmp_path / model)]) == 0
    results = json.loads((tmp_path / "oracle" / "results.json").read_text())
    for key in ("bench", "model", "nfe", "judge", "n_cases", "per_category", "average", "frechet_distance"):
        assert key in results
    assert results["n_cases"] == 12 and len(results["per_category"]) == 6
    row = json.loads((tmp_path / "oracle" / "cases.jsonl").read_text().splitlines()[0])
    for key in ("id", "category", "score", "sub_scores", "reasoning", "failure_modes"):
        assert key in row
    assert main(["bench", "table", str(tmp_path / "noise"), str(tmp_path / "oracle"),
                 "--out", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "Editing-Bench" in table and "| oracle | - | world |" in table
    ranks = {r["model"]: r["rank"] for r in json.loads((tmp_path / "t.json").read_text())}
    assert ranks == {"oracle": 1, "noise": 2}


def test_unknown_model_is_exit_2(tmp_path, capsys):
    assert main(["bench", "t2i", "--model", "oracle-blur:x", "--out", str(tmp_path)]) == 2
    assert "strength after ':'" in capsys.readouterr().err


def test_frechet_distance_sees_lost_diversity(judge, tmp_path):
    """Same image for every case scores per-image fine on quality but has a large Fréchet distance."""
    from flashdistill.bench.world_judge import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert frechet_distance(a, b) < 0.5
    assert frechet_distance(a, a * 0.1) > 5.0
    assert abs(frechet_distance(a, a + 2.0) - 32.0) < 0.5  # shift by 2 in 8 dims: ||mu||^2 = 32


def test_world_judge_refuses_cases_without_ground_truth(judge, tmp_path):
    """Defect: a case with no world record got prompt compliance 5.0 from "0/0 attributes"."""
    from flashdistill.bench.cases import EditCase, T2ICase
    from flashdistill.bench.models import NoiseModel

    mine = [T2ICase(id="mine-1", category="landscape", prompt="a lake at night", seed=0)]
    with pytest.raises(UserError, match="needs a world 'record'.*mine-1 has none.*--judge vlm"):
        list(judge.judge_t2i(mine, [np.zeros((32, 32, 3), np.float32)]))
    with pytest.raises(UserError, match="mine-1"):  # before any image is made or any file written
        run_bench("t2i", NoiseModel(32), judge, mine, tmp_path / "t2i", None, "mine.jsonl")
    assert not (tmp_path / "t2i").exists()
    photo = [EditCase(id="e1", category="style_transfer", instruction="sepia", seed=0, source_image="x.png")]
    with pytest.raises(UserError, match="needs a world 'source' and 'edit'.*e1"):
        run_bench("edit", NoiseModel(32), judge, photo, tmp_path / "edit", None, "mine.jsonl")


def test_nfe_curve_groups_by_model_and_draws_scores_and_frechet(tmp_path):
    from flashdistill.bench.curve import curve_table, nfe_points, plot_nfe_curve

    def record(model, bench, nfe, avg, fd=None):
        return {"model": model, "bench": bench, "nfe": nfe, "average": avg,
                "frechet_distance": {"a": fd, "b": None if fd is None else fd + 2}}

    records = [record("teacher@50", "t2i", 50, 2.8, 100.0), record("teacher@1", "t2i", 1, 1.5, 300.0),
               record("student@1", "t2i", 1, 2.4), record("student@1", "edit", 1, 3.1),
               record("teacher@1", "edit", 1, 2.3)]
    curves = nfe_points(records)
    assert curves["teacher"]["t2i"] == [(1, 1.5, 301.0), (50, 2.8, 101.0)]  # sorted by NFE, mean FD of categories
    assert curves["student"]["t2i"] == [(1, 2.4, None)]
    table = curve_table(curves)
    assert "| student | 1 | 2.40 | 3.10 | — | — |" in table and "| teacher | 50 | 2.80 | — | 101 | — |" in table
    png = plot_nfe_curve(curves, tmp_path / "nfe.png")
    assert png.stat().st_size > 5000


def test_a_speedup_above_the_ideal_is_called_noise():
    from flashdistill.quickstart.report import noise_note

    assert noise_note({"measured_speedup": 24.9, "ideal_speedup": 25.0}) == ""
    assert "noise" in noise_note({"measured_speedup": 28.1, "ideal_speedup": 25.0})


def test_nfe_curve_reads_folders_and_names_curves(tmp_path):
    from flashdistill.bench.curve import nfe_points, read_results
    from flashdistill.errors import UserError

    for name, nfe in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"bench": "t2i", "model": f"student@{nfe}", "nfe": nfe, "average": 2.0 + nfe, "frechet_distance": {}}))
    curves = nfe_points(read_results([tmp_path / "a", f"one-step={tmp_path / 'b'}"]))
    assert curves == {"student": {"t2i": [(1, 3.0, None)]}, "one-step": {"t2i": [(2, 4.0, None)]}}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{}")
    with pytest.raises(UserError, match="not a bench results file"):
        read_results([tmp_path / "c"])
