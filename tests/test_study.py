"""`flashdistill study` on its tiny preset with tiny random teachers: arms x seeds, resume after an interruption,
the report; and the statistics (t intervals, paired differences, verdicts) against hand computations."""

import json
import math

import pytest

from flashdistill.bench.stats import Interval, mean_ci, paired, t_quantile, verdict
from flashdistill.cli import main
from flashdistill.errors import UserError
from flashdistill.models.text import TextEncoder
from flashdistill.studies import runner
from flashdistill.studies.report import drift, drop, judge_drop_pair, judge_finding
from flashdistill.studies.spec import PAPER, STUDIES, Finding

pytestmark = pytest.mark.usefixtures("one_thread")
ARMS = ["tg1_base", "tg2_specialized"]  # two arms of the teacher-guidance study keep each test in seconds


# ---- statistics against hand computations ----------------------------------------------------------------
def test_t_interval_matches_a_hand_computation():
    # 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.290994, se 0.645497; t(0.975, 3 df) = 3.182 (a t table)
    iv = mean_ci([1, 2, 3, 4])
    assert (iv.n, iv.mean) == (4, 2.5)
    assert iv.half == pytest.approx(3.182 * 0.645497, abs=1e-3)
    assert (iv.low, iv.high) == pytest.approx((2.5 - 2.0543, 2.5 + 2.0543), abs=1e-3)
    # three seeds 0.1, 0.2, 0.6: mean 0.3, sd sqrt(0.07) = 0.264575, se 0.152753; t(0.975, 2 df) = 4.303
    iv = mean_ci([0.1, 0.2, 0.6])
    assert iv.mean == pytest.approx(0.3) and iv.half == pytest.approx(4.303 * 0.152753, abs=1e-3)
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.90, 10) == pytest.approx(1.812, abs=1e-3)
    one = mean_ci([2.0, float("nan")])  # a non-finite value is left out; one value has no interval
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.half)


def test_verdict_is_confirmed_refuted_or_inconclusive_at_the_interval():
    assert verdict(Interval(3, 0.5, 0.2), +1) == "confirmed"
    assert verdict(Interval(3, 0.5, 0.2), -1) == "refuted"
    assert verdict(Interval(3, -0.5, 0.2), -1) == "confirmed"
    assert verdict(Interval(3, -0.5, 0.2), +1) == "refuted"
    assert verdict(Interval(3, 0.1, 0.2), +1) == "inconclusive"  # the interval holds 0
    assert verdict(Interval(3, 0.2, 0.2), +1) == "inconclusive"  # touching 0 does not exclude it
    assert verdict(Interval(1, 5.0, float("nan")), +1) == "inconclusive"  # one seed: no interval
    with pytest.raises(ValueError):
        verdict(Interval(3, 0.5, 0.2), 0)


def test_paired_per_case_difference():
    a = {"c1": 3.0, "c2": 2.0, "c3": 4.0, "c4": 1.0, "only_a": 5.0}
    b = {"c1": 2.0, "c2": 2.0, "c3": 3.0, "c4": 2.0}
    res = paired(a, b)  # diffs 1, 0, 1, -1: mean 0.25, sd 0.957427, se 0.478714
    assert (res["n"], res["wins"], res["ties"], res["losses"]) == (4, 2, 1, 1)
    assert res["mean_diff"] == pytest.approx(0.25)
    assert res["stderr"] == pytest.approx(0.478714, abs=1e-6)
    assert res["ci"] == pytest.approx(3.182 * 0.478714, abs=1e-3)
    with pytest.raises(UserError):
        paired({"x": 1.0}, {"x": 2.0})


def test_drift_is_second_half_minus_first_half():
    assert drift([(10, 2.0), (20, 1.0), (30, 0.5), (40, 0.5)]) == pytest.approx(0.5 - 1.5)
    assert drift([(10, 1.0), (20, 9.0), (30, 2.0)]) == pytest.approx(1.0)  # the middle point is left out
    assert math.isnan(drift([(10, 1.0)]))


