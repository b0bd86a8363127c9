"""Run folders (flashdistill.runfolder): a command never writes into another kind of run, and never two processes
into one run. Defects: `teacher train --out RUN` on a distillation run deleted its checkpoint/; two `distill`
processes on one --out both ran to exit 0, interleaving their logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill
from flashdistill.errors import UserError
from flashdistill.files import file_digest
from flashdistill.runfolder import KINDS, MARKER, check_run, claim_run, run_kind

ROOT = Path(__file__).resolve().parents[1]
TEACHER_TINY = ROOT / "configs" / "teacher_tiny.yaml"
DISTILL_TINY = ROOT / "configs" / "distill_tiny.yaml"
SLOW_START_S = 120  # bound on a subprocess reaching its claim (imports torch on a shared 2-core CPU)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def distill_sets(teachers: Path, cache: Path, *extra: str) -> list[str]:
    return [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}",
            f"run.text_cache={cache}", *extra]


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory, teachers):
    """A finished one-iteration distillation run (checkpoint/, student/, log.jsonl, its marker)."""
    from flashdistill.models.text import TextEncoder

    root = tmp_path_factory.mktemp("distill-run")
    recipe = load_recipe(DISTILL_TINY, distill_sets(teachers, root / "cache", "dmd.iterations=1"))
    train_distill(recipe, root / "run", encoder=TextEncoder())
    return root / "run"


def test_teacher_train_refuses_a_distillation_run_and_leaves_it_untouched(distill_run, capsys):
    """The defect as reported: the command ends in one line naming the folder and what it holds, exit 2."""
    from flashdistill.cli import main

    before = digests(distill_run)
    assert (distill_run / "checkpoint" / "student.safetensors").is_file()
    assert main(["teacher", "train", str(TEACHER_TINY), "--out", str(distill_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: --out {distill_run}: holds a distillation run")
    assert digests(distill_run) == before


def test_a_run_written_before_markers_is_recognised_by_its_contents(distill_run, tmp_path, capsys):
    from flashdistill.cli import main

    legacy = tmp_path / "legacy"
    shutil.copytree(distill_run, legacy)
    (legacy / MARKER).unlink()  # as written before run folders were marked
    before = digests(legacy)
    assert run_kind(legacy) == ("distill", "it has a checkpoint with student weights")
    assert main(["teacher", "specialize", str(TEACHER_TINY), "--out", str(legacy),
                 "--set", "run.init_from=teacher:base"]) == 2
    assert "holds a distillation run (it has a checkpoint with student weights)" in capsys.readouterr().err
    assert digests(legacy) == before


def test_bench_refuses_a_distillation_run(distill_run, capsys):
    from flashdistill.cli import main

    before = digests(distill_run)
    assert main(["bench", "t2i", "--model", "oracle", "--limit", "1", "--out", str(distill_run)]) == 2
    assert "holds a distillation run" in capsys.readouterr().err
    assert digests(distill_run) == before


@pytest.mark.parametrize("holder", sorted(KINDS))
@pytest.mark.parametrize("claimer", sorted(KINDS))
def test_every_kind_refuses_every_other_kind(tmp_path, holder, claimer):
    folder = tmp_path / "run"
    with claim_run(folder, holder):
        (folder / "something.txt").write_text("written by the holder")
    if holder == claimer:
        with claim_run(folder, claimer):  # the same kind continues (its own resume rules apply)
            pass
        return
    with pytest.raises(UserError, match=f"--out {folder}: holds {KINDS[holder].title} "):
        with claim_run(folder, claimer):
            pass
    assert json.loads((folder / MARKER).read_text())["kind"] == holder


def test_unrecognised_files_a_run_would_overwrite_are_refused(tmp_path):
    folder = tmp_path / "mine"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "log.jsonl").write_text("my notes\n")
    with pytest.raises(UserError, match=r"holds checkpoint, log\.jsonl, which a teacher training run would "
                                        r"overwrite"):
        check_run(folder, "teacher")
    (folder / "notes.txt").write_text("x")
    with claim_run(folder, "bench"):  # a bench run writes none of those names
        pass


def test_a_folder_inside_what_a_run_replaces_is_refused(distill_run):
    for inner in ("checkpoint/mine", "student", "student/x/y", ".student-tmp-1234abcd/x"):
        with pytest.raises(UserError, match=f"lies inside {distill_run}, a distillation run, whose "):
            check_run(distill_run / inner, "bench")
    check_run(distill_run / "eval" / "step-000001" / "t2i", "bench")  # the quick evaluation's own bench folders


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    new = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with claim_run(new, "distill"):
            raise RuntimeError("a bad teacher path")
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError):
        with claim_run(kept, "distill"):
            (kept / "log.jsonl").write_text("{}\n")
            raise RuntimeError("diverged")
    assert (kept / "log.jsonl").is_file() and (kept / MARKER).is_file()


def test_a_file_or_an_unwritable_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"--out .*f: is a file, not a folder"):
        check_run(tmp_path / "f", "distill")
    with pytest.raises(UserError, match=r"cannot be created"):
        check_run(tmp_path / "f" / "run", "distill")


def test_a_second_claim_is_refused_while_the_first_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    with claim_run(folder, "distill"):
        record = json.loads((folder / MARKER).read_text())
        assert record["kind"] == "distill" and record["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"another flashdistill process \\(pid {os.getpid()} on .*\\) is "
                                            f"writing this run"):
            with claim_run(folder, "distill"):
                pass
    with claim_run(folder, "distill"):  # released at the end of the first
        pass


HOLD = ("import sys, time\nfrom flashdistill.runfolder import claim_run\n"
        "with claim_run(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n    time.sleep(600)\n")


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "distill"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid} on "):
            with claim_run(folder, "distill"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with claim_run(folder, "distill"):  # SIGKILL: the kernel released the flock
        assert json.loads((folder / MARKER).read_text())["pid"] == os.getpid()


def _wait_for_claim(folder: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SLOW_START_S
    while time.monotonic() < deadline:
        try:
            if json.loads((folder / MARKER).read_text())["pid"] == proc.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the first distill never claimed its folder")


def test_two_distill_processes_on_one_out(teachers, tmp_path):
    """Two real `flashdistill distill` processes: the second is refused while the first runs, in one line, exit 2;
    once the first is SIGKILLed nothing is left locked."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    sets = distill_sets(teachers, cache, "dmd.iterations=100000")
    cmd = [sys.executable, "-m", "flashdistill", "distill", str(DISTILL_TINY), "--out", str(out), "--set", *sets]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_claim(out, first)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=SLOW_START_S)
        assert first.poll() is None  # still running: the refusal was the lock's
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"error: --out {out}: another flashdistill process (pid {first.pid} on "
                                      f"{os.uname().nodename}) is writing this run; wait for it to end or choose "
                                      f"another --out")
    with claim_run(out, "distill"):  # the SIGKILLed holder left no lock
        assert json.loads((out / MARKER).read_text())["pid"] == os.getpid()