def test_drop_is_last_minus_best_and_pairs_are_judged_per_seed():
    assert drop([(10, 2.0), (20, 3.0), (30, 2.5)]) == pytest.approx(-0.5)
    assert drop([(10, 1.0), (20, 2.0)]) == 0.0  # ends at its best
    assert math.isnan(drop([]))
    # a ends at its best in every seed; b falls 0.4, 0.5, 0.6 from a peak: a - b = 0.4, 0.5, 0.6,
    # mean 0.5, sd 0.1, t(2 df) 4.303 * 0.1 / sqrt(3) = ± 0.2484 -> excludes 0: confirmed
    runs = {"a": {s: _run(3.0, 2.0, [1.0, 2.0]) for s in range(3)},
            "b": {s: _run(3.0, 2.0, [1.0, 2.0, 2.0 - d]) for s, d in enumerate((0.4, 0.5, 0.6))}}
    res = judge_drop_pair("a", "b", runs)
    assert [round(v, 6) for v in res["per_seed"].values()] == [0.4, 0.5, 0.6]
    assert res["interval"]["mean"] == pytest.approx(0.5) and res["interval"]["half"] == pytest.approx(0.2484, abs=1e-3)
    assert res["verdict"] == "confirmed"
    assert judge_drop_pair("b", "a", runs)["verdict"] == "refuted"


def _run(t2i_avg: float, text: float, curve: list[float]) -> dict:
    return {"bench": {"t2i": {"average": t2i_avg, "per_category": {"text": text}}},
            "cases": {"t2i": {"c1": ("text", text), "c2": ("landscape", t2i_avg)}},
            "curve": [(10 * (i + 1), v) for i, v in enumerate(curve)]}


def test_finding_is_judged_over_seeds():
    runs = {"a": {0: _run(3.0, 2.0, [2, 1]), 1: _run(3.2, 2.0, [2, 2]), 2: _run(3.1, 2.0, [3, 1])},
            "b": {0: _run(2.0, 2.0, [1, 1]), 1: _run(2.3, 2.0, [1, 1]), 2: _run(2.1, 2.0, [1, 1])}}
    # per-seed differences 1.0, 0.9, 1.0: mean 0.9667, sd 0.057735, se 0.033333, t(2 df) 4.303 -> ± 0.1434
    res = judge_finding(Finding("k", "a beats b", "a", "b", "t2i", "average", 1), runs)
    assert list(res["per_seed"]) == [0, 1, 2]
    assert res["interval"]["mean"] == pytest.approx(0.96667, abs=1e-4)
    assert res["interval"]["half"] == pytest.approx(4.303 * 0.033333, abs=1e-3)
    assert res["verdict"] == "confirmed"
    assert judge_finding(Finding("k", "", "a", "b", "t2i", "average", -1), runs)["verdict"] == "refuted"
    assert judge_finding(Finding("k", "", "a", "b", "t2i", "text", 1), runs)["verdict"] == "inconclusive"
    # a drift finding on one arm: drifts -1, 0, -2 -> mean -1, interval ± 4.303 * 0.57735 holds 0
    res = judge_finding(Finding("d", "a degrades", "a", None, "curve", "drift", -1), runs)
    assert res["interval"]["mean"] == pytest.approx(-1.0) and res["verdict"] == "inconclusive"
    # the paper's numbers of a real finding come from its table
    res = judge_finding(STUDIES["data-composition"].findings[0], {})
    assert res["paper"]["gemini"] == {"a": 3.30, "b": 2.63, "diff": 0.67}
    assert res["verdict"] == "inconclusive"  # no runs: no evidence


def test_every_study_names_recipes_that_load_and_findings_on_its_arms():
    recipes = runner.default_recipes()
    for study in STUDIES.values():
        keys = {a.key for a in study.arms}
        for arm in study.arms:
            raw, recipe = runner.load_arm(recipes, arm.recipe, [])
            assert recipe.dmd.seed == 0 and recipe.student.nfe == 1  # the embedded recipes' step count
            assert runner.load_arm(recipes / "4nfe", arm.recipe, [])[1].student.nfe == 4  # the earlier studies'
        for f in study.findings:
            assert f.a in keys and (f.b is None or f.b in keys) and f.direction in (1, -1)
            assert f.bench in (*study.benches, "curve")
    assert set(PAPER) <= {a.key for s in STUDIES.values() for a in s.arms}
    sizes = {name: runner.lookup(name, "full")[1].iterations for name in STUDIES}
    assert sizes == {"data-composition": 400, "teacher-guidance": 600, "task-mixture": 400}
    assert runner.lookup("teacher-guidance", "tiny")[1] == runner.lookup("task-mixture", "tiny")[1]
    mix = {a.key: runner.load_arm(recipes, a.recipe, [])[1].tasks.ratio for a in STUDIES["task-mixture"].arms}
    assert mix == {"tm1_t2i_only": "1:0", "tm2_9to1": "9:1", "tm3_7to3": "7:3", "tm4_5to5": "5:5"}


# ---- the runner on the tiny preset -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def sets(teachers):
    return [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sets, encoder):
    out = tmp_path_factory.mktemp("study") / "tg"
    md = runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder,
                          arms=ARMS)
    return out, md


def test_every_arm_runs_every_seed_with_its_own_training_seed(finished):
    out, md = finished
    from flashdistill.runtime.checkpoint import read_state

    for arm in ARMS:
        for seed in (0, 1):
            folder = runner.seed_dir(out, arm, seed)
            done = json.loads((folder / runner.DONE_FILE).read_text())
            assert (done["arm"], done["seed"]) == (arm, seed) and done["train"]["iterations"] == 2
            assert f"dmd.seed={seed}" in done["overrides"]
            assert read_state(folder / "distill" / "checkpoint")["meta"]["recipe"]["dmd"]["seed"] == seed
            assert set(done["bench"]) == {"t2i"} and done["bench"]["t2i"]["n_cases"] == 3  # 1 case x 3 categories
    # the base-only arm names no specialized teacher, so the override for it was not applied there
    base = json.loads((runner.seed_dir(out, "tg1_base", 0) / runner.DONE_FILE).read_text())
    assert not any(o.startswith("teachers.specialized=") for o in base["overrides"])
    assert sorted(p.name for p in (out / "arms").iterdir()) == ARMS


def test_report_has_table_findings_verdicts_and_curves(finished):
    out, md = finished
    result = json.loads((out / "study.json").read_text())
    assert [r["arm"] for r in result["tables"]["t2i"]] == ARMS
    assert all(r["seeds"] == [0, 1] for r in result["tables"]["t2i"])
    keys = {f["key"] for f in result["findings"]}
    assert keys == {"direct-degrades"}  # the only finding on these two arms alone
    for f in result["findings"]:
        assert f["verdict"] in ("confirmed", "refuted", "inconclusive") and len(f["per_seed"]) == 2
    for arm in ARMS:  # a quick evaluation after each of the 2 iterations, for both seeds
        assert {s: [p[0] for p in c] for s, c in result["curves"][arm].items()} == {"0": [1, 2], "1": [1, 2]}
    text = md.read_text()
    assert "± " in text and "## Findings" in text and "specialized only (direct)" in text
    assert "**inconclusive**" in text or "**confirmed**" in text or "**refuted**" in text
    assert (out / "curves.png").stat().st_size > 5000
    # the best-to-last drop of every arm and seed, and the drop pair on these arms (base only vs direct)
    assert set(result["drop"]) == set(ARMS) and set(result["drop"]["tg1_base"]["per_seed"]) == {"0", "1"}
    assert [(p["a"], p["b"]) for p in result["drop_pairs"]] == [("tg1_base", "tg2_specialized")]
    assert "drop (last − best)" in text and "base only − specialized only (direct)" in text


def test_a_study_continued_with_other_recipes_is_refused(finished, tmp_path, sets, encoder):
    """Adding seeds to a study with other recipe files (another --recipes, or files edited since) would put runs of
    two recipes in one table: refused, naming the finished run."""
    import shutil

    out = tmp_path / "tg"
    shutil.copytree(finished[0], out)
    recipes = tmp_path / "recipes"
    shutil.copytree(runner.default_recipes(), recipes)
    again = runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder,
                             arms=ARMS, recipes=recipes)  # the same recipes elsewhere: nothing to do, accepted
    assert again.is_file()
    path = recipes / "tg1_base.yaml"
    path.write_text(path.read_text().replace("ratio: \"1:0\"", "ratio: \"5:5\""))
    with pytest.raises(UserError, match=r"tg1_base[/\\]seed0: finished with another recipe"):
        runner.run_study("teacher-guidance", out, seeds=3, preset="tiny", overrides=sets, encoder=encoder,
                         arms=ARMS, recipes=recipes)
    assert not runner.seed_dir(out, "tg1_base", 2).exists()  # refused before anything ran