def test_teacher_train_is_refused_while_another_process_holds_its_folder(tmp_path, capsys):
    from flashdistill.cli import main

    out = tmp_path / "teacher"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "teacher"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["teacher", "train", str(TEACHER_TINY), "--out", str(out)]) == 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"another flashdistill process (pid {holder.pid} on " in err
    assert sorted(p.name for p in out.iterdir()) == [MARKER]  # nothing of the holder's run touched


def test_a_refused_distill_of_the_same_kind_leaves_every_byte_and_the_marker(distill_run, teachers, capsys):
    """Distill again into a finished run without --resume: refused, and the claim puts its marker back as it was
    (the marker records the writing process while a run holds it)."""
    from flashdistill.cli import main

    before = digests(distill_run)
    assert main(["distill", str(DISTILL_TINY), "--out", str(distill_run), "--set",
                 *distill_sets(teachers, distill_run.parent / "cache", "dmd.iterations=1")]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert digests(distill_run) == before


def test_a_condition_cache_is_a_run_kind(distill_run, tmp_path):
    """`flashdistill cache --out` into a distillation run is refused; an old cache folder (no marker) is known by
    its shards."""
    with pytest.raises(UserError, match="holds a distillation run.*a condition cache there"):
        check_run(distill_run, "cache")
    old = tmp_path / "cache"
    old.mkdir()
    (old / "index.json").write_text("{}")
    (old / "shard-0-1-abc.safetensors").write_bytes(b"x")
    assert run_kind(old)[0] == "cache"
    check_run(old, "cache")
    with pytest.raises(UserError, match="a condition cache"):
        check_run(old, "distill")