def test_an_interrupted_study_reruns_only_what_did_not_finish(tmp_path, sets, encoder, monkeypatch):
    out = tmp_path / "tg"
    calls = []
    real_train, real_bench = runner.train_run, runner.bench_run

    def killed_in_training(recipe, run, enc, command):  # the second run dies after 1 of its 2 iterations
        calls.append(run.parent.name + "/" + run.parent.parent.name)
        if len(calls) == 2:
            from flashdistill.bench.quick import make_scorer
            from flashdistill.distill.trainer import train_distill

            train_distill(recipe, run, encoder=enc, stop_after=1, make_scorer=make_scorer)
            raise KeyboardInterrupt
        return real_train(recipe, run, enc, command)

    monkeypatch.setattr(runner, "train_run", killed_in_training)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder,
                         arms=ARMS)
    assert runner.is_done(out, "tg1_base", 0) and not runner.is_done(out, "tg1_base", 1)

    # the bench of the next run is killed after its training finished
    def killed_in_bench(study, preset, run, folder, enc):
        if run.parent.name == "seed0" and run.parent.parent.name == "tg2_specialized":
            raise KeyboardInterrupt
        return real_bench(study, preset, run, folder, enc)

    calls.clear()
    monkeypatch.setattr(runner, "train_run", lambda *a: calls.append(a[1]) or real_train(*a))
    monkeypatch.setattr(runner, "bench_run", killed_in_bench)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder,
                         arms=ARMS)
    assert [c.parent.name for c in calls] == ["seed1", "seed0"]  # tg1_base/seed0 was not run again

    calls.clear()
    monkeypatch.setattr(runner, "bench_run", real_bench)
    runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder, arms=ARMS)
    assert [(c.parent.parent.name, c.parent.name) for c in calls] == [("tg2_specialized", "seed0"),
                                                                      ("tg2_specialized", "seed1")]
    resumed = {(a, s): json.loads((runner.seed_dir(out, a, s) / runner.DONE_FILE).read_text())["train"]
               for a in ARMS for s in (0, 1)}
    assert resumed[("tg1_base", 1)]["resumed_from"] == 1  # continued from the checkpoint the kill left
    assert resumed[("tg2_specialized", 0)]["resumed_from"] == 2  # trained, only its bench was left to do
    assert resumed[("tg1_base", 0)]["resumed_from"] == 0 and resumed[("tg2_specialized", 1)]["resumed_from"] == 0
    assert (out / "study.md").is_file()

    calls.clear()  # all finished: nothing runs, the report is rewritten; more seeds run only the new ones
    runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder, arms=ARMS)
    assert calls == []
    with pytest.raises(UserError, match="other settings"):
        runner.run_study("teacher-guidance", out, seeds=2, preset="tiny", overrides=[*sets, "dmd.lr=1e-4"],
                         encoder=encoder, arms=ARMS)


def test_a_study_begun_with_other_teacher_weights_is_refused(tmp_path, teachers, encoder, monkeypatch):
    """Re-shipping or retraining a teacher keeps its spec (`teacher:base`) but not its weights: continuing a study
    then would mix arms distilled from two teachers, so the runner refuses, naming the teacher."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    local = tmp_path / "teachers"
    shutil.copytree(teachers, local)
    sets = [f"teachers.base={local / 'base'}", f"teachers.specialized={local / 'spec'}"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):  # the state is written before the first run starts
        runner.run_study("teacher-guidance", tmp_path / "tg", seeds=1, preset="tiny", overrides=sets,
                         encoder=encoder, arms=["tg1_base"])
    state = json.loads((tmp_path / "tg" / runner.STATE_FILE).read_text())["identity"]
    assert set(state["teachers"]) == {str(local / "base"), str(local / "spec")}  # every arm's teachers
    weights = next((local / "base").rglob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, str(weights))
    with pytest.raises(UserError, match=r"other weights of .*base"):
        runner.run_study("teacher-guidance", tmp_path / "tg", seeds=1, preset="tiny", overrides=sets,
                         encoder=encoder, arms=["tg1_base"])


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, sets):
    cases = [["study", "nope", "--out", str(tmp_path / "a")],
             ["study", "task-mixture", "--seeds", "0", "--out", str(tmp_path / "b")],
             ["study", "task-mixture", "--preset", "huge", "--out", str(tmp_path / "c")],
             ["study", "task-mixture", "--out", str(tmp_path / "d"), "--set", "dmd.seed=4"],
             ["study", "task-mixture", "--out", str(tmp_path / "e"), "--set", "dmd.nope=4"],
             ["study", "task-mixture", "--out", str(tmp_path / "f"), "--recipes", str(tmp_path / "none")],
             ["study", "task-mixture", "--out", str(tmp_path / "g"), "--arms", "e1_landscape"]]
    for argv in cases:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's refusals exit from inside the parser
            code = stop.code
        assert code == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (argv, err)
    assert not any((tmp_path / x).exists() for x in "abcdefg")  # refused before anything is written


def test_task_mixture_is_judged_on_both_benches(tmp_path, sets, encoder):
    out = tmp_path / "tm"
    md = runner.run_study("task-mixture", out, seeds=2, preset="tiny", overrides=sets, encoder=encoder,
                          arms=["tm1_t2i_only", "tm4_5to5"])
    result = json.loads((out / "study.json").read_text())
    assert list(result["tables"]) == ["edit", "t2i"]
    assert [r["arm"] for r in result["tables"]["edit"]] == ["tm1_t2i_only", "tm4_5to5"]
    findings = {f["key"]: f for f in result["findings"]}
    assert set(findings) == {"55-beats-zero-shot", "edit-helps-t2i-55"}
    edit = findings["55-beats-zero-shot"]
    assert edit["paper"]["gemini"] == {"a": 2.97, "b": 2.77, "diff": 0.2}
    assert edit["per_case"]["n"] == 6  # one case of each edit category, paired across the two arms
    done = json.loads((runner.seed_dir(out, "tm1_t2i_only", 1) / runner.DONE_FILE).read_text())
    assert set(done["bench"]) == {"edit", "t2i"} and done["bench"]["edit"]["n_cases"] == 6
    text = md.read_text()
    assert "### Editing-Bench-mini" in text and "### T2I-Bench-mini" in text and "Table 3" in text


def test_a_diverged_run_stops_the_study_with_exit_1_and_says_how_to_continue(tmp_path, sets, capsys, monkeypatch):
    from flashdistill.models import text
    from flashdistill.runtime.resume import TrainingDiverged

    def diverge(recipe, run, enc, command):
        raise TrainingDiverged("5 iterations in a row were skipped")

    monkeypatch.setattr(runner, "train_run", diverge)
    monkeypatch.setattr(text, "TextEncoder", lambda: None)
    code = main(["study", "teacher-guidance", "--preset", "tiny", "--arms", "tg1_base", "--out", str(tmp_path / "s"),
                 "--set", *sets])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: distillation diverged: ")
    assert "tg1_base/seed0" in err and "--resume" in err
    assert not runner.is_done(tmp_path / "s", "tg1_base", 0)


def test_study_seeds_says_how_many_seeds_resolve_a_difference(tmp_path, capsys):
    """benchmarks/study_seeds.py: the smallest m with t_{m-1} · sd / sqrt(m) <= the difference, from study.json."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "study_seeds.py"
    spec = importlib.util.spec_from_file_location("study_seeds", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # sd 0.1: m=3 gives 4.303*0.1/1.732 = 0.248; m=4 0.159; m=5 0.124; m=6 0.105; m=7 0.0925 -> 7 for ± 0.1
    assert mod.seeds_needed(0.1, 0.1) == 7
    assert mod.seeds_needed(0.01, 0.1) == 2  # 12.706 * 0.01 / 1.414 = 0.0898
    assert mod.seeds_needed(float("nan"), 0.1) is None and mod.seeds_needed(10.0, 0.1) is None
    study = {"study": "s", "findings": [{"key": "k", "per_seed": {"0": 0.1, "1": 0.2, "2": 0.3}, "verdict": "x",
                                         "interval": {"mean": 0.2, "half": 0.248}}],
             "runs": {"a": {"0": {"bench": {"t2i": {"average": 2.0}}}, "1": {"bench": {"t2i": {"average": 2.2}}}}}}
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps(study))
    assert mod.main([str(folder), "--out", str(tmp_path / "seeds.json")]) == 0
    rows = json.loads((tmp_path / "seeds.json").read_text())
    assert rows["findings"][0]["seeds_for_resolve"] == 7 and rows["findings"][0]["seeds_for_measured"] == 4
    assert rows["arm_spreads"][0]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert "| s | k | 3 | +0.200 ± 0.248 |" in capsys.readouterr().out
    assert mod.main([str(tmp_path / "missing")]) == 2  # not a study folder: one line, exit 2


@pytest.mark.parametrize("files", [("model.safetensors", "ema.safetensors", "state.safetensors", "state.json"),
                                   ("state.json",)], ids=["per-role", "sharded"])
def test_a_run_folder_with_a_checkpoint_of_either_layout_is_resumed(tmp_path, monkeypatch, files):
    """A study or quickstart run resumes a per-role checkpoint and an fsdp run's sharded one alike (restore_run then
    refuses a layout that does not match the recipe's); an empty folder starts fresh."""
    from flashdistill.distill import run_or_resume
    asked = []
    monkeypatch.setattr(run_or_resume, "train_distill", lambda recipe, run, resume, **kw: asked.append(resume) or {})
    run_or_resume.train_or_resume(None, tmp_path, None, "cmd", None)
    (tmp_path / "checkpoint").mkdir()
    for name in files:
        (tmp_path / "checkpoint" / name).write_bytes(b"x")
    run_or_resume.train_or_resume(None, tmp_path, None, "cmd", None)
    assert asked == [False, True]
